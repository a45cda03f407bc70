"""6. Queue drain (issue 6): ``depth`` shell spawns queued at once while no worker
consumes, then drained, against ``baseline`` spawns queued and drained the same way just
before and just after. The cost per spawn must not grow with the queue's depth, none may
be lost, and the gateway's and the worker's memory must stay flat.

The worker stays up throughout (its processes are the ones whose memory is sampled): it
stops and resumes consuming the spawn queue through Celery's remote control
(``cancel_consumer``, ``add_consumer``), and the benchmark checks that the broker holds
every queued job, and only those, before it resumes.
"""

from __future__ import annotations

import re
import sqlite3
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import redis

from bench.cpu import difference
from bench.measure import SHELL_TRUE, TERMINAL, ApiClient, submit_all
from bench.memory import MB, MemorySampler, children
from bench.report import Figure
from bench.stack import BenchStack, parse_timestamp
from tests.support import broker_task_ids
from vx11.gateway.services import make_celery

RECEIVED = re.compile(r"Task vx11\.spawn\[([0-9a-f-]{36})\] received")
RAN = re.compile(r"spawn ([0-9a-f-]{36}) ([A-Z]+) \(exit ")
"""The spawner's line after each run of code in the sandbox (workers/spawner.py)."""
POLL = 0.5
"""Seconds between two looks at the ledger while a queue drains: the drain's rate comes
from the records' own timestamps, so looking more often would only cost CPU."""
PAGE = 200
"""Records per page when the spawns are read back through the API (its maximum)."""
MEMORY_GOAL = 1.10
"""Most a role's resident memory may reach, during the deep phase, over its start."""
ROLES = ("gateway workers", "Celery pool", "Celery main", "redis")


@dataclass
class Phase:
    """One batch: queued with no worker consuming, then drained."""

    label: str
    depth: int
    correlation_id: str
    uuids: list[str]
    submitted: float = 0.0
    """Seconds the submission took (4 clients, through the API)."""
    drained: float = 0.0
    """Seconds from resuming consumption until the ledger showed every spawn terminal."""
    span: float = 0.0
    """Seconds from the first spawn's start to the last one's end, from the ledger."""
    cpu: dict[str, float] | None = None
    """CPU seconds per spawn of each service during the drain."""
    sandbox_cpu: float = 0.0
    """CPU seconds per spawn of the sandboxed code, from the ledger."""
    statuses: Counter | None = None
    """How many ended in each terminal state."""
    redis_memory: tuple[int, int] = (0, 0)
    """Redis's used_memory before the submission and once the queue is full."""

    @property
    def rate(self) -> float:
        return self.depth / self.span

    @property
    def cpu_per_spawn(self) -> float:
        """CPU seconds per spawn of the worker, redis and the sandboxed code: what the
        rate comes to on a busy machine, where other work takes cores away."""
        cpu = self.cpu or {}
        return cpu.get("worker", 0) + cpu.get("redis", 0) + self.sandbox_cpu


class Consumption:
    """Stops and resumes the stack's worker's consumption of the spawn queue."""

    def __init__(self, stack: BenchStack) -> None:
        self.celery = make_celery(stack.settings)
        self.queue = stack.settings.spawn_queue

    def pause(self) -> None:
        self._command(self.celery.control.cancel_consumer)

    def resume(self) -> None:
        self._command(self.celery.control.add_consumer)

    def _command(self, command) -> None:
        replies = command(self.queue, reply=True, timeout=30, limit=1)
        if not replies:
            raise RuntimeError(f"the worker did not answer {command.__name__}")

    def close(self) -> None:
        self.celery.close()


def queue_drain(
    stack: BenchStack, depth: int, baseline: int, clients: int, progress: Callable[[str], None]
) -> tuple[list[Figure], list[str]]:
    """The drain of ``depth`` queued spawns against that of ``baseline`` queued spawns
    (the mean of one run before and one after); the stack's worker must be running."""
    gateway, worker = stack.processes["gateway"].proc.pid, stack.processes["worker"].proc.pid
    sampler = MemorySampler(
        {
            "gateway workers": lambda: children(gateway),
            "Celery pool": lambda: children(worker),
            "Celery main": lambda: [worker],
            "redis": lambda: [stack.processes["redis"].proc.pid],
        }
    )
    consumption = Consumption(stack)
    batch = uuid.uuid4().hex[:8]
    phases = [
        Phase(label, size, f"bench-drain-{batch}-{label}", [])
        for label, size in (("before", baseline), ("deep", depth), ("after", baseline))
    ]
    sampler.start("warm-up")
    try:
        for phase in phases:
            consumption.pause()
            sampler.mark(phase.label)
            progress(f"queue drain: {phase.depth} spawns queued with no worker consuming")
            _queue(stack, phase, clients)
            consumption.resume()
            _drain(stack, phase, progress)
            _check(stack, phase)
        sampler.mark("done")
    finally:  # each phase ends consuming again: the worker is left as it was found
        sampler.stop()
        consumption.close()
    stack.delete_rows()
    return _figures(phases, sampler), _notes(phases, sampler)


