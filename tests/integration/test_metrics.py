"""``GET /metrics``: the counters move as spawn requests are answered, the scrape-time
gauges follow the ledger, Redis and the broker, the endpoint needs a token, and a down
or hanging dependency is a ``vx11_up`` of 0, never an error.

The counters belong to the test process, shared by every app it makes, so each test
compares two scrapes. Rates are chosen so that no count depends on timing (see
tests/integration/test_limits.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.support import free_port
from vx11 import create_app
from vx11.core.ledger import Ledger
from vx11.core.states import SpawnStatus
from vx11.core.tokens import TokenStore

SPAWN = {"task_type": "shell", "code": "true", "ttl_seconds": 30}
ONE_PER_100S = 0.01
FRESH = {"metrics_cache_seconds": 0, "probe_timeout": 0.1}
"""Every scrape reads the shared state anew, and waits little for workers (there are none)."""


def scrape(client, headers) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.content_type.startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a counter or histogram series not yet created."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before, after, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def names(samples) -> set[str]:
    return {name for name, _ in samples}


@pytest.fixture
def make_client(test_config):
    def make(**overrides):
        return create_app({**test_config, **FRESH, **overrides}).test_client()

    return make


def open_window(client, headers) -> None:
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=headers)
    assert response.status_code == 200, response.json


def closed_port_url(scheme: str = "redis") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}/0"


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A Redis URL whose server accepts connections and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"


# --- what is counted as spawn requests are answered ------------------------------------------


def test_every_answer_to_a_spawn_request_is_counted_by_outcome_and_reason(
    make_client, auth, redis_url
):
    client = make_client(max_active_spawns=2)
    slow = TokenStore(redis.Redis.from_url(redis_url)).create(
        "slow", ["spawn"], rate_limit_per_second=ONE_PER_100S
    )[0]
    before = scrape(client, auth)

    assert client.post("/vx11/spawn", json=SPAWN, headers=auth).json["error"] == "off_by_policy"
    open_window(client, auth)
    for _ in range(2):
        assert client.post("/vx11/spawn", json=SPAWN, headers=auth).json["error"] is None
    assert client.post("/vx11/spawn", json=SPAWN, headers=auth).json["error"] == "quota_exceeded"
    assert client.post("/vx11/spawn", json={"task_type": "perl"}, headers=auth).status_code == 422
    assert client.post("/vx11/spawn", json=SPAWN).status_code == 401
    assert client.post("/vx11/spawn", data=b"{", headers=auth).status_code == 400
    slow_headers = {"X-VX11-Token": slow}
    assert client.post("/vx11/spawn", json=SPAWN, headers=slow_headers).status_code == 200
    limited = client.post("/vx11/spawn", json=SPAWN, headers=slow_headers)
    assert limited.json["error"] == "rate_limited"
    after = scrape(client, auth)

    assert moved(before, after, "vx11_spawns_accepted_total") == 3
    refused = {
        reason: moved(before, after, "vx11_spawns_refused_total", reason=reason)
        for reason in (
            "off_by_policy",
            "quota_exceeded",
            "validation_error",
            "auth_required",
            "bad_json",
            "rate_limited",
        )
    }
    assert refused == dict.fromkeys(refused, 1)
    outcomes = {
        outcome: moved(before, after, "vx11_spawn_request_seconds_count", outcome=outcome)
        for outcome in ("accepted", "refused", "failed", "replayed")
    }
    assert outcomes == {"accepted": 3, "refused": 6, "failed": 0, "replayed": 0}
    every = moved(before, after, "vx11_spawn_request_seconds_bucket", outcome="refused", le="+Inf")
    assert every == 6


def test_an_idempotent_replay_is_not_counted_as_a_new_spawn(make_client, auth):
    client = make_client()
    open_window(client, auth)
    keyed = {**auth, "Idempotency-Key": "metrics-replay"}
    before = scrape(client, auth)
    first = client.post("/vx11/spawn", json=SPAWN, headers=keyed)
    again = client.post("/vx11/spawn", json=SPAWN, headers=keyed)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json["spawn_id"] == first.json["spawn_id"]
    after = scrape(client, auth)
    assert moved(before, after, "vx11_spawns_accepted_total") == 1
    assert moved(before, after, "vx11_spawn_request_seconds_count", outcome="replayed") == 1
    assert value(after, "vx11_spawns", status="QUEUED") == 1


def test_other_endpoints_are_not_counted_as_spawn_requests(make_client, auth):
    client = make_client()
    before = scrape(client, auth)
    open_window(client, auth)
    client.get("/vx11/spawns", headers=auth)
    client.post("/vx11/window/open", json={"target": "nowhere"}, headers=auth)  # 422
    after = scrape(client, auth)
    counted = [
        name
        for name in names(after) | names(before)
        if name.startswith(("vx11_spawns_accepted", "vx11_spawns_refused", "vx11_spawn_request"))
    ]
    assert all(after.get(key) == before.get(key) for key in after if key[0] in counted)


# --- what is read at scrape time ---------------------------------------------------------------


def test_gauges_follow_the_ledger_the_windows_and_the_queue(make_client, auth):
    client = make_client()
    empty = scrape(client, auth)
    assert value(empty, "vx11_window_open", target="spawner") == 0
    assert value(empty, "vx11_queue_messages", queue="spawner") == 0
    assert value(empty, "vx11_spawns", status="QUEUED") == 0

    open_window(client, auth)
    ids = [client.post("/vx11/spawn", json=SPAWN, headers=auth).json["spawn_id"] for _ in range(3)]
    assert client.post(f"/vx11/spawn/{ids[0]}/cancel", headers=auth).status_code == 200
    samples = scrape(client, auth)

    assert value(samples, "vx11_window_open", target="spawner") == 1
    assert value(samples, "vx11_window_open", target="switch") == 0
    by_state = {status: value(samples, "vx11_spawns", status=status) for status in SpawnStatus}
    assert by_state == {**dict.fromkeys(SpawnStatus, 0), "QUEUED": 2, "CANCELLED": 1}
    # A job cancelled while queued stays in the broker until a worker drops it.
    assert value(samples, "vx11_queue_messages", queue="spawner") == 3
    assert value(samples, "vx11_queue_messages", queue="callbacks") == 0
    assert value(samples, "vx11_workers") == 0
    assert {value(samples, "vx11_up", dependency=d) for d in ("redis", "database", "broker")} == {1}


def test_scrape_time_figures_are_reused_within_the_cache_period_and_counters_are_not(
    make_client, auth
):
    client = make_client(metrics_cache_seconds=3600)
    open_window(client, auth)
    first = scrape(client, auth)
    assert client.post("/vx11/spawn", json=SPAWN, headers=auth).json["error"] is None
    second = scrape(client, auth)
    assert value(second, "vx11_spawns", status="QUEUED") == 0  # read before the spawn
    assert moved(first, second, "vx11_spawns_accepted_total") == 1


# --- who may read them ---------------------------------------------------------------------------


def test_metrics_need_a_valid_token_and_any_scope_reads_them(make_client, redis_url):
    client = make_client()
    assert client.get("/metrics").json["error"] == "auth_required"
    assert client.get("/metrics", headers={"X-VX11-Token": "vx11_nope"}).json["error"] == (
        "invalid_token"
    )
    read_only = TokenStore(redis.Redis.from_url(redis_url)).create("prometheus", ["read"])[0]
    response = client.get("/metrics", headers={"X-VX11-Token": read_only})
    assert response.status_code == 200
    assert b"vx11_up" in response.data


def test_with_redis_down_a_real_token_cannot_be_checked_and_the_scrape_is_503(
    make_client, redis_url
):
    read_only = TokenStore(redis.Redis.from_url(redis_url)).create("prometheus", ["read"])[0]
    client = make_client(redis_url=closed_port_url())
    response = client.get("/metrics", headers={"X-VX11-Token": read_only})
    assert response.status_code == 503
    assert response.json["error"] == "redis_unavailable"


def test_metrics_are_documented_as_text_behind_the_read_scope(client):
    operation = client.get("/vx11/openapi.json").json["paths"]["/metrics"]["get"]
    assert operation["x-vx11-scope"] == "read"
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]


# --- a dependency down ---------------------------------------------------------------------------


def test_with_the_broker_down_the_scrape_reports_it_and_counts_the_failed_spawn(make_client, auth):
    client = make_client(broker_url=closed_port_url())
    open_window(client, auth)
    before = scrape(client, auth)
    failed = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert failed.status_code == 503 and failed.json["error"] == "spawner_unavailable"
    after = scrape(client, auth)

    assert value(after, "vx11_up", dependency="broker") == 0
    assert value(after, "vx11_up", dependency="redis") == 1
    assert value(after, "vx11_up", dependency="database") == 1
    assert "vx11_queue_messages" not in names(after) and "vx11_workers" not in names(after)
    assert moved(before, after, "vx11_spawns_refused_total", reason="spawner_unavailable") == 1
    assert moved(before, after, "vx11_spawn_request_seconds_count", outcome="failed") == 1
    assert value(after, "vx11_spawns", status="ERROR") == 1
    assert value(after, "vx11_spawn_errors", reason="broker_unavailable") == 1


def test_with_redis_and_the_database_down_the_scrape_still_answers(make_client, auth):
    client = make_client(redis_url=closed_port_url())
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    client.application.extensions["vx11"].ledger = Ledger.from_url(unreachable)
    samples = scrape(client, auth)
    assert {value(samples, "vx11_up", dependency=d) for d in ("redis", "database", "broker")} == {0}
    for absent in ("vx11_spawns", "vx11_spawn_errors", "vx11_window_open", "vx11_queue_messages"):
        assert absent not in names(samples)
    assert ("vx11_spawns_accepted_total", ()) in samples  # the counters are always there


def test_a_redis_that_never_answers_is_left_out_of_the_scrape(make_client, auth, black_hole):
    client = make_client(redis_url=black_hole, metrics_timeout=0.5)
    samples = scrape(client, auth)
    assert value(samples, "vx11_up", dependency="redis") == 0
    assert value(samples, "vx11_up", dependency="broker") == 0
    assert value(samples, "vx11_up", dependency="database") == 1
    assert value(samples, "vx11_spawns", status="QUEUED") == 0
