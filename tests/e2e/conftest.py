"""A real VX11 for end-to-end tests: its own redis-servers (one for policy and results,
one as the broker, so the broker can fail alone), gunicorn and a Celery worker."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import TOKEN, Process, RedisServer, free_port, http, start_gateway, start_worker


@dataclass
class Stack:
    base: str
    config: dict[str, str]
    redis: RedisServer
    broker: RedisServer
    gateway: Process
    worker: Process
    log_dir: Path

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
def stack(tmp_path_factory) -> Stack:
    root = tmp_path_factory.mktemp("stack")
    # Sandboxed code runs as nobody, who cannot traverse pytest's private temp dir.
    sandbox_root = tempfile.mkdtemp(prefix="vx11-e2e-sandbox-")
    os.chmod(sandbox_root, 0o711)
    redis = RedisServer(free_port(), root / "redis").start()
    broker = RedisServer(free_port(), root / "broker").start()
    config = {
        "redis_url": redis.url,
        "broker_url": broker.url,
        "result_backend": redis.url,
        "data_dir": str(root / "data"),
        "database_url": f"sqlite:///{root / 'ledger.db'}",
        "sandbox_root": sandbox_root,
        "test_secret": "s3cr3t-worker-only",
    }
    worker = start_worker(config, root)
    gateway, base = start_gateway(config, root)
    stack = Stack(base, config, redis, broker, gateway, worker, root)
    yield stack
    # Tests replace the worker (restarts, kills): stop whichever runs now, too.
    for process in (stack.gateway, stack.worker, gateway, worker, broker, redis):
        process.stop()
    shutil.rmtree(sandbox_root, ignore_errors=True)
