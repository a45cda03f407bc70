"""Instants as VX11 keeps and shows them: aware datetimes in UTC, written as ISO 8601
with a ``Z``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import overload


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """``value`` in UTC; naive means UTC (SQLite keeps the digits only, so every instant
    bound to a query must be in UTC to compare right)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@overload
def iso_z(value: datetime, timespec: str = ...) -> str: ...
@overload
def iso_z(value: None, timespec: str = ...) -> None: ...
@overload
def iso_z(value: datetime | None, timespec: str = ...) -> str | None: ...
def iso_z(value: datetime | None, timespec: str = "milliseconds") -> str | None:
    """ISO 8601 in UTC with a ``Z``, to the millisecond (or ``timespec``); None stays
    None."""
    if value is None:
        return None
    return as_utc(value).isoformat(timespec=timespec).replace("+00:00", "Z")


def timestamp_z(seconds: float) -> str:
    """A Unix time (a log record's ``created``) as :func:`iso_z` writes it."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
