"""The jobs VX11 publishes, by task name: a spawn to run, a callback to deliver. The
gateway and the workers' sweeper publish through a Celery client passed in, never
importing the worker code that runs them."""

from __future__ import annotations

import base64
import logging
import threading
from typing import TYPE_CHECKING, Any

from kombu.exceptions import OperationalError

from vx11.core.callbacks import CALLBACK_TASK
from vx11.core.config import Settings
from vx11.core.errors import ServiceUnavailable

if TYPE_CHECKING:
    from celery import Celery
    from kombu import Producer

log = logging.getLogger(__name__)

SPAWN_TASK = "vx11.spawn"
"""The spawner task's name, as Flower and ``celery inspect`` show it."""

WORKER_INFO_COMMAND = "vx11_worker_info"
"""Remote-control command each worker answers with its sandbox level."""

TIME_LIMIT_MARGIN = 30
"""Seconds Celery's hard time limit allows past a spawn's own wall-clock limit."""


class Producers:
    """One producer per thread of a publishing process, each kept with its broker
    connection (opened by the thread's first publish) for the thread's life. A publish
    then takes nothing from Celery's producer pool, whose every check-out takes a
    connection from the connection pool and revives the producer on it, and every
    check-in hands both back."""

    def __init__(self, celery: Celery) -> None:
        self.celery = celery
        self._local = threading.local()

    def get(self) -> Producer:
        """This thread's producer."""
        producer: Producer | None = getattr(self._local, "producer", None)
        if producer is None:
            connection = self.celery.connection_for_write()
            producer = self._local.producer = self.celery.amqp.Producer(
                connection, auto_declare=False
            )
        return producer


def publish_spawn(
    celery: Celery,
    record: dict[str, Any],
    settings: Settings,
    attempt: int = 1,
    producers: Producers | None = None,
) -> None:
    """Queue ``record`` for a worker, as its ``attempt``-th start (more than 1: a retry
    after a lost worker), with this thread's producer of ``producers`` (else one of
    Celery's pool). The Celery task id is the spawn's uuid."""
    ttl = record["ttl_seconds"]
    try:
        celery.send_task(
            SPAWN_TASK,
            kwargs={
                "spawn_uuid": record["spawn_uuid"],
                "task_type": record["task_type"],
                "code": record["code"],
                "stdin": record["stdin"],
                **_exact_stdin(record),
                "merge_stderr": bool(record.get("merge_stderr")),
                **({"files": record["files"]} if record.get("files") else {}),
                **_artifacts(record),
                "ttl_seconds": ttl,
                "window_id": record["window_id"],
                "correlation_id": record["correlation_id"],
                "limits": record["limits"],
                "args": record["args"],
                "attempt": attempt,
            },
            task_id=record["spawn_uuid"],
            producer=producers.get() if producers else None,
            queue=settings.spawn_queue,
            time_limit=ttl + TIME_LIMIT_MARGIN,
            soft_time_limit=ttl + TIME_LIMIT_MARGIN // 2,
        )
    except OperationalError as exc:
        raise ServiceUnavailable("spawner_unavailable", f"cannot reach the broker: {exc}") from exc


def _exact_stdin(record: dict[str, Any]) -> dict[str, str]:
    """The job's ``stdin_base64``, for input that is not text (a JSON message holds no
    bytes)."""
    raw = record.get("stdin_raw")
    return {} if raw is None else {"stdin_base64": base64.b64encode(raw).decode("ascii")}


def _artifacts(record: dict[str, Any]) -> dict[str, Any]:
    if not record.get("artifact_patterns"):
        return {}
    return {
        "artifacts": record["artifact_patterns"],
        "max_artifact_bytes": record["max_artifact_bytes"],
    }


def publish_callback(celery: Celery, spawn_uuid: str) -> None:
    """Queue the delivery of a finished spawn's record to its callback_url."""
    try:
        celery.send_task(CALLBACK_TASK, args=(spawn_uuid,))  # routed by celeryconfig
    except OperationalError as exc:  # the spawn's own outcome is recorded already
        log.error("spawn %s: could not queue its callback: %s", spawn_uuid, exc)
