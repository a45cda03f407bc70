"""``Idempotency-Key`` on ``POST /vx11/spawn``, against a real Redis (Flask test client;
no worker: the queued jobs stay in the ``spawner`` list, where they are counted)."""

from __future__ import annotations

import threading

import pytest
import redis

from tests.support import free_port
from vx11 import create_app
from vx11.core.tokens import TokenStore
from vx11.gateway import submit
from vx11.gateway.api.spawn_request import request_schema
from vx11.gateway.idempotency import ANSWER_TTL, KEY_PREFIX, PENDING_TTL

SPAWN = {"task_type": "python", "code": "print('once')", "ttl_seconds": 30}


def open_window(client, auth) -> None:
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    assert response.status_code == 200


def queued(redis_url: str) -> int:
    """Jobs published to the spawner queue."""
    return redis.Redis.from_url(redis_url).llen("spawner")


def post(client, headers, key: str | None, body=None):
    if key is not None:
        headers = {**headers, "Idempotency-Key": key}
    return client.post("/vx11/spawn", json=SPAWN if body is None else body, headers=headers)


def test_a_retry_with_the_same_key_returns_the_same_spawn_and_queues_nothing(
    client, auth, redis_url
):
    open_window(client, auth)
    first = post(client, auth, "order-1")
    assert first.status_code == 200 and first.json["status"] == "QUEUED"
    assert "Idempotent-Replayed" not in first.headers
    again = post(client, auth, "order-1")
    assert again.status_code == 200
    assert again.json == first.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert queued(redis_url) == 1
    other = post(client, auth, "order-2")
    assert other.json["spawn_id"] != first.json["spawn_id"]
    assert queued(redis_url) == 2


def test_a_replay_answers_even_after_the_window_closed(client, auth, redis_url):
    open_window(client, auth)
    first = post(client, auth, "k")
    client.post("/vx11/window/close", json={"target": "spawner"}, headers=auth)
    assert post(client, auth, "k").json == first.json
    assert queued(redis_url) == 1


def test_the_same_request_spelt_differently_is_the_same_request(client, auth, redis_url):
    open_window(client, auth)
    first = post(client, auth, "k", {"task_type": "python", "code": "print('once')"})
    reordered = {"ttl_seconds": 30, "code": "print('once')", "task_type": "python", "args": []}
    assert post(client, auth, "k", reordered).json["spawn_id"] == first.json["spawn_id"]
    assert queued(redis_url) == 1


def test_the_same_key_with_a_different_request_is_409_and_queues_nothing(client, auth, redis_url):
    open_window(client, auth)
    first = post(client, auth, "k")
    for body in ({**SPAWN, "code": "print('twice')"}, {**SPAWN, "ttl_seconds": 31}):
        reused = post(client, auth, "k", body)
        assert reused.status_code == 409
        assert reused.json["error"] == "idempotency_key_reused"
    assert post(client, auth, "k").json == first.json  # the key still answers its own request
    assert queued(redis_url) == 1


def test_keys_belong_to_the_token_that_used_them(client, auth, redis_url):
    store = TokenStore(redis.Redis.from_url(redis_url))
    token, _ = store.create("ops", ["window", "spawn", "read"])
    ops = {"X-VX11-Token": token}
    open_window(client, auth)
    mine = post(client, auth, "shared-key")
    theirs = post(client, ops, "shared-key")
    assert theirs.status_code == 200 and theirs.headers.get("Idempotent-Replayed") is None
    assert theirs.json["spawn_id"] != mine.json["spawn_id"]
    assert post(client, ops, "shared-key", {**SPAWN, "code": "other"}).status_code == 409
    assert post(client, auth, "shared-key").json == mine.json
    assert queued(redis_url) == 2


def test_a_refusal_by_policy_does_not_use_the_key_up(client, auth, redis_url):
    refused = post(client, auth, "k")
    assert refused.status_code == 200 and refused.json["error"] == "off_by_policy"
    assert post(client, auth, "k").json["error"] == "off_by_policy"  # refused again, not replayed
    open_window(client, auth)
    accepted = post(client, auth, "k")
    assert accepted.json["status"] == "QUEUED"
    assert "Idempotent-Replayed" not in accepted.headers
    assert post(client, auth, "k").json == accepted.json
    assert queued(redis_url) == 1


def test_a_failed_attempt_does_not_use_the_key_up(test_config, client, auth, redis_url):
    broker_down = {**test_config, "broker_url": f"redis://127.0.0.1:{free_port()}/0"}
    failing = create_app(broker_down).test_client()
    open_window(client, auth)
    failed = post(failing, auth, "k")
    assert failed.status_code == 503 and failed.json["error"] == "spawner_unavailable"
    accepted = post(client, auth, "k")
    assert accepted.status_code == 200 and accepted.json["status"] == "QUEUED"
    assert post(client, auth, "k").json == accepted.json
    assert queued(redis_url) == 1


