"""Policy windows: ``POST /vx11/window/open``, ``POST /vx11/window/close``,
``GET /vx11/window/status/<target>``."""

from __future__ import annotations

import functools
from typing import Any

from marshmallow import Schema, fields, validate

from vx11.core.config import Settings
from vx11.core.errors import NotFound
from vx11.core.policy import Window
from vx11.core.times import iso_z
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import authenticated_blueprint, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.audit import record_window_closed, record_window_opened
from vx11.gateway.services import services

REASON = fields.String(
    load_default=None,
    allow_none=True,
    validate=validate.Length(max=500),
    metadata={"description": "Why, for the audit log: at most 500 characters."},
)


@functools.cache
def request_schemas(settings: Settings) -> tuple[Schema, Schema]:
    """The open and close request schemas, with this deployment's targets and limits."""
    target = fields.String(
        required=True,
        validate=validate.OneOf(settings.window_targets),
        metadata={
            "description": "The window's target (VX11_WINDOW_TARGETS): spawner's window "
            "gates spawns; the others are for other VX11 services to ask about."
        },
    )
    ttl = fields.Integer(
        strict=True,
        load_default=settings.window_default_ttl,
        validate=validate.Range(1, settings.window_max_ttl),
        metadata={
            "description": "Seconds from now until the window closes by itself; an open "
            "window is extended to that. Default and maximum: the server's "
            "(VX11_WINDOW_DEFAULT_TTL, VX11_WINDOW_MAX_TTL)."
        },
    )
    open_schema = Schema.from_dict(
        {"target": target, "ttl_seconds": ttl, "reason": REASON}, name="WindowOpenRequest"
    )
    close_schema = Schema.from_dict(
        {
            "target": target,
            "reason": REASON,
            "cancel_running": fields.Boolean(
                truthy={True},
                falsy={False},
                load_default=False,
                metadata={
                    "description": "Also cancel the spawns running under the window (the "
                    "queued ones never start in any case)."
                },
            ),
        },
        name="WindowCloseRequest",
    )
    return open_schema(), close_schema()


def request_examples(settings: Settings) -> tuple[dict[str, Any], dict[str, Any]]:
    """The open and close requests the docs page's "Try it out" sends: the spawner's
    window, for the default length."""
    return (
        {"target": "spawner", "ttl_seconds": settings.window_default_ttl, "reason": "trying VX11"},
        {"target": "spawner", "reason": "done trying"},
    )


class WindowView(Schema):
    target = fields.String(required=True)
    is_open = fields.Boolean(required=True)
    window_id = fields.String(required=True, allow_none=True)
    opened_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    expires_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    ttl_remaining_seconds = fields.Integer(required=True)
    reason = fields.String(required=True, allow_none=True)


class WindowOpened(WindowView):
    extended = fields.Boolean(
        required=True,
        metadata={
            "description": "True when the window was open already: the same window "
            "(its window_id, opened_at), now ending at expires_at."
        },
    )
    previous_expires_at = fields.String(
        required=True,
        allow_none=True,
        metadata={"format": "date-time", "description": "Where an extended window ended."},
    )


class WindowClosed(Schema):
    target = fields.String(required=True)
    closed = fields.Boolean(required=True)
    was_open = fields.Boolean(required=True)
    reason = fields.String(required=True, allow_none=True)
    cancelled = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The spawn_uuids of the running spawns cancelled."},
    )


def window_view(target: str, window: Window | None) -> dict[str, Any]:
    if window is None:
        return {
            "target": target,
            "is_open": False,
            "window_id": None,
            "opened_at": None,
            "expires_at": None,
            "ttl_remaining_seconds": 0,
            "reason": None,
        }
    return {
        "target": target,
        "is_open": True,
        "window_id": window.window_id,
        "opened_at": iso_z(window.opened_at),
        "expires_at": iso_z(window.expires_at),
        "ttl_remaining_seconds": window.ttl_remaining(),
        "reason": window.reason,
    }


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("windows", __name__, __doc__, url_prefix="/vx11/window")
    open_schema, close_schema = request_schemas(settings)
    open_example, close_example = request_examples(settings)

    @blp.post("/open")
    @requires(Scope.WINDOW)
    @blp.arguments(open_schema, example=open_example)
    @blp.response(200, WindowOpened)
    def open_window(args):
        """Open a window

        Open the window of a target for ``ttl_seconds`` from now. A window already open
        is extended, not replaced (``extended: true``): the same window, its
        ``window_id`` and ``opened_at`` kept, ending at the new ``expires_at`` (later or
        earlier: ``previous_expires_at`` is the end it had). Spawns accepted under it
        stay startable while it stays open.

        Audited (``window_opened``, or ``window_extended``); if the audit entry cannot
        be written the answer is 503 ``database_unavailable`` although the window is
        open: opening again is harmless."""
        svc = services()
        opened = svc.windows.open(args["target"], args["ttl_seconds"], args["reason"])
        record_window_opened(svc, opened, args["ttl_seconds"])
        previous = opened.previous
        return {
            **window_view(opened.window.target, opened.window),
            "extended": opened.extended,
            "previous_expires_at": iso_z(previous.expires_at) if previous else None,
        }

    @blp.post("/close")
    @requires(Scope.WINDOW)
    @blp.arguments(close_schema, example=close_example)
    @blp.response(200, WindowClosed)
    def close_window(args):
        """Close a window

        Close a target's window; ``was_open`` says whether one was open. Spawns accepted
        under it and not yet started never start; with ``cancel_running: true`` the ones
        running under it are cancelled too (``cancelled`` lists them).

        Audited (``window_closed``, and ``spawn_cancelled`` for each cancel, written
        before the cancels are asked for); if that cannot be written the answer is 503
        ``database_unavailable``, the window closed and nothing cancelled: closing again
        is harmless."""
        svc = services()
        closed = svc.windows.close(args["target"])
        cancelled = []
        if closed is not None and args["cancel_running"]:
            cancelled = svc.ledger.running_under(closed.window_id)
        record_window_closed(svc, args["target"], closed, args["reason"], cancelled)
        for spawn_uuid in cancelled:
            svc.events.request_cancel(spawn_uuid)
        return {
            "target": args["target"],
            "closed": True,
            "was_open": closed is not None,
            "reason": args["reason"],
            "cancelled": cancelled,
        }

    @blp.get("/status/<target>")
    @requires(Scope.READ)
    @blp.response(200, WindowView)
    @blp.alt_response(404, response="NOT_FOUND")
    def window_status(target: str):
        """A window's state

        The target's window, or ``is_open: false`` with nulls. An unknown target is 404
        listing the known ones."""
        if target not in settings.window_targets:
            raise NotFound(f"unknown window target {target}", targets=list(settings.window_targets))
        return window_view(target, services().windows.get(target))

    return blp
