"""The gateway's Prometheus metrics: what it counts as it answers spawn requests, and
what it reads at scrape time from the ledger, Redis, the broker and the workers.

Counters and the histogram are kept per process. Under gunicorn's several worker
processes they are shared through ``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's
multiprocess mode: each process writes its own memory-mapped file, a scrape adds them
up), which ``vx11 up`` sets to a fresh directory for each start. Every gauge is read at
scrape time from state all processes share, so none lives in those files and a dead
gunicorn worker leaves nothing to clean up but its counts, which must stay in the
totals (prometheus-client's ``mark_process_dead`` removes only live-gauge files).

Spawns finished, by state, are counted from the ledger, not exported by the workers:
the ledger is where every spawn ends (workers, the sweeper, the gateway's own
cancellations and broker failures), on whatever host, and it survives restarts. The
count is one ``GROUP BY status`` (on SQLite, a scan of the ``(status, created_at,
spawn_uuid)`` index alone), so its cost grows with the records kept
(``VX11_RETENTION_DAYS``): docs/operations.md has the figures. A scrape's reads are
reused for ``VX11_METRICS_CACHE_SECONDS`` in each process, so scrapers, however many,
cost the database at most one count per process per period.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from vx11.core.callbacks import CALLBACK_QUEUE
from vx11.core.dispatch import WORKER_INFO_COMMAND
from vx11.gateway.services import Services

log = logging.getLogger(__name__)

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""The variable that puts prometheus-client in multiprocess mode: a directory, empty
when the gateway starts, that only the gateway's processes use."""
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""Prometheus' text format, which every Prometheus version reads."""
DEPENDENCIES = ("redis", "database", "broker")
"""What ``vx11_up`` reports on, each read at scrape time."""


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_DIR) or None


# The metric objects are made once per process, at import, as prometheus-client
# expects; in multiprocess mode their values go to this process's files, otherwise to
# LOCAL, which a scrape reads directly. A missing directory would make the first
# write fail, so it is created (empty) if the variable names one that does not exist.
if _directory := multiprocess_dir():
    os.makedirs(_directory, exist_ok=True)
disable_created_metrics()  # multiprocess mode has no *_created series: neither does this
LOCAL = CollectorRegistry(auto_describe=True)

SPAWNS_ACCEPTED = Counter(
    "vx11_spawns_accepted",
    "Spawn requests accepted: recorded QUEUED and published (idempotent replays not counted).",
    registry=LOCAL,
)
SPAWNS_REFUSED = Counter(
    "vx11_spawns_refused",
    "Spawn requests refused, by the error code of the answer (off_by_policy, rate_limited, "
    "quota_exceeded, validation_error, invalid_token, spawner_unavailable, ...).",
    ["reason"],
    registry=LOCAL,
)
SPAWN_REQUEST_SECONDS = Histogram(
    "vx11_spawn_request_seconds",
    "Time the gateway took to answer POST /vx11/spawn, by outcome: accepted, replayed "
    "(idempotency key), refused (policy or a 4xx), failed (a 5xx).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=LOCAL,
)


def observe_spawn_answer(
    status: int, error: str | None, replayed: bool, seconds: float | None
) -> None:
    """Count one answer to ``POST /vx11/spawn``: its ``status``, its ``error`` code (None
    for an accepted spawn), whether it replayed an earlier one, and how long it took
    (None if it was refused before it could be timed: too large a body)."""
    if status >= 500:
        outcome = "failed"
    elif error is not None or status >= 400:
        outcome = "refused"
    elif replayed:
        outcome = "replayed"
    else:
        outcome = "accepted"
    if outcome == "accepted":
        SPAWNS_ACCEPTED.inc()
    elif outcome != "replayed":
        SPAWNS_REFUSED.labels(reason=error or f"http_{status}").inc()
    if seconds is not None:
        SPAWN_REQUEST_SECONDS.labels(outcome=outcome).observe(seconds)


