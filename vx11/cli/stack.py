"""``vx11 up`` (and ``./scripts/run``): the whole stack in the foreground on one machine.

A private redis-server (unless ``VX11_REDIS_URL`` is set), the SQLite ledger, the
gateway under gunicorn, one Celery worker and Flower (behind a login). A process that
dies is started again, after a backoff that grows while it keeps dying; Ctrl-C stops
everything it started; a taken port or a missing program is one clear line, not a
traceback.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from vx11.core import runtimes
from vx11.core.callbacks import CALLBACK_QUEUE
from vx11.core.config import Settings

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
        # gunicorn's own lines in VX11's format (VX11_LOG_FORMAT); no gunicorn access
        # log: the app writes one line per request, with its ids (vx11.core.logs)
        "--logger-class", "vx11.gateway.request_log.GunicornLogger",
        "vx11:create_app()",
    ]  # fmt: skip


METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus-client's multiprocess directory (:mod:`vx11.gateway.metrics`)."""


def gateway_env(env: Mapping[str, str], metrics_dir: str) -> dict[str, str]:
    """The gateway's environment: ``env`` with ``metrics_dir``, an empty directory made
    for this start, as prometheus-client's multiprocess directory, so that /metrics adds
    up the counts of every gunicorn worker. Only the gateway's processes may share it."""
    return {**env, METRICS_DIR_VARIABLE: metrics_dir}


def worker_argv(concurrency: int, queue: str) -> list[str]:
    return [
        sys.executable, "-m", "celery", "-A", "workers", "worker",
        "--queues", f"{queue},{CALLBACK_QUEUE}",
        "--concurrency", str(concurrency),
        "--hostname", "vx11@%h",
        "--loglevel", "INFO",
    ]  # fmt: skip


def flower_argv(host: str, port: int) -> list[str]:
    """Flower's command line. Its login is not on it (``ps`` would show it to every user
    of the machine): :func:`flower_env` passes it."""
    return [
        sys.executable, "-m", "celery", "-A", "workers", "flower",
        f"--address={host}", f"--port={port}",
    ]  # fmt: skip


FLOWER_PASSWORD_FILE = "flower-password"
"""Where, in the data directory, ``vx11 up`` keeps the Flower password it generated."""


@dataclass(frozen=True)
class FlowerLogin:
    """Flower's HTTP basic-auth login."""

    user: str
    password: str
    kept_in: Path | None = None
    """The file holding a password ``vx11 up`` generated; None for ``VX11_FLOWER_PASSWORD``."""

    @property
    def basic_auth(self) -> str:
        """The value of Flower's ``--basic-auth`` option."""
        return f"{self.user}:{self.password}"


def flower_login(settings: Settings) -> FlowerLogin:
    """Flower's login: ``VX11_FLOWER_USER`` with ``VX11_FLOWER_PASSWORD``.

    Flower has no login unless given one, and whoever reaches it sees every spawn's code
    and output and can stop workers, so it never runs without one. With no password set,
    development gets a generated one, kept in the data directory so that it survives
    restarts (and a browser's saved login with it); production refuses.
    """
    if settings.flower_password:
        return FlowerLogin(settings.flower_user, settings.flower_password)
    if settings.production:
        raise StackError(
            "Flower needs a password in production: set VX11_FLOWER_PASSWORD, "
            "or start without Flower (--no-flower)"
        )
    path = Path(settings.data_dir) / FLOWER_PASSWORD_FILE
    try:
        return FlowerLogin(settings.flower_user, kept_password(path), kept_in=path)
    except OSError as exc:
        raise StackError(
            f"cannot keep Flower's password in {path} ({exc.strerror}): set VX11_FLOWER_PASSWORD"
        ) from None


def kept_password(path: Path) -> str:
    """The password kept in ``path``; a new random one, readable by its owner only, if the
    file does not exist or is empty."""
    if path.exists() and (password := path.read_text().strip()):
        return password
    password = secrets.token_urlsafe(18)  # letters, digits, - and _: no ':' or ','
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
        file.write(password + "\n")
    return password


def flower_env(env: Mapping[str, str], login: FlowerLogin) -> dict[str, str]:
    """Flower's environment: ``env`` with the login as ``FLOWER_BASIC_AUTH``, which Flower
    reads as its ``--basic-auth`` option (and which replaces any inherited one)."""
    return {**env, "FLOWER_BASIC_AUTH": login.basic_auth}


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


RESTART_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
"""Seconds ``vx11 up`` waits before restarting a child that died: each death in a row
waits the next, the last repeating."""
HEALTHY_AFTER = 60.0
"""Seconds a restarted child must live for its next death to start the backoff over."""