def forget_in_redis(redis_url: str) -> None:
    """What a gateway that died mid-request leaves once its pending mark has lapsed (or
    a Redis that lost its data): no trace of the key in Redis."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{KEY_PREFIX}*"):
        client.delete(key)


def test_a_key_whose_answer_redis_lost_still_makes_one_spawn(client, auth, redis_url):
    open_window(client, auth)
    first = post(client, auth, "order-9")
    forget_in_redis(redis_url)
    again = post(client, auth, "order-9")
    assert again.status_code == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json == first.json
    assert queued(redis_url) == 1
    assert post(client, auth, "order-9").json == first.json  # answered from Redis again
    forget_in_redis(redis_url)
    other = post(client, auth, "order-9", {**SPAWN, "code": "print('twice')"})
    assert other.status_code == 409 and other.json["error"] == "idempotency_key_reused"


class Died(BaseException):
    """The gateway process ending mid-request: no handler, no error answer, runs."""


def test_a_retry_publishes_the_spawn_a_dead_request_wrote_but_never_published(
    app, client, auth, redis_url, monkeypatch
):
    """The first try died between writing its record and publishing its job: the retry
    publishes that spawn, and makes no second one."""
    open_window(client, auth)
    ledger = app.extensions["vx11"].ledger

    def die(*args, **kwargs):
        raise Died()

    monkeypatch.setattr(submit, "publish_spawn", die)
    with pytest.raises(Died):
        post(client, auth, "order-10")
    monkeypatch.undo()
    (lost,) = ledger.page().rows
    unpublished = app.extensions["vx11"].unpublished
    assert lost["status"] == "QUEUED" and unpublished.noted(lost["spawn_uuid"])
    assert queued(redis_url) == 0
    forget_in_redis(redis_url)
    retry = post(client, auth, "order-10")
    assert retry.status_code == 200 and retry.json["spawn_id"] == lost["spawn_id"]
    assert queued(redis_url) == 1
    assert not unpublished.noted(lost["spawn_uuid"])
    assert len(ledger.page().rows) == 1


def test_simultaneous_requests_with_one_key_make_one_job(app, auth, redis_url):
    open_window(app.test_client(), auth)
    clients = 12
    barrier = threading.Barrier(clients)
    answers: list = [None] * clients

    def submit(index: int) -> None:
        client = app.test_client()
        barrier.wait()
        response = post(client, auth, "burst")
        answers[index] = (response.status_code, response.json)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {status for status, _ in answers} == {200}
    assert len({body["spawn_id"] for _, body in answers}) == 1
    assert queued(redis_url) == 1
    with app.extensions["vx11"].ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM spawns").scalar() == 1


def test_a_key_still_in_progress_past_the_wait_is_409_with_retry_after(app, client, auth):
    svc = app.extensions["vx11"]
    svc.idempotency.wait = 0.2
    request = request_schema(svc.settings).load(SPAWN)
    open_window(client, auth)
    with svc.idempotency.attempt("development", "slow", request):  # another request holds it
        busy = post(client, auth, "slow")
        assert busy.status_code == 409
        assert busy.json["error"] == "idempotency_key_in_progress"
        assert busy.headers["Retry-After"] == "1"
        assert post(client, auth, "slow", {**SPAWN, "code": "x"}).json["error"] == (
            "idempotency_key_reused"
        )
    assert post(client, auth, "slow").json["status"] == "QUEUED"  # released: free again


def test_a_waiting_request_gets_the_answer_once_the_first_finishes(app, client, auth):
    svc = app.extensions["vx11"]
    request = request_schema(svc.settings).load(SPAWN)
    answer = {"spawn_id": "spawn-0000abcd", "status": "QUEUED"}
    with svc.idempotency.attempt("development", "k", request) as held:
        timer = threading.Timer(0.3, svc.idempotency.answer, (held, answer))
        timer.start()
        waited = post(client, auth, "k")
        timer.join()
    assert waited.status_code == 200 and waited.json == answer
    assert waited.headers["Idempotent-Replayed"] == "true"


def test_keys_are_kept_in_redis_for_24_hours_under_their_prefix(client, auth, redis_url):
    open_window(client, auth)
    post(client, auth, "k")
    store = redis.Redis.from_url(redis_url)
    [key] = store.keys(f"{KEY_PREFIX}*")
    assert ANSWER_TTL - 5 <= store.ttl(key) <= ANSWER_TTL
    assert PENDING_TTL < ANSWER_TTL


@pytest.mark.parametrize("key", ["", " ", "two words", "tab\tkey", "clé", "x" * 256])
def test_a_malformed_key_is_422_naming_the_header(client, auth, redis_url, key):
    open_window(client, auth)
    response = post(client, auth, key)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    assert "Idempotency-Key" in response.json["fields"]
    assert queued(redis_url) == 0


def test_the_longest_key_and_every_visible_character_are_accepted(client, auth):
    open_window(client, auth)
    for key in ("x" * 255, "".join(chr(c) for c in range(0x21, 0x7F))):
        assert post(client, auth, key).json["status"] == "QUEUED"
