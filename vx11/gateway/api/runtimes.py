"""``GET /vx11/runtimes``: the task types a client may use, how each runs its code, its
interpreter's version on the live workers, and its spawns' default and maximum limits."""

from __future__ import annotations

from collections import Counter
from typing import Any

from marshmallow import Schema, fields

from vx11.core import runtimes
from vx11.core.config import Settings
from vx11.core.runtimes import QUEUED_WITHOUT_WORKER, Runtime
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import authenticated_blueprint, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.services import services


class LimitView(Schema):
    default = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "What a spawn gets when it gives none (cpu: its ttl)."},
    )
    maximum = fields.Integer(
        required=True, metadata={"description": "The most a spawn may ask for (VX11_*_MAX)."}
    )


class RuntimeView(Schema):
    name = fields.String(required=True, metadata={"description": "The request's task_type."})
    description = fields.String(required=True, metadata={"description": "What it runs."})
    builtin = fields.Boolean(
        required=True,
        metadata={"description": "Built in (python, shell, bash), or declared by the server."},
    )
    interpreter = fields.List(
        fields.String(),
        required=True,
        metadata={
            "description": "The command line that runs the code: then main (the file the "
            "code is written to in /work), or the code itself (shell, bash), then args."
        },
    )
    main = fields.String(
        required=True,
        allow_none=True,
        metadata={"description": "The file in /work the code is written to; null: an argument."},
    )
    version = fields.String(
        required=True,
        allow_none=True,
        metadata={
            "description": "The interpreter's version most live workers report; null "
            "when none does."
        },
    )
    workers = fields.Dict(
        keys=fields.String(),
        values=fields.String(allow_none=True),
        required=True,
        metadata={"description": "Each live worker that offers it, with its version."},
    )
    accepted = fields.Boolean(
        required=True,
        metadata={
            "description": "Whether a spawn of it is accepted now: python and shell always "
            "(the spawn waits in the queue for a worker); bash and a declared one while a "
            "live worker offers it (else 503 task_type_unavailable)."
        },
    )
    limits = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(LimitView),
        required=True,
        metadata={"description": "Each limit a request may give, as its field is named."},
    )


class Runtimes(Schema):
    runtimes = fields.List(fields.Nested(RuntimeView), required=True)


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("runtimes", __name__, __doc__)

    @blp.get("/runtimes")
    @requires(Scope.READ)
    @blp.response(200, Runtimes)
    def list_runtimes():
        """Task types

        Every task type this server accepts: the built-in python, shell and bash, then
        those its ``VX11_TASK_TYPES_FILE`` declares; for each, its interpreter, the
        version each live worker that offers it reports, and the default and maximum
        of each limit its spawns may give."""
        svc = services()
        live = svc.offers.live()
        return {"runtimes": [view(r, live, svc.settings) for r in svc.runtimes]}

    return blp


def view(
    runtime: Runtime, live: dict[str, dict[str, str | None]], settings: Settings
) -> dict[str, Any]:
    workers = {worker: offered[runtime.name] for worker, offered in live.items()
               if runtime.name in offered}  # fmt: skip
    versions = Counter(v for v in workers.values() if v is not None)
    maximums = runtimes.maximums(settings)
    return {
        "name": runtime.name,
        "description": runtime.description,
        "builtin": runtime.builtin,
        "interpreter": list(runtime.interpreter),
        "main": runtime.main,
        "version": versions.most_common(1)[0][0] if versions else None,
        "workers": workers,
        "accepted": runtime.name in QUEUED_WITHOUT_WORKER or bool(workers),
        "limits": {
            limit: {"default": default, "maximum": maximums[limit]}
            for limit, default in runtimes.defaults(runtime, settings).items()
        },
    }
