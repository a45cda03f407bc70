"""Logs that correlate, end to end: the shared stack's gunicorn and Celery worker logging
JSON (at DEBUG, the most they ever say), one spawn with a correlation id and a callback,
then the two log files, read as an operator's log collector would read them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest

from tests.integration.test_callbacks import Receiver
from tests.support import TOKEN, http, wait_for

pytestmark = pytest.mark.e2e

CODE_MARKER = "vx11-code-7f3a"
STDIN_MARKER = "vx11-stdin-51c2"
ARG_MARKER = "vx11-arg-9d04"
OUTPUT_MARKER = "vx11-output-e6b8"
CALLBACK_SECRET = "vx11-callback-secret-2a77"
# The output is computed, so that it appears nowhere in the code, stdin or arguments.
CODE = f"""
import sys
# {CODE_MARKER}
sys.stdin.read()
print("vx11-out" + "put-e6b8", sys.argv[1:])
print("vx11-out" + "put-e6b8", file=sys.stderr)
"""
CORRELATION_ID = "order-1234/logs"

CELERY_SHUTDOWN_NOTICE = {"", "worker: Warm shutdown (MainProcess)"}
"""What Celery writes straight to stdout, outside logging, when it is stopped (in a
signal handler, where logging could deadlock): the one text the worker's output may
hold besides JSON lines (docs/operations.md, "Logs")."""


@dataclass
class Followed:
    """One spawn's run, and the logs of the gateway and the worker that served it."""

    spawn: dict[str, Any]
    token: str
    token_id: str
    gateway_log: str
    worker_log: str

    def lines(self, log: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in log.splitlines() if line not in CELERY_SHUTDOWN_NOTICE]

    def about_the_spawn(self, log: str) -> list[dict[str, Any]]:
        return [line for line in self.lines(log) if line.get("spawn_id") == self.spawn["spawn_id"]]


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    return {
        "log_format": "json",
        "log_level": "DEBUG",
        "callback_secret": CALLBACK_SECRET,
        "callback_allowed_hosts": "127.0.0.1",
        "callback_allow_private": "127.0.0.0/8",
    }


@pytest.fixture(scope="module")
def followed(stack) -> Followed:
    """The spawn, run on the module's stack, whose gateway and worker are then stopped:
    their logs are read whole, to their last line."""
    with Receiver() as receiver:
        status, _ = http("POST", f"{stack.base}/vx11/window/open", {"target": "spawner"}, TOKEN)
        assert status == 200
        status, made = http(
            "POST", f"{stack.base}/vx11/tokens", {"label": "logs", "scopes": ["spawn", "read"]},
            TOKEN,
        )  # fmt: skip
        assert status == 201, made
        mine = {"X-VX11-Token": made["token"]}
        body = {
            "task_type": "python",
            "code": CODE,
            "stdin": STDIN_MARKER,
            "args": [ARG_MARKER],
            "correlation_id": CORRELATION_ID,
            "callback_url": receiver.url("/hook"),
        }
        status, accepted = http("POST", f"{stack.base}/vx11/spawn", body, mine)
        assert status == 200 and accepted["status"] == "QUEUED", accepted

        def called_back():
            record = http("GET", f"{stack.base}/vx11/spawn/{accepted['spawn_id']}", headers=mine)[1]
            return record if (record["callbacks"] or [{}])[-1].get("outcome") else None

        record = wait_for(called_back, timeout=90, interval=0.2)
        assert record["status"] == "DONE" and OUTPUT_MARKER in record["stdout"]
        assert record["callbacks"][-1]["outcome"] == "delivered"
    stack.gateway.stop()
    stack.worker.stop()
    return Followed(
        record, made["token"], made["token_id"], stack.gateway.log(), stack.worker.log()
    )


