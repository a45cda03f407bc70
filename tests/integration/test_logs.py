"""VX11's log lines (vx11.core.logs): JSON or text, each carrying the ids bound to the request
or task it comes from; the gateway's access and accept lines through the real app and a
real Redis; the workers' task binding through Celery's own signals."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest
from celery import signals
from celery.app import trace

from vx11 import create_app
from vx11.core import logs
from vx11.core.config import Settings
from vx11.gateway.request_log import REQUEST_ID_HEADER

JSON = {"log_format": "json"}


@pytest.fixture
def json_logs(capsys):
    """Lines go to stderr as JSON; returns a function reading those written so far."""
    logs.configure(Settings(log_format="json", log_level="DEBUG"), "test")

    def read() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines()]

    return read


def test_a_json_line_is_one_object_with_time_level_logger_message_and_its_fields(json_logs):
    logging.getLogger("vx11.example").warning("spawn %s is %s", "x", "late", extra={"n": 3})
    [line] = json_logs()
    assert line["level"] == "WARNING" and line["logger"] == "vx11.example"
    assert line["message"] == "spawn x is late"
    assert line["time"].endswith("Z") and line["service"] == "test"
    assert line["n"] == 3 and isinstance(line["process"], int)


def test_an_exception_is_one_field_of_its_line_not_lines_of_its_own(json_logs):
    try:
        raise ValueError("broken\non two lines")
    except ValueError:
        logging.getLogger("vx11.example").exception("it failed")
    [line] = json_logs()
    assert line["message"] == "it failed"
    assert line["exc_info"].startswith("Traceback") and "ValueError: broken" in line["exc_info"]


def test_bound_fields_reach_every_line_until_unbound_and_a_lines_own_fields_win(json_logs):
    log = logging.getLogger("vx11.example")
    with logs.bound(spawn_id="spawn-0000abcd", correlation_id="order-1"):
        with logs.bound(attempt=2, ignored=None):
            log.info("inner")
        log.info("outer", extra={"correlation_id": "explicit"})
    log.info("after")
    inner, outer, after = json_logs()
    assert (inner["spawn_id"], inner["correlation_id"], inner["attempt"]) == (
        "spawn-0000abcd", "order-1", 2,
    )  # fmt: skip
    assert "ignored" not in inner
    assert outer["correlation_id"] == "explicit" and "attempt" not in outer
    assert "spawn_id" not in after and "correlation_id" not in after


def test_a_thread_does_not_carry_the_fields_bound_in_another(json_logs):
    log = logging.getLogger("vx11.example")
    with logs.bound(spawn_id="spawn-0000abcd"):
        thread = threading.Thread(target=log.info, args=("from a thread",))
        thread.start()
        thread.join()
    [line] = json_logs()
    assert "spawn_id" not in line


def test_a_text_line_shows_the_same_fields_as_key_value_pairs(capsys):
    logs.configure(Settings(log_format="text"), "worker")
    with logs.bound(spawn_id="spawn-0000abcd", correlation_id="a b\nc"):
        logging.getLogger("workers.spawner").info("spawn claimed", extra={"attempt": 1})
    [line] = capsys.readouterr().err.splitlines()
    assert " INFO worker[" in line and "workers.spawner: spawn claimed" in line
    assert line.endswith('attempt=1 spawn_id=spawn-0000abcd correlation_id="a b\\nc"')
    with pytest.raises(ValueError):
        json.loads(line)


def test_celerys_task_lines_name_the_spawn_and_never_show_its_arguments_or_result(json_logs):
    """Celery logs these with the task's arguments and result in ``data``; a spawn's task
    id is its uuid."""
    spawn_uuid = "0123abcd-0000-4000-8000-000000000000"
    secret = {"code": "print('secret code')", "stdin": "secret stdin"}
    context = {"id": spawn_uuid, "name": "vx11.spawn", "args": "()", "kwargs": repr(secret)}
    trace.info(trace.LOG_RECEIVED, {**context, "eta": None})
    trace.info(trace.LOG_SUCCESS, {**context, "runtime": 0.25, "return_value": "secret output"})
    received, succeeded = json_logs()
    assert received["message"] == f"Task vx11.spawn[{spawn_uuid}] received"
    assert succeeded["message"] == (
        f"Task vx11.spawn[{spawn_uuid}] succeeded in 0.25s: {logs.CeleryTaskLines.HIDDEN}"
    )
    for line in (received, succeeded):
        assert (line["spawn_id"], line["spawn_uuid"]) == ("spawn-0123abcd", spawn_uuid)
        assert (line["task_id"], line["task_name"]) == (spawn_uuid, "vx11.spawn")
        assert "data" not in line and "secret" not in json.dumps(line)
    assert succeeded["runtime_s"] == 0.25


def test_a_task_is_bound_to_its_spawn_by_the_workers_signal_hooks(json_logs):
    from workers.callbacks import deliver_callback
    from workers.spawner import spawn

    spawn_uuid = "0123abcd-0000-4000-8000-000000000000"
    log = logging.getLogger("workers.spawner")
    kwargs = {"spawn_uuid": spawn_uuid, "correlation_id": "order-1", "attempt": 2, "code": "x"}
    signals.task_prerun.send(sender=spawn, task_id=spawn_uuid, task=spawn, args=(), kwargs=kwargs)
    log.info("in the spawn task")
    signals.task_postrun.send(sender=spawn, task_id=spawn_uuid, task=spawn)
    signals.task_prerun.send(
        sender=deliver_callback, task_id="t-2", task=deliver_callback, args=(spawn_uuid,), kwargs={}
    )
    log.info("in its callback task")
    signals.task_postrun.send(sender=deliver_callback, task_id="t-2", task=deliver_callback)
    log.info("between tasks")
    in_spawn, in_callback, between = [
        line for line in json_logs() if line["logger"] == "workers.spawner"
    ]
    assert {k: in_spawn[k] for k in ("spawn_id", "correlation_id", "attempt", "task_name")} == {
        "spawn_id": "spawn-0123abcd",
        "correlation_id": "order-1",
        "attempt": 2,
        "task_name": "vx11.spawn",
    }
    assert (in_callback["spawn_id"], in_callback["task_id"]) == ("spawn-0123abcd", "t-2")
    assert "code" not in in_spawn and "spawn_id" not in between


# --- the gateway ---------------------------------------------------------------------------


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "vx11.access"]


def gateway_lines(capsys) -> list[dict[str, Any]]:
    return [json.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_each_request_has_an_id_and_one_access_line_with_the_callers_token_id(
    test_config, auth, capsys
):
    client = create_app({**test_config, **JSON}).test_client()
    capsys.readouterr()
    response = client.get("/vx11/spawns?limit=5", headers=auth)
    [line] = access_lines(gateway_lines(capsys))
    assert response.status_code == 200
    assert line["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert line["message"] == "GET /vx11/spawns 200"
    assert (line["method"], line["path"], line["status"]) == ("GET", "/vx11/spawns", 200)
    assert line["token_id"] == "development" and line["duration_ms"] >= 0
    assert "query" not in line and "limit=5" not in json.dumps(line)


def test_a_request_id_from_a_proxy_is_logged_beside_ours_and_never_echoed(test_config, capsys):
    client = create_app({**test_config, **JSON}).test_client()
    given = client.get("/vx11/status", headers={REQUEST_ID_HEADER: "lb-1234.5"})
    odd = client.get("/vx11/status", headers={REQUEST_ID_HEADER: "two words"})
    kept, dropped = access_lines(gateway_lines(capsys))
    assert (kept["client_request_id"], kept["status"], kept["error"]) == (
        "lb-1234.5", 401, "auth_required",
    )  # fmt: skip
    assert kept["request_id"] == given.headers[REQUEST_ID_HEADER] != "lb-1234.5"
    assert "client_request_id" not in dropped
    assert dropped["request_id"] == odd.headers[REQUEST_ID_HEADER]


def test_health_checks_are_logged_at_debug_only(test_config, capsys):
    client = create_app({**test_config, **JSON, "log_level": "INFO"}).test_client()
    capsys.readouterr()
    assert client.get("/health").status_code == 200
    assert access_lines(gateway_lines(capsys)) == []


def test_an_accepted_spawns_lines_carry_its_ids_and_none_of_its_secrets(test_config, auth, capsys):
    client = create_app({**test_config, **JSON}).test_client()
    made = client.post("/vx11/tokens", json={"label": "ci", "scopes": ["spawn"]}, headers=auth)
    assert made.status_code == 201
    token = made.get_json()["token"]
    assert (
        client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth).status_code
        == 200
    )
    capsys.readouterr()
    body = {
        "task_type": "shell",
        "code": "echo code-marker-41",
        "stdin": "stdin-marker-42",
        "args": ["arg-marker-43"],
        "correlation_id": "order-77",
        "metadata": {"note": "metadata-marker-44"},
    }
    response = client.post("/vx11/spawn", json=body, headers={"X-VX11-Token": token})
    accepted = response.get_json()
    assert response.status_code == 200 and accepted["status"] == "QUEUED"
    lines = gateway_lines(capsys)
    [accept] = [line for line in lines if line["message"] == "spawn accepted"]
    [access] = access_lines(lines)
    for line in (accept, access):
        assert line["spawn_id"] == accepted["spawn_id"] == logs.spawn_id_of(accepted["spawn_uuid"])
        assert (line["spawn_uuid"], line["correlation_id"]) == (accepted["spawn_uuid"], "order-77")
        assert line["request_id"] == response.headers[REQUEST_ID_HEADER]
    assert (accept["task_type"], accept["ttl_seconds"]) == ("shell", 30)
    assert access["token_id"] == made.get_json()["token_id"]
    text = json.dumps(lines)
    for secret in (token, "code-marker", "stdin-marker", "arg-marker", "metadata-marker"):
        assert secret not in text


def test_a_refused_request_names_its_error_code_and_no_spawn(test_config, auth, capsys):
    client = create_app({**test_config, **JSON}).test_client()
    capsys.readouterr()
    response = client.post("/vx11/spawn", json={"task_type": "cobol", "code": "x"}, headers=auth)
    [line] = access_lines(gateway_lines(capsys))
    assert (response.status_code, line["status"], line["error"]) == (422, 422, "validation_error")
    assert "spawn_id" not in line


def test_reading_a_spawn_names_it_on_the_access_line(test_config, auth, capsys):
    client = create_app({**test_config, **JSON}).test_client()
    client.post("/vx11/window/open", json={"target": "spawner"}, headers=auth)
    accepted = client.post(
        "/vx11/spawn", json={"task_type": "shell", "code": "true"}, headers=auth
    ).get_json()
    capsys.readouterr()
    by_uuid = client.get(f"/vx11/spawn/{accepted['spawn_uuid']}", headers=auth)
    unknown = client.get("/vx11/spawn/spawn-00000000", headers=auth)
    read, missing = access_lines(gateway_lines(capsys))
    assert (by_uuid.status_code, unknown.status_code) == (200, 404)
    assert (read["spawn_id"], read["spawn_uuid"]) == (accepted["spawn_id"], accepted["spawn_uuid"])
    assert "spawn_id" not in missing and missing["error"] == "not_found"


def test_a_request_path_that_is_not_printable_cannot_forge_a_text_line(test_config, auth, capsys):
    client = create_app(test_config).test_client()  # text, the development default
    capsys.readouterr()
    client.get("/vx11/spawn/x%0AFAKE%20ERROR%20line", headers=auth)
    [line] = [line for line in capsys.readouterr().err.splitlines() if "vx11.access" in line]
    assert "\\n" in line and "FAKE" in line  # on the one line, escaped


# --- settings ------------------------------------------------------------------------------


def test_text_is_the_default_in_development_and_json_in_production():
    assert Settings().effective_log_format == "text"
    assert Settings(env="production").effective_log_format == "json"
    assert Settings(env="production", log_format="text").effective_log_format == "text"
    assert Settings(log_level="warning").log_level == "WARNING"


@pytest.mark.parametrize(("name", "value"), [("log_format", "xml"), ("log_level", "LOUD")])
def test_an_unknown_log_format_or_level_stops_the_process_at_start(name, value):
    with pytest.raises(ValueError, match=f"VX11_{name.upper()}"):
        Settings.from_env({f"VX11_{name.upper()}": value})
