"""Resident memory of the stack's long-lived processes, sampled in a thread while a figure
runs: the gateway's gunicorn workers, the Celery worker's main process and its pool
processes, and redis-server. Each sample is marked with the phase it was taken in, so
that a phase's start, peak and end can be read back per process."""

from __future__ import annotations

import contextlib
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from tests.support import child_pids

MB = 1024 * 1024


def rss(pid: int) -> int | None:
    """Bytes of ``pid``'s resident set, None once it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


@dataclass(frozen=True)
class Usage:
    """One process's resident bytes over a phase."""

    start: int
    peak: int
    end: int

    def text(self) -> str:
        return f"{self.start / MB:.1f}/{self.peak / MB:.1f}/{self.end / MB:.1f}"


class MemorySampler:
    """Samples every ``interval`` seconds, from :meth:`start` to :meth:`stop`, the RSS of
    the processes ``roles`` finds: a callable per role returning the pids to sample now
    (they may change: a pool process replaced is a new pid)."""

    def __init__(
        self, roles: dict[str, Callable[[], Iterable[int]]], interval: float = 1.0
    ) -> None:
        self.roles = roles
        self.interval = interval
        self.phase = ""
        # phase -> role -> pid -> samples, in order
        self.samples: dict[str, dict[str, dict[int, list[int]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list))
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._lock = threading.Lock()

    def start(self, phase: str) -> MemorySampler:
        self.mark(phase)
        self._thread.start()
        return self

    def mark(self, phase: str) -> None:
        """Samples from now on belong to ``phase``; one is taken at once."""
        with self._lock:
            self.phase = phase
        self.sample()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        with self._lock:
            phase = self.phase
            for role, pids in self.roles.items():
                with contextlib.suppress(OSError):  # a process gone between list and read
                    for pid in pids():
                        value = rss(pid)
                        if value is not None:
                            self.samples[phase][role][pid].append(value)

    def usage(self, phase: str, role: str) -> dict[int, Usage]:
        """Start, peak and end of each process of ``role`` during ``phase``."""
        return {
            pid: Usage(values[0], max(values), values[-1])
            for pid, values in self.samples[phase][role].items()
        }

    def total(self, phase: str, role: str) -> Usage:
        """The role's processes summed: first sample, largest sum, last sample."""
        series = list(self.samples[phase][role].values())
        if not series:
            return Usage(0, 0, 0)
        length = min(len(values) for values in series)
        sums = [sum(values[i] for values in series) for i in range(length)]
        return Usage(sums[0], max(sums), sums[-1])


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (gunicorn's workers, Celery's pool processes)."""
    return sorted(child_pids(pid))
