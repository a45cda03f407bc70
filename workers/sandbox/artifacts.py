"""A run's artifacts: the regular files of its working directory that match its
patterns, read once the run has ended (none of its processes is left to change them).

The directory is walked without following any link: each directory and file is opened
relative to its parent with ``O_NOFOLLOW``, a file only if it is a regular file
(``O_NONBLOCK``, so a FIFO never blocks the read; it is skipped anyway), so a link the
code planted, to ``/etc/passwd`` or anywhere, is never read through. At the basic level
the directory is the run's on the host; at the bwrap level it is the run's tmpfs, seen
through ``/proc/<pid>/root`` of the run's init while it waits for this.

Patterns are globs relative to the working directory: ``*`` and ``?`` within one path
part, ``**`` across any number of them (``out/*.png``, ``**/*.csv``).
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_ENTRIES = 10_000
"""Directory entries looked at, at most: a tree made to be slow to walk is cut there."""


@dataclass(frozen=True)
class Artifact:
    path: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Collected:
    artifacts: list[Artifact] = field(default_factory=list)
    truncated: bool = False
    """True when the byte budget (or :data:`MAX_ENTRIES`) left matching files out."""


def matcher(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regular expression for the glob ``patterns``."""
    return re.compile("|".join(f"(?:{_translate(p)})" for p in patterns) or "(?!)")


def _translate(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out) + r"\Z"


def collect(root: str, patterns: Sequence[str], budget: int) -> Collected:
    """The regular files under ``root`` matching ``patterns``, in path order, up to
    ``budget`` bytes in all (a file that does not fit whole is left out)."""
    found = Collected()
    if not patterns:
        return found
    wanted = matcher(patterns)
    files: list[str] = []
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _walk(top, "", files, [0])
    except _TooMany:
        found.truncated = True
    finally:
        os.close(top)
    left = budget
    for path in sorted(p for p in files if wanted.match(p)):
        data = _read(root, path, left)
        if data is None:
            continue
        if len(data) > left:
            found.truncated = True
            continue
        found.artifacts.append(Artifact(path, data))
        left -= len(data)
    return found


class _TooMany(Exception):
    """More than :data:`MAX_ENTRIES` entries."""


def _walk(directory: int, prefix: str, files: list[str], count: list[int]) -> None:
    """Add to ``files`` the relative path of every regular file below ``directory``."""
    with os.scandir(directory) as entries:
        listed = sorted(entries, key=lambda e: e.name)
    for entry in listed:
        count[0] += 1
        if count[0] > MAX_ENTRIES:
            raise _TooMany()
        path = f"{prefix}{entry.name}"
        if entry.is_file(follow_symlinks=False):
            files.append(path)
        elif entry.is_dir(follow_symlinks=False):
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
            below = os.open(entry.name, flags, dir_fd=directory)
            try:
                _walk(below, f"{path}/", files, count)
            finally:
                os.close(below)


def _read(root: str, path: str, left: int) -> bytes | None:
    """``path``'s content, at most ``left + 1`` bytes (one more tells it does not fit);
    None if it is no longer a regular file reached without a link."""
    parent = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        *parts, name = path.split("/")
        for part in parts:
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
            os.close(parent)
            parent = below
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
        fd = os.open(name, flags, dir_fd=parent)
    except OSError:
        return None
    finally:
        os.close(parent)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks, size = [], 0
        while size <= left and (chunk := os.read(fd, min(1 << 20, left + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)
