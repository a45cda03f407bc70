"""Real services for the tests: a private redis-server, gunicorn and Celery workers as
subprocesses, an HTTP helper, waiting helpers, and pages of the API read through a Flask
test client. Whoever starts a process stops it."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from vx11.cli.stack import gateway_env, gunicorn_argv, redis_server_argv, worker_argv

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
    # started as whoever runs the tests (root here): tests/e2e/test_service_user.py is
    # where a worker gives root up
    env["VX11_SERVICE_USER"] = ""
    env.update({f"VX11_{key.upper()}": str(value) for key, value in config.items()})
    if "broker_url" not in config and MODULE_BROKER.get("url"):
        env["VX11_BROKER_URL"] = MODULE_BROKER["url"]
    env["PYTHONPATH"] = str(ROOT)
    return env


def start_gateway(
    config: dict[str, str],
    log_dir: Path,
    workers: int = 2,
    *,
    name: str = "gateway",
    metrics_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
) -> tuple[Process, str]:
    """gunicorn serving the gateway configured by ``config``, logging to ``name``.log in
    ``log_dir``; with ``metrics_dir`` (an empty directory), its workers share it as
    prometheus-client's multiprocess directory, as ``vx11 up`` starts them.
    ``extra_env`` is added to (or replaces part of) its environment."""
    port = free_port()
    env = {**service_env(config), **(extra_env or {})}
    if metrics_dir is not None:
        env = gateway_env(env, str(metrics_dir))
    gateway = Process(name, gunicorn_argv("127.0.0.1", port, workers, 4), env, log_dir).start()
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: http("GET", f"{base}/health")[0] == 200, timeout=60)
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


def refused_worker(config: dict[str, str], log_dir: Path) -> str:
    """Start a worker configured by ``config`` that must refuse to start: its one line
    saying why (it exited 78, ``EX_CONFIG``, with no traceback)."""
    worker = Process("refused", worker_argv(1, "spawner"), service_env(config), log_dir).start()
    try:
        wait_for(lambda: not worker.alive(), timeout=60)
    finally:
        worker.stop()
    assert worker.proc.returncode == 78, worker.log()
    assert "Traceback" not in worker.log()
    return next(line for line in worker.log().splitlines() if "does not start" in line)


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


def api_page(client, auth: dict[str, str], path: str, query: str = "", status: int = 200) -> Any:
    """The JSON answer to ``GET path?query`` through a Flask test client, whose status must
    be ``status``."""
    response = client.get(f"{path}{'?' + query if query else ''}", headers=auth)
    assert response.status_code == status, response.json
    return response.json


def every_page(
    client,
    auth: dict[str, str],
    path: str,
    items: Callable[[dict[str, Any]], list[Any]],
    query: str = "",
    between: Callable[[], Any] | None = None,
) -> list[Any]:
    """The ``items`` of every page of ``path?query``, following ``next_cursor`` to the
    last page; ``between``, if given, runs before each page after the first."""
    seen: list[Any] = []
    page = api_page(client, auth, path, query)
    while True:
        seen += items(page)
        if page["next_cursor"] is None:
            return seen
        if between:
            between()
        cursor = f"cursor={urllib.parse.quote(page['next_cursor'])}"
        page = api_page(client, auth, path, f"{query}&{cursor}" if query else cursor)


def child_pids(pid: int) -> set[int]:
    """The pids of ``pid``'s children (a gunicorn master's workers, say), from /proc."""
    children: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            children.update(int(p) for p in (task / "children").read_text().split())
    return children


def connected_ports(pid: int, end: str = "remote") -> list[int]:
    """The ports of ``pid``'s established IPv4 TCP connections: at the ``"remote"`` end
    (whom it talks to) or the ``"local"`` one (its own)."""
    column = {"local": 1, "remote": 2}[end]
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
            ports.append(int(fields[column].rsplit(":", 1)[1], 16))
    return ports


def gateway_workers(stack, count: int = 2, without: Iterable[int] = ()) -> set[int]:
    """The ``count`` workers of the gunicorn master ``stack.gateway``, once none of
    ``without`` (a killed one is its child until reaped) is among them, and the gateway
    at ``stack.base`` answers."""
    master, without = stack.gateway.proc.pid, set(without)

    def settled() -> set[int] | None:
        workers = child_pids(master)
        return workers if len(workers) == count and not workers & without else None

    workers = wait_for(settled, timeout=60, interval=0.1)
    wait_for(lambda: http("GET", f"{stack.base}/health", timeout=5)[0] == 200, timeout=60)
    return workers


# --- the broker ---------------------------------------------------------------------------

BROKER_URL = os.environ.get("VX11_TEST_BROKER_URL", "")
"""A RabbitMQ the end-to-end tests' services use as their broker instead of a private
Redis, which still holds windows, tokens and results. ``.ci/run``'s second run sets this
machine's (``amqp://guest:guest@127.0.0.1:5672//``); each test module gets a virtual host
of its own on it (:class:`RabbitVhost`). Empty: every broker is a private Redis."""

MODULE_BROKER: dict[str, str] = {}
"""``{"url": ...}`` while a test module runs with :data:`BROKER_URL` set: its vhost, the
broker of every service started without a ``broker_url`` of its own (see
:func:`service_env`; tests/e2e/conftest.py sets and clears it)."""


def is_amqp(url: str) -> bool:
    return urllib.parse.urlsplit(url).scheme in ("amqp", "amqps", "pyamqp")


def broker_task_ids(broker_url: str, queue: str) -> list[str]:
    """The Celery task ids of the jobs the Redis broker holds for ``queue``: waiting in its
    lists (one per priority) or delivered and not yet acknowledged (kombu's ``unacked``).
    RabbitMQ shows nobody a queue's messages without delivering them, and never those
    another consumer holds: tests that need this are Redis-broker tests."""
    if is_amqp(broker_url):
        raise NotImplementedError(f"cannot list the jobs a RabbitMQ holds ({queue})")
    with redis.Redis.from_url(broker_url) as client:
        ids = []
        for key in client.scan_iter(match=f"{queue}*", _type="list"):
            ids += [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]
        ids += [json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")]
    return ids


class RabbitVhost:
    """A RabbitMQ virtual host of one test module's own, made when it starts and deleted
    when it ends, so that no two runs, parallel or left over, ever share a queue, an
    exchange or a worker's control messages. Made with ``rabbitmqctl`` (root on the
    broker's own host), or else through the management API. Once per run, the vhosts of
    runs whose process is gone are deleted first."""

    PREFIX = "vx11-test-"
    MANAGEMENT_PORT = 15672
    _swept = False

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.user = urllib.parse.unquote(parts.username or "guest")
        self.password = urllib.parse.unquote(parts.password or "guest")
        self.name = f"{self.PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        vhost = urllib.parse.quote(self.name, safe="")
        self.url = urllib.parse.urlunsplit(parts._replace(path=f"/{vhost}"))
        self._via: str | None = None

    def create(self) -> RabbitVhost:
        problems = []
        for via in ("rabbitmqctl", "management API"):
            self._via = via
            try:
                if not RabbitVhost._swept:
                    for stale in self._stale(self._vhosts()):
                        self._delete(stale)
                    RabbitVhost._swept = True
                self._add(self.name)
                return self
            except (OSError, subprocess.SubprocessError, urllib.error.URLError) as exc:
                problems.append(f"{via}: {exc}")
        self._via = None
        raise RuntimeError(f"cannot make a RabbitMQ vhost for the tests: {'; '.join(problems)}")

    def delete(self) -> None:
        if self._via is not None:
            self._delete(self.name)
            self._via = None

    def queues(self) -> dict[str, dict[str, Any]]:
        """``{name: {"durable": bool, "arguments": {...}}}`` of the vhost's queues."""
        if self._via == "rabbitmqctl":
            rows = json.loads(self._ctl("list_queues", "-p", self.name, "name", "durable",
                                        "arguments", "--formatter", "json"))  # fmt: skip
        else:
            rows = self._api("GET", f"/queues/{self._quoted(self.name)}")
        return {
            row["name"]: {"durable": row["durable"], "arguments": _arguments(row["arguments"])}
            for row in rows
        }

    def consumers(self) -> list[tuple[str, dict[str, Any]]]:
        """``(queue, consumer arguments)`` of every consumer in the vhost."""
        if self._via == "rabbitmqctl":
            rows = json.loads(self._ctl("list_consumers", "-p", self.name, "queue_name",
                                        "arguments", "--formatter", "json"))  # fmt: skip
            return [(row["queue_name"], _arguments(row["arguments"])) for row in rows]
        rows = self._api("GET", f"/consumers/{self._quoted(self.name)}")
        return [(row["queue"]["name"], _arguments(row["arguments"])) for row in rows]

    def _stale(self, names: list[str]) -> list[str]:
        stale = []
        for name in names:
            pid = name.removeprefix(self.PREFIX).split("-", 1)[0]
            if name.startswith(self.PREFIX) and pid.isdigit() and not _pid_alive(int(pid)):
                stale.append(name)
        return stale

    def _vhosts(self) -> list[str]:
        if self._via == "rabbitmqctl":
            return self._ctl("list_vhosts", "name").split()
        return [entry["name"] for entry in self._api("GET", "/vhosts")]

    def _add(self, name: str) -> None:
        if self._via == "rabbitmqctl":
            self._ctl("add_vhost", name)
            self._ctl("set_permissions", "-p", name, self.user, ".*", ".*", ".*")
        else:
            self._api("PUT", f"/vhosts/{self._quoted(name)}", {})
            everything = dict.fromkeys(("configure", "write", "read"), ".*")
            self._api("PUT", f"/permissions/{self._quoted(name)}/{self._quoted(self.user)}",
                      everything)  # fmt: skip

    def _delete(self, name: str) -> None:
        if self._via == "rabbitmqctl":
            self._ctl("delete_vhost", name)
        else:
            self._api("DELETE", f"/vhosts/{self._quoted(name)}")

    def _ctl(self, *args: str) -> str:
        if self.host not in ("127.0.0.1", "localhost", "::1"):
            raise OSError(f"the broker is on {self.host}, not this host")
        binary = shutil.which("rabbitmqctl")
        if binary is None:
            raise OSError("rabbitmqctl is not installed")
        done = subprocess.run(
            [binary, *args, "--silent"], capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise OSError(f"rabbitmqctl {args[0]}: {(done.stderr or done.stdout).strip()}")
        return done.stdout

    def _api(self, method: str, path: str, body: Any = None) -> Any:
        url = f"http://{self.host}:{self.MANAGEMENT_PORT}/api{path}"
        login = b64encode(f"{self.user}:{self.password}".encode()).decode()
        headers = {"Authorization": f"Basic {login}", "Content-Type": "application/json"}
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data, headers, method=method)
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    @staticmethod
    def _quoted(name: str) -> str:
        return urllib.parse.quote(name, safe="")


def _arguments(raw: Any) -> dict[str, Any]:
    """AMQP arguments as a dict, from the management API's object or rabbitmqctl's JSON
    (a list of ``[name, type, value]``)."""
    if isinstance(raw, dict):
        return raw
    return {item[0]: item[-1] for item in raw or []}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class BrokerProxy:
    """A TCP relay on a free port of 127.0.0.1 to a RabbitMQ the tests do not own.
    Stopping it is, to every connection through it, the broker going away (connections
    closed, new ones refused); starting it again on the same port is the broker coming
    back. The real server, which other runs share, is never touched."""

    def __init__(self, target_url: str) -> None:
        parts = urllib.parse.urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 5672)
        self.port = free_port()
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        self.url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> BrokerProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._relay, args=(listener,), name=f"broker-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._thread.join(timeout=10)
            self._thread = None

    def _relay(self, listener: socket.socket) -> None:
        selector = selectors.DefaultSelector()
        selector.register(listener, selectors.EVENT_READ)
        peers: dict[socket.socket, socket.socket] = {}
        try:
            while not self._stopping.is_set():
                for key, _ in selector.select(timeout=0.1):
                    sock = key.fileobj
                    if sock is listener:
                        self._accept(listener, selector, peers)
                    elif sock in peers and not self._pass_on(sock, peers[sock]):
                        for end in (sock, peers.pop(sock)):
                            peers.pop(end, None)
                            selector.unregister(end)
                            end.close()
        finally:
            for end in [*peers, listener]:
                end.close()
            selector.close()

    def _accept(self, listener: socket.socket, selector, peers) -> None:
        client, _ = listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        for end, other in ((client, upstream), (upstream, client)):
            peers[end] = other
            selector.register(end, selectors.EVENT_READ)

    @staticmethod
    def _pass_on(sock: socket.socket, other: socket.socket) -> bool:
        try:
            data = sock.recv(1 << 16)
            if data:
                other.sendall(data)
            return bool(data)
        except OSError:
            return False


