"""The VX11 Celery application: ``celery -A workers worker``.

Settings come from ``celeryconfig``; the spawner task and the remote-control command
are registered from their own modules. A worker chooses its sandbox level when it
starts, with a real probe, and refuses to start if the level it requires does not work.
"""

from celery import Celery, bootsteps

app = Celery("vx11", include=["workers.spawner"])
app.config_from_object("celeryconfig")


class SandboxStep(bootsteps.StartStopStep):
    """Chooses the sandbox before the pool forks (its children inherit the choice), and
    removes the worker's cgroups at shutdown."""

    def __init__(self, worker, **kwargs):
        from vx11.config import Settings
        from workers.sandbox import ACTIVE
        from workers.sandbox.levels import choose

        super().__init__(worker, **kwargs)
        ACTIVE.config = choose(Settings.from_env())  # SandboxError: the worker won't start

    def shutdown(self, worker):
        from workers.sandbox import ACTIVE

        if ACTIVE.config is not None and ACTIVE.config.cgroups is not None:
            ACTIVE.config.cgroups.close()


app.steps["worker"].add(SandboxStep)

from workers import control  # noqa: E402,F401  registers the vx11_worker_info command

__all__ = ["app"]
