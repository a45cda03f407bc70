"""Starting one sandboxed process and supervising it: limits applied in the child before
exec, output captured up to a cap (the rest drained, up to a bound), the wall-clock
limit enforced, and the whole run killed at its end.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import resource
import selectors
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Protocol

from workers.sandbox.cgroups import SpawnCgroup
from workers.sandbox.spec import Limits

READ_CHUNK = 64 << 10
DRAIN_GRACE = 0.5
"""Seconds to keep reading output after the run's process group has been killed."""
MIB = 1 << 20


class _Capture:
    """Keeps the first ``limit`` bytes of a stream and counts (drains) the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.kept = 0
        self.seen = 0
        self.truncated = False

    def feed(self, data: bytes) -> bytes:
        """Take ``data``; return the part of it that is kept."""
        self.seen += len(data)
        room = self.limit - self.kept
        piece = data[: max(room, 0)]
        if piece:
            self.chunks.append(piece)
            self.kept += len(piece)
        if len(data) > len(piece):
            self.truncated = True
        return piece

    def bytes(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True)
class Identity:
    """The unprivileged uid and gid the child switches to before exec."""

    uid: int
    gid: int


class Watcher:
    """What the caller of a run sees and decides while it runs; this one does nothing.
    The spawner's streams output live and stops a run that is cancelled."""

    poll_interval = 0.25
    """Seconds between two calls of :meth:`should_stop`."""

    def output(self, stream: str, data: bytes) -> None:
        """``data``, just captured from ``stream`` (``stdout`` or ``stderr``)."""

    def should_stop(self) -> bool:
        """Whether the run must be killed now; also the watcher's regular tick."""
        return False

    def started(self, sample: Callable[[], dict[str, Any]]) -> None:
        """The run has started; ``sample()`` describes its live processes."""


@dataclass(frozen=True)
class Exit:
    """How one supervised run ended."""

    status: int
    """Its wait status."""
    cpu_seconds: float
    """CPU time of the run and of the processes it waited for."""
    max_rss_kb: int
    """The largest resident size of one of its processes (``ru_maxrss``)."""
    duration: float
    ended_by: str | None
    """None (it exited), ``timeout``, ``output`` (past the drain bound) or ``stopped``."""
    stdout: _Capture
    stderr: _Capture


class Running(Protocol):
    """A run being supervised, however it was started."""

    ended_fds: tuple[int, ...]
    """One of them is readable once the run has ended, or must be ended."""

    def kill(self) -> None:
        """Kill the whole run (a no-op once it has ended)."""

    def collect(self) -> tuple[int, float, int]:
        """Once it has ended: ``(wait status, cpu seconds, max rss in KiB)``."""
        ...


def rlimits(limits: Limits, *, cgroup: bool, max_open_files: int) -> dict[int, int]:
    """The rlimits of a run. With a cgroup, memory and processes are limited per spawn
    there, and the rlimits stay as a wider second line."""
    memory = limits.memory_mb * MIB
    return {
        resource.RLIMIT_CPU: max(1, int(limits.cpu_time)),
        resource.RLIMIT_AS: memory * 2 + 256 * MIB if cgroup else memory,
        resource.RLIMIT_NPROC: max(limits.max_processes * 4, 1024)
        if cgroup
        else limits.max_processes,
        resource.RLIMIT_FSIZE: limits.max_file_size_mb * MIB,
        resource.RLIMIT_NOFILE: max_open_files,
        resource.RLIMIT_CORE: 0,
    }


def preexec(
    limits: dict[int, int], cgroup: SpawnCgroup | None, identity: Identity | None
) -> Callable[[], None]:
    def preexec() -> None:  # in the child, after setsid, before exec
        if cgroup is not None:
            cgroup.attach_self()  # first: everything the run starts is born inside
        os.umask(0o077)
        for kind, value in limits.items():
            hard = value + 1 if kind == resource.RLIMIT_CPU else value  # SIGXCPU, then SIGKILL
            resource.setrlimit(kind, (value, hard))
        if identity is not None:
            os.setgroups([])
            os.setgid(identity.gid)
            os.setuid(identity.uid)

    return preexec