def test_every_line_of_gunicorn_the_gateway_and_the_worker_is_one_json_object(followed):
    gateway, worker = followed.lines(followed.gateway_log), followed.lines(followed.worker_log)
    for line in gateway + worker:
        assert {"time", "level", "logger", "message", "service", "process"} <= line.keys()
        assert line["time"].endswith("Z")
    assert {line["service"] for line in gateway} == {"gateway"}
    assert {line["service"] for line in worker} == {"worker"}
    gateway_loggers = {line["logger"] for line in gateway}
    assert {"gunicorn.error", "vx11.access", "vx11.gateway.submit"} <= gateway_loggers
    assert any(line["message"].startswith("Booting worker") for line in gateway)
    worker_loggers = {line["logger"] for line in worker}
    assert {"celery.worker.strategy", "celery.app.trace", "workers.spawner"} <= worker_loggers
    assert any(line["message"].endswith(" ready.") for line in worker)
    assert not any("-------------- " in line["message"] for line in worker)  # no banner


def test_one_spawn_id_follows_the_job_from_its_request_to_its_callback(followed):
    spawn_uuid = followed.spawn["spawn_uuid"]
    gateway = followed.about_the_spawn(followed.gateway_log)
    worker = followed.about_the_spawn(followed.worker_log)

    [accepted] = [line for line in gateway if line["logger"] == "vx11.gateway.submit"]
    assert accepted["message"] == "spawn accepted"
    assert (accepted["spawn_uuid"], accepted["correlation_id"]) == (spawn_uuid, CORRELATION_ID)
    [request] = [line for line in gateway if line.get("path") == "/vx11/spawn"]
    assert (request["method"], request["status"], request["token_id"]) == (
        "POST", 200, followed.token_id,
    )  # fmt: skip
    assert request["request_id"] == accepted["request_id"]
    assert request["correlation_id"] == CORRELATION_ID and request["duration_ms"] >= 0
    reads = [line for line in gateway if line.get("path", "").startswith("/vx11/spawn/")]
    assert reads and {line["status"] for line in reads} == {200}

    def first(what: str) -> tuple[int, dict[str, Any]]:
        found = [(i, line) for i, line in enumerate(worker) if what in line["message"]]
        assert found, f"no worker line about the spawn says {what!r}"
        return found[0]

    steps = [
        first(f"Task vx11.spawn[{spawn_uuid}] received"),
        first(f"spawn {spawn_uuid} claimed"),
        first(f"spawn {spawn_uuid} DONE (exit 0)"),
        first(f"Task vx11.spawn[{spawn_uuid}] succeeded"),
        first(f"callback of spawn {spawn_uuid}, attempt 1"),
    ]
    positions = [position for position, _ in steps]
    assert positions == sorted(positions), [line["message"] for _, line in steps]
    times = [accepted["time"], *(line["time"] for _, line in steps)]
    assert times == sorted(times)  # the accept line is written before the job is published

    _, claimed = steps[1]
    _, finished = steps[2]
    for line in (claimed, finished):
        assert (line["spawn_uuid"], line["correlation_id"]) == (spawn_uuid, CORRELATION_ID)
        assert (line["task_id"], line["attempt"]) == (spawn_uuid, 1)
    assert claimed["worker"].startswith("worker@")
    assert (finished["state"], finished["exit_code"], finished["reason"]) == ("DONE", 0, None)
    assert finished["duration_ms"] == followed.spawn["duration_ms"]
    assert finished["sandbox"] == followed.spawn["sandbox"]
    _, callback = steps[4]
    assert callback["task_name"] == "vx11.callback"
    assert callback["process"] != steps[0][1]["process"]  # run by the pool, not the consumer


def test_no_token_code_stdin_argument_output_or_secret_is_ever_logged(followed):
    logs = followed.gateway_log + followed.worker_log
    secrets = {
        "the caller's token": followed.token,
        "the development token": TOKEN["X-VX11-Token"],
        "the code": CODE_MARKER,
        "the stdin": STDIN_MARKER,
        "an argument": ARG_MARKER,
        "the output": OUTPUT_MARKER,
        "the callback secret": CALLBACK_SECRET,
    }
    assert [what for what, secret in secrets.items() if secret in logs] == []
    hidden = [
        line for line in followed.lines(followed.worker_log) if "[not logged]" in line["message"]
    ]
    assert hidden  # Celery's "succeeded" line, its result (the output) replaced
