"""Chaos, bounded and on loopback: Redis killed and restarted under load, the ledger's
PostgreSQL restarted under load, jobs the Redis broker lost, and a gateway worker killed
inside its database transaction.

One stack for the module: a private redis-server (AOF on, so the queue survives a
SIGKILL), the ledger on a private PostgreSQL cluster made here (SQLite when PostgreSQL
is not installed), gunicorn and a real Celery worker. It is its own, not the shared
``stack`` of conftest.py, because its one Redis is the broker too, killed under load,
and its ledger is a PostgreSQL it stops and starts. No test restarts the gateway or the
worker: they must recover by themselves, and each test ends by proving they did."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPException
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import Reject
from sqlalchemy import select, text

from tests.support import (
    TOKEN,
    Process,
    RedisServer,
    connected_ports,
    free_port,
    gateway_workers,
    http,
    start_gateway,
    start_worker,
    wait_for,
)
from vx11.core.audit import audit
from vx11.core.config import Settings
from vx11.core.ledger import Ledger
from vx11.core.ledger.schema import spawns
from vx11.core.states import TERMINAL_STATES
from workers import spawner
from workers.sweeper import ORPHANED_AFTER, RECHECK_AFTER, SWEEP_EVERY

pytestmark = pytest.mark.e2e

TERMINAL = frozenset(state.value for state in TERMINAL_STATES)
QUEUE = Settings().spawn_queue
REQUEST_TIMEOUT = 10.0
"""Longest a client waits for one answer: the gateway's own timeouts (Redis 2 s, the
broker's publish retries, the database's connect) are all well inside it."""
REDIS_DOWN = {"redis_unavailable", "spawner_unavailable"}
"""What the gateway answers while Redis is down: it holds the windows, the rate counts
and the broker's queue."""
BROKER_LOST = "consumer: Connection to broker lost"
"""Celery's line when a worker loses its broker connection."""
DATABASE_WAIT = "the ledger's database is unavailable, waiting for it"
"""The worker's line when its ledger connection waits for the database (vx11.core.ledger)."""
PG_BINARIES = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))


# --- a private PostgreSQL --------------------------------------------------------------


