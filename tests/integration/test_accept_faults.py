"""Answers that never lie: one dependency fails at each step of the accept path, and the
answer and the ledger still agree. A 503 means the spawn will not run (nothing QUEUED
is left behind it, whatever reached the broker); an answer that cannot know says so
(``spawn_outcome_unknown``) and gives the spawn's ids; a 200 means it is queued."""

from __future__ import annotations

import pytest
import redis
import sqlalchemy.exc

from vx11.core.errors import ServiceUnavailable
from vx11.core.ledger import Ledger
from vx11.core.unpublished import Unpublished
from vx11.gateway import submit

SPAWN = {"task_type": "shell", "code": "echo once", "ttl_seconds": 30}


def database_down(*args, **kwargs):
    raise sqlalchemy.exc.OperationalError("UPDATE spawns", {}, Exception("connection lost"))


def redis_down(*args, **kwargs):
    raise redis.exceptions.ConnectionError("Connection refused")


def broker_down(*args, **kwargs):
    raise ServiceUnavailable("spawner_unavailable", "cannot reach the broker")


def jobs(redis_url: str) -> int:
    return redis.Redis.from_url(redis_url).llen("spawner")


@pytest.fixture
def svc(app, client, auth):
    client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    return app.extensions["vx11"]


def records(svc) -> list[dict]:
    return svc.ledger.page().rows


@pytest.mark.parametrize(
    ("step", "fail", "error"),
    [
        ("the token, rate and window check",
         lambda svc, m: m.setattr(svc.admission, "_script", redis_down), "redis_unavailable"),
        ("the record", lambda svc, m: m.setattr(Ledger, "add", database_down),
         "database_unavailable"),
        ("the publish", lambda svc, m: m.setattr(submit, "publish_spawn", broker_down),
         "spawner_unavailable"),
        ("confirming the publish", lambda svc, m: m.setattr(Unpublished, "take", redis_down),
         "redis_unavailable"),
    ],
)  # fmt: skip
def test_a_503_at_any_step_means_the_spawn_will_not_run(
    svc, client, auth, redis_url, monkeypatch, step, fail, error
):
    fail(svc, monkeypatch)
    answer = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert (answer.status_code, answer.json["error"]) == (503, error), step
    assert not [r for r in records(svc) if r["status"] in ("QUEUED", "RUNNING")], step
    # A job that did reach the broker finds its spawn ended, and a worker never runs
    # a spawn that has left QUEUED (workers/spawner.py claims by compare-and-set).
    assert jobs(redis_url) <= 1


def test_when_the_publish_can_be_neither_confirmed_nor_ended_the_answer_says_unknown(
    svc, client, auth, redis_url, monkeypatch
):
    monkeypatch.setattr(Unpublished, "take", redis_down)
    monkeypatch.setattr(Ledger, "transition", database_down)
    answer = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert (answer.status_code, answer.json["error"]) == (503, "spawn_outcome_unknown")
    monkeypatch.undo()
    (record,) = records(svc)
    assert (answer.json["spawn_id"], answer.json["spawn_uuid"]) == (
        record["spawn_id"],
        record["spawn_uuid"],
    )
    assert answer.json["cause"]
    looked_up = client.get(f"/vx11/spawn/{answer.json['spawn_id']}", headers=auth)
    assert looked_up.status_code == 200 and looked_up.json["status"] == "QUEUED"
    assert jobs(redis_url) == 1  # it may run: which is what the answer said


def test_redis_failing_to_keep_an_idempotent_answer_still_answers_the_accepted_spawn(
    svc, client, auth, redis_url, monkeypatch
):
    monkeypatch.setattr(svc.idempotency, "_answer_script", redis_down)
    headers = {**auth, "Idempotency-Key": "kept-or-not"}
    answer = client.post("/vx11/spawn", json=SPAWN, headers=headers)
    assert answer.status_code == 200 and answer.json["status"] == "QUEUED"
    monkeypatch.undo()
    assert jobs(redis_url) == 1
    retry = client.post("/vx11/spawn", json=SPAWN, headers=headers)
    assert retry.status_code == 200 and retry.json["spawn_id"] == answer.json["spawn_id"]
    assert jobs(redis_url) == 1 and len(records(svc)) == 1
