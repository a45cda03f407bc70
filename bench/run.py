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

from bench.bare_celery import VARIANTS, BareCelery, bare_celery_figures
from bench.baseline import BareSandbox
from bench.drain import queue_drain
from bench.history import MIN_RECORDS, history_figures
from bench.load import load_generator
from bench.measure import accept_throughput, end_to_end_latency, end_to_end_throughput
from bench.report import Figure, markdown_table, text_table
from bench.sandbox_cost import sandbox_cost
from bench.stack import BenchStack
from vx11.cli.stack import StackOptions

FIGURES = ("accept", "throughput", "celery", "latency", "drain", "sandbox", "history")
STACK_FIGURES = {"accept", "throughput", "celery", "latency", "drain"}
WORKER_FIGURES = {"throughput", "celery", "latency", "drain"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Measure a private VX11 (redis-server, SQLite ledger, gunicorn, Celery) "
        "against its baselines, in one run, and print the table.",
    )
    parser.add_argument(
        "--spawns",
        type=int,
        default=1000,
        help="spawns in the throughput and bare Celery figures, and queued in the drain "
        "figure's baseline (1000)",
    )
    parser.add_argument(
        "--queue-depth",
        type=int,
        default=10_000,
        help="spawns queued at once, then drained, in the drain figure (10000; 0 leaves the "
        "figure out)",
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
    if args.queue_depth < 0:
        parser.error("--queue-depth must be >= 0")
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
    if args.queue_depth == 0:
        wanted.discard("drain")
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
        if wanted & WORKER_FIGURES:
            progress("starting the Celery worker")
            stack.start_worker()
        concurrency = options.worker_concurrency
        if "celery" in wanted:
            progress("starting the bare Celery workers (Celery's defaults, VX11's settings)")
            bare_celery = {variant: BareCelery(stack, variant) for variant in VARIANTS}
            for worker in bare_celery.values():
                worker.start(concurrency)
            for worker in bare_celery.values():
                worker.wait_ready()
            progress(f"bare Celery: {args.spawns} shell spawns with each variant")
            bare_runs = {v: [w.run(args.spawns, concurrency)] for v, w in bare_celery.items()}
        if wanted & {"throughput", "celery"}:
            progress(f"end-to-end throughput: {args.spawns} shell spawns, bare pool then VX11")
            throughput = end_to_end_throughput(stack, bare, args.spawns, args.clients, concurrency)
            figures += throughput[0]
            notes += throughput[1]
        if "celery" in wanted:
            progress(f"bare Celery: {args.spawns} shell spawns with each variant, again")
            for variant, worker in reversed(bare_celery.items()):
                bare_runs[variant].append(worker.run(args.spawns, concurrency))
                worker.close()
                stack.stop_process(worker.name)
            measured = bare_celery_figures(throughput[0][0], bare_runs, concurrency)
            figures += measured[0]
            notes += measured[1]
        if "latency" in wanted:
            progress(f"end-to-end latency: {args.samples} python spawns, interleaved with bare")
            measured = end_to_end_latency(stack, bare, args.samples)
            figures += measured[0]
            notes += measured[1]
        if "drain" in wanted:
            measured = queue_drain(stack, args.queue_depth, args.spawns, args.clients, progress)
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
