"""What the API says of a request it refuses: one clear message per failing field."""

from __future__ import annotations

import re

import pytest

from tests.integration.test_api import SPAWN, open_window, queued_messages
from vx11.core.states import SpawnStatus
from vx11.gateway.api.openapi import SPEC_PATH

CODE_MAX, STDIN_MAX = 64 << 10, 256 << 10
"""The defaults of VX11_MAX_CODE_BYTES and VX11_MAX_STDIN_BYTES."""


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("stdin", "x" * (STDIN_MAX + 1), f"must be at most {STDIN_MAX} bytes of UTF-8"),
        # fewer characters than the limit, more bytes
        ("stdin", "é" * (STDIN_MAX // 2 + 1), f"must be at most {STDIN_MAX} bytes of UTF-8"),
        ("code", "x" * (CODE_MAX + 1), f"must be 1 to {CODE_MAX} bytes of UTF-8"),
        ("code", "€" * (CODE_MAX // 3 + 1), f"must be 1 to {CODE_MAX} bytes of UTF-8"),
        ("code", "", f"must be 1 to {CODE_MAX} bytes of UTF-8"),
    ],
)
def test_a_text_over_its_limit_gets_one_message(client, auth, redis_url, field, value, message):
    open_window(client, auth)
    response = client.post("/vx11/spawn", json={**SPAWN, field: value}, headers=auth)
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_error"
    assert response.json["fields"] == {field: [message]}
    assert queued_messages(redis_url) == []


def test_a_text_at_its_limit_in_bytes_is_accepted(client, auth):
    open_window(client, auth)
    body = {**SPAWN, "code": "#" + "é" * ((CODE_MAX - 1) // 2), "stdin": "€" * (STDIN_MAX // 3)}
    response = client.post("/vx11/spawn", json=body, headers=auth)
    assert response.status_code == 200 and response.json["status"] == "QUEUED", response.json


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/vx11/spawn", {**SPAWN, "ttl_seconds": 0, "correlation_id": "a b", "args": "-v",
                         "metadata": {"k": "v" * 5000}, "memory_limit_mb": 1, "task_type": "perl",
                         "code": "", "stdin": "x" * (STDIN_MAX + 1), "max_retries": 99}),
        ("/vx11/window/open", {"target": "nowhere", "ttl_seconds": 0, "reason": "r" * 501}),
        ("/vx11/window/close", {"target": "", "cancel_running": "yes", "reason": 1}),
        ("/vx11/tokens", {"label": "", "scopes": ["root"], "expires_in_seconds": 0,
                          "rate_limit_per_second": 0, "max_active_spawns": 0}),
    ],
)  # fmt: skip
def test_every_failing_field_gets_exactly_one_message(client, auth, path, body):
    open_window(client, auth)
    response = client.post(path, json=body, headers=auth)
    assert response.status_code == 422, response.json
    failing = response.json["fields"]
    assert set(failing) == set(body)
    for field, messages in failing.items():
        if isinstance(messages, dict):  # a list's items: {index: [messages]}
            (messages,) = messages.values()
        assert len(messages) == 1, (field, messages)


# --- filters: any case -------------------------------------------------------------------


def test_the_history_status_and_task_type_filters_take_any_case(app, client, auth):
    open_window(client, auth)
    ledger = app.extensions["vx11"].ledger
    done, queued = (client.post("/vx11/spawn", json=SPAWN, headers=auth).json for _ in range(2))
    shell = client.post("/vx11/spawn", json={**SPAWN, "task_type": "shell"}, headers=auth).json
    ledger.transition(done["spawn_uuid"], SpawnStatus.RUNNING)
    ledger.transition(done["spawn_uuid"], SpawnStatus.DONE, exit_code=0)

    def listed(query: str) -> list[str]:
        response = client.get(f"/vx11/spawns?{query}", headers=auth)
        assert response.status_code == 200, response.json
        return [record["spawn_id"] for record in response.json["spawns"]]

    for query in ("status=done", "status=Done", "status=DONE", "status=done&status=done"):
        assert listed(query) == [done["spawn_id"]], query
    for query in ("status=done,queued", "status=DONE&status=Queued"):
        assert listed(query) == [shell["spawn_id"], queued["spawn_id"], done["spawn_id"]]
    assert listed("task_type=SHELL") == listed("task_type=shell") == [shell["spawn_id"]]
    answered = [client.get("/vx11/spawns?status=done", headers=auth).json["spawns"][0]["status"]]
    assert answered == ["DONE"], "the state as the API writes it"


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("/vx11/spawns", "status=finished", "status"),
        ("/vx11/spawns", "status=done,nope", "status"),
        ("/vx11/spawns", "task_type=perl", "task_type"),
        ("/vx11/audit", "event=window_shut", "event"),
    ],
)
def test_an_unknown_filter_value_in_any_case_is_still_422(client, auth, path, query, field):
    response = client.get(f"{path}?{query}", headers=auth)
    assert response.status_code == 422, response.json
    assert response.json["error"] == "validation_error"
    assert list(response.json["fields"]) == [field]


