"""A remote-control command so the gateway (``GET /vx11/status``) and ``celery inspect``
can see each live worker's sandbox level: ``celery -A workers inspect vx11_worker_info``."""

from celery.worker.control import inspect_command

from vx11.dispatch import WORKER_INFO_COMMAND
from vx11.version import __version__
from workers import sandbox


@inspect_command(name=WORKER_INFO_COMMAND)
def vx11_worker_info(state):
    """This worker's sandbox level and VX11 version."""
    return {"sandbox": sandbox.LEVEL, "version": __version__}
