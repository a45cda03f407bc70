"""The ``bwrap`` level: bubblewrap puts each run in new user, pid, network, ipc, uts and
cgroup namespaces, with only the system's ``/usr`` (and its compatibility links) and an
``/etc`` of VX11's own (:mod:`.etc`) bound read-only, a read-only root and ``/dev``,
size-capped tmpfs for the working directory, ``/tmp`` and ``/dev/shm``, no capabilities,
no further user namespaces, and an empty environment from its very first process.

Nothing of a run exists on the host's filesystem: the code reaches the sandbox through
a memory file descriptor, so there is no host-side path a planted symlink could turn.
"""

from __future__ import annotations

import functools
import os
import signal
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from workers.sandbox import etc
from workers.sandbox.launch import SANDBOX_PATH, SHELL, Launch, command
from workers.sandbox.spec import SandboxConfig

WORKDIR = "/work"
SANDBOX_UID = 65534
SANDBOX_USER = "sandbox"
HOSTNAME = "vx11-sandbox"
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


def bwrap_argv(
    bwrap: str,
    tmpfs_bytes: int,
    inner: Sequence[str],
    data: Sequence[str],
    etc_dir: str | None = None,
) -> list[str]:
    """The whole command line; ``etc_dir`` is bound read-only at ``/etc`` (None: the
    sandbox has no ``/etc``)."""
    return [
        bwrap,
        "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc",
        "--unshare-uts", "--unshare-cgroup-try",
        "--disable-userns",
        "--die-with-parent", "--new-session", "--cap-drop", "ALL",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--hostname", HOSTNAME,
        *system_binds(),
        *(["--ro-bind", etc_dir, "/etc"] if etc_dir else []),
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", str(tmpfs_bytes), "--tmpfs", "/dev/shm",
        "--size", str(tmpfs_bytes), "--tmpfs", WORKDIR,
        "--size", str(tmpfs_bytes), "--tmpfs", "/tmp",
        *data,
        # bwrap's own / and /dev are tmpfs without a size: read-only, so the only
        # places code can write are the three size-capped ones above.
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


@contextmanager
def prepared(
    task_type: str, code: str, args: Sequence[str], config: SandboxConfig, interpreter: str
) -> Iterator[Launch]:
    fds: list[int] = []
    try:
        if task_type == "python":
            fd = os.memfd_create("vx11-main.py")
            fds.append(fd)
            os.write(fd, code.encode("utf-8"))
            os.lseek(fd, 0, os.SEEK_SET)
            data = ["--ro-bind-data", str(fd), f"{WORKDIR}/main.py"]
        else:
            data = []
        inner = command(task_type, interpreter, code, args)
        etc_dir = config.etc or shared_etc()
        argv = bwrap_argv(config.bwrap, config.tmpfs_mb << 20, inner, data, etc_dir)
        # bwrap itself starts with an empty environment: the environment of a sandbox's
        # first process is readable through /proc inside it.
        yield Launch(argv, {}, str(Path("/")), tuple(fds))
    finally:
        for fd in fds:
            os.close(fd)


def decode_exit(exit_code: int | None, term_signal: str | None) -> tuple[int | None, str | None]:
    """bwrap exits 128 + N when the code was killed by signal N (as shells report it)."""
    if term_signal is None and exit_code is not None and 128 < exit_code < 128 + signal.NSIG:
        signum = exit_code - 128
        return -signum, signal.Signals(signum).name
    return exit_code, term_signal
