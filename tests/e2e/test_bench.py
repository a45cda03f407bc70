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
         "--load-generator", "python", "--markdown"],
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