def run_process(
    argv: Sequence[str],
    *,
    env: dict[str, str],
    cwd: str | None,
    stdin: bytes,
    limits: Limits,
    process_limits: dict[int, int],
    drain_bytes: int,
    cgroup: SpawnCgroup | None = None,
    identity: Identity | None = None,
    watcher: Watcher | None = None,
    merge_stderr: bool = False,
) -> Exit:
    """Run ``argv`` as a child of this process under ``limits`` and supervise it to its
    end (the basic level); with ``merge_stderr`` its stderr is its stdout's pipe."""
    with stdin_file(stdin) as stdin_handle:
        started = time.monotonic()
        with _leaders_lock:  # not taken for an orphan by a concurrent end_adopted
            proc = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env=env,
                stdin=stdin_handle,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
                start_new_session=True,
                close_fds=True,
                preexec_fn=preexec(process_limits, cgroup, identity),
            )
            _running_leaders.add(proc.pid)
    assert proc.stdout is not None  # made a pipe above
    try:
        with proc.stdout, proc.stderr or _ended_pipe() as stderr:
            return supervise(
                _Child(proc.pid),
                proc.stdout.fileno(),
                stderr.fileno(),
                started=started,
                limits=limits,
                drain_bytes=drain_bytes,
                watcher=watcher,
            )
    finally:
        _running_leaders.discard(proc.pid)
        proc.returncode = -1  # reaped by supervise; Popen must not wait for it again


def _ended_pipe() -> IO[bytes]:
    """A pipe already at its end: merged, stderr is read from there."""
    read, write = os.pipe()
    os.close(write)
    return os.fdopen(read, "rb")


