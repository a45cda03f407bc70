"""Accepting a spawn: the policy check, the ledger record and the publish, in that order.

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
"""

from __future__ import annotations

import logging
from typing import Any

from vx11.core.audit import AuditEvent
from vx11.core.config import Settings
from vx11.core.dispatch import publish_spawn
from vx11.core.errors import ServiceUnavailable
from vx11.core.logs import spawn_accepted
from vx11.core.policy import SPAWN_TARGET
from vx11.core.states import SpawnStatus
from vx11.core.tokens import TokenInfo
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


def submit_spawn(svc: Services, request: dict[str, Any], token: TokenInfo) -> dict[str, Any]:
    """Queue ``request`` (already validated), as ``token``'s, if the spawner window is
    open.

    Returns the new record, or a :func:`refusal` when policy says no. Either decision
    is audited; an audit entry that cannot be written is a 503 and queues nothing.
    """
    window = svc.windows.get(SPAWN_TARGET)
    if window is None:
        reason = f"no open policy window for target {SPAWN_TARGET} (policy SOLO_MADRE)"
        record_spawn_decision(svc, AuditEvent.SPAWN_REFUSED, request, reason=reason)
        return refusal(reason)
    limits = resolve_limits(request, svc.settings)
    fields = {name: value for name, value in request.items() if name not in limits}
    record = svc.ledger.add(
        {**fields, "limits": limits, "window_id": window.window_id, "owner": token.token_id},
        also=lambda conn, new: record_spawn_decision(
            svc, AuditEvent.SPAWN_ACCEPTED, new, conn=conn
        ),
        max_active=quota_of(svc, token),
    )
    spawn_accepted(record)
    try:
        publish_spawn(svc.celery, record, svc.settings)
    except ServiceUnavailable:
        _end_unpublished(svc, record["spawn_uuid"], "broker_unavailable")
        raise
    try:
        svc.ledger.mark_published(record["spawn_uuid"])
    except Exception:  # unrecorded, the sweeper would end it: say so, as a 503
        _end_unpublished(svc, record["spawn_uuid"], "database_unavailable")
        raise
    return record


def quota_of(svc: Services, token: TokenInfo) -> int:
    """How many spawns ``token`` may have QUEUED or RUNNING: its own limit, else
    ``VX11_MAX_ACTIVE_SPAWNS``; 0 is no limit."""
    limit = token.max_active_spawns
    return svc.settings.max_active_spawns if limit is None else limit


def _end_unpublished(svc: Services, spawn_uuid: str, reason: str) -> None:
    try:
        svc.ledger.transition(spawn_uuid, SpawnStatus.ERROR, reason=reason)
    except Exception:  # the 503 is what the client must see; this is bookkeeping
        log.exception("could not mark unpublished spawn %s as ERROR", spawn_uuid)
