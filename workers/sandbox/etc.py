"""The ``/etc`` of the bwrap level: a few files VX11 writes itself, once per worker, bound
read-only at ``/etc`` in every run. None is copied from the host's ``/etc``.

It holds what ordinary programs look for there: the run's user and group (so
``getpass.getuser()``, ``id`` and ``whoami`` name them), ``nsswitch.conf`` (files only),
``hosts`` (loopback only), ``alternatives/`` (Debian's ``awk``, ``which``… are links
through it) and the time zone (UTC). glibc's built-in ``C.UTF-8`` locale needs nothing
here.
"""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

HOST_ALTERNATIVES = "/etc/alternatives"
UTC_ZONE = "/usr/share/zoneinfo/Etc/UTC"
NSSWITCH = "".join(
    f"{database + ':':<16}files\n"
    for database in ("passwd", "group", "shadow", "hosts", "networks", "protocols",
                     "services", "ethers", "rpc", "netgroup")
)  # fmt: skip


@dataclass(frozen=True)
class Account:
    """The one user (and its group, of the same name) that code runs as."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


def files(account: Account, hostname: str) -> dict[str, str]:
    """The regular files of the directory, by name."""
    return {
        "passwd": "root:x:0:0:root:/root:/bin/sh\n"
        f"{account.name}:x:{account.uid}:{account.gid}:VX11 sandbox:{account.home}:"
        f"{account.shell}\n",
        "group": f"root:x:0:\n{account.name}:x:{account.gid}:\n",
        "nsswitch.conf": NSSWITCH,
        "hosts": f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "timezone": "Etc/UTC\n",
    }


def alternatives(system_paths: Sequence[str], source: str = HOST_ALTERNATIVES) -> dict[str, str]:
    """``name: target`` for each of the host's alternatives whose link resolves, on the
    host, to something under ``system_paths`` (what the sandbox binds); the target is
    that resolved path, so no link inside goes through ``/etc`` again."""
    found: dict[str, str] = {}
    try:
        entries = list(os.scandir(source))
    except OSError:
        return found  # not Debian: no alternatives
    for entry in entries:
        target = os.path.realpath(entry.path)
        if (
            entry.is_symlink()
            and any(target.startswith(path.rstrip("/") + "/") for path in system_paths)
            and os.path.exists(target)
        ):
            found[entry.name] = target
    return found


def write(directory: Path, account: Account, hostname: str, system_paths: Sequence[str]) -> None:
    """Fill the empty ``directory``: files 0644, directories 0755, whatever the umask."""
    directory.chmod(0o755)
    for name, text in files(account, hostname).items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            os.fchmod(f.fileno(), 0o644)
    links = directory / "alternatives"
    links.mkdir()
    links.chmod(0o755)
    for name, target in alternatives(system_paths).items():
        (links / name).symlink_to(target)
    if os.path.exists(UTC_ZONE):
        (directory / "localtime").symlink_to(UTC_ZONE)


def make(account: Account, hostname: str, system_paths: Sequence[str]) -> str:
    """A new private directory (in the temporary directory, owned by this process's user)
    holding the sandbox's ``/etc``; removed when this process exits."""
    directory = tempfile.mkdtemp(prefix="vx11-etc-")
    try:
        write(Path(directory), account, hostname, system_paths)
        # systemd-tmpfiles skips what is locked when it ages files in /tmp (tmpfiles.d(5)):
        # kept locked for the worker's life, the directory is never cleaned under it.
        lock = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    atexit.register(_remove, directory, os.getpid())
    return directory


def _remove(directory: str, creator: int) -> None:
    if os.getpid() == creator:  # not in a forked pool process that happens to run atexit
        shutil.rmtree(directory, ignore_errors=True)
