"""A worker started as root gives root up before it does anything else.

Running each concurrent spawn as a uid of its own (:mod:`workers.sandbox.uids`) takes
the power to switch uids, which only root has. A worker started as root keeps that
power and nothing else, in a user namespace of its own, the way rootless container
engines do:

- As root, it prepares what needs root, once: the lock directory of the uid leases
  and its per-spawn cgroups (:meth:`~workers.sandbox.cgroups.Cgroups.delegate`), both
  handed to the service user (``VX11_SERVICE_USER``, ``vx11`` by default).
- It forks. The child makes a new user namespace, in which root is the service user
  and the only other uids and gids are the sandbox range (``VX11_SANDBOX_UIDS``), each
  mapped to itself. The child becomes that namespace's root and goes on to be the
  worker. To the host it is the service user: its capabilities hold only in its
  namespace, over its own processes and files and the sandbox range's, and there is
  no uid in it that could become the host's root (``setuid(0)`` of the host: not
  mapped, so impossible). Its first ``setuid`` to a sandbox uid, before each slot's
  bubblewrap, drops every capability, as any root's does.
- The parent becomes the service user too, with no capability at all, and waits: it
  passes on the signals a worker is stopped with, reaps the orphans it is given (as
  a container's PID 1 it replaces an init), and exits as the worker did.

Nothing of VX11 then runs as the host's root. Started as another user, the worker
runs as that user and runs every spawn as it (only root can switch uids).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import warnings
from pathlib import Path
from typing import NoReturn

from celery.exceptions import SecurityWarning

from vx11.core.config import Settings
from workers.sandbox import cgroups, uids

log = logging.getLogger(__name__)

CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP,
             signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip
"""The signals Celery's worker is stopped or asked with (warm and cold shutdown,
restart, dumping its threads), passed on by the parent."""


class ServiceUserError(RuntimeError):
    """The worker cannot give root up as configured (it then refuses to start)."""


def give_up_root(settings: Settings) -> cgroups.Cgroups | None:
    """Called once, in the worker's main process before it starts anything: if it runs
    as root, return in the namespace's root as described above (the caller goes on
    being the worker), with the worker's cgroups made while it was root (None: none
    made); the process that called it stays behind as the waiter."""
    if os.geteuid() != 0:
        return None
    if not settings.service_user:
        log.warning("the worker runs as root: VX11_SERVICE_USER is empty")
        return None
    try:
        uid, gid = settings.service_ids()
    except ValueError as exc:
        raise ServiceUserError(str(exc)) from None
    sandbox = settings.sandbox_uid_range
    delegated = prepare(uid, gid, settings)
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.close(mapped_w)
        _enter_namespace(ready_w, mapped_r, parent)
        return delegated
    os.close(ready_w)
    os.close(mapped_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise ServiceUserError("the worker could not make its user namespace")
        _write_maps(child, uid, gid, sandbox)
        if delegated is not None:
            delegated.join(child)
        os.write(mapped_w, b"1")
    except BaseException:
        os.kill(child, signal.SIGKILL)
        raise
    finally:
        os.close(ready_r)
        os.close(mapped_w)
    _wait_as(uid, gid, child)


def prepare(uid: int, gid: int, settings: Settings) -> cgroups.Cgroups | None:
    """What needs root, done before root is given up; the worker's cgroups, if any."""
    uids.LOCKS.mkdir(mode=0o700, parents=True, exist_ok=True)
    sandbox_root = Path(settings.effective_sandbox_root)  # the basic level's directories
    sandbox_root.mkdir(mode=0o711, parents=True, exist_ok=True)
    for path in (uids.LOCKS, *uids.LOCKS.iterdir(), sandbox_root):
        os.chown(path, uid, gid)
    if settings.sandbox_cgroups != "off":
        try:
            return cgroups.Cgroups.delegate(uid, gid)
        except (cgroups.CgroupUnavailable, OSError) as exc:
            log.warning("per-spawn cgroups unavailable, rlimits only: %s", exc)
    return None


def _enter_namespace(ready: int, mapped: int, parent: int) -> None:
    """In the child: a new user namespace, mapped by the parent, then its root."""
    os.setgroups([])  # root's supplementary groups are not the service user's
    libc = ctypes.CDLL(None, use_errno=True)
    made = libc.unshare(CLONE_NEWUSER) == 0
    os.write(ready, b"1" if made else b"0")
    os.close(ready)
    if not made:
        os._exit(70)
    if os.read(mapped, 1) != b"1":
        os._exit(70)
    os.close(mapped)
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)  # the namespace's root: the service user to the host
    # Celery's warning about a worker run as root would now be about this namespace's
    warnings.filterwarnings("ignore", "You're running the worker with superuser", SecurityWarning)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the waiter gone, the worker goes
    if os.getppid() != parent:
        os._exit(70)


def _write_maps(child: int, uid: int, gid: int, sandbox: range) -> None:
    """Root of the namespace is the service user; the sandbox range maps to itself."""
    sandbox_ids = f"{sandbox.start} {sandbox.start} {len(sandbox)}\n"
    Path(f"/proc/{child}/uid_map").write_text(f"0 {uid} 1\n{sandbox_ids}")
    Path(f"/proc/{child}/gid_map").write_text(f"0 {gid} 1\n{sandbox_ids}")


def _wait_as(uid: int, gid: int, worker: int) -> NoReturn:
    """The parent: the service user without capabilities, passing signals on to the
    worker and reaping what it is given, until the worker exits; then exit as it did."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):  # it has just exited: reaped below
            os.kill(worker, signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(70)
        except InterruptedError:
            continue
        if pid == worker:
            if os.WIFSIGNALED(status):
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.waitstatus_to_exitcode(status))
