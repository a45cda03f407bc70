"""Retention: deleting spawn records and audit entries older than ``retention_days``
(``vx11 purge``). Only a terminal spawn is ever deleted; a queued or running one is
kept whatever its age.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import ColumnElement, Engine, delete, func, select
from sqlalchemy.sql.schema import Column

from vx11.core.ledger import spawns
from vx11.core.states import TERMINAL_STATES

PURGE_BATCH = 2000
"""Rows deleted per transaction, so a large purge never holds SQLite's write lock for
long (the gateway and the workers keep writing meanwhile)."""


def delete_in_batches(
    engine: Engine, key: Column, condition: ColumnElement[bool], *, dry_run: bool = False
) -> int:
    """Delete the rows of ``key``'s table that meet ``condition``, :data:`PURGE_BATCH`
    at a time; how many (with ``dry_run``, how many would be, deleting nothing)."""
    table = key.table
    if dry_run:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(table).where(condition)).scalar()
    deleted = 0
    while True:
        batch = select(key).where(condition).limit(PURGE_BATCH).scalar_subquery()
        with engine.begin() as conn:
            count = conn.execute(delete(table).where(key.in_(batch))).rowcount
        deleted += count
        if count < PURGE_BATCH:
            return deleted


def purge_spawns(engine: Engine, before: datetime, *, dry_run: bool = False) -> int:
    """Delete the terminal spawn records created before ``before``; how many."""
    if before.tzinfo is None:
        before = before.replace(tzinfo=UTC)
    old = spawns.c.status.in_(sorted(s.value for s in TERMINAL_STATES)) & (
        spawns.c.created_at < before.astimezone(UTC)
    )
    return delete_in_batches(engine, spawns.c.spawn_uuid, old, dry_run=dry_run)
