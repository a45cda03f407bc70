"""A worker chooses its sandbox level when it starts: the one asked for, the strongest
that works under ``auto``, or no start at all when the required level cannot work."""

from __future__ import annotations

import pytest

from tests.support import TOKEN, Process, http, service_env, start_worker, wait_for, wait_terminal
from vx11.cli.stack import worker_argv

pytestmark = pytest.mark.e2e


def test_a_worker_that_requires_bwrap_refuses_to_start_without_it(stack, tmp_path):
    config = {**stack.config, "sandbox_require": "bwrap"}
    env = {**service_env(config), "PATH": str(tmp_path)}  # no bwrap on this PATH
    worker = Process("worker-no-bwrap", worker_argv(1, "spawner"), env, tmp_path).start()
    try:
        wait_for(lambda: not worker.alive(), timeout=60)
    finally:
        worker.stop()
    assert worker.proc.returncode != 0
    assert "the bwrap sandbox level is required but unusable" in worker.log()
    assert "bwrap is not installed" in worker.log()


def test_a_basic_worker_runs_spawns_and_reports_its_level(stack, tmp_path):
    stack.worker.stop()  # the module's worker would take the job otherwise (for good)
    basic = start_worker({**stack.config, "sandbox": "basic"}, tmp_path, name="basic")
    try:
        stack.open_window()
        record = wait_terminal(
            stack.base, stack.spawn("shell", "echo $0 $1", args=["x"])["spawn_id"]
        )
        assert (record["status"], record["stdout"], record["sandbox"]) == (
            "DONE",
            "sh x\n",
            "basic",
        )
        status, body = http("GET", f"{stack.base}/vx11/status", headers=TOKEN)
        assert status == 200
        assert list(body["sandbox"]["levels"].values()) == ["basic"]
        assert body["sandbox"]["level"] == "basic"
    finally:
        basic.stop()
