"""The VX11 Celery application: ``celery -A workers worker``.

Settings come from ``celeryconfig``; the spawner and callback tasks, the remote-control
command and the worker's start-up steps (:mod:`workers.steps`) are registered from their
modules.
"""

from celery import Celery

app = Celery("vx11", include=["workers.spawner", "workers.callbacks"])
app.config_from_object("celeryconfig")

from workers import control  # noqa: E402,F401  registers the vx11_worker_info command
from workers.steps import SandboxStep, SweeperStep  # noqa: E402

app.steps["worker"].add(SandboxStep)
app.steps["worker"].add(SweeperStep)

__all__ = ["app"]
