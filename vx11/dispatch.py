"""The gateway's Celery client: it publishes spawn jobs by task name, never importing
worker code. Celery settings come from ``celeryconfig``, URLs from :class:`Settings`."""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from kombu.exceptions import OperationalError

from vx11.callbacks import CALLBACK_TASK
from vx11.config import Settings
from vx11.errors import ServiceUnavailable

log = logging.getLogger(__name__)

SPAWN_TASK = "vx11.spawn"
"""The spawner task's name, as Flower and ``celery inspect`` show it."""

WORKER_INFO_COMMAND = "vx11_worker_info"
"""Remote-control command each worker answers with its sandbox level."""

TIME_LIMIT_MARGIN = 30
"""Seconds Celery's hard time limit allows past a spawn's own wall-clock limit."""


def make_celery(settings: Settings, *, results: bool = False) -> Celery:
    """A Celery client for the gateway.

    The publishing client has no result backend: with one, Celery's Redis backend
    subscribes to every published task's result channel (one more round trip per
    spawn, and a subscription per spawn). The ledger, not Celery, is where the gateway
    reads outcomes; ``results=True`` makes a client that can read Celery's results.
    """
    celery = Celery("vx11")
    celery.config_from_object("celeryconfig")
    celery.conf.update(
        broker_url=settings.effective_broker_url,
        result_backend=settings.effective_result_backend if results else "disabled",
    )
    return celery


def publish_spawn(
    celery: Celery, record: dict[str, Any], settings: Settings, attempt: int = 1
) -> None:
    """Queue ``record`` for a worker, as its ``attempt``-th start (more than 1: a retry
    after a lost worker). The Celery task id is the spawn's uuid."""
    ttl = record["ttl_seconds"]
    try:
        celery.send_task(
            SPAWN_TASK,
            kwargs={
                "spawn_uuid": record["spawn_uuid"],
                "task_type": record["task_type"],
                "code": record["code"],
                "stdin": record["stdin"],
                "ttl_seconds": ttl,
                "window_id": record["window_id"],
                "correlation_id": record["correlation_id"],
                "limits": record["limits"],
                "args": record["args"],
                "attempt": attempt,
            },
            task_id=record["spawn_uuid"],
            queue=settings.spawn_queue,
            time_limit=ttl + TIME_LIMIT_MARGIN,
            soft_time_limit=ttl + TIME_LIMIT_MARGIN // 2,
        )
    except OperationalError as exc:
        raise ServiceUnavailable("spawner_unavailable", f"cannot reach the broker: {exc}") from exc


def publish_callback(celery: Celery, spawn_uuid: str) -> None:
    """Queue the delivery of a finished spawn's record to its callback_url."""
    try:
        celery.send_task(CALLBACK_TASK, args=(spawn_uuid,))  # routed by celeryconfig
    except OperationalError as exc:  # the spawn's own outcome is recorded already
        log.error("spawn %s: could not queue its callback: %s", spawn_uuid, exc)