# --- scrape time -------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """What one scrape read from the shared state; None where a source did not answer."""

    spawns: dict[str, int] | None = None
    """Ledger records by state."""
    errors: dict[str, int] | None = None
    """Ledger records in state ERROR, by reason."""
    queues: dict[str, int] | None = None
    """Messages waiting in each queue of the broker."""
    windows: dict[str, bool] | None = None
    """Each window target: open or not."""
    workers: dict[str, dict[str, Any]] | None = None
    """Each live worker's ``vx11_worker_info`` reply."""
    up: dict[str, bool] = field(default_factory=dict)


def read_snapshot(svc: Services, timeout: float) -> Snapshot:
    """Every scrape-time figure, read in parallel; a source that fails or has not
    answered within ``timeout`` seconds is left out (a scrape never hangs)."""
    sources: dict[str, Callable[[], Any]] = {
        "spawns": lambda: count_by_status(svc),
        "errors": lambda: count_errors(svc),
        "queues": lambda: queue_depths(svc),
        # the broadcast waits its whole timeout for replies: half the scrape's at most
        "workers": lambda: worker_infos(svc, min(timeout / 2, svc.settings.probe_timeout)),
        "windows": lambda: open_windows(svc),
    }
    pool = ThreadPoolExecutor(max_workers=len(sources), thread_name_prefix="vx11-metrics")
    futures = {name: pool.submit(read) for name, read in sources.items()}
    wait(futures.values(), timeout=timeout)
    pool.shutdown(wait=False, cancel_futures=True)  # a late source finishes on its own
    values: dict[str, Any] = {}
    for name, future in futures.items():
        if not future.done():
            log.warning("metrics: %s did not answer within %ss", name, timeout)
        elif future.exception() is not None:
            log.warning("metrics: cannot read %s: %s", name, future.exception())
        else:
            values[name] = future.result()
    up = {
        "database": "spawns" in values and "errors" in values,
        "broker": "queues" in values,
        "redis": "windows" in values,
    }
    return Snapshot(**values, up=up)


def count_by_status(svc: Services) -> dict[str, int]:
    """``{state: records}`` for every spawn state, 0 for those with none."""
    return svc.ledger.count_by_status()


def count_errors(svc: Services) -> dict[str, int]:
    """``{reason: records}`` of the spawns VX11 itself failed (state ERROR), the reason
    cut at its first colon (``sandbox_error: ...`` → ``sandbox_error``) so that the
    label has a few values."""
    counts: dict[str, int] = {}
    for reason, count in svc.ledger.count_errors_by_reason().items():
        kind = (reason or "unknown").split(":", 1)[0].strip() or "unknown"
        counts[kind] = counts.get(kind, 0) + count
    return counts


def queue_depths(svc: Services) -> dict[str, int]:
    """The messages waiting (not yet delivered to a worker) in the spawn and callback
    queues, by a passive declare: the broker's own count, on Redis as on RabbitMQ."""
    depths = {}
    with svc.celery.connection_for_read() as conn:
        conn.ensure_connection(max_retries=0)  # down is down: no retry within a scrape
        for queue in (svc.settings.spawn_queue, CALLBACK_QUEUE):
            channel = conn.channel()
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except conn.channel_errors as exc:
                if not _is_not_found(exc):
                    raise
                depths[queue] = 0  # never declared, or (Redis) empty: nothing waits
            finally:
                _close_quietly(channel)
    return depths


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "reply_code", None) == 404 or "NOT_FOUND" in str(exc)


def _close_quietly(channel) -> None:
    try:
        channel.close()
    except Exception:  # a channel the broker closed (AMQP 404) may refuse a second close
        log.debug("metrics: closing a broker channel failed", exc_info=True)


def open_windows(svc: Services) -> dict[str, bool]:
    targets = svc.settings.window_targets
    opened = {window.target for window in svc.windows.open_windows(targets)}
    return {target: target in opened for target in targets}


