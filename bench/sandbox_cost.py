"""4. Sandbox cost: the wall time of one ``run_sandboxed`` run, with the sandbox a worker
on this machine chooses, next to a plain ``subprocess.run`` of the same command (issues
3 and 15), and, where an ``isolate`` binary is found, next to ioi/isolate's ``--run`` on
a kept box.

Everything runs in this one process, one run after another, as in one of a worker's
pool processes: whatever the sandbox prepares once per process (and reuses) is
prepared in the rounds not counted. Every variant runs once per round, the rounds run
one after another and each round starts one variant further along, so that drift in
the machine's load weighs on every variant alike.

Only the sandbox's public face is used (``run_sandboxed``, ``levels.choose``): the
figure measures whatever the sandbox does inside, however it does it.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.baseline import reap_orphans
from bench.isolate import MISSING, IsolateBox, version
from bench.report import Figure
from vx11.core.config import Settings
from workers.sandbox import Limits, SandboxConfig, resolve_python, run_sandboxed
from workers.sandbox.levels import base_config, choose
from workers.spawner import limits_for

TTL_SECONDS = 30  # the limits of a 30 s spawn, as in the other figures
SHELL_TRUE = ["/bin/sh", "-c", "true"]
"""VX11's shell spawns run POSIX ``sh``, at both levels."""


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


def sandbox_cost(
    settings: Settings, runs: int, isolate: str | None = None, warmup: int = 3
) -> tuple[list[Figure], list[str]]:
    """Per-run medians over ``runs`` round-robin rounds (after ``warmup`` rounds not
    counted) of the plain commands, the sandboxed runs (the level a worker chooses, and
    the basic level beside it when that is bwrap) and ``isolate``'s runs."""
    chosen = choose(settings)  # as a worker does at start: probes bwrap, makes cgroups
    configs = [chosen]
    if chosen.level != "basic":
        configs.append(base_config(settings))
    limits = limits_for(TTL_SECONDS, None, settings)
    python = resolve_python(chosen.python)  # the interpreter the sandbox runs, for all
    notes: list[str] = []
    box = None
    if isolate is None:
        notes.append(MISSING)
    elif os.geteuid() != 0:
        notes.append(f"isolate: {isolate} needs root, skipped")
    else:
        box = IsolateBox(isolate, os.getpid() % 100, _isolate_options(limits, chosen))
    try:
        variants = _variants(configs, limits, python)
        if box is not None:
            try:
                variants += _isolate_variants(box, python)
            except (OSError, RuntimeError) as exc:
                notes.append(f"isolate: {isolate} could not run here, skipped: {exc}")
                box = None
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
        if box is not None:
            box.cleanup()
        for config in configs:
            if config.cgroups is not None:
                config.cgroups.close()
    timed = {variant.name: variant for variant in variants}
    figures = _figures(timed, chosen.level)
    notes = _notes(timed, chosen, python, box, runs, warmup) + notes
    return figures, notes


def _variants(configs: list[SandboxConfig], limits: Limits, python: str) -> list[Variant]:
    variants = [
        Variant("plain shell", lambda: _plain(SHELL_TRUE, "")),
        Variant("plain python", lambda: _plain([python, "-I", "-c", "print(1)"], "1\n")),
    ]
    for config in configs:
        variants += [
            Variant(f"{config.level} shell",
                    lambda c=config: _sandboxed(c, limits, "shell", "true", "")),
            Variant(f"{config.level} python",
                    lambda c=config: _sandboxed(c, limits, "python", "print(1)", "1\n")),
        ]  # fmt: skip
    return variants


def _isolate_options(limits: Limits, config: SandboxConfig) -> tuple[str, ...]:
    """The limits of the sandboxed runs that isolate can set without control groups."""
    return (
        f"--time={limits.cpu_time}",
        f"--wall-time={limits.wall_time}",
        f"--fsize={limits.max_file_size_mb << 10}",
        f"--open-files={config.max_open_files}",
    )


