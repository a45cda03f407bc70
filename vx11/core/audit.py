"""The audit log: every policy decision — a window opened, closed or expired, a spawn
accepted, refused or cancelled — with who made it, from where and why.

Entries live in the ledger's database (the ``audit`` table is on the ledger's
``metadata``, so :meth:`vx11.core.ledger.Ledger.create_schema` creates it in every process
that imports this module: the gateway through :mod:`vx11.gateway.services`, the workers through
:mod:`workers.sweeper`). A window that runs out is noticed by the workers' sweeper,
from the open windows this module keeps in Redis (:class:`OpenWindows`).

The rule for every decision is the same: an entry that cannot be written fails the
request with a 503 (``database_unavailable``), never silently. Where an entry can be
written before its decision takes effect (accepting a spawn, cancelling one) it is,
so a 503 there means nothing happened; a window lives in Redis and is changed first,
so a 503 there means the change happened without its entry, and a retry (opening
again, closing again: both harmless) writes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from redis import Redis
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    Select,
    String,
    Table,
    Text,
    insert,
    select,
    tuple_,
    union_all,
)

from vx11.core import cursor
from vx11.core.ledger import metadata
from vx11.core.policy import Window, key_for
from vx11.core.retention import delete_in_batches
from vx11.core.times import as_utc, iso_z, utcnow

if TYPE_CHECKING:
    pass

log = logging.getLogger(__name__)


class AuditEvent(StrEnum):
    """What an audit entry records."""

    WINDOW_OPENED = "window_opened"
    """A window was opened (or replaced an open one: ``detail.replaced_window_id``)."""
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


audit = Table(
    "audit",
    metadata,
    # BIGINT on PostgreSQL; SQLite autoincrements only an INTEGER primary key.
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("event", String(32), nullable=False),
    Column("target", String),
    Column("window_id", String(36)),
    Column("spawn_id", String(16)),
    Column("spawn_uuid", String(36)),
    Column("token_label", String),
    Column("token_id", String(64)),  # NULL: written before VX11 recorded it
    Column("remote_addr", String),
    Column("reason", Text),
    Column("detail", JSON),
    # Pages walk one of these backwards from a keyset position (at, id), as the
    # spawn history does: each filter that pins one column has its own index.
    Index("ix_audit_at_id", "at", "id"),
    Index("ix_audit_event_at_id", "event", "at", "id"),
    Index("ix_audit_target_at_id", "target", "at", "id"),
    Index("ix_audit_token_label_at_id", "token_label", "at", "id"),
    Index("ix_audit_token_id_at_id", "token_id", "at", "id"),
    Index("ix_audit_spawn_uuid_at_id", "spawn_uuid", "at", "id"),
    Index("ix_audit_spawn_id_at_id", "spawn_id", "at", "id"),
)


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
    """From where: the address of the client's connection (behind a reverse proxy,
    the proxy's)."""
    reason: str | None = None
    detail: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class AuditFilter:
    """What an audit page selects; every criterion left empty selects all."""

    events: tuple[AuditEvent, ...] = ()
    target: str | None = None
    token_label: str | None = None
    token_id: str | None = None
    spawn_id: str | None = None
    spawn_uuid: str | None = None
    since: datetime | None = None
    """Written at or after this instant."""
    until: datetime | None = None
    """Written strictly before this instant."""

    def apply(self, stmt: Select) -> Select:
        """``stmt`` narrowed to the entries this filter selects."""
        if len(self.events) == 1:
            stmt = stmt.where(audit.c.event == self.events[0].value)
        elif self.events:  # page_query merges one walk per event instead
            stmt = stmt.where(audit.c.event.in_([e.value for e in self.events]))
        for name in ("target", "token_label", "token_id", "spawn_id", "spawn_uuid"):
            value = getattr(self, name)
            if value is not None:
                stmt = stmt.where(audit.c[name] == value)
        if self.since is not None:
            stmt = stmt.where(audit.c.at >= as_utc(self.since))
        if self.until is not None:
            stmt = stmt.where(audit.c.at < as_utc(self.until))
        return stmt


@dataclass(frozen=True)
class AuditPosition:
    """Where an audit page ended: its last entry's (at, id), handed out as an opaque
    cursor (URL-safe base64 of JSON), like :class:`vx11.core.ledger.Position`."""

    at: datetime
    id: int

    def encode(self) -> str:
        return cursor.encode(self.at, self.id)

    @classmethod
    def decode(cls, text: str) -> AuditPosition:
        """The position ``text`` encodes; :class:`~vx11.core.errors.BadCursor` if it is not
        one :meth:`encode` could have made."""
        at, entry_id = cursor.decode(text, lambda key: type(key) is int and 0 < key < 2**63)
        return cls(at, entry_id)


