"""Ending spawns whose worker was lost: no spawn stays RUNNING forever.

A running spawn's worker refreshes its live snapshot every second (it lasts
``LIVE_TTL`` seconds). Every worker runs this sweeper: a RUNNING spawn started more
than ``LOST_AFTER`` seconds ago whose snapshot is gone, twice a few seconds apart, has
lost its worker (killed, its host cut off) and is ended ERROR ``worker_lost``. The
end is a compare-and-set in the ledger, so a spawn that finished meanwhile is left
as it is, and the job is never run a second time.

The same thread records the policy windows that ran out without a close
(``window_expired``, :class:`vx11.audit.OpenWindows`), within a sweep of their end.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta

from sqlalchemy import select

from vx11.audit import AuditLog, OpenWindows
from vx11.dispatch import publish_callback, publish_spawn
from vx11.errors import IllegalTransition, ServiceUnavailable
from vx11.events import LIVE_TTL, SpawnEvents
from vx11.ledger import Ledger, spawns, utcnow
from vx11.states import SpawnStatus
from workers import app
from workers.spawner import settings

log = logging.getLogger(__name__)

SWEEP_EVERY = 10.0
LOST_AFTER = LIVE_TTL + 5
RECHECK_AFTER = 3.0
UNPUBLISHED_AFTER = 30.0
"""Seconds after which a QUEUED spawn whose job was never recorded as published (its
gateway died between the two writes) is ended by the sweeper."""


def lost_candidates(store: Ledger, events: SpawnEvents) -> list[str]:
    """RUNNING spawns old enough to have a snapshot, that have none."""
    started_before = utcnow() - timedelta(seconds=LOST_AFTER)
    query = select(spawns.c.spawn_uuid).where(
        spawns.c.status == SpawnStatus.RUNNING.value, spawns.c.started_at < started_before
    )
    with store.engine.connect() as conn:
        running = [row.spawn_uuid for row in conn.execute(query)]
    live = events.live(running)
    return [spawn_uuid for spawn_uuid in running if spawn_uuid not in live]


def end_unpublished(store: Ledger, events: SpawnEvents) -> list[str]:
    """End ERROR ``gateway_lost`` the QUEUED spawns whose gateway died before it could
    record their job as published; their uuids. Their client never got an answer (the
    gateway records the publish before it answers), so the spawn must not run: a job
    that did reach the broker finds it ended and never starts, and the client's retry
    (the same Idempotency-Key, once its pending mark lapses) makes a fresh spawn."""
    created_before = utcnow() - timedelta(seconds=UNPUBLISHED_AFTER)
    query = select(spawns.c.spawn_uuid).where(
        spawns.c.status == SpawnStatus.QUEUED.value,
        spawns.c.published.is_(False),
        spawns.c.created_at < created_before,
    )
    with store.engine.connect() as conn:
        stranded = [row.spawn_uuid for row in conn.execute(query)]
    ended = []
    for spawn_uuid in stranded:
        try:
            store.transition(spawn_uuid, SpawnStatus.ERROR, reason="gateway_lost")
        except IllegalTransition:
            continue  # a worker claimed it meanwhile: it was published after all
        events.finish(spawn_uuid, {"spawn_uuid": spawn_uuid, "status": "ERROR"})
        log.warning("spawn %s: its gateway died before publishing it; ended", spawn_uuid)
        ended.append(spawn_uuid)
    return ended


def sweep(store: Ledger, events: SpawnEvents, stop: threading.Event) -> list[str]:
    """End the spawns whose worker is lost; their uuids."""
    candidates = lost_candidates(store, events)
    if not candidates or stop.wait(RECHECK_AFTER):
        return []
    still_lost = set(lost_candidates(store, events)) & set(candidates)
    ended = []
    for spawn_uuid in sorted(still_lost):
        if _retry_or_end(store, events, spawn_uuid):
            ended.append(spawn_uuid)
    return ended


def _retry_or_end(store: Ledger, events: SpawnEvents, spawn_uuid: str) -> bool:
    """A lost spawn with retries left goes back to QUEUED with a new job for its next
    attempt; otherwise it ends ERROR worker_lost. Both are compare-and-sets on the
    attempt that was lost, so a redelivered job racing this changes nothing twice."""
    record = store.get(spawn_uuid)
    attempt = record["attempts"] or 0
    try:
        if attempt <= (record["max_retries"] or 0):
            queued = store.transition(
                spawn_uuid, SpawnStatus.QUEUED, attempt=attempt, reason="retry: worker_lost"
            )
            try:
                publish_spawn(app, queued, settings(), attempt=attempt + 1)
            except ServiceUnavailable:  # never leave it QUEUED without a job
                store.transition(spawn_uuid, SpawnStatus.ERROR, reason="broker_unavailable")
                events.finish(spawn_uuid, {"spawn_uuid": spawn_uuid, "status": "ERROR"})
                return True
            log.warning("spawn %s: its worker was lost; queued attempt %s", spawn_uuid,
                        attempt + 1)  # fmt: skip
            return True
        ended = store.transition(
            spawn_uuid, SpawnStatus.ERROR, attempt=attempt, reason="worker_lost"
        )
    except IllegalTransition:
        return False
    events.finish(spawn_uuid, {"spawn_uuid": spawn_uuid, "status": "ERROR"})
    if ended.get("callback_url"):
        publish_callback(app, spawn_uuid)
    log.warning("spawn %s: its worker was lost; ended ERROR worker_lost", spawn_uuid)
    return True


def run_forever(store: Ledger, events: SpawnEvents, stop: threading.Event) -> None:
    audit_log, open_windows = AuditLog(store.engine), OpenWindows(events.redis)
    while not stop.wait(SWEEP_EVERY):
        try:
            sweep(store, events, stop)
            end_unpublished(store, events)
        except Exception:  # a down database, Redis or broker: try again next round
            log.exception("sweeping lost spawns failed")
        try:
            open_windows.record_expired(audit_log)
        except Exception:  # the same: an entry not written is kept for the next round
            log.exception("recording expired windows failed")
