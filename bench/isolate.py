"""ioi/isolate, the sandbox of programming contests, as the sandbox cost figure's
second reference: its ``--run`` on a box kept between runs (``--init`` once, then
``--run`` for each, ``--cleanup`` at the end), next to VX11's sandbox and the plain run.

The benchmark uses an ``isolate`` found on PATH, or one that ``--build-isolate`` built
from source into the benchmark's cache. It runs without ``--cg`` (control groups): on
cgroup v1, as here, isolate 2.x keeps them for cgroup v2, so its runs are limited by
rlimits alone and may run one process each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UPSTREAM = "https://github.com/ioi/isolate.git"
"""Where ``--build-isolate`` without a source clones it from."""
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vx11-bench" / "isolate"
"""Where ``--build-isolate`` builds it: ``isolate`` and its configuration ``isolate.cf``."""
BUILD_PACKAGES = ("gcc", "make", "git", "libcap-dev", "libseccomp-dev")
"""Debian packages the build needs (``scripts/bench --build-isolate`` installs them)."""

CONFIG = """\
# isolate's configuration for VX11's benchmark (bench/isolate.py)
box_root = /var/local/lib/isolate
lock_root = /run/isolate/locks
cg_root = auto:/run/isolate/cgroup
first_uid = 60000
first_gid = 60000
num_boxes = 1000
"""
"""Boxes under a root-owned directory, uids 60000 and up (no ``--cg``: cg_root unused)."""

MISSING = "isolate: not on PATH, skipped; --build-isolate builds it"


def built_binary() -> Path:
    return CACHE / "isolate"


def find_isolate() -> str | None:
    """An ``isolate`` on PATH, else the one ``--build-isolate`` built, else None."""
    found = shutil.which("isolate")
    if found:
        return found
    built = built_binary()
    return str(built) if os.access(built, os.X_OK) else None


def build_isolate(source: str, progress: Callable[[str], None]) -> str:
    """Build isolate from ``source`` (a local checkout, or a git URL to clone) into
    :data:`CACHE`, with its configuration compiled in; the binary's path. Raises
    :class:`RuntimeError` saying what failed."""
    CACHE.mkdir(parents=True, exist_ok=True)
    tree = CACHE / "src"
    shutil.rmtree(tree, ignore_errors=True)
    progress(f"isolate: fetching its source from {source}")
    fetched = subprocess.run(
        ["git", "clone", "--quiet", "--depth", "1", source, str(tree)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    if fetched.returncode != 0:
        if not Path(source).is_dir():
            raise RuntimeError(
                f"isolate: could not clone {source}: {fetched.stderr.strip()[-300:]}; "
                "--build-isolate DIR builds it from a checkout in DIR"
            )
        shutil.copytree(source, tree, symlinks=True)  # a checkout without its .git
    config = CACHE / "isolate.cf"
    config.write_text(CONFIG)
    progress(f"isolate: building it in {tree}")
    built = subprocess.run(
        ["make", "-C", str(tree), "isolate", f"CONFIG={config}"],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if built.returncode != 0:
        raise RuntimeError(
            f"isolate: the build failed (it needs {', '.join(BUILD_PACKAGES)}): "
            f"{(built.stderr or built.stdout).strip()[-600:]}"
        )
    binary = built_binary()
    shutil.copy2(tree / "isolate", binary)
    progress(f"isolate: built {binary} ({version(str(binary))})")
    return str(binary)


def version(binary: str) -> str:
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    lines = (done.stdout or done.stderr).splitlines()
    return lines[0].strip() if lines else "version unknown"


@dataclass
class IsolateBox:
    """One box of ``binary``: :meth:`init` once, :meth:`argv` for each run,
    :meth:`cleanup` at the end. ``options`` are the run's limits."""

    binary: str
    box_id: int
    options: tuple[str, ...] = ()

    def init(self) -> str:
        """Make the box (cleaning up what an earlier run left in it); its directory."""
        self.cleanup()
        done = self._call("--init")
        return done.stdout.strip()

    def argv(self, command: list[str]) -> list[str]:
        return [self.binary, f"--box-id={self.box_id}", "--silent", *self.options,
                "--run", "--", *command]  # fmt: skip

    def cleanup(self) -> None:
        subprocess.run(
            [self.binary, f"--box-id={self.box_id}", "--cleanup"],
            capture_output=True, check=False,
        )  # fmt: skip

    def _call(self, command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [self.binary, f"--box-id={self.box_id}", command],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"isolate {command} failed: {done.stderr.strip()[-300:]}")
        return done
