"""API tokens: ``POST|GET /vx11/tokens``, ``DELETE /vx11/tokens/<token_id>`` (admin), and
``GET /vx11/token``, the caller's own.

Rotation is create-new, then revoke-old: both are valid in between, so clients can
switch without a gap."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from marshmallow import Schema, fields, validate

from vx11.core.audit import AuditEvent
from vx11.core.config import Settings
from vx11.core.errors import NotFound
from vx11.core.tokens import SCOPES, Scope
from vx11.gateway.api.auth import authenticated_blueprint, caller, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.audit import record_token_event
from vx11.gateway.services import services

MAX_TOKEN_LIFETIME = 10 * 365 * 86400
"""Longest ``expires_in_seconds``: ten years."""


class TokenRequest(Schema):
    label = fields.String(
        required=True,
        validate=validate.Length(1, 100),
        metadata={"description": "A name for the token, shown in the audit log and token list."},
    )
    scopes = fields.List(
        fields.String(validate=validate.OneOf(SCOPES)),
        required=True,
        validate=validate.Length(min=1, max=len(SCOPES)),
        metadata={
            "description": "What it may do: read (the status, windows and its own spawns), "
            "spawn (submit and cancel), window (open and close), admin (tokens, the audit "
            "log, every spawn). Each includes read; nothing else is implied."
        },
    )
    expires_in_seconds = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(1, MAX_TOKEN_LIFETIME),
        metadata={"description": "Seconds from now until it stops working; left out, never."},
    )
    rate_limit_per_second = fields.Float(
        allow_none=True,
        allow_nan=False,
        validate=validate.Range(0.01, 10_000),
        metadata={
            "description": "Spawn and window requests it may make per second; left out, "
            "the server's (VX11_RATE_LIMIT_PER_SECOND)."
        },
    )
    max_active_spawns = fields.Integer(
        strict=True,
        allow_none=True,
        validate=validate.Range(1, 100_000),
        metadata={
            "description": "Spawns it may have QUEUED or RUNNING at once; left out, the "
            "server's (VX11_MAX_ACTIVE_SPAWNS)."
        },
    )


TOKEN_EXAMPLE = {"label": "ci-runner", "scopes": ["spawn", "read"], "expires_in_seconds": 86400}
"""The request the docs page's "Try it out" sends: a day's token that runs code."""


class TokenView(Schema):
    token_id = fields.String(required=True)
    label = fields.String(required=True)
    scopes = fields.List(fields.String(validate=validate.OneOf(SCOPES)), required=True)
    created_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    expires_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    last_used_at = fields.String(required=True, allow_none=True, metadata={"format": "date-time"})
    rate_limit_per_second = fields.Float(required=True, allow_none=True)
    max_active_spawns = fields.Integer(required=True, allow_none=True)


class NewToken(TokenView):
    token = fields.String(
        required=True, metadata={"description": "The token itself: shown this once only."}
    )


class TokenList(Schema):
    tokens = fields.List(fields.Nested(TokenView), required=True)


class Revoked(Schema):
    token_id = fields.String(required=True)
    revoked = fields.Boolean(required=True)


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("tokens", __name__, __doc__)

    @blp.post("/tokens")
    @requires(Scope.ADMIN)
    @blp.arguments(TokenRequest, example=TOKEN_EXAMPLE)
    @blp.response(201, NewToken)
    def create_token(args):
        """Create a token

        The answer holds the token (``token``) once; only its hash is kept."""
        expires_in = args.pop("expires_in_seconds", None)
        expires_at = datetime.now(UTC) + timedelta(seconds=expires_in) if expires_in else None
        svc = services()
        plain, info = svc.tokens.create(
            args["label"],
            args["scopes"],
            expires_at=expires_at,
            rate_limit_per_second=args.get("rate_limit_per_second"),
            max_active_spawns=args.get("max_active_spawns"),
        )
        record_token_event(svc, AuditEvent.TOKEN_CREATED, info.to_dict())
        return {"token": plain, **info.to_dict()}

    @blp.get("/tokens")
    @requires(Scope.ADMIN)
    @blp.response(200, TokenList)
    def list_tokens():
        """List tokens

        Every token's id, label, scopes, limits and times; never a token itself."""
        return {"tokens": [info.to_dict() for info in services().tokens.list()]}

    @blp.delete("/tokens/<token_id>")
    @requires(Scope.ADMIN)
    @blp.response(200, Revoked)
    @blp.alt_response(404, response="NOT_FOUND")
    def revoke_token(token_id: str):
        """Revoke a token

        By its id (8 or more leading hex digits of it): its next request is refused,
        on every gateway process."""
        svc = services()
        if not svc.tokens.revoke(token_id):
            raise NotFound(f"no single token has id {token_id}")
        record_token_event(svc, AuditEvent.TOKEN_REVOKED, {"token_id": token_id})
        return {"token_id": token_id, "revoked": True}

    @blp.get("/token")
    @requires(Scope.READ)
    @blp.response(200, TokenView)
    def whoami():
        """The caller's token

        Its id, label, scopes, limits and times."""
        return caller().to_dict()

    return blp
