"""Running untrusted code in a sandboxed subprocess.

Two levels (docs/security.md): ``bwrap`` (namespaces: its own filesystem view, no
network, its own pids, an empty environment) and ``basic`` (a scratch directory and
environment, a process group, rlimits). Both run the code as an unprivileged uid when
the worker is root, with the same limits, and, where the worker can create them, a
per-spawn cgroup that limits memory and processes for the whole spawn and is killed as
a whole when the run ends. :mod:`.levels` picks the level once, at worker start.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Sequence

from workers.sandbox import basic, slot
from workers.sandbox.artifacts import Collected, collect
from workers.sandbox.launch import SANDBOX_PATH, SHELL
from workers.sandbox.process import (
    Exit,
    Identity,
    Watcher,
    become_subreaper,
    decode_status,
    end_adopted,
    rlimits,
    run_process,
)
from workers.sandbox.spec import Job, Limits, Outcome, SandboxConfig, SandboxError, check_path
from workers.sandbox.uids import LEASES

__all__ = [
    "ACTIVE",
    "Limits",
    "Outcome",
    "SandboxConfig",
    "SandboxError",
    "Watcher",
    "run_sandboxed",
]

TASK_TYPES = ("python", "shell", "bash")
"""``shell`` is POSIX ``sh`` (dash on Debian); ``bash`` needs bash on the worker."""


class _Active:
    """The sandbox this worker chose when it started (before its pool forked)."""

    config: SandboxConfig | None = None
    task_types: dict[str, str | None] | None = None
    """The task types it offers, each with its interpreter's version (:mod:`.runtimes`)."""


ACTIVE = _Active()


@functools.cache
@functools.cache  # a miss raises, and is not kept
def resolve_python(name: str) -> str:
    found = shutil.which(name, path=SANDBOX_PATH) if "/" not in name else name
    if not found:
        raise SandboxError(f"python interpreter {name!r} not found on {SANDBOX_PATH}")
    return found


def resolve_bash(name: str) -> str:
    found = shutil.which(name, path=SANDBOX_PATH)
    if not found:
        raise SandboxError(
            f"bash ({name!r}) is not installed on this worker (not found on {SANDBOX_PATH}): "
            "the bash task type cannot run here; shell runs POSIX sh"
        )
    return found


def resolve_interpreter(task_type: str, config: SandboxConfig) -> str:
    """The program that runs a built-in ``task_type``'s code, found the same way at both
    levels (the bwrap level binds the same ``/usr``); a declared one's was found when
    the worker started (:mod:`.runtimes`)."""
    if task_type == "python":
        return resolve_python(config.python)
    if task_type == "bash":
        return resolve_bash(config.bash)
    return SHELL


def run_sandboxed(
    task_type: str,
    code: str,
    *,
    limits: Limits,
    config: SandboxConfig | None = None,
    stdin: str | bytes | None = None,
    args: tuple[str, ...] | list[str] = (),
    watcher: Watcher | None = None,
    merge_stderr: bool = False,
    files: Sequence[tuple[str, bytes]] = (),
    artifacts: Sequence[str] = (),
    artifact_bytes: int = 0,
) -> Outcome:
    """Run ``code`` (a ``task_type`` of :data:`TASK_TYPES`, or declared in ``config``)
    under ``limits`` at ``config``'s level; ``stdin`` as text (UTF-8) or bytes; with
    ``merge_stderr`` its standard error goes into its standard output, in order;
    ``files`` (relative path, content) are written in its working directory first; the
    files matching the glob ``artifacts`` are kept once it has ended, up to
    ``artifact_bytes``."""
    config = config or SandboxConfig()
    runtime = next((r for r in config.runtimes if r.name == task_type), None)
    if task_type not in TASK_TYPES and runtime is None:
        raise SandboxError(f"this worker does not offer task type {task_type!r}")
    interpreter = runtime.interpreter[0] if runtime else resolve_interpreter(task_type, config)
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin or b""
    if runtime is not None:  # its code is a file of the run, the first one written
        files = [(str(runtime.main), code.encode("utf-8", "surrogatepass")), *files]
    for path, _ in files:
        check_path(path)
    for pattern in artifacts:
        check_path(pattern)
    job = Job(
        task_type, code, tuple(args), data, limits, merge_stderr,
        tuple(artifacts), artifact_bytes, tuple(files), runtime,
    )  # fmt: skip
    # A root worker runs code as a uid of its own among the concurrent runs; another
    # worker, as itself (it cannot switch).
    identity = LEASES.take(config.uids, config.level) if os.geteuid() == 0 else None
    try:
        if config.level == "bwrap":
            python = resolve_python(config.python)
            done, figures, collected = slot.run(job, config, identity, interpreter, python, watcher)
        else:
            done, figures, collected = _run_basic(job, config, identity, interpreter, watcher)
    finally:
        if identity is not None:
            LEASES.give(config.uids, config.level, identity)
    exit_code, term_signal = decode_status(done.status)
    cpu_ms = int(done.cpu_seconds * 1000)
    peak_kb: int | None = done.max_rss_kb  # of one process
    oom = False
    if figures is not None:
        # the cgroup counts every process of the run, waited for or not
        cpu_ms = figures.cpu_ms if figures.cpu_ms is not None else cpu_ms
        peak_kb, oom = figures.peak_memory_kb, figures.oom
    return Outcome(
        exit_code=exit_code,
        term_signal=term_signal,
        limit_hit=_limit_hit(done, term_signal, cpu_ms, limits, oom),
        stdout=_text(stdout := done.stdout.bytes()),
        stderr=_text(stderr := done.stderr.bytes()),
        stdout_bytes=stdout,
        stderr_bytes=stderr,
        stdout_truncated=done.stdout.truncated,
        stderr_truncated=done.stderr.truncated,
        duration_ms=int(done.duration * 1000),
        cpu_time_ms=cpu_ms,
        peak_memory_kb=peak_kb,
        level=config.level,
        stopped=done.ended_by == "stopped",
        collected=collected,
    )


