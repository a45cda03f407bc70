"""What a sandbox level prepares for :func:`~workers.sandbox.process.run_process`."""

from __future__ import annotations

from dataclasses import dataclass, field

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SHELL = "/bin/sh"


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    pass_fds: tuple[int, ...] = field(default=())
