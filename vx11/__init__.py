"""VX11, the policy-gated remote-execution gateway. gunicorn runs ``vx11:create_app()``."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

from vx11.version import __version__

__all__ = ["__version__", "create_app"]

log = logging.getLogger("vx11")


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway: settings (defaults, then ``VX11_*``, then ``test_config``),
    its services, and the API."""
    from flask import Flask

    from vx11 import api, logs
    from vx11.config import Settings
    from vx11.services import Services
    from vx11.startup import check_production_tokens, prepare_storage

    settings = Settings.from_env(overrides=test_config)
    app = Flask(__name__)
    logs.init_app(app, settings)  # first: start-up's own lines are formatted too
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    svc = Services.build(settings)
    prepare_storage(svc)
    check_production_tokens(svc)
    app.extensions["vx11"] = svc
    api.init_app(app, settings)
    return app
