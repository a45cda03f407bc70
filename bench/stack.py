"""The private VX11 the benchmark measures: a redis-server on a free port, the SQLite
ledger in a temporary directory, the gateway under gunicorn and a Celery worker, all
on 127.0.0.1 with the project's real command lines, and all stopped together.

The process helpers are the test suite's (``tests/support.py``), reused as they are.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.cpu import Cpu, slots_cpu, snapshot
from tests.support import Process, RedisServer, free_port, http, service_env, wait_for
from vx11.cli.stack import StackOptions, gateway_env, gunicorn_argv, worker_argv
from vx11.core.config import Settings
from vx11.core.states import TERMINAL_STATES
from vx11.gateway.services import make_celery

TOKEN = "vx11-test-token"
SERVICE_UID = 10127
"""The worker's service user when the benchmark runs as root."""
AUTH = {"X-VX11-Token": TOKEN}
_TERMINAL = tuple(sorted(state.value for state in TERMINAL_STATES))


class BenchStack:
    """Start with :meth:`start_gateway` and :meth:`start_worker`; :meth:`stop` ends every
    process started, whatever happened in between."""

    def __init__(self, root: Path, options: StackOptions | None = None) -> None:
        self.root = root
        self.options = options or StackOptions()
        self.processes: dict[str, Process] = {}
        self.ledger_path = root / "ledger.db"
        self.redis_url = ""
        self.host = "127.0.0.1"
        self.port = 0
        self.config: dict[str, Any] = {  # and redis_url, once redis-server runs
            "data_dir": str(root / "data"),
            "sandbox_root": str(root / "sandbox"),
            "database_url": f"sqlite:///{self.ledger_path}",
        }
        if os.geteuid() == 0:
            # as ./scripts/run started as root: the worker gives root up (a bare uid,
            # so that no account is made), and writes the ledger as that user
            self.config["service_user"] = str(SERVICE_UID)
            self.ledger_path.touch()
            for path in (root, self.ledger_path):
                os.chown(path, SERVICE_UID, SERVICE_UID)

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start_gateway(self) -> None:
        """redis-server, then gunicorn with the configuration of ``vx11 up`` (its workers
        sharing a prometheus-client multiprocess directory, as there)."""
        redis_server = RedisServer(free_port(), self.root / "redis")
        self.processes["redis"] = redis_server
        redis_server.start()
        self.redis_url = redis_server.url
        self.config["redis_url"] = self.redis_url
        self.port = free_port()
        argv = gunicorn_argv(
            self.host, self.port, self.options.gunicorn_workers, self.options.gunicorn_threads
        )
        metrics_dir = self.root / "metrics"
        metrics_dir.mkdir()
        env = gateway_env(service_env(self.config), str(metrics_dir))
        gateway = Process("gateway", argv, env, self.root)
        self.processes["gateway"] = gateway
        gateway.start()
        wait_for(lambda: http("GET", f"{self.base}/health", timeout=2)[0] == 200, timeout=60)

    def start_worker(self) -> None:
        """One Celery worker with the configuration of ``vx11 up`` (concurrency 2)."""
        argv = worker_argv(self.options.worker_concurrency, self.settings.spawn_queue)
        self.start_process("worker", argv, service_env(self.config))
        self.wait_ready("worker")

    def start_process(self, name: str, argv: list[str], env: dict[str, str]) -> Process:
        """Start one more process of the stack, logging to ``<name>.log`` in its root."""
        process = Process(name, argv, env, self.root)
        self.processes[name] = process
        return process.start()

    def wait_ready(self, name: str) -> None:
        """Wait until the Celery worker ``name`` logs that it is ready."""
        worker = self.processes[name]
        wait_for(lambda: "ready." in worker.log() or not worker.alive(), timeout=90)
        if not worker.alive():
            raise RuntimeError(f"{name} did not start:\n{worker.log()[-2000:]}")

    def stop_process(self, name: str) -> None:
        """Stop one process of the stack: a Celery worker finishes its running tasks."""
        process = self.processes.pop(name)
        try:
            process.shut_down()
        finally:
            process.stop()

    def stop(self) -> None:
        for process in reversed(self.processes.values()):
            process.stop()
        self.processes.clear()

    def cpu(self) -> dict[str, Cpu]:
        """CPU used so far by each service's process group, and by this process."""
        dead = [name for name, p in self.processes.items() if not p.alive()]
        if dead:
            tails = "\n".join(
                f"--- {name} log, last lines:\n"
                + "\n".join(self.processes[name].log().splitlines()[-30:])
                for name in dead
            )
            raise RuntimeError(f"{', '.join(dead)} exited during the benchmark\n{tails}")
        return snapshot({name: p.proc.pid for name, p in self.processes.items()})

    def slots_cpu(self) -> float | None:
        """CPU seconds in the worker's sandbox cgroups so far (:func:`bench.cpu.slots_cpu`)."""
        worker = self.processes.get("worker")
        return slots_cpu(worker.proc.pid) if worker else None

    def pids(self) -> set[int]:
        """The pids of the services started (their Popen waits for them)."""
        return {process.proc.pid for process in self.processes.values()}

    @property
    def settings(self) -> Settings:
        """The settings the gateway and the worker run with (all but the Redis URL
        before :meth:`start_gateway`)."""
        return Settings.from_env(environ={}, overrides=self.config)

    def open_window(self, ttl_seconds: int = 3600) -> None:
        status, body = http(
            "POST",
            f"{self.base}/vx11/window/open",
            {"target": "spawner", "ttl_seconds": ttl_seconds, "reason": "benchmark"},
            AUTH,
        )
        if status != 200 or not body.get("is_open"):
            raise RuntimeError(f"could not open the spawner window: {status} {body}")

    def purge_queue(self) -> int:
        """Drop every queued spawn job; the number dropped."""
        celery = make_celery(self.settings)
        try:
            return celery.control.purge() or 0
        finally:
            celery.close()

    # The ledger, read (and emptied) directly: cheaper than polling the API.

    def _ledger(self) -> sqlite3.Connection:
        return sqlite3.connect(self.ledger_path, timeout=30)

    def count_rows(self, terminal_only: bool = False) -> int:
        with self._ledger() as conn:
            if terminal_only:
                marks = ",".join("?" * len(_TERMINAL))
                sql = f"SELECT count(*) FROM spawns WHERE status IN ({marks})"
                return conn.execute(sql, _TERMINAL).fetchone()[0]
            return conn.execute("SELECT count(*) FROM spawns").fetchone()[0]

    def count_pending(self) -> int:
        """Records still QUEUED or RUNNING (the status index answers it)."""
        with self._ledger() as conn:
            sql = "SELECT count(*) FROM spawns WHERE status IN ('QUEUED', 'RUNNING')"
            return conn.execute(sql).fetchone()[0]

    def delete_rows(self) -> None:
        with self._ledger() as conn:
            conn.execute("DELETE FROM spawns")

    def records(self, statuses: tuple[str, ...] = _TERMINAL) -> list[dict[str, Any]]:
        """Every record in ``statuses``, timestamps as aware datetimes."""
        marks = ",".join("?" * len(statuses))
        with self._ledger() as conn:
            conn.row_factory = sqlite3.Row
            rows = conn.execute(
                "SELECT spawn_uuid, status, created_at, started_at, finished_at, duration_ms, "
                "cpu_time_ms "
                f"FROM spawns WHERE status IN ({marks})",
                statuses,
            ).fetchall()
        stamps = ("created_at", "started_at", "finished_at")
        return [{**dict(row), **{key: parse_timestamp(row[key]) for key in stamps}} for row in rows]


def parse_timestamp(raw: str | None) -> datetime | None:
    """A ledger timestamp read from SQLite, as an aware datetime."""
    if raw is None:
        return None
    value = datetime.fromisoformat(raw)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
