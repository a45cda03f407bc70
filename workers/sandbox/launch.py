"""The command line of a run, the same at both levels, and what the basic level
prepares for :func:`~workers.sandbox.process.run_process`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELL = "/bin/sh"


def command(task_type: str, interpreter: str, code: str, args: Sequence[str]) -> list[str]:
    """The command line of a run, the same at both levels: python runs ``main.py`` from
    the working directory; ``sh`` or ``bash`` gets the code as an argument, ``$0`` named
    after itself and ``args`` as ``$1``…

    Python runs unbuffered (``-u``; ``-I`` ignores ``PYTHONUNBUFFERED``): its stdout is a
    pipe, which it would otherwise fill in blocks of 8 KiB, so ``print()`` output would
    reach a live stream only at the end."""
    if task_type == "python":
        return [interpreter, "-I", "-u", "main.py", *args]
    return [interpreter, "-c", code, "bash" if task_type == "bash" else "sh", *args]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
