"""The benchmark still runs: a small run of every figure prints the whole table."""

from __future__ import annotations

import math
import re
import subprocess
import sys

import pytest

from bench.isolate import MISSING, find_isolate
from tests.support import ROOT

pytestmark = pytest.mark.e2e


def cells(rows: list[str]) -> dict[str, list[str]]:
    """Each table row's cells after the figure's name, by name."""
    split = [[cell.strip() for cell in row.split("|")[1:-1]] for row in rows]
    return {row[0]: row[1:] for row in split}


def number(cell: str) -> float:
    return float(cell.split()[0])


@pytest.fixture(scope="module")
def small_run() -> str:
    """The output of one small run of every figure (the drain with 100 queued)."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--spawns", "20", "--python-spawns", "10",
         "--samples", "5", "--duration", "2",
         "--sandbox-runs", "5", "--history-records", "1000", "--load-generator", "python",
         "--queue-depth", "100", "--markdown"],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_a_small_benchmark_run_prints_every_figure(small_run):
    rows = [line for line in small_run.splitlines() if line.startswith("| ")]
    figures = [row.split("|")[1].strip() for row in rows[2:]]
    assert figures[:11] == [
        "accept: POST /vx11/spawn vs GET /health",
        "end-to-end throughput: 20 x shell `true`",
        "VX11 vs bare Celery: 20 x shell `true`",
        "VX11 vs bare Celery with VX11's Celery settings: 20 x shell `true`",
        "VX11 vs bare Celery: 10 x python `print(1)`",
        "end-to-end latency p50: python `print(1)` vs plain python3 -I",
        "end-to-end latency p90: python `print(1)` vs plain python3 -I",
        "queue drain: 100 queued vs 20 queued",
        "queue drain: CPU per spawn, 100 queued vs 20 queued",
        "memory: gateway workers RSS, peak vs start of the 100 phase",
        "memory: Celery pool RSS, peak vs start of the 100 phase",
    ]
    assert "throughput: 20 spawns" in small_run and "(20 DONE)" in small_run
    assert "python throughput: 10 python print(1) spawns" in small_run
    assert "(10 DONE)" in small_run
    assert "configuration: ./scripts/run's defaults (vx11 up)" in small_run
    sandbox = [name for name in figures if name.startswith("sandbox cost: ")]
    basic, bwrap, isolate = (
        [f"sandbox cost: {level} shell `true` vs plain",
         f"sandbox cost: {level} python print(1) vs plain"]
        for level in ("basic", "bwrap", "isolate --run")
    )  # fmt: skip
    if find_isolate() is None:
        assert MISSING in small_run.splitlines()
        isolate = []
    if "the bwrap level is unusable here" in small_run:
        assert sandbox == basic + isolate
    else:
        assert sandbox == bwrap + basic + isolate
    assert "sandbox cost: 5 runs of each" in small_run
    assert "history page 1 p50: status=DONE&task_type=shell, limit 50 (SQLite)" in figures


def test_issue_15s_rows_print_with_their_goals(small_run):
    table = cells([row for row in small_run.splitlines() if row.startswith("| ")][2:])
    level = "basic" if "the bwrap level is unusable here" in small_run else "bwrap"
    goals = {
        "VX11 vs bare Celery: 20 x shell `true`": ">= 0.50",
        "VX11 vs bare Celery: 10 x python `print(1)`": ">= 1.50",
        "end-to-end latency p50: python `print(1)` vs plain python3 -I":
            "<= 5 ms, and below 0 once the interpreter is warm",
        "accept: POST /vx11/spawn vs GET /health": ">= 0.40",
        f"sandbox cost: {level} shell `true` vs plain": "<= 3.00",
        f"sandbox cost: {level} python print(1) vs plain": "<= 1.00",
        "queue drain: 100 queued vs 20 queued": ">= 0.90",
    }  # fmt: skip
    for name, goal in goals.items():
        assert table[name][3] == goal, name
        assert table[name][4] in ("yes", "NO"), name
    for name in table:
        if name.startswith("sandbox cost: isolate --run "):
            assert table[name][3] == "-", name  # a reference, no goal of its own


def test_the_scale_figures_of_a_small_run_are_sane(small_run):
    table = cells([row for row in small_run.splitlines() if row.startswith("| ")][2:])
    for name in (
        "VX11 vs bare Celery: 20 x shell `true`",
        "VX11 vs bare Celery with VX11's Celery settings: 20 x shell `true`",
        "VX11 vs bare Celery: 10 x python `print(1)`",
        "queue drain: 100 queued vs 20 queued",
        "queue drain: CPU per spawn, 100 queued vs 20 queued",
    ):
        vx11, baseline, ratio = (number(cell) for cell in table[name][:3])
        assert vx11 > 0 and baseline > 0, name
        assert ratio == pytest.approx(vx11 / baseline, rel=0.05, abs=0.01), name
    for role in ("gateway workers", "Celery pool"):
        peak, start, ratio = (
            number(cell)
            for cell in table[f"memory: {role} RSS, peak vs start of the 100 phase"][:3]
        )
        assert 10 < start <= peak < 4096 and math.isfinite(ratio)
    phases = re.findall(
        r"queue drain \((before|deep|after)\): (\d+) spawns submitted .*?; ledger, API and "
        r"Celery's results agree: all terminal at attempt 1 \(.*?\), each received and run once",
        small_run,
    )
    assert phases == [("before", "20"), ("deep", "100"), ("after", "20")]
    variants = re.findall(
        r"bare Celery \((defaults|vx11)\b.*?\)(, python)?: .*runs before and after", small_run
    )
    assert variants == [("defaults", ""), ("vx11", ""), ("defaults", ", python")]
