"""A spawn's event stream, resumable: every event goes out once, with its id; a client
that reconnects with ``Last-Event-ID`` gets what comes strictly after, while the spawn
runs and once it has ended; a finished spawn replays its output, from its Redis stream
or, once that has expired, from its record. And a record shows its output while the
spawn runs, and the code it was submitted with."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import requests

from tests.support import TOKEN, http, wait_for, wait_terminal
from vx11.core.events import stream_key

pytestmark = pytest.mark.e2e

COUNTING = (
    "import time\nfor i in range(30):\n    print(f'line {i}', flush=True)\n    time.sleep(0.1)\n"
)
COUNTED = "".join(f"line {i}\n" for i in range(30))


@dataclass(frozen=True)
class Event:
    id: str | None
    kind: str
    data: Any


def connect(stack, spawn_id: str, last_event_id: str | None = None) -> requests.Response:
    headers = dict(TOKEN)
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    url = f"{stack.base}/vx11/spawn/{spawn_id}/events"
    return requests.get(url, headers=headers, stream=True, timeout=30)


def events_of(response: requests.Response):
    """The events of an open stream as they arrive (the WHATWG rules this API needs)."""
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    event_id, kind, data = None, "message", []
    for raw in response.iter_lines(chunk_size=None):
        line = raw.decode()
        if not line:
            if data:
                yield Event(event_id, kind, json.loads("\n".join(data)))
            event_id, kind, data = None, "message", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def read_to_end(stack, spawn_id: str, last_event_id: str | None = None) -> list[Event]:
    with connect(stack, spawn_id, last_event_id) as response:
        events = list(events_of(response))
    assert events and events[-1].kind == "end", events
    return events


def order(event_id: str) -> tuple[int, int]:
    ms, seq = event_id.split("-")
    return int(ms), int(seq)


def text(events: list[Event], kind: str = "stdout") -> str:
    return "".join(event.data["text"] for event in events if event.kind == kind)


def record_of(stack, spawn_id: str) -> dict:
    status, record = http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)
    assert status == 200, record
    return record


def test_a_client_that_reconnects_mid_run_gets_every_event_once(stack):
    stack.open_window()
    spawn_id = stack.spawn("python", COUNTING, ttl_seconds=60)["spawn_id"]
    first = []
    with connect(stack, spawn_id) as response:
        for event in events_of(response):
            first.append(event)
            if sum(e.kind == "stdout" for e in first) >= 3:
                break  # the connection drops mid-run
    assert record_of(stack, spawn_id)["status"] == "RUNNING"
    second = read_to_end(stack, spawn_id, last_event_id=first[-1].id)
    events = first + second
    ids = [event.id for event in events]
    assert None not in ids
    assert len(set(ids)) == len(ids)
    assert [order(i) for i in ids] == sorted(order(i) for i in ids)
    record = wait_terminal(stack.base, spawn_id)
    assert record["stdout"] == COUNTED
    assert text(events) == record["stdout"]
    assert text(second) == COUNTED[len(text(first)) :]
    assert [e.data["status"] for e in events if e.kind == "state"].count("RUNNING") == 1
    assert [e.kind for e in events].count("end") == 1
    assert events[-1].data["status"] == "DONE"


def test_a_stream_read_from_its_start_has_the_workers_state_only(stack):
    stack.open_window()
    spawn_id = stack.spawn("shell", "echo go; sleep 1; echo done", ttl_seconds=60)["spawn_id"]
    wait_for(lambda: record_of(stack, spawn_id)["status"] == "RUNNING", timeout=30)
    events = read_to_end(stack, spawn_id)
    assert [e for e in events if e.kind == "state"] == [events[0]]
    assert events[0].data == {"status": "RUNNING"} and order(events[0].id)[0] > 0
    assert text(events) == "go\ndone\n"


def test_a_finished_spawn_replays_its_output_and_resumes_after_any_event(stack):
    stack.open_window()
    spawn_id = stack.spawn("shell", "echo one; echo two >&2; echo three")["spawn_id"]
    record = wait_terminal(stack.base, spawn_id)
    events = read_to_end(stack, spawn_id)
    assert events[0] == Event(events[0].id, "state", {"status": "RUNNING"})
    assert {e.kind for e in events[1:-1]} <= {"stdout", "stderr"}
    assert (text(events), text(events, "stderr")) == ("one\nthree\n", "two\n")
    assert events[-1].data == record
    assert all(e.id for e in events) and len({e.id for e in events}) == len(events)

    assert read_to_end(stack, spawn_id, last_event_id=events[0].id) == events[1:]
    assert read_to_end(stack, spawn_id, last_event_id=events[-2].id) == events[-1:]
    with connect(stack, spawn_id, last_event_id=events[-1].id) as response:
        assert response.status_code == 204  # had the end: EventSource stops reconnecting


def test_an_expired_stream_is_replayed_from_the_record_with_ids_that_resume(stack):
    stack.open_window()
    spawn_id = stack.spawn("shell", "echo out; echo err >&2")["spawn_id"]
    record = wait_terminal(stack.base, spawn_id)
    assert redis.Redis.from_url(stack.redis.url).delete(stream_key(record["spawn_uuid"])) == 1

    events = read_to_end(stack, spawn_id)
    assert [(e.id, e.kind) for e in events] == [
        ("0-1", "state"),
        ("0-2", "stdout"),
        ("0-3", "stderr"),
        ("0-4", "end"),
    ]
    assert events[0].data == {"status": "RUNNING"}
    assert (events[1].data, events[2].data) == ({"text": "out\n"}, {"text": "err\n"})
    assert events[3].data["stdout"] == "out\n" and events[3].data["status"] == "DONE"

    assert read_to_end(stack, spawn_id, last_event_id="0-2") == events[2:]
    with connect(stack, spawn_id, last_event_id="0-4") as response:
        assert response.status_code == 204


def test_a_malformed_last_event_id_is_400(stack):
    stack.open_window()
    spawn_id = stack.spawn("shell", "true")["spawn_id"]
    wait_terminal(stack.base, spawn_id)
    malformed = ("abc", "1-", "-1", "1-2-3", "1.5-0", "1 - 0", "\u00b2-0", f"{2**64}-0")
    for bad in malformed:
        with connect(stack, spawn_id, last_event_id=bad) as response:
            assert response.status_code == 400, bad
            assert response.json()["error"] == "bad_request"


def test_a_running_record_shows_its_output_so_far(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "echo first; echo oops >&2; sleep 30", ttl_seconds=60)

    def with_output():
        record = record_of(stack, accepted["spawn_id"])
        return record["status"] == "RUNNING" and record["stdout"] == "first\n" and record

    record = wait_for(with_output, timeout=30)
    assert record["stderr"] == "oops\n"
    http("POST", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}/cancel", headers=TOKEN)
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["status"], record["stdout"]) == ("CANCELLED", "first\n")


def test_a_record_shows_its_code_and_a_history_page_does_not(stack):
    stack.open_window()
    code = "import sys\nprint(sys.argv[1:])\n"
    accepted = stack.spawn("python", code, args=["a", "b c"])
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert (record["code"], record["args"]) == (code, ["a", "b c"])
    assert read_to_end(stack, accepted["spawn_id"])[-1].data["code"] == code
    status, page = http("GET", f"{stack.base}/vx11/spawns?limit=5", headers=TOKEN)
    assert status == 200
    listed = next(s for s in page["spawns"] if s["spawn_id"] == accepted["spawn_id"])
    assert "code" not in listed and listed["args"] == ["a", "b c"]
