"""One rate count per token across gateway replicas: two gunicorn gateways (two workers
each) on one Redis and one ledger, hammered at once with one token, let through no more
than one gateway alone would.

The bound is counted, not timed: a moving window of ``n`` per ``m`` seconds lets at most
``n`` requests through in any ``m``-second span, so over a hammering that lasted ``T``
seconds at most ``n * (floor(T / m) + 1)`` are accepted, whichever gateway served them;
two separate counts would let nearly twice that through."""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from http.client import HTTPConnection

import pytest

from tests.support import TOKEN, http, start_gateway

pytestmark = pytest.mark.e2e

RATE = 5
"""The gateways' default rate limit, requests per second."""
THREADS_PER_GATEWAY = 4
SPAWN = b'{"task_type": "shell", "code": "true"}'


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    return {"rate_limit_per_second": str(RATE)}


@pytest.fixture(scope="module")
def gateways(stack) -> list[str]:
    """The base URLs of two gateways sharing a Redis and a ledger: the stack's, and a second
    one started here; the spawner window is open and no worker runs (the stack's is shut
    down), so every accepted spawn stays QUEUED."""
    stack.worker.shut_down()
    second, base = start_gateway(stack.config, stack.log_dir, name="gateway-b")
    try:
        stack.open_window(ttl=3600)
        yield [stack.base, base]
    finally:
        second.stop()


def new_token(base: str, **limits) -> dict[str, str]:
    body = {"label": "hammer", "scopes": ["spawn"], **limits}
    status, made = http("POST", f"{base}/vx11/tokens", body, TOKEN)
    assert status == 201, made
    return {"X-VX11-Token": made["token"]}


def hammer(bases: list[str], token: dict[str, str], *, requests: int = 0, seconds: float = 0):
    """POST spawns to every gateway at once, from :data:`THREADS_PER_GATEWAY` keep-alive
    connections each: ``requests`` per connection, or for ``seconds``. Returns the count
    of each ``(gateway, status, error)`` and the seconds from the first send to the
    last answer."""
    answers: Counter = Counter()
    lock = threading.Lock()
    headers = {**token, "Content-Type": "application/json"}
    begun = time.monotonic()

    def client(index: int, base: str) -> None:
        host, port = base.removeprefix("http://").rsplit(":", 1)
        conn = HTTPConnection(host, int(port), timeout=30)
        sent = 0
        try:
            while (sent < requests) if requests else (time.monotonic() - begun < seconds):
                conn.request("POST", "/vx11/spawn", body=SPAWN, headers=headers)
                response = conn.getresponse()
                body = response.read()
                error = b"rate_limited" if b"rate_limited" in body else None
                with lock:
                    answers[(index, response.status, error)] += 1
                sent += 1
        finally:
            conn.close()

    threads = [
        threading.Thread(target=client, args=(index, base))
        for index, base in enumerate(bases)
        for _ in range(THREADS_PER_GATEWAY)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers, time.monotonic() - begun


def accepted_by(answers: Counter, gateway: int | None = None) -> int:
    return sum(
        n
        for (index, status, _error), n in answers.items()
        if status == 200 and (gateway is None or index == gateway)
    )


def queued_spawns(base: str, token: dict[str, str]) -> int:
    status, page = http("GET", f"{base}/vx11/spawns?status=QUEUED&limit=200", headers=token)
    assert status == 200, page
    return len(page["spawns"])


def show(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[limits] {line}")


def test_two_gateways_share_one_count_per_token(gateways, capsys):
    token = new_token(gateways[0], rate_limit_per_second=0.9)  # 9 in any 10 s
    answers, seconds = hammer(gateways, token, requests=10)
    accepted = accepted_by(answers)
    refused = sum(n for (_, status, error), n in answers.items() if status == 429 and error)
    assert accepted + refused == sum(answers.values()) == 2 * THREADS_PER_GATEWAY * 10
    assert 9 <= accepted <= 9 * (math.floor(seconds / 10) + 1)
    assert queued_spawns(gateways[1], token) == accepted
    show(capsys, f"rate 9 per 10 s, 80 requests over 2 gateways in {seconds:.1f} s: "
                 f"{accepted} accepted ({accepted_by(answers, 0)} + {accepted_by(answers, 1)})"
                 f", {refused} refused 429 rate_limited")  # fmt: skip


def test_over_three_seconds_two_gateways_accept_what_one_rate_allows(gateways, capsys):
    token = new_token(gateways[0])  # the gateways' default: RATE per second
    answers, seconds = hammer(gateways, token, seconds=3)
    accepted = accepted_by(answers)
    refused = sum(n for (_, status, error), n in answers.items() if status == 429 and error)
    assert accepted + refused == sum(answers.values())
    assert RATE <= accepted <= RATE * (math.floor(seconds) + 1)
    assert queued_spawns(gateways[0], token) == accepted
    show(capsys, f"rate {RATE}/s, hammered for {seconds:.1f} s by {2 * THREADS_PER_GATEWAY} "
                 f"connections over 2 gateways: {accepted} accepted ({accepted_by(answers, 0)} "
                 f"+ {accepted_by(answers, 1)}), {refused} refused 429 rate_limited; one "
                 f"count allows at most {RATE * (math.floor(seconds) + 1)}")  # fmt: skip
