"""Slots: the sandboxes of the bwrap level, prepared before their spawns arrive.

A slot is one bubblewrap running the launcher (:mod:`.launcher`), in a cgroup of its
own, started the first time a process needs one and kept for its next runs: a pool
process of the worker, which runs one spawn at a time, keeps one. Each run is forked
inside it into namespaces of its own, so a run costs a few forks instead of a
bubblewrap, a cgroup and an interpreter start.

The slot's cgroup holds the launcher too: before each run its limits are set to what
the launcher uses now plus the run's limits, and the run's figures (peak memory, CPU
time, OOM kills) are read as differences. A launcher is renewed after
:data:`RENEW_AFTER_RUNS` runs, and replaced when it dies; a run it was running ends
with a :class:`~workers.sandbox.spec.SandboxError` that says so.
"""

from __future__ import annotations

import array
import base64
import contextlib
import json
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workers.sandbox import bwrap, seccomp
from workers.sandbox.artifacts import Collected, collect
from workers.sandbox.cgroups import SpawnCgroup
from workers.sandbox.launch import command
from workers.sandbox.process import (
    Exit,
    Identity,
    Watcher,
    preexec,
    rlimits,
    stdin_file,
    supervise,
)
from workers.sandbox.spec import Job, Limits, SandboxConfig, SandboxError

log = logging.getLogger(__name__)

LAUNCHER_SOURCE = Path(__file__).with_name("launcher.py")
RENEW_AFTER_RUNS = 100
"""Runs of one launcher before it is replaced by a fresh one (docs/security.md: what
runs forked from one interpreter share)."""
START_TIMEOUT = 30.0
"""Seconds a launcher may take to start a run before it is given up as broken."""
LAUNCHER_MEMORY_BYTES = 256 << 20
LAUNCHER_PROCESSES = 64
"""The slot cgroup's limits between runs (the launcher alone uses a few MiB and 3)."""
SLOT_PROCESSES = 4
"""The processes of a slot that are not a run's code: bubblewrap, the init of its pid
namespace, the launcher, and the init of the run (prepared before it, and, between runs,
waiting for the next). ``max_processes`` counts the code's own processes only; the next
run is prepared once the last one's init has exited, never beside a run."""


class LauncherDied(SandboxError):
    """The launcher of the slot died (or was killed) before or during a run."""


@dataclass(frozen=True)
class Figures:
    """What a run used, as the slot's cgroup counted it (None: no cgroup)."""

    cpu_ms: int | None
    peak_memory_kb: int | None
    oom: bool


