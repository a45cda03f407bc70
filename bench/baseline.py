"""The baseline: the bare sandbox function, with the limits and sandbox root the worker
uses, called directly or from a local process pool of the worker's concurrency."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import time
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench.cpu import self_cpu
from tests.support import child_pids
from vx11.core.config import Settings
from workers.sandbox import Limits, Outcome, SandboxConfig, run_sandboxed
from workers.sandbox.levels import choose
from workers.spawner import limits_for


class BareSandbox:
    """``run_sandboxed`` exactly as the spawner task calls it, minus Celery and the ledger."""

    def __init__(self, settings: Settings, ttl_seconds: int) -> None:
        self.limits = limits_for(ttl_seconds, None, settings)
        self.config = choose(settings)  # the level a worker on this machine would use

    def run(self, task_type: str, code: str) -> Outcome:
        return run_sandboxed(task_type, code, limits=self.limits, config=self.config)

    def timed(self, task_type: str, code: str) -> float:
        """Seconds one run takes, start to outcome."""
        started = time.perf_counter()
        outcome = self.run(task_type, code)
        elapsed = time.perf_counter() - started
        _require_success(outcome)
        return elapsed

    def throughput(self, task_type: str, code: str, runs: int, concurrency: int) -> PoolRun:
        """``runs`` runs through a pool of ``concurrency`` processes (forked, like Celery's
        prefork pool), each taking one run at a time."""
        context = multiprocessing.get_context("fork")
        args = (self.limits, self.config)
        warmup = [(task_type, code)] * concurrency * 2
        cpu_before = self_cpu()
        sandbox_cpu_ms = 0
        pool = ProcessPoolExecutor(concurrency, context, _init_pool, args)
        try:
            list(pool.map(_pool_run, warmup))
            started = time.perf_counter()
            for outcome in pool.map(_pool_run, [(task_type, code)] * runs, chunksize=1):
                _require_success(outcome)
                sandbox_cpu_ms += outcome.cpu_time_ms
            elapsed = time.perf_counter() - started
        finally:  # on Ctrl-C or a failure, drop the runs not started yet
            pool.shutdown(wait=True, cancel_futures=True)
        used = self_cpu() - cpu_before  # the pool's processes, and what they reaped
        return PoolRun(
            rate=runs / elapsed,
            cpu_per_run=used.reaped / (runs + len(warmup)),
            sandbox_cpu_per_run=sandbox_cpu_ms / 1000 / runs,
        )


@dataclass(frozen=True)
class PoolRun:
    rate: float
    """Runs per second."""
    cpu_per_run: float
    """CPU seconds per run: the pool process's and the sandboxed code's."""
    sandbox_cpu_per_run: float
    """CPU seconds per run of the sandboxed code alone."""


_pool_sandbox: tuple[Limits, SandboxConfig] | None = None


def _init_pool(limits: Limits, config: SandboxConfig) -> None:
    global _pool_sandbox
    # Like Celery's pool processes: Ctrl-C is the parent's to handle.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # ... and each one the reaper of its own runs' orphans, as a worker's pool process
    # is: a fork keeps the sandbox's memo of having become one, not the kernel's flag.
    _become_subreaper()
    _pool_sandbox = (limits, config)


PR_SET_CHILD_SUBREAPER = 36


def _become_subreaper() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def _pool_run(job: tuple[str, str]) -> Outcome:
    limits, config = _pool_sandbox
    return run_sandboxed(job[0], job[1], limits=limits, config=config)


def _require_success(outcome: Outcome) -> None:
    if outcome.exit_code != 0:
        raise RuntimeError(f"a bare sandbox run failed: {outcome}")


def reap_orphans(keep: Collection[int] = ()) -> int:
    """Reap this process's dead children other than ``keep`` (the services it started,
    which their ``Popen`` waits for); how many.

    ``run_sandboxed`` makes the process that calls it the reaper of its runs' orphans,
    as a worker's pool process is. The benchmark calls it in its own process (and forks
    pools from it), and the sandbox cost figure also runs bwrap alone, as root: bwrap's
    init, orphaned, becomes a root-owned zombie here, which the sandbox's own reaping
    (of each run's uid only) leaves alone. Zombies left behind count against their
    uid's process limit on the whole host."""
    reaped = 0
    for pid in child_pids(os.getpid()) - set(keep):
        with contextlib.suppress(OSError):  # gone, or not ours to wait for after all
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if state == "Z" and os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped += 1
    return reaped
