"""``vx11 up`` (what ``./scripts/run`` executes): the stack comes up, serves the quick
start, and Ctrl-C stops every process it started; start-up problems are one clear line."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from base64 import b64encode
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import (
    ROOT,
    TOKEN,
    UP_SERVICE_UID,
    child_pids,
    free_port,
    http,
    up_directory,
    wait_for,
    wait_terminal,
)
from vx11.cli.stack import port_is_free
from vx11.core.ledger import Ledger

pytestmark = pytest.mark.e2e

VX11 = [sys.executable, "-m", "vx11.cli"]


def processes_with(marker: str) -> list[int]:
    """Pids whose environment holds ``marker`` (every process of one stack does)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def start_up(env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*VX11, "up", *args], env=env, cwd=ROOT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def uid_of(pid_or_path: int | Path) -> int:
    """The owner of a file, or of a process."""
    path = pid_or_path if isinstance(pid_or_path, Path) else Path(f"/proc/{pid_or_path}")
    return path.stat().st_uid


@pytest.fixture
def up_env() -> Iterator[dict[str, str]]:
    with up_directory() as base:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VX11_")}
        env.update(
            VX11_DATA_DIR=str(base / "data"),
            VX11_SANDBOX_ROOT=str(base / "sandbox"),
            VX11_SERVICE_USER=str(UP_SERVICE_UID),
            PYTHONPATH=str(ROOT),
        )
        yield env


def test_up_serves_the_quick_start_and_ctrl_c_stops_everything(up_env, redis_url):
    env = {**up_env, "VX11_REDIS_URL": redis_url}
    port, flower_port = free_port(), free_port()
    proc = start_up(env, "--port", str(port), "--flower-port", str(flower_port))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http("GET", f"{base}/health")[0] == 200, timeout=60)
        http("POST", f"{base}/vx11/window/open", {"target": "spawner"}, TOKEN)
        status, accepted = http(
            "POST", f"{base}/vx11/spawn", {"task_type": "shell", "code": "echo up"}, TOKEN
        )
        assert status == 200, accepted
        record = wait_terminal(base, accepted["spawn_id"])
        assert record["stdout"] == "up\n"
        if shutil.which("bwrap"):
            assert record["sandbox"] == "bwrap"
        if os.geteuid() == 0:  # everything but vx11 up itself runs as the service user
            started = [pid for pid in processes_with(env["VX11_DATA_DIR"]) if pid != proc.pid]
            assert {uid_of(pid) for pid in started} == {UP_SERVICE_UID}
            assert uid_of(Path(env["VX11_DATA_DIR"], "vx11.db")) == UP_SERVICE_UID
        flower = f"http://127.0.0.1:{flower_port}"
        wait_for(lambda: http("GET", f"{flower}/healthcheck")[0] == 200, timeout=30)
        assert http("GET", f"{flower}/")[0] == 401, "Flower asks for its login"
        # No VX11_FLOWER_PASSWORD: vx11 up made one, kept in the data directory.
        password = Path(env["VX11_DATA_DIR"], "flower-password").read_text().strip()
        login = {"Authorization": "Basic " + b64encode(f"admin:{password}".encode()).decode()}
        status, flower_page = http("GET", f"{flower}/", headers=login)
        assert status == 200 and "Flower" in flower_page
        status, broker_page = http("GET", f"{flower}/broker", headers=login)
        assert status == 200 and "spawner" in broker_page  # the queue and its depth
        assert len(processes_with(env["VX11_DATA_DIR"])) >= 3
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "Quick start" in output
    assert f"Flower: {flower}, login admin / {password} (password kept in " in output
    assert "Traceback" not in output
    time.sleep(0.5)
    assert processes_with(env["VX11_DATA_DIR"]) == []
    assert port_is_free("127.0.0.1", port)


