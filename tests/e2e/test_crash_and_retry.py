"""An Idempotency-Key makes one spawn, whatever dies between two tries: a gateway worker
is killed (SIGKILL, by itself, the moment it reaches a step of the accept path), the
client retries with the same key, and the ledger holds one spawn, which runs once.

The gateway runs under real gunicorn with a ``sitecustomize`` of the test's on its path:
a profile hook that kills the process on the first call of the step named by a marker
file, then deletes the marker, so the worker gunicorn starts next serves the retry."""

from __future__ import annotations

import urllib.error
import uuid
from http.client import HTTPException
from pathlib import Path

import pytest
import redis

from tests.support import ROOT, TOKEN, http, start_gateway, wait_for, wait_terminal
from vx11.gateway.idempotency import KEY_PREFIX

pytestmark = pytest.mark.e2e

DIE_AT = """\
import os, signal, sys, threading

MARKER = os.environ["DIE_AT_MARKER"]


def die_at_the_step(frame, event, arg):
    if event != "call" or not os.path.exists(MARKER):
        return
    step = open(MARKER).read().strip()
    module, _, name = step.partition(":")
    if frame.f_code.co_qualname == name and frame.f_globals.get("__name__") == module:
        os.unlink(MARKER)
        os.kill(os.getpid(), signal.SIGKILL)


sys.setprofile(die_at_the_step)
threading.setprofile(die_at_the_step)
"""

STEPS = {
    "before the record": "vx11.core.ledger.store:Ledger.add",
    "between the record and the publish": "vx11.core.dispatch:publish_spawn",
    "between the publish and confirming it": "vx11.core.unpublished:Unpublished.take",
    "before the answer is kept": "vx11.gateway.idempotency:IdempotencyKeys.answer",
}


@pytest.fixture(scope="module")
def dying_gateway(stack, tmp_path_factory):
    """A second gateway on the shared stack, whose workers die at the marked step."""
    hook = tmp_path_factory.mktemp("die-at")
    (hook / "sitecustomize.py").write_text(DIE_AT)
    env = {"PYTHONPATH": f"{hook}:{ROOT}", "DIE_AT_MARKER": str(hook / "step")}
    gateway, base = start_gateway(
        stack.config, stack.log_dir, 1, name="dying-gateway", extra_env=env
    )
    stack.open_window(ttl=3600)
    yield base, hook / "step"
    gateway.stop()


def the_pending_mark_lapses(redis_url: str) -> None:
    """What PENDING_TTL (60 s) does to a key whose request died, without the wait."""
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{KEY_PREFIX}*"):
        if b'"pending"' in (client.get(key) or b""):
            client.delete(key)


@pytest.mark.parametrize("step", list(STEPS))
def test_a_key_retried_after_its_gateway_died_at_any_step_makes_one_spawn(
    stack, dying_gateway, step
):
    base, marker = dying_gateway
    tag = f"crash-{uuid.uuid4().hex[:8]}"
    body = {"task_type": "shell", "code": f"echo {tag}", "correlation_id": tag}
    headers = {**TOKEN, "Idempotency-Key": tag}
    Path(marker).write_text(STEPS[step])

    with pytest.raises((OSError, HTTPException, urllib.error.URLError)):
        http("POST", f"{base}/vx11/spawn", body, headers)  # the worker dies mid-request
    assert not Path(marker).exists(), "the gateway never reached the step"
    the_pending_mark_lapses(stack.redis.url)

    retry = wait_for(lambda: _answered(base, body, headers), timeout=30)
    assert retry["status"] == "QUEUED" and retry["error"] is None
    status, page = http("GET", f"{stack.base}/vx11/spawns?correlation_id={tag}", headers=TOKEN)
    assert status == 200 and len(page["spawns"]) == 1, page
    (spawn,) = page["spawns"]
    assert spawn["spawn_id"] == retry["spawn_id"]
    record = wait_terminal(stack.base, spawn["spawn_id"])
    assert (record["status"], record["stdout"], record["attempts"]) == ("DONE", f"{tag}\n", 1)
    again = http("POST", f"{base}/vx11/spawn", body, headers)
    assert again == (200, retry)


def _answered(base: str, body: dict, headers: dict) -> dict | None:
    """The retry's answer, once gunicorn has a worker to serve it again."""
    try:
        status, answer = http("POST", f"{base}/vx11/spawn", body, headers)
    except (OSError, HTTPException):
        return None
    assert status == 200, answer
    return answer
