"""The VX11 Celery application: ``celery -A workers worker``.

Settings come from ``celeryconfig``; the spawner and callback tasks, the remote-control
command and the worker's start-up steps (:mod:`workers.steps`) are registered from their
modules. Logging is VX11's (:mod:`vx11.core.logs`), not Celery's.
"""

import logging
from collections.abc import Mapping
from contextvars import Token
from typing import Any

from celery import Celery, signals

from vx11.core import logs
from vx11.core.callbacks import CALLBACK_TASK
from vx11.core.config import Settings

app = Celery("vx11", include=["workers.spawner", "workers.callbacks"])
app.config_from_object("celeryconfig")

from workers import control, service  # noqa: E402,F401  control: vx11_worker_info
from workers.steps import OffersStep, SandboxStep, SweeperStep  # noqa: E402

app.steps["worker"].add(SandboxStep)
app.steps["worker"].add(OffersStep)
app.steps["worker"].add(SweeperStep)

__all__ = ["app"]


# --- logging: VX11's lines, JSON or text, with each task's spawn ---------------------------


@signals.celeryd_init.connect
def _log_from_the_start(instance, **_) -> None:
    """Before the worker says anything (the root-user warning comes next): its lines in
    VX11's format. In JSON, no start-up banner either: it is not one object per line."""
    settings = Settings.from_env()
    logs.configure(settings, "worker")
    logging.captureWarnings(True)
    if settings.effective_log_format == "json":
        instance.quiet = True


@signals.celeryd_init.connect
def _give_up_root(instance, **_) -> None:
    """Next, a worker started as root gives root up (:mod:`workers.service`), or says
    why it cannot and does not start. The cgroups it made as root go to the sandbox's
    step (:class:`workers.steps.SandboxStep`) on the worker."""
    try:
        instance.vx11_cgroups = service.give_up_root(Settings.from_env())
    except (service.ServiceUserError, OSError) as exc:
        logging.getLogger("workers.service").critical("the worker does not start: %s", exc)
        raise SystemExit(78) from None  # EX_CONFIG


@signals.setup_logging.connect
def _log_as_vx11(loglevel=None, **_) -> None:
    """Connected, this makes Celery install no handler or format of its own; the level is
    ``VX11_LOG_LEVEL``, else the worker's ``--loglevel``."""
    logs.configure(Settings.from_env(), "worker", logging.getLevelName(loglevel or logging.INFO))


_TASK_LOG_TOKENS: dict[str, Token[Mapping[str, Any]]] = {}
"""The binding of each running task (by id), undone when it ends."""


@signals.task_prerun.connect
def _bind_task(task_id=None, task=None, args=(), kwargs=None, **_) -> None:
    """Every line a task logs names it, and the spawn it is about: a spawn's job carries
    its uuid and correlation id, a callback's its spawn's uuid."""
    kwargs = kwargs or {}
    spawn_uuid = kwargs.get("spawn_uuid") or (
        args[0] if task.name == CALLBACK_TASK and args else None
    )
    _TASK_LOG_TOKENS[task_id] = logs.bind(
        task_id=task_id,
        task_name=task.name,
        spawn_id=logs.spawn_id_of(spawn_uuid) if isinstance(spawn_uuid, str) else None,
        spawn_uuid=spawn_uuid,
        correlation_id=kwargs.get("correlation_id"),
        attempt=kwargs.get("attempt"),
    )


@signals.task_postrun.connect
def _unbind_task(task_id=None, **_) -> None:
    token = _TASK_LOG_TOKENS.pop(task_id, None)
    if token is not None:
        logs.unbind(token)
