"""The HTTP API: one module per resource, schemas beside the views that use them."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    from vx11.api import audit, errors, health, spawn_actions, spawns, status, tokens, windows

    errors.init_app(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(status.bp)
    app.register_blueprint(windows.bp)
    app.register_blueprint(spawns.bp)
    app.register_blueprint(spawn_actions.bp)
    app.register_blueprint(audit.bp)
    app.register_blueprint(tokens.bp)
