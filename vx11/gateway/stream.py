"""A spawn's events as the gateway serves them: ``GET /vx11/spawn/<id>/events`` (Server-Sent
Events), resumable with ``Last-Event-ID``, and the output a running spawn's record shows.

Each event goes out once, with its ``id:``, the id of its entry in the spawn's Redis
stream (:mod:`vx11.core.events`): a client that reconnects with ``Last-Event-ID`` gets
what comes strictly after it, while the spawn runs and once it has ended. What the stream
does not hold is made from the ledger's record, with ids that sort before any entry's
(``0-1`` to ``0-4``, so resuming works there too): the ``state`` a stream read from its
start opens with when the worker has written none (a QUEUED spawn, one that ended without
running), and, once a finished spawn's stream has expired
(:data:`~vx11.core.events.STREAM_TTL`), the whole replay: ``state``, ``stdout``,
``stderr``, ``end``.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterable, Iterator
from itertools import chain
from typing import Any

import redis.exceptions
from werkzeug.exceptions import BadRequest

from vx11.core.events import END, OUTPUT, STATE, Event, event_bytes, parse_id
from vx11.core.record import DETAIL, encoded
from vx11.core.states import SpawnStatus
from vx11.gateway.lifecycle import BLOCK_SLICE, is_terminal
from vx11.gateway.services import Services

log = logging.getLogger(__name__)

LAST_EVENT_ID = "Last-Event-ID"
LAST_EVENT_ID_PARAMETER = {
    "in": "header",
    "name": LAST_EVENT_ID,
    "required": False,
    "schema": {"type": "string", "pattern": "^[0-9]{1,20}-[0-9]{1,20}$"},
    "description": "Resume after this event (the ``id:`` of the last one received).",
}
RETRY_MS = 1000
"""The reconnection delay the stream advises (``retry:``): resuming is cheap."""
KEEPALIVE_EVERY = 15.0
"""Seconds between SSE comments on a quiet stream, so proxies keep it open."""
FROM_RECORD = {STATE: "0-1", "stdout": "0-2", "stderr": "0-3", END: "0-4"}
"""The ids of the events made from the ledger's record: before any stream entry's."""


def last_event_id(value: str | None) -> str | None:
    """The event a client resumes after, from its ``Last-Event-ID`` header (none, or
    empty: from the start); 400 ``bad_request`` if it is no event id."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        ms, seq = parse_id(value)
    except ValueError:
        raise BadRequest(
            f"{LAST_EVENT_ID} must be the id of an event of this stream, such as 1764098510330-0"
        ) from None
    return f"{ms}-{seq}"


def event_stream(
    svc: Services, record: dict[str, Any], after: str | None, encoding: str = "utf8"
) -> Iterator[str] | None:
    """The text of the spawn's event stream for a client that has had the events up to
    ``after`` (None: none); None when it has had them all, ``end`` included. Output
    events carry ``text``, or, with ``encoding`` base64, ``base64``: the exact bytes.

    The first read of the stream is done here, so a Redis that does not answer is a 503
    before the stream starts."""
    spawn_uuid = record["spawn_uuid"]
    first = svc.events.read(spawn_uuid, after=after or "0")
    if not is_terminal(record):
        return _live(svc, record, after, first, encoding)
    if first:
        return _replay(svc, record, after, first, encoding)
    last = svc.events.last(spawn_uuid)
    if last is not None:  # the client has had the whole stream
        return None if last.kind == END else _advised([_sse(END, _final(record, encoding))])
    return _from_record(record, after, encoding)  # the stream has expired


def with_progress(svc: Services, record: dict[str, Any]) -> dict[str, Any]:
    """The record as a read answers it: while the spawn runs, with its live processes and
    the output it has streamed so far (the ledger holds its output only once it ends);
    ``processes`` null otherwise. Output that Redis cannot give leaves the record as the
    ledger has it."""
    record["processes"] = None
    if record["status"] != SpawnStatus.RUNNING:
        return record
    spawn_uuid = record["spawn_uuid"]
    record["processes"] = svc.events.live([spawn_uuid]).get(spawn_uuid)
    try:
        output = svc.events.output_so_far(spawn_uuid)
    except redis.exceptions.RedisError as exc:
        log.warning("could not read the output so far of spawn %s: %s", spawn_uuid, exc)
        return record
    for name, data in (output or {}).items():
        if record[name] is None:
            record[name] = data.decode("utf-8", "replace")
            exact = record[name].encode("utf-8") == data
            record[f"{name}_raw"] = None if exact else data
    return record


