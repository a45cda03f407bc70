"""What a worker does when it starts and stops, besides consuming jobs (Celery
bootsteps): choose its sandbox, announce the task types it offers, and sweep spawns
whose worker was lost; and the one workaround a worker needs to survive its Redis
broker dying."""

from __future__ import annotations

import contextlib
import logging
import threading

import redis.exceptions
from celery import bootsteps
from kombu.transport import redis as kombu_redis

from vx11.core.config import Settings
from vx11.core.connections import make_redis
from vx11.core.events import SpawnEvents
from vx11.core.ledger import Ledger
from vx11.core.offers import INTERVAL, Offers
from vx11.core.runtimes import TaskTypeFileError
from workers import sweeper
from workers.sandbox import ACTIVE
from workers.sandbox.levels import choose, offered

log = logging.getLogger(__name__)


class SandboxStep(bootsteps.StartStopStep):
    """Chooses the sandbox before the pool forks (its children inherit the choice), and
    removes the worker's cgroups at shutdown. A required level that does not work
    raises here, and the worker does not start."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        try:
            cgroups = getattr(worker, "vx11_cgroups", None)  # workers.celery._give_up_root
            ACTIVE.config = choose(Settings.from_env(), cgroups)
            ACTIVE.task_types = offered(ACTIVE.config)
        except TaskTypeFileError as exc:
            log.critical("the worker does not start: %s", exc)
            raise SystemExit(78) from None  # EX_CONFIG

    def shutdown(self, worker):
        if ACTIVE.config is not None and ACTIVE.config.cgroups is not None:
            ACTIVE.config.cgroups.close()


class SweeperStep(bootsteps.StartStopStep):
    """Runs :mod:`workers.sweeper` in a thread of the worker's main process."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.stop_event = threading.Event()

    def start(self, worker):
        settings = Settings.from_env()
        args = (
            Ledger.from_url(settings.effective_database_url),
            SpawnEvents(make_redis(settings)),
            worker.app,
            self.stop_event,
        )
        threading.Thread(
            target=sweeper.run_forever, args=args, name="vx11-sweeper", daemon=True
        ).start()

    def stop(self, worker):
        self.stop_event.set()


class OffersStep(bootsteps.StartStopStep):
    """Announces the task types this worker offers (:mod:`vx11.core.offers`) from a
    thread of its main process, and withdraws them when it stops."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.stop_event = threading.Event()
        self.offers: Offers | None = None

    def start(self, worker):
        self.offers = Offers(make_redis(Settings.from_env()))
        threading.Thread(
            target=self._announce, args=(worker.hostname,), name="vx11-offers", daemon=True
        ).start()

    def stop(self, worker):
        self.stop_event.set()
        if self.offers is not None:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.offers.withdraw(worker.hostname)

    def _announce(self, hostname: str) -> None:
        assert self.offers is not None
        while not self.stop_event.is_set():
            try:
                self.offers.announce(hostname, ACTIVE.task_types or {})
            except redis.exceptions.RedisError as exc:
                log.warning("cannot announce this worker's task types: %s", exc)
            self.stop_event.wait(INTERVAL)


def _closed_transport_is_a_connection_error() -> None:
    """Work around a kombu bug that stops a worker whose Redis broker died.

    Reconnecting, Celery closes the old connection's channel, which hands its
    unacknowledged jobs back; when the transport under it has been closed already, kombu
    reads the transport's client, gone, and raises AttributeError (``'NoneType' object
    has no attribute 'hostname'``, as in celery/kombu #582 and #970). Celery takes that
    for an unrecoverable error and the worker exits. Raised as the connection error it
    is, it is ignored like every other error of a lost connection, and the worker
    reconnects; the jobs stay unacknowledged in Redis, where the sweeper finds those
    that never started (:func:`workers.sweeper.recover_lost_jobs`)."""
    original = kombu_redis.Channel._connparams
    if getattr(original, "vx11_guarded", False):
        return

    def _connparams(self, asynchronous=False):
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return original(self, asynchronous=asynchronous)

    # setattr, as the type checker forbids both a new attribute on a function and
    # replacing a method.
    setattr(_connparams, "vx11_guarded", True)  # noqa: B010
    setattr(kombu_redis.Channel, "_connparams", _connparams)  # noqa: B010


_closed_transport_is_a_connection_error()
