"""The alternative a user would pick instead of VX11: a bare Celery task that runs the
code with ``subprocess.run`` — no gateway, policy, ledger or sandbox — published with
``delay`` and its results awaited.

Its worker runs as its own process (``celery -A bench.bare_celery worker``) with the
command line of VX11's worker (``vx11.cli.stack.worker_argv``: prefork pool, the same
concurrency and log level), on the benchmark's redis-server as broker and result
backend, in a database of its own. Two variants: Celery's defaults, as a user starts,
and VX11's Celery settings (late acknowledgement, prefetch 1, task events), which
shows what those settings cost on their own. Two tasks: ``shell`` (the code through
``/bin/sh -c``) and ``python`` (the code through the system's ``python3 -I -c``, the
interpreter VX11's sandbox runs).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import Celery

from bench.report import Figure
from vx11.cli.stack import worker_argv

if TYPE_CHECKING:
    from bench.stack import BenchStack

BROKER_ENV = "BENCH_BARE_CELERY_URL"
"""The Redis URL of the bare app's broker and result backend."""
SETTINGS_ENV = "BENCH_BARE_CELERY_SETTINGS"
"""``defaults`` (Celery's own) or ``vx11`` (VX11's worker settings, :data:`VX11_SETTINGS`)."""
TASK = "bench.bare.shell"
PYTHON_TASK = "bench.bare.python"
QUEUE = "bench-bare"

VX11_SETTINGS = {
    # celeryconfig.py's settings that change what a worker does per task
    "task_acks_late": True,
    "worker_prefetch_multiplier": 1,
    "worker_send_task_events": True,
}
VARIANTS = {"defaults": 1, "vx11": 2}
"""Each variant and the Redis database it uses, so the two never share a queue."""
PYTHON = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin") or "/usr/bin/python3"
"""The system's python3, as the sandbox finds it (not the benchmark's virtualenv)."""

app = Celery("bench-bare")
app.conf.update(
    broker_url=os.environ.get(BROKER_ENV),
    result_backend=os.environ.get(BROKER_ENV),
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
)
if os.environ.get(SETTINGS_ENV) == "vx11":
    app.conf.update(VX11_SETTINGS)


