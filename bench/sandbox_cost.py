"""4. Sandbox cost: the wall time of one bare ``run_sandboxed`` run at each level, next to
a plain ``subprocess.run`` of the same command (issue 3).

Every variant runs once per round, the rounds run one after another and each round
starts one variant further along, so that drift in the machine's load weighs on every
variant alike. A few parts of the sandbox are timed alone in the same rounds, to say
where its time goes.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from bench.baseline import reap_orphans
from bench.report import Figure
from vx11.core.config import Settings
from workers.sandbox import Limits, SandboxConfig, resolve_python, run_sandboxed, sandbox_identity
from workers.sandbox.bwrap import bwrap_argv
from workers.sandbox.launch import SHELL
from workers.sandbox.levels import base_config, bwrap_problem
from workers.sandbox.process import end_adopted
from workers.spawner import limits_for

TTL_SECONDS = 30  # the limits of a 30 s spawn, as in the other figures
SHELL_TRUE = [SHELL, "-c", "true"]


@dataclass
class Variant:
    """One thing timed: ``run`` does it once and raises if it went wrong."""

    name: str
    run: Callable[[], None]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.times, n=10, method="inclusive")[-1]


def sandbox_cost(settings: Settings, runs: int, warmup: int = 3) -> tuple[list[Figure], list[str]]:
    """Per-run medians over ``runs`` round-robin rounds (after ``warmup`` rounds not
    counted) of the plain commands, the sandboxed runs at each level, and the parts."""
    config = base_config(settings)  # detects, and makes, this worker's cgroup parents
    try:
        limits = limits_for(TTL_SECONDS, None, settings)
        problem = bwrap_problem(config)
        variants = _variants(config, limits, problem)
        gc.collect()
        for index in range(warmup + runs):
            shift = index % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                started = time.perf_counter()
                variant.run()
                elapsed = time.perf_counter() - started
                if index >= warmup:
                    variant.times.append(elapsed)
            reap_orphans()  # no service runs yet: every dead child here is an orphan
    finally:
        if config.cgroups is not None:
            config.cgroups.close()
    timed = {variant.name: variant for variant in variants}
    return _figures(timed), _notes(timed, config, problem, runs, warmup)


def _variants(config: SandboxConfig, limits: Limits, problem: str | None) -> list[Variant]:
    python = resolve_python(config.python)  # the interpreter the sandbox runs, for both
    basic = config
    variants = [
        Variant("plain shell", lambda: _plain(SHELL_TRUE, "")),
        Variant("basic shell", lambda: _sandboxed(basic, limits, "shell", "true", "")),
        Variant("plain python", lambda: _plain([python, "-I", "-c", "print(1)"], "1\n")),
        Variant("basic python", lambda: _sandboxed(basic, limits, "python", "print(1)", "1\n")),
        # The parts, each alone:
        Variant("fork", lambda: _plain(SHELL_TRUE, "", preexec_fn=_nothing)),
    ]
    if config.cgroups is not None:
        no_cgroup = replace(config, cgroups=None)
        variants.append(
            Variant("basic shell, no cgroup",
                    lambda: _sandboxed(no_cgroup, limits, "shell", "true", ""))
        )  # fmt: skip
    identity = sandbox_identity(config.user)
    if identity is not None and config.adopt_orphans:
        variants.append(Variant("orphan sweep", lambda: end_adopted(identity.uid)))
    if problem is None:
        bwrap = replace(config, level="bwrap")
        namespaces = bwrap_argv(config.bwrap, config.tmpfs_mb << 20, SHELL_TRUE, [])
        variants += [
            Variant("bwrap shell", lambda: _sandboxed(bwrap, limits, "shell", "true", "")),
            Variant("bwrap python",
                    lambda: _sandboxed(bwrap, limits, "python", "print(1)", "1\n")),
            Variant("bwrap alone", lambda: _plain(namespaces, "")),
        ]  # fmt: skip
    return variants


def _nothing() -> None:
    """An empty ``preexec_fn``: subprocess then forks the whole process, not vfork."""


def _plain(argv: list[str], expected: str, **options) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **options)
    if done.returncode != 0 or done.stdout != expected:
        raise RuntimeError(f"{argv[:3]} failed: {done.returncode} {done.stderr[-300:]!r}")


def _sandboxed(
    config: SandboxConfig, limits: Limits, task_type: str, code: str, expected: str
) -> None:
    outcome = run_sandboxed(task_type, code, limits=limits, config=config)
    if outcome.exit_code != 0 or outcome.stdout != expected:
        raise RuntimeError(f"a bare sandbox run ({config.level}) failed: {outcome}")


FIGURES = (
    ("bwrap shell", "plain shell", "sandbox cost: bwrap shell `true` vs plain", 3.0),
    ("bwrap python", "plain python", "sandbox cost: bwrap python print(1) vs plain", 1.5),
    ("basic shell", "plain shell", "sandbox cost: basic shell `true` vs plain", None),
    ("basic python", "plain python", "sandbox cost: basic python print(1) vs plain", None),
)


def _figures(timed: dict[str, Variant]) -> list[Figure]:
    return [
        Figure(
            name, "ms", timed[sandboxed].median * 1000, timed[plain].median * 1000, "slowdown", goal
        )
        for sandboxed, plain, name, goal in FIGURES
        if sandboxed in timed
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


PARTS = (
    ("fork", "plain shell forked (an empty preexec_fn) instead of vforked"),
    ("basic shell, no cgroup", "basic shell without its cgroup"),
    ("orphan sweep", "the orphan sweep alone (end_adopted)"),
    ("bwrap alone", "bwrap's namespaces alone (vfork, no cgroup, bwrap's own uid)"),
)


def _notes(
    timed: dict[str, Variant], config: SandboxConfig, problem: str | None, runs: int, warmup: int
) -> list[str]:
    """The medians, then the sandbox's time beyond the plain run split, by subtracting
    medians, into the parts timed alone; ``the rest`` is what no part accounts for."""
    cgroups = (
        f"per-run cgroups v{config.cgroups.version}"
        if config.cgroups is not None
        else "no cgroups (a worker could not make them here)"
    )
    user = config.user if sandbox_identity(config.user) is not None else "the benchmark's"
    part_names = {name for name, _ in PARTS}
    notes = [
        f"sandbox cost: {runs} runs of each, round-robin (each round starts one variant "
        f"further), after {warmup} rounds not counted; {cgroups}; the limits of a "
        f"{TTL_SECONDS} s spawn; code runs as {user} uid; python is "
        f"{resolve_python(config.python)}; this process {_rss_mb():.0f} MB resident, "
        f"{_process_count()} processes on the machine",
        "sandbox cost: medians (p90): "
        + ", ".join(
            f"{v.name} {_ms(v.median)} ({_ms(v.p90)})"
            for v in timed.values()
            if v.name not in part_names
        ),
    ]
    if problem is not None:
        notes.append(f"sandbox cost: the bwrap level is unusable here, rows skipped: {problem}")
    notes.append(
        "sandbox cost: parts, medians: "
        + ", ".join(f"{label} {_ms(timed[name].median)}" for name, label in PARTS if name in timed)
    )

    def median(name: str) -> float:
        return timed[name].median

    shares = [("fork instead of vfork", median("fork") - median("plain shell"))]
    if "basic shell, no cgroup" in timed:
        shares.append(("cgroup", median("basic shell") - median("basic shell, no cgroup")))
    if "orphan sweep" in timed:
        shares.append(("orphan sweep", median("orphan sweep")))
    namespaces = (
        [("bwrap's namespaces", median("bwrap alone") - median("plain shell"))]
        if "bwrap alone" in timed
        else []
    )
    for sandboxed, plain, _, _ in FIGURES:
        if sandboxed not in timed:
            continue
        extra = median(sandboxed) - median(plain)
        split = shares + (namespaces if sandboxed.startswith("bwrap") else [])
        notes.append(
            f"sandbox cost: {sandboxed} beyond plain {_ms(extra)}: "
            + ", ".join(f"{label} {_ms(share)}" for label, share in split)
            + f", the rest {_ms(extra - sum(share for _, share in split))}"
        )
    return notes


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _process_count() -> int:
    return sum(entry.isdigit() for entry in os.listdir("/proc"))