@dataclass(frozen=True)
class AuditPage:
    """One audit page: ``next_cursor`` is None on the last."""

    entries: list[dict[str, Any]]
    next_cursor: str | None


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
            written.append({"id": result.inserted_primary_key[0], "at": at, **row})
        return written

    def page(
        self, filters: AuditFilter | None = None, limit: int = 50, cursor: str | None = None
    ) -> AuditPage:
        """Up to ``limit`` entries matching ``filters``, newest first; ``cursor`` (a
        page's ``next_cursor``) continues after that page. Keyset pagination on (at, id):
        entries written meanwhile never shift a later page."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = AuditPosition.decode(cursor) if cursor is not None else None
        with self.engine.connect() as conn:  # one row more tells whether a page follows
            rows = conn.execute(page_query(filters, limit + 1, after)).mappings().all()
        entries = [_entry(row) for row in rows[:limit]]
        if len(rows) <= limit:
            return AuditPage(entries, None)
        last = entries[-1]
        return AuditPage(entries, AuditPosition(last["at"], last["id"]).encode())

    def purge(self, before: datetime, *, dry_run: bool = False) -> int:
        """Delete the entries written before ``before``; how many (with ``dry_run``,
        how many would be, deleting nothing)."""
        return delete_in_batches(
            self.engine, audit.c.id, audit.c.at < as_utc(before), dry_run=dry_run
        )


def page_query(filters: AuditFilter | None, limit: int, after: AuditPosition | None) -> Select:
    """The newest ``limit`` entries selected by ``filters`` written before ``after``;
    the order matches an index on (…, at, id), which the database walks backwards."""
    filters = filters or AuditFilter()
    if len(filters.events) > 1:
        # One bounded index walk per event, merged: as the spawn history's statuses.
        walks = [
            page_query(replace(filters, events=(event,)), limit, after).subquery()
            for event in dict.fromkeys(filters.events)
        ]
        merged = union_all(*(select(*walk.c) for walk in walks)).subquery()
        return select(*merged.c).order_by(merged.c.at.desc(), merged.c.id.desc()).limit(limit)
    stmt = filters.apply(select(audit))
    if after is not None:
        stmt = stmt.where(tuple_(audit.c.at, audit.c.id) < (after.at, after.id))
    return stmt.order_by(audit.c.at.desc(), audit.c.id.desc()).limit(limit)


def _entry(row: Mapping[str, Any]) -> dict[str, Any]:
    entry = dict(row)
    entry["at"] = as_utc(entry["at"])
    return entry


# --- windows that run out -------------------------------------------------------------------

OPEN_WINDOWS_KEY = "vx11:audit:open-windows"
"""Hash of the windows opened and not yet closed, replaced or seen expired:
window_id → JSON ``{target, opened_at, expires_at, expires, opened_by}``."""

# Atomic, so two gateways opening the same target at once cannot leave a replaced
# window tracked: a window is tracked only while it is the target's current one, and
# tracking it forgets the windows it replaced (those still running when it opened;
# one that had already run out is left for the sweeper to record as expired).
_TRACK = """
local current = redis.call('GET', KEYS[1])
if not current or cjson.decode(current)['window_id'] ~= ARGV[1] then return {} end
local replaced = {}
local tracked = redis.call('HGETALL', KEYS[2])
for i = 1, #tracked, 2 do
  local entry = cjson.decode(tracked[i + 1])
  if tracked[i] ~= ARGV[1] and entry['target'] == ARGV[3]
     and entry['expires'] > tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[2], tracked[i])
    replaced[#replaced + 1] = tracked[i]
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return replaced
"""


@dataclass(frozen=True)
class TrackedWindow:
    """What :class:`OpenWindows` keeps of a window, enough to record its expiry."""

    window_id: str
    target: str
    opened_at: str
    expires_at: str
    expires: float
    """``expires_at`` as a Unix time, for the comparisons made in Redis."""
    opened_by: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        del data["window_id"]
        return json.dumps(data)


class OpenWindows:
    """The windows not yet closed, replaced or recorded as expired, kept in ``redis``
    so that any worker can record an expiry, and exactly one does."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._track_script = redis.register_script(_TRACK)

    def track(self, window: Window, opened_by: str | None) -> str | None:
        """Track ``window`` (just opened) if it is still its target's window; the id of
        the window it replaced, if one was running."""
        tracked = TrackedWindow(
            window.window_id,
            window.target,
            iso_z(window.opened_at),
            iso_z(window.expires_at),
            window.expires_at.timestamp(),
            opened_by,
        )
        replaced = self._track_script(
            keys=[key_for(window.target), OPEN_WINDOWS_KEY],
            args=[window.window_id, tracked.to_json(), window.target, window.opened_at.timestamp()],
        )
        return replaced[0].decode() if replaced else None

    def forget(self, window_id: str) -> None:
        """Stop tracking a window that was closed."""
        self.redis.hdel(OPEN_WINDOWS_KEY, window_id)

    def expired(self, now: datetime | None = None) -> list[TrackedWindow]:
        """The tracked windows whose end has passed."""
        instant = (now or utcnow()).timestamp()
        tracked = [
            TrackedWindow(window_id.decode(), **json.loads(raw))
            for window_id, raw in self.redis.hgetall(OPEN_WINDOWS_KEY).items()
        ]
        return [window for window in tracked if window.expires <= instant]

    def record_expired(self, audit_log: AuditLog, now: datetime | None = None) -> list[str]:
        """Record ``window_expired`` once for each tracked window that ran out; their ids.

        Several workers may sweep at once: the one whose HDEL removes the entry writes
        it. If that write fails, the entry is put back for a later sweep.
        """
        recorded = []
        for window in self.expired(now):
            raw = self.redis.get(key_for(window.target))
            if raw and Window.from_json(raw).window_id == window.window_id:
                continue  # Redis still holds it: this host's clock runs ahead
            if not self.redis.hdel(OPEN_WINDOWS_KEY, window.window_id):
                continue  # another sweeper has it
            try:
                audit_log.record(expired_entry(window))
            except Exception:
                self.redis.hsetnx(OPEN_WINDOWS_KEY, window.window_id, window.to_json())
                raise
            recorded.append(window.window_id)
        return recorded


def expired_entry(window: TrackedWindow) -> AuditEntry:
    return AuditEntry(
        AuditEvent.WINDOW_EXPIRED,
        target=window.target,
        window_id=window.window_id,
        token_label=window.opened_by,
        reason="ttl_elapsed",
        detail={"opened_at": window.opened_at, "expires_at": window.expires_at},
    )
