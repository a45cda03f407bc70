"""The spawn store: every spawn's durable record, from acceptance to its terminal state.

The only module that queries the ``spawns`` table. The gateway adds records and reads
them; workers move them through :mod:`vx11.core.states`, and their sweeper asks which
ones are stranded. Records outlive Celery's result expiry and any restart.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    Integer,
    RowMapping,
    Select,
    Update,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from vx11.core.errors import IllegalTransition, NotFound, QuotaExceeded
from vx11.core.ledger.paging import Keyset, Page, Position, Selection
from vx11.core.ledger.schema import (
    DATABASE_UNAVAILABLE,
    artifacts,
    create_schema,
    make_engine,
    spawns,
)
from vx11.core.states import ALLOWED_SOURCES, TERMINAL_STATES, SpawnStatus
from vx11.core.times import as_utc, utcnow

HEAVY_FIELDS = (
    "code", "stdin", "stdout", "stderr", "stdin_raw", "stdout_raw", "stderr_raw", "files",
)  # fmt: skip
"""Columns a history page leaves out: they can be large; ``get`` has them."""
_SUMMARY_COLUMNS = [c for c in spawns.c if c.name not in HEAVY_FIELDS]
_ID_ATTEMPTS = 8
_INSERT = insert(spawns)

QUOTA_RETRY_AFTER = 1
"""Retry-After of a spawn refused for its owner's quota, seconds: a spawn may end at
any time."""

PURGE_BATCH = 2000
"""Rows deleted per transaction, so a large purge never holds SQLite's write lock for
long (the gateway and the workers keep writing meanwhile)."""


def _is_canonical_uuid(value: Any) -> bool:
    try:
        same: bool = str(uuid.UUID(value)) == value  # == with an Any operand is typed Any
        return same
    except (ValueError, TypeError, AttributeError):
        return False


PAGES = Keyset(spawns.c.created_at, spawns.c.spawn_uuid, _is_canonical_uuid)
"""History pages: newest first by (created_at, spawn_uuid)."""


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
        """Create the ledger's tables, or upgrade them (:func:`schema.create_schema`)."""
        create_schema(self.engine)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(select(1))

    def add(
        self,
        fields: Mapping[str, Any],
        also: Callable[[Connection, dict[str, Any]], None] | None = None,
        *,
        max_active: int = 0,
        uuids: Iterator[str] | None = None,
    ) -> dict[str, Any]:
        """Record a new QUEUED spawn, in one transaction. Its uuid is fresh (the next of
        ``uuids``, else a new one) and its short ``spawn_id`` (the uuid's first 8 hex
        digits) unique: a rare clash takes the next uuid. ``also(conn, record)`` writes
        what must stand or fall with it (its audit entry) in the same transaction.

        With ``max_active``, the record's ``owner`` may have at most that many spawns
        QUEUED or RUNNING, this one included; one more is
        :class:`~vx11.core.errors.QuotaExceeded` and nothing is written. The count is
        taken in the insert's transaction, after the insert, with the owner's other
        inserts held back (SQLite's write lock; a per-owner advisory lock on
        PostgreSQL), so concurrent requests can never overshoot it.

        With an ``idempotency_key`` in ``fields``, at most one spawn of its ``owner``
        ever has it: if one does, nothing is written and :class:`AlreadyAccepted`
        carries that spawn's record (the unique index refuses the insert)."""
        fresh = uuids if uuids is not None else _fresh_uuids()
        for _ in range(_ID_ATTEMPTS):
            spawn_uuid = next(fresh)
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
                    if max_active:
                        _hold_owner(conn, row["owner"])
                    conn.execute(_INSERT, row)  # parameters, not .values(): cached compile
                    if max_active and _count_active(conn, row["owner"]) > max_active:
                        raise QuotaExceeded(
                            f"this token already has {max_active} "
                            f"spawn{'s' * (max_active != 1)} queued or running, its "
                            "limit; retry when one has finished",
                            retry_after=QUOTA_RETRY_AFTER,
                        )
                    if also is not None:
                        also(conn, _complete(row))
            except IntegrityError:  # the key's spawn exists, or a spawn_id clashed
                if row.get("idempotency_key") is not None:
                    self._refuse_a_second(row["owner"], row["idempotency_key"])
                continue
            return _complete(row)
        raise RuntimeError("could not draw a unique spawn_id")  # pragma: no cover

    def _refuse_a_second(self, owner: str | None, key: str) -> None:
        """:class:`AlreadyAccepted` if ``owner`` has a spawn with idempotency ``key``:
        asked only once an insert has failed, so an accepted spawn costs no lookup."""
        query = select(spawns).where(spawns.c.owner == owner, spawns.c.idempotency_key == key)
        with self.engine.connect() as conn:
            earlier = conn.execute(query).mappings().first()
        if earlier is not None:
            raise AlreadyAccepted(_complete(earlier))

    def mark_published(self, spawn_uuid: str) -> None:
        """Its job has reached the broker: the sweeper need not publish it again. (A
        gateway records a spawn ``published`` from the start, and notes it in Redis
        until the job is, :mod:`vx11.core.unpublished`; this is for a record a gateway
        of an earlier version wrote unpublished.)"""
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
        query = _get_statement(ident.startswith("spawn-"), owner is not None)
        params = {"ident": ident} if owner is None else {"ident": ident, "owner": owner}
        with self.engine.connect() as conn:
            row = conn.execute(query, params).mappings().first()
        if row is None:
            raise NotFound(f"no spawn {ident}")
        return _complete(row)

    def count_active(self, owner: str) -> int:
        """How many of ``owner``'s spawns are QUEUED or RUNNING."""
        with self.engine.connect() as conn:
            return _count_active(conn, owner)

    def transition(
        self, spawn_uuid: str, target: SpawnStatus, *, attempt: int | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Move a spawn to ``target``, setting ``fields``, if its current state allows it
        (and, with ``attempt``, if that is how many times it has started).

        A compare-and-set on the current state, so two processes racing on one spawn
        cannot both win; the loser gets :class:`~vx11.core.errors.IllegalTransition`.
        """
        values = {**fields, "status": target.value}
        if target.is_terminal:
            values.setdefault("finished_at", utcnow())
        params = {f"{_SET}{name}": value for name, value in values.items()}
        params[_UUID] = spawn_uuid
        if attempt is not None:
            params[_ATTEMPT] = attempt
        stmt = _transition_statement(target, frozenset(values), attempt is not None)
        row, retried = self._change(stmt, params)
        if row is None:
            current = self.get(spawn_uuid)
            if retried and current["status"] == target.value:
                return current  # a try whose answer was lost had committed it
            raise IllegalTransition(SpawnStatus(current["status"]), target)
        return _complete(row)

    def _change(self, stmt: Any, params: dict[str, Any]) -> tuple[RowMapping | None, bool]:
        """The first row of ``stmt`` with ``params``, run in a transaction of its own and
        tried again while the database does not answer, for up to :attr:`patience`
        seconds; and whether it was tried more than once."""
        deadline, retried = time.monotonic() + self.patience, False
        while True:
            try:
                with self.engine.begin() as conn:
                    return conn.execute(stmt, params).mappings().first(), retried
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
        page (:mod:`vx11.core.ledger.paging`)."""
        page = PAGES.page(
            self.engine, lambda limit, after: page_query(filters, limit, after), limit, cursor
        )
        return Page([_summary(row) for row in page.rows], page.next_cursor)

    # --- what the sweeper, the callbacks and the metrics ask ---------------------------

    def running_since_before(self, started_before: datetime) -> list[str]:
        """The uuids of the RUNNING spawns started before ``started_before``."""
        return self._uuids(
            spawns.c.status == SpawnStatus.RUNNING.value,
            spawns.c.started_at < as_utc(started_before),
        )

    def queued_before(self, created_before: datetime, *, published: bool) -> list[str]:
        """The uuids of the QUEUED spawns accepted before ``created_before`` whose job
        has (``published``) or has not yet been recorded as reaching the broker."""
        return self._uuids(
            spawns.c.status == SpawnStatus.QUEUED.value,
            spawns.c.published.is_(published),
            spawns.c.created_at < as_utc(created_before),
        )

    def _uuids(self, *conditions: ColumnElement[bool]) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.scalars(select(spawns.c.spawn_uuid).where(*conditions)))

    def append_callback(self, spawn_uuid: str, entry: Mapping[str, Any]) -> None:
        """Append ``entry`` to the spawn's ``callbacks``. One delivery task runs per
        spawn at a time, so a read-then-write in one transaction (row locked where the
        database can) is enough."""
        row = spawns.c.spawn_uuid == spawn_uuid
        with self.engine.begin() as conn:
            query = select(spawns.c.callbacks).where(row).with_for_update()
            current = conn.execute(query).scalar()
            conn.execute(update(spawns).where(row).values(callbacks=[*(current or []), entry]))

    def count_by_status(self) -> dict[str, int]:
        """``{state: records}`` for every spawn state, 0 for those with none."""
        query = select(spawns.c.status, func.count()).group_by(spawns.c.status)
        with self.engine.connect() as conn:
            counts: dict[str, int] = {status: count for status, count in conn.execute(query)}
        return {state.value: counts.get(state.value, 0) for state in SpawnStatus}

    def count_errors_by_reason(self) -> dict[str | None, int]:
        """``{reason: records}`` of the spawns in state ERROR. Read through the status
        index: its cost is the ERROR records', which a healthy deployment keeps few."""
        query = (
            select(spawns.c.reason, func.count())
            .where(spawns.c.status == SpawnStatus.ERROR.value)
            .group_by(spawns.c.reason)
        )
        with self.engine.connect() as conn:
            return {reason: count for reason, count in conn.execute(query)}

    def purge(self, before: datetime, *, dry_run: bool = False) -> int:
        """Delete the terminal records created before ``before`` (a queued or running
        spawn is kept whatever its age), their artifacts first; how many (with
        ``dry_run``, how many would be, deleting nothing)."""
        old = spawns.c.status.in_(sorted(s.value for s in TERMINAL_STATES)) & (
            spawns.c.created_at < as_utc(before)
        )
        if not dry_run:
            kept = artifacts.c.spawn_uuid.in_(select(spawns.c.spawn_uuid).where(old))
            delete_in_batches(self.engine, artifacts.c.spawn_uuid, kept)
        return delete_in_batches(self.engine, spawns.c.spawn_uuid, old, dry_run=dry_run)

    def keep_artifacts(self, spawn_uuid: str, files: Iterable[tuple[str, bytes]]) -> None:
        """The artifacts of the spawn's run, in place of any an earlier run kept."""
        rows = [{"spawn_uuid": spawn_uuid, "path": p, "content": c} for p, c in files]
        with self.engine.begin() as conn:
            conn.execute(delete(artifacts).where(artifacts.c.spawn_uuid == spawn_uuid))
            if rows:
                conn.execute(insert(artifacts), rows)

    def artifact(self, spawn_uuid: str, path: str) -> bytes | None:
        """One artifact's content; None if the spawn kept none at ``path``."""
        query = select(artifacts.c.content).where(
            (artifacts.c.spawn_uuid == spawn_uuid) & (artifacts.c.path == path)
        )
        with self.engine.connect() as conn:
            content = conn.execute(query).scalar_one_or_none()
        return bytes(content) if content is not None else None


