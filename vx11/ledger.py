"""The spawn ledger: every spawn's durable record, from acceptance to its terminal state.

SQLAlchemy Core over SQLite (WAL, the zero-setup default) or PostgreSQL. The gateway
adds records and reads them; workers move them through :mod:`vx11.states`. Records
outlive Celery's result expiry and any restart.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.schema import DDL, CreateColumn

from vx11.errors import IllegalTransition, NotFound
from vx11.states import ALLOWED_SOURCES, SpawnStatus

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
    Column("limits", JSON),  # the resolved per-spawn limits, see vx11.submit.resolve_limits
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
    Index("ix_spawns_created_at", "created_at"),
    Index("ix_spawns_status_created_at", "status", "created_at"),
    Index("ix_spawns_correlation_id", "correlation_id"),
)

_ID_ATTEMPTS = 8
_INSERT = insert(spawns)


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout so several gunicorn and
    Celery processes can share one file."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no branch - runs per connection
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


class Ledger:
    """The spawn records in one database; the engine is passed in."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> Ledger:
        return cls(make_engine(url))

    def create_schema(self) -> None:
        """Create the tables if missing, and add the columns a ledger made by an older
        VX11 lacks. Several processes may race here at start-up: the loser of a race
        sees the work done on its second look."""
        try:
            self._create_or_upgrade()
        except (OperationalError, ProgrammingError, IntegrityError):
            self._create_or_upgrade()

    def _create_or_upgrade(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            schema = conn.schema_for_object(spawns)  # honours a schema_translate_map
            present = {c["name"] for c in inspect(conn).get_columns(spawns.name, schema)}
            # Columns added since the first release are nullable, so old rows get NULL.
            for column in (c for c in spawns.c if c.name not in present):
                spec = CreateColumn(column).compile(dialect=conn.dialect)
                add = DDL(f"ALTER TABLE %(fullname)s ADD COLUMN {spec}")
                conn.execute(add.against(spawns))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def add(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Record a new QUEUED spawn. Its uuid is fresh and its short ``spawn_id`` (the
        uuid's first 8 hex digits) unique: a rare clash draws a new uuid."""
        for _ in range(_ID_ATTEMPTS):
            spawn_uuid = str(uuid.uuid4())
            row = {
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
            except IntegrityError:
                continue
            return _complete(row)
        raise RuntimeError("could not draw a unique spawn_id")  # pragma: no cover

    def get(self, ident: str) -> dict[str, Any]:
        """The record whose ``spawn_id`` or ``spawn_uuid`` is ``ident``."""
        column = spawns.c.spawn_id if ident.startswith("spawn-") else spawns.c.spawn_uuid
        with self.engine.connect() as conn:
            row = conn.execute(select(spawns).where(column == ident)).mappings().first()
        if row is None:
            raise NotFound(f"no spawn {ident}")
        return _complete(row)

    def transition(self, spawn_uuid: str, target: SpawnStatus, **fields: Any) -> dict[str, Any]:
        """Move a spawn to ``target``, setting ``fields``, if its current state allows it.

        A compare-and-set on the current state, so two processes racing on one spawn
        cannot both win; the loser gets :class:`~vx11.errors.IllegalTransition`.
        """
        sources = [s.value for s in ALLOWED_SOURCES[target]]
        values = {**fields, "status": target.value}
        if target.is_terminal:
            values.setdefault("finished_at", utcnow())
        stmt = (
            update(spawns)
            .where(spawns.c.spawn_uuid == spawn_uuid, spawns.c.status.in_(sources))
            .values(values)
            .returning(*spawns.c)
        )
        with self.engine.begin() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            raise IllegalTransition(SpawnStatus(self.get(spawn_uuid)["status"]), target)
        return _complete(row)


def _complete(row: Mapping[str, Any]) -> dict[str, Any]:
    record = {c.name: None for c in spawns.c}
    record.update(row)
    for key in ("created_at", "started_at", "finished_at"):
        value = record[key]
        if value is not None and value.tzinfo is None:  # SQLite keeps no zone: it is UTC
            record[key] = value.replace(tzinfo=UTC)
    return record
