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
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from types import MappingProxyType
from typing import Any, TextIO

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from vx11.core.config import Settings
from vx11.core.times import timestamp_z

_CONTEXT: ContextVar[Mapping[str, Any]] = ContextVar(
    "vx11_log_context", default=MappingProxyType({})
)
_STANDARD = frozenset(RESERVED_ATTRS) | {"taskName"}
"""A log record's own attributes; any other is a field of the line (``extra=`` or bound)."""


# --- what every line carries ---------------------------------------------------------------


def bind(**fields: Any) -> Token[Mapping[str, Any]]:
    """Add ``fields`` (None ones are left out) to every line logged from here on, in this
    thread or task; :func:`unbind` with the returned token undoes it."""
    merged = {**_CONTEXT.get(), **{k: v for k, v in fields.items() if v is not None}}
    return _CONTEXT.set(MappingProxyType(merged))


def unbind(token: Token[Mapping[str, Any]]) -> None:
    _CONTEXT.reset(token)


def start(**fields: Any) -> None:
    """Bind exactly ``fields`` from here on, dropping what was bound (a new request)."""
    _CONTEXT.set(MappingProxyType(fields))


def current() -> dict[str, Any]:
    """The fields bound here and now."""
    return dict(_CONTEXT.get())


@contextlib.contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """:func:`bind` for the duration of a ``with`` block."""
    token = bind(**fields)
    try:
        yield
    finally:
        unbind(token)


def spawn_id_of(spawn_uuid: str) -> str:
    """A spawn's short id, from its uuid (as :meth:`vx11.core.ledger.Ledger.add` names it)."""
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
    logging.getLogger("vx11.gateway.submit").info(
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
    SPAWN_TASK = "vx11.spawn"  # vx11.core.dispatch.SPAWN_TASK, not imported: it loads Celery

    def filter(self, record: logging.LogRecord) -> bool:
        data = record.__dict__.pop("data", None)
        if not isinstance(data, Mapping) or "id" not in data:
            return True
        if isinstance(record.args, Mapping):
            record.args = {
                key: self.HIDDEN if key in ("args", "kwargs", "return_value") else value
                for key, value in record.args.items()
            }
        task_id, task_name = data.get("id"), data.get("name")
        record.task_id, record.task_name = task_id, task_name
        if data.get("runtime") is not None:
            record.runtime_s = round(data["runtime"], 3)
        if task_name == self.SPAWN_TASK and isinstance(task_id, str):
            record.__dict__.setdefault("spawn_uuid", task_id)
            record.__dict__.setdefault("spawn_id", spawn_id_of(task_id))
        return True


# --- how a line looks ----------------------------------------------------------------------


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
        return timestamp_z(record.created)


class TextLines(logging.Formatter):
    """A line for people: time, level, logger, process, the message, then the fields a JSON
    line would have, as ``key=value``."""

    def __init__(self, service: str) -> None:
        super().__init__(f"%(asctime)s %(levelname)s {service}[%(process)d] %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp_z(record.created)

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


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a line is written (as the logging
    module's last-resort handler does), so a replaced stderr (a test's) is followed."""

    vx11 = True

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
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
