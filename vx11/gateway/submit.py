"""Accepting a spawn: the policy check, the ledger record and the publish, in that order,
with one Redis round trip before the record, one database commit and one publish.

1. **Admission** (:mod:`vx11.gateway.admission`, before the view): one Lua script
   checks the token, counts the request against its rate, reads the spawner window
   and, if it is open, notes the new spawn's uuid as *unpublished*
   (:mod:`vx11.core.unpublished`, a Redis sorted set).
2. **The record**: the QUEUED record and its ``spawn_accepted`` audit entry, in one
   transaction (:meth:`vx11.core.ledger.Ledger.add`), with the token's quota checked
   in it. It is written ``published``: the note, not the ledger, says it is not yet.
3. **The publish**, then the note is taken away (:func:`publish`), then the answer.

What each step guarantees, and what a gateway killed between two of them leaves:

- The record exists before its job is published, so a worker never meets a job without
  its record; and it holds its audit entry, so nothing is queued without one.
- Killed before the record: a note with no record, which the workers' sweeper takes
  away. Killed between the record and the note's removal (before or after the
  publish): the note stays, and its client got no answer. The sweeper ends such a
  spawn ERROR ``gateway_lost`` once its note is older than
  :data:`workers.sweeper.UNPUBLISHED_AFTER` (taking the note first): none is left QUEUED
  without a job, and a job that did reach the broker finds its spawn ended and never
  starts. (A job published just before its gateway died can be claimed by a worker
  before the sweeper looks, and then runs, as it could when the ledger recorded the
  publish in a second commit: no gateway can make its death and its answer one
  instant.) The sweeper's recovery of jobs the broker lost leaves noted spawns alone,
  so a job never published is never published by it.
- A request slower than that (its note taken before it takes it) ends the spawn and
  answers 503, unless a worker has started it: the answer never says queued for a spawn
  taken for lost.
- Nothing runs after its window closed: the worker reads the window again before it
  starts a job (:mod:`workers.spawner`).

The published mark moved from a second commit to a Redis note, written in a round trip
the request makes anyway and removed in one round trip after the publish. The ledger no
longer tells a job published from one not yet; the note does, for as long as it
matters. A failure to take the note away is treated as a failed publish: the spawn is
ended and the answer is a 503 (``redis_unavailable``), since a note left would have the
sweeper end it. Records an earlier version wrote unpublished are still ended by the
sweeper, and published by :func:`resume`, by their ``published`` column.

What this trades: the mark now lives in Redis, which (its AOF written every second) can
lose its last writes when it is killed. A note whose removal Redis lost makes an
accepted spawn look unconfirmed: if its job is still waiting 30 s later, or Redis lost
the job too, the sweeper ends it ``gateway_lost``, where the ledger's mark had the
sweeper publish a lost job again (:func:`workers.sweeper.recover_lost_jobs`, which still
does for every spawn whose note was taken). A note Redis lost before the record is
harmless unless the gateway dies as well.

A spawn submitted with an ``Idempotency-Key`` keeps the key in its record, so a key
yields at most one spawn whatever dies between two tries: a retry finds the spawn an
earlier try wrote and answers it (:func:`resume`, which publishes it if that try died
before it could confirm the publish). A spawn ended here because its job could not be
published lets its key go with the 503, so the client's retry makes a fresh one.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from vx11.core.audit import AuditEvent
from vx11.core.config import Settings
from vx11.core.dispatch import publish_spawn
from vx11.core.errors import (
    IdempotencyKeyReused,
    IllegalTransition,
    OutcomeUnknown,
    ServiceUnavailable,
    TaskTypeUnavailable,
)
from vx11.core.logs import spawn_accepted
from vx11.core.offers import INTERVAL
from vx11.core.policy import SPAWN_TARGET
from vx11.core.runtimes import QUEUED_WITHOUT_WORKER, server_defaults
from vx11.core.states import SpawnStatus
from vx11.core.tokens import TokenInfo
from vx11.gateway.admission import Admitted
from vx11.gateway.audit import record_spawn_decision
from vx11.gateway.services import Services

log = logging.getLogger(__name__)


def refusal(reason: str) -> dict[str, Any]:
    """The seed's semantic refusal: HTTP 200, nothing queued."""
    return {
        "spawn_id": None,
        "spawn_uuid": None,
        "status": SpawnStatus.ERROR.value,
        "error": "off_by_policy",
        "reason": reason,
        "hint": f"POST /vx11/window/open with target {SPAWN_TARGET}",
    }


