"""The benchmark's command line: start a private VX11, measure, print the table, and
stop everything it started (also on Ctrl-C, SIGTERM or a failure)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from bench.baseline import BareSandbox
from bench.history import MIN_RECORDS, history_figures
from bench.load import load_generator
from bench.measure import accept_throughput, end_to_end_latency, end_to_end_throughput
from bench.report import Figure, markdown_table, text_table
from bench.sandbox_cost import sandbox_cost
from bench.stack import BenchStack
from vx11.stack import StackOptions

FIGURES = ("accept", "throughput", "latency", "sandbox", "history")
STACK_FIGURES = {"accept", "throughput", "latency"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure a private VX11 (redis-server, SQLite ledger, gunicorn, Celery) "
        "against its baselines, in one run, and print the table.",
    )
    parser.add_argument(
        "--spawns", type=int, default=1000, help="spawns in the throughput figure (1000)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=6.0,
        help="seconds of load per endpoint in the accept figure, in two segments (6)",
    )
    parser.add_argument(
        "--connections", type=int, default=16, help="keep-alive connections for accept (16)"
    )
    parser.add_argument("--samples", type=int, default=50, help="latency samples (50)")
    parser.add_argument(
        "--clients", type=int, default=4, help="submitting threads for throughput (4)"
    )
    parser.add_argument(
        "--sandbox-runs",
        type=int,
        default=200,
        help="runs of each variant in the sandbox cost figure (200)",
    )
    parser.add_argument(
        "--load-generator",
        choices=("auto", "wrk", "python"),
        default="auto",
        help="accept's load generator: wrk if installed (auto), or the Python client",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=FIGURES,
        help="measure only this figure (repeatable); all of them by default",
    )
    parser.add_argument(
        "--history-records",
        type=int,
        default=100_000,
        help=f"ledger records in the history figure (100000; at least {MIN_RECORDS})",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        default=os.environ.get("VX11_TEST_DATABASE_URL"),
        help="also measure the history figure on this PostgreSQL, in a schema of its own "
        "(default: $VX11_TEST_DATABASE_URL; SQLite only when unset)",
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument(
        "--keep", action="store_true", help="keep the temporary directory (logs, ledger)"
    )
    args = parser.parse_args(argv)
    if args.spawns < 1 or args.samples < 2 or args.connections < 1 or args.clients < 1:
        parser.error("--spawns, --connections and --clients must be >= 1, --samples >= 2")
    if args.sandbox_runs < 2:
        parser.error("--sandbox-runs must be >= 2")
    if args.history_records < MIN_RECORDS:
        parser.error(f"--history-records must be >= {MIN_RECORDS}")
    return args


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.only or FIGURES)
    options = StackOptions()
    root = Path(tempfile.mkdtemp(prefix="vx11-bench-"))
    root.chmod(0o711)  # the sandbox's unprivileged user must reach its working directories
    stack = BenchStack(root, options)
    figures: list[Figure] = []
    notes: list[str] = []
    load_before = os.getloadavg()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        if "sandbox" in wanted:  # first, while no service of the stack runs
            progress(f"sandbox cost: {args.sandbox_runs} runs of each variant, round-robin")
            sandbox = sandbox_cost(stack.settings, args.sandbox_runs)
        if wanted & STACK_FIGURES:
            progress(f"starting redis-server and gunicorn in {root}")
            stack.start_gateway()
            stack.open_window()
            bare = BareSandbox(stack.settings, ttl_seconds=30)
        if "accept" in wanted:
            generator = load_generator(args.load_generator, root)
            progress(f"accept throughput with {generator.name} (no worker consuming)")
            measured = accept_throughput(stack, generator, args.connections, args.duration)
            figures += measured[0]
            notes += measured[1]
        if wanted & {"throughput", "latency"}:
            progress("starting the Celery worker")
            stack.start_worker()
        if "throughput" in wanted:
            progress(f"end-to-end throughput: {args.spawns} shell spawns, bare pool then VX11")
            measured = end_to_end_throughput(
                stack, bare, args.spawns, args.clients, options.worker_concurrency
            )
            figures += measured[0]
            notes += measured[1]
        if "latency" in wanted:
            progress(f"end-to-end latency: {args.samples} python spawns, interleaved with bare")
            measured = end_to_end_latency(stack, bare, args.samples)
            figures += measured[0]
            notes += measured[1]
        if "sandbox" in wanted:  # measured first, shown last
            figures += sandbox[0]
            notes += sandbox[1]
        if "history" in wanted:
            where = "SQLite" + (" and PostgreSQL" if args.postgres else "")
            progress(f"history: a filtered page at {args.history_records} records, {where}")
            measured = history_figures(root, args.history_records, args.postgres)
            figures += measured[0]
            notes += measured[1]
    except KeyboardInterrupt:
        progress("interrupted; stopping what was started")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        stack.stop()
        if args.keep:
            progress(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    load_after = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load_before[0]:.2f} before and "
        f"{load_after[0]:.2f} after; date {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"gunicorn gthread {options.gunicorn_workers} workers x {options.gunicorn_threads} "
        f"threads; Celery concurrency {options.worker_concurrency}"
    )
    for note in notes:
        print(note)
    print()
    print(markdown_table(figures) if args.markdown else text_table(figures))
    return 0
