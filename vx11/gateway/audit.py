"""The gateway's side of the audit log: each policy decision a request makes, recorded
with who made it (the request's token) and from where (:mod:`vx11.core.audit` is the
store, and says the rule for a write that fails)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import g, has_request_context, request
from sqlalchemy import Connection

from vx11.core.audit import AuditEntry, AuditEvent
from vx11.core.policy import SPAWN_TARGET, Opened, Window
from vx11.core.times import iso_z
from vx11.gateway.services import Services


def request_origin() -> dict[str, str | None]:
    """``token_label``, ``token_id`` and ``remote_addr`` of the request being served, as
    :class:`AuditEntry` fields; all None outside a request (CLI, worker)."""
    if not has_request_context():
        return {"token_label": None, "token_id": None, "remote_addr": None}
    token = g.get("token")
    return {
        "token_label": token and token.label,
        "token_id": token and token.token_id,
        "remote_addr": request.remote_addr,
    }


def record_window_opened(svc: Services, opened: Opened, ttl_seconds: int) -> None:
    """Track the window until it is closed or expires, and record its opening, or its
    extension (``window_extended``, with the end it had before)."""
    window, origin = opened.window, request_origin()
    svc.open_windows.track(window, origin["token_label"])
    detail = {"ttl_seconds": ttl_seconds, "expires_at": iso_z(window.expires_at)}
    if opened.previous is not None:
        detail["previous_expires_at"] = iso_z(opened.previous.expires_at)
    event = AuditEvent.WINDOW_EXTENDED if opened.extended else AuditEvent.WINDOW_OPENED
    svc.audit.record(
        AuditEntry(
            event,
            target=window.target,
            window_id=window.window_id,
            reason=window.reason,
            detail=detail,
            **origin,
        )
    )


def record_token_event(svc: Services, event: AuditEvent, detail: Mapping[str, Any]) -> None:
    """Record a token's creation or revocation over the API (``detail`` never holds
    the token itself)."""
    svc.audit.record(AuditEntry(event, detail=dict(detail), **request_origin()))


def record_window_closed(
    svc: Services,
    target: str,
    closed: Window | None,
    reason: str | None,
    cancelled: list[str],
) -> None:
    """Record the close of ``target``'s window (``closed``, or None if none was open)
    and the cancel of the spawns in ``cancelled`` it decides."""
    if closed is not None:
        svc.open_windows.forget(closed.window_id)
    origin = request_origin()
    window_id = closed.window_id if closed is not None else None
    entries = [
        AuditEntry(
            AuditEvent.WINDOW_CLOSED,
            target=target,
            window_id=window_id,
            reason=reason,
            detail={"was_open": closed is not None, "cancelled": cancelled},
            **origin,
        )
    ]
    if cancelled:
        spawn_ids = svc.ledger.spawn_ids(cancelled)
        entries += [
            AuditEntry(
                AuditEvent.SPAWN_CANCELLED,
                target=target,
                window_id=window_id,
                spawn_id=spawn_ids.get(spawn_uuid),
                spawn_uuid=spawn_uuid,
                reason="window_closed",
                detail={"status_before": "RUNNING"},
                **origin,
            )
            for spawn_uuid in cancelled
        ]
    svc.audit.record(*entries)


def record_spawn_decision(
    svc: Services,
    event: AuditEvent,
    spawn: Mapping[str, Any],
    *,
    reason: str | None = None,
    conn: Connection | None = None,
) -> None:
    """Record ``event`` about ``spawn``: its record, or for a refusal the request. A
    refusal's detail has the refusal's ``error``; a cancel's, the state it was in."""
    detail = {"task_type": spawn.get("task_type"), "correlation_id": spawn.get("correlation_id")}
    if event == AuditEvent.SPAWN_REFUSED:
        detail["error"] = "off_by_policy"
    elif event == AuditEvent.SPAWN_CANCELLED:
        detail["status_before"] = spawn.get("status")
    svc.audit.record(
        AuditEntry(
            event,
            target=SPAWN_TARGET,
            window_id=spawn.get("window_id"),
            spawn_id=spawn.get("spawn_id"),
            spawn_uuid=spawn.get("spawn_uuid"),
            reason=reason,
            detail={name: value for name, value in detail.items() if value is not None},
            **request_origin(),
        ),
        conn=conn,
    )
