"""A run that its worker was taken for lost cannot overwrite the retry that replaced it.

A host cut off from Redis but not from the ledger keeps running its spawn while the
sweeper on another host requeues it and a retry starts: when the old run ends, the
record is the retry's.
"""

from __future__ import annotations

from vx11.core.ledger import Ledger
from vx11.core.states import SpawnStatus
from workers.spawner import _claim, _end_run


def test_an_earlier_attempt_ending_late_leaves_the_retrys_record(tmp_path):
    store = Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")
    store.create_schema()
    record = store.add({"task_type": "shell", "code": "true", "ttl_seconds": 30, "max_retries": 1})
    uuid = record["spawn_uuid"]
    _claim(store, uuid, 1, "hosta@vm")
    store.transition(uuid, SpawnStatus.QUEUED, attempt=1)  # the sweeper's retry
    _claim(store, uuid, 2, "hostb@vm")

    assert _end_run(store, uuid, 1, SpawnStatus.DONE, exit_code=0, stdout="first") is None
    current = store.get(uuid)
    assert (current["status"], current["attempts"], current["stdout"]) == ("RUNNING", 2, None)

    ended = _end_run(store, uuid, 2, SpawnStatus.DONE, exit_code=0, stdout="second")
    assert (ended["status"], ended["attempts"], ended["stdout"], ended["worker"]) == (
        "DONE",
        2,
        "second",
        "hostb@vm",
    )
    store.engine.dispose()