def _fresh_uuids() -> Iterator[str]:
    while True:
        yield str(uuid.uuid4())


# --- the statements a worker runs per spawn, built once -----------------------------------
# A spawn's claim and end each run one UPDATE ... RETURNING, and a look-up one SELECT. Each
# is built once per shape (the state moved to, the columns set, whether the attempt is
# checked) with its values as bound parameters: SQLAlchemy then finds the statement's
# compiled form in the engine's cache by a key memoized on the statement itself, instead
# of building and hashing a new statement per call.

_SET = "set_"
_UUID = "where_spawn_uuid"
_ATTEMPT = "where_attempt"


@functools.cache
def _transition_statement(
    target: SpawnStatus, columns: frozenset[str], with_attempt: bool
) -> Update:
    """``UPDATE spawns SET <columns> WHERE spawn_uuid = :uuid AND status IN (<the states
    target may be entered from>) [AND coalesce(attempts, 0) = :attempt] RETURNING *``.
    The source states are fixed per target, so they are written into the SQL."""
    sources = sorted(source.value for source in ALLOWED_SOURCES[target])
    conditions = [
        spawns.c.spawn_uuid == bindparam(_UUID, type_=spawns.c.spawn_uuid.type),
        spawns.c.status.in_([literal_column(f"'{source}'") for source in sources]),
    ]
    if with_attempt:
        attempts = func.coalesce(spawns.c.attempts, literal_column("0"))
        conditions.append(attempts == bindparam(_ATTEMPT, type_=Integer()))
    values = {
        name: bindparam(f"{_SET}{name}", type_=spawns.c[name].type) for name in sorted(columns)
    }
    return update(spawns).where(*conditions).values(values).returning(*spawns.c)