def _text(output: bytes) -> str:
    return output.decode("utf-8", errors="replace")


def _run_basic(
    job: Job,
    config: SandboxConfig,
    identity: Identity | None,
    interpreter: str,
    watcher: Watcher | None,
) -> tuple[Exit, slot.Figures | None, Collected | None]:
    """One run at the basic level: a child of this process, in a cgroup of its own;
    its artifacts are read once everything of it is dead."""
    adopting = identity is not None and config.adopt_orphans and become_subreaper()
    cgroup = (
        config.cgroups.create(job.limits.memory_mb << 20, job.limits.max_processes)
        if config.cgroups
        else None
    )
    if watcher is not None and cgroup is not None:
        watcher.started(cgroup.sample)
    try:
        with basic.prepared(job, config, identity, interpreter) as launch:
            done = run_process(
                launch.argv,
                env=launch.env,
                cwd=launch.cwd,
                stdin=job.stdin,
                limits=job.limits,
                process_limits=rlimits(
                    job.limits, cgroup=cgroup is not None, max_open_files=config.max_open_files
                ),
                drain_bytes=max(config.drain_bytes, job.limits.output_bytes * 2),
                cgroup=cgroup,
                identity=identity,
                watcher=watcher,
                merge_stderr=job.merge_stderr,
            )
            figures = None  # without a cgroup: ru_maxrss has the worker's pages copied at fork
            if cgroup is not None:
                cgroup.kill()  # whatever outlived the run's process group
                peak = cgroup.peak_memory_bytes()
                figures = slot.Figures(
                    cgroup.cpu_time_ms(),
                    peak // 1024 if peak is not None else None,
                    cgroup.oom_killed(),
                )
            collected = None
            if job.artifacts:
                if adopting:
                    assert identity is not None
                    end_adopted({identity.uid})  # nothing of it may change its files now
                assert launch.cwd is not None  # the basic level always has its directory
                collected = collect(launch.cwd, job.artifacts, job.artifact_bytes)
        return done, figures, collected
    finally:
        if cgroup is not None:
            cgroup.kill()
            cgroup.remove()
        if adopting:
            assert identity is not None  # adopting is only ever true with an identity
            end_adopted({identity.uid})  # the run's uid is its own: whatever runs as it


def _limit_hit(
    done: Exit, term_signal: str | None, cpu_ms: int, limits: Limits, oom: bool
) -> str | None:
    if done.ended_by == "timeout":
        return "wall_time_limit"
    if done.ended_by == "output":
        return "output_limit"
    # The kernel sends SIGXCPU at the soft limit by its tick-sampled CPU clock, which can
    # run ahead of the rusage total, so SIGXCPU alone is the soft limit; a SIGKILL is the
    # hard limit (soft + 1 s) only once the CPU time has passed the soft limit.
    if term_signal == "SIGXCPU" or (term_signal == "SIGKILL" and cpu_ms >= limits.cpu_time * 1000):
        return "cpu_time_limit"
    if oom:
        return "memory_limit"
    return None
