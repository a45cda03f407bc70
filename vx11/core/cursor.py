"""Opaque page cursors: a page's last row as (timestamp, key), URL-safe base64 of JSON.

A cursor is a position, not a credential: a forged but well-formed one selects only
what the query's own ``until`` could.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from vx11.core.errors import BadCursor

CURSOR_MAX = 200
"""Longest cursor accepted: an encoded position is about 120 characters."""


def encode(stamp: datetime, key: Any) -> str:
    text = stamp.astimezone(UTC).isoformat(timespec="microseconds")
    raw = json.dumps([text, key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(cursor: str, valid_key: Callable[[Any], bool]) -> tuple[datetime, Any]:
    """The (timestamp in UTC, key) ``cursor`` encodes; :class:`~vx11.core.errors.BadCursor`
    unless :func:`encode` could have made it with a key ``valid_key`` accepts."""
    if len(cursor) > CURSOR_MAX:
        raise BadCursor()
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text, key = json.loads(base64.b64decode(padded, b"-_", validate=True))
        stamp = datetime.fromisoformat(text)
        if stamp.tzinfo is None or not valid_key(key):
            raise ValueError("not a position encode() makes")
        return stamp.astimezone(UTC), key
    except (binascii.Error, ValueError, TypeError, AttributeError, OverflowError):
        raise BadCursor() from None
