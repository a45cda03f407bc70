"""The VX11 exception root. Each error carries its HTTP status and machine-readable code;
``vx11.api.errors`` maps them (and infrastructure failures) to responses in one place."""

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


class BadRequest(VX11Error):
    """Raised when the body is not a JSON object."""

    status, code, message = 400, "bad_json", "request body must be a JSON object"


class AuthRequired(VX11Error):
    """Raised when the X-VX11-Token header is missing."""

    status, code, message = 401, "auth_required", "X-VX11-Token header required"


class Forbidden(VX11Error):
    """Raised when the token is unknown, revoked or not allowed here."""

    status, code, message = 403, "forbidden", "token not accepted"


class NotFound(VX11Error):
    """Raised when a spawn, window target or route does not exist."""

    status, code, message = 404, "not_found", "not found"


class ValidationFailed(VX11Error):
    """Raised when a body fails its schema; ``fields`` holds per-field messages."""

    status, code, message = 422, "validation_error", "request failed validation"


class ServiceUnavailable(VX11Error):
    """Raised when a dependency (Redis, broker, database) cannot be reached."""

    status, code, message = 503, "service_unavailable", "a dependency is unavailable"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class IllegalTransition(VX11Error):
    """Raised when a spawn would leave a terminal state or skip a step."""

    status, code = 409, "illegal_transition"

    def __init__(self, current: Any, target: Any) -> None:
        super().__init__(f"cannot move a spawn from {current} to {target}")
        self.current, self.target = current, target