class PostgresCluster:
    """A PostgreSQL cluster of its own, in a temporary directory, on a free port of
    127.0.0.1: made with initdb, stopped as a crash would (``-m immediate``) and started
    again on the same port. Run as ``postgres`` (or ``nobody``) when the tests run as
    root, since initdb refuses root."""

    def __init__(self) -> None:
        self.bin = Path(PG_BINARIES[-1]).parent
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="vx11-chaos-pg-"))
        self.data, self.sockets = self.root / "data", self.root / "sockets"
        self.sockets.mkdir()
        self.user = None
        if os.geteuid() == 0:
            self.user = "postgres" if _user_exists("postgres") else "nobody"
            for path in (self.root, self.sockets):
                shutil.chown(path, self.user)
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str, timeout: float = 180.0) -> None:
        command = [str(self.bin / argv[0]), *argv[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{argv[0]}: {done.stdout}{done.stderr}{self.log()[-2000:]}"

    def create(self) -> PostgresCluster:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "-E", "UTF8", "--no-sync", "--no-instructions")  # fmt: skip
        return self.start()

    def start(self) -> PostgresCluster:
        options = f"-p {self.port} -k {self.sockets} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options,
                  "-l", str(self.root / "postgres.log"), "-w", "-t", "60", "start")  # fmt: skip
        return self

    def crash(self) -> None:
        """Stop at once, without a checkpoint, as a killed server would."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self.crash()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


needs_postgres = pytest.mark.skipif(
    not PG_BINARIES, reason="PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/pg_ctl)"
)


# --- the stack -------------------------------------------------------------------------


@dataclass
class Chaos:
    base: str
    config: dict[str, str]
    redis: RedisServer
    postgres: PostgresCluster | None
    gateway: Process
    worker: Process
    ledger: Ledger
    token: dict[str, str]
    """The header of a real token (checked in Redis, rate counted in Redis) whose rate
    limit the load below stays well under."""

    def open_window(self) -> None:
        body = {"target": "spawner", "ttl_seconds": 900}
        status, window = http("POST", f"{self.base}/vx11/window/open", body, self.token)
        assert status == 200, window

    def waiting_jobs(self) -> int:
        """Jobs waiting in the spawner queue, not yet delivered to a worker."""
        with redis.Redis.from_url(self.redis.url, socket_timeout=5) as client:
            return sum(
                client.llen(key) for key in client.scan_iter(match=f"{QUEUE}*", _type="list")
            )

    def records(self, correlation_id: str) -> dict[str, dict[str, Any]]:
        """The ledger's records of ``correlation_id``, read from the database itself."""
        query = select(spawns).where(spawns.c.correlation_id == correlation_id)
        with self.ledger.engine.connect() as conn:
            return {row.spawn_uuid: dict(row) for row in conn.execute(query).mappings()}

    def status_of(self, spawn_uuid: str) -> str:
        query = select(spawns.c.status).where(spawns.c.spawn_uuid == spawn_uuid)
        with self.ledger.engine.connect() as conn:
            return conn.execute(query).scalar_one()

    def accepted_entries(self, spawn_uuids: set[str]) -> Counter:
        """How many ``spawn_accepted`` audit entries each of ``spawn_uuids`` has."""
        query = select(audit.c.spawn_uuid).where(
            audit.c.event == "spawn_accepted", audit.c.spawn_uuid.in_(sorted(spawn_uuids))
        )
        with self.ledger.engine.connect() as conn:
            return Counter(row.spawn_uuid for row in conn.execute(query))

    def settle(self, correlation_id: str, timeout: float) -> dict[str, dict[str, Any]]:
        """The records of ``correlation_id`` once every one is terminal."""

        def all_terminal():  # wrapped: no records at all is an answer too
            records = self.records(correlation_id)
            return [records] if all(r["status"] in TERMINAL for r in records.values()) else None

        try:
            return wait_for(all_terminal, timeout=timeout, interval=0.5)[0]
        except AssertionError:
            pending = Counter(
                (r["status"], r["published"]) for r in self.records(correlation_id).values()
            )
            raise AssertionError(
                f"{correlation_id}: not all terminal after {timeout} s: {pending}"
            ) from None

    def still_the_same_processes(self, gateway_pid: int, worker_pid: int) -> None:
        assert (self.gateway.proc.pid, self.worker.proc.pid) == (gateway_pid, worker_pid)
        assert self.gateway.alive() and self.worker.alive()

    def fresh_spawns_complete(self, tag: str, count: int = 20, timeout: float = 90) -> None:
        """``count`` new spawns, submitted now, are all accepted and all end DONE with
        their own output: the gateway publishes and the worker consumes again."""
        cid = f"{tag}-after-{uuid.uuid4().hex[:6]}"
        accepted = {}
        for n in range(count):
            body = {"task_type": "shell", "code": f"echo {tag}-{n}", "correlation_id": cid}
            status, answer = http("POST", f"{self.base}/vx11/spawn", body, self.token)
            assert (status, answer.get("status")) == (200, "QUEUED"), (n, status, answer)
            accepted[answer["spawn_uuid"]] = f"{tag}-{n}\n"
        records = self.settle(cid, timeout)
        outcome = {u: (r["status"], r["stdout"]) for u, r in records.items()}
        assert outcome == {u: ("DONE", out) for u, out in accepted.items()}


@pytest.fixture(scope="module")
def chaos(tmp_path_factory) -> Chaos:
    root = tmp_path_factory.mktemp("chaos")
    # Sandboxed code runs as nobody, who cannot traverse pytest's private temp dir.
    sandbox_root = tempfile.mkdtemp(prefix="vx11-chaos-sandbox-")
    os.chmod(sandbox_root, 0o711)
    started: list[Any] = []
    try:
        server = RedisServer(free_port(), root / "redis").start()
        started.append(server)
        postgres = None
        if PG_BINARIES:
            postgres = PostgresCluster()
            started.append(postgres)
            postgres.create()
        config = {  # the default limits stay on: the rate is counted in Redis, too
            "redis_url": server.url,
            "data_dir": str(root / "data"),
            "database_url": postgres.url if postgres else f"sqlite:///{root / 'ledger.db'}",
            "sandbox_root": sandbox_root,
        }
        worker = start_worker(config, root)
        started.append(worker)
        gateway, base = start_gateway(config, root)
        started.append(gateway)
        ledger = Ledger.from_url(config["database_url"])
        body = {"label": "chaos", "scopes": ["spawn", "window", "read"]}
        status, made = http("POST", f"{base}/vx11/tokens", body, TOKEN)
        assert status == 201, made
        token = {"X-VX11-Token": made["token"]}
        yield Chaos(base, config, server, postgres, gateway, worker, ledger, token)
        ledger.engine.dispose()
    finally:
        for process in reversed(started):
            if isinstance(process, PostgresCluster):
                process.destroy()
            else:
                process.stop()
        shutil.rmtree(sandbox_root, ignore_errors=True)


