"""Per-token limits: the request rate on the spawn and window endpoints (429
``rate_limited``) and the spawns a token may have QUEUED or RUNNING (429
``quota_exceeded``), with their defaults, per-token overrides and Redis down.

Rates are chosen so the counts do not depend on timing: the moving window lets ``n``
requests through in any span, so ``n`` requests in a row always pass, and at 1 per 20 s
the second one within 20 s never does."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis

from tests.support import RedisServer, free_port
from vx11 import create_app
from vx11.core.tokens import TokenStore

SPAWN = {"task_type": "shell", "code": "true", "ttl_seconds": 30}
ONE_PER_20S = 0.05


@pytest.fixture
def make_client(test_config):
    """A test client of a gateway configured with ``test_config`` and ``overrides``."""

    def make(**overrides):
        return create_app({**test_config, **overrides}).test_client()

    return make


@pytest.fixture
def store(redis_url) -> TokenStore:
    return TokenStore(redis.Redis.from_url(redis_url))


def token(store: TokenStore, *scopes: str, **options) -> dict[str, str]:
    plain, _ = store.create("limits", list(scopes or ("spawn", "window")), **options)
    return {"X-VX11-Token": plain}


def spawn(client, headers, **extra_headers):
    return client.post("/vx11/spawn", json=SPAWN, headers={**headers, **extra_headers})


def open_window(client, headers):
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=headers)
    assert response.status_code == 200, response.json
    return response


def codes(responses) -> list[int]:
    return [response.status_code for response in responses]


# --- the request rate -----------------------------------------------------------------


def test_a_token_over_its_rate_gets_429_rate_limited_with_retry_after(make_client, auth):
    client = make_client(rate_limit_per_second=ONE_PER_20S)
    open_window(client, auth)
    refused = client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    assert refused.status_code == 429
    assert refused.json["error"] == "rate_limited"
    assert "1 request per 20 seconds" in refused.json["message"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 20
    assert refused.json["retry_after"] == retry_after


def test_submit_cancel_open_and_close_share_one_count(make_client, auth):
    client = make_client(rate_limit_per_second=0.3)  # 3 in any 10 s
    answers = [
        open_window(client, auth),
        client.post("/vx11/window/close", json={"target": "spawner"}, headers=auth),
        spawn(client, auth),  # refused by policy, and counted
        client.post("/vx11/spawn/spawn-00000000/cancel", headers=auth),
    ]
    assert codes(answers) == [200, 200, 200, 429]
    assert answers[2].json["error"] == "off_by_policy"
    assert answers[3].json["error"] == "rate_limited"


def test_another_token_is_not_slowed_by_one_over_its_rate(make_client, store):
    client = make_client(rate_limit_per_second=ONE_PER_20S)
    first, second = token(store), token(store)
    assert codes([spawn(client, first), spawn(client, first)]) == [200, 429]
    assert codes([spawn(client, second), spawn(client, second)]) == [200, 429]


def test_a_tokens_own_higher_rate_replaces_the_default(make_client, store, auth):
    client = make_client(rate_limit_per_second=ONE_PER_20S)
    fast = token(store, rate_limit_per_second=5)
    assert codes(spawn(client, fast) for _ in range(5)) == [200] * 5
    assert codes([spawn(client, auth), spawn(client, auth)]) == [200, 429]


def test_a_tokens_own_lower_rate_replaces_the_default(make_client, store, auth):
    client = make_client(rate_limit_per_second=5)
    slow = token(store, rate_limit_per_second=ONE_PER_20S)
    assert codes([spawn(client, slow), spawn(client, slow)]) == [200, 429]
    assert codes(spawn(client, auth) for _ in range(5)) == [200] * 5


def test_reads_and_token_management_are_not_counted(make_client, store, auth):
    client = make_client(rate_limit_per_second=ONE_PER_20S)
    reads = [
        client.get(path, headers=auth)
        for path in ("/vx11/window/status/spawner", "/vx11/spawns", "/vx11/token") * 3
    ]
    assert codes(reads) == [200] * 9
    made = [
        client.post("/vx11/tokens", json={"label": "x", "scopes": ["read"]}, headers=auth)
        for _ in range(3)
    ]
    assert codes(made) == [201] * 3
    assert codes([spawn(client, auth), spawn(client, auth)]) == [200, 429]


def test_a_rate_of_0_is_no_limit(make_client, auth):
    client = make_client(rate_limit_per_second=0)
    answers = [spawn(client, auth) for _ in range(40)]
    assert codes(answers) == [200] * 40


# --- active spawns --------------------------------------------------------------------


def test_a_token_at_its_active_spawn_quota_gets_429_until_one_ends(make_client, store, auth):
    client = make_client()
    ledger = client.application.extensions["vx11"].ledger
    plain, info = store.create("quota", ["spawn"], max_active_spawns=2)
    mine, token_id = {"X-VX11-Token": plain}, info.token_id
    open_window(client, auth)  # nothing consumes: every accepted spawn stays QUEUED
    accepted = [spawn(client, mine).json for _ in range(2)]
    assert [a["status"] for a in accepted] == ["QUEUED", "QUEUED"]

    refused = spawn(client, mine)
    assert refused.status_code == 429
    assert refused.json["error"] == "quota_exceeded"
    assert "already has 2 spawns queued or running" in refused.json["message"]
    assert refused.headers["Retry-After"] == "1"
    assert ledger.count_active(token_id) == 2

    cancelled = client.post(f"/vx11/spawn/{accepted[0]['spawn_id']}/cancel", headers=mine)
    assert cancelled.json["status"] == "CANCELLED"
    again = spawn(client, mine)
    assert (again.status_code, again.json["status"]) == (200, "QUEUED")
    assert spawn(client, mine).json["error"] == "quota_exceeded"
    assert ledger.count_active(token_id) == 2


def test_refusals_by_policy_do_not_count_toward_the_quota(make_client, store, auth):
    client = make_client()
    mine = token(store, "spawn", max_active_spawns=1)
    refused = [spawn(client, mine).json for _ in range(3)]  # no window is open
    assert [r["error"] for r in refused] == ["off_by_policy"] * 3
    open_window(client, auth)
    assert spawn(client, mine).json["status"] == "QUEUED"
    assert spawn(client, mine).json["error"] == "quota_exceeded"


def test_concurrent_requests_never_overshoot_the_quota(make_client, store, auth, database_url):
    """50 requests of one token at once, against a quota of 10: exactly 10 accepted,
    on SQLite and on PostgreSQL, each request served by a thread of its own."""
    app = make_client(database_url=database_url).application
    mine = token(store, "spawn", max_active_spawns=10)
    open_window(app.test_client(), auth)
    start = threading.Barrier(50)

    def submit(_: int) -> int:
        client = app.test_client()
        start.wait()
        return spawn(client, mine).status_code

    with ThreadPoolExecutor(50) as pool:
        answers = Counter(pool.map(submit, range(50)))
    assert answers == {200: 10, 429: 40}
    ledger = app.extensions["vx11"].ledger
    assert len(ledger.page(limit=100).rows) == 10


def test_the_limits_are_off_by_default(make_client, auth):
    client = make_client()
    open_window(client, auth)
    answers = [spawn(client, auth) for _ in range(150)]
    assert codes(answers) == [200] * 150


def test_the_default_quota_holds_for_the_development_token(make_client, auth):
    client = make_client(max_active_spawns=1)
    open_window(client, auth)
    assert spawn(client, auth).json["status"] == "QUEUED"
    assert spawn(client, auth).status_code == 429


def test_an_idempotent_replay_is_answered_at_the_quota(make_client, auth):
    client = make_client(max_active_spawns=1)
    open_window(client, auth)
    first = spawn(client, auth, **{"Idempotency-Key": "k"})
    replay = spawn(client, auth, **{"Idempotency-Key": "k"})
    assert replay.status_code == 200 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json == first.json
    assert spawn(client, auth, **{"Idempotency-Key": "other"}).status_code == 429


def test_a_quota_of_0_is_no_limit(make_client, auth):
    client = make_client(max_active_spawns=0, rate_limit_per_second=0)
    open_window(client, auth)
    assert {spawn(client, auth).json["status"] for _ in range(5)} == {"QUEUED"}


# --- Redis down -----------------------------------------------------------------------


def test_with_redis_down_rate_limited_endpoints_are_503_and_reads_still_answer(
    test_config, tmp_path, auth
):
    server = RedisServer(free_port(), tmp_path / "redis").start()
    try:
        config = {**test_config, "redis_url": server.url, "rate_limit_per_second": 100}
        client = create_app(config).test_client()
        assert spawn(client, auth).status_code == 200  # the limiter's first count
    finally:
        server.stop()
    for response in (
        spawn(client, auth),
        client.post("/vx11/spawn/spawn-00000000/cancel", headers=auth),
        client.post("/vx11/window/close", json={"target": "spawner"}, headers=auth),
    ):
        assert response.status_code == 503, response.json
        assert response.json["error"] == "redis_unavailable"
    # The development token needs no Redis, and reads are not counted.
    assert client.get("/vx11/spawns", headers=auth).status_code == 200
