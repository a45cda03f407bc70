"""The audit log's store: every policy decision — a window opened, closed or expired, a
spawn accepted, refused or cancelled, a token created or revoked — with who made it,
from where and why.

Entries live in the ledger's database (the ``audit`` table of
:mod:`vx11.core.ledger.schema`). The gateway records its decisions through
:mod:`vx11.gateway.audit`; the workers' sweeper records the windows that ran out
(:class:`vx11.core.policy.OpenWindows`).

The rule for every decision is the same: an entry that cannot be written fails the
request with a 503 (``database_unavailable``), never silently. Where an entry can be
written before its decision takes effect (accepting a spawn, cancelling one) it is,
so a 503 there means nothing happened; a window lives in Redis and is changed first,
so a 503 there means the change happened without its entry, and a retry (opening
again, closing again: both harmless) writes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, Select, insert, select

from vx11.core.ledger.paging import Keyset, Page, Position, Selection
from vx11.core.ledger.schema import audit
from vx11.core.ledger.store import delete_in_batches
from vx11.core.times import as_utc, utcnow

__all__ = ["AuditEntry", "AuditEvent", "AuditFilter", "AuditLog", "audit"]

PAGES = Keyset(audit.c.at, audit.c.id, lambda key: type(key) is int and 0 < key < 2**63)
"""Audit pages: newest first by (at, id)."""


class AuditEvent(StrEnum):
    """What an audit entry records."""

    WINDOW_OPENED = "window_opened"
    """A closed target's window was opened (a new ``window_id``)."""
    WINDOW_EXTENDED = "window_extended"
    """An open window was opened again: the same window, with a new end (later or
    earlier: ``detail.previous_expires_at`` is the one it had)."""
    WINDOW_CLOSED = "window_closed"
    """A close was asked for; ``detail.was_open`` says whether a window was open."""
    WINDOW_EXPIRED = "window_expired"
    """A window ran out without a close; ``token_label`` is who opened it."""
    SPAWN_ACCEPTED = "spawn_accepted"
    """A spawn was queued under the open spawner window."""
    SPAWN_REFUSED = "spawn_refused"
    """A spawn was refused ``off_by_policy``; ``reason`` says why."""
    SPAWN_CANCELLED = "spawn_cancelled"
    """A cancel of a queued or running spawn was decided (by request, or by a window
    closed with ``cancel_running``)."""
    TOKEN_CREATED = "token_created"
    """An API token was created; ``detail`` has its id, label, scopes and expiry."""
    TOKEN_REVOKED = "token_revoked"
    """An API token was revoked; ``detail.token_id`` says which."""


@dataclass(frozen=True)
class AuditEntry:
    """One decision to record; the log stamps its ``at`` when it writes it."""

    event: AuditEvent
    target: str | None = None
    window_id: str | None = None
    spawn_id: str | None = None
    spawn_uuid: str | None = None
    token_label: str | None = None
    """Who decided: the label of the API token (for an expiry, of the window's opener)."""
    token_id: str | None = None
    """The same token's id: labels need not be unique, ids are."""
    remote_addr: str | None = None
    """From where: the client's address (behind a reverse proxy, the proxy's unless
    ``VX11_TRUSTED_PROXIES`` says how many proxies to look through)."""
    reason: str | None = None
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True, kw_only=True)
class AuditFilter(Selection):
    """What an audit page selects (written at or after ``since``, before ``until``);
    every criterion left empty selects all."""

    EQUAL = ("target", "token_label", "token_id", "spawn_id", "spawn_uuid")
    AMONG = ("event", "events")
    events: tuple[AuditEvent, ...] = ()
    target: str | None = None
    token_label: str | None = None
    token_id: str | None = None
    spawn_id: str | None = None
    spawn_uuid: str | None = None


class AuditLog:
    """The audit entries in one database; the engine (the ledger's) is passed in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, *entries: AuditEntry, conn: Connection | None = None) -> list[dict[str, Any]]:
        """Write ``entries`` in one transaction, all stamped with the same ``at``: their
        own, or ``conn``'s (to stand or fall with another write)."""
        if conn is None:
            with self.engine.begin() as own:
                return self.record(*entries, conn=own)
        at = utcnow()
        written = []
        for entry in entries:
            row = {**asdict(entry), "event": AuditEvent(entry.event).value}
            result = conn.execute(insert(audit), {**row, "at": at})
            key = result.inserted_primary_key
            assert key is not None  # one row inserted into a table with a primary key
            written.append({"id": key[0], "at": at, **row})
        return written

    def page(
        self, filters: AuditFilter | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Up to ``limit`` entries matching ``filters``, newest first; ``cursor`` (a
        page's ``next_cursor``) continues after that page (:mod:`vx11.core.ledger.paging`)."""
        page = PAGES.page(
            self.engine, lambda limit, after: page_query(filters, limit, after), limit, cursor
        )
        return Page([{**row, "at": as_utc(row["at"])} for row in page.rows], page.next_cursor)

    def purge(self, before: datetime, *, dry_run: bool = False) -> int:
        """Delete the entries written before ``before``; how many (with ``dry_run``,
        how many would be, deleting nothing)."""
        return delete_in_batches(
            self.engine, audit.c.id, audit.c.at < as_utc(before), dry_run=dry_run
        )


def page_query(filters: AuditFilter | None, limit: int, after: Position | None) -> Select[Any]:
    """The newest ``limit`` entries selected by ``filters`` written before ``after``."""
    return PAGES.query(select(audit), filters or AuditFilter(), limit, after)
