"""A remote-control command so the gateway (``GET /vx11/status``) and ``celery inspect``
can see each live worker's sandbox level: ``celery -A workers inspect vx11_worker_info``."""

from celery.worker.control import inspect_command

from vx11.core.dispatch import WORKER_INFO_COMMAND
from vx11.version import __version__
from workers.sandbox import ACTIVE


@inspect_command(name=WORKER_INFO_COMMAND)
def vx11_worker_info(state):
    """This worker's sandbox level, whether it has per-spawn cgroups, the task types it
    offers (each with its interpreter's version), and VX11's version."""
    config = ACTIVE.config
    return {
        "sandbox": config.level if config else None,
        "cgroups": f"v{config.cgroups.version}" if config and config.cgroups else None,
        "task_types": ACTIVE.task_types,
        "version": __version__,
    }
