"""Driving a spawn after it is accepted: waiting for its end, and cancelling it.

Waiting reads the spawn's event stream (:mod:`vx11.core.events`) with a blocking read, so a
waiter wakes when the worker announces the end, not on a polling schedule; the ledger
is read again to answer, as it is the record.
"""

from __future__ import annotations

import time
from typing import Any

from vx11.core.audit import AuditEvent
from vx11.core.dispatch import publish_callback
from vx11.core.errors import AlreadyFinished, IllegalTransition
from vx11.core.events import END
from vx11.core.states import SpawnStatus
from vx11.gateway.audit import record_spawn_decision
from vx11.gateway.services import Services

BLOCK_SLICE = 1.0
"""Longest single blocking read, seconds: shorter than the Redis socket timeout."""
CANCEL_WAIT = 3.0
"""How long a cancel of a running spawn waits for the worker to confirm it."""


def is_terminal(record: dict[str, Any]) -> bool:
    return SpawnStatus(record["status"]).is_terminal


def wait_for_end(svc: Services, spawn_uuid: str, timeout: float) -> dict[str, Any]:
    """The spawn's record once it is terminal, or as it is when ``timeout`` runs out."""
    deadline = time.monotonic() + timeout
    last = "0"
    while True:
        # the record is read again only when its events say it ended, or none came
        # for a slice (a stream that expired, a worker that died: the ledger decides)
        record = svc.ledger.get(spawn_uuid)
        if is_terminal(record):
            return record
        while (remaining := deadline - time.monotonic()) > 0:
            block = int(min(remaining, BLOCK_SLICE) * 1000) or 1
            events = svc.events.read(spawn_uuid, after=last, block_ms=block)
            if not events or any(event.kind == END for event in events):
                break
            last = events[-1].id
        else:
            return svc.ledger.get(spawn_uuid)


def cancel(svc: Services, ident: str, *, owner: str | None = None) -> dict[str, Any]:
    """Cancel a spawn: a queued one ends CANCELLED at once and never starts; a running one
    is killed by its worker within a second (the answer waits for that, briefly).
    Cancelling a cancelled spawn again is harmless; a finished one is 409.

    The decision is audited (``spawn_cancelled``) before it takes effect, so an entry
    that cannot be written is a 503 and cancels nothing. With ``owner``, only that
    token's spawn (another's is 404)."""
    record = svc.ledger.get(ident, owner=owner)
    spawn_uuid = record["spawn_uuid"]
    if not is_terminal(record):
        record_spawn_decision(svc, AuditEvent.SPAWN_CANCELLED, record, reason="cancel_requested")
    if record["status"] == SpawnStatus.QUEUED:
        try:
            record = svc.ledger.transition(spawn_uuid, SpawnStatus.CANCELLED, reason="cancelled")
        except IllegalTransition:  # a worker claimed it meanwhile
            record = svc.ledger.get(spawn_uuid)
        else:
            svc.events.finish(spawn_uuid, {"spawn_uuid": spawn_uuid, "status": "CANCELLED"})
            if record.get("callback_url"):
                publish_callback(svc.celery, spawn_uuid)
            return record
    if record["status"] == SpawnStatus.RUNNING:
        svc.events.request_cancel(spawn_uuid)
        return wait_for_end(svc, spawn_uuid, CANCEL_WAIT)
    if record["status"] == SpawnStatus.CANCELLED:
        return record
    raise AlreadyFinished(status=record["status"])
