"""Nothing stuck: a spawn whose worker dies mid-run reaches a terminal state in bounded
time (ERROR ``worker_lost``) and is never run a second time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support import TOKEN, http, start_worker, wait_for, wait_terminal
from workers.sweeper import LOST_AFTER, RECHECK_AFTER, SWEEP_EVERY

pytestmark = pytest.mark.e2e

BOUND = LOST_AFTER + SWEEP_EVERY + RECHECK_AFTER + 10
"""The documented bound on how long a lost spawn stays RUNNING, with a margin."""


def record_of(stack, spawn_id: str) -> dict:
    return http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)[1]


@pytest.mark.parametrize("max_retries", [0, 1])
def test_a_spawn_whose_whole_worker_is_killed_ends_or_is_retried_in_bounded_time(
    stack, max_retries
):
    stack.open_window()
    accepted = stack.spawn("shell", "sleep 3; echo ran", ttl_seconds=300, max_retries=max_retries)
    wait_for(lambda: record_of(stack, accepted["spawn_id"])["status"] == "RUNNING", timeout=30)
    killed_at = time.monotonic()
    stack.worker.stop(sig=signal.SIGKILL)  # the main process and its pool, at once
    stack.worker = start_worker(stack.config, stack.log_dir, name=f"survivor{max_retries}")
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=BOUND + 30)
    assert time.monotonic() - killed_at < BOUND + 30
    if max_retries:
        assert (record["status"], record["stdout"], record["attempts"]) == ("DONE", "ran\n", 2)
    else:
        assert (record["status"], record["reason"], record["attempts"]) == (
            "ERROR", "worker_lost", 1,
        )  # fmt: skip
    after = stack.spawn("shell", "echo still-serving")
    assert wait_terminal(stack.base, after["spawn_id"])["stdout"] == "still-serving\n"
    time.sleep(2)
    assert record_of(stack, accepted["spawn_id"])["status"] == record["status"]  # final


def pool_process_running(stack, spawn_id: str) -> int:
    """The pid of the worker's pool process that runs the spawn: the nearest ancestor of
    a process of its sandbox (from the spawn's live snapshot) that is a Celery process
    (at the bwrap level, the slot's bubblewrap and launcher are in between)."""

    def parent(pid: int) -> int:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])

    def found():
        processes = record_of(stack, spawn_id).get("processes") or {}
        pids = processes.get("pids") or []
        if not pids:
            return None
        pid = parent(min(pids))
        while b"celery" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            pid = parent(pid)
        return pid

    return wait_for(found, timeout=30)


@pytest.mark.parametrize(("max_retries", "expected"), [(1, ("DONE", None, 2)), (0, None)])
def test_a_spawn_whose_pool_process_dies_is_retried_only_if_it_asked(stack, max_retries, expected):
    stack.open_window()
    accepted = stack.spawn("shell", "sleep 2; echo ran", max_retries=max_retries)
    os.kill(pool_process_running(stack, accepted["spawn_id"]), signal.SIGKILL)
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=BOUND + 30)
    if expected is None:
        assert (record["status"], record["reason"], record["attempts"]) == (
            "ERROR", "worker_lost", 1,
        )  # fmt: skip
        assert record["stdout"] is None
    else:
        assert (record["status"], record["reason"], record["attempts"]) == expected
        assert record["stdout"] == "ran\n"
    assert stack.worker.alive()  # Celery replaced its pool process
