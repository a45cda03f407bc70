"""VX11's log lines: one JSON object per line (or plain text, for development) from the
gateway, gunicorn and the workers, each carrying the ids of the request and of the spawn
it is about, so that one grep follows a job from its request to its exit.

The ids live in a context variable: :func:`bind` adds to it (the gateway per request,
the workers per task), and every line logged meanwhile carries them. Nothing here ever
logs a token, a spawn's code, stdin, arguments or output, or the callback secret; Celery's
own task lines, which would, are trimmed (:class:`CeleryTaskLines`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gunicorn import glogging
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from vx11.config import Settings

if TYPE_CHECKING:
    from flask import Flask, Response

REQUEST_ID_HEADER = "X-Request-ID"
"""A request's id, made by the gateway: on every line logged while serving it, and sent
back on the response. One the request brings (a proxy's) is logged beside it as
``client_request_id``, never echoed: no response header repeats what a client sent."""
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")

_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "vx11_log_context", default=MappingProxyType({})
)
_STANDARD = frozenset(RESERVED_ATTRS) | {"taskName"}
"""A log record's own attributes; any other is a field of the line (``extra=`` or bound)."""


# --- what every line carries ---------------------------------------------------------------


def bind(**fields: Any) -> Token:
    """Add ``fields`` (None ones are left out) to every line logged from here on, in this
    thread or task; :func:`unbind` with the returned token undoes it."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _CONTEXT.set(MappingProxyType(merged))


def unbind(token: Token) -> None:
    _CONTEXT.reset(token)


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """:func:`bind` for the duration of a ``with`` block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def spawn_id_of(spawn_uuid: str) -> str:
    """A spawn's short id, from its uuid (as :meth:`vx11.ledger.Ledger.add` names it)."""
    return f"spawn-{spawn_uuid[:8]}"


def spawn_accepted(record: Mapping[str, Any]) -> None:
    """Bind a just-recorded spawn to the rest of its request, and write its accept line.
    Called when its record and ``spawn_accepted`` audit entry are written, before the job
    is published: a worker's lines about it always come after this one."""
    bind(
        spawn_id=record["spawn_id"],
        spawn_uuid=record["spawn_uuid"],
        correlation_id=record.get("correlation_id"),
    )
    logging.getLogger("vx11.submit").info(
        "spawn accepted",
        extra={
            "task_type": record.get("task_type"),
            "ttl_seconds": record.get("ttl_seconds"),
            "window_id": record.get("window_id"),
            "max_retries": record.get("max_retries"),
        },
    )


class ContextFilter(logging.Filter):
    """Puts the bound fields on each record, under what the call itself passed."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _CONTEXT.get().items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class CeleryTaskLines(logging.Filter):
    """Celery's task lines ("received", "succeeded", "raised", "retry") carry the task's
    arguments and result (a spawn's code, stdin, output) as the record's ``data``, which
    a JSON line would show in full, and "succeeded" prints the result. This keeps only
    the task's name and id, names the spawn (a spawn's task id is its uuid), and
    replaces the result by a mark."""

    HIDDEN = "[not logged]"
    SPAWN_TASK = "vx11.spawn"  # vx11.dispatch.SPAWN_TASK, not imported: it loads Celery

    def filter(self, record: logging.LogRecord) -> bool:
        data = record.__dict__.pop("data", None)
        if not isinstance(data, Mapping) or "id" not in data:
            return True
        if isinstance(record.args, Mapping):
            record.args = {
                key: self.HIDDEN if key in ("args", "kwargs", "return_value") else value
                for key, value in record.args.items()
            }
        record.task_id, record.task_name = data.get("id"), data.get("name")
        if data.get("runtime") is not None:
            record.runtime_s = round(data["runtime"], 3)
        if record.task_name == self.SPAWN_TASK and isinstance(record.task_id, str):
            record.__dict__.setdefault("spawn_uuid", record.task_id)
            record.__dict__.setdefault("spawn_id", spawn_id_of(record.task_id))
        return True


# --- how a line looks ----------------------------------------------------------------------


def _iso_utc(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class JsonLines(JsonFormatter):
    """One JSON object per line: ``time`` (ISO 8601 UTC), ``level``, ``logger``,
    ``message``, ``service``, ``process``, then every bound and ``extra`` field, and
    ``exc_info`` (the traceback, as one string) when there is one."""

    def __init__(self, service: str) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}{process}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={"service": service},
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc(record.created)


class TextLines(logging.Formatter):
    """A line for people: time, level, logger, process, the message, then the fields a JSON
    line would have, as ``key=value``."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service}[%(process)d] %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _iso_utc(record.created)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = [
            f"{key}={_text_value(value)}"
            for key, value in record.__dict__.items()
            if key not in _STANDARD and not key.startswith("_")
        ]
        return " ".join([line, *fields]) if fields else line


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if text and text.isprintable() and " " not in text else json.dumps(text)