def resolve_limits(request: dict[str, Any], settings: Settings) -> dict[str, int]:
    """The spawn's limits: each as ``request`` (already validated) asks, else the
    server's default. The CPU-time default is the spawn's ``ttl_seconds``, within the
    server's maximum (the longest ttl may be configured above it)."""
    cpu = min(request["ttl_seconds"], settings.cpu_time_limit_max)
    return {
        name: request.get(name, cpu if default is None else default)
        for name, default in server_defaults(settings).items()
        if name != "ttl_seconds"  # a field of the spawn, not of its limits
    }


def submit_spawn(
    svc: Services,
    request: dict[str, Any],
    admitted: Admitted,
    idempotency: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Queue ``request`` (already validated) as the spawn ``admitted`` let through, if
    the spawner window it read was open.

    Returns the new record, or a :func:`refusal` when policy says no. Either decision
    is audited; an audit entry that cannot be written is a 503 and queues nothing.
    ``idempotency`` (the key's ledger fields) makes the record the key's only spawn:
    :class:`~vx11.core.ledger.store.AlreadyAccepted` if it has one already.
    """
    window, token, spawn_uuid = admitted.window, admitted.token, admitted.spawn_uuid
    if window is None or spawn_uuid is None:
        reason = f"no open policy window for target {SPAWN_TARGET} (policy SOLO_MADRE)"
        record_spawn_decision(svc, AuditEvent.SPAWN_REFUSED, request, reason=reason)
        return refusal(reason)
    task_type = request["task_type"]
    if task_type not in QUEUED_WITHOUT_WORKER and not svc.offers.offers(task_type):
        _forget_note(svc, spawn_uuid)
        reason = f"no live worker offers task type {task_type!r} (GET /vx11/runtimes)"
        record_spawn_decision(svc, AuditEvent.SPAWN_REFUSED, request, reason=reason)
        raise TaskTypeUnavailable(f"{reason}; retry once one does", retry_after=INTERVAL)
    limits = resolve_limits(request, svc.settings)
    fields = {name: value for name, value in request.items() if name not in limits}
    try:
        record = svc.ledger.add(
            {
                **fields,
                **(idempotency or {}),
                "limits": limits,
                "window_id": window.window_id,
                "owner": token.token_id,
                "published": True,  # noted unpublished in Redis until it is
            },
            also=lambda conn, new: record_spawn_decision(
                svc, AuditEvent.SPAWN_ACCEPTED, new, conn=conn
            ),
            max_active=quota_of(svc, token),
            uuids=itertools.chain([spawn_uuid], svc.unpublished.fresh()),
        )
    except Exception:  # nothing recorded under the note
        _forget_note(svc, spawn_uuid)
        raise
    spawn_accepted(record)
    return publish(svc, record)


def resume(svc: Services, record: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The spawn an earlier request with the same idempotency key accepted, whose
    answer was lost (its process died, or Redis lost the answer): a different request
    under that key is :class:`~vx11.core.errors.IdempotencyKeyReused`; one that died
    before publishing the job has it published now, unless the sweeper has ended it."""
    if record["request_fingerprint"] != fingerprint:
        raise IdempotencyKeyReused()
    if record["status"] != SpawnStatus.QUEUED:
        return record
    if svc.unpublished.noted(record["spawn_uuid"]):
        return publish(svc, record)
    if not record["published"]:  # recorded by a gateway that marked publishes in the ledger
        try:
            publish_spawn(svc.celery, record, svc.settings, producers=svc.producers)
            svc.ledger.mark_published(record["spawn_uuid"])
        except Exception as exc:
            _end_unpublished(svc, record, "broker_unavailable", exc)
            raise
    return record


def publish(svc: Services, record: dict[str, Any]) -> dict[str, Any]:
    """Publish the job of ``record`` (just written, QUEUED, noted unpublished) and take
    its note away.

    When either fails, the spawn is ended ERROR before the 503 goes out, so that its
    job, if it did reach the broker, finds it ended and never starts: the 503 means it
    will not run. When the ledger cannot record that end either, the answer says the
    outcome is unknown (:class:`~vx11.core.errors.OutcomeUnknown`), with the spawn's
    ids. A note already taken is a spawn the workers' sweeper took for lost (this
    request took longer than :data:`workers.sweeper.UNPUBLISHED_AFTER`): it is ended,
    and answered so, unless a worker has started it."""
    try:
        publish_spawn(svc.celery, record, svc.settings, producers=svc.producers)
    except ServiceUnavailable as exc:
        _end_unpublished(svc, record, "broker_unavailable", exc)
        raise
    try:
        confirmed = svc.unpublished.take(record["spawn_uuid"])
    except RedisError as exc:  # a note left would have the sweeper end it: end it now
        _end_unpublished(svc, record, "redis_unavailable", exc)
        raise
    if not confirmed:
        return _taken_for_lost(svc, record)
    return record


def quota_of(svc: Services, token: TokenInfo) -> int:
    """How many spawns ``token`` may have QUEUED or RUNNING: its own limit, else
    ``VX11_MAX_ACTIVE_SPAWNS``; 0 is no limit."""
    limit = token.max_active_spawns
    return svc.settings.max_active_spawns if limit is None else limit


def _end_unpublished(
    svc: Services, record: dict[str, Any], reason: str, failure: Exception
) -> None:
    """End a spawn whose job could not be published (or confirmed published), and
    let its idempotency key go: the client gets a 503, and may retry with the key.
    :class:`~vx11.core.errors.OutcomeUnknown` if even that cannot be recorded."""
    try:
        svc.ledger.transition(
            record["spawn_uuid"], SpawnStatus.ERROR, reason=reason, idempotency_key=None
        )
    except Exception as exc:
        log.exception("could not end unpublished spawn %s", record["spawn_uuid"])
        raise OutcomeUnknown(
            spawn_id=record["spawn_id"], spawn_uuid=record["spawn_uuid"], cause=str(failure)
        ) from exc
    _forget_note(svc, record["spawn_uuid"])


def _taken_for_lost(svc: Services, record: dict[str, Any]) -> dict[str, Any]:
    """The answer for a spawn whose note the sweeper took: ended ERROR ``gateway_lost``
    (by the sweeper, or here first), a 503; or, if a worker started it meanwhile, the
    spawn as accepted."""
    spawn_uuid = record["spawn_uuid"]
    try:
        svc.ledger.transition(
            spawn_uuid, SpawnStatus.ERROR, attempt=0, reason="gateway_lost", idempotency_key=None
        )
    except IllegalTransition:
        if svc.ledger.get(spawn_uuid)["status"] != SpawnStatus.ERROR:
            return record  # a worker claimed it: it runs
    log.warning("spawn %s: taken for lost before its job was confirmed; ended", spawn_uuid)
    raise ServiceUnavailable(
        "spawner_unavailable", "the spawn took too long to queue and was ended; retry"
    )


def _forget_note(svc: Services, spawn_uuid: str) -> None:
    """Take away the note of a spawn that will not be published; one left behind (Redis
    down) is the sweeper's to take, and finds the spawn ended or never recorded."""
    try:
        svc.unpublished.take(spawn_uuid)
    except RedisError:
        log.warning("could not take the unpublished note of spawn %s", spawn_uuid)
