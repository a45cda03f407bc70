"""Real services for the tests: a private redis-server, gunicorn and Celery workers as
subprocesses, an HTTP helper and waiting helpers. Whoever starts a process stops it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from vx11.stack import gunicorn_argv, redis_server_argv, worker_argv

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("VX11_TEST_DATABASE_URL")
DATABASES = [
    "sqlite",
    pytest.param(
        "postgresql",
        marks=pytest.mark.skipif(
            not PG_URL, reason="PostgreSQL not configured: set VX11_TEST_DATABASE_URL"
        ),
    ),
]
"""Parameters of a fixture that runs its tests on SQLite, and on PostgreSQL when it is
configured (``.ci/run`` configures it)."""
TOKEN = {"X-VX11-Token": "vx11-test-token"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error!r})")


class Process:
    """A subprocess in its own session, logging to a file, stopped with its whole group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.proc = subprocess.Popen(
            self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        with contextlib.suppress(ProcessLookupError):  # leftovers of its group (pool children)
            os.killpg(self.proc.pid, signal.SIGKILL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def shut_down(self, timeout: float = 60.0) -> None:
        """SIGTERM to the main process alone, as ``vx11 up`` and a container's init send it:
        Celery's warm shutdown lets running tasks finish. (:meth:`stop` signals the whole
        group, and a Celery pool process SIGTERMed itself dies mid-task.)"""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        self.stop()


class RedisServer(Process):
    def __init__(self, port: int, data_dir: Path) -> None:
        self.port = port
        super().__init__(
            f"redis-{port}", redis_server_argv(port, data_dir), dict(os.environ), data_dir
        )
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> RedisServer:
        super().start()
        wait_for(lambda: redis.Redis.from_url(self.url).ping(), timeout=15)
        return self


def service_env(config: dict[str, str]) -> dict[str, str]:
    """The environment of a gateway or worker subprocess configured by ``config``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VX11_")}
    env.update({f"VX11_{key.upper()}": str(value) for key, value in config.items()})
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_gateway(config: dict[str, str], log_dir: Path, workers: int = 2) -> tuple[Process, str]:
    port = free_port()
    gateway = Process(
        "gateway", gunicorn_argv("127.0.0.1", port, workers, 4), service_env(config), log_dir
    ).start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http("GET", f"{base}/health")[0] == 200, timeout=30)
    return gateway, base


def start_worker(
    config: dict[str, str], log_dir: Path, name: str = "worker", concurrency: int = 2
) -> Process:
    argv = worker_argv(concurrency, config.get("spawn_queue", "spawner"))
    argv[argv.index("vx11@%h")] = f"{name}@%h"
    worker = Process(name, argv, service_env(config), log_dir).start()
    wait_for(lambda: "ready." in worker.log() or not worker.alive(), timeout=60)
    assert worker.alive(), worker.log()
    return worker


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, Any]:
    """``(status, parsed JSON or text)`` of one request; HTTP errors are returned too."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_terminal(base: str, spawn_id: str, timeout: float = 60.0) -> dict[str, Any]:
    """Poll the spawn's record until it is terminal."""

    def terminal():
        status, record = http("GET", f"{base}/vx11/spawn/{spawn_id}", headers=TOKEN)
        assert status == 200, record
        return record if record["status"] not in ("QUEUED", "RUNNING") else None

    return wait_for(terminal, timeout=timeout, interval=0.1)


def child_pids(pid: int) -> set[int]:
    """The pids of ``pid``'s children (a gunicorn master's workers, say), from /proc."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children.update(int(p) for p in (task / "children").read_text().split())
    return children


def connected_ports(pid: int) -> list[int]:
    """The remote ports of ``pid``'s established IPv4 TCP connections: whom it talks to."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and fields[9] in inodes:  # 01: ESTABLISHED
            ports.append(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def broker_task_ids(broker_url: str, queue: str) -> list[str]:
    """The Celery task ids of the jobs the Redis broker holds for ``queue``: waiting in its
    lists (one per priority) or delivered and not yet acknowledged (kombu's ``unacked``)."""
    with redis.Redis.from_url(broker_url) as client:
        ids = []
        for key in client.scan_iter(match=f"{queue}*", _type="list"):
            ids += [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]
        ids += [json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")]
    return ids