# --- load ------------------------------------------------------------------------------


@dataclass
class Answer:
    sent_in: str
    answered_in: str
    status: int | None
    body: Any
    failure: str | None = None
    """The client-side failure (a timeout, a connection error) when no answer came."""

    @property
    def code(self) -> str | None:
        return self.body.get("error") if isinstance(self.body, dict) else None

    @property
    def queued(self) -> bool:
        return (
            self.status == 200
            and isinstance(self.body, dict)
            and self.body.get("status") == "QUEUED"
        )


@dataclass
class Load:
    """Client threads that submit spawns continuously, each answer tagged with the
    phase (``pre-1``, ``down-1``...) it was sent and answered in. In a phase that has a
    ``quota``, the clients stop submitting once that many were accepted, so the worker's
    backlog stays short."""

    base: str
    token: dict[str, str]
    correlation_id: str
    phase: str
    quota: dict[str, int] = field(default_factory=dict)
    clients: int = 3
    pause: float = 0.25
    answers: list[Answer] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        self.threads = [
            threading.Thread(target=self._client, args=(i,)) for i in range(self.clients)
        ]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=REQUEST_TIMEOUT + 5)

    def _client(self, index: int) -> None:
        n = 0
        while not self.stop.wait(self.pause):
            sent_in = self.phase
            quota = self.quota.get(sent_in)
            if (
                quota is not None
                and self.count(lambda a, p=sent_in: a.sent_in == p and a.queued) >= quota
            ):
                continue
            # Long enough for the worker to fall behind: when the outage begins, some
            # spawns are running and some wait in the queue.
            body = {"task_type": "shell", "code": f"sleep 0.3; echo c{index}-{n}",
                    "correlation_id": self.correlation_id}  # fmt: skip
            try:
                status, answer = http(
                    "POST", f"{self.base}/vx11/spawn", body, self.token, timeout=REQUEST_TIMEOUT
                )
                failure = None
            except OSError as exc:  # a timeout, a reset: counted, and a failure of the test
                status, answer, failure = None, None, f"{type(exc).__name__}: {exc}"
            with self.lock:
                self.answers.append(Answer(sent_in, self.phase, status, answer, failure))
            n += 1

    def first(self, predicate) -> Answer | None:
        with self.lock:
            return next((answer for answer in self.answers if predicate(answer)), None)

    def count(self, predicate) -> int:
        with self.lock:
            return sum(1 for answer in self.answers if predicate(answer))

    def outage(self, name: str, down: Any, up: Any, worker_met_it: Any) -> None:
        """Phase ``down-<name>``: ``down()``, then wait until each client has had several
        answers sent and received while it was down, and ``worker_met_it()``; phase
        ``restart-<name>``: ``up()``; then phase ``up-<name>``."""
        self.phase = f"down-{name}"
        down()
        wait_for(
            lambda: (
                self.count(lambda a: a.sent_in == a.answered_in == f"down-{name}")
                >= 4 * self.clients
                and worker_met_it()
            ),
            timeout=60,
        )
        self.phase = f"restart-{name}"
        up()
        self.phase = f"up-{name}"

    def runs_again(self, chaos: Chaos, name: str) -> None:
        """A spawn accepted in phase ``up-<name>`` ends DONE: the gateway accepts and the
        worker consumes again."""
        first = wait_for(
            lambda: self.first(lambda a: a.sent_in == f"up-{name}" and a.queued), timeout=60
        )
        wait_for(lambda: chaos.status_of(first.body["spawn_uuid"]) == "DONE", timeout=90)


