"""``GET /vx11/status``: the policy, the open windows, and every dependency's health."""

from __future__ import annotations

import redis.exceptions
from flask import Blueprint

from vx11.api.auth import authenticate, requires
from vx11.api.windows import window_view
from vx11.policy import POLICY
from vx11.probes import probe_all
from vx11.services import services
from vx11.tokens import Scope

bp = Blueprint("status", __name__, url_prefix="/vx11")
bp.before_request(authenticate)


@bp.get("/status")
@requires(Scope.READ)
def status():
    """Never hangs: each probe has a short timeout and a down dependency shows ``ok: false``."""
    svc = services()
    checks = probe_all(svc)
    try:
        windows = svc.windows.open_windows(svc.settings.window_targets)
    except redis.exceptions.RedisError:
        windows = []
    spawner = checks["spawner"]
    levels = {name: info.get("sandbox") for name, info in spawner.pop("details", {}).items()}
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
    }


SANDBOX_STRENGTH = {"basic": 0, "bwrap": 1}


def _strength(level: str | None) -> int:
    return SANDBOX_STRENGTH.get(level or "", -1)
