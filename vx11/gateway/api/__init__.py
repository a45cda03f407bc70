"""The HTTP API: one module per resource, schemas beside the views that use them.

Each resource module has ``blueprint(settings)``: its views, with the schemas this
deployment's limits shape. They are registered on flask-smorest's ``Api``, which
makes the OpenAPI document from them (:mod:`vx11.gateway.api.openapi`).
"""

from __future__ import annotations

from flask import Flask

from vx11.core.config import Settings
from vx11.gateway.api.body import check_request_size


def init_app(app: Flask, settings: Settings) -> None:
    from vx11.gateway.api import (
        audit,
        batches,
        errors,
        health,
        metrics,
        openapi,
        runtimes,
        spawn_actions,
        spawns,
        status,
        tokens,
        windows,
    )

    app.before_request(check_request_size)  # before any blueprint's authentication
    api = openapi.init_app(app)
    errors.init_app(app)  # after flask-smorest's, so that one error shape answers
    resources = (
        health, status, runtimes, windows, spawns, batches, spawn_actions, audit, tokens,
        metrics,
    )  # fmt: skip
    for resource in resources:
        api.register_blueprint(resource.blueprint(settings))