def every_answer_200_or_503(answers: list[Answer]) -> None:
    failures = [a for a in answers if a.failure or a.status not in (200, 503)]
    assert not failures, f"{len(failures)} answers neither 200 nor 503: {failures[:5]}"


def every_accepted_spawn_done(
    chaos: Chaos, answers: list[Answer], cid: str
) -> tuple[set[str], dict[str, dict[str, Any]]]:
    """The uuids of the spawns accepted (``answers``), and the records of ``cid`` once all
    have ended: each accepted spawn has one, and ended DONE."""
    accepted = {a.body["spawn_uuid"] for a in answers if a.queued}
    records = chaos.settle(cid, timeout=120)
    assert accepted <= set(records)
    outcome = Counter((r["status"], r["reason"]) for u, r in records.items() if u in accepted)
    assert outcome == {("DONE", None): len(accepted)}, outcome
    return accepted, records


def summary(answers: list[Answer]) -> str:
    counts = Counter(f"{a.status} {a.code}" if a.code else str(a.status) for a in answers)
    return f"{len(answers)} answers ({', '.join(f'{k}: {n}' for k, n in sorted(counts.items()))})"


def show(capsys, line: str) -> None:
    with capsys.disabled():
        print(f"\n[chaos] {line}")


# --- 1. Redis ------------------------------------------------------------------------


def test_redis_killed_under_load_is_503_and_gateway_and_worker_recover_by_themselves(chaos, capsys):
    """Redis holds the windows, the tokens, the broker's queue and Celery's results.
    Killed (SIGKILL) twice under load and restarted on the same port, with its AOF: while
    it is down every answer is a 503 naming what is unavailable, never a 500 or a hang;
    once it is back the same gateway and the same worker serve again (Celery's known
    failure to consume after a Redis reconnect, celery #8030, #8091, #9054, would show
    here as spawns never ending), and every spawn accepted ends as the lifecycle says."""
    chaos.open_window()
    gateway_pid, worker_pid = chaos.gateway.proc.pid, chaos.worker.proc.pid
    cid = f"chaos-redis-{uuid.uuid4().hex[:6]}"
    with Load(chaos.base, chaos.token, cid, phase="pre-1", quota={"up-1": 6, "up-2": 6}) as load:
        for round_ in ("1", "2"):
            load.phase = f"pre-{round_}"
            # The worker has fallen behind: jobs wait in the queue, which must survive.
            wait_for(lambda: chaos.waiting_jobs() >= 3, timeout=60, interval=0.1)
            # The worker notices each kill before Redis comes back: each round is a
            # reconnect of its own.
            lost = chaos.worker.log().count(BROKER_LOST)
            load.outage(
                round_,
                lambda: chaos.redis.stop(sig=signal.SIGKILL),
                chaos.redis.start,
                worker_met_it=lambda n=lost: chaos.worker.log().count(BROKER_LOST) > n,
            )
            load.runs_again(chaos, round_)
    answers = list(load.answers)

    every_answer_200_or_503(answers)
    while_down = Counter(
        (a.status, a.code)
        for a in answers
        if a.sent_in == a.answered_in and a.sent_in.startswith("down")
    )
    assert set(while_down) <= {(503, code) for code in REDIS_DOWN}, while_down
    unavailable = [a for a in answers if a.status == 503]
    assert all(a.code in REDIS_DOWN for a in unavailable), Counter(a.code for a in unavailable)
    assert all(a.queued for a in answers if a.status == 200)

    # Every spawn the gateway accepted ends, and runs: none is lost with the queue.
    accepted, records = every_accepted_spawn_done(chaos, answers, cid)
    # A spawn refused once recorded was ended at once and never run: the broker could
    # not take its job, or Redis went down before its publish was confirmed.
    others = Counter((r["status"], r["reason"]) for u, r in records.items() if u not in accepted)
    ended_for = {("ERROR", "broker_unavailable"), ("ERROR", "redis_unavailable")}
    assert set(others) <= ended_for, others
    assert all(r["started_at"] is None for u, r in records.items() if u not in accepted)
    answered = Counter(a.code for a in answers)
    assert answered["spawner_unavailable"] == others[("ERROR", "broker_unavailable")]
    assert answered["redis_unavailable"] >= others[("ERROR", "redis_unavailable")]

    chaos.still_the_same_processes(gateway_pid, worker_pid)
    chaos.fresh_spawns_complete("after-redis")
    show(capsys, f"Redis killed twice under load: {summary(answers)}; {len(accepted)} accepted, "
                 "all DONE")  # fmt: skip