def worker_infos(svc: Services, timeout: float) -> dict[str, dict[str, Any]]:
    """Each live worker's sandbox level, cgroups and version, as ``GET /vx11/status``
    reads them: a broadcast that waits ``timeout`` seconds for replies. A broker that
    cannot be reached fails it at once (a broadcast would retry its publish)."""
    with svc.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=0)
    replies = svc.celery.control.broadcast(WORKER_INFO_COMMAND, reply=True, timeout=timeout)
    return {name: info for reply in replies or [] for name, info in reply.items()}


def _gauge(name: str, documentation: str, label: str, values: Mapping[str, float]) -> Metric:
    """A gauge family with one sample per ``label`` value."""
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], value)
    return family


def snapshot_metrics(snapshot: Snapshot) -> Iterator[Metric]:
    """The gauge families of one snapshot."""
    yield _gauge(
        "vx11_up",
        "1 if the gateway could read this dependency when it last read the figures "
        "(at most VX11_METRICS_CACHE_SECONDS ago), else 0.",
        "dependency",
        {dependency: 1 if snapshot.up.get(dependency) else 0 for dependency in DEPENDENCIES},
    )
    if snapshot.spawns is not None:
        yield _gauge(
            "vx11_spawns",
            "Spawn records in the ledger, by state: QUEUED and RUNNING now, the others "
            "finished (until purged by retention).",
            "status",
            snapshot.spawns,
        )
    if snapshot.errors is not None:
        yield _gauge(
            "vx11_spawn_errors",
            "Spawn records in state ERROR (VX11 failed them), by reason: worker_lost, "
            "gateway_lost, broker_unavailable, policy_unavailable, sandbox_error, ...",
            "reason",
            dict(sorted(snapshot.errors.items())),
        )
    if snapshot.queues is not None:
        yield _gauge(
            "vx11_queue_messages",
            "Jobs waiting in a broker queue, not yet delivered to any worker.",
            "queue",
            snapshot.queues,
        )
    if snapshot.windows is not None:
        windows = {target: 1 if is_open else 0 for target, is_open in snapshot.windows.items()}
        yield _gauge(
            "vx11_window_open", "1 while the target's policy window is open.", "target", windows
        )
    if snapshot.workers is not None:
        yield GaugeMetricFamily(
            "vx11_workers", "Workers that answered the scrape's broadcast.", len(snapshot.workers)
        )
        info = GaugeMetricFamily(
            "vx11_worker_info",
            "1 for each live worker, with its sandbox level (bwrap, basic), cgroups and "
            "VX11 version.",
            labels=["worker", "sandbox", "cgroups", "version"],
        )
        for worker, details in sorted(snapshot.workers.items()):
            labels = [str(details.get(name) or "") for name in ("sandbox", "cgroups", "version")]
            info.add_metric([worker, *labels], 1)
        yield info


class Scraper:
    """Answers scrapes. The scrape-time figures are read at most once per
    ``cache_seconds`` in this process: concurrent scrapes wait for one read instead of
    each making its own, and no caller can make /metrics a load on the database."""

    def __init__(self, cache_seconds: float, timeout: float) -> None:
        self.cache_seconds = cache_seconds
        self.timeout = timeout
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._snapshot = Snapshot()

    def snapshot(self, svc: Services) -> Snapshot:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                self._snapshot = read_snapshot(svc, self.timeout)
                self._read_at = time.monotonic()
            return self._snapshot

    def exposition(self, svc: Services) -> bytes:
        """The whole scrape: the counted metrics of every gateway process, then the
        gauges read now (or cached), in Prometheus' text format."""
        registry = CollectorRegistry(auto_describe=False)
        if multiprocess_dir():
            prometheus_multiprocess.MultiProcessCollector(registry)
        else:
            registry.register(_Forward(LOCAL.collect))
        snapshot = self.snapshot(svc)
        registry.register(_Forward(lambda: snapshot_metrics(snapshot)))
        return generate_latest(registry)


class _Forward(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()
