"""Per-spawn cgroups: a memory and a process-count limit for the whole spawn, its peak
memory, whether the kernel's OOM killer ended it, and a kill that leaves nothing behind.

cgroup v1 (a ``memory`` and a ``pids`` hierarchy) and v2 (one unified hierarchy) are
both supported. Spawn cgroups are made below the worker's own cgroup, which must be
writable by the worker: true for a root worker on a host or in a container given its
own writable cgroup tree; v2 also needs the ``memory`` and ``pids`` controllers
delegated to that cgroup's children.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
KILL_TIMEOUT = 5.0
WORKER_LEAF = "worker"
"""On v2, the cgroup a worker that gave root up runs in, beside its slots."""


class CgroupUnavailable(RuntimeError):
    """Raised when this worker cannot make per-spawn cgroups."""


def _own_paths(proc_cgroup: str = "/proc/self/cgroup") -> dict[str, str]:
    """``{controller: path}`` of this process; v2's unified entry is under ``""``."""
    paths = {}
    for line in Path(proc_cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


@dataclass(frozen=True)
class SpawnCgroup:
    """One spawn's cgroup: v1, a directory per controller's hierarchy; v2, one."""

    version: int
    dirs: dict[str, Path]
    """``{controller: directory}``; v2 maps every controller to the same directory."""

    def _dir(self, controller: str) -> Path | None:
        return self.dirs.get(controller)

    @property
    def procs_files(self) -> tuple[str, ...]:
        return tuple(str(d / "cgroup.procs") for d in dict.fromkeys(self.dirs.values()))

    def attach_self(self) -> None:
        """Move the calling process into this cgroup: called in the child before exec, so
        every process the spawn makes is born inside it."""
        for path in self.procs_files:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def limit(self, memory_bytes: int, max_processes: int) -> None:
        """Set the memory (without swap) and process-count limits."""
        memory = self.dirs["memory"]
        if self.version == 1:
            # memsw (only with swap accounting) may never be below the memory limit:
            # going down, memory first; going up, memsw first
            names = ["memory.limit_in_bytes", *self._memsw]
            try:
                for name in names:
                    _write(memory / name, memory_bytes)
            except OSError:
                for name in reversed(names):
                    _write(memory / name, memory_bytes)
        else:
            (memory / "memory.max").write_text(str(memory_bytes))
        _write(self.dirs["pids"] / "pids.max", max_processes)

    @functools.cached_property
    def _memsw(self) -> list[str]:
        return [n for n in ["memory.memsw.limit_in_bytes"] if (self.dirs["memory"] / n).exists()]

    def memory_bytes(self) -> int | None:
        """Memory in use now (pages of its processes and the files they cached)."""
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        try:
            return int(_read(self.dirs["memory"] / name))
        except (OSError, ValueError):
            return None

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in it so far."""
        name = "memory.oom_control" if self.version == 1 else "memory.events"
        try:
            text = _read(self.dirs["memory"] / name)
        except OSError:
            return 0
        counts = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counts.get("oom_kill", "0"))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.procs_files:
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in _read(Path(path)).split())
        return found

    def kill(self) -> None:
        """SIGKILL every process in the cgroup until none is left."""
        if self.version == 2:
            with contextlib.suppress(OSError):  # cgroup.kill: kernel 5.14 and later
                (self.dirs["memory"] / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + KILL_TIMEOUT
        while (pids := self.pids()) and time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.005)
        if pids:
            log.error("cgroup %s still holds processes %s after SIGKILL", self.dirs, pids)

    def peak_memory_bytes(self) -> int | None:
        name = "memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"
        try:
            return int(_read(self.dirs["memory"] / name))
        except (OSError, ValueError):
            return None

    def reset_peak(self) -> int | None:
        """Start counting peak memory from now; returns the descriptor to read it through
        (v2 resets it per open file, on kernel 6.12 and later), or None."""
        if self.version == 1:
            with contextlib.suppress(OSError):
                _write(self.dirs["memory"] / "memory.max_usage_in_bytes", 0)
            return None
        try:
            fd = os.open(self.dirs["memory"] / "memory.peak", os.O_RDWR)
        except OSError:
            return None
        with contextlib.suppress(OSError):
            os.write(fd, b"reset\n")
        return fd

    def read_peak(self, fd: int | None) -> int | None:
        """Peak memory since :meth:`reset_peak` gave ``fd``."""
        if fd is None:
            return self.peak_memory_bytes()
        try:
            return int(os.pread(fd, 64, 0))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)

    def cpu_time_ms(self) -> int | None:
        """CPU time of every process the spawn ran, reaped or not."""
        try:
            if self.version == 1:
                return int(_read(self.dirs["cpuacct"] / "cpuacct.usage")) // 1_000_000
            lines = _read(self.dirs["memory"] / "cpu.stat").splitlines()
            return int(dict(line.split() for line in lines)["usage_usec"]) // 1000
        except (OSError, KeyError, ValueError):
            return None

    def sample(self) -> dict[str, Any]:
        """The spawn's live processes: count, pids (as the worker sees them), resident
        memory and CPU time so far."""
        pids = sorted(self.pids())
        memory = self.memory_bytes()
        return {"count": len(pids), "pids": pids[:64],
                "rss_kb": memory // 1024 if memory is not None else None,
                "cpu_time_ms": self.cpu_time_ms()}  # fmt: skip

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this spawn."""
        return self.oom_kills() > 0

    def remove(self) -> None:
        for directory in dict.fromkeys(self.dirs.values()):
            for _ in range(50):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # busy until the last process is reaped
                    time.sleep(0.01)
            else:
                log.error("could not remove cgroup %s", directory)


@dataclass(frozen=True)
class Cgroups:
    """Where this worker makes spawn cgroups."""

    version: int
    parents: dict[str, Path]
    """``{controller: parent directory}``: memory, pids and (v1, when mounted) cpuacct."""

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT, proc_cgroup: str = "/proc/self/cgroup") -> Cgroups:
        """The cgroups this worker can use, or :class:`CgroupUnavailable` saying why not."""
        own = _own_paths(proc_cgroup)
        tag = f"vx11-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        if (root / "cgroup.controllers").exists():
            parent = root / own.get("", "/").lstrip("/") / tag
            cgroups = cls(2, {"memory": parent, "pids": parent})
        else:
            missing = [c for c in ("memory", "pids") if not (root / c).is_dir()]
            if missing:
                raise CgroupUnavailable(f"no cgroup v1 hierarchy for {', '.join(missing)}")
            controllers = ["memory", "pids"] + (["cpuacct"] if (root / "cpuacct").is_dir() else [])
            cgroups = cls(1, {c: root / c / own.get(c, "/").lstrip("/") / tag for c in controllers})
        cgroups._prepare()
        return cgroups

    def _prepare(self) -> None:
        for parent in dict.fromkeys(self.parents.values()):
            _remove_stale_siblings(parent)
        try:
            for parent in dict.fromkeys(self.parents.values()):
                parent.mkdir()
            if self.version == 2:
                (self.parents["memory"] / "cgroup.subtree_control").write_text("+memory +pids")
        except OSError as exc:
            self.close()
            raise CgroupUnavailable(f"cannot create cgroups under {self.parents}: {exc}") from exc

    @classmethod
    def delegate(cls, uid: int, gid: int) -> Cgroups:
        """As root, before the worker gives root up (:mod:`workers.service`): this
        worker's cgroups, handed to ``uid``/``gid``, for the worker to use (passed to
        :func:`workers.sandbox.levels.choose`). On v2 the worker moves into a leaf of
        them (:meth:`join`), so that it and its slots have a common parent it owns, which
        moving a process between them needs."""
        cgroups = cls.detect()
        try:
            if cgroups.version == 2:
                (cgroups.parents["memory"] / WORKER_LEAF).mkdir()
            for parent in dict.fromkeys(cgroups.parents.values()):
                for path in [parent, *parent.iterdir(), *parent.glob(f"{WORKER_LEAF}/*")]:
                    os.chown(path, uid, gid)
        except OSError:
            cgroups.close()
            raise
        return cgroups

    def join(self, pid: int) -> None:
        """Move ``pid`` (the worker) into its leaf of a delegated v2 tree."""
        if self.version == 2:
            _write(self.parents["memory"] / WORKER_LEAF / "cgroup.procs", pid)

    def create(self, memory_bytes: int, max_processes: int, kind: str = "spawn") -> SpawnCgroup:
        """A new cgroup for one spawn (basic level) or one slot (bwrap level)."""
        name = f"{kind}-{uuid.uuid4().hex[:12]}"
        dirs = {controller: parent / name for controller, parent in self.parents.items()}
        cgroup = SpawnCgroup(self.version, dirs)
        try:
            for directory in dict.fromkeys(dirs.values()):
                directory.mkdir()
            if self.version == 1:
                (dirs["memory"] / "memory.swappiness").write_text("0")
            else:
                with contextlib.suppress(OSError):
                    (dirs["memory"] / "memory.swap.max").write_text("0")
            cgroup.limit(memory_bytes, max_processes)
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def close(self) -> None:
        """Remove the parents (at worker exit); spawn cgroups are removed as they end.
        A worker that gave root up may not remove them: the next to start does."""
        for parent in dict.fromkeys(self.parents.values()):
            with contextlib.suppress(OSError):
                (parent / WORKER_LEAF).rmdir()
            with contextlib.suppress(OSError):
                parent.rmdir()


def _read(path: Path) -> str:
    """A cgroup file's text (without the layers of ``Path.read_text``: on a run's path)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16).decode()
    finally:
        os.close(fd)


def _write(path: Path, value: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)


def _remove_stale_siblings(parent: Path) -> None:
    """Remove the cgroups that workers no longer running left beside ``parent`` (a
    worker killed outright never removes its own): empty directories only."""
    for stale in parent.parent.glob("vx11-*-*"):
        pid = stale.name.split("-")[1]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for child in [*stale.glob("spawn-*"), *stale.glob("slot-*"), stale / WORKER_LEAF]:
            with contextlib.suppress(OSError):
                child.rmdir()
        with contextlib.suppress(OSError):
            stale.rmdir()
