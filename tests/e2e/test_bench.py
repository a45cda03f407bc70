"""The benchmark still runs: a small run of every figure prints the whole table."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.e2e


def test_a_small_benchmark_run_prints_every_figure():
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--spawns", "20", "--samples", "5", "--duration", "2",
         "--sandbox-runs", "5", "--history-records", "1000", "--load-generator", "python",
         "--markdown"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    figures = [row.split("|")[1].strip() for row in rows[2:]]
    assert figures[:3] == [
        "accept: POST /vx11/spawn vs GET /health",
        "end-to-end throughput: 20 x shell `true`",
        "end-to-end latency p50: python `print(1)`",
    ]
    assert "throughput: 20 spawns" in done.stdout and "(20 DONE)" in done.stdout
    sandbox = [name for name in figures if name.startswith("sandbox cost: ")]
    basic, bwrap = (
        [f"sandbox cost: {level} shell `true` vs plain",
         f"sandbox cost: {level} python print(1) vs plain"]
        for level in ("basic", "bwrap")
    )  # fmt: skip
    if "the bwrap level is unusable here" in done.stdout:
        assert sandbox == basic
    else:
        assert sandbox == bwrap + basic
    assert "sandbox cost: 5 runs of each" in done.stdout
    assert "history page 1 p50: status=DONE&task_type=shell, limit 50 (SQLite)" in figures