@functools.cache
def _get_statement(by_spawn_id: bool, of_owner: bool) -> Select[Any]:
    """``SELECT * FROM spawns WHERE <spawn_id or spawn_uuid> = :ident [AND owner = :owner]``."""
    column = spawns.c.spawn_id if by_spawn_id else spawns.c.spawn_uuid
    query = select(spawns).where(column == bindparam("ident", type_=column.type))
    if of_owner:
        query = query.where(spawns.c.owner == bindparam("owner", type_=spawns.c.owner.type))
    return query


class AlreadyAccepted(Exception):
    """Raised by :meth:`Ledger.add` when the owner already has a spawn with the same
    idempotency key: ``record`` is that spawn's."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(record["spawn_id"])
        self.record = record


def _hold_owner(conn: Connection, owner: str | None) -> None:
    """Hold back, until this transaction ends, every other quota-checked insert of
    ``owner``'s. SQLite needs nothing: its write lock, taken by the insert, already
    serializes writers."""
    if conn.dialect.name == "postgresql":
        conn.execute(select(func.pg_advisory_xact_lock(func.hashtextextended(owner, 0))))


def _count_active(conn: Connection, owner: str | None) -> int:
    active = [SpawnStatus.QUEUED.value, SpawnStatus.RUNNING.value]
    query = select(func.count()).where(spawns.c.owner == owner, spawns.c.status.in_(active))
    return int(conn.execute(query).scalar_one())


def delete_in_batches(
    engine: Engine, key: Column[Any], condition: ColumnElement[bool], *, dry_run: bool = False
) -> int:
    """Delete the rows of ``key``'s table that meet ``condition``, :data:`PURGE_BATCH`
    at a time; how many (with ``dry_run``, how many would be, deleting nothing)."""
    table = key.table
    if dry_run:
        with engine.connect() as conn:
            query = select(func.count()).select_from(table).where(condition)
            return int(conn.execute(query).scalar_one())
    deleted = 0
    while True:
        batch = select(key).where(condition).limit(PURGE_BATCH).scalar_subquery()
        with engine.begin() as conn:
            count = conn.execute(delete(table).where(key.in_(batch))).rowcount
        deleted += count
        if count < PURGE_BATCH:
            return deleted


def page_query(filters: SpawnFilter | None, limit: int, after: Position | None) -> Select[Any]:
    """The newest ``limit`` spawns selected by ``filters`` created before ``after``."""
    return PAGES.query(select(*_SUMMARY_COLUMNS), filters or SpawnFilter(), limit, after)


@dataclass(frozen=True, kw_only=True)
class SpawnFilter(Selection):
    """What a history page selects (created at or after ``since``, before ``until``);
    every criterion left empty selects all."""

    EQUAL = ("owner", "task_type", "correlation_id")
    AMONG = ("status", "statuses")
    statuses: tuple[SpawnStatus, ...] = ()
    owner: str | None = None
    """Only the spawns this token (its ``token_id``) submitted."""
    task_type: str | None = None
    correlation_id: str | None = None


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    record = _complete(row)
    for name in HEAVY_FIELDS:
        del record[name]
    return record


def _complete(row: Mapping[str, Any] | RowMapping) -> dict[str, Any]:
    record: dict[str, Any] = {c.name: None for c in spawns.c}
    record.update(row)
    for key in ("created_at", "started_at", "finished_at"):
        value = record[key]
        if value is not None and value.tzinfo is None:  # SQLite keeps no zone: it is UTC
            record[key] = value.replace(tzinfo=UTC)
    return record