def _isolate_variants(box: IsolateBox, python: str) -> list[Variant]:
    """isolate's two runs on a box made now; each run once first, to fail early."""
    box.init()
    shell = box.argv(SHELL_TRUE)
    python_argv = box.argv([python, "-I", "-c", "print(1)"])
    _plain(shell, "")
    _plain(python_argv, "1\n")
    return [
        Variant("isolate shell", lambda: _plain(shell, "")),
        Variant("isolate python", lambda: _plain(python_argv, "1\n")),
    ]


def _plain(argv: list[str], expected: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0 or done.stdout != expected:
        raise RuntimeError(f"{argv[:3]} failed: {done.returncode} {done.stderr[-300:]!r}")


def _sandboxed(
    config: SandboxConfig, limits: Limits, task_type: str, code: str, expected: str
) -> None:
    outcome = run_sandboxed(task_type, code, limits=limits, config=config)
    if outcome.exit_code != 0 or outcome.stdout != expected:
        raise RuntimeError(f"a bare sandbox run ({config.level}) failed: {outcome}")


GOALS = {"shell": 3.0, "python": 1.0}
"""Issue 15's goals, for the level a worker chooses."""
LABELS = {"shell": "shell `true`", "python": "python print(1)"}


def _figures(timed: dict[str, Variant], chosen: str) -> list[Figure]:
    levels = [chosen] + [level for level in ("basic",) if level != chosen]
    rows = [
        (f"{level} {kind}", f"sandbox cost: {level} {LABELS[kind]} vs plain",
         GOALS[kind] if level == chosen else None)
        for level in levels
        for kind in ("shell", "python")
    ] + [
        (f"isolate {kind}", f"sandbox cost: isolate --run {LABELS[kind]} vs plain", None)
        for kind in ("shell", "python")
    ]  # fmt: skip
    return [
        Figure(
            name,
            "ms",
            timed[variant].median * 1000,
            timed[f"plain {variant.split()[-1]}"].median * 1000,
            "slowdown",
            goal,
        )
        for variant, name, goal in rows
        if variant in timed
    ]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _notes(
    timed: dict[str, Variant],
    chosen: SandboxConfig,
    python: str,
    box: IsolateBox | None,
    runs: int,
    warmup: int,
) -> list[str]:
    cgroups = (
        f"per-run cgroups v{chosen.cgroups.version}"
        if chosen.cgroups is not None
        else "no cgroups (a worker could not make them here)"
    )
    user = (
        f"a leased {chosen.uids.start}-{chosen.uids.stop - 1}"
        if os.geteuid() == 0
        else "the benchmark's"
    )
    notes = [
        f"sandbox cost: {runs} runs of each, round-robin (each round starts one variant "
        f"further), after {warmup} rounds not counted, all in this one process as in a "
        f"worker's pool process; the level a worker chooses here: {chosen.level} "
        f"(levels.choose), {cgroups}; the limits of a {TTL_SECONDS} s spawn; code runs as "
        f"{user} uid; python is {python}; this process {_rss_mb():.0f} MB resident, "
        f"{_process_count()} processes on the machine",
        "sandbox cost: medians (p90): "
        + ", ".join(f"{v.name} {_ms(v.median)} ({_ms(v.p90)})" for v in timed.values()),
    ]
    if chosen.level == "basic":
        notes.append("sandbox cost: the bwrap level is unusable here (levels.choose): basic only")
    if box is not None:
        notes.append(
            f"isolate: {version(box.binary)} ({box.binary}), box {box.box_id} kept for every "
            f"run, no --cg (rlimits only, one process per run), {' '.join(box.options)}"
        )
        for kind in ("shell", "python"):
            if f"{chosen.level} {kind}" in timed:
                ours = timed[f"{chosen.level} {kind}"].median
                theirs = timed[f"isolate {kind}"].median
                notes.append(
                    f"isolate: {chosen.level} {LABELS[kind]} {_ms(ours)} vs isolate --run "
                    f"{_ms(theirs)}: {ours / theirs:.2f}x"
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
