"""The gateway's dependencies, built once per process by :func:`vx11.create_app` and
fetched by views through :func:`services` — never module globals made at import. Its
Celery clients publish spawn jobs by task name (:mod:`vx11.core.dispatch`), never
importing worker code; Celery settings come from ``celeryconfig``, URLs from
:class:`Settings`."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import current_app
from redis import Redis

from vx11.core import runtimes
from vx11.core.audit import AuditLog
from vx11.core.config import Settings
from vx11.core.connections import make_redis
from vx11.core.dispatch import Producers
from vx11.core.events import SpawnEvents
from vx11.core.ledger import Ledger
from vx11.core.offers import Offers
from vx11.core.policy import OpenWindows, WindowStore
from vx11.core.runtimes import Runtime
from vx11.core.tokens import TokenStore
from vx11.core.unpublished import Unpublished
from vx11.gateway.admission import Admission
from vx11.gateway.idempotency import IdempotencyKeys
from vx11.gateway.ratelimit import RateLimits


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
    producers: Producers
    """Each thread's producer for :attr:`celery`, kept with its broker connection."""
    results: Celery
    """Reads Celery's result backend (status probe)."""
    rate_limits: RateLimits
    """Each token's request rate on the spawn and window endpoints, counted in Redis."""
    admission: Admission
    """A request's token, rate and window, checked in one Redis round trip."""
    unpublished: Unpublished
    """The spawns recorded whose job is not yet confirmed published."""
    runtimes: tuple[Runtime, ...]
    """The task types (``VX11_TASK_TYPES_FILE`` read, and checked, when it starts)."""
    offers: Offers
    """Which live worker offers which task type."""

    @classmethod
    def build(cls, settings: Settings) -> Services:
        redis = make_redis(settings)
        ledger = Ledger.from_url(settings.effective_database_url)
        celery = make_celery(settings)
        tokens = TokenStore(redis, dev_token=None if settings.production else settings.dev_token)
        rate_limits = RateLimits(settings)
        return cls(
            settings=settings,
            redis=redis,
            windows=WindowStore(redis),
            events=SpawnEvents(redis),
            tokens=tokens,
            ledger=ledger,
            idempotency=IdempotencyKeys(redis),
            audit=AuditLog(ledger.engine),
            open_windows=OpenWindows(redis),
            celery=celery,
            producers=Producers(celery),
            results=make_celery(settings, results=True),
            rate_limits=rate_limits,
            admission=Admission(redis, tokens, rate_limits),
            unpublished=Unpublished(redis),
            runtimes=runtimes.load(settings),
            offers=Offers(redis),
        )


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


def services() -> Services:
    return current_app.extensions["vx11"]
