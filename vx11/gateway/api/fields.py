"""Field types shared by the API schemas."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, overload

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from vx11.core.ledger.paging import CURSOR_MAX


class FullMatch(validate.Regexp):
    """A regular expression the whole value must match. ``$`` in Python also matches
    before a final newline (``"abc\\n"``); the pattern is published as it is, and JSON
    Schema's ``$`` means the end."""

    @overload
    def __call__(self, value: str) -> str: ...
    @overload
    def __call__(self, value: bytes) -> bytes: ...
    def __call__(self, value: Any) -> Any:
        if self.regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


class Utf8Length(validate.Length):
    """A text's length in bytes of UTF-8, the unit the server's limits count in (a
    character is one to four bytes), with one message whichever bound it breaks.

    Published as ``minLength`` and ``maxLength``, which count characters: a text within
    the bytes is within the characters too, so the published bounds never refuse what
    the server accepts."""

    message_max = "must be at most {max} bytes of UTF-8"
    message_all = "must be {min} to {max} bytes of UTF-8"

    def __init__(self, max: int, *, min: int = 0) -> None:
        super().__init__(min or None, max)

    def __call__(self, value: Any) -> Any:
        size = len(value.encode("utf-8", "surrogatepass"))
        if not (self.min or 0) <= size <= (self.max or 0):
            message = self.message_all if self.min else self.message_max
            raise ValidationError(self._format_error(value, message))
        return value


class Choice(fields.String):
    """One of ``choices``, given in any case (``done`` is ``DONE``): it loads as the
    choice itself. Published as the choices (``enum``), as they are written."""

    def __init__(self, choices: Iterable[str], **kwargs: Any) -> None:
        self.by_key = {choice.casefold(): choice for choice in choices}
        super().__init__(validate=validate.OneOf(tuple(self.by_key.values())), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        return self.by_key.get(text.casefold(), text)


def _in_utc_range(value: datetime) -> None:
    try:
        value.astimezone(UTC)
    except OverflowError:
        raise ValidationError("out of range once in UTC") from None


def query_timestamp(description: str) -> fields.AwareDateTime:
    """A timestamp in a query string: ISO 8601, naive meaning UTC."""
    return fields.AwareDateTime(
        format="iso",
        default_timezone=UTC,
        validate=_in_utc_range,
        error_messages={
            "invalid": "not an ISO 8601 timestamp (naive means UTC; write + as %2B)",
        },
        metadata={"description": f"{description}: ISO 8601, naive meaning UTC (+ as %2B)."},
    )


PAGE_LIMIT = 200
"""Most rows one history or audit page returns."""


class PageQuery(Schema):
    """What every paged listing's query string shares: a time range, a page size and
    the cursor of the previous page."""

    since = query_timestamp("Only those made at or after this time")
    until = query_timestamp("Only those made before this time")
    limit = fields.Integer(
        load_default=50,
        validate=validate.Range(1, PAGE_LIMIT),
        metadata={"description": "Most items on the page."},
    )
    # Checked when decoded (400 bad_cursor, as for any cursor the server did not make);
    # the pattern documents its shape.
    cursor = fields.String(
        metadata={
            "description": "A page's next_cursor, for the page after it.",
            "pattern": r"^[A-Za-z0-9_-]+$",
            "maxLength": CURSOR_MAX,
        },
    )

    @validates_schema
    def _since_before_until(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "since" in data and "until" in data and data["since"] >= data["until"]:
            raise ValidationError("must be later than since", "until")


def page_schema(name: str, key: str, item: type[Schema]) -> type[Schema]:
    """A paged listing's answer, ``{key: [item, ...], "next_cursor": str | null}``,
    named ``name`` in the OpenAPI document."""
    rows = fields.List(fields.Nested(item), required=True)
    next_cursor = fields.String(required=True, allow_none=True)
    return Schema.from_dict({key: rows, "next_cursor": next_cursor}, name=name)
