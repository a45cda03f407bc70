"""Accepting a spawn: the policy check, the ledger record and the publish, in that order.

The policy check is the spawner window, read with the request's token and rate in one
Redis round trip before the view (:mod:`vx11.gateway.admission`).

The record is written before the job is published, so a worker never meets a job
without its record; if the publish fails, the record is ended ERROR at once. If the
gateway dies between the two (its client got no answer), the record stays unpublished
and the workers' sweeper ends it ERROR ``gateway_lost`` (:mod:`workers.sweeper`): none
is left QUEUED without a job, and none runs that its client did not see accepted. The
decision is audited (:mod:`vx11.core.audit`) before the publish too, so no spawn runs
without its ``spawn_accepted`` entry.

A token's quota of active (QUEUED or RUNNING) spawns is checked by the ledger in the
transaction that writes the record (:meth:`vx11.core.ledger.Ledger.add`), so requests
that arrive together can never overshoot it.

A spawn submitted with an ``Idempotency-Key`` keeps the key in its record, so a key
yields at most one spawn whatever dies between two tries: a retry finds the spawn an
earlier try wrote and answers it (:func:`resume`, which publishes it if that try died
before it could). A spawn ended here because its job could not be published lets its
key go with the 503, so the client's retry makes a fresh one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from vx11.core.audit import AuditEvent
from vx11.core.config import Settings
from vx11.core.dispatch import publish_spawn
from vx11.core.errors import IdempotencyKeyReused, OutcomeUnknown, ServiceUnavailable
from vx11.core.logs import spawn_accepted
from vx11.core.policy import SPAWN_TARGET
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
    defaults = {
        "cpu_time_limit": min(request["ttl_seconds"], settings.cpu_time_limit_max),
        "memory_limit_mb": settings.memory_limit_mb,
        "max_processes": settings.max_processes,
        "max_output_bytes": settings.max_output_bytes,
        "max_file_size_mb": settings.max_file_size_mb,
    }
    return {name: request.get(name, default) for name, default in defaults.items()}


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
    window, token = admitted.window, admitted.token
    if window is None:
        reason = f"no open policy window for target {SPAWN_TARGET} (policy SOLO_MADRE)"
        record_spawn_decision(svc, AuditEvent.SPAWN_REFUSED, request, reason=reason)
        return refusal(reason)
    limits = resolve_limits(request, svc.settings)
    fields = {name: value for name, value in request.items() if name not in limits}
    record = svc.ledger.add(
        {
            **fields,
            **(idempotency or {}),
            "limits": limits,
            "window_id": window.window_id,
            "owner": token.token_id,
        },
        also=lambda conn, new: record_spawn_decision(
            svc, AuditEvent.SPAWN_ACCEPTED, new, conn=conn
        ),
        max_active=quota_of(svc, token),
    )
    spawn_accepted(record)
    return publish(svc, record)


def resume(svc: Services, record: dict[str, Any], fingerprint: str) -> dict[str, Any]:
    """The spawn an earlier request with the same idempotency key accepted, whose
    answer was lost (its process died, or Redis lost the answer): a different request
    under that key is :class:`~vx11.core.errors.IdempotencyKeyReused`; one that died
    before publishing the job has it published now, unless the sweeper has ended it."""
    if record["request_fingerprint"] != fingerprint:
        raise IdempotencyKeyReused()
    if record["status"] == SpawnStatus.QUEUED and not record["published"]:
        return publish(svc, record)
    return record


def publish(svc: Services, record: dict[str, Any]) -> dict[str, Any]:
    """Publish the job of ``record`` (just written, QUEUED) and record that it was.

    When either fails, the spawn is ended ERROR before the 503 goes out, so that its
    job, if it did reach the broker, finds it ended and never starts: the 503 means it
    will not run. When the ledger cannot record that end either, the answer says the
    outcome is unknown (:class:`~vx11.core.errors.OutcomeUnknown`), with the spawn's
    ids."""
    try:
        publish_spawn(svc.celery, record, svc.settings)
    except ServiceUnavailable as exc:
        _end_unpublished(svc, record, "broker_unavailable", exc)
        raise
    try:
        svc.ledger.mark_published(record["spawn_uuid"])
    except Exception as exc:  # unrecorded, its job would run: end it, or say so
        _end_unpublished(svc, record, "database_unavailable", exc)
        raise
    return record


def quota_of(svc: Services, token: TokenInfo) -> int:
    """How many spawns ``token`` may have QUEUED or RUNNING: its own limit, else
    ``VX11_MAX_ACTIVE_SPAWNS``; 0 is no limit."""
    limit = token.max_active_spawns
    return svc.settings.max_active_spawns if limit is None else limit


def _end_unpublished(
    svc: Services, record: dict[str, Any], reason: str, failure: Exception
) -> None:
    """End a spawn whose job could not be published (or recorded as published), and
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
