"""Result callbacks end to end: gunicorn, a Celery worker consuming the spawner and
callbacks queues (the shared stack's, with callbacks configured), and a receiver the test
runs on 127.0.0.1 (the only address any of it talks to)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.integration.test_callbacks import Receiver
from tests.support import TOKEN, http, wait_for, wait_terminal
from vx11.core.callbacks import verify

pytestmark = pytest.mark.e2e

SECRET = "e2e-callback-secret"
BACKOFF = 0.2
MAX_ATTEMPTS = 3


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    return {
        "callback_secret": SECRET,
        "callback_allowed_hosts": "127.0.0.1",
        "callback_allow_private": "127.0.0.0/8",
        "callback_backoff_base": str(BACKOFF),
        "callback_max_attempts": str(MAX_ATTEMPTS),
        "callback_timeout": "2",
    }


@pytest.fixture(scope="module", autouse=True)
def window(stack) -> None:
    stack.open_window(ttl=3600)


def spawn_with_callback(stack, url: str, code: str = "echo called back") -> dict[str, Any]:
    accepted = stack.spawn("shell", code, callback_url=url)
    assert accepted["status"] == "QUEUED", accepted
    return accepted


def delivered_or_failed(stack, spawn_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """The spawn's record once its callback's last attempt is recorded."""

    def settled():
        status, record = http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)
        assert status == 200, record
        last = (record["callbacks"] or [{}])[-1]
        return record if last.get("outcome") in ("delivered", "failed") else None

    return wait_for(settled, timeout=timeout, interval=0.1)


def signed(request: dict[str, Any]) -> bool:
    headers = request["headers"]
    return verify(
        SECRET, request["body"], headers.get("X-VX11-Timestamp"), headers.get("X-VX11-Signature")
    )


def test_a_finished_spawn_is_posted_once_signed_to_its_callback(stack):
    with Receiver() as receiver:
        accepted = spawn_with_callback(stack, receiver.url("/hooks/vx11?from=e2e"))
        record = delivered_or_failed(stack, accepted["spawn_id"])
        time.sleep(1.0)  # room for a second POST, which must not come
    [request] = receiver.requests
    assert request["path"] == "/hooks/vx11?from=e2e"
    assert signed(request)
    body = json.loads(request["body"])
    assert body["status"] == "DONE" and body["stdout"] == "called back\n"
    # The callback carries the record without its deliveries and without the code its
    # receiver submitted (the single-record GET shows it).
    detail_only = ("callbacks", "code", "files", "encoding")  # a read's, not a callback's
    assert body == {k: v for k, v in record.items() if k not in detail_only}
    [delivery] = record["callbacks"]
    assert delivery["attempt"] == 1
    assert delivery["status_code"] == 200 and delivery["outcome"] == "delivered"


def test_a_receiver_failing_twice_gets_the_record_on_the_third_attempt_after_backoff(stack):
    with Receiver([500, 500]) as receiver:
        accepted = spawn_with_callback(stack, receiver.url())
        record = delivered_or_failed(stack, accepted["spawn_id"])
    assert [(d["attempt"], d["status_code"], d["outcome"]) for d in record["callbacks"]] == [
        (1, 500, "retrying"),
        (2, 500, "retrying"),
        (3, 200, "delivered"),
    ]
    assert [d.get("retry_in") for d in record["callbacks"]] == [BACKOFF, 2 * BACKOFF, None]
    assert len(receiver.requests) == 3
    assert all(signed(request) for request in receiver.requests)
    assert len({request["body"] for request in receiver.requests}) == 1  # the same record
    first, second, third = (request["at"] for request in receiver.requests)
    assert second - first >= BACKOFF * 0.9
    assert third - second >= 2 * BACKOFF * 0.9


def test_a_receiver_that_keeps_failing_is_given_up_after_the_last_attempt(stack):
    with Receiver([503] * 10) as receiver:
        accepted = spawn_with_callback(stack, receiver.url(), code="exit 3")
        record = delivered_or_failed(stack, accepted["spawn_id"])
        time.sleep(1.0)  # no fourth attempt
    assert record["status"] == "FAILED"  # a failed spawn is called back like any other
    assert [d["outcome"] for d in record["callbacks"]] == ["retrying", "retrying", "failed"]
    assert len(receiver.requests) == MAX_ATTEMPTS


def test_a_4xx_answer_is_final(stack):
    with Receiver([404]) as receiver:
        accepted = spawn_with_callback(stack, receiver.url())
        record = delivered_or_failed(stack, accepted["spawn_id"])
        time.sleep(1.0)
    [delivery] = record["callbacks"]
    assert (delivery["status_code"], delivery["outcome"]) == (404, "failed")
    assert len(receiver.requests) == 1


def test_the_gateway_refuses_a_host_off_the_allow_list(stack):
    body = {"task_type": "shell", "code": "true", "callback_url": "http://localhost:9/hook"}
    status, refused = http("POST", f"{stack.base}/vx11/spawn", body, TOKEN)
    assert status == 422
    assert "callback_url" in refused["fields"]


def test_a_spawn_without_a_callback_url_runs_as_before(stack):
    status, accepted = http(
        "POST", f"{stack.base}/vx11/spawn", {"task_type": "shell", "code": "echo plain"}, TOKEN
    )
    assert status == 200, accepted
    record = wait_terminal(stack.base, accepted["spawn_id"])
    assert record["status"] == "DONE" and record["callbacks"] is None
