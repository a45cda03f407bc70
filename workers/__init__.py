"""The VX11 Celery application: ``celery -A workers worker``.

Settings come from ``celeryconfig``; the spawner task and the remote-control
command are registered from their own modules.
"""

from celery import Celery

app = Celery("vx11", include=["workers.spawner"])
app.config_from_object("celeryconfig")

from workers import control  # noqa: E402,F401  registers the vx11_worker_info command

__all__ = ["app"]
