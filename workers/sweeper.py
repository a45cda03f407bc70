"""Ending spawns whose worker was lost: no spawn stays RUNNING forever.

A running spawn's worker refreshes its live snapshot every second (it lasts
``LIVE_TTL`` seconds). Every worker runs this sweeper: a RUNNING spawn started more
than ``LOST_AFTER`` seconds ago whose snapshot is gone, twice a few seconds apart, has
lost its worker (killed, its host cut off) and is ended ERROR ``worker_lost``. The
end is a compare-and-set in the ledger, so a spawn that finished meanwhile is left
as it is, and the job is never run a second time.

A job can also be lost by the Redis broker itself: delivered to a worker that lost its
connection before it started the job (Redis went down), it stays unacknowledged, to be
handed out again only after the visibility timeout (an hour and more); and Redis, with
its AOF written every second, can lose the last writes it acknowledged when it is
killed. A QUEUED spawn whose job is in neither the queue nor any live worker, at two
looks a few seconds apart, has its job handed back or published again
(:func:`recover_lost_jobs`).

The same thread records the policy windows that ran out without a close
(``window_expired``, :class:`vx11.core.audit.OpenWindows`), within a sweep of their end.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import timedelta

from celery import Celery

from vx11.core.audit import AuditLog
from vx11.core.dispatch import SPAWN_TASK, publish_callback, publish_spawn
from vx11.core.errors import IllegalTransition, NotFound, ServiceUnavailable
from vx11.core.events import LIVE_TTL, SpawnEvents
from vx11.core.ledger import Ledger
from vx11.core.policy import OpenWindows
from vx11.core.states import SpawnStatus
from vx11.core.times import utcnow
from vx11.core.unpublished import Unpublished
from workers.resources import settings

log = logging.getLogger(__name__)

SWEEP_EVERY = 10.0
LOST_AFTER = LIVE_TTL + 5
RECHECK_AFTER = 3.0
UNPUBLISHED_AFTER = 30.0
"""Seconds after which a QUEUED spawn whose job its gateway never confirmed published
(the gateway died between its record and its publish) is ended by the sweeper."""
ORPHANED_AFTER = 15.0
"""Seconds after its acceptance (and after its last delivery) a QUEUED spawn's job, held
by no live worker nor waiting in the queue, is taken for lost by the broker."""
INSPECT_TIMEOUT = 2.0
"""Seconds the sweeper waits for the workers to say which jobs they hold."""


def lost_candidates(store: Ledger, events: SpawnEvents) -> list[str]:
    """RUNNING spawns old enough to have a snapshot, that have none."""
    started_before = utcnow() - timedelta(seconds=LOST_AFTER)
    running = store.running_since_before(started_before)
    live = events.live(running)
    return [spawn_uuid for spawn_uuid in running if spawn_uuid not in live]


def end_unpublished(store: Ledger, events: SpawnEvents, unpublished: Unpublished) -> list[str]:
    """End ERROR ``gateway_lost`` the QUEUED spawns whose gateway died before it could
    confirm their job published (:mod:`vx11.core.unpublished`: noted more than
    :data:`UNPUBLISHED_AFTER` seconds ago; or, from a gateway of an earlier version,
    recorded unpublished in the ledger that long ago); their uuids. Their client never
    got an answer (the gateway confirms the publish before it answers), so the spawn
    must not run: a job that did reach the broker finds it ended and never starts.
    Taking the note first tells a gateway that was only slow that its spawn was taken
    for lost. Its idempotency key is let go with it: the client's retry (the same
    Idempotency-Key, once its pending mark lapses) makes a fresh spawn, and a retry that
    came before this publishes this one (:func:`vx11.gateway.submit.resume`)."""
    created_before = utcnow() - timedelta(seconds=UNPUBLISHED_AFTER)
    lost = [
        spawn_uuid
        for spawn_uuid in unpublished.older_than(UNPUBLISHED_AFTER)
        if unpublished.take(spawn_uuid)  # else its gateway confirmed it meanwhile
    ]
    lost += store.queued_before(created_before, published=False)
    ended = []
    for spawn_uuid in lost:
        try:  # only if it never started (attempt 0): a job that did, was published
            store.transition(
                spawn_uuid,
                SpawnStatus.ERROR,
                attempt=0,
                reason="gateway_lost",
                idempotency_key=None,
            )
        except IllegalTransition:
            continue  # a worker claimed it meanwhile: it was published after all
        except NotFound:
            continue  # noted, never recorded: its request failed before its commit
        events.finish(spawn_uuid, {"spawn_uuid": spawn_uuid, "status": "ERROR"})
        log.warning("spawn %s: its gateway died before publishing it; ended", spawn_uuid)
        ended.append(spawn_uuid)
    return ended


def sweep(store: Ledger, events: SpawnEvents, celery: Celery, stop: threading.Event) -> list[str]:
    """End the spawns whose worker is lost; their uuids."""
    candidates = lost_candidates(store, events)
    if not candidates or stop.wait(RECHECK_AFTER):
        return []
    still_lost = set(lost_candidates(store, events)) & set(candidates)
    ended = []
    for spawn_uuid in sorted(still_lost):
        if _retry_or_end(store, events, celery, spawn_uuid):
            ended.append(spawn_uuid)
    return ended


def _retry_or_end(store: Ledger, events: SpawnEvents, celery: Celery, spawn_uuid: str) -> bool:
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
                publish_spawn(celery, queued, settings(), attempt=attempt + 1)
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
        publish_callback(celery, spawn_uuid)
    log.warning("spawn %s: its worker was lost; ended ERROR worker_lost", spawn_uuid)
    return True


def lost_jobs(store: Ledger, celery: Celery, unpublished: Unpublished) -> dict[str, str | None]:
    """The spawns QUEUED and published (their gateway's note taken) more than
    :data:`ORPHANED_AFTER` seconds ago whose job the Redis broker has lost track of, and
    no live worker holds (active, reserved or scheduled): ``{spawn uuid: delivery tag}``
    of a job left delivered and unacknowledged, or ``{spawn uuid: None}`` of a job gone
    altogether.

    Only while the spawner queue is empty, as its jobs are not indexed by id (a backlog
    drains first); empty on another broker (RabbitMQ hands back an unacknowledged job
    itself) and when no worker answers (who holds what cannot be told)."""
    created_before = utcnow() - timedelta(seconds=ORPHANED_AFTER)
    queued = set(store.queued_before(created_before, published=True))
    if queued:  # one whose gateway has not confirmed its publish is end_unpublished's
        queued -= unpublished.all()
    if not queued:
        return {}
    with celery.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            return {}
        channel = conn.default_channel
        if channel._size(settings().spawn_queue):  # kombu's count over its priority lists
            return {}
        client = channel.client
        raw = client.hgetall(channel.unacked_key)
        delivered_at = dict(client.zrange(channel.unacked_index_key, 0, -1, withscores=True))
    unacked = {}  # spawn uuid -> (tag, delivered at)
    for tag, value in raw.items():
        headers = json.loads(value)[0]["headers"]
        if headers.get("task") == SPAWN_TASK and headers.get("id") in queued:
            name = tag.decode() if isinstance(tag, bytes) else tag
            unacked[headers["id"]] = (name, delivered_at.get(tag, 0.0))
    replies = celery.control.inspect(timeout=INSPECT_TIMEOUT).query_task(*sorted(queued))
    if not replies:
        return {}
    held = {task_id for reply in replies.values() for task_id in reply}
    lost: dict[str, str | None] = {}
    for spawn_uuid in sorted(queued - held):
        tag, at = unacked.get(spawn_uuid, (None, 0.0))
        if at < time.time() - ORPHANED_AFTER:  # not one being handed to a worker now
            lost[spawn_uuid] = tag
    return lost


def recover_lost_jobs(
    store: Ledger, celery: Celery, stop: threading.Event, unpublished: Unpublished
) -> list[str]:
    """Recover the jobs :func:`lost_jobs` finds alike at two looks :data:`RECHECK_AFTER`
    apart: one left unacknowledged goes back to the queue, one gone is published again
    (the worker that gets it checks the policy window, and a spawn that started
    meanwhile is never run twice: its claim is a compare-and-set). Their uuids."""
    first = lost_jobs(store, celery, unpublished)
    if not first or stop.wait(RECHECK_AFTER):
        return []
    again = lost_jobs(store, celery, unpublished)
    recovered = []
    for spawn_uuid, tag in sorted(again.items()):
        if spawn_uuid not in first or first[spawn_uuid] != tag:
            continue
        if tag is None:
            record = store.get(spawn_uuid)
            publish_spawn(celery, record, settings(), attempt=(record["attempts"] or 0) + 1)
            log.warning("spawn %s: the broker lost its job; published it again", spawn_uuid)
        else:
            with celery.connection_for_write() as conn:
                channel = conn.default_channel
                channel.qos.restore_by_tag(tag, client=channel.client)
            log.warning("spawn %s: its job was left unacknowledged by a lost broker "
                        "connection; handed back to the queue", spawn_uuid)  # fmt: skip
        recovered.append(spawn_uuid)
    return recovered


def run_forever(store: Ledger, events: SpawnEvents, celery: Celery, stop: threading.Event) -> None:
    """Sweep every :data:`SWEEP_EVERY` seconds until ``stop`` is set; ``celery`` is the
    worker's app, which publishes the retries and callbacks."""
    audit_log, open_windows = AuditLog(store.engine), OpenWindows(events.redis)
    unpublished = Unpublished(events.redis)
    while not stop.wait(SWEEP_EVERY):
        try:
            sweep(store, events, celery, stop)
            end_unpublished(store, events, unpublished)
        except Exception:  # a down database, Redis or broker: try again next round
            log.exception("sweeping lost spawns failed")
        try:
            recover_lost_jobs(store, celery, stop, unpublished)
        except Exception:  # the same
            log.exception("recovering lost jobs failed")
        try:
            open_windows.record_expired(audit_log)
        except Exception:  # the same: an entry not written is kept for the next round
            log.exception("recording expired windows failed")
