"""Where the CPU goes: CPU seconds used by each started service (its whole process
group), by the code it ran and reaped, and by the benchmark's own process and children.

On a two-core machine the services compete for the same cores, so CPU per request or
per spawn, summed over the processes involved, bounds the throughput.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

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
