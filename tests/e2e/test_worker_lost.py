"""Nothing stuck: a spawn whose worker dies mid-run reaches a terminal state in bounded
time (ERROR ``worker_lost``) and is never run a second time."""

from __future__ import annotations

import signal
import time

import pytest

from tests.support import TOKEN, http, start_worker, wait_for, wait_terminal
from workers.sweeper import LOST_AFTER, RECHECK_AFTER, SWEEP_EVERY

pytestmark = pytest.mark.e2e

BOUND = LOST_AFTER + SWEEP_EVERY + RECHECK_AFTER + 10
"""The documented bound on how long a lost spawn stays RUNNING, with a margin."""


def record_of(stack, spawn_id: str) -> dict:
    return http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)[1]


def test_a_spawn_whose_whole_worker_is_killed_ends_worker_lost(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "echo started; sleep 120", ttl_seconds=300)
    wait_for(lambda: record_of(stack, accepted["spawn_id"])["status"] == "RUNNING", timeout=30)
    killed_at = time.monotonic()
    stack.worker.stop(sig=signal.SIGKILL)  # the main process and its pool, at once
    stack.worker = start_worker(stack.config, stack.log_dir, name="survivor")
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=BOUND + 30)
    assert (record["status"], record["reason"]) == ("ERROR", "worker_lost")
    assert time.monotonic() - killed_at < BOUND + 30
    after = stack.spawn("shell", "echo still-serving")
    assert wait_terminal(stack.base, after["spawn_id"])["stdout"] == "still-serving\n"
    time.sleep(2)
    assert record_of(stack, accepted["spawn_id"])["status"] == "ERROR"  # never re-run
