"""The VX11 exception root. Each error carries its HTTP status and machine-readable code;
``vx11.gateway.api.errors`` maps them (and infrastructure failures) to responses in one place."""

from __future__ import annotations

from typing import Any


class VX11Error(Exception):
    """Raised when a request cannot be served; the base of every VX11 error."""

    status = 500
    code = "internal_error"
    message = "internal error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.extra}

    def headers(self) -> dict[str, str]:
        """HTTP headers the response carries besides the body (none by default)."""
        return {}


class BadRequest(VX11Error):
    """Raised when the body is not a JSON object."""

    status, code, message = 400, "bad_json", "request body must be a JSON object"


class AuthRequired(VX11Error):
    """Raised when the X-VX11-Token header is missing."""

    status, code, message = 401, "auth_required", "X-VX11-Token header required"


class InvalidToken(VX11Error):
    """Raised when the token is unknown, revoked or expired."""

    status, code, message = 401, "invalid_token", "token unknown, revoked or expired"


class InsufficientScope(VX11Error):
    """Raised when a valid token lacks the scope an endpoint requires (``required``)."""

    status, code, message = 403, "insufficient_scope", "this token lacks the scope required"


class NotFound(VX11Error):
    """Raised when a spawn, window target or route does not exist."""

    status, code, message = 404, "not_found", "not found"


class ValidationFailed(VX11Error):
    """Raised when a body fails its schema; ``fields`` holds per-field messages."""

    status, code, message = 422, "validation_error", "request failed validation"


class UnknownParameter(ValidationFailed):
    """Raised when a query string names a parameter the endpoint does not take;
    ``fields`` names each such parameter."""

    code, message = "unknown_parameter", "unknown query parameter"


class BadCursor(VX11Error):
    """Raised when a history ``cursor`` is not one the server handed out."""

    status, code, message = 400, "bad_cursor", "cursor is not valid; start again without one"


class IdempotencyKeyReused(VX11Error):
    """Raised when an ``Idempotency-Key`` comes back with a different request."""

    status, code = 409, "idempotency_key_reused"
    message = "this Idempotency-Key was used with a different request"


class RetryLater(VX11Error):
    """The base of refusals that say when to try again: a ``Retry-After`` header, and
    ``retry_after`` (seconds) in the body."""

    def __init__(self, message: str | None = None, *, retry_after: int) -> None:
        super().__init__(message, retry_after=retry_after)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class IdempotencyKeyInProgress(RetryLater):
    """Raised when a request with the same ``Idempotency-Key`` is still being served."""

    status, code = 409, "idempotency_key_in_progress"
    message = "a request with this Idempotency-Key is still in progress; retry shortly"


class RateLimited(RetryLater):
    """Raised when a token sends spawn or window requests faster than its rate limit."""

    status, code, message = 429, "rate_limited", "too many requests; retry later"


class QuotaExceeded(RetryLater):
    """Raised when a token already has as many spawns QUEUED or RUNNING as it may."""

    status, code, message = 429, "quota_exceeded", "too many spawns queued or running"


class TaskTypeUnavailable(RetryLater):
    """Raised when a declared task type is asked for while no live worker offers it."""

    status, code = 503, "task_type_unavailable"


class ServiceUnavailable(VX11Error):
    """Raised when a dependency (Redis, broker, database) cannot be reached."""

    status, code, message = 503, "service_unavailable", "a dependency is unavailable"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class OutcomeUnknown(VX11Error):
    """Raised when a spawn was written, its job may have reached the broker, and the
    ledger could record neither the publish nor the spawn's end: it may run or not.
    The answer carries its ``spawn_id`` and ``spawn_uuid``, to look it up."""

    status, code = 503, "spawn_outcome_unknown"
    message = (
        "the spawn was recorded and may run, but the ledger could not be updated: "
        "read it by its spawn_id to know"
    )


class IllegalTransition(VX11Error):
    """Raised when a spawn would leave a terminal state or skip a step."""

    status, code = 409, "illegal_transition"

    def __init__(self, current: Any, target: Any) -> None:
        super().__init__(f"cannot move a spawn from {current} to {target}")
        self.current, self.target = current, target


class AlreadyFinished(VX11Error):
    """Raised when a finished spawn is asked to cancel."""

    status, code, message = 409, "already_finished", "the spawn has already finished"