@app.task(name=TASK)
def shell(code: str) -> dict[str, Any]:
    """``code`` run by ``/bin/sh -c``, as VX11's shell spawns are, output captured."""
    done = subprocess.run(code, shell=True, capture_output=True, text=True, timeout=30)
    return {"exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


@app.task(name=PYTHON_TASK)
def python(code: str) -> dict[str, Any]:
    """``code`` run by ``python3 -I -c``, as VX11's python spawns are, output captured."""
    done = subprocess.run([PYTHON, "-I", "-c", code], capture_output=True, text=True, timeout=30)
    return {"exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def bare_worker_argv(concurrency: int) -> list[str]:
    """VX11's worker command line, with this app, its queue and its own node name."""
    argv = worker_argv(concurrency, QUEUE)
    argv[argv.index("workers")] = "bench.bare_celery"
    argv[argv.index("--queues") + 1] = QUEUE
    argv[argv.index("vx11@%h")] = "bare@%h"
    return argv


@dataclass(frozen=True)
class BareRun:
    tasks: int
    seconds: float
    published: float
    """Seconds until the last task was published."""
    worker_cpu: float
    """CPU seconds of the worker's process group (main, pool and the commands run) per task."""
    redis_cpu: float
    client_cpu: float
    """CPU seconds of this process (publishing, awaiting results) per task."""

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


class BareCelery:
    """One variant's worker, started under ``stack`` (so the stack stops it too), and
    the client that publishes to it."""

    def __init__(self, stack: BenchStack, variant: str = "defaults") -> None:
        self.stack, self.variant = stack, variant
        self.name = f"bare-celery-{variant}"
        base = stack.redis_url.rsplit("/", 1)[0]
        self.url = f"{base}/{VARIANTS[variant]}"
        self.client = Celery(f"bench-bare-client-{variant}")
        self.client.conf.update(broker_url=self.url, result_backend=self.url)

    def start(self, concurrency: int) -> None:
        env = {**os.environ, BROKER_ENV: self.url, SETTINGS_ENV: self.variant}
        self.stack.start_process(self.name, bare_worker_argv(concurrency), env)

    def wait_ready(self) -> None:
        self.stack.wait_ready(self.name)

    def run(self, tasks: int, concurrency: int, task: str = TASK) -> BareRun:
        """``tasks`` runs of shell ``true`` (or, ``task`` :data:`PYTHON_TASK`, python
        ``print(1)``), each published with ``send_task`` as it comes, then every result
        awaited; raises unless each one ran, exited 0 and printed what it should. A few
        runs first, not counted, warm the pool processes."""
        self._run(2 * concurrency, task)
        return self._run(tasks, task)

    def _run(self, tasks: int, task: str) -> BareRun:
        code, expected = ("print(1)", "1\n") if task == PYTHON_TASK else ("true", "")
        timeout = 120 + tasks
        cpu_before = self.stack.cpu()
        started = time.perf_counter()
        results = [self.client.send_task(task, args=(code,), queue=QUEUE) for _ in range(tasks)]
        published = time.perf_counter() - started
        deadline = time.monotonic() + timeout
        outcomes = [r.get(timeout=max(1.0, deadline - time.monotonic())) for r in results]
        elapsed = time.perf_counter() - started
        used = {name: after - cpu_before[name] for name, after in self.stack.cpu().items()}
        failed = [o for o in outcomes if o["exit_code"] != 0 or o["stdout"] != expected]
        if failed or len({r.id for r in results}) != tasks:
            raise RuntimeError(f"bare Celery: {len(failed)} of {tasks} runs failed: {failed[:3]}")
        return BareRun(
            tasks,
            elapsed,
            published,
            (used[self.name].own + used[self.name].reaped) / tasks,
            used["redis"].own / tasks,
            used["bench"].own / tasks,
        )

    def close(self) -> None:
        self.client.close()


def bare_celery_figures(
    vx11: Figure, runs: dict[str, list[BareRun]], concurrency: int
) -> tuple[list[Figure], list[str]]:
    """VX11's end-to-end throughput (``vx11``, the same spawns) over each variant's, the
    mean of its runs before and after VX11's."""
    figures, notes = [], []
    for variant, label, goal in (
        ("defaults", "bare Celery", 0.5),
        ("vx11", "bare Celery with VX11's Celery settings", None),
    ):
        measured = runs[variant]
        rate = statistics.mean(run.rate for run in measured)
        figures.append(
            Figure(
                f"VX11 vs {label}: {measured[0].tasks} x shell `true`",
                "spawns/s",
                vx11.vx11,
                rate,
                "ratio",
                goal,
            )
        )
        notes.append(
            f"bare Celery ({variant}{': ' + ', '.join(VX11_SETTINGS) if variant == 'vx11' else ''}"
            f"): {measured[0].tasks} `true` through subprocess.run, published with send_task "
            f"from this process and every result awaited, concurrency {concurrency}; runs "
            "before and after VX11's: "
            + ", ".join(
                f"{run.rate:.1f}/s (published in {run.published:.1f} s, CPU per task: worker "
                f"and its commands {_ms(run.worker_cpu)}, redis {_ms(run.redis_cpu)}, "
                f"client {_ms(run.client_cpu)})"
                for run in measured
            )
        )
    return figures, notes


def bare_python_figure(
    vx11_rate: float, runs: list[BareRun], concurrency: int
) -> tuple[list[Figure], list[str]]:
    """VX11's python ``print(1)`` spawns per second through the API over the bare
    task's (Celery's defaults) with the same code, the mean of its runs before and after
    VX11's. Goal (issue 15): faster than the unsandboxed alternative."""
    rate = statistics.mean(run.rate for run in runs)
    figure = Figure(
        f"VX11 vs bare Celery: {runs[0].tasks} x python `print(1)`",
        "spawns/s",
        vx11_rate,
        rate,
        "ratio",
        1.5,
    )
    note = (
        f"bare Celery (defaults), python: {runs[0].tasks} `{PYTHON} -I -c 'print(1)'` through "
        f"subprocess.run, concurrency {concurrency}; runs before and after VX11's: "
        + ", ".join(
            f"{run.rate:.1f}/s (CPU per task: worker and its commands {_ms(run.worker_cpu)})"
            for run in runs
        )
    )
    return [figure], [note]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"