class _Meter:
    """The slot cgroup's counters at the start of a run, to report the run's own."""

    def __init__(self, cgroup: SpawnCgroup, limits: Limits) -> None:
        self.cgroup = cgroup
        self.base_pids = frozenset(cgroup.pids())
        self.base_memory = cgroup.memory_bytes() or 0
        self.base_cpu_ms = cgroup.cpu_time_ms() or 0
        self.base_ooms = cgroup.oom_kills()
        cgroup.limit(
            self.base_memory + (limits.memory_mb << 20),
            SLOT_PROCESSES + limits.max_processes,
        )
        self.peak_fd = cgroup.reset_peak()

    def sample(self) -> dict[str, Any]:
        live = self.cgroup.sample()
        pids = [pid for pid in live["pids"] if pid not in self.base_pids]
        if live["rss_kb"] is not None:
            live["rss_kb"] = max(0, live["rss_kb"] - self.base_memory // 1024)
        if live["cpu_time_ms"] is not None:
            live["cpu_time_ms"] -= self.base_cpu_ms
        return {**live, "count": len(pids), "pids": pids}

    def end(self) -> Figures:
        peak = self.cgroup.read_peak(self.peak_fd)
        cpu = self.cgroup.cpu_time_ms()
        return Figures(
            cpu_ms=cpu - self.base_cpu_ms if cpu is not None else None,
            peak_memory_kb=max(0, peak - self.base_memory) // 1024 if peak is not None else None,
            oom=self.cgroup.oom_kills() > self.base_ooms,
        )


class LaunchedRun:
    """A run the launcher started (:class:`~workers.sandbox.process.Running`); with
    ``job`` artifacts, its init waits, once it has reported, for them to be read
    through its ``/proc/<pid>/root`` (:mod:`.artifacts`)."""

    def __init__(self, launcher: Launcher, reply: socket.socket, pidfd: int, job: Job) -> None:
        self.launcher = launcher
        self.reply = reply
        self.pidfd = pidfd
        self.job = job
        self.collected: Collected | None = None
        # readable: the run's init reported its end (or died); the launcher died
        self.ended_fds: tuple[int, ...] = (reply.fileno(), launcher.control.fileno())

    def kill(self) -> None:
        """Kill the run's init, and its pid namespace with it; not once it has reported
        when its artifacts are to be read: nothing else of the run is left then."""
        if self.job.artifacts and select.select([self.reply], [], [], 0)[0]:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def collect(self) -> tuple[int, float, int]:
        """The run's end. Its init reports it once every other process of the run is
        dead and reaped, so nothing of the run is left by then; or it was killed, and
        its pid namespace with it."""
        try:
            message = json.loads(self.reply.recv(4096) or b"{}")
            if "status" in message and self.job.artifacts:
                root = f"/proc/{_pid_of(self.pidfd)}/root{bwrap.WORKDIR}"
                self.collected = collect(root, self.job.artifacts, self.job.artifact_bytes)
        finally:
            self.reply.close()  # a waiting init exits
            os.close(self.pidfd)
        if "status" in message:
            return message["status"], message["cpu_seconds"], message["max_rss_kb"]
        if "error" in message:
            raise SandboxError(f"the sandbox could not run the code: {message['error']}")
        if not self.launcher.alive(wait=0.5):
            raise LauncherDied(f"the sandbox's launcher died during the run{self.launcher.said()}")
        return signal.SIGKILL, 0.0, 0  # killed by the worker, or by the kernel's OOM killer


@dataclass
class Launcher:
    """One slot: a bubblewrap running the launcher, and its control socket."""

    key: tuple[Any, ...]
    python: str
    """The launcher's interpreter, which runs python spawns warm."""
    proc: subprocess.Popen[bytes]
    control: socket.socket
    cgroup: SpawnCgroup | None
    errors: int
    """A memfd holding what bubblewrap and the launcher wrote to stderr (why a
    namespace or a mount was refused), said in the error when the launcher dies."""
    runs: int = 0

    @classmethod
    def start(
        cls, key: tuple[Any, ...], config: SandboxConfig, identity: Identity | None, python: str
    ) -> Launcher:
        """A new slot: its cgroup, and the launcher (``python``) in its bubblewrap, given
        the runs' system-call filter (:class:`SandboxError` if libseccomp cannot make it)."""
        with os.fdopen(seccomp.program_fd(), "rb") as rules:  # the launcher keeps its copy
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            cgroup = (
                config.cgroups.create(LAUNCHER_MEMORY_BYTES, LAUNCHER_PROCESSES, "slot")
                if config.cgroups
                else None
            )
            inner = [python, "-I", "-u", "-c", LAUNCHER_SOURCE.read_text(), str(theirs.fileno()),
                     str(config.tmpfs_mb << 20), str(rules.fileno())]  # fmt: skip
            binds = sorted({path for runtime in config.runtimes for path in runtime.binds})
            argv = bwrap.launcher_argv(config.bwrap, inner, config.etc or bwrap.shared_etc(), binds)
            errors = os.memfd_create("vx11-launcher-stderr", os.MFD_CLOEXEC)
            try:
                with theirs:
                    proc = subprocess.Popen(
                        argv,
                        env={},  # a sandbox's first process's environment is readable inside
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=errors,
                        close_fds=True,
                        pass_fds=(theirs.fileno(), rules.fileno()),
                        preexec_fn=preexec({}, cgroup, identity),  # once per slot
                    )
            except BaseException:
                ours.close()
                os.close(errors)
                if cgroup is not None:
                    cgroup.remove()
                raise
        return cls(key, python, proc, ours, cgroup, errors)

    def alive(self, wait: float = 0.0) -> bool:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=wait) if wait else self.proc.poll()
        return self.proc.returncode is None

    def launch(self, request: dict[str, Any], fds: list[int], job: Job) -> LaunchedRun:
        """Hand the launcher one run; return it once its namespaces exist."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            with theirs:
                try:
                    rights = array.array("i", [theirs.fileno(), *fds])
                    self.control.sendmsg(
                        [json.dumps(request).encode()],
                        [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)],
                    )
                except OSError as exc:
                    self.alive(wait=0.5)
                    raise LauncherDied(
                        f"the sandbox's launcher is gone: {exc}{self.said()}"
                    ) from exc
            ours.settimeout(START_TIMEOUT)
            message, pidfds = _receive(ours)
        except BaseException:
            ours.close()
            raise
        if message is None:
            ours.close()
            self.alive(wait=0.5)
            raise LauncherDied(f"the sandbox's launcher died while starting a run{self.said()}")
        if "error" in message or not pidfds:
            ours.close()
            raise SandboxError(f"the sandbox could not start the run: {message.get('error')}")
        self.runs += 1
        ours.settimeout(None)
        return LaunchedRun(self, ours, pidfds[0], job)

    def said(self, most: int = 1000) -> str:
        """The end of what the launcher wrote to stderr, as ``": ..."`` (empty if
        nothing)."""
        size = os.fstat(self.errors).st_size
        text = os.pread(self.errors, most, max(0, size - most)).decode(errors="replace")
        return f": {' '.join(text.split())}" if text.strip() else ""

    def close(self) -> None:
        """Stop the launcher (and anything it still runs) and remove its cgroup; what
        it wrote to stderr goes to the worker's log."""
        self.control.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait()
        if said := self.said():
            log.warning("the sandbox's launcher wrote%s", said)
        os.close(self.errors)
        if self.cgroup is not None:
            self.cgroup.kill()
            self.cgroup.remove()


