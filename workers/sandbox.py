"""Running untrusted code in a sandboxed subprocess: the ``basic`` level.

Each run gets a fresh private working directory (removed afterwards), an environment
built from scratch, its own session and process group (killed as a whole at the
wall-clock limit and when the run ends), rlimits on CPU time, address space,
processes, file size, open files and core dumps, and an unprivileged uid when the
worker runs as root. Output is captured up to a cap while the rest is drained, so a
run never buffers unbounded output.

What this level does not hold (a child that calls ``setsid()`` escapes the group
kill; no filesystem or network isolation; RLIMIT_NPROC counts per uid) is the next
level's job.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import resource
import selectors
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

LEVEL = "basic"
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELL = "/bin/sh"
READ_CHUNK = 64 << 10
DRAIN_GRACE = 0.5
"""Seconds to keep reading output after the run's process group has been killed."""


class SandboxError(RuntimeError):
    """Raised when the sandbox cannot run code on this host as configured."""


@dataclass(frozen=True)
class Limits:
    """What one run may use."""

    wall_time: float
    cpu_time: int
    memory_mb: int
    max_processes: int
    max_file_size_mb: int
    max_open_files: int
    output_bytes: int


@dataclass(frozen=True)
class Outcome:
    """How a run ended and what it printed."""

    exit_code: int | None
    term_signal: str | None
    limit_hit: str | None
    """``wall_time_limit`` or ``cpu_time_limit`` when a limit ended the run."""
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    cpu_time_ms: int
    peak_memory_kb: int


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and counts (drains) the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.truncated = False

    def feed(self, data: bytes) -> None:
        room = self.limit - self.kept
        if room > 0:
            piece = data[:room]
            self.chunks.append(piece)
            self.kept += len(piece)
        if len(data) > max(room, 0):
            self.truncated = True

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", errors="replace")


def sandbox_identity(user: str) -> tuple[int, int] | None:
    """The (uid, gid) code runs as: ``user``'s when the worker is root, else the worker's own."""
    if os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def resolve_python(name: str) -> str:
    found = shutil.which(name, path=SANDBOX_PATH) if "/" not in name else name
    if not found:
        raise RuntimeError(f"python interpreter {name!r} not found on {SANDBOX_PATH}")
    return found


def run_sandboxed(
    task_type: str,
    code: str,
    *,
    limits: Limits,
    root: str,
    stdin: str | None = None,
    user: str = "nobody",
    python: str = "python3",
) -> Outcome:
    """Run ``code`` (``python`` or ``shell``) under ``limits`` in a fresh directory in ``root``."""
    identity = sandbox_identity(user)
    check_root_reachable(root, identity)
    workdir = _make_workdir(root, identity)
    try:
        if task_type == "python":
            _write_private(workdir / "main.py", code, identity)
            argv = [resolve_python(python), "-I", "main.py"]
        elif task_type == "shell":
            argv = [SHELL, "-c", code]
        else:
            raise ValueError(f"unknown task_type {task_type!r}")
        return _execute(argv, workdir, limits, stdin, identity)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # fd-based: never follows planted symlinks


@functools.cache
def check_root_reachable(root: str, identity: tuple[int, int] | None) -> None:
    """Code running as another user must be able to search its way down to its working
    directory; a root below a private directory (say, 0700) would fail every run."""
    if identity is None:
        return
    for directory in (Path(root).absolute(), *Path(root).absolute().parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue  # made later, with 0711
        if info.st_uid != identity[0] and not info.st_mode & stat.S_IXOTH:
            raise SandboxError(
                f"sandbox root {root} is unreachable for the sandbox user: {directory} is "
                "not searchable by others; set VX11_SANDBOX_ROOT below directories every "
                "user can traverse (the default is <tmp>/vx11-sandbox)"
            )


def _make_workdir(root: str, identity: tuple[int, int] | None) -> Path:
    base = Path(root)
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="spawn-", dir=base))
    if identity:
        os.chown(workdir, *identity)
    return workdir


