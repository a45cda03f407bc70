"""``GET /health``: liveness of this gateway process. No token, no I/O."""

from __future__ import annotations

from flask import Blueprint

from vx11.version import __version__

bp = Blueprint("health", __name__)


@bp.get("/health")
def health():
    """200 while the process serves requests; says nothing of its dependencies."""
    return {"status": "ok", "service": "vx11-gateway", "version": __version__}