# --- 2. PostgreSQL ---------------------------------------------------------------------


@needs_postgres
def test_postgres_restarted_under_load_is_503_and_spawns_complete_after(chaos, capsys):
    """The ledger's PostgreSQL stopped as in a crash, under load, and started again:
    while it is down every spawn request is 503 ``database_unavailable``; once it is back
    the same gateway (its pool pings before use) and the same worker (which writes the
    ledger) serve again, and every spawn accepted ends as the lifecycle says."""
    chaos.open_window()
    gateway_pid, worker_pid = chaos.gateway.proc.pid, chaos.worker.proc.pid
    cid = f"chaos-pg-{uuid.uuid4().hex[:6]}"
    with Load(chaos.base, chaos.token, cid, phase="pre", quota={"up-pg": 6}) as load:
        # The worker has fallen behind: jobs wait in the queue when the database goes,
        # and those it runs meanwhile must be recorded once it is back.
        wait_for(lambda: chaos.waiting_jobs() >= 3, timeout=60, interval=0.1)
        # Down until the worker has met the outage: its ledger connection waits for the
        # database (for up to 10 s, well past this restart's few).
        waited = chaos.worker.log().count(DATABASE_WAIT)
        load.outage(
            "pg",
            lambda: crash_and_check_requeue(chaos),
            chaos.postgres.start,
            worker_met_it=lambda: chaos.worker.log().count(DATABASE_WAIT) > waited,
        )
        load.runs_again(chaos, "pg")
    answers = list(load.answers)

    every_answer_200_or_503(answers)
    while_down = Counter(
        (a.status, a.code) for a in answers if a.sent_in == a.answered_in == "down-pg"
    )
    assert set(while_down) == {(503, "database_unavailable")}, while_down
    assert all(a.code == "database_unavailable" for a in answers if a.status == 503)
    assert all(a.queued for a in answers if a.status == 200)

    accepted, records = every_accepted_spawn_done(chaos, answers, cid)
    # A refused request leaves a record only if the database went down between writing
    # it and marking its job published (a millisecond or two): the gateway cannot end
    # it then, the sweeper does (gateway_lost), unless a worker claims its job first.
    # That last case runs a spawn whose client was told 503: a known gap, counted here.
    refused = Counter(
        (r["status"], r["reason"], r["published"]) for u, r in records.items() if u not in accepted
    )
    assert set(refused) <= {
        ("ERROR", "database_unavailable", False),
        ("ERROR", "gateway_lost", False),
        ("DONE", None, False),
    }, refused
    chaos.still_the_same_processes(gateway_pid, worker_pid)
    chaos.fresh_spawns_complete("after-postgres")
    show(capsys, f"PostgreSQL restarted under load: {summary(answers)}; {len(accepted)} accepted, "
                 f"all DONE; records of refused requests: {dict(refused) or 'none'}")  # fmt: skip


def crash_and_check_requeue(chaos: Chaos) -> None:
    """Crash the database, and check what a worker does with a job whose claim meets an
    outage longer than its patience (10 s, longer than this test's): it gives the job
    back to the broker (requeue), never acknowledges it, which would lose it and leave
    its record QUEUED for good."""
    chaos.postgres.crash()
    store = Ledger.from_url(chaos.config["database_url"])  # no patience: fails at once
    try:
        with pytest.raises(Reject) as rejected:
            spawner._claim(store, str(uuid.uuid4()), 1, "chaos@test")
    finally:
        store.engine.dispose()
    assert rejected.value.requeue is True


# --- 3. a gateway worker killed inside its transaction ---------------------------------

KILL_REQUESTS = 4
"""Requests held at once: no more than a gunicorn worker's threads (start_gateway: 4), so
each reaches the database whichever worker accepted it."""


def waiting_on_audit(chaos: Chaos, workers: set[int]) -> set[int]:
    """The client ports of the gateway ``workers``' database sessions that wait on a lock
    to insert an audit entry."""
    query = text(
        "SELECT client_port FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND query ILIKE 'INSERT INTO audit%'"
    )
    with chaos.ledger.engine.connect() as conn:
        waiting = {row.client_port for row in conn.execute(query)}
    return waiting & set().union(*(connected_ports(pid, "local") for pid in workers))


