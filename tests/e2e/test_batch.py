"""``POST /vx11/spawns/batch`` against a real gateway and worker: each item answered in
order as ``POST /vx11/spawn`` would have (accepted, refused by policy, or its own error,
with its status code), each one request against the token's rate and one audit entry;
an Idempotency-Key covering the whole batch; and a batch over the maximum refused."""

from __future__ import annotations

import uuid

import pytest

from tests.support import TOKEN, http, wait_terminal
from vx11.core.config import Settings

pytestmark = pytest.mark.e2e

MAX_BATCH = Settings().max_batch


def batch(stack, spawns: list[dict], headers: dict | None = None) -> tuple[int, dict]:
    return http(
        "POST", f"{stack.base}/vx11/spawns/batch", {"spawns": spawns}, {**TOKEN, **(headers or {})}
    )


def test_each_item_is_answered_in_order_as_a_single_request_would_be(stack):
    stack.open_window()
    tag = uuid.uuid4().hex[:12]
    status, answer = batch(stack, [
        {"task_type": "python", "code": "print('one')", "correlation_id": tag},
        {"task_type": "cobol", "code": "x"},
        {"task_type": "shell", "code": "echo three", "correlation_id": tag},
    ])  # fmt: skip
    assert status == 200, answer
    first, bad, third = answer["results"]
    assert (first["status_code"], first["status"], first["error"]) == (200, "QUEUED", None)
    assert (bad["status_code"], bad["error"]) == (422, "validation_error")
    assert "task_type" in bad["fields"]
    assert third["status_code"] == 200 and third["spawn_id"] != first["spawn_id"]
    outputs = [wait_terminal(stack.base, r["spawn_id"])["stdout"] for r in (first, third)]
    assert outputs == ["one\n", "three\n"]
    status, audit = http(
        "GET", f"{stack.base}/vx11/audit?event=spawn_accepted&limit=200", None, TOKEN
    )
    assert status == 200, audit
    audited = {e["spawn_id"] for e in audit["entries"]}
    assert {first["spawn_id"], third["spawn_id"]} <= audited


def test_with_the_window_closed_every_item_is_refused_by_policy(stack):
    http("POST", f"{stack.base}/vx11/window/close", {"target": "spawner"}, TOKEN)
    status, answer = batch(stack, [{"task_type": "shell", "code": "true"}] * 2)
    assert status == 200, answer
    for result in answer["results"]:
        assert (result["status_code"], result["status"], result["error"]) == (
            200, "ERROR", "off_by_policy",
        )  # fmt: skip
        assert result["spawn_id"] is None


def test_each_item_counts_against_the_tokens_rate(stack):
    stack.open_window()
    body = {"label": "batcher", "scopes": ["spawn"], "rate_limit_per_second": 0.2}
    status, made = http("POST", f"{stack.base}/vx11/tokens", body, TOKEN)
    assert status == 201, made
    token = {"X-VX11-Token": made["token"]}
    status, answer = http(
        "POST", f"{stack.base}/vx11/spawns/batch",
        {"spawns": [{"task_type": "shell", "code": "true"}] * 3}, token,
    )  # fmt: skip
    assert status == 200, answer
    codes = [(r["status_code"], r["error"]) for r in answer["results"]]
    assert codes[0] == (200, None)
    assert (429, "rate_limited") in codes[1:], codes


def test_an_idempotency_key_covers_the_whole_batch(stack):
    stack.open_window()
    tag = uuid.uuid4().hex[:12]
    spawns = [{"task_type": "shell", "code": f"echo {i}", "correlation_id": tag} for i in range(3)]
    key = {"Idempotency-Key": f"batch-{tag}"}
    first_status, first = batch(stack, spawns, key)
    again_status, again = batch(stack, spawns, key)
    assert (first_status, again_status) == (200, 200)
    assert again == first
    status, page = http("GET", f"{stack.base}/vx11/spawns?correlation_id={tag}", None, TOKEN)
    assert status == 200 and len(page["spawns"]) == 3, page
    other_status, other = batch(stack, spawns[:1], key)
    assert (other_status, other["error"]) == (409, "idempotency_key_reused")


@pytest.mark.parametrize("count", [0, MAX_BATCH + 1])
def test_an_empty_or_oversized_batch_is_a_422(stack, count):
    stack.open_window()
    status, answer = batch(stack, [{"task_type": "shell", "code": "true"}] * count)
    assert status == 422 and "spawns" in answer["fields"], answer


def test_a_batch_that_is_not_a_list_of_objects_is_a_422(stack):
    stack.open_window()
    status, answer = http("POST", f"{stack.base}/vx11/spawns/batch", {"spawns": ["echo"]}, TOKEN)
    assert status == 422, answer