def _pid_of(pidfd: int) -> int:
    """The pid a pidfd refers to, in this process's pid namespace."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    raise SandboxError("the run's init is gone")


def _fd_array(sock: socket.socket, fds: list[int]) -> array.array[int]:
    return array.array("i", [sock.fileno(), *fds])


def _receive(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    fds = array.array("i")
    try:
        data, ancdata, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(fds.itemsize))
    except TimeoutError as exc:
        raise SandboxError("the sandbox's launcher did not start the run in time") from exc
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return (json.loads(data) if data else None), list(fds)


class Slots:
    """The idle launchers of this process, by the configuration they were made for:
    a run takes one (or starts one) and gives it back when it has ended."""

    def __init__(self) -> None:
        self.idle: dict[tuple[Any, ...], list[Launcher]] = {}
        self.lock = threading.Lock()

    def take(self, config: SandboxConfig, identity: Identity | None, python: str) -> Launcher:
        cgroups = tuple(config.cgroups.parents.values()) if config.cgroups else None
        key = (config.bwrap, python, config.etc, config.tmpfs_mb, cgroups, identity,
               config.runtimes)  # fmt: skip
        with self.lock:
            idle = self.idle.get(key, [])
            while idle:
                launcher = idle.pop()
                if launcher.alive():
                    return launcher
                launcher.close()
        return Launcher.start(key, config, identity, python)

    def give(self, launcher: Launcher) -> None:
        if launcher.runs >= RENEW_AFTER_RUNS or not launcher.alive():
            launcher.close()
            return
        with self.lock:
            self.idle.setdefault(launcher.key, []).append(launcher)

    def close(self) -> None:
        """Stop every idle launcher (a worker's main process, once it has probed)."""
        with self.lock:
            launchers = [launcher for idle in self.idle.values() for launcher in idle]
            self.idle.clear()
        for launcher in launchers:
            launcher.close()

    def forget(self) -> None:
        """In a child just forked: the parent's launchers stay the parent's."""
        for idle in self.idle.values():
            for launcher in idle:
                launcher.control.close()
        self.idle = {}
        self.lock = threading.Lock()


SLOTS = Slots()
os.register_at_fork(after_in_child=SLOTS.forget)


def run(
    job: Job,
    config: SandboxConfig,
    identity: Identity | None,
    interpreter: str,
    python: str,
    watcher: Watcher | None,
) -> tuple[Exit, Figures | None, Collected | None]:
    """One run in a slot of this process; ``python`` is the launcher's interpreter."""
    launcher = SLOTS.take(config, identity, python)
    try:
        ended = _run_in(launcher, job, config, interpreter, watcher)
    except BaseException:
        launcher.close()  # dead, or in a state nobody knows: never reused
        raise
    SLOTS.give(launcher)
    return ended


def _run_in(
    launcher: Launcher,
    job: Job,
    config: SandboxConfig,
    interpreter: str,
    watcher: Watcher | None,
) -> tuple[Exit, Figures | None, Collected | None]:
    cgroup = launcher.cgroup
    limits = job.limits
    warm = job.task_type == "python" and config.warm_python and interpreter == launcher.python
    request = {
        "task_type": job.task_type,
        "warm": warm,
        "hold": bool(job.artifacts),
        "rlimits": [
            [
                kind,
                value,
                value + 1 if kind == resource.RLIMIT_CPU else value,
            ]  # SIGXCPU, then SIGKILL
            for kind, value in rlimits(
                limits, cgroup=cgroup is not None, max_open_files=config.max_open_files
            ).items()
        ],
    }
    program = os.memfd_create("vx11-program", os.MFD_CLOEXEC)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        os.write(program, json.dumps({
            "code": job.code, "args": list(job.args),
            "argv": command(job, interpreter),
            "files": [[path, base64.b64encode(data).decode("ascii")] for path, data in job.files],
        }, ensure_ascii=False).encode("utf-8", "surrogatepass"))  # fmt: skip
        meter = _Meter(cgroup, limits) if cgroup is not None else None
        with stdin_file(job.stdin) as stdin_handle:
            started = time.monotonic()
            err_to = out_w if job.merge_stderr else err_w  # merged: err_r sees its end
            fds = [stdin_handle.fileno(), out_w, err_to, program]
            running = launcher.launch(request, fds, job)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        for fd in (program, out_w, err_w):
            os.close(fd)
    if watcher is not None and meter is not None:
        watcher.started(meter.sample)
    try:
        done = supervise(
            running, out_r, err_r, started=started, limits=limits,
            drain_bytes=max(config.drain_bytes, limits.output_bytes * 2), watcher=watcher,
        )  # fmt: skip
    finally:
        os.close(out_r)
        os.close(err_r)
    return done, meter.end() if meter is not None else None, running.collected
