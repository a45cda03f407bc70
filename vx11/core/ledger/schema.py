"""The ledger's database: its tables (the spawns, the audit log), the engine that reaches
it, and the schema's creation and upgrades. SQLAlchemy Core over SQLite (WAL, the
zero-setup default) or PostgreSQL."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    inspect,
)
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError, ProgrammingError
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.schema import DDL, CreateColumn

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
    # The Idempotency-Key it was submitted with (a digest, with its owner's token: see
    # vx11.gateway.idempotency) and the digest of its request: one spawn per key, for good.
    Column("idempotency_key", String(64)),
    Column("request_fingerprint", String(64)),
    # Exact bytes where the text columns cannot hold them (NULL: the text is exact):
    # stdin given as base64 that is not UTF-8, output that is not UTF-8.
    Column("stdin_raw", LargeBinary),
    Column("stdout_raw", LargeBinary),
    Column("stderr_raw", LargeBinary),
    Column("merge_stderr", Boolean),  # stderr sent into stdout, in order (NULL: false)
    Column("files", JSON),  # [{path, size, base64}]: written in /work before the run
    Column("artifact_patterns", JSON),  # globs of the files kept once it has ended
    Column("max_artifact_bytes", Integer),
    Column("artifacts", JSON),  # [{path, size, sha256}]: the files kept (table artifacts)
    Column("artifacts_truncated", Boolean),  # max_artifact_bytes left matching files out
    # History pages walk one of these backwards, newest first, from a keyset position
    # (created_at, spawn_uuid): each filter that pins one column has its own index.
    Index("ix_spawns_created_at_uuid", "created_at", "spawn_uuid"),
    Index("ix_spawns_status_created_at_uuid", "status", "created_at", "spawn_uuid"),
    Index("ix_spawns_task_type_created_at_uuid", "task_type", "created_at", "spawn_uuid"),
    Index("ix_spawns_correlation_id_created_at_uuid", "correlation_id", "created_at", "spawn_uuid"),
    # A token's own history, and its count of active spawns (its quota).
    Index("ix_spawns_owner_created_at_uuid", "owner", "created_at", "spawn_uuid"),
    Index("ix_spawns_owner_status_created_at_uuid", "owner", "status", "created_at", "spawn_uuid"),
    Index("ux_spawns_owner_idempotency_key", "owner", "idempotency_key", unique=True),
)

artifacts = Table(
    "artifacts",
    metadata,
    # A spawn's artifacts, kept with its record (and purged with it), where every
    # gateway reads them, whatever host ran the spawn.
    Column("spawn_uuid", String(36), primary_key=True),
    Column("path", String(1024), primary_key=True),
    Column("content", LargeBinary, nullable=False),
)

SUPERSEDED_INDEXES = frozenset(
    {"ix_spawns_created_at", "ix_spawns_status_created_at", "ix_spawns_correlation_id"}
)
"""Indexes of older ledgers, each a prefix of one above: dropped on upgrade, as they
only cost writes."""

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


DATABASE_UNAVAILABLE = (OperationalError, InterfaceError)
"""What SQLAlchemy raises when the ledger's database cannot be reached (or restarts)."""

_SCHEMA_ATTEMPTS = 10


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
        def _sqlite_pragmas(  # pragma: no branch - runs per connection
            dbapi_conn: DBAPIConnection, _record: ConnectionPoolEntry
        ) -> None:
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


def _connect(
    patience: float,
    dialect: Dialect,
    _record: ConnectionPoolEntry,
    cargs: Sequence[Any],
    cparams: dict[str, Any],
) -> DBAPIConnection:
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


def create_schema(engine: Engine) -> None:
    """Create the tables if missing, and add the columns a ledger made by an older
    VX11 lacks. Several processes (gunicorn's and Celery's) race here at start-up,
    and each table or index is a separate check-then-create: a loser tries again,
    after a short random pause, and finds the work done."""
    for attempt in range(_SCHEMA_ATTEMPTS):
        try:
            _create_or_upgrade(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError):
            if attempt == _SCHEMA_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.05, 0.3))


def _create_or_upgrade(engine: Engine) -> None:
    metadata.create_all(engine)
    with engine.begin() as conn:
        schema = conn.schema_for_object(spawns)  # honours a schema_translate_map
        for table in metadata.sorted_tables:  # the spawns, and the audit log
            present = {c["name"] for c in inspect(conn).get_columns(table.name, schema)}
            # Columns added since a table's first release are nullable: old rows
            # get NULL.
            for column in (c for c in table.c if c.name not in present):
                spec = CreateColumn(column).compile(dialect=conn.dialect)
                # SQLAlchemy leaves DDL's constructor unannotated
                add = DDL(  # type: ignore[no-untyped-call]
                    f"ALTER TABLE %(fullname)s ADD COLUMN {spec}"
                )
                conn.execute(add.against(table))
            # create_all skips an existing table's indexes: add those it lacks.
            for index in table.indexes:
                index.create(conn, checkfirst=True)
        indexes = {ix["name"] for ix in inspect(conn).get_indexes(spawns.name, schema)}
        quote = conn.dialect.identifier_preparer.quote
        for name in sorted(SUPERSEDED_INDEXES & indexes):
            qualified = f"{quote(schema)}.{quote(name)}" if schema else quote(name)
            conn.exec_driver_sql(f"DROP INDEX IF EXISTS {qualified}")
