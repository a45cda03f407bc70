"""What a sandboxed run may use, and how it ended."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from vx11.core.runtimes import Runtime, is_relative
from workers.sandbox.artifacts import Collected
from workers.sandbox.cgroups import Cgroups


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    wall_time: float
    cpu_time: int
    memory_mb: int
    max_processes: int
    max_file_size_mb: int
    output_bytes: int
    """Captured bytes of stdout and of stderr, each."""


@dataclass(frozen=True)
class Job:
    """One run to make: its code, arguments, input and limits."""

    task_type: str
    code: str
    args: tuple[str, ...]
    stdin: bytes
    limits: Limits
    merge_stderr: bool = False
    """Standard error goes to the same pipe as standard output, in the order written."""
    artifacts: tuple[str, ...] = ()
    """Glob patterns of the files kept once the run has ended (:mod:`.artifacts`)."""
    artifact_bytes: int = 0
    """Bytes of artifacts kept, at most."""
    files: tuple[tuple[str, bytes], ...] = ()
    """``(relative path, content)`` written under the working directory before the run
    (directories 0700, files 0600); the paths are checked (:func:`check_path`)."""
    runtime: Runtime | None = None
    """A declared task type's: its code is the file ``runtime.main`` of :attr:`files`."""


def check_path(path: str) -> None:
    """ValueError unless ``path`` names a place inside the working directory
    (:func:`vx11.core.runtimes.is_relative`)."""
    if not is_relative(path):
        raise ValueError(f"not a relative path without empty, . or .. parts: {path!r}")


@dataclass(frozen=True)
class Outcome:
    """How a run ended and what it printed."""

    exit_code: int | None
    term_signal: str | None
    limit_hit: str | None
    """The limit that ended the run: ``wall_time_limit``, ``cpu_time_limit``,
    ``memory_limit`` or ``output_limit``; None when none did."""
    stdout: str
    stderr: str
    """What it printed, as text (bytes that are not UTF-8 replaced by U+FFFD)."""
    stdout_bytes: bytes
    stderr_bytes: bytes
    """What it printed, exactly."""
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    cpu_time_ms: int
    peak_memory_kb: int | None
    level: str
    """The sandbox level it ran at: ``bwrap`` or ``basic``."""
    stopped: bool = False
    """Killed because its watcher asked (a cancel), not by a limit."""
    collected: Collected | None = None
    """Its artifacts, when it asked for some."""


class SandboxError(RuntimeError):
    """Raised when the sandbox cannot run code on this host as configured."""


@dataclass(frozen=True)
class SandboxConfig:
    """How this worker runs code: chosen once, at worker start (:mod:`.levels`)."""

    level: str = "basic"
    """``bwrap`` (namespaces) or ``basic`` (rlimits, process group, scratch directory)."""
    root: str = field(default_factory=lambda: str(Path(tempfile.gettempdir()) / "vx11-sandbox"))
    """Where the basic level makes working directories."""
    uids: range = range(60000, 61000)
    """The uids runs take when the worker is root, one per concurrent run (:mod:`.uids`)."""
    python: str = "python3"
    bash: str = "bash"
    """Looked up on the sandbox's ``PATH``; a ``bash`` run fails when it is missing."""
    runtimes: tuple[Runtime, ...] = ()
    """The declared task types (``VX11_TASK_TYPES_FILE``), checked on this host
    (:mod:`.runtimes`); their binds are shown, read-only, at the bwrap level."""
    bwrap: str = "bwrap"
    etc: str | None = None
    """The directory bound read-only at ``/etc`` at the bwrap level, made when the worker
    chose that level (:func:`.bwrap.shared_etc`, also what None stands for)."""
    warm_python: bool = True
    """At the bwrap level, run python spawns in the slot's started interpreter (a fork)
    instead of starting ``python3`` for each (:mod:`.launcher`)."""
    tmpfs_mb: int = 64
    max_open_files: int = 256
    drain_bytes: int = 64 << 20
    """Output read in all before the run is killed (``output_limit``)."""
    cgroups: Cgroups | None = None
    adopt_orphans: bool = True
    """Become the reaper of what runs leave behind, and kill it after each run (the
    worker's pool processes do; its main process, which runs only the probe, does not)."""
