"""Cancelling spawns and watching them live, through gunicorn and a real worker."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tests.support import TOKEN, http, start_worker, wait_for, wait_terminal

pytestmark = pytest.mark.e2e


def sse(base: str, spawn_id: str, timeout: float = 30) -> list[tuple[str, dict]]:
    """Every (event, data) of a spawn's event stream, read until the server ends it."""
    request = urllib.request.Request(f"{base}/vx11/spawn/{spawn_id}/events", headers=TOKEN)
    events, kind = [], None
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    return events


def running(stack, spawn_id: str) -> bool:
    return http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)[1]["status"] == (
        "RUNNING"
    )


def test_cancelling_a_running_spawn_kills_it_within_a_second_and_keeps_its_output(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "echo before; sleep 60 & sleep 60; echo after", ttl_seconds=60)
    wait_for(lambda: running(stack, accepted["spawn_id"]), timeout=30)
    time.sleep(0.3)  # let "before" reach the worker
    started = time.monotonic()
    status, record = http("POST", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}/cancel",
                          headers=TOKEN)  # fmt: skip
    assert status == 200, record
    assert time.monotonic() - started < 2.0
    assert (record["status"], record["reason"]) == ("CANCELLED", "cancelled")
    assert record["stdout"] == "before\n"
    again = http("POST", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}/cancel", headers=TOKEN)
    assert again[0] == 200 and again[1]["status"] == "CANCELLED"


def test_cancelling_a_queued_spawn_means_it_never_starts(stack):
    stack.open_window()
    stack.worker.stop()
    try:
        accepted = stack.spawn("shell", "echo should-never-run")
        status, record = http(
            "POST", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}/cancel", headers=TOKEN
        )
        assert status == 200
        assert (record["status"], record["reason"]) == ("CANCELLED", "cancelled")
    finally:
        stack.worker = start_worker(stack.config, stack.log_dir, name="resumed")
    after = stack.spawn("shell", "echo next")  # the worker drains the queue past it
    assert wait_terminal(stack.base, after["spawn_id"])["stdout"] == "next\n"
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["status"], record["started_at"], record["stdout"]) == ("CANCELLED", None, None)


def test_cancelling_a_finished_spawn_is_409(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "true")
    wait_terminal(stack.base, accepted["spawn_id"])
    status, body = http("POST", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}/cancel",
                        headers=TOKEN)  # fmt: skip
    assert status == 409
    assert body == {
        "error": "already_finished",
        "message": "the spawn has already finished",
        "status": "DONE",
    }


def test_cancelling_an_unknown_spawn_is_404(stack):
    status, body = http("POST", f"{stack.base}/vx11/spawn/spawn-00000000/cancel", headers=TOKEN)
    assert (status, body["error"]) == (404, "not_found")


def test_the_event_stream_carries_output_live_then_the_final_record(stack):
    stack.open_window()
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    accepted = stack.spawn("python", code)
    started = time.monotonic()
    events = sse(stack.base, accepted["spawn_id"])
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "state" and kinds[-1] == "end"
    assert "".join(data["text"] for kind, data in events if kind == "stdout") == "0\n1\n2\n"
    end = events[-1][1]
    assert (end["status"], end["stdout"], end["exit_code"]) == ("DONE", "0\n1\n2\n", 0)
    assert time.monotonic() - started < 20


def test_the_event_stream_of_a_finished_spawn_replays_its_output(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "echo done")
    wait_terminal(stack.base, accepted["spawn_id"])
    events = sse(stack.base, accepted["spawn_id"])
    assert events[:2] == [("state", {"status": "RUNNING"}), ("stdout", {"text": "done\n"})]
    assert [kind for kind, _ in events] == ["state", "stdout", "end"]
    assert events[-1][1]["stdout"] == "done\n"


def test_a_wait_returns_as_soon_as_the_spawn_ends(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "sleep 1; echo waited")
    started = time.monotonic()
    status, record = http("GET", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}?wait=30",
                          headers=TOKEN)  # fmt: skip
    assert status == 200
    assert (record["status"], record["stdout"]) == ("DONE", "waited\n")
    assert 1.0 <= time.monotonic() - started < 10


def test_a_running_spawn_shows_its_live_processes(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "sleep 30 & sleep 30", ttl_seconds=60)
    wait_for(lambda: running(stack, accepted["spawn_id"]), timeout=30)

    def snapshot():
        record = http("GET", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}", headers=TOKEN)[1]
        return record["processes"]

    def settled():  # the first snapshot may come before the shell started its sleeps
        processes = snapshot()
        return (
            processes and (processes.get("count") is None or processes["count"] >= 3) and processes
        )

    processes = wait_for(settled, timeout=10)
    if processes.get("count") is not None:  # with per-spawn cgroups
        assert processes["count"] >= 3  # sh and its two sleeps (and bwrap's own, at bwrap)
        assert len(processes["pids"]) == processes["count"]
        assert processes["rss_kb"] > 0
    http("POST", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}/cancel", headers=TOKEN)
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert record["status"] == "CANCELLED" and record["processes"] is None