@dataclass
class Child:
    """One process of the stack, and how to start it again."""

    argv: list[str]
    env: dict[str, str]
    before_start: Callable[[], None] | None = None
    """Run before each start (e.g. emptying the gateway's metrics directory)."""
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    deaths: int = 0
    """Deaths in a row, each within :data:`HEALTHY_AFTER` of its start."""

    run_as: tuple[int, int] | None = None
    """``(uid, gid)`` it is started as (:func:`service_user`); None: as ``vx11 up``."""

    @property
    def service_env(self) -> dict[str, str]:
        """Its environment as the service user, whose home is the data directory (what
        gunicorn keeps in ``~``), not root's."""
        return {**self.env, "HOME": Settings.from_env(self.env).data_dir}

    def start(self) -> None:
        if self.before_start is not None:
            self.before_start()
        uid, gid = self.run_as or (None, None)
        self.proc = subprocess.Popen(
            self.argv, env=self.env if self.run_as is None else self.service_env,
            start_new_session=True,
            user=uid, group=gid, extra_groups=[] if self.run_as else None,
        )  # fmt: skip
        self.started = time.monotonic()


@dataclass
class Stack:
    """The processes of one ``vx11 up``; a child that dies is started again, and
    stopping the stack stops every one of them."""

    children: dict[str, Child] = field(default_factory=dict)

    @property
    def procs(self) -> dict[str, subprocess.Popen[bytes]]:
        return {name: c.proc for name, c in self.children.items() if c.proc is not None}

    def start(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        before_start: Callable[[], None] | None = None,
        run_as: tuple[int, int] | None = None,
    ) -> None:
        self.children[name] = child = Child(argv, env, before_start, run_as=run_as)
        child.start()

    def stop(self, grace: float = 10.0, last: Sequence[str] = ()) -> None:
        """Stop every child (SIGTERM, and SIGKILL to its session after ``grace``
        seconds), newest first; those named in ``last`` (what the others use: Redis)
        only once the others have exited, so that a stopping worker can still record
        the spawns it ends."""
        first = [c for n, c in self.procs.items() if n not in last]
        _terminate(list(reversed(first)), grace)
        _terminate([self.procs[n] for n in last if n in self.procs], 10.0)

    def supervise(self, say: Callable[[str], None]) -> NoReturn:
        """Until interrupted: start again each child that dies, after a backoff that
        grows while it keeps dying (:data:`RESTART_BACKOFF`), saying so."""
        due: dict[str, float] = {}
        while True:
            now = time.monotonic()
            for name, child in self.children.items():
                if name in due:
                    if now >= due[name]:
                        del due[name]
                        child.start()
                        say(f"vx11: {name} restarted")
                    continue
                assert child.proc is not None
                status = child.proc.poll()
                if status is None:
                    continue
                if now - child.started >= HEALTHY_AFTER:
                    child.deaths = 0
                wait = RESTART_BACKOFF[min(child.deaths, len(RESTART_BACKOFF) - 1)]
                child.deaths += 1
                with contextlib.suppress(ProcessLookupError):  # what it left behind
                    os.killpg(child.proc.pid, signal.SIGKILL)
                say(f"vx11: {name} exited with status {status}; restarting it in {wait:g} s")
                due[name] = now + wait
            time.sleep(0.2)


def service_user(settings: Settings, say: Callable[[str], None]) -> tuple[int, int] | None:
    """``vx11 up`` started as root runs everything as ``VX11_SERVICE_USER``: its
    ``(uid, gid)``, the system user made first if it does not exist, the data directory
    handed to it, checked that it can run VX11 from where it is installed. The
    worker is started as root and gives root up itself (:mod:`workers.service`). None
    when not root, or the setting is empty."""
    if os.geteuid() != 0 or not settings.service_user:
        return None
    name = settings.service_user
    if not name.replace(":", "").isdigit():
        try:
            pwd.getpwnam(name)
        except KeyError:
            _add_system_user(name)
            say(f"vx11: made the system user {name}, which VX11 runs as")
    run_as = settings.service_ids()
    hand_over(Path(settings.data_dir), run_as)
    probe = subprocess.run(
        [sys.executable, "-c", SERVICE_PROBE, settings.data_dir],
        user=run_as[0], group=run_as[1], extra_groups=[], capture_output=True, text=True,
        cwd="/",
    )  # fmt: skip
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or ["(no output)"]
        raise StackError(
            f"the service user {name} (VX11_SERVICE_USER) cannot run VX11 from "
            f"{sys.prefix} with its data in {settings.data_dir}: {lines[-1]}. Install VX11 "
            "and its Python, and keep VX11_DATA_DIR, where that user can reach them (not "
            "under /root), or set VX11_SERVICE_USER= to run VX11 as root."
        )
    return run_as


SERVICE_PROBE = """
import os, sys
import celery, gunicorn, vx11.gateway.app, workers.celery
if not os.access(sys.argv[1], os.W_OK | os.X_OK):
    sys.exit(f"PermissionError: cannot write {sys.argv[1]}")
"""
"""Run as the service user before anything starts: can it import VX11 and write its data?"""


