"""The three measurements. Each returns its figures and notes: the details (counts,
where the time went) printed above the table."""

from __future__ import annotations

import http.client
import json
import os
import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
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
    """One keep-alive connection to the gateway, reconnecting when gunicorn closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=30)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {**AUTH, "Content-Type": "application/json"} if data else AUTH
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                response = self.conn.getresponse()
                raw = response.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected):
                # An idle keep-alive connection gunicorn closed before reading the request.
                self.conn.close()
                if attempt == 2:
                    raise
        if response.status != 200:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {raw[:300]!r}")
        return json.loads(raw)

    def spawn(self, request: dict[str, Any]) -> str:
        accepted = self.call("POST", "/vx11/spawn", request)
        if accepted.get("status") != "QUEUED":
            raise RuntimeError(f"spawn not accepted: {accepted}")
        return accepted["spawn_uuid"]

    def close(self) -> None:
        self.conn.close()


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

    _submit_and_wait(stack, [SHELL_TRUE] * (2 * concurrency), clients)  # warm-up
    stack.delete_rows()
    wall_start = datetime.now(UTC)
    cpu_before = stack.cpu()
    started = time.perf_counter()
    submitted = _submit_and_wait(stack, [SHELL_TRUE] * spawns, clients)
    elapsed = time.perf_counter() - started
    cpu = {part: used.own / spawns for part, used in difference(stack.cpu(), cpu_before).items()}
    rate = spawns / elapsed

    records = [r for r in stack.records() if r["created_at"] >= wall_start]
    statuses = Counter(r["status"] for r in records)
    # A spawn that ended without running (rejected, say) has no start or run time.
    ran = [r for r in records if r["started_at"] and r["duration_ms"] is not None]
    held = statistics.mean((r["finished_at"] - r["started_at"]).total_seconds() for r in ran)
    sandbox = statistics.mean(r["duration_ms"] for r in ran) / 1000
    sandbox_cpu = statistics.mean(r["cpu_time_ms"] or 0 for r in ran) / 1000
    slot = concurrency * elapsed / spawns
    total_cpu = sum(cpu.values()) + sandbox_cpu
    notes = [
        f"throughput: {spawns} spawns from {clients} client threads, all submitted after "
        f"{submitted:.1f} s, all terminal after {elapsed:.1f} s "
        f"({', '.join(f'{n} {status}' for status, n in statuses.most_common())})",
        f"throughput: per spawn and worker slot: {_ms(slot)} of wall time; record RUNNING"
        f"->terminal {_ms(held)} (sandbox run {_ms(sandbox)}); outside that window "
        f"(delivery, result, events, ack, waiting for a core) {_ms(slot - held)}",
        f"throughput: CPU per spawn: gateway {_ms(cpu['gateway'])}, Celery worker "
        f"{_ms(cpu['worker'])}, sandboxed code {_ms(sandbox_cpu)}, redis {_ms(cpu['redis'])}, "
        f"benchmark client {_ms(cpu['bench'])}; total {_ms(total_cpu)}, so "
        f"{os.cpu_count()} cores allow at most {os.cpu_count() / total_cpu:.0f} spawns/s",
        f"throughput: bare pool: {_ms(concurrency / pool.rate)} per run and slot; CPU per run "
        f"{_ms(pool.cpu_per_run)} (sandboxed code {_ms(pool.sandbox_cpu_per_run)})",
    ]
    figure = Figure(
        f"end-to-end throughput: {spawns} x shell `true`", "spawns/s", rate, pool.rate, "ratio", 0.6
    )
    return [figure], notes


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


# 3. End-to-end latency ----------------------------------------------------------------


def end_to_end_latency(
    stack: BenchStack, bare: BareSandbox, samples: int, poll: float = 0.002, warmup: int = 3
) -> tuple[list[Figure], list[str]]:
    """One python ``print(1)`` at a time, submitted and polled every ``poll`` seconds
    until terminal, interleaved with the same code run by the bare sandbox."""
    client = ApiClient(stack.host, stack.port)
    vx11: list[float] = []
    bare_times: list[float] = []
    posts: list[float] = []
    polls: list[int] = []
    gets: list[float] = []
    seen: dict[str, datetime] = {}
    try:
        for index in range(warmup + samples):
            started = time.perf_counter()
            spawn_uuid = client.spawn(PYTHON_PRINT)
            accepted = time.perf_counter()
            count = 0
            while True:
                asked = time.perf_counter()
                record = client.call("GET", f"/vx11/spawn/{spawn_uuid}")
                count += 1
                if index >= warmup:
                    gets.append(time.perf_counter() - asked)
                if record["status"] in TERMINAL:
                    break
                time.sleep(poll)
            ended = time.perf_counter()
            ended_wall = datetime.now(UTC)
            if record["status"] != "DONE" or record["stdout"] != "1\n":
                raise RuntimeError(f"python spawn did not print 1: {record}")
            bare_elapsed = bare.timed("python", "print(1)")
            reap_orphans(keep=stack.pids())
            if index >= warmup:
                vx11.append(ended - started)
                posts.append(accepted - started)
                polls.append(count)
                seen[spawn_uuid] = ended_wall
                bare_times.append(bare_elapsed)
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
        f"latency: {samples} python spawns of print(1), one at a time, polled every "
        f"{poll * 1000:g} ms; medians: POST answered {_ms(statistics.median(posts))}, "
        f"created->RUNNING {_ms(queued)}, RUNNING->terminal {_ms(held)} (sandbox run "
        f"{_ms(sandbox)}), terminal->seen by the client {_ms(read_back)}; "
        f"{statistics.median(polls):.0f} GETs per spawn, each answered in "
        f"{_ms(statistics.median(gets))} (p90 {_ms(percentile(gets, 90))})",
    ]
    figures = [
        Figure(
            f"end-to-end latency p{rank}: python `print(1)`",
            "ms",
            percentile(vx11, rank) * 1000,
            percentile(bare_times, rank) * 1000,
            "difference",
            goal,
        )
        for rank, goal in ((50, 15), (90, None))
    ]
    return figures, notes
