"""The ``bwrap`` level: a slot's bubblewrap, started once (:mod:`.slot`), is in new
user, pid, network, ipc, uts and cgroup namespaces, with only the system's ``/usr`` (and
its compatibility links) and an ``/etc`` of VX11's own (:mod:`.etc`) bound read-only, a
read-only root and ``/dev``, and an empty environment from its very first process. Each
run forked inside it (:mod:`.launcher`) adds user, mount, pid and ipc namespaces of its
own, size-capped tmpfs for the working directory, ``/tmp`` and ``/dev/shm``, no
capabilities and no further user namespaces.

Nothing of a run exists on the host's filesystem: the code reaches the sandbox through
a memory file descriptor, so there is no host-side path a planted symlink could turn.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

from workers.sandbox import etc
from workers.sandbox.launch import SANDBOX_PATH, SHELL

WORKDIR = "/work"
SANDBOX_UID = 65534
SANDBOX_USER = "sandbox"
HOSTNAME = "vx11-sandbox"
MOUNT_POINT_BYTES = 64 << 10
COMPAT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


def system_binds() -> list[str]:
    """``/usr`` read-only, and ``/bin``, ``/lib``… as the links or directories they are."""
    args = ["--ro-bind", "/usr", "/usr"]
    for path in COMPAT_LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def bound_system_paths() -> list[str]:
    """The host paths :func:`system_binds` makes visible, the same inside."""
    return ["/usr", *(p for p in COMPAT_LINKS if os.path.isdir(p) and not os.path.islink(p))]


@functools.cache
def shared_etc() -> str:
    """This process's ``/etc`` for the sandbox, made at its first call (:mod:`.levels`
    makes it when the worker starts, before its pool forks) and kept until it exits."""
    account = etc.Account(SANDBOX_USER, SANDBOX_UID, SANDBOX_UID, WORKDIR, SHELL)
    return etc.make(account, HOSTNAME, bound_system_paths())


def launcher_argv(
    bwrap: str, inner: Sequence[str], etc_dir: str | None = None, binds: Sequence[str] = ()
) -> list[str]:
    """The bubblewrap command line of a slot's launcher (:mod:`.launcher`); ``etc_dir``
    is bound read-only at ``/etc`` (None: the sandbox has no ``/etc``), and each of
    ``binds`` (the declared task types', :mod:`.runtimes`) read-only where it is.

    The launcher has no capability (uid 65534 there, mapped to the unprivileged uid
    bwrap runs as); each run gets user, mount, pid and ipc namespaces of its own below
    these (:mod:`.launcher`), where it is uid 65534 again, without any capability once
    its namespaces are set up."""
    return [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
        "--unshare-uts", "--unshare-cgroup-try",
        # no --die-with-parent: it would fire when the thread that started the slot
        # ends; the launcher exits when its control socket closes, as it does when the
        # worker exits however it ends, and its pid namespace, with every run, with it
        "--new-session", "--cap-drop", "ALL",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", HOSTNAME,
        *system_binds(),
        *(["--ro-bind", etc_dir, "/etc"] if etc_dir else []),
        *(arg for path in binds for arg in ("--ro-bind", path, path)),
        "--proc", "/proc",
        "--dev", "/dev",
        # where each run mounts its own size-capped tmpfs
        "--size", str(MOUNT_POINT_BYTES), "--tmpfs", "/dev/shm",
        "--size", str(MOUNT_POINT_BYTES), "--tmpfs", WORKDIR,
        "--size", str(MOUNT_POINT_BYTES), "--tmpfs", "/tmp",
        # bwrap's own / and /dev are tmpfs without a size: read-only, so the only
        # places code can write are the three size-capped ones of its run.
        "--remount-ro", "/dev",
        "--remount-ro", "/",
        "--chdir", WORKDIR,
        "--clearenv",
        "--setenv", "PATH", SANDBOX_PATH,
        "--setenv", "HOME", WORKDIR,
        "--setenv", "TMPDIR", "/tmp",
        "--setenv", "LANG", "C.UTF-8",
        "--",
        *inner,
    ]  # fmt: skip
