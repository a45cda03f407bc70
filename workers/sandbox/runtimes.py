"""The task types this worker offers (:mod:`vx11.core.runtimes`), checked on its host
when it starts: a declared one's interpreter must be there, inside what the sandbox
shows (``/usr`` or its own binds), and each bind must really lead under ``/usr`` or
``/opt``, to neither VX11's installation nor its data. A version is what each
interpreter prints; a worker that cannot run a declared task type does not start."""

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
    program = runtime.interpreter[0]
    found = shutil.which(program, path=SANDBOX_PATH) if "/" not in program else program
    if not found or not os.access(found, os.X_OK):
        raise TaskTypeFileError(
            f"{where}: interpreter {program} is not installed on this worker "
            f"(looked up on {SANDBOX_PATH})"
        )
    real = os.path.realpath(found)
    visible = [*(os.path.realpath(p) for p in bound_system_paths()), *binds]
    if not _under(real, visible):
        raise TaskTypeFileError(
            f"{where}: interpreter {found} ({real}) is outside what the sandbox shows "
            f"({', '.join(visible)}): bind its directory"
        )
    return replace(runtime, interpreter=(real, *runtime.interpreter[1:]), binds=tuple(binds))


def offered(python: str, declared: Sequence[Runtime]) -> dict[str, str | None]:
    """Each task type this worker runs, with its interpreter's version (None when it
    has none to tell): python, shell, bash when installed, and ``declared``."""
    task_types: dict[str, str | None] = {
        "python": version((python, "--version")),
        "shell": os.path.basename(os.path.realpath(SHELL)),
    }
    bash = shutil.which("bash", path=SANDBOX_PATH)
    if bash:
        task_types["bash"] = version((bash, "--version"))
    for runtime in declared:
        task_types[runtime.name] = version(runtime.version) if runtime.version else None
    return task_types


def version(argv: Sequence[str]) -> str:
    """The first line ``argv`` prints (stdout, else stderr); :class:`TaskTypeFileError`
    when it fails."""
    try:
        done = subprocess.run(
            list(argv), capture_output=True, stdin=subprocess.DEVNULL,
            env={"PATH": SANDBOX_PATH, "LANG": "C.UTF-8"}, timeout=VERSION_TIMEOUT, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TaskTypeFileError(f"version command {list(argv)} failed: {exc}") from None
    text = (done.stdout.strip() or done.stderr.strip()).decode("utf-8", "replace")
    if done.returncode != 0 or not text:
        raise TaskTypeFileError(
            f"version command {list(argv)} exited {done.returncode}: {text[:200]!r}"
        )
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
