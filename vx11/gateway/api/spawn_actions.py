"""Acting on one spawn: ``POST /vx11/spawn/<id>/cancel`` and its live event stream,
``GET /vx11/spawn/<id>/events`` (Server-Sent Events)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import redis.exceptions
from flask import Response, stream_with_context

from vx11.core.config import Settings
from vx11.core.events import END
from vx11.core.record import RECORD, SpawnRecord
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import authenticated_blueprint, owner_filter, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.lifecycle import BLOCK_SLICE, cancel, is_terminal
from vx11.gateway.services import Services, services

KEEPALIVE_EVERY = 15.0
"""Seconds between SSE comments on a quiet stream, so proxies keep it open."""
EVENT_STREAM = {
    "description": "Server-Sent Events: ``state``, ``stdout``, ``stderr``, then ``end`` "
    "(its data: the terminal record); ``error`` if Redis is lost mid-stream.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("spawn_actions", __name__, __doc__, url_prefix="/vx11/spawn")

    @blp.post("/<ident>/cancel")
    @requires(Scope.SPAWN)
    @blp.response(200, SpawnRecord)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def cancel_spawn(ident: str):
        """Cancel a spawn

        Cancel a queued or running spawn; the record as it stands after (a running one
        normally CANCELLED already). A finished spawn: 409 ``already_finished``.
        Another token's spawn is 404 (admin may cancel any)."""
        return cancel(services(), ident, owner=owner_filter())

    @blp.get("/<ident>/events")
    @requires(Scope.READ)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.doc(responses={200: EVENT_STREAM})
    def spawn_events(ident: str):
        """Follow a spawn

        Server-Sent Events: ``state`` changes, ``stdout``/``stderr`` text as the code
        produces it, then ``end`` with the terminal record. A late client replays what
        the spawn has streamed so far."""
        svc = services()
        record = svc.ledger.get(ident, owner=owner_filter())  # 404 before the stream starts
        stream = stream_with_context(_events(svc, record))
        return Response(
            stream,
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return blp


def _sse(kind: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data)}\n\n"


def _events(svc: Services, record: dict[str, Any]) -> Iterator[str]:
    spawn_uuid = record["spawn_uuid"]
    yield _sse("state", {"status": record["status"]})
    if is_terminal(record):
        yield _sse(END, RECORD.dump(record))
        return
    last, quiet_since = "0", time.monotonic()
    deadline = time.monotonic() + svc.settings.spawn_max_ttl + 600
    while time.monotonic() < deadline:
        try:
            events = svc.events.read(spawn_uuid, after=last, block_ms=int(BLOCK_SLICE * 1000))
        except redis.exceptions.RedisError:
            yield _sse("error", {"error": "redis_unavailable"})
            return
        for event in events:
            last = event.id
            if event.kind == END:
                yield _sse(END, RECORD.dump(svc.ledger.get(spawn_uuid)), event.id)
                return
            yield _sse(event.kind, event.data, event.id)
        if events:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= KEEPALIVE_EVERY:
            record = svc.ledger.get(spawn_uuid)  # a missed end (stream expired) ends here
            if is_terminal(record):
                yield _sse(END, RECORD.dump(record))
                return
            quiet_since = time.monotonic()
            yield ": keepalive\n\n"
