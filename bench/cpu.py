"""Where the CPU goes: CPU seconds used by each started service (its whole process
group), by the code it ran and reaped, and by the benchmark's own process and children.

On a two-core machine the services compete for the same cores, so CPU per request or
per spawn, summed over the processes involved, bounds the throughput.
"""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of a set of processes (``own``) and of the children they reaped."""

    own: float = 0.0
    reaped: float = 0.0

    def __add__(self, other: Cpu) -> Cpu:
        return Cpu(self.own + other.own, self.reaped + other.reaped)

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.reaped - other.reaped)


def group_cpu(pgid: int) -> Cpu:
    """The CPU of every live process in process group ``pgid``."""
    own = reaped = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # from field 3 (state) on
        if int(fields[2]) != pgid:
            continue
        own += int(fields[11]) + int(fields[12])  # utime, stime
        reaped += int(fields[13]) + int(fields[14])  # cutime, cstime
    return Cpu(own / TICK, reaped / TICK)


def self_cpu() -> Cpu:
    """This process (all its threads) and the children it has waited for (wrk, pools)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return Cpu(me.ru_utime + me.ru_stime, children.ru_utime + children.ru_stime)


def snapshot(groups: dict[str, int]) -> dict[str, Cpu]:
    """CPU of each named process group, and of this process under ``bench``."""
    return {**{name: group_cpu(pgid) for name, pgid in groups.items()}, "bench": self_cpu()}


def difference(after: dict[str, Cpu], before: dict[str, Cpu]) -> dict[str, Cpu]:
    return {name: after[name] - before[name] for name in after}


def slots_cpu(worker_pid: int) -> float | None:
    """Seconds of CPU used so far in the sandbox cgroups of the worker whose main process
    is ``worker_pid`` (``vx11-<pid>-*``: at the bwrap level its slots, which hold the
    runs and the preparation of each, outside any run's own figure); None without
    them (no cgroups, or runs that removed theirs: the basic level)."""
    total = 0
    found = False
    for usage in Path("/sys/fs/cgroup").glob(f"**/vx11-{worker_pid}-*/cpuacct.usage"):
        found = True
        with contextlib.suppress(OSError, ValueError):
            total += int(usage.read_text())  # v1, nanoseconds
    for stat in Path("/sys/fs/cgroup").glob(f"**/vx11-{worker_pid}-*/cpu.stat"):
        found = True
        with contextlib.suppress(OSError, ValueError, KeyError):
            lines = dict(line.split() for line in stat.read_text().splitlines())
            total += int(lines["usage_usec"]) * 1000  # v2
    return total / 1e9 if found else None
