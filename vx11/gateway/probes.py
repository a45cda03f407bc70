"""Dependency probes for ``GET /vx11/status``: each bounded by a short timeout, run in
parallel, and reporting ``ok: false`` with the error instead of raising or hanging."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from vx11.core.dispatch import WORKER_INFO_COMMAND
from vx11.gateway.services import Services


def _timed(probe: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        detail = probe() or {}
    except Exception as exc:  # a probe reports failures, it never raises them
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    latency = round((time.perf_counter() - started) * 1000, 2)
    return {"ok": detail.pop("ok", True), "latency_ms": latency, **detail}


def probe_all(svc: Services) -> dict[str, dict[str, Any]]:
    """``{"redis": {...}, "broker": ..., "result_backend": ..., "database": ...,
    "spawner": ...}``, every entry with ``ok``."""
    timeout = svc.settings.probe_timeout
    probes: dict[str, Callable[[], dict[str, Any] | None]] = {
        "redis": lambda: {"pong": svc.redis.ping()},
        "broker": lambda: _broker(svc, timeout),
        "result_backend": lambda: _result_backend(svc),
        "database": lambda: _database(svc),
        "spawner": lambda: _workers(svc, timeout),
    }
    with ThreadPoolExecutor(max_workers=len(probes)) as pool:
        futures = {name: pool.submit(_timed, probe) for name, probe in probes.items()}
        results = {}
        deadline = time.monotonic() + timeout * 4
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                results[name] = {"ok": False, "error": "probe timed out"}
        pool.shutdown(wait=False, cancel_futures=True)
    return results


def _broker(svc: Services, timeout: float) -> dict[str, Any]:
    with svc.celery.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
        return {"transport": conn.transport_cls}


def _result_backend(svc: Services) -> dict[str, Any]:
    backend = svc.results.backend
    backend.get_task_meta("vx11-status-probe")
    return {"backend": type(backend).__name__}


def _database(svc: Services) -> dict[str, Any]:
    svc.ledger.ping()
    return {"dialect": svc.ledger.engine.dialect.name}


def _workers(svc: Services, timeout: float) -> dict[str, Any]:
    replies = svc.celery.control.broadcast(WORKER_INFO_COMMAND, reply=True, timeout=timeout)
    workers = {name: info for reply in replies or [] for name, info in reply.items()}
    return {"ok": bool(workers), "workers": len(workers), "details": workers}
