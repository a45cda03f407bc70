"""``GET /health``: liveness of this gateway process. No token, no I/O."""

from __future__ import annotations

from marshmallow import Schema, fields

from vx11.core.config import Settings
from vx11.gateway.api.blueprint import Blueprint
from vx11.version import __version__


class Health(Schema):
    status = fields.String(required=True, metadata={"example": "ok"})
    service = fields.String(required=True)
    version = fields.String(required=True)


def blueprint(settings: Settings) -> Blueprint:
    blp = Blueprint("health", __name__, description="Liveness.")

    @blp.get("/health")
    @blp.response(200, Health)
    def health():
        """Liveness

        200 while the process serves requests; says nothing of its dependencies."""
        return {"status": "ok", "service": "vx11-gateway", "version": __version__}

    return blp
