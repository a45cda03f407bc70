"""Reading a request body as JSON, whatever JSON-ish content type it declares.

The seed's curl commands send JSON with ``-d`` and no content type (so as
``application/x-www-form-urlencoded``): such a body is parsed as JSON. What a hostile
client may send instead gets a clear 4xx, never a 500, with memory bounded:

- a body over ``MAX_CONTENT_LENGTH`` (``VX11_MAX_BODY_BYTES``), with a
  ``Content-Length`` or chunked, is 413 ``payload_too_large``, read no further;
- a content type that is not JSON, text or form-encoded, a charset other than UTF-8,
  or a ``Content-Encoding`` is 415 ``unsupported_media_type``;
- bytes that are not UTF-8, JSON that is not JSON (``NaN``, duplicate keys included)
  or nested deeper than :data:`MAX_DEPTH` are 400 ``bad_json``;
- text the ledger cannot store (a lone surrogate such as ``\\ud800``, or NUL) is 422
  naming the field;
- a request target over :data:`MAX_TARGET_BYTES` is 414 ``uri_too_long``
  (:func:`check_request_size`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import request
from werkzeug.exceptions import (
    ClientDisconnected,
    RequestEntityTooLarge,
    RequestURITooLarge,
    UnsupportedMediaType,
)

from vx11.core.errors import BadRequest, ValidationFailed

JSON_TYPES = ("application/json", "text/plain", "application/x-www-form-urlencoded")
"""Content types a body is read as JSON under (and ``application/*+json``, or none)."""
ACCEPTED = (
    "application/json (or application/*+json), text/plain, "
    "application/x-www-form-urlencoded or none, in UTF-8"
)
MAX_DEPTH = 32
"""Deepest nesting of arrays and objects a body may have; the top-level object is 1."""
MAX_INT_DIGITS = 4300
"""Longest integer a body may hold, digits (Python's own default limit)."""
MAX_TARGET_BYTES = 8192
"""Longest request target (path and query string) the gateway reads, bytes."""
READ_SIZE = 64 << 10
"""Bytes read from the body at a time."""

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
"""NUL (PostgreSQL text cannot hold it) and the surrogates: a lone one (``"\\ud800"``
in JSON) has no UTF-8 form, so no database could store it."""


def check_request_size() -> None:
    """A ``before_request`` hook: 414 for a request target over :data:`MAX_TARGET_BYTES`,
    413 for a declared ``Content-Length`` over the body limit, before any other work
    (authentication included)."""
    target = len(request.path.encode("utf-8", "replace")) + len(request.query_string)
    if target > MAX_TARGET_BYTES:
        raise RequestURITooLarge(
            f"the request target (path and query string) is longer than {MAX_TARGET_BYTES} bytes"
        )
    limit = request.max_content_length
    if limit is not None and (request.content_length or 0) > limit:
        raise _too_large(limit)


def json_body() -> dict[str, Any]:
    """The request body as a JSON object; ``{}`` when there is none.

    400 if it is not a JSON object in UTF-8, 413 if too large, 415 if of a content type
    or coding other than JSON's, 422 if a string holds text no ledger can store."""
    if _declares_body():
        _check_content_type()
    raw = _read_body()
    if not raw.strip():
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"request body is not valid UTF-8 (at byte {exc.start})") from None
    try:
        data = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
        )
    except RecursionError:
        raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise BadRequest(f"request body is not valid JSON: {reason}") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    _check_depth_and_text(data)
    return data


def _declares_body() -> bool:
    return bool(request.content_length) or "Transfer-Encoding" in request.headers


def _check_content_type() -> None:
    mimetype = request.mimetype  # lower case, parameters split off; "" when absent
    json_suffix = mimetype.startswith("application/") and mimetype.endswith("+json")
    if mimetype and mimetype not in JSON_TYPES and not json_suffix:
        raise UnsupportedMediaType(
            f"Content-Type {mimetype[:100]} is not accepted: send {ACCEPTED}"
        )
    charset = request.mimetype_params.get("charset")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise UnsupportedMediaType(f"charset {charset[:100]} is not accepted: send {ACCEPTED}")
    coding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType("Content-Encoding is not accepted: send the body uncompressed")


def _read_body() -> bytes:
    """The body, at most the body limit. Werkzeug bounds a chunked body (the WSGI server
    sets ``wsgi.input_terminated``) at the limit but its ``read()`` then stops there
    silently, so it is read a piece at a time here: one byte past the limit is 413, and
    a body shorter than its ``Content-Length`` is 400."""
    limit = request.max_content_length
    pieces, size = [], 0
    try:
        while piece := request.stream.read(READ_SIZE):
            size += len(piece)
            if limit is not None and size > limit:
                raise _too_large(limit)
            pieces.append(piece)
    except RequestEntityTooLarge:
        raise _too_large(limit) from None
    declared = request.content_length
    if declared is not None and size < declared:
        # Under gunicorn a half-closed connection ends the stream early without an error.
        raise ClientDisconnected(
            f"the request body is shorter than its Content-Length ({declared})"
        )
    return b"".join(pieces)


def _too_large(limit: int | None) -> RequestEntityTooLarge:
    return RequestEntityTooLarge(
        f"the request body is larger than {limit} bytes (VX11_MAX_BODY_BYTES)"
    )


# --- parsing -----------------------------------------------------------------------------


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Parsers disagree on which of two equal keys wins; a body two readers could
    # understand differently is refused.
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise ValueError(f"duplicate key {json.dumps(key[:64])}")
        seen.add(key)
    return dict(pairs)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _check_depth_and_text(data: dict[str, Any]) -> None:
    """Iteratively (a deep body must not exhaust the stack here either): 400 beyond
    :data:`MAX_DEPTH`; 422 naming the top-level field whose keys or strings hold text
    matched by :data:`_UNSTORABLE`."""
    todo: list[tuple[Any, int, str]] = [(value, 2, key) for key, value in data.items()]
    unstorable = {key for key in data if _UNSTORABLE.search(key)}
    while todo:
        value, depth, field = todo.pop()
        if isinstance(value, dict | list):
            if depth > MAX_DEPTH:
                raise BadRequest(f"request body is nested deeper than {MAX_DEPTH} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and _UNSTORABLE.search(key):
                    unstorable.add(field)
                todo.append((item, depth + 1, field))
        elif isinstance(value, str) and _UNSTORABLE.search(value):
            unstorable.add(field)
    if unstorable:
        message = "may not contain NUL or a lone surrogate (\\ud800-\\udfff): not storable text"
        raise ValidationFailed(fields={_printable(field): [message] for field in unstorable})


def _printable(field: str) -> str:
    """A field name safe to echo back: its unstorable characters as escapes."""
    return _UNSTORABLE.sub(lambda m: f"\\u{ord(m.group()):04x}", field)
