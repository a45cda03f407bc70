"""Fixtures shared by the sandbox's integration tests."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from workers.sandbox import SandboxConfig, slot
from workers.sandbox.levels import bwrap_problem


@pytest.fixture(scope="module")
def bwrap_config() -> Iterator[SandboxConfig]:
    """A bwrap-level sandbox with a root of the module's own (skipped, saying why, where
    bwrap cannot run); the module's slots are closed at its end."""
    root = Path(tempfile.mkdtemp(prefix="vx11-bwrap-", dir="/tmp"))
    root.chmod(0o711)  # the sandbox's user passes through it
    config = SandboxConfig(level="bwrap", root=str(root), bwrap=shutil.which("bwrap") or "bwrap")
    try:
        if (problem := bwrap_problem(config)) is not None:
            pytest.skip(f"the bwrap level does not work here: {problem}")
        yield config
    finally:
        slot.SLOTS.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=["bwrap", "basic"])
def level_config(request) -> Iterator[SandboxConfig]:
    """Each sandbox level in turn: :func:`bwrap_config`, then the basic level with a
    root of the module's own."""
    if request.param == "bwrap":
        yield request.getfixturevalue("bwrap_config")
        return
    root = Path(tempfile.mkdtemp(prefix="vx11-basic-", dir="/tmp"))
    root.chmod(0o711)  # the sandbox's user passes through it
    try:
        yield SandboxConfig(level="basic", root=str(root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
