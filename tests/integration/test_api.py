"""The gateway's HTTP API against a real Redis (Flask test client; no worker needed)."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import redis

from tests.support import free_port
from vx11 import create_app
from vx11.core.config import Settings
from vx11.core.ledger import Ledger
from vx11.core.states import SpawnStatus
from vx11.core.tokens import TokenStore
from vx11.gateway.startup import StartupRefused

SPAWN = {"task_type": "python", "code": "print('MVP works')", "ttl_seconds": 30}


def open_window(client, auth, target="spawner", ttl=600):
    response = client.post("/vx11/window/open", json={"target": target, "ttl_seconds": ttl},
                           headers=auth)  # fmt: skip
    assert response.status_code == 200, response.json
    return response.json


def queued_messages(redis_url: str, queue: str = "spawner") -> list[dict]:
    return [json.loads(raw) for raw in redis.Redis.from_url(redis_url).lrange(queue, 0, -1)]


def queued_kwargs(redis_url: str, queue: str = "spawner") -> list[dict]:
    """The kwargs of each queued job (a kombu body is base64 JSON ``[args, kwargs, embed]``)."""
    return [json.loads(base64.b64decode(m["body"]))[1] for m in queued_messages(redis_url, queue)]


def closed_port_url(scheme: str = "redis") -> str:
    return f"{scheme}://127.0.0.1:{free_port()}/0"


# --- health and authentication ---------------------------------------------------------


def test_health_needs_no_token_and_no_dependency(test_config):
    app = create_app({**test_config, "redis_url": closed_port_url()})
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.json["status"] == "ok"
    assert response.json["service"] == "vx11-gateway"
    assert response.json["version"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/vx11/status"),
        ("post", "/vx11/window/open"),
        ("post", "/vx11/window/close"),
        ("get", "/vx11/window/status/spawner"),
        ("post", "/vx11/spawn"),
        ("get", "/vx11/spawn/spawn-00000000"),
        ("get", "/vx11/result/spawn-00000000"),
    ],
)
def test_every_endpoint_but_health_requires_a_token(client, method, path):
    missing = getattr(client, method)(path)
    assert missing.status_code == 401
    assert missing.json["error"] == "auth_required"
    wrong = getattr(client, method)(path, headers={"X-VX11-Token": "not-a-token"})
    assert wrong.status_code == 401
    assert wrong.json["error"] == "invalid_token"


def test_a_created_token_works_and_stops_working_once_revoked(app, client, redis_url):
    store = TokenStore(redis.Redis.from_url(redis_url))
    token, info = store.create("ops", ["read"])
    assert token.startswith("vx11_")
    assert (
        client.get("/vx11/window/status/spawner", headers={"X-VX11-Token": token}).status_code
        == 200
    )
    assert store.revoke(info.token_id)
    assert (
        client.get("/vx11/window/status/spawner", headers={"X-VX11-Token": token}).status_code
        == 401
    )


def test_only_a_hash_of_a_token_is_stored(redis_url):
    client = redis.Redis.from_url(redis_url)
    token, _ = TokenStore(client).create("ops", ["window", "spawn", "read"])
    dump = b"".join(
        key + b"".join(client.hgetall(key).values()) for key in client.keys("vx11:token:*")
    )
    assert token.encode() not in dump
    assert token[5:].encode() not in dump


def test_production_refuses_to_start_without_a_real_token(test_config):
    with pytest.raises(StartupRefused, match="no API token"):
        create_app({**test_config, "env": "production"})


def test_production_rejects_the_development_token(test_config, redis_url, auth):
    token, _ = TokenStore(redis.Redis.from_url(redis_url)).create(
        "ops", ["window", "spawn", "read"]
    )
    client = create_app({**test_config, "env": "production"}).test_client()
    assert client.get("/vx11/window/status/spawner", headers=auth).status_code == 401
    ok = client.get("/vx11/window/status/spawner", headers={"X-VX11-Token": token})
    assert ok.status_code == 200


# --- policy windows -----------------------------------------------------------------------


def test_opening_a_window_reports_it_open_with_its_ttl(client, auth):
    window = open_window(client, auth)
    assert window["target"] == "spawner"
    assert window["is_open"] is True
    assert window["window_id"]
    assert window["opened_at"].endswith("Z") and window["expires_at"].endswith("Z")
    assert 598 <= window["ttl_remaining_seconds"] <= 600
    status = client.get("/vx11/window/status/spawner", headers=auth).json
    assert status["is_open"] is True and status["window_id"] == window["window_id"]


def test_opening_an_open_window_extends_it_says_so_and_audits_it(client, auth):
    first = open_window(client, auth, ttl=60)
    assert (first["extended"], first["previous_expires_at"]) == (False, None)
    longer = open_window(client, auth, ttl=600)
    assert longer["extended"] is True
    assert (longer["window_id"], longer["opened_at"]) == (first["window_id"], first["opened_at"])
    assert longer["previous_expires_at"] == first["expires_at"] < longer["expires_at"]
    assert 598 <= longer["ttl_remaining_seconds"] <= 600
    (entry,) = client.get("/vx11/audit?event=window_extended", headers=auth).json["entries"]
    assert entry["window_id"] == first["window_id"]
    assert entry["detail"] == {
        "ttl_seconds": 600,
        "expires_at": longer["expires_at"],
        "previous_expires_at": first["expires_at"],
    }


def test_a_window_opened_again_with_a_shorter_ttl_ends_at_its_new_end(client, auth):
    first = open_window(client, auth, ttl=600)
    shorter = open_window(client, auth, ttl=1)
    assert shorter["window_id"] == first["window_id"] and shorter["extended"] is True
    assert shorter["expires_at"] < first["expires_at"]
    time.sleep(1.2)
    assert client.get("/vx11/window/status/spawner", headers=auth).json["is_open"] is False


def test_a_window_opened_after_a_close_is_a_new_window(client, auth):
    first = open_window(client, auth)
    client.post("/vx11/window/close", json={"target": "spawner"}, headers=auth)
    second = open_window(client, auth)
    assert second["window_id"] != first["window_id"] and second["extended"] is False


def test_closing_a_window_says_whether_it_was_open(client, auth):
    open_window(client, auth)
    body = {"target": "spawner", "reason": "done"}
    first = client.post("/vx11/window/close", json=body, headers=auth).json
    assert first == {
        "target": "spawner",
        "closed": True,
        "was_open": True,
        "reason": "done",
        "cancelled": [],
    }
    second = client.post("/vx11/window/close", json=body, headers=auth).json
    assert second["was_open"] is False
    status = client.get("/vx11/window/status/spawner", headers=auth).json
    assert status["is_open"] is False and status["window_id"] is None


def test_a_window_expires_by_itself(client, auth):
    open_window(client, auth, ttl=1)
    time.sleep(1.2)
    assert client.get("/vx11/window/status/spawner", headers=auth).json["is_open"] is False
    refused = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    assert refused["error"] == "off_by_policy"


def test_windows_are_shared_by_every_gateway_process(test_config, auth):
    one, two = create_app(test_config).test_client(), create_app(test_config).test_client()
    window = open_window(one, auth)
    assert (
        two.get("/vx11/window/status/spawner", headers=auth).json["window_id"]
        == (window["window_id"])
    )


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"target": "nuclear", "ttl_seconds": 60}, "target"),
        ({"ttl_seconds": 60}, "target"),
        ({"target": "spawner", "ttl_seconds": 0}, "ttl_seconds"),
        ({"target": "spawner", "ttl_seconds": 3601}, "ttl_seconds"),
        ({"target": "spawner", "ttl_seconds": "600"}, "ttl_seconds"),
        ({"target": "spawner", "ttl_seconds": 1.5}, "ttl_seconds"),
        ({"target": "spawner", "ttl_seconds": 60, "extra": 1}, "extra"),
    ],
)
def test_a_bad_window_request_is_422_naming_the_field(client, auth, body, field):
    response = client.post("/vx11/window/open", json=body, headers=auth)
    assert response.status_code == 422
    assert response.json["error"] == "validation_error"
    assert field in response.json["fields"]


def test_other_configured_targets_have_their_own_windows(client, auth):
    open_window(client, auth, target="hermes")
    assert client.get("/vx11/window/status/hermes", headers=auth).json["is_open"] is True
    assert client.get("/vx11/window/status/spawner", headers=auth).json["is_open"] is False
    unknown = client.get("/vx11/window/status/nuclear", headers=auth)
    assert unknown.status_code == 404 and unknown.json["error"] == "not_found"


# --- spawns -----------------------------------------------------------------------------------


def test_a_spawn_without_a_window_is_refused_with_200_and_nothing_queued(
    app, client, auth, redis_url
):
    response = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert response.status_code == 200
    assert response.json["spawn_id"] is None
    assert response.json["status"] == "ERROR"
    assert response.json["error"] == "off_by_policy"
    assert "window/open" in response.json["hint"]
    assert queued_messages(redis_url) == []
    with app.extensions["vx11"].ledger.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM spawns").scalar() == 0


def test_an_accepted_spawn_is_queued_under_its_uuid(client, auth, redis_url):
    window = open_window(client, auth)
    body = {**SPAWN, "correlation_id": "ticket-42", "metadata": {"team": "ops"}}
    accepted = client.post("/vx11/spawn", json=body, headers=auth).json
    assert accepted["status"] == "QUEUED"
    assert accepted["error"] is None
    assert accepted["spawn_id"] == f"spawn-{accepted['spawn_uuid'][:8]}"
    assert accepted["correlation_id"] == "ticket-42"
    assert accepted["created_at"].endswith("Z")
    [message] = queued_messages(redis_url)
    assert message["headers"]["task"] == "vx11.spawn"
    assert message["headers"]["id"] == accepted["spawn_uuid"]
    record = client.get(f"/vx11/spawn/{accepted['spawn_id']}", headers=auth).json
    assert record["status"] == "QUEUED"
    assert record["window_id"] == window["window_id"]
    assert record["metadata"] == {"team": "ops"}


def test_the_seeds_form_encoded_json_body_is_accepted(client, auth):
    open_window(client, auth)
    response = client.post(
        "/vx11/spawn",
        data='{"task_type":"shell","code":"echo test","ttl_seconds":30}',
        content_type="application/x-www-form-urlencoded",
        headers=auth,
    )
    assert response.status_code == 200
    assert response.json["status"] == "QUEUED"


def test_a_spawn_reads_back_by_id_uuid_and_the_result_alias(client, auth):
    open_window(client, auth)
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    for path in (
        f"/vx11/spawn/{accepted['spawn_id']}",
        f"/vx11/spawn/{accepted['spawn_uuid']}",
        f"/vx11/result/{accepted['spawn_id']}",
    ):
        record = client.get(path, headers=auth).json
        assert record["spawn_uuid"] == accepted["spawn_uuid"]
        assert record["task_type"] == "python"
        assert set(record) >= {
            "spawn_id", "spawn_uuid", "status", "reason", "task_type", "exit_code", "stdout",
            "stderr", "stdout_truncated", "stderr_truncated", "created_at", "started_at",
            "finished_at", "duration_ms", "worker", "window_id", "correlation_id",
            "limits", "args", "cpu_time_ms", "peak_memory_kb",
        }  # fmt: skip


def test_an_unknown_spawn_is_404(client, auth):
    for ident in ("spawn-deadbeef", "3f1c0000-0000-4000-8000-000000000000", "whatever"):
        response = client.get(f"/vx11/spawn/{ident}", headers=auth)
        assert response.status_code == 404
        assert response.json["error"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "print(1)"}, "task_type"),
        ({"task_type": "ruby", "code": "puts 1"}, "task_type"),
        ({"task_type": "python"}, "code"),
        ({"task_type": "python", "code": ""}, "code"),
        ({"task_type": "python", "code": "x" * (64 * 1024 + 1)}, "code"),
        ({"task_type": "python", "code": "1", "ttl_seconds": 0}, "ttl_seconds"),
        ({"task_type": "python", "code": "1", "ttl_seconds": 3601}, "ttl_seconds"),
        ({"task_type": "python", "code": "1", "ttl_seconds": "30"}, "ttl_seconds"),
        ({"task_type": "python", "code": "1", "correlation_id": "a\r\nSet-Cookie: x"},
         "correlation_id"),
        ({"task_type": "python", "code": "1", "metadata": {"k": "v" * 5000}}, "metadata"),
        ({"task_type": "python", "code": "1", "metadata": [1, 2]}, "metadata"),
        ({"task_type": "python", "code": "1", "stdin": 5}, "stdin"),
        ({"task_type": "python", "code": "1", "priority": 9}, "priority"),
    ],
)  # fmt: skip
def test_a_bad_spawn_request_is_422_naming_the_field(client, auth, body, field):
    open_window(client, auth)
    response = client.post("/vx11/spawn", json=body, headers=auth)
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_error"
    assert field in response.json["fields"]
    assert response.json["message"]


# --- per-spawn limits -----------------------------------------------------------------------

LIMIT_SETTINGS = [
    # (request field, lowest value, setting holding the server's maximum)
    ("cpu_time_limit", 1, "cpu_time_limit_max"),
    ("memory_limit_mb", 16, "memory_limit_mb_max"),
    ("max_processes", 1, "max_processes_max"),
    ("max_output_bytes", 0, "max_output_bytes_max"),
    ("max_file_size_mb", 1, "max_file_size_mb_max"),
]


def settings_of(app):
    return app.extensions["vx11"].settings


def test_a_spawn_without_limits_gets_the_servers_defaults_on_its_record_and_its_job(
    app, client, auth, redis_url
):
    settings = settings_of(app)
    window = open_window(client, auth)
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    defaults = {
        "cpu_time_limit": SPAWN["ttl_seconds"],
        "memory_limit_mb": settings.memory_limit_mb,
        "max_processes": settings.max_processes,
        "max_output_bytes": settings.max_output_bytes,
        "max_file_size_mb": settings.max_file_size_mb,
    }
    record = client.get(f"/vx11/spawn/{accepted['spawn_id']}", headers=auth).json
    assert record["limits"] == defaults
    assert record["args"] == []
    assert queued_kwargs(redis_url) == [
        {
            "spawn_uuid": accepted["spawn_uuid"],
            "task_type": "python",
            "code": SPAWN["code"],
            "stdin": None,
            "merge_stderr": False,
            "ttl_seconds": SPAWN["ttl_seconds"],
            "window_id": window["window_id"],
            "correlation_id": None,
            "limits": defaults,
            "args": [],
            "attempt": 1,
        }
    ]


def test_a_spawn_within_the_maxima_is_stored_and_queued_exactly_as_asked(
    app, client, auth, redis_url
):
    settings = settings_of(app)
    open_window(client, auth)
    limits = {
        "cpu_time_limit": settings.cpu_time_limit_max,
        "memory_limit_mb": 16,
        "max_processes": settings.max_processes_max,
        "max_output_bytes": 0,
        "max_file_size_mb": 1,
    }
    args = ["-v", "two words", "ünïcödé ✓", "", "é" * 2048] + ["x"] * (settings.max_args - 5)
    body = {**SPAWN, "task_type": "shell", "code": 'echo "$@"', **limits, "args": args}
    accepted = client.post("/vx11/spawn", json=body, headers=auth)
    assert accepted.status_code == 200, accepted.json
    record = client.get(f"/vx11/spawn/{accepted.json['spawn_id']}", headers=auth).json
    assert (record["limits"], record["args"]) == (limits, args)
    [kwargs] = queued_kwargs(redis_url)
    assert (kwargs["limits"], kwargs["args"]) == (limits, args)
    assert not set(limits) & set(kwargs)  # the limits travel only inside `limits`


def test_the_default_cpu_time_limit_is_the_ttl_but_never_above_the_maximum(
    test_config, auth, redis_url
):
    client = create_app(
        {**test_config, "spawn_max_ttl": 7200, "cpu_time_limit_max": 60}
    ).test_client()
    open_window(client, auth)
    for ttl, cpu in ((45, 45), (120, 60)):
        accepted = client.post("/vx11/spawn", json={**SPAWN, "ttl_seconds": ttl}, headers=auth)
        record = client.get(f"/vx11/spawn/{accepted.json['spawn_id']}", headers=auth).json
        assert (record["ttl_seconds"], record["limits"]["cpu_time_limit"]) == (ttl, cpu)


@pytest.mark.parametrize(("field", "lowest", "maximum"), LIMIT_SETTINGS)
def test_a_limit_over_the_servers_maximum_is_422_naming_the_field_and_the_maximum(
    app, client, auth, redis_url, field, lowest, maximum
):
    highest = getattr(settings_of(app), maximum)
    open_window(client, auth)
    for value in (highest + 1, lowest - 1):
        response = client.post("/vx11/spawn", json={**SPAWN, field: value}, headers=auth)
        assert response.status_code == 422, response.json
        assert response.json["error"] == "validation_error"
        assert response.json["fields"] == {
            field: [f"must be between {lowest} and {highest} (the server's maximum)"]
        }
    assert queued_messages(redis_url) == []


def test_the_maximum_in_force_is_the_configured_one(test_config, auth):
    client = create_app(
        {**test_config, "memory_limit_mb": 32, "memory_limit_mb_max": 64}
    ).test_client()
    open_window(client, auth)
    over = client.post("/vx11/spawn", json={**SPAWN, "memory_limit_mb": 65}, headers=auth)
    assert over.status_code == 422
    assert "64" in over.json["fields"]["memory_limit_mb"][0]
    at = client.post("/vx11/spawn", json={**SPAWN, "memory_limit_mb": 64}, headers=auth)
    assert at.status_code == 200 and at.json["status"] == "QUEUED"


@pytest.mark.parametrize("field", [field for field, _, _ in LIMIT_SETTINGS])
@pytest.mark.parametrize("value", ["64", 64.0, 64.5, True, None, [64], {"mb": 64}])
def test_a_limit_that_is_not_an_integer_is_422(client, auth, redis_url, field, value):
    open_window(client, auth)
    response = client.post("/vx11/spawn", json={**SPAWN, field: value}, headers=auth)
    assert response.status_code == 422, response.json
    assert field in response.json["fields"]
    assert queued_messages(redis_url) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("-v", "Not a valid list."),
        (None, "Field may not be null."),
        ([1], "Not a valid string."),
        ([None], "Field may not be null."),
        (["ok", ["nested"]], "Not a valid string."),
        (["a\0b"], "may not contain NUL"),  # refused in any field: not storable
        (["é" * 2049], "an argument is longer than 4096 bytes"),  # 2049 characters, 4098 bytes
    ],
)
def test_bad_args_are_422(client, auth, redis_url, args, message):
    open_window(client, auth)
    response = client.post("/vx11/spawn", json={**SPAWN, "args": args}, headers=auth)
    assert response.status_code == 422, response.json
    assert message in json.dumps(response.json["fields"]["args"], ensure_ascii=False)
    assert queued_messages(redis_url) == []


def test_more_args_than_the_server_allows_is_422_stating_the_maximum(app, client, auth):
    most = settings_of(app).max_args
    open_window(client, auth)
    response = client.post("/vx11/spawn", json={**SPAWN, "args": ["x"] * (most + 1)}, headers=auth)
    assert response.status_code == 422
    assert response.json["fields"] == {"args": [f"at most {most} arguments (the server's maximum)"]}


def test_an_arg_that_is_not_valid_unicode_is_422(client, auth):
    open_window(client, auth)
    raw = '{"task_type": "python", "code": "1", "args": ["\\ud800"]}'
    response = client.post("/vx11/spawn", data=raw, headers=auth, content_type="application/json")
    assert response.status_code == 422
    assert response.json["fields"] == {
        "args": ["may not contain NUL or a lone surrogate (\\ud800-\\udfff): not storable text"]
    }


@pytest.mark.parametrize(
    "raw",
    [b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe{}", b'{"a":' * 5000 + b"1" + b"}" * 5000],
)
def test_a_body_that_is_not_a_json_object_is_400(client, auth, raw):
    open_window(client, auth)
    response = client.post("/vx11/spawn", data=raw, headers=auth, content_type="application/json")
    assert response.status_code == 400
    assert response.json["error"] == "bad_json"


def test_an_oversized_body_is_413(client, auth):
    body = json.dumps({"task_type": "python", "code": "#" * (Settings().max_body_bytes + 1)})
    response = client.post("/vx11/spawn", data=body, headers=auth, content_type="application/json")
    assert response.status_code == 413
    assert response.json["error"] == "payload_too_large"


def test_unknown_routes_and_methods_answer_json(client, auth):
    missing = client.get("/vx11/nothing-here", headers=auth)
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.delete("/vx11/spawn", headers=auth)
    assert wrong.status_code == 405 and wrong.json["error"] == "method_not_allowed"


# --- dependencies down ------------------------------------------------------------------------


def test_broker_down_is_503_and_leaves_no_spawn_claiming_queued(test_config, auth):
    app = create_app({**test_config, "broker_url": closed_port_url()})
    client = app.test_client()
    open_window(client, auth)
    started = time.monotonic()
    response = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert time.monotonic() - started < 10
    assert response.status_code == 503
    assert response.json["error"] == "spawner_unavailable"
    with app.extensions["vx11"].ledger.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT status, reason FROM spawns").all()
    assert [tuple(r) for r in rows] == [("ERROR", "broker_unavailable")]


def test_redis_down_is_503_with_an_error_code(test_config, auth):
    client = create_app({**test_config, "redis_url": closed_port_url()}).test_client()
    response = client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    assert response.status_code == 503
    assert response.json["error"] == "redis_unavailable"


def test_database_down_is_503_with_an_error_code(app, client, auth, redis_url):
    open_window(client, auth)
    unreachable = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test?connect_timeout=2"
    app.extensions["vx11"].ledger = Ledger.from_url(unreachable)
    response = client.post("/vx11/spawn", json=SPAWN, headers=auth)
    assert response.status_code == 503
    assert response.json["error"] == "database_unavailable"
    assert queued_messages(redis_url) == []


# --- status ---------------------------------------------------------------------------------


def test_status_reports_policy_mode_and_services(client, auth):
    status = client.get("/vx11/status", headers=auth).json
    assert status["policy"] == "SOLO_MADRE"
    assert status["mode"] == "solo_madre"
    assert status["windows"] == []
    assert status["madre_available"] is True
    assert set(status["services"]) == {"redis", "broker", "result_backend", "database", "spawner"}
    assert status["services"]["redis"]["ok"] is True
    assert status["services"]["database"]["ok"] is True
    assert status["services"]["spawner"]["ok"] is False  # no worker runs in this test
    assert status["spawner_available"] is False
    open_window(client, auth)
    windowed = client.get("/vx11/status", headers=auth).json
    assert windowed["mode"] == "windowed"
    assert [w["target"] for w in windowed["windows"]] == ["spawner"]


def test_status_never_hangs_when_everything_is_down(test_config, auth):
    down = closed_port_url()
    client = create_app(
        {**test_config, "redis_url": down, "broker_url": down, "result_backend": down}
    ).test_client()
    started = time.monotonic()
    response = client.get("/vx11/status", headers=auth)
    assert time.monotonic() - started < 5
    assert response.status_code == 200
    services = response.json["services"]
    assert not any(
        services[name]["ok"] for name in ("redis", "broker", "result_backend", "spawner")
    )
    assert response.json["madre_available"] is False
    assert response.json["spawner_available"] is False


@pytest.mark.parametrize("wait", ["61", "-1", "soon", "nan"])
def test_a_bad_wait_is_422(client, auth, wait):
    open_window(client, auth)
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    response = client.get(f"/vx11/spawn/{accepted['spawn_id']}?wait={wait}", headers=auth)
    assert response.status_code == 422
    assert "wait" in response.json["fields"]


def test_waiting_on_a_spawn_no_worker_runs_returns_it_queued_when_the_wait_ends(client, auth):
    open_window(client, auth)
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    started = time.monotonic()
    response = client.get(f"/vx11/spawn/{accepted['spawn_id']}?wait=1.5", headers=auth)
    waited = time.monotonic() - started
    assert response.status_code == 200 and response.json["status"] == "QUEUED"
    assert 1.4 <= waited < 5


def test_a_wait_ends_as_soon_as_the_end_is_announced(app, client, auth):
    open_window(client, auth)
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    svc = app.extensions["vx11"]

    def cancel_soon():
        time.sleep(0.5)
        svc.ledger.transition(accepted["spawn_uuid"], SpawnStatus.CANCELLED, reason="test")
        svc.events.finish(accepted["spawn_uuid"], {"status": "CANCELLED"})

    threading.Thread(target=cancel_soon).start()
    started = time.monotonic()
    response = client.get(f"/vx11/spawn/{accepted['spawn_id']}?wait=30", headers=auth)
    assert response.json["status"] == "CANCELLED"
    assert time.monotonic() - started < 3


def test_close_with_cancel_running_asks_the_running_spawns_to_stop(app, client, auth, redis_url):
    window = open_window(client, auth)
    svc = app.extensions["vx11"]
    running = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    queued = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    svc.ledger.transition(running["spawn_uuid"], SpawnStatus.RUNNING)
    body = {"target": "spawner", "cancel_running": True}
    closed = client.post("/vx11/window/close", json=body, headers=auth).json
    assert closed["cancelled"] == [running["spawn_uuid"]]
    assert svc.events.cancel_requested(running["spawn_uuid"])
    assert not svc.events.cancel_requested(queued["spawn_uuid"])
    assert window["window_id"]


def test_a_full_redis_is_503_redis_full(client, auth, redis_url):
    admin = redis.Redis.from_url(redis_url)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", "1")  # every write now refused, as at a full maxmemory
    try:
        body = {"target": "spawner", "ttl_seconds": 60}
        response = client.post("/vx11/window/open", json=body, headers=auth)
    finally:
        admin.config_set("maxmemory", "0")
    assert response.status_code == 503
    assert response.json["error"] == "redis_full"
