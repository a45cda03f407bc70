"""The gateway's dependencies, built once per process by :func:`vx11.create_app` and
fetched by views through :func:`services` — never module globals made at import."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from vx11.audit import AuditLog, OpenWindows
from vx11.config import Settings
from vx11.connections import make_redis
from vx11.dispatch import make_celery
from vx11.events import SpawnEvents
from vx11.idempotency import IdempotencyKeys
from vx11.ledger import Ledger
from vx11.policy import WindowStore
from vx11.ratelimit import RateLimits
from vx11.tokens import TokenStore


@dataclass
class Services:
    settings: Settings
    redis: Redis
    windows: WindowStore
    events: SpawnEvents
    tokens: TokenStore
    ledger: Ledger
    idempotency: IdempotencyKeys
    audit: AuditLog
    """The audit log, in the ledger's database."""
    open_windows: OpenWindows
    """The windows whose expiry the workers' sweeper will record."""
    celery: Celery
    """Publishes spawn jobs (no result backend)."""
    results: Celery
    """Reads Celery's result backend (status probe)."""
    rate_limits: RateLimits
    """Each token's request rate on the spawn and window endpoints, counted in Redis."""

    @classmethod
    def build(cls, settings: Settings) -> Services:
        redis = make_redis(settings)
        ledger = Ledger.from_url(settings.effective_database_url)
        return cls(
            settings=settings,
            redis=redis,
            windows=WindowStore(redis),
            events=SpawnEvents(redis),
            tokens=TokenStore(redis, dev_token=None if settings.production else settings.dev_token),
            ledger=ledger,
            idempotency=IdempotencyKeys(redis),
            audit=AuditLog(ledger.engine),
            open_windows=OpenWindows(redis),
            celery=make_celery(settings),
            results=make_celery(settings, results=True),
            rate_limits=RateLimits(redis, settings),
        )


def services() -> Services:
    return current_app.extensions["vx11"]
