"""The ``basic`` level: a private working directory on the host, a scratch environment,
its own process group, rlimits and an unprivileged uid. No filesystem or network
isolation; a process that calls ``setsid()`` escapes the group kill unless a per-spawn
cgroup catches it (docs/security.md)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from workers.sandbox.launch import SANDBOX_PATH, Launch, command
from workers.sandbox.process import Identity
from workers.sandbox.spec import Job, SandboxConfig, SandboxError


@contextmanager
def prepared(
    job: Job, config: SandboxConfig, identity: Identity | None, interpreter: str
) -> Iterator[Launch]:
    check_root_reachable(config.root, identity)
    workdir = _make_workdir(config.root, identity)
    try:
        _write_files(workdir, job.files, identity)
        if job.task_type == "python":
            _write_private(workdir / "main.py", job.code, identity)
        argv = command(job, interpreter)
        env = {"PATH": SANDBOX_PATH, "HOME": str(workdir), "TMPDIR": str(workdir),
               "LANG": "C.UTF-8"}  # fmt: skip
        yield Launch(argv, env, str(workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)  # fd-based: never follows planted symlinks


@functools.cache
def check_root_reachable(root: str, identity: Identity | None) -> None:
    """Code running as another user must be able to search its way down to its working
    directory; a root below a private directory (say, 0700) would fail every run."""
    if identity is None:
        return
    for directory in (Path(root).absolute(), *Path(root).absolute().parents):
        try:
            info = directory.stat()
        except FileNotFoundError:
            continue  # made later, with 0711
        if info.st_uid != identity.uid and not info.st_mode & stat.S_IXOTH:
            raise SandboxError(
                f"sandbox root {root} is unreachable for the sandbox user: {directory} is "
                "not searchable by others; set VX11_SANDBOX_ROOT below directories every "
                "user can traverse (the default is <tmp>/vx11-sandbox)"
            )


def _make_workdir(root: str, identity: Identity | None) -> Path:
    base = Path(root)
    base.mkdir(mode=0o711, parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="spawn-", dir=base))
    if identity:
        os.chown(workdir, identity.uid, identity.gid)
    return workdir


def _write_files(
    workdir: Path, files: tuple[tuple[str, bytes], ...], identity: Identity | None
) -> None:
    """The spawn's files under ``workdir``, just made and empty, so that no link can be
    in their way: every directory and file opened relative to its parent, never
    following one; directories 0700, files 0600, owned by the run's user."""
    owner = (identity.uid, identity.gid) if identity else None
    top = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        for path, data in files:
            *parents, name = path.split("/")
            parent = os.dup(top)
            try:
                for part in parents:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o700, dir_fd=parent)
                        if owner:
                            os.chown(part, *owner, dir_fd=parent, follow_symlinks=False)
                    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                    below = os.open(part, flags, dir_fd=parent)
                    os.close(parent)
                    parent = below
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                fd = os.open(name, flags, 0o600, dir_fd=parent)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    if owner:
                        os.fchown(f.fileno(), *owner)
            finally:
                os.close(parent)
    finally:
        os.close(top)


def _write_private(path: Path, text: str, identity: Identity | None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        if identity:
            os.fchown(f.fileno(), identity.uid, identity.gid)