def sessions_from(chaos: Chaos, ports: set[int]) -> int:
    query = text("SELECT client_port FROM pg_stat_activity WHERE client_port IS NOT NULL")
    with chaos.ledger.engine.connect() as conn:
        return sum(row.client_port in ports for row in conn.execute(query))


@dataclass
class HeldRequest:
    """One spawn request on a connection of its own, answered (or cut) in a thread."""

    conn: HTTPConnection
    port: int
    status: int | None = None
    body: bytes = b""
    failure: str | None = None
    thread: threading.Thread | None = None

    @classmethod
    def send(cls, chaos: Chaos, body: bytes) -> HeldRequest:
        host, port = chaos.base.removeprefix("http://").rsplit(":", 1)
        conn = HTTPConnection(host, int(port), timeout=120)
        conn.connect()
        held = cls(conn, conn.sock.getsockname()[1])
        headers = {**chaos.token, "Content-Type": "application/json"}
        held.thread = threading.Thread(target=held._run, args=(body, headers))
        held.thread.start()
        return held

    def _run(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            self.conn.request("POST", "/vx11/spawn", body=body, headers=headers)
            response = self.conn.getresponse()
            self.status, self.body = response.status, response.read()
        except (OSError, HTTPException) as exc:
            self.failure = type(exc).__name__
        finally:
            self.conn.close()


@needs_postgres
def test_a_gateway_worker_killed_inside_its_transaction_leaves_no_half_written_spawn(chaos, capsys):
    """test_scale kills a gunicorn worker at random mid-batch, and between a record's
    commit and its publish (the sweeper ends those ERROR gateway_lost). Here the kill
    lands inside the transaction that writes a spawn's record and its spawn_accepted
    entry: the test locks the audit table, so every request has inserted its record,
    uncommitted, and waits to insert its entry. The killed worker's clients see their
    connection cut and its records vanish with their transactions; every other request
    is accepted whole: its record, its entry, published, and DONE."""
    chaos.open_window()
    cid = f"chaos-kill-{uuid.uuid4().hex[:6]}"
    workers = gateway_workers(chaos)
    held: list[HeldRequest] = []
    locker = chaos.ledger.engine.connect()
    try:
        locker.execute(text(f"LOCK TABLE {audit.name} IN EXCLUSIVE MODE"))  # until commit
        for n in range(KILL_REQUESTS):  # one at a time: each is at the lock before the next
            body = {"task_type": "shell", "code": f"echo k{n}", "correlation_id": cid}
            held.append(HeldRequest.send(chaos, json.dumps(body).encode()))
            wait_for(lambda n=n: len(waiting_on_audit(chaos, workers)) == n + 1, timeout=60)
        assert len(chaos.records(cid)) == 0  # written, not committed: invisible
        owner = {
            request.port: next(pid for pid in workers if request.port in connected_ports(pid))
            for request in held
        }
        victim = Counter(owner.values()).most_common(1)[0][0]
        victim_db_ports = set(connected_ports(victim, "local"))
        os.kill(victim, signal.SIGKILL)
        locker.commit()
    finally:
        locker.close()
        for request in held:
            request.thread.join(timeout=120)

    cut = [r for r in held if owner[r.port] == victim]
    served = [r for r in held if owner[r.port] != victim]
    assert all(r.failure and r.status is None for r in cut), [(r.status, r.failure) for r in cut]
    assert all(r.status == 200 for r in served), [(r.status, r.failure, r.body) for r in served]
    # The killed worker's sessions roll back and end; gunicorn replaces the worker.
    wait_for(lambda: sessions_from(chaos, victim_db_ports) == 0, timeout=60)
    replacement = gateway_workers(chaos, without=frozenset({victim})) - workers
    assert len(replacement) == 1, "gunicorn did not replace the killed worker"

    accepted = {json.loads(r.body)["spawn_uuid"] for r in served}
    records = chaos.settle(cid, timeout=90)
    assert set(records) == accepted, "a request cut mid-transaction left a record"
    assert chaos.accepted_entries(accepted) == Counter(dict.fromkeys(accepted, 1))
    assert {(r["status"], r["published"]) for r in records.values()} <= {("DONE", True)}
    # Nor anywhere in this module's ledger: every record has its entry, and each entry
    # its record.
    assert not half_written(chaos), half_written(chaos)

    chaos.fresh_spawns_complete("after-kill", count=5)
    show(
        capsys,
        f"gunicorn worker killed with {len(cut)} of {len(held)} requests inside their "
        f"transaction: {len(cut)} cut, {len(served)} accepted whole, nothing left over",
    )


def half_written(chaos: Chaos) -> dict[str, list[str]]:
    """In the whole ledger: the records without their spawn_accepted entry, and the
    spawn_accepted entries without their record."""
    entries = select(audit.c.spawn_uuid).where(audit.c.event == "spawn_accepted")
    without_entry = select(spawns.c.spawn_uuid).where(spawns.c.spawn_uuid.not_in(entries))
    without_record = entries.where(audit.c.spawn_uuid.not_in(select(spawns.c.spawn_uuid)))
    with chaos.ledger.engine.connect() as conn:
        found = {
            "records without their entry": list(conn.scalars(without_entry)),
            "entries without their record": list(conn.scalars(without_record)),
        }
    return {what: uuids for what, uuids in found.items() if uuids}


# --- 4. jobs the broker lost -----------------------------------------------------------


def test_jobs_the_redis_broker_lost_are_found_and_run(chaos, capsys):
    """Two states the Redis kills above leave now and then (whether they do is a matter
    of milliseconds), made here on purpose with the worker's consumer cancelled: a job
    gone from Redis altogether (it acknowledged the write, then died before its AOF had
    it), and a job left delivered and unacknowledged by a worker that lost its connection
    before starting it (Redis would hand it out again only after its visibility timeout,
    an hour and more). The workers' sweeper finds both, hands the one back and publishes
    the other again, and both spawns run, once."""
    chaos.open_window()
    cid = f"chaos-lost-{uuid.uuid4().hex[:6]}"
    control = Celery("vx11-chaos", broker=chaos.redis.url)
    control.conf.update(accept_content=["json"])
    broker = redis.Redis.from_url(chaos.redis.url)
    try:
        assert control.control.cancel_consumer(QUEUE, reply=True, timeout=10, limit=1)
        uuids = {}
        for name in ("gone", "unacked"):
            body = {"task_type": "shell", "code": f"echo {name}", "correlation_id": cid}
            status, answer = http("POST", f"{chaos.base}/vx11/spawn", body, chaos.token)
            assert (status, answer["status"]) == (200, "QUEUED"), answer
            uuids[name] = answer["spawn_uuid"]
        jobs = {json.loads(raw)["headers"]["id"]: raw for raw in broker.lrange(QUEUE, 0, -1)}
        assert set(uuids.values()) <= set(jobs)
        for raw in (jobs[uuids["gone"]], jobs[uuids["unacked"]]):
            assert broker.lrem(QUEUE, 1, raw) == 1
        # kombu's record of a delivery: the message, its exchange and routing key in the
        # "unacked" hash under its delivery tag, and the time it was delivered.
        message = json.loads(jobs[uuids["unacked"]])
        tag = message["properties"]["delivery_tag"]
        broker.hset("unacked", tag, json.dumps([message, QUEUE, "spawn"]))
        broker.zadd("unacked_index", {tag: time.time() - 60})
    finally:
        control.control.add_consumer(QUEUE, reply=True, timeout=10, limit=1)
        control.close()
        broker.close()

    records = chaos.settle(cid, timeout=SWEEP_EVERY + ORPHANED_AFTER + RECHECK_AFTER + 60)
    outcome = {u: (r["status"], r["stdout"], r["attempts"]) for u, r in records.items()}
    assert outcome == {
        uuids["gone"]: ("DONE", "gone\n", 1),
        uuids["unacked"]: ("DONE", "unacked\n", 1),
    }
    log = chaos.worker.log()
    assert f"spawn {uuids['gone']}: the broker lost its job; published it again" in log
    assert f"spawn {uuids['unacked']}: its job was left unacknowledged" in log
    show(capsys, "a job Redis lost and a job left unacknowledged: both found and run, once")