def test_up_runs_its_own_redis_restarts_it_and_stops_it_after_the_worker(up_env):
    """By default vx11 up starts a private Redis. Killed, vx11 up says so, starts it
    again (AOF: nothing lost), and the gateway and the worker carry on with it. Ctrl-C
    stops everything, Redis last: the worker's running spawns have their grace
    (VX11_SHUTDOWN_GRACE) to end, and one still running then ends ERROR
    worker_shutdown with the output it printed, recorded before Redis stops."""
    if not port_is_free("127.0.0.1", 6390):
        pytest.skip("port 6390 (the private Redis default) is in use on this machine")
    port = free_port()
    up_env = {**up_env, "VX11_SHUTDOWN_GRACE": "3"}
    proc = start_up(up_env, "--port", str(port), "--no-flower")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: http("GET", f"{base}/health")[0] == 200, timeout=60)
        status, body = http("GET", f"{base}/vx11/status", headers=TOKEN)
        assert status == 200 and body["services"]["redis"]["ok"] is True
        assert Path(up_env["VX11_DATA_DIR"], "redis").is_dir()
        opened = http("POST", f"{base}/vx11/window/open", {"target": "spawner"}, TOKEN)[1]
        (redis_pid,) = [  # its environment is gone: Redis writes its title over it
            pid
            for pid in child_pids(proc.pid)
            if Path(f"/proc/{pid}/comm").read_text().strip() == "redis-server"
        ]
        os.kill(redis_pid, signal.SIGKILL)

        def healed():
            status, body = http("GET", f"{base}/vx11/status", headers=TOKEN)
            return status == 200 and body["services"]["redis"]["ok"] and body

        wait_for(healed, timeout=30)
        window = http("GET", f"{base}/vx11/window/status/spawner", headers=TOKEN)[1]
        assert window["window_id"] == opened["window_id"]  # the AOF kept it
        body = {"task_type": "shell", "code": "echo healed"}
        accepted = wait_for(
            lambda: (
                (answer := http("POST", f"{base}/vx11/spawn", body, TOKEN))[0] == 200 and answer[1]
            ),
            timeout=30,
        )
        assert wait_terminal(base, accepted["spawn_id"], timeout=90)["stdout"] == "healed\n"

        long, short = (
            http("POST", f"{base}/vx11/spawn", {"task_type": "shell", "code": code}, TOKEN)[1]
            for code in ("echo partial; sleep 120", "sleep 1; echo finished")
        )
        wait_for(
            lambda: all(
                http("GET", f"{base}/vx11/spawn/{a['spawn_id']}", headers=TOKEN)[1]["status"]
                == "RUNNING"
                for a in (long, short)
            ),
            timeout=30,
        )
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "vx11: redis-server exited with status -9; restarting it in 1 s" in output
    assert "vx11: redis-server restarted" in output
    stopping = output[output.index("stopping VX11") :]  # Redis was killed on purpose before
    assert "Error 111" not in stopping and "Connection refused" not in stopping, stopping
    ledger = Ledger.from_url(f"sqlite:///{up_env['VX11_DATA_DIR']}/vx11.db")
    stopped, finished = ledger.get(long["spawn_uuid"]), ledger.get(short["spawn_uuid"])
    ledger.engine.dispose()
    assert (finished["status"], finished["stdout"]) == ("DONE", "finished\n"), finished
    assert (stopped["status"], stopped["reason"], stopped["stdout"]) == (
        "ERROR", "worker_shutdown", "partial\n"
    ), stopped  # fmt: skip
    time.sleep(0.5)
    assert processes_with(up_env["VX11_DATA_DIR"]) == []
    assert port_is_free("127.0.0.1", 6390)


def test_a_taken_port_is_one_clear_line_not_a_traceback(up_env, redis_url):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**up_env, "VX11_REDIS_URL": redis_url}
        done = subprocess.run(
            [*VX11, "up", "--port", str(port)], env=env, capture_output=True, text=True,
            timeout=60,
        )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"Error: port 127.0.0.1:{port} is already in use (gateway); stop what holds it"
    ]


def test_a_missing_redis_server_is_one_clear_line(up_env, tmp_path):
    env = {**up_env, "PATH": str(tmp_path)}  # no redis-server on this PATH
    done = subprocess.run(
        [*VX11, "up", "--port", str(free_port()), "--no-flower"], env=env,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "redis-server is not installed" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
