"""The app factory: ``create_app`` builds the gateway's Flask app (gunicorn runs it as
``vx11:create_app()``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from vx11.core.config import Settings
from vx11.gateway import api, request_log
from vx11.gateway.services import Services
from vx11.gateway.startup import check_production_tokens, prepare_storage


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the gateway: settings (defaults, then ``VX11_*``, then ``test_config``),
    its services, and the API."""
    settings = Settings.from_env(overrides=test_config)
    app = Flask("vx11")
    if settings.trusted_proxies:
        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]
    request_log.init_app(app, settings)  # first: start-up's own lines are formatted too
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    svc = Services.build(settings)
    prepare_storage(svc)
    check_production_tokens(svc)
    app.extensions["vx11"] = svc
    api.init_app(app, settings)
    return app
