"""A spawn is accepted with one database commit: its uuid is noted unpublished in Redis
before the record is written, and the note is taken once its job is published, before
the answer. What a note left behind means: the workers' sweeper ends the spawn ERROR
``gateway_lost``; a gateway that finds its note taken does not answer the spawn as
queued; and requests that record nothing leave no note (Flask test client, real Redis
and SQLite, no worker)."""

from __future__ import annotations

import pytest
import redis

from vx11.gateway import submit
from workers import sweeper

SPAWN = {"task_type": "shell", "code": "true", "ttl_seconds": 30}


class Died(BaseException):
    """The gateway process ending mid-request: no handler, no error answer, runs."""


def die(*args, **kwargs):
    raise Died()


@pytest.fixture
def svc(app, client, auth):
    client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    return app.extensions["vx11"]


def jobs(redis_url: str) -> int:
    return redis.Redis.from_url(redis_url).llen("spawner")


def test_an_accepted_spawn_leaves_no_note(svc, client, auth, redis_url):
    answer = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert answer.status_code == 200 and answer.json["status"] == "QUEUED"
    assert svc.unpublished.all() == set()
    assert svc.ledger.get(answer.json["spawn_uuid"])["published"] is True
    assert jobs(redis_url) == 1


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        ({"task_type": "cobol", "code": "x"}, {}),  # 422 after the admission
        (SPAWN, {"Idempotency-Key": "twice"}),  # the second is a replay
    ],
)
def test_a_request_that_records_nothing_leaves_no_note(svc, client, auth, body, headers):
    for _ in range(2):
        client.post("/vx11/spawn", json=body, headers={**auth, **headers})
    assert svc.unpublished.all() == set()


def test_a_refusal_by_policy_notes_nothing(app, client, auth):
    answer = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert answer.json["error"] == "off_by_policy"
    assert app.extensions["vx11"].unpublished.all() == set()


def test_the_sweeper_ends_a_spawn_whose_gateway_died_before_publishing(
    svc, client, auth, redis_url, monkeypatch
):
    monkeypatch.setattr(submit, "publish_spawn", die)
    with pytest.raises(Died):
        client.post("/vx11/spawn", json=SPAWN, headers=auth)
    monkeypatch.undo()
    (lost,) = svc.ledger.page().rows
    assert lost["status"] == "QUEUED" and svc.unpublished.noted(lost["spawn_uuid"])
    svc.unpublished.note("0d5e1c38-0000-4000-8000-000000000000")  # noted, never recorded
    published = client.post("/vx11/spawn", json=SPAWN, headers=auth).json

    assert sweeper.end_unpublished(svc.ledger, svc.events, svc.unpublished) == []  # too soon
    monkeypatch.setattr(sweeper, "UNPUBLISHED_AFTER", 0.0)
    ended = sweeper.end_unpublished(svc.ledger, svc.events, svc.unpublished)
    assert ended == [lost["spawn_uuid"]]
    record = svc.ledger.get(lost["spawn_uuid"])
    assert (record["status"], record["reason"]) == ("ERROR", "gateway_lost")
    assert svc.ledger.get(published["spawn_uuid"])["status"] == "QUEUED"
    assert svc.unpublished.all() == set()


def test_a_gateway_whose_note_the_sweeper_took_answers_503_and_the_spawn_never_runs(
    svc, client, auth, redis_url, monkeypatch
):
    """A request slower than UNPUBLISHED_AFTER between its record and its publish: the
    sweeper takes its note and ends the spawn; the gateway, finding the note gone after
    its publish, does not answer the spawn as queued."""
    publish = submit.publish_spawn

    def slow_publish(celery, record, settings, **kwargs):
        monkeypatch.setattr(sweeper, "UNPUBLISHED_AFTER", 0.0)
        assert sweeper.end_unpublished(svc.ledger, svc.events, svc.unpublished) == [
            record["spawn_uuid"]
        ]
        publish(celery, record, settings, **kwargs)

    monkeypatch.setattr(submit, "publish_spawn", slow_publish)
    answer = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert (answer.status_code, answer.json["error"]) == (503, "spawner_unavailable")
    (record,) = svc.ledger.page().rows
    assert (record["status"], record["reason"]) == ("ERROR", "gateway_lost")
    assert jobs(redis_url) == 1  # its job finds it ended, and never starts


def test_the_sweeper_leaves_a_published_spawn_queued(svc, client, auth, monkeypatch):
    answer = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert answer.status_code == 200
    monkeypatch.setattr(sweeper, "UNPUBLISHED_AFTER", 0.0)
    assert sweeper.end_unpublished(svc.ledger, svc.events, svc.unpublished) == []
    assert svc.ledger.get(answer.json["spawn_uuid"])["status"] == "QUEUED"
