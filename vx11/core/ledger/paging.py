"""Keyset pages, newest first: the one way the ledger pages its spawns and its audit
entries.

A page ends at its last row's position, (instant, key); the next page is the rows
strictly before it, found by walking an index on (…, instant, key) backwards, so rows
written meanwhile never shift a later page and nothing is repeated or skipped. The
position is handed out as an opaque cursor, URL-safe base64 of JSON. A cursor is a
position, not a credential: a forged but well-formed one selects only what the query's
own ``until`` could.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import Column, Engine, Select, select, tuple_, union_all

from vx11.core.errors import BadCursor
from vx11.core.times import as_utc

CURSOR_MAX = 200
"""Longest cursor accepted: an encoded position is about 120 characters."""


@dataclass(frozen=True)
class Position:
    """Where a page ended: its last row's instant (in UTC) and key."""

    at: datetime
    key: Any

    def encode(self) -> str:
        text = self.at.astimezone(UTC).isoformat(timespec="microseconds")
        raw = json.dumps([text, self.key], separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@dataclass(frozen=True)
class Page:
    """One page of rows, newest first: ``next_cursor`` is None on the last."""

    rows: list[dict[str, Any]]
    next_cursor: str | None


@dataclass(frozen=True, kw_only=True)
class Selection:
    """What a page selects, each criterion left empty selecting all. A subclass adds
    its criteria as fields and names them: ``EQUAL``, the fields whose column (of the
    same name) must equal them; ``AMONG``, (column, field) of the one field that may
    hold several values, each walked on its own index, then merged."""

    EQUAL: ClassVar[tuple[str, ...]] = ()
    AMONG: ClassVar[tuple[str, str]]
    since: datetime | None = None
    """At or after this instant."""
    until: datetime | None = None
    """Strictly before this instant."""

    def values_among(self) -> tuple[Any, ...]:
        """The values of the ``AMONG`` field, as the column holds them, once each."""
        values = getattr(self, self.AMONG[1])
        return tuple(dict.fromkeys(getattr(value, "value", value) for value in values))


@dataclass(frozen=True)
class Keyset:
    """How one table is paged: by ``at`` then ``key``, both descending; ``valid_key``
    tells a key :meth:`Position.encode` could have written."""

    at: Column[Any]
    key: Column[Any]
    valid_key: Callable[[Any], bool]

    def position(self, row: Mapping[str, Any]) -> Position:
        return Position(as_utc(row[self.at.name]), row[self.key.name])

    def decode(self, cursor: str) -> Position:
        """The position ``cursor`` encodes; :class:`~vx11.core.errors.BadCursor` unless
        :meth:`Position.encode` could have made it."""
        if len(cursor) > CURSOR_MAX:
            raise BadCursor()
        try:
            padded = cursor + "=" * (-len(cursor) % 4)
            text, key = json.loads(base64.b64decode(padded, b"-_", validate=True))
            at = datetime.fromisoformat(text)
            if at.tzinfo is None or not self.valid_key(key):
                raise ValueError("not a position encode() makes")
            return Position(at.astimezone(UTC), key)
        except (binascii.Error, ValueError, TypeError, AttributeError, OverflowError):
            raise BadCursor() from None

    def query(
        self, columns: Select[Any], selection: Selection, limit: int, after: Position | None
    ) -> Select[Any]:
        """The newest ``limit`` rows of ``columns`` that ``selection`` selects, before
        ``after``. The row comparison and the order match an index on (…, at, key), so
        the database walks it backwards and stops after ``limit`` rows; a selection of
        several values of one column is one such walk per value, merged, where one
        ``IN`` would read every row of the rare values' history, or sort them all."""
        column, field = selection.AMONG
        values = selection.values_among()
        if len(values) > 1:
            one_each: list[dict[str, Any]] = [{field: (value,)} for value in values]
            walks = [
                self.query(columns, replace(selection, **one), limit, after) for one in one_each
            ]
            subqueries = [walk.subquery() for walk in walks]
            union = union_all(*(select(*sub.c) for sub in subqueries)).subquery()
            order = (union.c[self.at.name].desc(), union.c[self.key.name].desc())
            return select(*union.c).order_by(*order).limit(limit)
        table = self.at.table.c
        equal = {name: getattr(selection, name) for name in selection.EQUAL}
        equal[column] = values[0] if values else None
        stmt = columns.where(*(table[n] == v for n, v in equal.items() if v is not None))
        if selection.since is not None:
            stmt = stmt.where(self.at >= as_utc(selection.since))
        if selection.until is not None:
            stmt = stmt.where(self.at < as_utc(selection.until))
        if after is not None:
            stmt = stmt.where(tuple_(self.at, self.key) < (after.at, after.key))
        return stmt.order_by(self.at.desc(), self.key.desc()).limit(limit)

    def page(
        self,
        engine: Engine,
        query: Callable[[int, Position | None], Select[Any]],
        limit: int,
        cursor: str | None,
    ) -> Page:
        """Up to ``limit`` rows of ``query(limit, after)``; ``cursor`` (a page's
        ``next_cursor``) continues after that page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = self.decode(cursor) if cursor is not None else None
        with engine.connect() as conn:  # one row more tells whether a page follows
            rows = [dict(row) for row in conn.execute(query(limit + 1, after)).mappings()]
        if len(rows) <= limit:
            return Page(rows, None)
        return Page(rows[:limit], self.position(rows[limit - 1]).encode())
