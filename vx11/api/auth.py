"""The X-VX11-Token check every endpoint but /health runs before its view."""

from __future__ import annotations

from flask import g, request

from vx11.errors import AuthRequired, Forbidden
from vx11.services import services

HEADER = "X-VX11-Token"


def require_token() -> None:
    """A ``before_request`` hook: 401 without a token, 403 with one that is not valid."""
    token = request.headers.get(HEADER)
    if not token:
        raise AuthRequired()
    label = services().tokens.verify(token)
    if label is None:
        raise Forbidden()
    g.token_label = label
