"""The gateway's log lines: gunicorn's own in VX11's format, and one access line per
request, carrying the request's id (:mod:`vx11.core.logs` is how every line looks)."""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid
from typing import Any

from flask import Flask, Response, g, request
from gunicorn import glogging

from vx11.core import logs
from vx11.core.config import Settings

REQUEST_ID_HEADER = "X-Request-ID"
"""A request's id, made by the gateway: on every line logged while serving it, and sent
back on the response. One the request brings (a proxy's) is logged beside it as
``client_request_id``, never echoed: no response header repeats what a client sent."""
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines (starting, workers booting and exiting, errors) in VX11's
    format: ``gunicorn --logger-class vx11.gateway.request_log.GunicornLogger``
    (:mod:`vx11.cli.stack`). ``VX11_LOG_LEVEL``, when set, overrides ``--log-level``.
    gunicorn's access log is left off: the gateway writes its own access line
    (:func:`init_app`), with the ids."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        settings = Settings.from_env()
        lines = logs.formatter(settings, "gateway")
        for log in (self.error_log, self.access_log):
            if settings.log_level:
                log.setLevel(settings.log_level)
            for handler in log.handlers:
                handler.setFormatter(lines)


access_log = logging.getLogger("vx11.access")
QUIET_PATHS = frozenset({"/health", "/metrics"})
"""Paths whose access lines are DEBUG: health checks and scrapers ask them every few seconds."""


def init_app(app: Flask, settings: Settings) -> None:
    """Configure this process's logging, and give each request an id, bound to every line
    logged while serving it, and one access line: method, path, status, duration, the
    caller's ``token_id`` (never the token) and, for a spawn, its ids. The duration runs to
    the response's headers (an event stream goes on after)."""
    logs.configure(settings, "gateway")

    @app.before_request
    def _start_request() -> None:
        fields = {"request_id": uuid.uuid4().hex}
        given = request.headers.get(REQUEST_ID_HEADER, "")
        if _SANE_REQUEST_ID.fullmatch(given):
            fields["client_request_id"] = given
        logs.start(**fields)
        g.vx11_request_started = time.perf_counter()

    @app.after_request
    def _access_line(response: Response) -> Response:
        fields = logs.current()
        if "request_id" in fields:
            response.headers[REQUEST_ID_HEADER] = fields["request_id"]
        started = g.get("vx11_request_started")
        token = g.get("token")
        fields.update(
            method=request.method,
            path=request.path,
            status=response.status_code,
            duration_ms=None
            if started is None
            else round((time.perf_counter() - started) * 1000, 1),
            token_id=getattr(token, "token_id", None),
            remote_addr=request.remote_addr,
            error=_error_code(response),
        )
        if request.view_args and "spawn_id" not in fields:
            fields.update(_spawn_named_by(request.view_args.get("ident"), response.status_code))
        level = logging.DEBUG if request.path in QUIET_PATHS else logging.INFO
        if response.status_code >= 500:
            level = logging.WARNING
        path = request.path if request.path.isprintable() else ascii(request.path)
        access_log.log(
            level,
            "%s %s %s",
            request.method,
            path,
            response.status_code,
            extra={k: v for k, v in fields.items() if v is not None},
        )
        return response

    @app.teardown_request
    def _end_request(exc: BaseException | None) -> None:
        logs.start()


def _error_code(response: Response) -> str | None:
    if response.status_code < 400 or response.is_streamed or not response.is_json:
        return None
    body = response.get_json(silent=True)
    return body.get("error") if isinstance(body, dict) else None


def _spawn_named_by(ident: Any, status: int) -> dict[str, str]:
    """The spawn a successful request on ``/vx11/spawn/<ident>`` (a read, a cancel, its
    events) was about: its ``spawn_id`` (or ``spawn_uuid``) as the path names it."""
    if not isinstance(ident, str) or status >= 400:
        return {}
    if ident.startswith("spawn-"):
        return {"spawn_id": ident}
    with contextlib.suppress(ValueError):
        return {"spawn_uuid": ident, "spawn_id": logs.spawn_id_of(str(uuid.UUID(ident)))}
    return {}
