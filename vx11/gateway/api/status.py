"""``GET /vx11/status``: the policy, the open windows, and every dependency's health."""

from __future__ import annotations

import redis.exceptions
from marshmallow import Schema, fields

from vx11.core.config import Settings
from vx11.core.policy import POLICY
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import authenticated_blueprint, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.api.windows import WindowView, window_view
from vx11.gateway.probes import probe_all
from vx11.gateway.services import services


class Status(Schema):
    policy = fields.String(required=True, metadata={"example": "SOLO_MADRE"})
    mode = fields.String(
        required=True, metadata={"description": "windowed while a window is open, else solo_madre"}
    )
    madre_available = fields.Boolean(required=True)
    spawner_available = fields.Boolean(required=True)
    services = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(),
        required=True,
        metadata={
            "description": "redis, broker, result_backend, database, spawner: each ok "
            "(bool), latency_ms, and error when not ok."
        },
    )
    windows = fields.List(fields.Nested(WindowView), required=True)
    sandbox = fields.Dict(
        required=True,
        metadata={"description": "levels: worker → sandbox level; level: the weakest."},
    )
    task_types = fields.Dict(
        keys=fields.String(),
        values=fields.Dict(keys=fields.String(), values=fields.String(allow_none=True)),
        required=True,
        metadata={
            "description": "Each live worker → the task types it offers, each with its "
            "interpreter's version (GET /vx11/runtimes has them by task type)."
        },
    )


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("status", __name__, __doc__)

    @blp.get("/status")
    @requires(Scope.READ)
    @blp.response(200, Status)
    def status():
        """Policy and dependencies

        Never hangs: each probe has a short timeout and a down dependency shows
        ``ok: false``."""
        svc = services()
        checks = probe_all(svc)
        try:
            windows = svc.windows.open_windows(svc.settings.window_targets)
        except redis.exceptions.RedisError:
            windows = []
        spawner = checks["spawner"]
        details = spawner.pop("details", {})
        levels = {name: info.get("sandbox") for name, info in details.items()}
        return {
            "policy": POLICY,
            "mode": "windowed" if windows else "solo_madre",
            "madre_available": checks["redis"]["ok"] and checks["database"]["ok"],
            "spawner_available": checks["broker"]["ok"] and spawner["ok"],
            "services": checks,
            "windows": [window_view(w.target, w) for w in windows],
            "sandbox": {
                "levels": levels,
                "level": min(levels.values(), default=None, key=_strength),
            },
            "task_types": {name: info.get("task_types") or {} for name, info in details.items()},
        }

    return blp


SANDBOX_STRENGTH = {"basic": 0, "bwrap": 1}


def _strength(level: str | None) -> int:
    return SANDBOX_STRENGTH.get(level or "", -1)