def _write_private(path: Path, text: str, identity: tuple[int, int] | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        if identity:
            os.fchown(f.fileno(), *identity)


def _environment(workdir: Path) -> dict[str, str]:
    """Built from nothing: no worker variable (no Redis URL, token or password) leaks in."""
    return {"PATH": SANDBOX_PATH, "HOME": str(workdir), "TMPDIR": str(workdir), "LANG": "C.UTF-8"}


def _apply_limits(limits: Limits):
    mib = 1 << 20

    def preexec() -> None:  # runs in the child, after the uid switch, before exec
        os.umask(0o077)
        cpu = max(1, int(limits.cpu_time))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        memory = limits.memory_mb * mib
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_processes, limits.max_processes))
        size = limits.max_file_size_mb * mib
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_open_files, limits.max_open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return preexec


def _execute(
    argv: list[str],
    workdir: Path,
    limits: Limits,
    stdin: str | None,
    identity: tuple[int, int] | None,
) -> Outcome:
    ids = {"user": identity[0], "group": identity[1], "extra_groups": []} if identity else {}
    with tempfile.TemporaryFile() as stdin_file:
        stdin_file.write((stdin or "").encode("utf-8"))
        stdin_file.seek(0)
        started = time.monotonic()
        proc = subprocess.Popen(
            argv,
            cwd=workdir,
            env=_environment(workdir),
            stdin=stdin_file,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_apply_limits(limits),
            **ids,
        )
    out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
    status, rusage, timed_out = _supervise(proc, started + limits.wall_time, out, err)
    duration_ms = int((time.monotonic() - started) * 1000)
    cpu_ms = int((rusage.ru_utime + rusage.ru_stime) * 1000)
    exit_code, term_signal = _decode_status(status)
    limit_hit = None
    if timed_out:
        limit_hit = "wall_time_limit"
    elif term_signal == "SIGXCPU" or (
        term_signal == "SIGKILL" and cpu_ms >= limits.cpu_time * 1000
    ):
        # The kernel sends SIGXCPU at the soft limit by its tick-sampled CPU clock, which
        # can run ahead of the rusage total (seen: SIGXCPU at 961 ms for a 1 s limit), so
        # SIGXCPU alone is the soft limit; a SIGKILL is the hard limit (soft + 1 s) only
        # once the CPU time has at least passed the soft limit.
        limit_hit = "cpu_time_limit"
    return Outcome(
        exit_code=exit_code,
        term_signal=term_signal,
        limit_hit=limit_hit,
        stdout=out.text(),
        stderr=err.text(),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        duration_ms=duration_ms,
        cpu_time_ms=cpu_ms,
        peak_memory_kb=rusage.ru_maxrss,
    )


def _supervise(proc: subprocess.Popen, deadline: float, out: _Capture, err: _Capture):
    """Pump output until the process exits (or the deadline passes), then kill what is
    left of its group and drain briefly. Returns ``(wait status, rusage, timed_out)``.

    The group is killed while the leader is still an unreaped zombie, so its pid (the
    group id) cannot have been reused by then.
    """
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ, out)
    sel.register(proc.stderr, selectors.EVENT_READ, err)
    pidfd = os.pidfd_open(proc.pid)
    sel.register(pidfd, selectors.EVENT_READ, None)
    timed_out = False
    exited = None
    drain_until = 0.0
    try:
        while True:
            now = time.monotonic()
            if exited is None and now >= deadline:
                timed_out = True
                exited = _end(proc.pid, sel, pidfd)
                drain_until = time.monotonic() + DRAIN_GRACE
            if exited is not None and (not sel.get_map() or now >= drain_until):
                break
            limit = (drain_until if exited is not None else deadline) - now
            for key, _ in sel.select(timeout=max(0.0, limit)):
                if key.data is None:
                    exited = _end(proc.pid, sel, pidfd)
                    drain_until = time.monotonic() + DRAIN_GRACE
                    continue
                chunk = os.read(key.fd, READ_CHUNK)
                if chunk:
                    key.data.feed(chunk)
                else:
                    sel.unregister(key.fileobj)
    finally:
        if exited is None:  # an exception above: leave nothing running
            exited = _end(proc.pid, sel, pidfd)
        sel.close()
        os.close(pidfd)
        proc.stdout.close()
        proc.stderr.close()
    _, status, rusage = exited
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, rusage, timed_out


def _end(pid: int, sel: selectors.BaseSelector, pidfd: int):
    """Kill the run's process group, then reap its leader."""
    _kill_group(pid)
    sel.unregister(pidfd)
    return os.wait4(pid, 0)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def _decode_status(status: int) -> tuple[int | None, str | None]:
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return -signum, signal.Signals(signum).name
    return os.WEXITSTATUS(status), None
