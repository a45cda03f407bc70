"""The broker, whichever it is: a private Redis by default; RabbitMQ, in a vhost of this
module's own, when ``VX11_TEST_BROKER_URL`` is set (``.ci/run``'s second run)."""

from __future__ import annotations

import time

import pytest

from tests.support import BROKER_URL, TOKEN, http, service_env, wait_for, wait_terminal
from vx11.core.config import Settings
from vx11.core.dispatch import TIME_LIMIT_MARGIN

pytestmark = pytest.mark.e2e

rabbitmq_only = pytest.mark.skipif(
    not BROKER_URL,
    reason="RabbitMQ not configured: set VX11_TEST_BROKER_URL=amqp://... (.ci/run does)",
)


def status_of(stack, spawn_id: str) -> str:
    return http("GET", f"{stack.base}/vx11/spawn/{spawn_id}", headers=TOKEN)[1]["status"]


def test_a_broker_connection_lost_mid_spawn_never_runs_it_twice(stack):
    stack.open_window()
    accepted = stack.spawn("shell", "sleep 6; echo ran", max_retries=1, ttl_seconds=60)
    wait_for(lambda: status_of(stack, accepted["spawn_id"]) == "RUNNING", timeout=30)
    stack.broker.stop()  # every connection to the broker closes; new ones are refused
    time.sleep(1)
    stack.broker.start()
    record = wait_terminal(stack.base, accepted["spawn_id"], timeout=90)
    assert (record["status"], record["stdout"], record["attempts"]) == ("DONE", "ran\n", 1)


@rabbitmq_only
def test_rabbitmq_keeps_the_queues_durable_and_lets_the_longest_spawn_finish(stack, rabbitmq_vhost):
    stack.open_window()
    wait_terminal(stack.base, stack.spawn("shell", "echo declared")["spawn_id"])
    queues = rabbitmq_vhost.queues()
    for name in ("spawner", "callbacks"):
        assert queues[name]["durable"], name  # jobs survive a RabbitMQ restart
        assert queues[name]["arguments"].get("x-queue-type", "classic") == "classic", name
    # RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer
    # timeout (30 min by default), and the worker stops: the spawner consumer asks for
    # more than the longest spawn may run (honoured by RabbitMQ 3.12 and later).
    longest_ms = (
        Settings.from_env(service_env(stack.config)).spawn_max_ttl + TIME_LIMIT_MARGIN
    ) * 1000
    consumers = rabbitmq_vhost.consumers()
    timeouts = [
        args.get("x-consumer-timeout", 0) for queue, args in consumers if queue == "spawner"
    ]
    assert timeouts and min(timeouts) > longest_ms, consumers