def test_the_audit_event_filter_takes_any_case(client, auth):
    open_window(client, auth)
    for query in ("event=WINDOW_OPENED", "event=Window_Opened,spawn_accepted"):
        response = client.get(f"/vx11/audit?{query}", headers=auth)
        assert response.status_code == 200, response.json
        assert [entry["event"] for entry in response.json["entries"]] == ["window_opened"]


# --- query strings: only the parameters an endpoint takes --------------------------------

PATH_VALUES = {
    "ident": "spawn-00000000", "target": "spawner", "token_id": "0" * 8, "path": "out/a.txt",
}  # fmt: skip


def operations(client) -> list[tuple[str, str]]:
    """``(method, path)`` of every operation the OpenAPI document lists, with a value in
    each path parameter."""
    spec = client.get(SPEC_PATH).json
    return [
        (method, re.sub(r"\{(\w+)\}", lambda match: PATH_VALUES[match[1]], path))
        for path, item in spec["paths"].items()
        for method in item
        if method != "parameters"
    ]


def test_post_spawn_with_a_query_parameter_is_422_naming_it_and_queues_nothing(
    client, auth, redis_url
):
    open_window(client, auth)
    response = client.post("/vx11/spawn?wait=10", json=SPAWN, headers=auth)
    assert response.status_code == 422, response.json
    assert response.json == {
        "error": "unknown_parameter",
        "message": "unknown query parameter wait: this endpoint takes no query parameter",
        "fields": {"wait": ["unknown query parameter"]},
    }
    assert queued_messages(redis_url) == []


def test_an_unknown_parameter_beside_known_ones_is_422_naming_it_and_what_is_taken(client, auth):
    response = client.get("/vx11/spawns?limit=5&bogus=1&status=done", headers=auth)
    assert response.status_code == 422, response.json
    assert response.json["error"] == "unknown_parameter"
    assert response.json["fields"] == {"bogus": ["unknown query parameter"]}
    assert response.json["message"] == (
        "unknown query parameter bogus: this endpoint takes "
        "correlation_id, cursor, limit, since, status, task_type, until"
    )
    both = client.get("/vx11/audit?Event=x&limit=0&targets=a", headers=auth).json
    assert both["error"] == "unknown_parameter", "unknown ones first, then the values"
    assert set(both["fields"]) == {"Event", "targets"}


def test_every_endpoint_refuses_an_unknown_query_parameter(client, auth):
    for method, path in operations(client):
        response = client.open(f"{path}?bogus=1", method=method.upper(), headers=auth)
        assert response.status_code == 422, (method, path, response.status_code)
        assert response.json["error"] == "unknown_parameter", (method, path)
        assert response.json["fields"] == {"bogus": ["unknown query parameter"]}


def test_a_request_without_a_token_is_401_before_its_query_is_read(client):
    for method, path in operations(client):
        if path == "/health":
            continue
        response = client.open(f"{path}?bogus=1", method=method.upper())
        assert response.status_code == 401, (method, path, response.status_code)


def test_the_unknown_parameter_refusal_is_documented_on_every_operation(client):
    spec = client.get(SPEC_PATH).json
    assert (
        "unknown_parameter" in spec["components"]["schemas"]["Error"]["properties"]["error"]["enum"]
    )
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                assert "422" in operation["responses"], (method, path)


def test_the_parameters_an_endpoint_takes_are_still_taken(client, auth):
    open_window(client, auth)
    accepted = client.post("/vx11/spawn", json=SPAWN, headers=auth).json
    read = client.get(f"/vx11/spawn/{accepted['spawn_id']}?wait=0", headers=auth)
    assert read.status_code == 200, read.json
    page = client.get("/vx11/spawns?limit=1&status=QUEUED&task_type=python", headers=auth)
    assert page.status_code == 200 and page.json["next_cursor"] is None, page.json
    cursor = client.get("/vx11/audit?limit=1", headers=auth).json["next_cursor"]
    assert cursor
    assert client.get(f"/vx11/audit?limit=1&cursor={cursor}", headers=auth).status_code == 200
