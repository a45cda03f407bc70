"""The spawn ledger on SQLite always, and on PostgreSQL when VX11_TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
import threading
import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Column, MetaData, Table, text

from vx11.errors import IllegalTransition, NotFound
from vx11.ledger import Ledger, spawns
from vx11.states import SpawnStatus

PG_URL = os.environ.get("VX11_TEST_DATABASE_URL")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql",
            marks=pytest.mark.skipif(
                not PG_URL, reason="PostgreSQL not configured: set VX11_TEST_DATABASE_URL"
            ),
        ),
    ]
)
def empty_ledger(request, tmp_path):
    """A ledger on an empty database, its schema not yet created."""
    if request.param == "sqlite":
        store = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
        yield store
        store.engine.dispose()
        return
    schema = f"vx11_test_{uuid.uuid4().hex[:8]}"
    admin = Ledger.from_url(PG_URL).engine
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    store = Ledger.from_url(PG_URL)
    store.engine.update_execution_options(schema_translate_map={None: schema})
    yield store
    store.engine.dispose()
    with admin.begin() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def ledger(empty_ledger):
    empty_ledger.create_schema()
    return empty_ledger


def new_spawn(ledger: Ledger, **fields):
    return ledger.add({"task_type": "shell", "code": "true", "ttl_seconds": 30, **fields})


def test_a_new_spawn_is_queued_with_a_short_id_from_its_uuid(ledger):
    record = new_spawn(ledger, correlation_id="job-1", metadata={"team": "ops"})
    assert record["status"] == "QUEUED"
    assert record["spawn_id"] == f"spawn-{record['spawn_uuid'][:8]}"
    assert record["created_at"].tzinfo is not None
    stored = ledger.get(record["spawn_id"])
    assert stored["spawn_uuid"] == record["spawn_uuid"]
    assert stored["metadata"] == {"team": "ops"}
    assert ledger.get(record["spawn_uuid"])["correlation_id"] == "job-1"


def test_an_unknown_id_is_not_found(ledger):
    with pytest.raises(NotFound):
        ledger.get("spawn-00000000")
    with pytest.raises(NotFound):
        ledger.get(str(uuid.uuid4()))


def test_a_spawn_moves_through_its_lifecycle_and_keeps_its_result(ledger):
    record = new_spawn(ledger)
    running = ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING, worker="w1")
    assert running["status"] == "RUNNING" and running["worker"] == "w1"
    done = ledger.transition(
        record["spawn_uuid"], SpawnStatus.DONE, exit_code=0, stdout="hello\n", duration_ms=5
    )
    assert done["status"] == "DONE"
    assert done["finished_at"] is not None
    assert ledger.get(record["spawn_id"])["stdout"] == "hello\n"


def test_a_terminal_spawn_refuses_every_further_transition(ledger):
    record = new_spawn(ledger)
    ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
    ledger.transition(record["spawn_uuid"], SpawnStatus.FAILED, exit_code=2)
    for target in (SpawnStatus.RUNNING, SpawnStatus.DONE, SpawnStatus.CANCELLED):
        with pytest.raises(IllegalTransition) as caught:
            ledger.transition(record["spawn_uuid"], target)
        assert caught.value.current is SpawnStatus.FAILED
    assert ledger.get(record["spawn_uuid"])["exit_code"] == 2


def test_only_one_of_many_racing_claims_wins(ledger):
    record = new_spawn(ledger)
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def claim():
        barrier.wait()
        try:
            ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
            wins.append(1)
        except IllegalTransition:
            losses.append(1)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(wins), len(losses)) == (1, 7)


def test_spawn_ids_stay_unique(ledger):
    ids = {new_spawn(ledger)["spawn_id"] for _ in range(200)}
    assert len(ids) == 200


def test_limits_and_args_round_trip(ledger):
    limits = {
        "cpu_time_limit": 3600,
        "memory_limit_mb": 16,
        "max_processes": 512,
        "max_output_bytes": 0,
        "max_file_size_mb": 256,
    }
    args = ["-v", "two words", "ünïcödé ✓", "", "$HOME"]
    record = new_spawn(ledger, limits=limits, args=args)
    assert (record["limits"], record["args"]) == (limits, args)
    stored = ledger.get(record["spawn_id"])
    assert (stored["limits"], stored["args"]) == (limits, args)
    running = ledger.transition(record["spawn_uuid"], SpawnStatus.RUNNING)
    assert (running["limits"], running["args"]) == (limits, args)


OLD_ROW = {
    "spawn_uuid": "0badc0de-0000-4000-8000-000000000000",
    "spawn_id": "spawn-0badc0de",
    "status": "DONE",
    "task_type": "shell",
    "code": "true",
    "ttl_seconds": 30,
    "stdout_truncated": False,
    "stderr_truncated": False,
    "created_at": datetime(2026, 1, 1, tzinfo=UTC),
}


def test_a_ledger_made_before_limits_existed_gains_the_new_columns(empty_ledger):
    old = Table(
        "spawns",
        MetaData(),
        *(
            Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in spawns.c
            if c.name not in ("limits", "args")
        ),
    )
    old.create(empty_ledger.engine)
    with empty_ledger.engine.begin() as conn:
        conn.execute(old.insert(), OLD_ROW)
    empty_ledger.create_schema()
    empty_ledger.create_schema()  # the next start finds nothing to add
    before = empty_ledger.get(OLD_ROW["spawn_id"])
    assert (before["status"], before["limits"], before["args"]) == ("DONE", None, None)
    after = new_spawn(empty_ledger, limits={"max_processes": 8}, args=["a"])
    stored = empty_ledger.get(after["spawn_id"])
    assert (stored["limits"], stored["args"]) == ({"max_processes": 8}, ["a"])
