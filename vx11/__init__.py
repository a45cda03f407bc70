"""VX11, the policy-gated remote-execution gateway. gunicorn runs ``vx11:create_app()``.

Three layers, each a package, the arrows only going down: :mod:`vx11.gateway` (the
Flask app) and :mod:`vx11.cli` (the ``vx11`` command) over :mod:`vx11.core` (what the
gateway, the CLI and the workers share). The workers live in the top-level ``workers``
package and import the core only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vx11.version import __version__

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["__version__", "create_app"]


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The gateway's Flask app (:func:`vx11.gateway.app.create_app`); imported when called,
    so that importing :mod:`vx11.core` loads no Flask."""
    from vx11.gateway.app import create_app as create_gateway

    return create_gateway(test_config)
