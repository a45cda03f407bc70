"""Choosing the sandbox level once, when a worker starts: a real probe of bwrap, then
the strongest level that works (``VX11_SANDBOX=auto``), or the one required."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
from dataclasses import replace
from pathlib import Path

from vx11.core.config import Settings
from vx11.core.runtimes import Runtime, TaskTypeFileError
from vx11.core.runtimes import load as load_runtimes
from workers.sandbox import bwrap, run_sandboxed, runtimes, slot, uids
from workers.sandbox.cgroups import Cgroups, CgroupUnavailable
from workers.sandbox.process import adopting_orphans
from workers.sandbox.spec import Limits, Outcome, SandboxConfig, SandboxError

log = logging.getLogger(__name__)

PROBE_OUTPUT = "vx11-sandbox-probe"
PROBE_LIMITS = Limits(
    wall_time=10, cpu_time=10, memory_mb=256, max_processes=16, max_file_size_mb=1,
    output_bytes=4096,
)  # fmt: skip


def base_config(settings: Settings, delegated: Cgroups | None = None) -> SandboxConfig:
    """The sandbox at the basic level, with this worker's cgroups: ``delegated``, made
    before root was given up (:mod:`workers.service`), else found now."""
    cgroups = delegated
    if cgroups is None and settings.sandbox_cgroups != "off":
        try:
            cgroups = Cgroups.detect()
        except (CgroupUnavailable, OSError) as exc:
            log.warning("per-spawn cgroups unavailable, rlimits only: %s", exc)
    private = runtimes.private_paths(settings.data_dir)
    declared = [runtime for runtime in load_runtimes(settings) if not runtime.builtin]
    try:
        here = tuple(runtimes.checked(runtime, private) for runtime in declared)
    except TaskTypeFileError as exc:
        file = settings.task_types_file
        raise TaskTypeFileError(f"VX11_TASK_TYPES_FILE {file}: {exc}") from None
    return SandboxConfig(
        level="basic",
        runtimes=here,
        root=settings.effective_sandbox_root,
        uids=settings.sandbox_uid_range,
        python=settings.sandbox_python,
        bwrap=shutil.which("bwrap") or "bwrap",
        tmpfs_mb=settings.sandbox_tmpfs_mb,
        max_open_files=settings.sandbox_max_open_files,
        drain_bytes=settings.output_drain_limit_mb << 20,
        cgroups=cgroups,
    )


def bwrap_problem(config: SandboxConfig) -> str | None:
    """Why the bwrap level does not work here, or None when a real run through it does."""
    if not Path(config.bwrap).is_file():
        return "bwrap is not installed (Debian package bubblewrap)"
    try:
        outcome = _probe(replace(config, level="bwrap"), "python", f"print({PROBE_OUTPUT!r})")
    except (OSError, SandboxError) as exc:
        return f"bwrap could not start: {exc}"
    if outcome.exit_code != 0 or outcome.stdout.strip() != PROBE_OUTPUT:
        return f"bwrap probe failed: exit {outcome.exit_code}: {outcome.stderr.strip()[:300]}"
    return None


def offered(config: SandboxConfig) -> dict[str, str | None]:
    """Each task type this worker runs, with its version: the built-in ones' as the host
    prints them, a declared one's as its version command prints it inside the sandbox,
    at ``config``'s level, as a spawn's uid (a declared one without a version command:
    None). :class:`~vx11.core.runtimes.TaskTypeFileError` when one of those fails: its
    interpreter cannot run in the sandbox (a file it needs is not shown there, or a
    spawn's uid may not read it), and the worker does not start."""
    task_types = runtimes.built_in(config.python)
    for runtime in config.runtimes:
        task_types[runtime.name] = _version(config, runtime) if runtime.version else None
    return task_types


def _version(config: SandboxConfig, runtime: Runtime) -> str:
    """What ``runtime``'s version command prints, run in the sandbox as a shell spawn."""
    try:
        outcome = _probe(config, "shell", f"exec {shlex.join(runtime.version)}")
        return runtimes.first_line(
            runtime.version, outcome.exit_code, outcome.stdout_bytes, outcome.stderr_bytes
        )
    except (OSError, SandboxError, TaskTypeFileError) as exc:
        raise TaskTypeFileError(
            f"task type {runtime.name!r}: in the sandbox ({config.level} level): {exc}"
        ) from None


def _probe(config: SandboxConfig, task_type: str, code: str) -> Outcome:
    """A run by the process that chooses the sandbox (a worker's main one), which runs
    no spawn: it keeps neither the slot nor the uid."""
    try:
        with adopting_orphans(config.uids if os.geteuid() == 0 else None):  # bwrap's init
            return run_sandboxed(task_type, code, limits=PROBE_LIMITS,
                                 config=replace(config, adopt_orphans=False))  # fmt: skip
    finally:
        slot.SLOTS.close()
        uids.LEASES.close()


def choose(settings: Settings, delegated: Cgroups | None = None) -> SandboxConfig:
    """The sandbox this worker will use; :class:`SandboxError` if what is required does
    not work here, :class:`~vx11.core.runtimes.TaskTypeFileError` if a declared task
    type cannot run here (the worker then refuses to start)."""
    config = base_config(settings, delegated)
    wants_bwrap = settings.sandbox == "bwrap" or settings.sandbox_require == "bwrap"
    if settings.sandbox == "basic":
        if wants_bwrap:
            raise SandboxError("VX11_SANDBOX=basic contradicts VX11_SANDBOX_REQUIRE=bwrap")
        chosen = config
    else:
        problem = bwrap_problem(config)  # its run makes the sandbox's /etc
        if problem is None:
            chosen = replace(config, level="bwrap", etc=bwrap.shared_etc())
        elif wants_bwrap:
            raise SandboxError(f"the bwrap sandbox level is required but unusable: {problem}")
        else:
            log.warning("sandbox level basic: %s", problem)
            chosen = config
    cgroup_text = f"cgroup v{chosen.cgroups.version}" if chosen.cgroups else "no cgroups"
    log.info("sandbox level %s (%s)", chosen.level, cgroup_text)
    return chosen