def _queue(stack: BenchStack, phase: Phase, clients: int) -> None:
    """Submit the phase's spawns through the API; check the broker holds each of their
    jobs once, waiting, and nothing else."""
    with redis.Redis.from_url(stack.redis_url) as client:
        memory_before = client.info("memory")["used_memory"]
    request = {**SHELL_TRUE, "correlation_id": phase.correlation_id}
    started = time.perf_counter()
    phase.uuids = submit_all(stack, [request] * phase.depth, clients)
    phase.submitted = time.perf_counter() - started
    queued = broker_task_ids(stack.settings.effective_broker_url, stack.settings.spawn_queue)
    if Counter(queued) != Counter(phase.uuids):
        raise RuntimeError(
            f"queue drain: the broker holds {len(queued)} jobs ({len(set(queued))} distinct) "
            f"for {phase.depth} spawns queued while no worker consumed"
        )
    with redis.Redis.from_url(stack.redis_url) as client:
        if client.hlen("unacked"):
            raise RuntimeError("queue drain: a worker took jobs while it was not consuming")
        phase.redis_memory = (memory_before, client.info("memory")["used_memory"])


def _drain(stack: BenchStack, phase: Phase, progress: Callable[[str], None]) -> None:
    """Wait until no spawn is left QUEUED or RUNNING; the CPU the drain used."""
    cpu_before = stack.cpu()
    started = time.perf_counter()
    deadline = time.monotonic() + 120 + phase.depth
    reported = time.monotonic()
    while (left := stack.count_pending()) > 0:
        if time.monotonic() > deadline:
            raise RuntimeError(f"queue drain: {left} spawns still pending; see the worker's log")
        if time.monotonic() - reported >= 30:
            progress(f"queue drain: {left} of {phase.depth} still to run")
            reported = time.monotonic()
        time.sleep(POLL)
    phase.drained = time.perf_counter() - started
    used = difference(stack.cpu(), cpu_before)
    phase.cpu = {part: used[part].own / phase.depth for part in ("gateway", "worker", "redis")}


def _check(stack: BenchStack, phase: Phase) -> None:
    """None lost, none run twice: the ledger, the API, Celery's results, the worker's log
    and the broker agree that each spawn was received and run exactly once, and on the
    terminal state it ended in. (A run may end other than DONE without any fault of the
    stack's: on a shared host, a basic-level spawn's ``kill -9 -1`` reaches every run
    that shares its uid, as docs/security.md says.)"""
    expected = Counter(phase.uuids)
    if len(expected) != phase.depth:
        raise RuntimeError(f"queue drain: {phase.depth - len(expected)} uuids given twice")
    records = _ledger_records(stack, phase.correlation_id)
    ledger = {r["spawn_uuid"]: r["status"] for r in records}
    problems = []
    if Counter(r["spawn_uuid"] for r in records) != expected:
        problems.append(f"the ledger holds {len(records)} records")
    bad = [r for r in records if r["status"] not in TERMINAL or r["attempts"] != 1]
    if bad:
        problems.append(f"{len(bad)} records not terminal at attempt 1, e.g. {bad[0]}")
    listed = _api_records(stack, phase.correlation_id)
    if Counter(r["spawn_uuid"] for r in listed) != expected:
        problems.append(f"the API lists {len(listed)} spawns")
    differ = [r["spawn_uuid"] for r in listed if ledger.get(r["spawn_uuid"]) != r["status"]]
    if differ:
        problems.append(f"the API and the ledger differ on {len(differ)} spawns")
    results = _celery_disagreements(stack, ledger)
    if results:
        problems.append(f"{len(results)} Celery results differ from the ledger: {results[:3]}")
    # A spawn's record is terminal just before its pool process logs the run's line.
    deadline = time.monotonic() + 10
    while True:
        log = stack.processes["worker"].log()
        received = Counter(u for u in RECEIVED.findall(log) if u in expected)
        ran = Counter(u for u, _ in RAN.findall(log) if u in expected)
        if (received == expected and ran == expected) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if received != expected or ran != expected:
        problems.append(
            f"the worker's log shows {len(received)} received ({sum(received.values())} "
            f"times) and {len(ran)} ran ({sum(ran.values())} times)"
        )
    leftover = _wait_broker_empty(stack)
    if leftover:
        problems.append(f"the broker still holds {leftover} jobs")
    if problems:
        raise RuntimeError(f"queue drain ({phase.depth} queued): " + "; ".join(problems))
    phase.statuses = Counter(ledger.values())
    ran_records = [r for r in records if r["started_at"] is not None]
    started = min(r["started_at"] for r in ran_records)
    finished = max(r["finished_at"] for r in ran_records)
    phase.span = (finished - started).total_seconds()
    phase.sandbox_cpu = statistics.mean(r["cpu_time_ms"] or 0 for r in ran_records) / 1000