def _final(record: dict[str, Any], encoding: str) -> dict[str, Any]:
    """The ``end`` event's data: the terminal record, as a read answers it."""
    return dict(DETAIL.dump(encoded({**record, "processes": None}, encoding)))


def _data(event: Event, encoding: str) -> dict[str, Any]:
    """An event's data as the client asked: output as text, or its bytes in base64."""
    if event.kind not in OUTPUT:
        return event.data
    if encoding == "base64":
        return {"base64": base64.b64encode(event_bytes(event.data)).decode("ascii")}
    return {"text": event.data["text"]}


def _sse(kind: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


def _advised(texts: Iterable[str]) -> Iterator[str]:
    yield f"retry: {RETRY_MS}\n\n"
    yield from texts


def _opening_state(record: dict[str, Any]) -> str:
    """The ``state`` a stream from its start opens with, from the record: the spawn's
    state, or RUNNING for a finished spawn that ran (as its worker's stream opened)."""
    if is_terminal(record) and record["started_at"] is not None:
        return SpawnStatus.RUNNING.value
    return str(record["status"])


def _needs_opening_state(after: str | None, events: list[Event]) -> bool:
    """A stream read from its start opens with a ``state``: the worker's when it wrote
    one, else one from the record."""
    return after is None and (not events or events[0].kind != STATE)


def _replay(
    svc: Services, record: dict[str, Any], after: str | None, first: list[Event], encoding: str
) -> Iterator[str]:
    """A finished spawn's stream after ``after``, to its end."""
    yield f"retry: {RETRY_MS}\n\n"
    if _needs_opening_state(after, first):
        yield _sse(STATE, {"status": _opening_state(record)}, FROM_RECORD[STATE])
    for event in chain(first, svc.events.replay(record["spawn_uuid"], after=first[-1].id)):
        if event.kind == END:
            yield _sse(END, _final(record, encoding), event.id)
            return
        yield _sse(event.kind, _data(event, encoding), event.id)
    yield _sse(END, _final(record, encoding))  # the stream lost its end: the record has it


def _from_record(record: dict[str, Any], after: str | None, encoding: str) -> Iterator[str] | None:
    """The replay of a finished spawn whose stream has expired, made from its record."""
    if after is not None and parse_id(after)[0] > 0:
        # The client had events of the stream itself: which, the stream no longer says.
        return _advised([_sse(END, _final(record, encoding))])
    events = [(STATE, {"status": _opening_state(record)})]
    output = encoded(record, encoding)
    key = "base64" if encoding == "base64" else "text"
    events += [(name, {key: output[name]}) for name in OUTPUT if record[name]]
    events.append((END, _final(record, encoding)))
    position = parse_id(after) if after is not None else (0, 0)
    texts = [
        _sse(kind, data, FROM_RECORD[kind])
        for kind, data in events
        if parse_id(FROM_RECORD[kind]) > position
    ]
    return _advised(texts) if texts else None


def _live(
    svc: Services, record: dict[str, Any], after: str | None, pending: list[Event], encoding: str
) -> Iterator[str]:
    """A queued or running spawn's stream after ``after``, followed to its end."""
    spawn_uuid = record["spawn_uuid"]
    yield f"retry: {RETRY_MS}\n\n"
    if _needs_opening_state(after, pending):
        yield _sse(STATE, {"status": _opening_state(record)}, FROM_RECORD[STATE])
    last, quiet_since = after or "0", time.monotonic()
    deadline = time.monotonic() + svc.settings.spawn_max_ttl + 600
    while time.monotonic() < deadline:
        for event in pending:
            last = event.id
            if event.kind == END:
                yield _sse(END, _final(svc.ledger.get(spawn_uuid), encoding), event.id)
                return
            yield _sse(event.kind, _data(event, encoding), event.id)
        if pending:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE_EVERY:
            record = svc.ledger.get(spawn_uuid)  # a missed end (stream expired) ends here
            if is_terminal(record):
                yield _sse(END, _final(record, encoding))
                return
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
        try:
            pending = svc.events.read(spawn_uuid, after=last, block_ms=int(BLOCK_SLICE * 1000))
        except redis.exceptions.RedisError:
            yield _sse("error", {"error": "redis_unavailable"})
            return
