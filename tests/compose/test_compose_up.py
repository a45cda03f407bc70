"""The compose deployment, started for real: ``compose.yaml`` as a user runs it, on an
engine of the test's own, proven through the published ports and the compose CLI.

The tests run in this file's order on one project, as an operator's day goes: a first
``up`` before any token (which must fail), the token, ``up``, the seed's spawns, a second
worker, Flower, Redis restarted under load, a worker killed mid-run, ``down`` and ``up``
again; then what each of the worker's loosened settings is for.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.compose.conftest import ENABLED, SKIP_REASON
from tests.compose.project import Project
from tests.support import http, wait_for

pytestmark = [pytest.mark.compose, pytest.mark.skipif(not ENABLED, reason=SKIP_REASON)]

TERMINAL = {"DONE", "FAILED", "TIMEOUT", "CANCELLED", "ERROR"}
WAIT = ("--wait", "--wait-timeout", "180")


def wait_end(project: Project, spawn_uuid: str, timeout: float = 120) -> dict:
    def ended():
        status, record = project.api("GET", f"/vx11/spawn/{spawn_uuid}")
        return record if status == 200 and record["status"] in TERMINAL else None

    return wait_for(ended, timeout=timeout, interval=0.5)


def spawn(project: Project, body: dict) -> tuple[int, dict]:
    return project.api("POST", "/vx11/spawn", body)


def open_window(project: Project) -> None:
    status, window = project.api(
        "POST", "/vx11/window/open", {"target": "spawner", "ttl_seconds": 3600}
    )
    assert status == 200 and window["is_open"], window


def test_up_wait_fails_while_the_gateway_cannot_start(project: Project):
    """In production the gateway refuses to start with no token in Redis; ``up --wait``
    must say so with its exit status, not only in its output."""
    done = project.compose("up", "--detach", "--wait", "--wait-timeout", "120", check=False)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "gateway" in done.stderr and "unhealthy" in done.stderr, done.stderr
    assert "no API token exists" in project.logs("gateway")  # the gateway's reason


def test_the_header_s_commands_start_a_healthy_stack(project: Project):
    created = project.compose(
        "run", "--rm", "gateway", "vx11", "token", "create", "--local", "--label", "ops",
        "--scope", "admin", "--scope", "window", "--scope", "spawn",
    )  # fmt: skip
    project.token = next(w for w in created.stdout.split() if w.startswith("vx11_"))
    # The gateway of the failed start waits out its restart back-off: start it now.
    project.compose("restart", "gateway")
    project.compose("up", "--detach", *WAIT)
    status, health = http("GET", f"{project.base}/health")
    assert status == 200, health


def test_the_seed_s_spawns_run_at_the_bwrap_level(project: Project):
    open_window(project)
    for body, output in (
        ({"task_type": "python", "code": 'print("MVP works")', "ttl_seconds": 30}, "MVP works\n"),
        ({"task_type": "shell", "code": "echo shell works", "ttl_seconds": 30}, "shell works\n"),
    ):
        status, accepted = spawn(project, body)
        assert status == 200 and accepted["status"] == "QUEUED", accepted
        record = wait_end(project, accepted["spawn_uuid"])
        assert (record["status"], record["stdout"]) == ("DONE", output), record
    status, report = project.api("GET", "/vx11/status")
    assert status == 200 and report["sandbox"]["level"] == "bwrap", report


def test_no_process_of_the_worker_container_runs_as_root(project: Project):
    """Started as root, the worker gives root up before it starts: every process of its
    container, as ``docker compose top`` lists them, runs as another user; PID 1 (the
    process the worker forked from, which waits for it) has no capability left; the
    worker's user namespace maps its root to that user and the sandbox range to itself."""
    top = project.compose("top", "worker").stdout.splitlines()
    # a table per container (`UID PID PPID ...`), or one with SERVICE and # columns first
    header = next((i for i, line in enumerate(top) if "UID" in line.split()), None)
    assert header is not None, top
    column = top[header].split().index("UID")
    rows = [line.split() for line in top[header + 1 :] if line.strip()]
    uids = [row[column] for row in rows if len(row) > column and row[column] != "UID"]
    assert len(uids) >= 4, top  # PID 1, the worker, its two pool processes
    assert not [uid for uid in uids if uid in ("root", "0")], top
    status = project.compose("exec", "worker", "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines())
    service_uid = fields["Uid"].split()[0]
    assert service_uid != "0" and fields["Uid"].split() == [service_uid] * 4, status
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0, status
    worker = project.compose("exec", "worker", "cat", "/proc/1/task/1/children").stdout.split()
    uid_map = project.compose("exec", "worker", "cat", f"/proc/{worker[0]}/uid_map").stdout
    assert uid_map.split() == ["0", service_uid, "1", "60000", "60000", "1000"], uid_map


def test_files_go_in_and_artifacts_come_out_through_the_published_port(project: Project):
    """A spawn's files reach its sandbox and its artifacts are read back, by a worker
    that is not root, from its run's tmpfs, through the gateway's port."""
    code = "open('out.bin', 'wb').write(open('in.bin', 'rb').read()[::-1])"
    data = bytes(range(256))
    status, accepted = spawn(project, {
        "task_type": "python", "code": code, "ttl_seconds": 30, "artifacts": ["out.bin"],
        "files": [{"path": "in.bin", "content": base64.b64encode(data).decode(),
                   "encoding": "base64"}],
    })  # fmt: skip
    assert status == 200, accepted
    record = wait_end(project, accepted["spawn_uuid"])
    assert (record["status"], record["sandbox"]) == ("DONE", "bwrap"), record
    assert [a["path"] for a in record["artifacts"]] == ["out.bin"], record
    url = f"{project.base}/vx11/spawn/{accepted['spawn_uuid']}/artifacts/out.bin"
    request = urllib.request.Request(url, headers={"X-VX11-Token": project.token})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.read() == data[::-1]


def test_a_spawn_runs_under_the_container_s_filter_and_its_own(project: Project):
    """worker-seccomp.json for the worker container, and the spawn's own filter."""
    status, accepted = spawn(project, {"task_type": "shell", "ttl_seconds": 30,
                                       "code": "grep ^Seccomp /proc/self/status"})  # fmt: skip
    assert status == 200, accepted
    record = wait_end(project, accepted["spawn_uuid"])
    assert record["stdout"].split() == ["Seccomp:", "2", "Seccomp_filters:", "2"], record


def test_a_second_worker_is_a_second_celery_node(project: Project):
    project.compose("up", "--detach", "--scale", "worker=2", *WAIT)

    def two_nodes():
        status, report = project.api("GET", "/vx11/status")
        levels = report["sandbox"]["levels"]
        return levels if status == 200 and len(levels) == 2 else None

    assert set(wait_for(two_nodes, timeout=60, interval=1).values()) == {"bwrap"}
    pinged = project.compose(
        "exec", "worker", "celery", "-A", "workers", "inspect", "ping", "--timeout", "5"
    )
    assert "2 nodes online" in pinged.stdout, pinged.stdout


def test_flower_asks_for_its_login(project: Project):
    status, _ = http("GET", f"{project.flower}/workers")
    assert status == 401
    login = base64.b64encode(f"admin:{project.flower_password}".encode()).decode()
    status, page = http(
        "GET", f"{project.flower}/workers", headers={"Authorization": f"Basic {login}"}
    )
    assert status == 200 and "vx11@" in page


def test_redis_restarted_under_load_loses_no_accepted_spawn(project: Project):
    """Spawns submitted before, during and after a restart of the redis container:
    every one the gateway accepted ends DONE. A request Redis could not serve got a
    503 (never a 500) and queued nothing."""
    open_window(project)
    accepted: list[str] = []
    refused: list[int] = []
    stop = threading.Event()

    def submit() -> None:
        while not stop.is_set():
            try:
                status, answer = spawn(project, {"task_type": "shell", "code": "echo ok",
                                                 "ttl_seconds": 60})  # fmt: skip
            except OSError:
                refused.append(0)
                continue
            if status == 200 and answer.get("status") == "QUEUED":
                accepted.append(answer["spawn_uuid"])
            else:
                assert status == 503, (status, answer)
                refused.append(status)
                time.sleep(0.2)

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        before = len(accepted)
        project.compose("restart", "redis")
        project.compose("up", "--detach", *WAIT)
        time.sleep(3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert before > 0 and len(accepted) > before, (before, len(accepted))
    open_window(project)  # a window is in Redis too; it survived with the AOF
    ends = {spawn_uuid: wait_end(project, spawn_uuid, timeout=180) for spawn_uuid in accepted}
    not_done = {u: (r["status"], r.get("reason")) for u, r in ends.items() if r["status"] != "DONE"}
    assert not not_done, f"{len(not_done)} of {len(accepted)} accepted spawns: {not_done}"


def test_a_worker_killed_mid_run_leaves_its_spawn_worker_lost(project: Project):
    """The other worker's sweeper ends the spawn; the killed container stays down (a
    kill is a stop, for its restart policy)."""
    project.compose("up", "--detach", "--scale", "worker=2", *WAIT)
    open_window(project)
    status, accepted = spawn(project, {"task_type": "shell", "code": "sleep 60",
                                       "ttl_seconds": 120})  # fmt: skip
    assert status == 200, accepted

    def running():
        _, record = project.api("GET", f"/vx11/spawn/{accepted['spawn_uuid']}")
        return record if record["status"] == "RUNNING" and record.get("worker") else None

    node = wait_for(running, timeout=60, interval=0.5)["worker"]
    hostname = node.split("@", 1)[1]  # a container's hostname is its short id
    listed = project.compose("ps", "--format", "json", "worker").stdout.splitlines()
    containers = [json.loads(line) for line in listed if line.strip()]
    [victim] = [c["ID"] for c in containers if c["ID"].startswith(hostname)]
    project.engine.docker("kill", "--signal", "KILL", victim)
    record = wait_end(project, accepted["spawn_uuid"], timeout=150)
    assert (record["status"], record["reason"]) == ("ERROR", "worker_lost"), record
    project.compose("up", "--detach", "--scale", "worker=2", *WAIT)  # restarted by its policy


def test_down_then_up_keeps_the_ledger_and_the_tokens(project: Project):
    open_window(project)
    status, accepted = spawn(project, {"task_type": "shell", "code": "echo kept",
                                       "ttl_seconds": 30})  # fmt: skip
    assert status == 200, accepted
    assert wait_end(project, accepted["spawn_uuid"])["status"] == "DONE"
    project.compose("down", "--timeout", "20")
    project.compose("up", "--detach", *WAIT)
    status, record = project.api("GET", f"/vx11/spawn/{accepted['spawn_uuid']}")
    assert status == 200 and record["stdout"] == "kept\n", record  # the token, and the ledger


# --- what each loosened setting of the worker is for --------------------------------

PROBE = """
import json, os
from vx11.core.config import Settings
from workers.sandbox.levels import base_config, bwrap_problem
from workers.sandbox.uids import LEASES
config = base_config(Settings.from_env())
identity = LEASES.take(config.uids, "bwrap") if os.geteuid() == 0 else None
print(json.dumps({"bwrap": bwrap_problem(config) or "works", "worker_uid": os.geteuid(),
                  "spawn_uid": identity.uid if identity else os.geteuid()}))
"""
WORKER_OPTIONS = ["seccomp=./worker-seccomp.json", "apparmor=unconfined", "systempaths=unconfined"]


def probe(project: Project, tmp_path: Path, options: list[str], user: str = "root") -> dict:
    """What the worker's own sandbox check finds in a worker container with only
    ``options`` as its security options, run as ``user``: whether bwrap works, and the
    uid spawns would run as."""
    override = tmp_path / "override.yaml"
    override.write_text(
        "services:\n  worker:\n    security_opt: !override\n"
        + "".join(f"      - {option}\n" for option in options)
        + ("      []\n" if not options else "")
    )
    done = project.compose(
        "run", "--rm", "--no-deps", "--user", user, "worker", "python", "-c", PROBE,
        files=(str(override),),
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_s_settings_give_it_a_working_sandbox(project: Project, tmp_path):
    found = probe(project, tmp_path, WORKER_OPTIONS)
    assert found["bwrap"] == "works", found
    assert found["spawn_uid"] != found["worker_uid"], found


@pytest.mark.parametrize("option", WORKER_OPTIONS)
def test_without_each_security_option_bubblewrap_fails(project: Project, tmp_path, option):
    if option.startswith("apparmor") and not _apparmor_enabled():
        pytest.skip("this host's kernel has no AppArmor: the option changes nothing here")
    found = probe(project, tmp_path, [o for o in WORKER_OPTIONS if o != option])
    print(f"without {option}: {found['bwrap']}")
    assert found["bwrap"] != "works", f"the worker's sandbox works without {option}: drop it"


def test_without_root_spawns_would_run_as_the_worker_s_own_uid(project: Project, tmp_path):
    """bubblewrap itself needs no root; what root gives the worker is the switch of every
    spawn to an unprivileged uid of its own, which the worker's user cannot make."""
    found = probe(project, tmp_path, WORKER_OPTIONS, user="vx11")
    print(f"as vx11: bwrap {found['bwrap']}, spawns as uid {found['spawn_uid']}")
    assert found["bwrap"] == "works", found
    assert found["spawn_uid"] == found["worker_uid"], found


def _apparmor_enabled() -> bool:
    path = Path("/sys/module/apparmor/parameters/enabled")
    return path.exists() and path.read_text().strip() == "Y"
