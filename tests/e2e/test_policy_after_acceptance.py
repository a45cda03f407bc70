"""SOLO_MADRE holds after acceptance: a spawn accepted under a window never starts once
that window has closed or expired, even if another window has opened since; and it
runs while its window stays open, however often that window is opened again."""

from __future__ import annotations

import time

import pytest

from tests.support import TOKEN, http, start_worker, wait_for, wait_terminal

pytestmark = pytest.mark.e2e


def resume(stack):
    stack.worker = start_worker(stack.config, stack.log_dir, name="resumed")


def test_a_spawn_whose_window_closed_before_it_started_is_cancelled(stack):
    stack.worker.stop()
    try:
        stack.open_window()
        accepted = stack.spawn("shell", "echo should-never-run")
        http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
        stack.open_window()  # a new window does not revive the old one's spawns
    finally:
        resume(stack)
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["status"], record["reason"]) == ("CANCELLED", "window_closed")
    assert record["stdout"] is None and record["started_at"] is None


def test_a_spawn_whose_window_expired_before_it_started_is_cancelled(stack):
    stack.worker.stop()
    try:
        stack.open_window(ttl=1)
        accepted = stack.spawn("shell", "echo should-never-run")
        time.sleep(1.5)
    finally:
        resume(stack)
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["status"], record["reason"]) == ("CANCELLED", "window_closed")


def test_a_spawn_under_the_open_window_still_runs(stack):
    stack.open_window()
    record = wait_terminal(stack.base, stack.spawn("shell", "echo fine")["spawn_id"])
    assert (record["status"], record["stdout"]) == ("DONE", "fine\n")
    assert wait_for(lambda: stack.worker.alive())


def test_spawns_queued_under_a_window_extended_meanwhile_all_run(stack):
    stack.worker.stop()
    try:
        first = stack.open_window(ttl=60)
        accepted = [stack.spawn("shell", f"echo {n}") for n in range(5)]
        extended = stack.open_window(ttl=600)  # an operator extends it
        shortened = stack.open_window(ttl=300)  # and changes their mind
    finally:
        resume(stack)
    assert first["window_id"] == extended["window_id"] == shortened["window_id"]
    for n, spawn in enumerate(accepted):
        record = wait_terminal(stack.base, spawn["spawn_id"])
        assert (record["status"], record["stdout"]) == ("DONE", f"{n}\n")
