"""The audit log: ``GET /vx11/audit``."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields, post_load, validate

from vx11.core.audit import AuditEvent, AuditFilter
from vx11.core.config import Settings
from vx11.core.record import UTCDateTime
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import authenticated_blueprint, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.api.fields import Choice, PageQuery, page_schema
from vx11.gateway.services import services

"""Most entries one audit page holds."""
EVENTS = tuple(event.value for event in AuditEvent)
SPAWN_IDENT = validate.Regexp(
    r"^(spawn-[0-9a-f]{8}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$",
    error="a spawn_id (spawn-xxxxxxxx) or a spawn_uuid",
)


class AuditQuery(PageQuery):
    """The query string of ``GET /vx11/audit``; loads as the audit log's page arguments."""

    event = fields.List(
        Choice(EVENTS),
        load_default=list,
        metadata={
            "description": "Only these events, in any case: repeat it or separate with "
            "commas for several."
        },
    )
    target = fields.String(
        validate=validate.Length(1, 255),
        metadata={"description": "Only entries about this window target."},
    )
    token_label = fields.String(
        validate=validate.Length(1, 1000),
        metadata={"description": "Only entries by a token with this label."},
    )
    token_id = fields.String(
        validate=validate.Length(1, 64), metadata={"description": "Only entries by this token."}
    )
    spawn_id = fields.String(
        validate=SPAWN_IDENT,
        metadata={"description": "Only entries about this spawn: its spawn_id or spawn_uuid."},
    )

    @post_load
    def _page_arguments(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        spawn = data.get("spawn_id")
        by_id = spawn is not None and spawn.startswith("spawn-")
        audit_filter = AuditFilter(
            events=tuple(dict.fromkeys(AuditEvent(value) for value in data["event"])),
            target=data.get("target"),
            token_label=data.get("token_label"),
            token_id=data.get("token_id"),
            spawn_id=spawn if by_id else None,
            spawn_uuid=None if by_id else spawn,
            since=data.get("since"),
            until=data.get("until"),
        )
        return {"filters": audit_filter, "limit": data["limit"], "cursor": data.get("cursor")}


class AuditEntrySchema(Schema):
    id = fields.Integer()
    at = UTCDateTime()
    event = fields.String()
    target = fields.String(allow_none=True)
    window_id = fields.String(allow_none=True)
    spawn_id = fields.String(allow_none=True)
    spawn_uuid = fields.String(allow_none=True)
    token_label = fields.String(allow_none=True)
    token_id = fields.String(allow_none=True)
    remote_addr = fields.String(allow_none=True)
    reason = fields.String(allow_none=True)
    detail = fields.Dict(allow_none=True)


AuditPage = page_schema("AuditPage", "entries", AuditEntrySchema)


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("audit", __name__, __doc__)

    @blp.get("/audit")
    @requires(Scope.ADMIN)
    @blp.arguments(AuditQuery, location="query")
    @blp.response(200, AuditPage)
    @blp.alt_response(400, response="BAD_REQUEST")
    def list_audit(query):
        """The audit log

        Newest first: ``{"entries": [...], "next_cursor": str|null}``.

        Each entry is one decision: ``event`` (``window_opened``, ``window_extended``,
        ``window_closed``, ``window_expired``, ``spawn_accepted``, ``spawn_refused``,
        ``spawn_cancelled``, ``token_created``, ``token_revoked``), ``at`` (ISO 8601
        UTC), who (``token_label``, ``token_id``) from where (``remote_addr``), what
        (``target``, ``window_id``, ``spawn_id``, ``spawn_uuid``), ``reason`` and
        ``detail``.

        Query: ``event`` (repeat it or separate with commas for several), ``target``,
        ``token_label``, ``token_id``, ``spawn_id`` (a spawn_id or a spawn_uuid),
        ``since`` (written at or after) and ``until`` (written before), ISO 8601 with
        naive meaning UTC; ``limit`` 1 to 200 (50); and ``cursor``, a page's
        ``next_cursor``, for the page after it. Following cursors repeats and skips
        nothing while entries are written. A malformed query is 422 naming the field; a
        cursor this server did not hand out is 400 ``bad_cursor``.
        """
        page = services().audit.page(**query)
        return {"entries": page.rows, "next_cursor": page.next_cursor}

    return blp
