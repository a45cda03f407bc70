"""A real VX11 for end-to-end tests: its own redis-servers (one for policy and results,
one as the broker, so the broker can fail alone), gunicorn and a Celery worker. Each test
module gets one (:func:`stack`), configured by its :func:`stack_settings`.

With ``VX11_TEST_BROKER_URL`` set to a RabbitMQ (``.ci/run``'s second run), the broker is
that RabbitMQ instead, in a virtual host of each test module's own, reached through a
relay the tests can stop (:class:`tests.support.BrokerProxy`); Redis still holds the
windows, tokens and results. Tests that only mean something with a Redis broker are
skipped then, each with its reason."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import (
    BROKER_URL,
    MODULE_BROKER,
    TOKEN,
    BrokerProxy,
    Process,
    RabbitVhost,
    RedisServer,
    free_port,
    http,
    is_amqp,
    start_gateway,
    start_worker,
)

REDIS_BROKER_ONLY = {
    "test_scale.py::test_a_thousand_spawns_from_fifty_clients_all_end_and_agree_everywhere": (
        "reads the jobs the Redis broker holds, which RabbitMQ shows to no one"
    ),
    "test_scale.py::test_queued_spawns_survive_a_restart_of_the_gateway_and_of_every_worker": (
        "counts the jobs the Redis broker holds, which RabbitMQ shows to no one"
    ),
    "test_scale.py::test_a_spawn_whose_gateway_worker_dies_between_record_and_publish_still_ends": (
        "freezes the broker's process, and this RabbitMQ is the machine's, not the test's"
    ),
    "test_chaos.py": "its private Redis is the broker too: killing that Redis is the point",
    "test_multihost.py": (
        "its Redis, reached over the test hosts' own network, is the broker too, and it "
        "reads the jobs that broker holds"
    ),
}
"""Tests that only mean something with a Redis broker: under RabbitMQ they are skipped,
with these reasons (a node id's start, from this directory, to its reason)."""


def pytest_collection_modifyitems(config, items) -> None:
    if not BROKER_URL:
        return
    here = Path(__file__).parent
    for item in items:
        if item.path.parent != here:
            continue
        node = f"{item.path.name}::{item.name.split('[', 1)[0]}"
        for start, reason in REDIS_BROKER_ONLY.items():
            if node == start or node.startswith(f"{start}::"):
                item.add_marker(pytest.mark.skip(reason=f"Redis-broker test: {reason}"))


@pytest.fixture(scope="module", autouse=True)
def rabbitmq_vhost():
    """With ``VX11_TEST_BROKER_URL`` set, a RabbitMQ vhost of this module's own: the broker
    of every service it starts (its stack's, and any started without a ``broker_url``)."""
    if not BROKER_URL:
        yield None
        return
    if not is_amqp(BROKER_URL):
        raise pytest.UsageError(
            f"VX11_TEST_BROKER_URL must be a RabbitMQ (amqp://), not {BROKER_URL}"
        )
    vhost = RabbitVhost(BROKER_URL).create()
    MODULE_BROKER["url"] = vhost.url
    try:
        yield vhost
    finally:
        MODULE_BROKER.clear()
        vhost.delete()


@dataclass
class Stack:
    base: str
    config: dict[str, str]
    redis: RedisServer
    broker: RedisServer | BrokerProxy
    gateway: Process
    worker: Process
    log_dir: Path
    metrics_dir: Path
    """The gateway's prometheus-client multiprocess directory, as ``vx11 up`` gives it."""

    def open_window(self, ttl: int = 600) -> dict:
        status, window = http(
            "POST", f"{self.base}/vx11/window/open", {"target": "spawner", "ttl_seconds": ttl},
            TOKEN,
        )  # fmt: skip
        assert status == 200, window
        return window

    def spawn(self, task_type: str, code: str, **fields) -> dict:
        body = {"task_type": task_type, "code": code, **fields}
        status, accepted = http("POST", f"{self.base}/vx11/spawn", body, TOKEN)
        assert status == 200, accepted
        return accepted


@pytest.fixture(scope="module")
def stack_settings() -> dict[str, str]:
    """Settings (``VX11_*`` without the prefix, lower case) of this module's :func:`stack`,
    over its own: a module that needs others overrides this fixture, module-scoped."""
    return {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, rabbitmq_vhost, stack_settings) -> Stack:
    """A real VX11 of the module's own, started with :func:`stack_settings`. Tests may stop
    or replace its gateway and worker: the stack's end stops whichever runs then."""
    root = tmp_path_factory.mktemp("stack")
    # Sandboxed code runs as nobody, who cannot traverse pytest's private temp dir.
    sandbox_root = tempfile.mkdtemp(prefix="vx11-e2e-sandbox-")
    os.chmod(sandbox_root, 0o711)
    redis = RedisServer(free_port(), root / "redis").start()
    if rabbitmq_vhost is None:
        broker = RedisServer(free_port(), root / "broker").start()
    else:
        broker = BrokerProxy(rabbitmq_vhost.url).start()
    config = {
        "redis_url": redis.url,
        "broker_url": broker.url,
        "result_backend": redis.url,
        "data_dir": str(root / "data"),
        "database_url": f"sqlite:///{root / 'ledger.db'}",
        "sandbox_root": sandbox_root,
        "test_secret": "s3cr3t-worker-only",
        **stack_settings,
    }
    metrics_dir = root / "metrics"
    metrics_dir.mkdir()
    worker = gateway = None
    try:
        worker = start_worker(config, root)
        gateway, base = start_gateway(config, root, metrics_dir=metrics_dir)
        stack = Stack(base, config, redis, broker, gateway, worker, root, metrics_dir)
        yield stack
        # Tests replace the worker (restarts, kills): stop whichever runs now, too.
        stack.gateway.stop()
        stack.worker.stop()
    finally:
        for process in (gateway, worker, broker, redis):
            if process is not None:
                process.stop()
        shutil.rmtree(sandbox_root, ignore_errors=True)


@pytest.fixture(scope="module", params=["bwrap", "basic"])
def worker_level(request, stack, tmp_path_factory) -> Iterator[str]:
    """Each sandbox level in turn, as the stack's only worker runs it: the stack's own
    (bwrap where it works), then one at the basic level in its place."""
    if request.param == "bwrap":
        yield request.param
        return
    stack.worker.shut_down()
    basic = start_worker(
        {**stack.config, "sandbox": "basic"}, tmp_path_factory.mktemp("basic"), name="basic"
    )
    try:
        yield request.param
    finally:
        basic.stop()
