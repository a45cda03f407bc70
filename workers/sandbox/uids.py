"""The uid each concurrent run has: one of its own, from a configured range
(``VX11_SANDBOX_UIDS``, 60000-60999 by default, as ioi/isolate's boxes), that no
account names and no other process on the host runs as.

A run takes a *lease* on a uid for as long as it runs; a pool process gives its lease
back when its run ends and takes the same one for its next run, so its slot (the
launcher, which runs as that uid) is kept. A lease is an ``flock`` on
``/run/vx11/uids/<uid>``: every worker of the host sees it (in a container, of the
container: give workers on one host distinct ranges), and it is released with the
process that holds it, however that process ends.
Before a uid is leased the first time by a process, it is checked: no user or group
has it (``/etc/passwd``, ``/etc/group``) and no process runs as it.

Its gid is the same number. Per-uid kernel limits and objects (the process count of
``RLIMIT_NPROC``, key quotas, inotify instances, message-queue bytes) and ``kill -1``
then reach only the run's own processes, at both levels.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import os
import pwd
import threading
from pathlib import Path

from workers.sandbox.process import Identity
from workers.sandbox.spec import SandboxError

LOCKS = Path("/run/vx11/uids")


class Leases:
    """This process's leases, free or in use."""

    def __init__(self, locks: Path = LOCKS) -> None:
        self.locks = locks
        self.free: dict[tuple[range, str], list[Identity]] = {}
        """Leases not in use, by range and level: a bwrap run's uid stays its slot's
        (whose idle launcher runs as it), never a basic run's."""
        self.held: dict[int, int] = {}
        """uid -> the descriptor holding its lock."""
        self.lock = threading.Lock()

    def take(self, uids: range, level: str) -> Identity:
        """A uid of ``uids`` for one run at ``level``: a lease this process holds
        already and is not using at that level, else a new one."""
        with self.lock:
            if self.free.get((uids, level)):
                return self.free[(uids, level)].pop()
            taken = set(self.held)
        directory = self.locks
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        running = None
        offset = os.getpid() % len(uids)
        for step in range(len(uids)):
            uid = uids[(offset + step) % len(uids)]
            if uid in taken or _named(uid):
                continue
            fd = os.open(directory / str(uid), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            running = running if running is not None else _uids_running()
            if uid in running:  # someone's process: not ours to share
                os.close(fd)
                continue
            with self.lock:
                self.held[uid] = fd
            return Identity(uid, uid)
        raise SandboxError(
            f"no free uid in {uids.start}-{uids.stop - 1} (VX11_SANDBOX_UIDS) for another run"
        )

    def give(self, uids: range, level: str, identity: Identity) -> None:
        """The run of ``identity`` has ended: its uid is free for this process's next
        at the same level."""
        with self.lock:
            self.free.setdefault((uids, level), []).append(identity)

    def close(self) -> None:
        """Let every lease of this process go (once its runs and slots are gone); in a
        forked child, the leases stay its parent's: their locks are the parent's too."""
        for fd in self.held.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.free, self.held, self.lock = {}, {}, threading.Lock()


def _named(uid: int) -> bool:
    """Whether a user or group has this number."""
    for lookup in (pwd.getpwuid, grp.getgrgid):
        try:
            lookup(uid)
            return True
        except KeyError:
            pass
    return False


def _uids_running() -> set[int]:
    """The real uids of every process now."""
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                found.add(os.stat(entry.path).st_uid)
    return found


LEASES = Leases()
os.register_at_fork(after_in_child=LEASES.close)
