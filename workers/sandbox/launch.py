"""The command line of a run, the same at both levels, and what the basic level
prepares for :func:`~workers.sandbox.process.run_process`."""

from __future__ import annotations

from dataclasses import dataclass

from workers.sandbox.spec import Job

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELL = "/bin/sh"


def command(job: Job, interpreter: str) -> list[str]:
    """The command line of ``job``'s run, the same at both levels: python runs
    ``main.py`` from the working directory; ``sh`` or ``bash`` gets the code as an
    argument, ``$0`` named after itself and the args as ``$1``…; a declared task type
    runs its interpreter on its code's file, then the args.

    Python runs unbuffered (``-u``; ``-I`` ignores ``PYTHONUNBUFFERED``): its stdout is a
    pipe, which it would otherwise fill in blocks of 8 KiB, so ``print()`` output would
    reach a live stream only at the end."""
    if job.runtime is not None:  # its interpreter's path was resolved at worker start
        return job.runtime.argv(job.args)
    if job.task_type == "python":
        return [interpreter, "-I", "-u", "main.py", *job.args]
    return [interpreter, "-c", job.code, "bash" if job.task_type == "bash" else "sh", *job.args]


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