def _ledger_records(stack: BenchStack, correlation_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(stack.ledger_path, timeout=30) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute(
            "SELECT spawn_uuid, status, attempts, started_at, finished_at, cpu_time_ms "
            "FROM spawns WHERE correlation_id = ?",
            (correlation_id,),
        ).fetchall()
    return [
        {**dict(row), **{k: parse_timestamp(row[k]) for k in ("started_at", "finished_at")}}
        for row in rows
    ]


def _api_records(stack: BenchStack, correlation_id: str) -> list[dict[str, Any]]:
    """Every spawn of the batch, as ``GET /vx11/spawns`` lists them, page after page."""
    client = ApiClient(stack.host, stack.port)
    records: list[dict[str, Any]] = []
    query: dict[str, Any] = {"correlation_id": correlation_id, "limit": PAGE}
    try:
        while True:
            page = client.call("GET", f"/vx11/spawns?{urlencode(query)}")
            records += page["spawns"]
            if page["next_cursor"] is None:
                return records
            query["cursor"] = page["next_cursor"]
    finally:
        client.close()


def _celery_disagreements(stack: BenchStack, ledger: dict[str, str]) -> list[Any]:
    """The spawns whose Celery result disagrees with their record in the ledger
    (``ledger``: each uuid's status there): a DONE one is a SUCCESS holding its summary,
    any other a FAILURE naming its state."""
    celery = make_celery(stack.settings, results=True)
    wrong: list[Any] = []
    uuids = list(ledger)
    try:
        backend = celery.backend
        for start in range(0, len(uuids), 1000):
            chunk = uuids[start : start + 1000]
            values = backend.mget([backend.get_key_for_task(u) for u in chunk])
            for spawn_uuid, raw in zip(chunk, values, strict=True):
                meta = backend.decode_result(raw) if raw is not None else {"status": None}
                result = meta.get("result")
                if ledger[spawn_uuid] == "DONE":
                    agrees = meta["status"] == "SUCCESS" and result.get("spawn_uuid") == spawn_uuid
                else:
                    agrees = meta["status"] == "FAILURE" and f" {ledger[spawn_uuid]}" in str(result)
                if not agrees:
                    wrong.append((spawn_uuid, meta["status"], str(result)[:200]))
    finally:
        celery.close()
    return wrong


def _wait_broker_empty(stack: BenchStack, timeout: float = 30.0) -> int:
    """The jobs left in the broker once the last acknowledgement had time to land (a
    record turns terminal just before its job is acknowledged)."""
    deadline = time.monotonic() + timeout
    while True:
        left = len(broker_task_ids(stack.settings.effective_broker_url, stack.settings.spawn_queue))
        if left == 0 or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _figures(phases: list[Phase], sampler: MemorySampler) -> list[Figure]:
    before, deep, after = phases
    figures = [
        Figure(
            f"queue drain: {deep.depth} queued vs {before.depth} queued",
            "spawns/s",
            deep.rate,
            (before.rate + after.rate) / 2,
            "ratio",
            0.90,
        ),
        Figure(
            f"queue drain: CPU per spawn, {deep.depth} queued vs {before.depth} queued",
            "ms",
            deep.cpu_per_spawn * 1000,
            (before.cpu_per_spawn + after.cpu_per_spawn) / 2 * 1000,
            "slowdown",
            1.10,
        ),
    ]
    for role in ("gateway workers", "Celery pool"):
        usage = sampler.total("deep", role)
        figures.append(
            Figure(
                f"memory: {role} RSS, peak vs start of the {deep.depth} phase",
                "MB",
                usage.peak / MB,
                usage.start / MB,
                "slowdown",
                MEMORY_GOAL,
            )
        )
    return figures


def _notes(phases: list[Phase], sampler: MemorySampler) -> list[str]:
    notes = []
    for phase in phases:
        cpu = phase.cpu or {}
        notes.append(
            f"queue drain ({phase.label}): {phase.depth} spawns submitted in "
            f"{phase.submitted:.1f} s ({phase.depth / phase.submitted:.0f}/s) with no worker "
            f"consuming, the broker holding each job once; drained in {phase.drained:.1f} s "
            f"(first start to last end {phase.span:.1f} s: {phase.rate:.1f} spawns/s); "
            f"ledger, API and Celery's results agree: all terminal at attempt 1 ("
            + ", ".join(f"{n} {status}" for status, n in (phase.statuses or Counter()).items())
            + "), each received and run once by the worker; CPU per spawn: worker "
            f"{_ms(cpu.get('worker', 0))}, sandboxed code {_ms(phase.sandbox_cpu)}, redis "
            f"{_ms(cpu.get('redis', 0))}; redis used_memory {phase.redis_memory[0] / MB:.1f} "
            f"MB before, {phase.redis_memory[1] / MB:.1f} MB with the queue full"
        )
    for phase in phases:
        parts = []
        for role in ROLES:
            each = sampler.usage(phase.label, role)
            if each:
                total = sampler.total(phase.label, role)
                parts.append(
                    f"{role} {total.text()}"
                    + (f" ({', '.join(u.text() for u in each.values())})" if len(each) > 1 else "")
                )
        notes.append(
            f"queue drain ({phase.label}): RSS start/peak/end in MB, submission and drain: "
            + "; ".join(parts)
        )
    return notes
