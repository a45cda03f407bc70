"""The spawn ledger: every spawn's durable record, from acceptance to its terminal state.

SQLAlchemy Core over SQLite (WAL, the zero-setup default) or PostgreSQL. The gateway
adds records and reads them; workers move them through :mod:`vx11.core.states`. Records
outlive Celery's result expiry and any restart.
"""

from __future__ import annotations

import functools
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    Select,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.schema import DDL, CreateColumn

from vx11.core import cursor
from vx11.core.errors import IllegalTransition, NotFound
from vx11.core.states import ALLOWED_SOURCES, SpawnStatus
from vx11.core.times import as_utc, utcnow

log = logging.getLogger(__name__)

metadata = MetaData()

spawns = Table(
    "spawns",
    metadata,
    Column("spawn_uuid", String(36), primary_key=True),
    Column("spawn_id", String(16), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("reason", String(128)),
    Column("task_type", String(16), nullable=False),
    Column("code", Text, nullable=False),
    Column("stdin", Text),
    Column("ttl_seconds", Integer, nullable=False),
    Column("correlation_id", String(128)),
    Column("metadata", JSON),
    Column("window_id", String(36)),
    Column("limits", JSON),  # the resolved per-spawn limits, see vx11.gateway.submit.resolve_limits
    Column("args", JSON),  # list of strings: shell positional parameters, python sys.argv[1:]
    Column("exit_code", Integer),
    Column("stdout", Text),
    Column("stderr", Text),
    Column("stdout_truncated", Boolean, nullable=False, default=False),
    Column("stderr_truncated", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("finished_at", DateTime(timezone=True)),
    Column("duration_ms", Integer),
    Column("worker", String(255)),
    Column("cpu_time_ms", Integer),
    Column("peak_memory_kb", Integer),
    Column("sandbox", String(16)),  # the sandbox level it ran at: bwrap or basic
    Column("published", Boolean),  # its job reached the broker (NULL: before VX11 knew)
    Column("max_retries", Integer),  # re-runs allowed after a lost worker (0..10)
    Column("attempts", Integer),  # times a worker has started it
    Column("callback_url", String(2048)),  # vetted by vx11.core.callbacks when accepted
    Column("callbacks", JSON),  # list of delivery attempts to callback_url, oldest first
    Column("owner", String(64)),  # token_id of the token that submitted it (NULL: before)
    # History pages walk one of these backwards, newest first, from a keyset position
    # (created_at, spawn_uuid): each filter that pins one column has its own index.
    Index("ix_spawns_created_at_uuid", "created_at", "spawn_uuid"),
    Index("ix_spawns_status_created_at_uuid", "status", "created_at", "spawn_uuid"),
    Index("ix_spawns_task_type_created_at_uuid", "task_type", "created_at", "spawn_uuid"),
    Index("ix_spawns_correlation_id_created_at_uuid", "correlation_id", "created_at", "spawn_uuid"),
    # A token's own history, and its count of active spawns (its quota).
    Index("ix_spawns_owner_created_at_uuid", "owner", "created_at", "spawn_uuid"),
    Index("ix_spawns_owner_status_created_at_uuid", "owner", "status", "created_at", "spawn_uuid"),
)

SUPERSEDED_INDEXES = frozenset(
    {"ix_spawns_created_at", "ix_spawns_status_created_at", "ix_spawns_correlation_id"}
)
"""Indexes of older ledgers, each a prefix of one above: dropped on upgrade, as they
only cost writes."""

HEAVY_FIELDS = ("code", "stdin", "stdout", "stderr")
"""Columns a history page leaves out: they can be large; ``get`` has them."""
_SUMMARY_COLUMNS = [c for c in spawns.c if c.name not in HEAVY_FIELDS]

_ID_ATTEMPTS = 8
_SCHEMA_ATTEMPTS = 10
_INSERT = insert(spawns)


def make_engine(url: str, *, connect_patience: float = 0.0) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so several gunicorn and
    Celery processes can share one file. With ``connect_patience``, a connection the
    database refuses is tried again for up to that many seconds (a restart takes a
    few) before the error is raised: the workers wait, the gateway answers 503 at once.
    A database error never shows its statement's parameters (``hide_parameters``): they
    hold spawns' code, stdin and output, and errors are logged."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no branch - runs per connection
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

    else:
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=5, hide_parameters=True
        )
    if connect_patience > 0:
        event.listen(engine, "do_connect", functools.partial(_connect, connect_patience))
    return engine


def _connect(patience: float, dialect, _record, cargs, cparams):
    """A DBAPI connection, tried every half second for up to ``patience`` seconds."""
    deadline, warned = time.monotonic() + patience, False
    while True:
        try:
            return dialect.connect(*cargs, **cparams)
        except dialect.loaded_dbapi.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise
            if not warned:
                log.warning("the ledger's database is unavailable, waiting for it: %s", exc)
                warned = True
            time.sleep(0.5)


DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
"""What SQLAlchemy raises when the ledger's database cannot be reached (or restarts)."""


class Ledger:
    """The spawn records in one database; the engine is passed in.

    ``patience``: seconds a state change is tried again while the database does not
    answer (a restart), before the error is raised. The workers wait, so that what a
    spawn did is recorded once the database is back; the gateway does not (0), and
    answers 503 at once."""

    def __init__(self, engine: Engine, *, patience: float = 0.0) -> None:
        self.engine, self.patience = engine, patience

    @classmethod
    def from_url(cls, url: str, *, patience: float = 0.0) -> Ledger:
        """A ledger whose connections, too, wait up to ``patience`` for the database."""
        return cls(make_engine(url, connect_patience=patience), patience=patience)

    def create_schema(self) -> None:
        """Create the tables if missing, and add the columns a ledger made by an older
        VX11 lacks. Several processes (gunicorn's and Celery's) race here at start-up,
        and each table or index is a separate check-then-create: a loser tries again,
        after a short random pause, and finds the work done."""
        for attempt in range(_SCHEMA_ATTEMPTS):
            try:
                self._create_or_upgrade()
                return
            except (OperationalError, ProgrammingError, IntegrityError):
                if attempt == _SCHEMA_ATTEMPTS - 1:
                    raise
                time.sleep(random.uniform(0.05, 0.3))

    def _create_or_upgrade(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            schema = conn.schema_for_object(spawns)  # honours a schema_translate_map
            for table in metadata.sorted_tables:  # the spawns, and the audit log
                present = {c["name"] for c in inspect(conn).get_columns(table.name, schema)}
                # Columns added since a table's first release are nullable: old rows
                # get NULL.
                for column in (c for c in table.c if c.name not in present):
                    spec = CreateColumn(column).compile(dialect=conn.dialect)
                    add = DDL(f"ALTER TABLE %(fullname)s ADD COLUMN {spec}")
                    conn.execute(add.against(table))
                # create_all skips an existing table's indexes: add those it lacks.
                for index in table.indexes:
                    index.create(conn, checkfirst=True)
            indexes = {ix["name"] for ix in inspect(conn).get_indexes(spawns.name, schema)}
            quote = conn.dialect.identifier_preparer.quote
            for name in sorted(SUPERSEDED_INDEXES & indexes):
                qualified = f"{quote(schema)}.{quote(name)}" if schema else quote(name)
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {qualified}")

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def add(
        self,
        fields: Mapping[str, Any],
        also: Callable[[Connection, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Record a new QUEUED spawn. Its uuid is fresh and its short ``spawn_id`` (the
        uuid's first 8 hex digits) unique: a rare clash draws a new uuid. ``also(conn,
        record)`` writes what must stand or fall with it (its audit entry) in the same
        transaction."""
        for _ in range(_ID_ATTEMPTS):
            spawn_uuid = str(uuid.uuid4())
            row = {
                "published": False,
                "stdout_truncated": False,
                "stderr_truncated": False,
                **fields,
                "spawn_uuid": spawn_uuid,
                "spawn_id": f"spawn-{spawn_uuid[:8]}",
                "status": SpawnStatus.QUEUED.value,
                "created_at": utcnow(),
            }
            try:
                with self.engine.begin() as conn:
                    conn.execute(_INSERT, row)  # parameters, not .values(): cached compile
                    if also is not None:
                        also(conn, _complete(row))
            except IntegrityError:
                continue
            return _complete(row)
        raise RuntimeError("could not draw a unique spawn_id")  # pragma: no cover

    def mark_published(self, spawn_uuid: str) -> None:
        """Its job has reached the broker: the sweeper need not publish it again."""
        with self.engine.begin() as conn:
            conn.execute(
                update(spawns).where(spawns.c.spawn_uuid == spawn_uuid).values(published=True)
            )

    def running_under(self, window_id: str) -> list[str]:
        """The uuids of the spawns running under the policy window ``window_id``."""
        query = select(spawns.c.spawn_uuid).where(
            spawns.c.window_id == window_id, spawns.c.status == SpawnStatus.RUNNING.value
        )
        with self.engine.connect() as conn:
            return [row.spawn_uuid for row in conn.execute(query)]

    def spawn_ids(self, spawn_uuids: list[str]) -> dict[str, str]:
        """The short ``spawn_id`` of each of ``spawn_uuids`` that has a record."""
        query = select(spawns.c.spawn_uuid, spawns.c.spawn_id).where(
            spawns.c.spawn_uuid.in_(spawn_uuids)
        )
        with self.engine.connect() as conn:
            return {row.spawn_uuid: row.spawn_id for row in conn.execute(query)}

    def get(self, ident: str, *, owner: str | None = None) -> dict[str, Any]:
        """The record whose ``spawn_id`` or ``spawn_uuid`` is ``ident``; with ``owner``,
        only if that token submitted it (another's is "not found", so ids cannot be
        probed)."""
        column = spawns.c.spawn_id if ident.startswith("spawn-") else spawns.c.spawn_uuid
        query = select(spawns).where(column == ident)
        if owner is not None:
            query = query.where(spawns.c.owner == owner)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        if row is None:
            raise NotFound(f"no spawn {ident}")
        return _complete(row)

    def count_active(self, owner: str) -> int:
        """How many of ``owner``'s spawns are QUEUED or RUNNING."""
        active = [SpawnStatus.QUEUED.value, SpawnStatus.RUNNING.value]
        query = select(func.count()).where(spawns.c.owner == owner, spawns.c.status.in_(active))
        with self.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def transition(
        self, spawn_uuid: str, target: SpawnStatus, *, attempt: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Move a spawn to ``target``, setting ``fields``, if its current state allows it
        (and, with ``attempt``, if that is how many times it has started).

        A compare-and-set on the current state, so two processes racing on one spawn
        cannot both win; the loser gets :class:`~vx11.core.errors.IllegalTransition`.
        """
        sources = [s.value for s in ALLOWED_SOURCES[target]]
        values = {**fields, "status": target.value}
        if target.is_terminal:
            values.setdefault("finished_at", utcnow())
        conditions = [spawns.c.spawn_uuid == spawn_uuid, spawns.c.status.in_(sources)]
        if attempt is not None:
            conditions.append(func.coalesce(spawns.c.attempts, 0) == attempt)
        stmt = update(spawns).where(*conditions).values(values).returning(*spawns.c)
        row, retried = self._change(stmt)
        if row is None:
            current = self.get(spawn_uuid)
            if retried and current["status"] == target.value:
                return current  # a try whose answer was lost had committed it
            raise IllegalTransition(SpawnStatus(current["status"]), target)
        return _complete(row)

    def _change(self, stmt: Any) -> tuple[Mapping[str, Any] | None, bool]:
        """The first row of ``stmt``, run in a transaction of its own and tried again
        while the database does not answer, for up to :attr:`patience` seconds; and
        whether it was tried more than once."""
        deadline, retried = time.monotonic() + self.patience, False
        while True:
            try:
                with self.engine.begin() as conn:
                    return conn.execute(stmt).mappings().first(), retried
            except DATABASE_UNAVAILABLE:
                if time.monotonic() >= deadline:
                    raise
                retried = True
                time.sleep(0.5)

    def page(
        self, filters: SpawnFilter | None = None, limit: int = 50, cursor: str | None = None
    ) -> Page:
        """Up to ``limit`` records matching ``filters``, newest first, without the
        :data:`HEAVY_FIELDS`; ``cursor`` (a page's ``next_cursor``) continues after that
        page. Keyset pagination on (created_at, spawn_uuid): spawns added meanwhile
        never shift a later page, so nothing is repeated or skipped."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        after = Position.decode(cursor) if cursor is not None else None
        with self.engine.connect() as conn:  # one row more tells whether a page follows
            rows = conn.execute(page_query(filters, limit + 1, after)).mappings().all()
        records = [_summary(row) for row in rows[:limit]]
        more = len(rows) > limit
        return Page(records, Position.of(records[-1]).encode() if more else None)


def page_query(filters: SpawnFilter | None, limit: int, after: Position | None) -> Select:
    """The newest ``limit`` spawns selected by ``filters`` created before ``after``.

    The row comparison and the order match an index on (…, created_at, spawn_uuid),
    so the database walks the index backwards and stops after ``limit`` rows.
    """
    filters = filters or SpawnFilter()
    if len(filters.statuses) > 1:
        # One index walk per status, each stopping after ``limit`` rows, then merged:
        # a walk of the created_at index filtering on status would read every row of
        # the rare statuses' history, and an IN on the status index needs a full sort.
        walks = [
            page_query(replace(filters, statuses=(status,)), limit, after).subquery()
            for status in dict.fromkeys(filters.statuses)
        ]
        merged = union_all(*(select(*walk.c) for walk in walks)).subquery()
        order = (merged.c.created_at.desc(), merged.c.spawn_uuid.desc())
        return select(*merged.c).order_by(*order).limit(limit)
    stmt = filters.apply(select(*_SUMMARY_COLUMNS))
    if after is not None:
        key = tuple_(spawns.c.created_at, spawns.c.spawn_uuid)
        stmt = stmt.where(key < (after.created_at, after.spawn_uuid))
    order = (spawns.c.created_at.desc(), spawns.c.spawn_uuid.desc())
    return stmt.order_by(*order).limit(limit)


@dataclass(frozen=True)
class SpawnFilter:
    """What a history page selects; every criterion left empty selects all."""

    statuses: tuple[SpawnStatus, ...] = ()
    owner: str | None = None
    """Only the spawns this token (its ``token_id``) submitted."""
    task_type: str | None = None
    correlation_id: str | None = None
    since: datetime | None = None
    """Created at or after this instant."""
    until: datetime | None = None
    """Created strictly before this instant."""

    def apply(self, stmt: Select) -> Select:
        """``stmt`` narrowed to the spawns this filter selects."""
        if len(self.statuses) == 1:  # an equality, so the status index also gives the order
            stmt = stmt.where(spawns.c.status == self.statuses[0].value)
        elif self.statuses:  # page_query merges one walk per status instead
            stmt = stmt.where(spawns.c.status.in_([s.value for s in self.statuses]))
        if self.owner is not None:
            stmt = stmt.where(spawns.c.owner == self.owner)
        if self.task_type is not None:
            stmt = stmt.where(spawns.c.task_type == self.task_type)
        if self.correlation_id is not None:
            stmt = stmt.where(spawns.c.correlation_id == self.correlation_id)
        if self.since is not None:
            stmt = stmt.where(spawns.c.created_at >= as_utc(self.since))
        if self.until is not None:
            stmt = stmt.where(spawns.c.created_at < as_utc(self.until))
        return stmt


@dataclass(frozen=True)
class Position:
    """Where a history page ended: its last record's (created_at, spawn_uuid).

    Handed out as an opaque cursor (URL-safe base64 of JSON). A cursor is a position,
    not a credential: a forged but well-formed one selects what ``until`` could.
    """

    created_at: datetime
    spawn_uuid: str

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Position:
        return cls(as_utc(record["created_at"]), record["spawn_uuid"])

    def encode(self) -> str:
        return cursor.encode(self.created_at, self.spawn_uuid)

    @classmethod
    def decode(cls, text: str) -> Position:
        """The position ``text`` encodes; :class:`~vx11.core.errors.BadCursor` if it is not
        one :meth:`encode` could have made."""
        created_at, spawn_uuid = cursor.decode(text, _is_canonical_uuid)
        return cls(created_at, spawn_uuid)


def _is_canonical_uuid(value: Any) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


@dataclass(frozen=True)
class Page:
    """One history page: ``next_cursor`` is None on the last."""

    records: list[dict[str, Any]]
    next_cursor: str | None


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    record = _complete(row)
    for name in HEAVY_FIELDS:
        del record[name]
    return record


def _complete(row: Mapping[str, Any]) -> dict[str, Any]:
    record = {c.name: None for c in spawns.c}
    record.update(row)
    for key in ("created_at", "started_at", "finished_at"):
        value = record[key]
        if value is not None and value.tzinfo is None:  # SQLite keeps no zone: it is UTC
            record[key] = value.replace(tzinfo=UTC)
    return record