# --- where lines go ------------------------------------------------------------------------


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a line is written (as the logging
    module's last-resort handler does), so a replaced stderr (a test's) is followed."""

    vx11 = True

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


QUIETED = {"celery.pool": logging.INFO}
"""Loggers kept at or above a level whatever ``VX11_LOG_LEVEL`` says: Celery's pool
logs each task's arguments (a spawn's code and stdin) at DEBUG."""


def formatter(settings: Settings, service: str) -> logging.Formatter:
    """The formatter ``VX11_LOG_FORMAT`` asks for."""
    if settings.effective_log_format == "json":
        return JsonLines(service)
    return TextLines(service)


def configure(settings: Settings, service: str, default_level: str = "INFO") -> logging.Handler:
    """Send every log line of this process to stderr, formatted as the settings ask, at
    ``VX11_LOG_LEVEL`` (else ``default_level``). Run again, it replaces what it installed
    before, so calling it once per app or per Celery signal is harmless."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "vx11", False)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(formatter(settings, service))
    handler.addFilter(CeleryTaskLines())
    handler.addFilter(ContextFilter())
    root.addHandler(handler)
    root.setLevel(settings.log_level or default_level.upper())
    for name, floor in QUIETED.items():
        logging.getLogger(name).setLevel(floor if root.level < floor else logging.NOTSET)
    return handler


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines (starting, workers booting and exiting, errors) in VX11's
    format: ``gunicorn --logger-class vx11.logs.GunicornLogger`` (:mod:`vx11.stack`).
    ``VX11_LOG_LEVEL``, when set, overrides ``--log-level``. gunicorn's access log is
    left off: the gateway writes its own access line (:func:`init_app`), with the ids."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        settings = Settings.from_env()
        lines = formatter(settings, "gateway")
        for log in (self.error_log, self.access_log):
            if settings.log_level:
                log.setLevel(settings.log_level)
            for handler in log.handlers:
                handler.setFormatter(lines)


# --- the gateway ---------------------------------------------------------------------------

access_log = logging.getLogger("vx11.access")
QUIET_PATHS = frozenset({"/health", "/metrics"})
"""Paths whose access lines are DEBUG: health checks and scrapers ask them every few seconds."""


def init_app(app: Flask, settings: Settings) -> None:
    """Configure this process's logging, and give each request an id, bound to every line
    logged while serving it, and one access line: method, path, status, duration, the
    caller's ``token_id`` (never the token) and, for a spawn, its ids. The duration runs to
    the response's headers (an event stream goes on after)."""
    from flask import g, request

    configure(settings, "gateway")

    @app.before_request
    def _start_request() -> None:
        fields = {"request_id": uuid.uuid4().hex}
        given = request.headers.get(REQUEST_ID_HEADER, "")
        if _SANE_REQUEST_ID.fullmatch(given):
            fields["client_request_id"] = given
        _CONTEXT.set(MappingProxyType(fields))
        g.vx11_request_started = time.perf_counter()

    @app.after_request
    def _access_line(response: Response) -> Response:
        fields = dict(_CONTEXT.get())
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
        _CONTEXT.set(MappingProxyType({}))


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
        return {"spawn_uuid": ident, "spawn_id": spawn_id_of(str(uuid.UUID(ident)))}
    return {}
