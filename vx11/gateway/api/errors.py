"""The one mapping from exceptions to HTTP responses: ``{"error": code, "message": ...}``.

VX11 errors carry their own status; an unreachable Redis, broker or database is a 503
with an error code; any HTTP error Flask raises keeps its status with a JSON body;
anything else is a logged 500 that reveals nothing.
"""

from __future__ import annotations

import logging

import redis.exceptions
import sqlalchemy.exc
from flask import Flask, jsonify
from kombu.exceptions import OperationalError as KombuOperationalError
from werkzeug.exceptions import HTTPException

from vx11.core.errors import VX11Error

log = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    431: "headers_too_large",
}

UNAVAILABLE = (
    (redis.exceptions.ConnectionError, "redis_unavailable", "cannot reach Redis"),
    (redis.exceptions.TimeoutError, "redis_unavailable", "Redis did not answer in time"),
    # maxmemory with noeviction (compose): Redis refuses writes rather than drop keys
    (redis.exceptions.OutOfMemoryError, "redis_full", "Redis is full and refuses writes"),
    (sqlalchemy.exc.OperationalError, "database_unavailable", "cannot reach the spawn ledger"),
    (sqlalchemy.exc.InterfaceError, "database_unavailable", "cannot reach the spawn ledger"),
    (KombuOperationalError, "spawner_unavailable", "cannot reach the broker"),
)


def error_response(status: int, code: str, message: str | None, **extra):
    response = jsonify({"error": code, "message": message, **extra})
    response.status_code = status
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(VX11Error)
    def _vx11_error(exc: VX11Error):
        if exc.status >= 500:
            log.warning("%s: %s", exc.code, exc.message)
        response = jsonify(exc.to_dict())
        response.status_code = exc.status
        response.headers.update(exc.headers())
        return response

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        status = exc.code or 500
        response = error_response(status, HTTP_CODES.get(status, "http_error"), exc.description)
        for name, value in exc.get_headers():  # e.g. 405's Allow
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):
        for kind, code, message in UNAVAILABLE:
            if isinstance(exc, kind):
                log.warning("%s: %s", code, exc)
                return error_response(503, code, message)
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error")
