"""The task types this worker offers (:mod:`vx11.core.runtimes`), checked on its host
when it starts: a declared one's interpreter (and its version command's program) must
be there, inside what the sandbox shows (``/usr`` or its own binds), and each bind must
really lead under ``/usr`` or ``/opt``, to neither VX11's installation nor its data. A
built-in one's version is what its interpreter prints on the host; a declared one's is
taken in the sandbox (:func:`workers.sandbox.levels.offered`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from vx11.core import runtimes as core_runtimes
from vx11.core.runtimes import BIND_ROOTS, Runtime, TaskTypeFileError
from workers.sandbox.bwrap import bound_system_paths
from workers.sandbox.launch import SANDBOX_PATH, SHELL

VERSION_TIMEOUT = 10.0


def checked(runtime: Runtime, private: Sequence[str] = ()) -> Runtime:
    """``runtime`` with its interpreter's and its binds' real paths (their links
    resolved now: the sandbox has no ``/etc/alternatives``, and a link changed later
    changes nothing); :class:`TaskTypeFileError` when this host cannot run it safely.
    ``private``: directories no bind may show (VX11's installation and data)."""
    where = f"task type {runtime.name!r}"
    binds = []
    for path in runtime.binds:
        real = os.path.realpath(path)
        if not os.path.exists(real):
            raise TaskTypeFileError(f"{where}: bind {path} does not exist on this worker")
        if not _under(real, BIND_ROOTS):
            raise TaskTypeFileError(
                f"{where}: bind {path} leads to {real}, outside {' and '.join(BIND_ROOTS)}"
            )
        for secret in (os.path.realpath(p) for p in private):
            if _under(secret, [real]):
                raise TaskTypeFileError(
                    f"{where}: bind {path} would show {secret}, VX11's own files, to code"
                )
        binds.append(real)
    visible = [*(os.path.realpath(p) for p in bound_system_paths()), *binds]
    interpreter = _program(where, "interpreter", runtime.interpreter[0], visible)
    version = runtime.version
    if version:
        version = (_program(where, "version command", version[0], visible), *version[1:])
    return replace(
        runtime, interpreter=(interpreter, *runtime.interpreter[1:]), binds=tuple(binds),
        version=version,
    )  # fmt: skip


def _program(where: str, what: str, program: str, visible: Sequence[str]) -> str:
    """``program``'s real path: installed here, and inside what the sandbox shows."""
    found = shutil.which(program, path=SANDBOX_PATH) if "/" not in program else program
    if not found or not os.access(found, os.X_OK):
        raise TaskTypeFileError(
            f"{where}: {what} {program} is not installed on this worker "
            f"(looked up on {SANDBOX_PATH})"
        )
    real = os.path.realpath(found)
    if not _under(real, visible):
        raise TaskTypeFileError(
            f"{where}: {what} {found} ({real}) is outside what the sandbox shows "
            f"({', '.join(visible)}): bind its directory"
        )
    return real


def built_in(python: str) -> dict[str, str | None]:
    """The built-in task types this worker runs, with their interpreters' versions (as
    the host runs them: the same programs the sandbox shows at ``/usr``): python, shell,
    and bash when installed."""
    task_types: dict[str, str | None] = {
        "python": version((python, "--version")),
        "shell": os.path.basename(os.path.realpath(SHELL)),
    }
    bash = shutil.which("bash", path=SANDBOX_PATH)
    if bash:
        task_types["bash"] = version((bash, "--version"))
    return task_types


def version(argv: Sequence[str]) -> str:
    """The first line ``argv`` prints on the host (stdout, else stderr);
    :class:`TaskTypeFileError` when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, stdin=subprocess.DEVNULL,
            env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}, timeout=VERSION_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TaskTypeFileError(f"version command {list(argv)} failed: {exc}") from None
    return first_line(argv, done.returncode, done.stdout, done.stderr)


def first_line(argv: Sequence[str], exit_code: int | None, stdout: bytes, stderr: bytes) -> str:
    """The version a command printed: the first line of its stdout, else of its stderr;
    :class:`TaskTypeFileError` when it failed or printed nothing."""
    text = (stdout.strip() or stderr.strip()).decode("utf-8", "replace")
    if exit_code != 0 or not text:
        raise TaskTypeFileError(f"version command {list(argv)} exited {exit_code}: {text[:200]!r}")
    return text.splitlines()[0].strip()[:100]


def private_paths(data_dir: str) -> list[str]:
    """What no bind may hold: VX11's installation (this interpreter's prefix, and the
    package's directory) and its data directory, unless the sandbox shows it anyway."""
    package = str(Path(core_runtimes.__file__).resolve().parents[2])  # holds vx11/
    shown = [os.path.realpath(p) for p in bound_system_paths()]
    paths = (sys.prefix, package, os.path.abspath(data_dir))
    return [p for p in paths if not _under(os.path.realpath(p), shown)]  # /usr is shown


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)