class _Child:
    """A run that is this process's child, the leader of its own process group."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.ended_fds: tuple[int, ...] = (os.pidfd_open(pid),)

    def kill(self) -> None:
        # The group is killed while the leader is still an unreaped zombie, so its pid
        # (the group id) cannot have been reused by then.
        kill_group(self.pid)

    def collect(self) -> tuple[int, float, int]:
        os.close(self.ended_fds[0])
        _, status, usage = os.wait4(self.pid, 0)
        return status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss


@contextlib.contextmanager
def stdin_file(data: bytes) -> Iterator[IO[bytes]]:
    """What a run reads on stdin: ``data`` in an unnamed file, or ``/dev/null``."""
    if not data:
        with open(os.devnull, "rb") as devnull:
            yield devnull
        return
    with tempfile.TemporaryFile() as handle:
        handle.write(data)
        handle.seek(0)
        yield handle


def supervise(
    running: Running,
    stdout_fd: int,
    stderr_fd: int,
    *,
    started: float,
    limits: Limits,
    drain_bytes: int,
    watcher: Watcher | None,
) -> Exit:
    """Pump output until the run ends, its wall-clock limit passes, its output passes
    ``drain_bytes`` or the watcher asks to stop; then kill what is left of it and drain
    briefly."""
    watcher = watcher or Watcher()
    out, err = _Capture(limits.output_bytes), _Capture(limits.output_bytes)
    deadline = started + limits.wall_time
    sel = selectors.DefaultSelector()
    sel.register(stdout_fd, selectors.EVENT_READ, out)
    sel.register(stderr_fd, selectors.EVENT_READ, err)
    for fd in running.ended_fds:
        sel.register(fd, selectors.EVENT_READ, None)
    ended_by: str | None = None
    exited = None
    drain_until = next_poll = 0.0

    ending = False

    def end() -> tuple[int, float, int]:
        nonlocal ending
        ending = True
        running.kill()
        for fd in running.ended_fds:
            sel.unregister(fd)
        return running.collect()

    try:
        while True:
            now = time.monotonic()
            if exited is None and ended_by is None:
                if now >= deadline:
                    ended_by = "timeout"
                elif now >= next_poll:
                    next_poll = now + watcher.poll_interval
                    if watcher.should_stop():
                        ended_by = "stopped"
            if exited is None and ended_by is not None:
                exited = end()
                drain_until = time.monotonic() + DRAIN_GRACE
            if exited is not None and (not sel.get_map() or now >= drain_until):
                break
            wake = drain_until if exited is not None else min(deadline, next_poll)
            for key, _ in sel.select(timeout=max(0.0, wake - now)):
                if key.data is None:
                    exited = end()
                    drain_until = time.monotonic() + DRAIN_GRACE
                    continue
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                kept = key.data.feed(chunk)
                if kept:
                    watcher.output("stdout" if key.data is out else "stderr", kept)
                if exited is None and ended_by is None and out.seen + err.seen > drain_bytes:
                    ended_by = "output"
    finally:
        if not ending:  # an exception above: leave nothing running
            exited = end()
        sel.close()
    status, cpu_seconds, max_rss_kb = exited
    return Exit(status, cpu_seconds, max_rss_kb, time.monotonic() - started, ended_by, out, err)


PR_SET_CHILD_SUBREAPER = 36


@functools.cache
def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans, so what a run leaves
    behind (a daemon that called ``setsid()``, bwrap's own init) is adopted here, where
    :func:`end_adopted` can kill and reap it, instead of by PID 1."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: int = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)  # c_int, the default restype
    return result == 0


_running_leaders: set[int] = set()
"""Pids of the runs this process is supervising now (several with a threads pool)."""
_leaders_lock = threading.Lock()


PR_GET_CHILD_SUBREAPER = 37


@contextlib.contextmanager
def adopting_orphans(uids: Container[int] | None) -> Iterator[None]:
    """Be the reaper of orphans only while the block runs, then end those running as
    one of ``uids`` (for a process that must not stay a subreaper, such as a worker's
    main process probing its sandbox before its pool starts)."""
    libc = ctypes.CDLL(None, use_errno=True)
    previous = ctypes.c_int(0)
    libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(previous), 0, 0, 0)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        yield
    finally:
        if uids is not None:
            end_adopted(uids)
        libc.prctl(PR_SET_CHILD_SUBREAPER, previous.value, 0, 0, 0)


def end_adopted(uids: Container[int]) -> None:
    """Kill and reap the children of this process that run as one of ``uids`` and are
    not a run it is supervising: orphans of runs (a sandbox's uid is never that of a
    process the worker started itself)."""
    with _leaders_lock:
        _end_adopted(uids)


def _end_adopted(uids: Container[int]) -> None:
    # Until none is left: the orphans of one killed here are adopted in turn.
    while ended := [pid for pid in _children() if _is_orphan_of_a_run(pid, uids)]:
        for pid in ended:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _is_orphan_of_a_run(pid: int, uids: Container[int]) -> bool:
    if pid in _running_leaders:
        return False
    try:
        with open(f"/proc/{pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
    except OSError:
        return False
    return int(status["PPid"]) == os.getpid() and int(status["Uid"].split()[0]) in uids


def _children() -> set[int]:
    """The children of this process, orphans it adopted included: each of its threads'
    ``children`` in ``/proc`` (a few short reads, however many processes the host runs),
    or, on a kernel without them (``CONFIG_PROC_CHILDREN``), every process there."""
    if not _HAS_CHILDREN_FILES:
        return {int(entry.name) for entry in os.scandir("/proc") if entry.name.isdigit()}
    pids: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        # a thread that has just ended has no file
        with contextlib.suppress(FileNotFoundError), open(f"/proc/self/task/{task}/children") as f:
            pids.update(int(pid) for pid in f.read().split())
    return pids


_HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def decode_status(status: int) -> tuple[int | None, str | None]:
    """``(exit code, None)``, or ``(-signal number, signal name)`` when killed."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        return -signum, signal.Signals(signum).name
    return os.WEXITSTATUS(status), None
