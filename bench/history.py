"""The history figure: one filtered page of ``GET /vx11/spawns``, as ``Ledger.page`` serves
it in-process, from a ledger of 100,000 records against the same ledger at 1% of that.

An index-backed page costs about the same at any size; one that scans or sorts grows
with the ledger. SQLite always; PostgreSQL when a URL is given, in a schema of its own
that is dropped afterwards.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import insert, text

from bench.measure import percentile
from bench.report import Figure
from vx11.core.ledger import Ledger, SpawnFilter
from vx11.core.ledger.schema import spawns
from vx11.core.ledger.store import page_query
from vx11.core.states import SpawnStatus

QUERY = SpawnFilter(statuses=(SpawnStatus.DONE,), task_type="shell")
QUERY_TEXT = "status=DONE&task_type=shell"
PAGE = 50
SAMPLES = 200
"""Timed calls of each page."""
BATCH = 5000
"""Rows per INSERT of the fill."""
SPAN = timedelta(days=30)
"""The records are created over this long, evenly, ending now."""
STATUS_MIX = {
    "DONE": 70,
    "FAILED": 15,
    "TIMEOUT": 5,
    "ERROR": 4,
    "CANCELLED": 4,
    "QUEUED": 1,
    "RUNNING": 1,
}
GOAL_MS = 5.0
"""Most a p50 page may take at full size over the same page at 1%: far below what a
scan or a sort of the ledger costs, above the noise of a busy machine."""
MIN_RECORDS = 1000
"""Fewest records the figure can use: its baseline needs two pages of matches."""
BIG_OUTPUT = 16 * 1024
"""Bytes of stdout of one record in a hundred (the rest print a line)."""


def history_figures(
    root: Path, records: int, postgres_url: str | None
) -> tuple[list[Figure], list[str]]:
    """The figures on SQLite, then on PostgreSQL if ``postgres_url`` is set."""
    figures, notes = _measure(
        "SQLite", Ledger.from_url(f"sqlite:///{root / 'history.db'}"), records
    )
    if postgres_url:
        schema = f"vx11_bench_{uuid.uuid4().hex[:8]}"
        admin = Ledger.from_url(postgres_url).engine
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        try:
            ledger = Ledger.from_url(postgres_url)
            ledger.engine.update_execution_options(schema_translate_map={None: schema})
            more = _measure("PostgreSQL", ledger, records)
            figures += more[0]
            notes += more[1]
        finally:
            with admin.begin() as conn:
                conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            admin.dispose()
    return figures, notes


def _measure(name: str, ledger: Ledger, records: int) -> tuple[list[Figure], list[str]]:
    try:
        ledger.create_schema()
        small = max(PAGE * 10, records // 100)
        rows = _rows(records)
        _fill(ledger, islice(rows, small))
        baseline = _time_pages(ledger)
        started = time.perf_counter()
        _fill(ledger, rows)
        filled = time.perf_counter() - started
        measured = _time_pages(ledger)
        plan = _plan(ledger)
    finally:
        ledger.engine.dispose()
    figures = [
        Figure(
            f"history {label} p{percent}: {QUERY_TEXT}, limit {PAGE} ({name})",
            "ms",
            percentile(measured[page], percent) * 1000,
            percentile(baseline[page], percent) * 1000,
            "difference",
            GOAL_MS if percent == 50 else None,
        )
        for page, label in ((0, "page 1"), (1, "page 2 (cursor)"))
        for percent in (50, 90)
    ]
    notes = [
        f"history ({name}): {records} records ({small} for the baseline column), "
        f"{records - small} of them inserted in {filled:.1f} s in batches of {BATCH}; "
        f"{SAMPLES} timed calls of each page through Ledger.page; plan: {plan}",
    ]
    return figures, notes


def _rows(count: int) -> Iterator[dict[str, Any]]:
    """``count`` records, oldest first, of a plausible mix of states and types."""
    rng = random.Random(11)
    statuses = rng.choices(list(STATUS_MIX), weights=list(STATUS_MIX.values()), k=count)
    start = datetime.now(UTC) - SPAN
    step = SPAN / count
    short_ids: set[str] = set()
    for index, status in enumerate(statuses):
        spawn_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        while spawn_uuid[:8] in short_ids:  # spawn_id is unique, as Ledger.add ensures
            spawn_uuid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        short_ids.add(spawn_uuid[:8])
        created = start + step * index
        finished = status not in ("QUEUED", "RUNNING")
        yield {
            "spawn_uuid": spawn_uuid,
            "spawn_id": f"spawn-{spawn_uuid[:8]}",
            "status": status,
            "task_type": rng.choice(("shell", "python")),
            "code": f"echo {index}",
            "ttl_seconds": 30,
            "correlation_id": f"job-{index // 10}" if index % 3 == 0 else None,
            "limits": {"cpu_time_limit": 30, "memory_limit_mb": 256},
            "args": [],
            "exit_code": 0 if status == "DONE" else 1 if finished else None,
            "stdout": "x" * BIG_OUTPUT if index % 100 == 0 else f"{index}\n",
            "stderr": "",
            "stdout_truncated": False,
            "stderr_truncated": False,
            "created_at": created,
            "started_at": created + timedelta(milliseconds=20),
            "finished_at": created + timedelta(milliseconds=90) if finished else None,
            "duration_ms": 70 if finished else None,
            "worker": "vx11@bench",
        }


def _fill(ledger: Ledger, rows: Iterable[dict[str, Any]]) -> None:
    statement = insert(spawns)
    rows = iter(rows)
    while batch := list(islice(rows, BATCH)):
        with ledger.engine.begin() as conn:
            conn.execute(statement, batch)
    if ledger.engine.dialect.name == "postgresql":
        with ledger.engine.begin() as conn:  # what autovacuum does after a bulk change
            conn.exec_driver_sql(f"ANALYZE {conn.schema_for_object(spawns)}.spawns")


def _time_pages(ledger: Ledger) -> tuple[list[float], list[float]]:
    """Seconds of each call of the first page and of the page after it."""
    cursor = ledger.page(QUERY, PAGE).next_cursor
    if cursor is None:
        raise RuntimeError("the history benchmark needs more than one page of records")
    for _ in range(10):  # warm caches and connections
        ledger.page(QUERY, PAGE)
        ledger.page(QUERY, PAGE, cursor)
    first, second = [], []
    for _ in range(SAMPLES):
        started = time.perf_counter()
        ledger.page(QUERY, PAGE)
        middle = time.perf_counter()
        ledger.page(QUERY, PAGE, cursor)
        second.append(time.perf_counter() - middle)
        first.append(middle - started)
    return first, second


def _plan(ledger: Ledger) -> str:
    """How the database serves the first page, in one line."""
    with ledger.engine.connect() as conn:
        sql = page_query(QUERY, PAGE + 1, None).compile(
            dialect=conn.dialect, compile_kwargs={"literal_binds": True}
        )
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}").all()
            return "; ".join(row[-1] for row in rows)
        conn.exec_driver_sql(f"SET LOCAL search_path TO {conn.schema_for_object(spawns)}")
        rows = conn.exec_driver_sql(f"EXPLAIN {sql}").all()
        return "; ".join(row[0].strip(" ->") for row in rows[:3])
