"""``vx11 up`` (and ``./scripts/run``): the whole stack in the foreground on one machine.

A private redis-server (unless ``VX11_REDIS_URL`` is set), the SQLite ledger, the
gateway under gunicorn, one Celery worker and Flower. Ctrl-C stops everything it
started; a taken port or a missing program is one clear line, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from vx11.callbacks import CALLBACK_QUEUE
from vx11.config import Settings

DEFAULT_REDIS_URL = Settings().redis_url


class StackError(RuntimeError):
    """Raised when the stack cannot start; the message is for the operator."""


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    flower_port: int = 5555
    gunicorn_workers: int = 2
    gunicorn_threads: int = 32
    """Threads per gunicorn worker. A ``?wait=`` or an event stream holds one thread while
    it waits on Redis (blocked on a socket: no CPU), so the pool is sized for those."""
    worker_concurrency: int = 2
    flower: bool = True


def gunicorn_argv(host: str, port: int, workers: int, threads: int) -> list[str]:
    """The gateway's command line, shared with compose.yaml.

    gthread workers: a request waiting on Redis, the broker or the database — including a
    ``?wait=`` or an event stream, which wait by design — blocks one thread, not the
    process. Threads, not gevent: redis-py, kombu and the database drivers block, and
    nothing here has to be monkey-patched.
    """
    return [
        sys.executable, "-m", "gunicorn",
        "--worker-class", "gthread",
        "--workers", str(workers),
        "--threads", str(threads),
        "--bind", f"{host}:{port}",
        "--graceful-timeout", "10",
        "vx11:create_app()",
    ]  # fmt: skip


def worker_argv(concurrency: int, queue: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers", "worker",
        "--queues", f"{queue},{CALLBACK_QUEUE}",
        "--concurrency", str(concurrency),
        "--hostname", "vx11@%h",
        "--loglevel", "INFO",
    ]  # fmt: skip


def flower_argv(host: str, port: int) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers", "flower",
        f"--address={host}", f"--port={port}",
    ]  # fmt: skip


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_port(host: str, port: int, what: str) -> None:
    if not port_is_free(host, port):
        raise StackError(f"port {host}:{port} is already in use ({what}); stop what holds it")


def redis_server_argv(port: int, data_dir: Path) -> list[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise StackError(
            "redis-server is not installed: install it (Debian: apt-get install redis-server) "
            "or set VX11_REDIS_URL to a Redis you run"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--save", "",
        "--appendonly", "yes",
        "--maxmemory-policy", "noeviction",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip


def wait_until(
    check, timeout: float, what: str, procs: Mapping[str, subprocess.Popen] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in (procs or {}).items():
            if proc.poll() is not None:
                raise StackError(f"{what}: {name} exited during start-up")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise StackError(f"{what} did not come up within {timeout:.0f}s")


def redis_answers(url: str) -> bool:
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port or 6379), timeout=0.5) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as response:
        return response.status == 200


@dataclass
class Stack:
    """The processes of one ``vx11 up``; stopping it stops every one of them."""

    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self, grace: float = 10.0) -> None:
        running = list(reversed(self.procs.values()))
        for proc in running:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def wait_any(self) -> tuple[str, int]:
        """The name and exit status of the first process to exit."""
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    return name, proc.returncode
            time.sleep(0.2)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def quick_start(base: str) -> str:
    return f"""
VX11 is up on {base}. Quick start:

  curl -s {base}/health | jq .
  curl -s -X POST {base}/vx11/window/open -H "X-VX11-Token: vx11-test-token" \\
    -d '{{"target":"spawner","ttl_seconds":600}}' | jq '.is_open'
  curl -s -X POST {base}/vx11/spawn -H "X-VX11-Token: vx11-test-token" \\
    -d '{{"task_type":"python","code":"print(\\"MVP works\\")","ttl_seconds":30}}' | jq '.spawn_id'
  curl -s {base}/vx11/spawn/<spawn_id> -H "X-VX11-Token: vx11-test-token" | jq .

Ctrl-C stops everything.
"""


def run_stack(options: StackOptions, environ: dict[str, str] | None = None) -> int:
    """Start the stack, print the quick start, and wait for Ctrl-C or a process to die."""
    env = dict(os.environ if environ is None else environ)
    settings = Settings.from_env(env)
    require_free_port(options.host, options.port, "gateway")
    if options.flower:
        require_free_port(options.host, options.flower_port, "Flower")
    stack = Stack()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if "VX11_REDIS_URL" not in env:
            redis_port = urlsplit(DEFAULT_REDIS_URL).port
            argv = redis_server_argv(redis_port, Path(settings.data_dir) / "redis")
            require_free_port("127.0.0.1", redis_port, "private Redis")
            stack.start("redis-server", argv, env)
            wait_until(lambda: redis_answers(DEFAULT_REDIS_URL), 15, "Redis", stack.procs)
        stack.start(
            "gateway",
            gunicorn_argv(
                options.host, options.port, options.gunicorn_workers, options.gunicorn_threads
            ),
            env,
        )
        stack.start("worker", worker_argv(options.worker_concurrency, settings.spawn_queue), env)
        if options.flower:
            stack.start("flower", flower_argv(options.host, options.flower_port), env)
        base = f"http://{options.host}:{options.port}"
        wait_until(lambda: http_ok(f"{base}/health"), 30, "the gateway", stack.procs)
        print(quick_start(base), flush=True)
        name, status = stack.wait_any()
        raise StackError(f"{name} exited with status {status}; stopping the stack")
    except KeyboardInterrupt:
        print("\nstopping VX11…", flush=True)
        return 0
    finally:
        stack.stop()
        signal.signal(signal.SIGTERM, previous)
