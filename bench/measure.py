"""The three measurements. Each returns its figures and notes: the details (counts,
where the time went) printed above the table."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import subprocess
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.baseline import BareSandbox, reap_orphans
from bench.cpu import Cpu, difference
from bench.load import LoadResult, PythonLoad, Request, Wrk
from bench.report import Figure
from bench.stack import AUTH, BenchStack
from vx11.core.states import TERMINAL_STATES

SHELL_TRUE = {"task_type": "shell", "code": "true", "ttl_seconds": 30}
PYTHON_PRINT = {"task_type": "python", "code": "print(1)", "ttl_seconds": 30}
TERMINAL = {state.value for state in TERMINAL_STATES}


class ApiClient:
    """One keep-alive connection to the gateway, reconnecting when gunicorn closes it.

    A 429 (a token's rate limit or quota, when the configuration sets one) is waited out
    as a client that respects it would: it sleeps ``Retry-After`` seconds and asks
    again. Every such refusal and wait is counted in :attr:`refused` (all clients)."""

    refused = Counter[str]()
    """``requests`` refused with 429, ``waited_ms`` spent waiting them out (all clients)."""
    _refused_lock = threading.Lock()

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=70)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + 300
        while True:
            status, headers, raw = self._request(method, path, body)
            if status != 429 or time.monotonic() > deadline:
                break
            wait = _retry_after(headers.get("Retry-After"))
            with self._refused_lock:
                self.refused["requests"] += 1
                self.refused["waited_ms"] += round(wait * 1000)
            time.sleep(wait)
        if status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {status} {raw[:300]!r}")
        return json.loads(raw)

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None
    ) -> tuple[int, http.client.HTTPMessage, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**AUTH, "Content-Type": "application/json"} if data else AUTH
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                return response.status, response.headers, response.read()
            except (ConnectionError, http.client.RemoteDisconnected):
                # An idle keep-alive connection gunicorn closed before reading the request.
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def spawn(self, request: dict[str, Any]) -> str:
        accepted = self.call("POST", "/vx11/spawn", request)
        if accepted.get("status") != "QUEUED":
            raise RuntimeError(f"spawn not accepted: {accepted}")
        return accepted["spawn_uuid"]

    def close(self) -> None:
        self.conn.close()


def _retry_after(value: str | None) -> float:
    """Seconds a 429's ``Retry-After`` asks for (delta-seconds), at least 10 ms."""
    try:
        return max(0.01, float(value or 1))
    except ValueError:
        return 1.0


def refusals_note() -> str | None:
    """What the 429s waited out so far cost, if there were any."""
    refused = ApiClient.refused
    if not refused["requests"]:
        return None
    return (
        f"refusals: {refused['requests']} requests answered 429 were waited out "
        f"(Retry-After, {refused['waited_ms'] / 1000:.1f} s in all, summed over clients); "
        "the figures through the API include those waits"
    )


def submit_all(stack: BenchStack, requests: list[dict[str, Any]], clients: int) -> list[str]:
    """Submit ``requests`` from ``clients`` threads, each with a connection of its own;
    the accepted spawns' uuids (the first refusal or error is raised)."""

    def submit(share: list[dict[str, Any]]) -> list[str]:
        client = ApiClient(stack.host, stack.port)
        try:
            return [client.spawn(request) for request in share]
        finally:
            client.close()

    with ThreadPoolExecutor(clients) as pool:
        shares = pool.map(submit, [requests[i::clients] for i in range(clients)])
        return [spawn_uuid for share in shares for spawn_uuid in share]


def percentile(values: list[float], percent: int) -> float:
    """The ``percent``-th percentile, interpolated (the median for 50)."""
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


# 1. Accept throughput -------------------------------------------------------------


def accept_throughput(
    stack: BenchStack, generator: Wrk | PythonLoad, connections: int, seconds: float
) -> tuple[list[Figure], list[str]]:
    """``POST /vx11/spawn`` against ``GET /health``, same gunicorn, same connections, with
    no worker consuming. Segments run health, spawn, spawn, health so that drift in the
    machine's load weighs on both alike."""
    health = Request("GET", f"{stack.base}/health")
    spawn = Request(
        "POST",
        f"{stack.base}/vx11/spawn",
        json.dumps(SHELL_TRUE),
        (*AUTH.items(), ("Content-Type", "application/json")),
    )
    generator.run(health, connections, 1)  # warm-up: gunicorn threads, broker connections
    generator.run(spawn, connections, 1)
    rows_before = stack.count_rows()
    totals = {"health": LoadResult(0, 0.0, 0), "spawn": LoadResult(0, 0.0, 0)}
    cpu: dict[str, dict[str, Cpu]] = {"health": {}, "spawn": {}}
    segments = (("health", health), ("spawn", spawn), ("spawn", spawn), ("health", health))
    for name, request in segments:
        before = stack.cpu()
        totals[name] += generator.run(request, connections, seconds / 2)
        for part, used in difference(stack.cpu(), before).items():
            cpu[name][part] = cpu[name].get(part, Cpu()) + used
    accepted_rows = stack.count_rows() - rows_before
    purged = stack.purge_queue()
    stack.delete_rows()
    notes = [
        f"accept: load generator {generator.name}, {connections} keep-alive connections, "
        f"{seconds:g} s per endpoint (two segments each, health-spawn-spawn-health)",
        f"accept: GET /health {totals['health'].requests} ok in {totals['health'].seconds:.1f} s, "
        f"POST /vx11/spawn {totals['spawn'].requests} ok in {totals['spawn'].seconds:.1f} s, "
        f"errors {totals['health'].errors + totals['spawn'].errors}; "
        f"ledger rows added {accepted_rows}, jobs purged from the queue {purged}",
        *(
            f"accept: CPU per {label}: gateway {_per(cpu[name]['gateway'].own, totals[name])}, "
            f"redis {_per(cpu[name]['redis'].own, totals[name])}, load generator "
            f"{_per(_generator_cpu(cpu[name]['bench']), totals[name])}"
            for name, label in (("health", "GET /health"), ("spawn", "POST /vx11/spawn"))
        ),
    ]
    figure = Figure(
        "accept: POST /vx11/spawn vs GET /health",
        "req/s",
        totals["spawn"].rate,
        totals["health"].rate,
        "ratio",
        0.40,
    )
    return [figure], notes


def _per(seconds: float, load: LoadResult) -> str:
    return _ms(seconds / max(1, load.requests + load.errors))


def _generator_cpu(bench: Cpu) -> float:
    """wrk is a reaped child; the Python client is this process's own threads."""
    return bench.own + bench.reaped


# 2. End-to-end throughput -----------------------------------------------------------


def end_to_end_throughput(
    stack: BenchStack, bare: BareSandbox, spawns: int, clients: int, concurrency: int
) -> tuple[list[Figure], list[str]]:
    """``spawns`` shell ``true`` runs through the API until every record is terminal
    (watched in the ledger), against the same runs through a bare local pool."""
    pool = bare.throughput("shell", "true", spawns, concurrency)
    reap_orphans(keep=stack.pids())

    batch = _measured_batch(stack, SHELL_TRUE, spawns, clients, concurrency)
    b, cpu = batch, batch.cpu
    rate = spawns / b.elapsed
    held = statistics.mean((r["finished_at"] - r["started_at"]).total_seconds() for r in b.ran)
    slot = concurrency * b.elapsed / spawns
    total_cpu = sum(cpu.values()) + b.sandbox_cpu
    notes = [
        f"throughput: {spawns} spawns from {clients} client threads, all submitted after "
        f"{b.submitted:.1f} s, all terminal after {b.elapsed:.1f} s ({_counts(b.statuses)})",
        f"throughput: per spawn and worker slot: {_ms(slot)} of wall time; record RUNNING"
        f"->terminal {_ms(held)} (sandbox run {_ms(b.sandbox)}); outside that window "
        f"(delivery, result, events, ack, waiting for a core) {_ms(slot - held)}",
        f"throughput: CPU per spawn: gateway {_ms(cpu['gateway'])}, Celery worker "
        f"{_ms(cpu['worker'])}, {_sandbox_name(b.slots)} {_ms(b.sandbox_cpu)}, "
        f"redis {_ms(cpu['redis'])}, "
        f"benchmark client {_ms(cpu['bench'])}; total {_ms(total_cpu)}, so "
        f"{os.cpu_count()} cores allow at most {os.cpu_count() / total_cpu:.0f} spawns/s",
        f"throughput: bare pool: {_ms(concurrency / pool.rate)} per run and slot; CPU per run "
        f"{_ms(pool.cpu_per_run)} (sandboxed code {_ms(pool.sandbox_cpu_per_run)})",
    ]
    figure = Figure(
        f"end-to-end throughput: {spawns} x shell `true`", "spawns/s", rate, pool.rate, "ratio", 0.6
    )
    return [figure], notes


@dataclass(frozen=True)
class Batch:
    """One measured batch of spawns through the API, per spawn where it says so."""

    elapsed: float
    submitted: float
    cpu: dict[str, float]
    """CPU seconds per spawn of each service."""
    statuses: Counter[str]
    ran: list[dict[str, Any]]
    """The records of the spawns that ran (a rejected one has no start or run time)."""
    sandbox: float
    """Mean seconds a run took in the sandbox."""
    sandbox_cpu: float
    """CPU seconds per spawn of the sandbox: its cgroups' total when it has them."""
    slots: float | None
    """The sandbox's cgroups' CPU per spawn, None without cgroups."""


def _measured_batch(
    stack: BenchStack, request: dict[str, Any], spawns: int, clients: int, concurrency: int
) -> Batch:
    """``spawns`` times ``request`` through the API, after a warm-up, until every record
    is terminal: the time, CPU and records of the batch."""
    _submit_and_wait(stack, [request] * (2 * concurrency), clients)  # warm-up
    stack.delete_rows()
    wall_start = datetime.now(UTC)
    cpu_before, slots_before = stack.cpu(), stack.slots_cpu()
    started = time.perf_counter()
    submitted = _submit_and_wait(stack, [request] * spawns, clients)
    elapsed = time.perf_counter() - started
    cpu = {part: used.own / spawns for part, used in difference(stack.cpu(), cpu_before).items()}
    slots_after = stack.slots_cpu()
    slots = None
    if slots_after is not None and slots_before is not None:
        slots = (slots_after - slots_before) / spawns
    records = [r for r in stack.records() if r["created_at"] >= wall_start]
    ran = [r for r in records if r["started_at"] and r["duration_ms"] is not None]
    sandbox = statistics.mean(r["duration_ms"] for r in ran) / 1000 if ran else float("nan")
    runs_cpu = statistics.mean(r["cpu_time_ms"] or 0 for r in ran) / 1000 if ran else 0.0
    return Batch(
        elapsed, submitted, cpu, Counter(r["status"] for r in records), ran, sandbox,
        slots if slots is not None else runs_cpu, slots,
    )  # fmt: skip


def _counts(statuses: Counter[str]) -> str:
    return ", ".join(f"{n} {status}" for status, n in statuses.most_common())


def _sandbox_name(slots: float | None) -> str:
    """What the sandbox's CPU figure counts: its cgroups' total (the runs and a slot's
    preparation of each, which no run's own figure holds), or the runs' own figures."""
    return "sandbox (its cgroups)" if slots is not None else "sandboxed code"


def _submit_and_wait(stack: BenchStack, requests: list[dict[str, Any]], clients: int) -> float:
    """Submit ``requests`` from ``clients`` threads and wait until the ledger holds that
    many more terminal records; the seconds submission took."""
    before = stack.count_rows(terminal_only=True)
    started = time.perf_counter()
    submit_all(stack, requests, clients)
    submitted = time.perf_counter() - started
    target = before + len(requests)
    deadline = time.monotonic() + 120 + len(requests)
    while stack.count_rows(terminal_only=True) < target:
        if time.monotonic() > deadline:
            raise RuntimeError("spawns did not all end in time; see the worker's log")
        time.sleep(0.01)
    return submitted


def end_to_end_python(
    stack: BenchStack, spawns: int, clients: int, concurrency: int
) -> tuple[float, list[str]]:
    """``spawns`` python ``print(1)`` runs through the API until every record is
    terminal, as the shell throughput: the spawns per second, and notes."""
    b = _measured_batch(stack, PYTHON_PRINT, spawns, clients, concurrency)
    notes = [
        f"python throughput: {spawns} python print(1) spawns from {clients} client threads, "
        f"all submitted after {b.submitted:.1f} s, all terminal after {b.elapsed:.1f} s "
        f"({_counts(b.statuses)}), {spawns / b.elapsed:.1f}/s; per spawn and worker slot "
        f"{_ms(concurrency * b.elapsed / spawns)} (sandbox run {_ms(b.sandbox)}); CPU per "
        f"spawn: gateway {_ms(b.cpu['gateway'])}, Celery worker {_ms(b.cpu['worker'])}, "
        f"{_sandbox_name(b.slots)} {_ms(b.sandbox_cpu)}, redis {_ms(b.cpu['redis'])}",
    ]
    return spawns / b.elapsed, notes


# 3. End-to-end latency ----------------------------------------------------------------


def end_to_end_latency(
    stack: BenchStack, python: str, samples: int, wait: int = 30, warmup: int = 3
) -> tuple[list[Figure], list[str]]:
    """One python ``print(1)`` at a time: ``POST /vx11/spawn``, then one
    ``GET /vx11/spawn/<id>?wait=`` that answers when it is terminal; interleaved with a
    plain ``subprocess.run`` of ``python -I -c 'print(1)'`` (the interpreter the
    sandbox runs) from this process, the code a user runs instead."""
    client = ApiClient(stack.host, stack.port)
    argv = [python, "-I", "-c", "print(1)"]
    vx11: list[float] = []
    plain: list[float] = []
    posts: list[float] = []
    seen: dict[str, datetime] = {}
    try:
        for index in range(warmup + samples):
            started = time.perf_counter()
            spawn_uuid = client.spawn(PYTHON_PRINT)
            accepted = time.perf_counter()
            record = client.call("GET", f"/vx11/spawn/{spawn_uuid}?wait={wait}")
            ended = time.perf_counter()
            ended_wall = datetime.now(UTC)
            if record["status"] != "DONE" or record["stdout"] != "1\n":
                raise RuntimeError(f"python spawn did not print 1: {record}")
            plain_started = time.perf_counter()
            done = subprocess.run(argv, capture_output=True, text=True, check=False)
            plain_elapsed = time.perf_counter() - plain_started
            if done.returncode != 0 or done.stdout != "1\n":
                raise RuntimeError(f"{argv} failed: {done.returncode} {done.stderr[-300:]!r}")
            if index >= warmup:
                vx11.append(ended - started)
                posts.append(accepted - started)
                seen[spawn_uuid] = ended_wall
                plain.append(plain_elapsed)
    finally:
        client.close()

    records = {r["spawn_uuid"]: r for r in stack.records() if r["spawn_uuid"] in seen}
    rows = list(records.values())
    queued = statistics.median((r["started_at"] - r["created_at"]).total_seconds() for r in rows)
    held = statistics.median((r["finished_at"] - r["started_at"]).total_seconds() for r in rows)
    sandbox = statistics.median(r["duration_ms"] for r in rows) / 1000
    read_back = statistics.median(
        (seen[u] - r["finished_at"]).total_seconds() for u, r in records.items()
    )
    notes = [
        f"latency: {samples} python spawns of print(1), one at a time, each POST then one "
        f"GET ?wait={wait}, after {warmup} not counted, each followed by a plain "
        f"subprocess.run of `{python} -I -c 'print(1)'`; medians: POST answered "
        f"{_ms(statistics.median(posts))}, created->RUNNING {_ms(queued)}, RUNNING->terminal "
        f"{_ms(held)} (sandbox run {_ms(sandbox)}), terminal->answered {_ms(read_back)}; "
        f"plain python p50 {_ms(percentile(plain, 50))}, p90 {_ms(percentile(plain, 90))}",
    ]
    figures = [
        Figure(
            f"end-to-end latency p{rank}: python `print(1)` vs plain python3 -I",
            "ms",
            percentile(vx11, rank) * 1000,
            percentile(plain, rank) * 1000,
            "difference",
            goal,
            note,
        )
        for rank, goal, note in (
            (50, 5, "and below 0 once the interpreter is warm"),
            (90, None, None),
        )
    ]
    return figures, notes