def idle_slot_pids(children: dict[int, list[int]]) -> set[int]:
    """The processes of this process's idle slots (:mod:`workers.sandbox.slot`), given
    each pid's children: bubblewrap, its init, the launcher, and what the launcher is
    preparing or has prepared for the next run (its namespaces' maker and the next
    run's init, which has no child yet). A run's init that still has children, and all
    below it, are a run's, never a slot's."""
    from workers.sandbox import slot

    idle: set[int] = set()
    for launchers in slot.SLOTS.idle.values():
        todo = [launcher.proc.pid for launcher in launchers]
        while todo:
            pid = todo.pop()
            kids = children.get(pid, [])
            if is_run_init(pid):
                if not kids:
                    idle.add(pid)
                continue
            idle.add(pid)
            todo.extend(kids)
    return idle


def is_run_init(pid: int) -> bool:
    """Whether ``pid`` is the init of a run's pid namespace (or one prepared)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"vx11-sandbox-init")
    except OSError:
        return False


UP_SERVICE_UID = 10125
"""``VX11_SERVICE_USER`` of the tests that start ``vx11 up`` as root: a bare uid, so
that no account is made on the machine."""


@contextlib.contextmanager
def up_directory() -> Iterator[Path]:
    """A directory for one ``vx11 up``'s data and sandbox: outside pytest's private temp
    directory, which the service user could not reach; removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="vx11-up-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


SANDBOX_UIDS = range(60000, 61000)
"""The uids a root worker's runs take (``VX11_SANDBOX_UIDS``'s default,
:mod:`workers.sandbox.uids`): one per concurrent run, at both levels."""
RUN_UID = 65534
"""A run's uid inside its own user namespace at the bwrap level, whatever its host uid."""
