"""End to end through gunicorn and a real Celery worker: the seed's quick start, then
what the MVP could not do: read the spawn's output back."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
import time

import pytest

from tests.support import ROOT, TOKEN, http, service_env, wait_for, wait_terminal
from vx11.core.config import Settings

# The MVP report's three quick-start commands, verbatim but for the address.
SEED_QUICK_START = [
    "curl -s http://localhost:8000/health | jq .",
    """curl -s -X POST http://localhost:8000/vx11/window/open \\
  -H "X-VX11-Token: vx11-test-token" \\
  -d '{"target":"spawner","ttl_seconds":600}' | jq '.is_open'""",
    """curl -s -X POST http://localhost:8000/vx11/spawn \\
  -H "X-VX11-Token: vx11-test-token" \\
  -d '{"task_type":"python","code":"print(\\"MVP works\\")","ttl_seconds":30}' \\
  | jq '.spawn_id'""",
]

pytestmark = pytest.mark.e2e


@functools.cache
def strongest_level_here() -> str:
    """What VX11_SANDBOX=auto must pick on this machine: bwrap when a real run works."""
    from workers.sandbox.levels import base_config, bwrap_problem

    config = base_config(Settings.from_env({}))
    try:
        return "bwrap" if bwrap_problem(config) is None else "basic"
    finally:
        if config.cgroups:
            config.cgroups.close()


def shell(command: str) -> str:
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_seed_quick_start_works_and_the_output_reads_back(stack):
    http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
    local = [cmd.replace("http://localhost:8000", stack.base) for cmd in SEED_QUICK_START]
    health = json.loads(shell(local[0]))
    assert health["status"] == "ok"
    assert shell(local[1]) == "true"
    spawn_id = json.loads(shell(local[2]))
    assert spawn_id.startswith("spawn-") and len(spawn_id) == len("spawn-") + 8
    record = wait_terminal(stack.base, spawn_id)
    assert record["status"] == "DONE"
    assert record["stdout"] == "MVP works\n"
    assert record["exit_code"] == 0
    assert record["worker"].startswith("worker@")
    assert record["sandbox"] == strongest_level_here()
    assert record["started_at"] and record["finished_at"] and record["duration_ms"] >= 0


def test_a_spawn_without_a_window_is_refused_and_never_runs(stack, tmp_path):
    http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
    marker = tmp_path / "ran"
    status, refused = http(
        "POST", f"{stack.base}/vx11/spawn",
        {"task_type": "shell", "code": f"touch {marker}"}, TOKEN,
    )  # fmt: skip
    assert status == 200
    assert refused["error"] == "off_by_policy" and refused["spawn_id"] is None
    time.sleep(1.0)
    assert not marker.exists()


def test_shell_and_python_both_run(stack):
    stack.open_window()
    shell_spawn = stack.spawn("shell", "echo test; echo oops >&2")
    python_spawn = stack.spawn("python", "import sys; print(sum(range(10))); sys.stderr.write('e')")
    shell_record = wait_terminal(stack.base, shell_spawn["spawn_id"])
    python_record = wait_terminal(stack.base, python_spawn["spawn_id"])
    assert (shell_record["status"], shell_record["stdout"], shell_record["stderr"]) == (
        "DONE", "test\n", "oops\n",
    )  # fmt: skip
    assert (python_record["status"], python_record["stdout"], python_record["stderr"]) == (
        "DONE", "45\n", "e",
    )  # fmt: skip


def test_stdin_reaches_the_code(stack):
    stack.open_window()
    accepted = stack.spawn("python", "import sys; print(sys.stdin.read().upper())", stdin="hi")
    assert wait_terminal(stack.base, accepted["spawn_id"])["stdout"] == "HI\n"


def test_a_non_zero_exit_is_failed_with_its_exit_code(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "echo bad >&2; exit 7")
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert record["status"] == "FAILED"
    assert record["exit_code"] == 7
    assert record["stderr"] == "bad\n"


def test_an_endless_loop_ends_timeout_near_its_ttl(stack):
    stack.open_window()
    accepted = stack.spawn("python", "while True:\n    pass", ttl_seconds=2)
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=30)
    assert record["status"] == "TIMEOUT"
    assert record["reason"] in ("wall_time_limit", "cpu_time_limit")
    assert 1500 <= record["duration_ms"] <= 6000


def test_huge_output_is_truncated_and_the_worker_stays_healthy(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "yes 0123456789 | head -c 50000000; echo done >&2")
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=60)
    assert record["status"] == "DONE"
    assert record["stdout_truncated"] is True
    assert len(record["stdout"]) == 1 << 20
    assert record["stderr"] == "done\n" and record["stderr_truncated"] is False
    after = wait_terminal(stack.base, stack.spawn("shell", "echo alive")["spawn_id"])
    assert after["stdout"] == "alive\n"
    assert stack.worker.alive()


def test_the_code_cannot_see_the_workers_environment(stack):
    stack.open_window()
    code = "import os\nprint(sorted(os.environ))\nprint(open('/proc/self/environ', 'rb').read())\n"
    record = wait_terminal(stack.base, stack.spawn("python", code)["spawn_id"])
    assert record["status"] == "DONE", record
    assert "VX11" not in record["stdout"]
    assert "s3cr3t-worker-only" not in record["stdout"]
    assert stack.redis.url not in record["stdout"]
    names = set(ast.literal_eval(record["stdout"].splitlines()[0]))
    assert {"HOME", "LANG", "PATH", "TMPDIR"} <= names <= {"HOME", "LANG", "PATH", "PWD", "TMPDIR"}


def test_the_celery_result_agrees_with_the_api(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "echo from-celery")
    record = wait_terminal(stack.base, accepted["spawn_id"])
    env = service_env(stack.config)
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "result", accepted["spawn_uuid"]],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "from-celery" in result.stdout
    assert record["status"] in result.stdout


def test_the_celery_cli_sees_the_worker_and_its_sandbox_level(stack):
    env = service_env(stack.config)
    inspect = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "inspect", "vx11_worker_info", "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert inspect.returncode == 0, inspect.stderr
    replies = json.loads(inspect.stdout.strip().splitlines()[-1])
    [(name, info)] = replies.items()
    assert name.startswith("worker@")
    assert info["sandbox"] == strongest_level_here()
    status = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers", "status"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert status.returncode == 0, status.stderr
    assert "worker@" in status.stdout and "1 node online" in status.stdout


def test_status_shows_the_live_worker_and_its_sandbox_level(stack):
    status, body = http("GET", f"{stack.base}/vx11/status", headers=TOKEN)
    assert status == 200
    assert body["spawner_available"] is True
    assert body["services"]["spawner"]["workers"] == 1
    assert list(body["sandbox"]["levels"].values()) == [strongest_level_here()]
    assert all(body["services"][name]["ok"] for name in body["services"])


def test_broker_down_is_503_and_spawns_work_again_once_it_is_back(stack):
    stack.open_window()
    stack.broker.stop()
    try:
        status, body = http(
            "POST", f"{stack.base}/vx11/spawn", {"task_type": "shell", "code": "true"}, TOKEN
        )
        assert status == 503
        assert body["error"] == "spawner_unavailable"
    finally:
        stack.broker.start()
    accepted = wait_for(lambda: _accepted(stack), timeout=30, interval=0.5)
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=90)
    assert record["status"] == "DONE"
    assert record["stdout"] == "back\n"
    assert stack.worker.alive()


def _accepted(stack):
    status, body = http(
        "POST", f"{stack.base}/vx11/spawn", {"task_type": "shell", "code": "echo back"}, TOKEN
    )
    return body if status == 200 else None


def test_no_vx11_code_raised_in_the_gateway_or_the_worker(stack):
    """Celery logs its own tracebacks when the broker goes away (above); none may come
    from VX11's code."""
    assert "Traceback" not in stack.gateway.log()
    ours = [str(ROOT / "vx11"), str(ROOT / "workers")]
    frames = [line for line in stack.worker.log().splitlines() if line.startswith('  File "')]
    assert not [line for line in frames if any(path in line for path in ours)]
