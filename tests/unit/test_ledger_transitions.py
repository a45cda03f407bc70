"""A worker's ledger writes: a claim and an end are each one statement, built once per
shape and then reused, with the compare-and-set they always had."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from vx11.core.errors import IllegalTransition, NotFound
from vx11.core.ledger import Ledger
from vx11.core.ledger.store import _get_statement, _transition_statement
from vx11.core.states import SpawnStatus
from vx11.core.times import utcnow


def statements(ledger: Ledger) -> list[str]:
    """The SQL the ledger's engine runs from now on."""
    seen: list[str] = []

    @event.listens_for(ledger.engine, "before_cursor_execute")
    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    return seen


def claim(ledger: Ledger, spawn_uuid: str, attempt: int = 1) -> dict:
    return ledger.transition(
        spawn_uuid,
        SpawnStatus.RUNNING,
        attempt=attempt - 1,
        attempts=attempt,
        started_at=utcnow(),
        worker="w1",
    )


def new_spawn(ledger: Ledger) -> str:
    return ledger.add({"task_type": "shell", "code": "true", "ttl_seconds": 30})["spawn_uuid"]


def test_a_claim_and_an_end_are_one_statement_each(ledger):
    spawn_uuid = new_spawn(ledger)
    seen = statements(ledger)
    running = claim(ledger, spawn_uuid)
    done = ledger.transition(
        spawn_uuid, SpawnStatus.DONE, attempt=1, exit_code=0, stdout="x", stdout_truncated=True
    )
    sql = [s for s in seen if s.lstrip().upper().startswith(("UPDATE", "SELECT"))]
    assert len(sql) == 2 and all(s.lstrip().upper().startswith("UPDATE") for s in sql)
    assert all("RETURNING" in s.upper() for s in sql)
    assert (running["status"], running["attempts"], running["worker"]) == ("RUNNING", 1, "w1")
    assert running["started_at"].tzinfo is not None
    assert (done["status"], done["exit_code"], done["stdout"]) == ("DONE", 0, "x")
    assert done["stdout_truncated"] is True and done["finished_at"] >= done["started_at"]
    assert ledger.get(spawn_uuid) == done


def test_each_shape_of_statement_is_built_once(ledger):
    first, second = new_spawn(ledger), new_spawn(ledger)
    claim(ledger, first)
    built = _transition_statement.cache_info().misses
    claim(ledger, second)
    ledger.get(second)
    looked_up = _get_statement.cache_info().misses
    ledger.get(first)
    assert _transition_statement.cache_info().misses == built
    assert _get_statement.cache_info().misses == looked_up


def test_the_compare_and_set_still_refuses_what_it_refused(ledger):
    spawn_uuid = new_spawn(ledger)
    with pytest.raises(IllegalTransition):
        claim(ledger, spawn_uuid, attempt=2)  # a delivery of a later attempt: not yet
    claim(ledger, spawn_uuid)
    with pytest.raises(IllegalTransition):
        claim(ledger, spawn_uuid)  # claimed once already
    with pytest.raises(IllegalTransition):
        ledger.transition(spawn_uuid, SpawnStatus.DONE, attempt=2)  # not this attempt's
    ledger.transition(spawn_uuid, SpawnStatus.FAILED, attempt=1, exit_code=3)
    with pytest.raises(IllegalTransition):
        ledger.transition(spawn_uuid, SpawnStatus.CANCELLED)  # terminal
    assert ledger.get(spawn_uuid)["status"] == "FAILED"


def test_get_by_either_id_and_only_for_its_owner(ledger):
    record = ledger.add({"task_type": "shell", "code": "true", "ttl_seconds": 30, "owner": "t1"})
    assert ledger.get(record["spawn_id"])["spawn_uuid"] == record["spawn_uuid"]
    assert ledger.get(record["spawn_uuid"], owner="t1")["spawn_id"] == record["spawn_id"]
    assert ledger.get(record["spawn_id"], owner="t1")["spawn_id"] == record["spawn_id"]
    with pytest.raises(NotFound):
        ledger.get(record["spawn_id"], owner="t2")
    with pytest.raises(NotFound):
        ledger.get("spawn-00000000")
