"""What a worker does when it starts and stops, besides consuming jobs (Celery
bootsteps): choose its sandbox, and sweep spawns whose worker was lost."""

from __future__ import annotations

import threading

from celery import bootsteps

from vx11.config import Settings
from vx11.connections import make_redis
from vx11.events import SpawnEvents
from vx11.ledger import Ledger
from workers import sweeper
from workers.sandbox import ACTIVE
from workers.sandbox.levels import choose


class SandboxStep(bootsteps.StartStopStep):
    """Chooses the sandbox before the pool forks (its children inherit the choice), and
    removes the worker's cgroups at shutdown. A required level that does not work
    raises here, and the worker does not start."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        ACTIVE.config = choose(Settings.from_env())

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
            self.stop_event,
        )
        threading.Thread(
            target=sweeper.run_forever, args=args, name="vx11-sweeper", daemon=True
        ).start()

    def stop(self, worker):
        self.stop_event.set()
