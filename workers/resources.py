"""What each worker process holds once, made after the fork: its settings, its ledger
(whose connections wait for a restarting database), its Redis, and the stores on it.
The spawner, the sweeper and the callback task fetch them here."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

from celery.exceptions import Reject
from celery.signals import worker_process_init
from redis import Redis

from vx11.core.config import Settings
from vx11.core.connections import make_redis
from vx11.core.events import SpawnEvents
from vx11.core.ledger import DATABASE_UNAVAILABLE, Ledger, make_engine
from vx11.core.policy import WindowStore


@functools.cache
def settings() -> Settings:
    return Settings.from_env()


DATABASE_PATIENCE = 10.0
"""Seconds a worker's ledger waits for a database that does not answer (one restarting)
before it gives up: a spawn that ran is recorded once the database is back, not lost."""


@functools.cache
def ledger() -> Ledger:
    """One ledger per worker process, made after the fork, whose connections wait for
    the database (:data:`DATABASE_PATIENCE`)."""
    url = settings().effective_database_url
    with requeued_while_database_down():
        schema = make_engine(url)  # without patience: create_schema retries by itself
        try:
            Ledger(schema).create_schema()
        finally:
            schema.dispose()
    return Ledger.from_url(url, patience=DATABASE_PATIENCE)


@contextlib.contextmanager
def requeued_while_database_down() -> Iterator[None]:
    """Give the job back to the broker, to be delivered again, when the ledger cannot be
    reached before its spawn has started: acknowledged, it would be lost, and its record
    left QUEUED for good."""
    try:
        yield
    except DATABASE_UNAVAILABLE as exc:
        raise Reject(f"the ledger is unavailable: {exc}", requeue=True) from exc


@functools.cache
def redis_client() -> Redis:
    """The Redis of windows, events and cancel requests, one per worker process."""
    return make_redis(settings())


@functools.cache
def windows() -> WindowStore:
    return WindowStore(redis_client())


@functools.cache
def events() -> SpawnEvents:
    return SpawnEvents(redis_client())


@worker_process_init.connect
def _fresh_connections_after_fork(**_: Any) -> None:
    for made in (ledger, redis_client, windows, events):
        made.cache_clear()