def hand_over(data_dir: Path, run_as: tuple[int, int]) -> None:
    """The data directory (the ledger, Redis's files, Flower's password) and all in it
    to the service user."""
    data_dir.mkdir(parents=True, exist_ok=True)
    for directory, _, files in os.walk(data_dir):
        for path in [directory, *(os.path.join(directory, f) for f in files)]:
            os.lchown(path, *run_as)


def _add_system_user(name: str) -> None:
    useradd = shutil.which("useradd")
    if useradd is None:
        raise StackError(f"no user {name} (VX11_SERVICE_USER), and no useradd to make it")
    made = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home",
         "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
        capture_output=True, text=True,
    )  # fmt: skip
    if made.returncode != 0:
        raise StackError(f"could not make the user {name}: {made.stderr.strip()}")


def _terminate(procs: list[subprocess.Popen[bytes]], grace: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        entry.unlink()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def quick_start(base: str, flower: tuple[str, FlowerLogin] | None = None) -> str:
    """The hints printed once the stack is up; ``flower`` is Flower's URL and login."""
    flower_hint = ""
    if flower is not None:
        url, login = flower
        password = (
            f"{login.password} (password kept in {login.kept_in})"
            if login.kept_in
            else "the password in VX11_FLOWER_PASSWORD"
        )
        flower_hint = f"Flower: {url}, login {login.user} / {password}\n\n"
    return f"""
VX11 is up on {base}. Quick start:

  curl -s {base}/health | jq .
  curl -s -X POST {base}/vx11/window/open -H "X-VX11-Token: vx11-test-token" \\
    -d '{{"target":"spawner","ttl_seconds":600}}' | jq '.is_open'
  curl -s -X POST {base}/vx11/spawn -H "X-VX11-Token: vx11-test-token" \\
    -d '{{"task_type":"python","code":"print(\\"MVP works\\")","ttl_seconds":30}}' | jq '.spawn_id'
  curl -s {base}/vx11/spawn/<spawn_id> -H "X-VX11-Token: vx11-test-token" | jq .

API docs: {base}/vx11/docs/ (the OpenAPI document: {base}/vx11/openapi.json)
{flower_hint}Ctrl-C stops everything.
"""


def run_stack(options: StackOptions, environ: dict[str, str] | None = None) -> int:
    """Start the stack, print the quick start, and keep it up (a child that dies is
    started again) until Ctrl-C."""
    env = dict(os.environ if environ is None else environ)
    settings = Settings.from_env(env)
    runtimes.load(settings)  # a bad VX11_TASK_TYPES_FILE stops here, said plainly
    require_free_port(options.host, options.port, "gateway")
    flower = None
    if options.flower:
        require_free_port(options.host, options.flower_port, "Flower")
        flower = (f"http://{options.host}:{options.flower_port}", flower_login(settings))
    redis_argv = None
    if "VX11_REDIS_URL" not in env:
        redis_port = urlsplit(DEFAULT_REDIS_URL).port
        assert redis_port is not None  # the default URL names its port
        require_free_port("127.0.0.1", redis_port, "private Redis")
        redis_argv = redis_server_argv(redis_port, Path(settings.data_dir) / "redis")
    run_as = service_user(settings, lambda line: print(line, flush=True))  # hands data over
    stack = Stack()
    metrics_dir = tempfile.mkdtemp(prefix="vx11-metrics-")
    if run_as is not None:
        os.chown(metrics_dir, *run_as)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if redis_argv is not None:
            stack.start("redis-server", redis_argv, env, run_as=run_as)
            wait_until(lambda: redis_answers(DEFAULT_REDIS_URL), 15, "Redis", stack.procs)
        stack.start(
            "gateway",
            gunicorn_argv(
                options.host, options.port, options.gunicorn_workers, options.gunicorn_threads
            ),
            gateway_env(env, metrics_dir),
            before_start=lambda: _empty(Path(metrics_dir)),  # prometheus's files, per run
            run_as=run_as,
        )
        stack.start("worker", worker_argv(options.worker_concurrency, settings.spawn_queue), env)
        if flower is not None:
            argv = flower_argv(options.host, options.flower_port)
            stack.start("flower", argv, flower_env(env, flower[1]), run_as=run_as)
        base = f"http://{options.host}:{options.port}"
        wait_until(lambda: http_ok(f"{base}/health"), 30, "the gateway", stack.procs)
        if flower is not None:  # its one page without a login
            wait_until(lambda: http_ok(f"{flower[0]}/healthcheck"), 30, "Flower", stack.procs)
        print(quick_start(base, flower), flush=True)
        stack.supervise(lambda line: print(line, flush=True))
    except KeyboardInterrupt:
        print("\nstopping VX11…", flush=True)
        return 0
    finally:
        # The worker gives its running spawns VX11_SHUTDOWN_GRACE, then records how
        # they ended, in Redis too: Redis stops last.
        stack.stop(grace=settings.shutdown_grace + 20.0, last=("redis-server",))
        shutil.rmtree(metrics_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
