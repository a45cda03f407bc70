"""The benchmark's command line: start a private VX11, measure, print the table, and
stop everything it started (also on Ctrl-C, SIGTERM or a failure)."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from bench.bare_celery import (
    PYTHON_TASK,
    VARIANTS,
    BareCelery,
    bare_celery_figures,
    bare_python_figure,
)
from bench.baseline import BareSandbox
from bench.drain import queue_drain
from bench.history import MIN_RECORDS, history_figures
from bench.isolate import UPSTREAM, build_isolate, find_isolate
from bench.load import load_generator
from bench.measure import (
    accept_throughput,
    end_to_end_latency,
    end_to_end_python,
    end_to_end_throughput,
    refusals_note,
)
from bench.report import Figure, markdown_table, text_table
from bench.sandbox_cost import sandbox_cost
from bench.stack import BenchStack
from vx11.cli.stack import StackOptions
from vx11.core.config import Settings
from workers.sandbox import resolve_python

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
    parser.add_argument(
        "--python-spawns",
        type=int,
        default=500,
        help="python print(1) spawns through the API and through the bare Celery task in "
        "the python figure, part of celery (500; 0 leaves the figure out)",
    )
    parser.add_argument("--samples", type=int, default=40, help="latency samples (40)")
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
        "--build-isolate",
        nargs="?",
        const=UPSTREAM,
        metavar="SOURCE",
        help="before the sandbox figure, build ioi/isolate from SOURCE (a checkout, or a git "
        f"URL; {UPSTREAM} when omitted) into the benchmark's cache, and measure its --run "
        "beside the sandbox (an isolate on PATH is used without this)",
    )
    parser.add_argument(
        "--limits",
        choices=("defaults", "off"),
        default="defaults",
        help="the per-token rate limit and quota: ./scripts/run's defaults (clients wait out "
        "a 429 as its Retry-After asks), or off (the rows through the API then say so "
        "when the defaults set one)",
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
    if args.queue_depth < 0 or args.python_spawns < 0:
        parser.error("--queue-depth and --python-spawns must be >= 0")
    if args.sandbox_runs < 2:
        parser.error("--sandbox-runs must be >= 2")
    if args.history_records < MIN_RECORDS:
        parser.error(f"--history-records must be >= {MIN_RECORDS}")
    return args


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def limits_switched_off(defaults: Settings) -> list[str]:
    """The per-token limits that ``./scripts/run``'s defaults set (and --limits off
    switches off)."""
    return [
        what
        for what, value in (
            ("rate limit", defaults.rate_limit_per_second),
            ("quota", defaults.max_active_spawns),
        )
        if value
    ]


def configuration_note(settings: Settings, limits: str, switched: list[str]) -> str:
    def limit(name: str, value: float) -> str:
        return f"{name}={value:g} ({'no limit' if not value else 'a limit'})"

    if limits == "off" and switched:
        measured = f"./scripts/run's defaults, but the {' and '.join(switched)} switched off"
    else:
        measured = "./scripts/run's defaults (vx11 up)"
    refused = (
        "; clients wait out a 429 as its Retry-After asks, wrk counts it as an error"
        if limits == "defaults" and switched
        else ""
    )
    return (
        f"configuration: {measured}: "
        f"{limit('VX11_RATE_LIMIT_PER_SECOND', settings.rate_limit_per_second)}, "
        f"{limit('VX11_MAX_ACTIVE_SPAWNS', settings.max_active_spawns)}, "
        f"VX11_SANDBOX={settings.sandbox}{refused}; the gateway with its metrics "
        "directory as vx11 up starts it; Flower, which vx11 up also starts, is not"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = set(args.only or FIGURES)
    if args.queue_depth == 0:
        wanted.discard("drain")
    options = StackOptions()
    root = Path(tempfile.mkdtemp(prefix="vx11-bench-"))
    root.chmod(0o711)  # the sandbox's unprivileged user must reach its working directories
    stack = BenchStack(root, options)
    switched = limits_switched_off(Settings.from_env(environ={}))
    if args.limits == "off":
        stack.config.update(rate_limit_per_second=0.0, max_active_spawns=0)
    # A row measured through POST /vx11/spawn with a default limit switched off says so.
    suffix = f" ({' and '.join(switched)} off)" if args.limits == "off" and switched else ""
    figures: list[Figure] = []
    notes: list[str] = [configuration_note(stack.settings, args.limits, switched)]
    load_before = os.getloadavg()
    previous = signal.signal(signal.SIGTERM, _interrupt)

    def through_api(measured: tuple[list[Figure], list[str]]) -> None:
        figures.extend(replace(f, name=f.name + suffix) for f in measured[0])
        notes.extend(measured[1])

    try:
        if "sandbox" in wanted:  # first, while no service of the stack runs
            isolate = find_isolate()
            if args.build_isolate:
                try:
                    isolate = build_isolate(args.build_isolate, progress)
                except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                    progress(str(exc))
                    notes.append(f"isolate: --build-isolate failed: {exc}")
            progress(f"sandbox cost: {args.sandbox_runs} runs of each variant, round-robin")
            sandbox = sandbox_cost(stack.settings, args.sandbox_runs, isolate)
        if wanted & STACK_FIGURES:
            progress(f"starting redis-server and gunicorn in {root}")
            stack.start_gateway()
            stack.open_window()
            bare = BareSandbox(stack.settings, ttl_seconds=30)
        if "accept" in wanted:
            generator = load_generator(args.load_generator, root)
            progress(f"accept throughput with {generator.name} (no worker consuming)")
            through_api(accept_throughput(stack, generator, args.connections, args.duration))
        if wanted & WORKER_FIGURES:
            progress("starting the Celery worker")
            stack.start_worker()
        concurrency = options.worker_concurrency
        python_spawns = args.python_spawns if "celery" in wanted else 0
        if "celery" in wanted:
            progress("starting the bare Celery workers (Celery's defaults, VX11's settings)")
            bare_celery = {variant: BareCelery(stack, variant) for variant in VARIANTS}
            for worker in bare_celery.values():
                worker.start(concurrency)
            for worker in bare_celery.values():
                worker.wait_ready()
            progress(f"bare Celery: {args.spawns} shell spawns with each variant")
            bare_runs = {v: [w.run(args.spawns, concurrency)] for v, w in bare_celery.items()}
            if python_spawns:
                progress(f"bare Celery: {python_spawns} python spawns (Celery's defaults)")
                bare_python = [bare_celery["defaults"].run(python_spawns, concurrency, PYTHON_TASK)]
        if wanted & {"throughput", "celery"}:
            progress(f"end-to-end throughput: {args.spawns} shell spawns, bare pool then VX11")
            throughput = end_to_end_throughput(stack, bare, args.spawns, args.clients, concurrency)
            through_api(throughput)
        if python_spawns:
            progress(f"end-to-end throughput: {python_spawns} python spawns through the API")
            python_rate, python_notes = end_to_end_python(
                stack, python_spawns, args.clients, concurrency
            )
            notes.extend(python_notes)
            progress(f"bare Celery: {python_spawns} python spawns, again")
            bare_python.append(bare_celery["defaults"].run(python_spawns, concurrency, PYTHON_TASK))
        if "celery" in wanted:
            progress(f"bare Celery: {args.spawns} shell spawns with each variant, again")
            for variant, worker in reversed(bare_celery.items()):
                bare_runs[variant].append(worker.run(args.spawns, concurrency))
                worker.close()
                stack.stop_process(worker.name)
            through_api(bare_celery_figures(throughput[0][0], bare_runs, concurrency))
            if python_spawns:
                through_api(bare_python_figure(python_rate, bare_python, concurrency))
        if "latency" in wanted:
            progress(f"end-to-end latency: {args.samples} python spawns, each then a plain run")
            python = resolve_python(stack.settings.sandbox_python)
            through_api(end_to_end_latency(stack, python, args.samples))
        if "drain" in wanted:
            through_api(queue_drain(stack, args.queue_depth, args.spawns, args.clients, progress))
        if "sandbox" in wanted:  # measured first, shown last
            figures += sandbox[0]
            notes += sandbox[1]
        if "history" in wanted:
            where = "SQLite" + (" and PostgreSQL" if args.postgres else "")
            progress(f"history: a filtered page at {args.history_records} records, {where}")
            measured = history_figures(root, args.history_records, args.postgres)
            figures += measured[0]
            notes += measured[1]
        if refused := refusals_note():
            notes.append(refused)
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
