"""Who is calling, and may they: the X-VX11-Token check every endpoint but /health and
the API's own documentation runs before its view.

Each view declares the scope it needs with :func:`requires`; a view that declares
none needs ``admin`` (fail closed). No token is 401 ``auth_required``; an unknown,
revoked or expired one is 401 ``invalid_token``; a valid one without the scope is 403
``insufficient_scope`` naming the scope required.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import current_app, g, request

from vx11.core.errors import AuthRequired
from vx11.core.tokens import Scope, TokenInfo
from vx11.gateway.admission import Admitted
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.api.openapi import SECURITY_SCHEME
from vx11.gateway.ratelimit import LIMITED_SCOPES
from vx11.gateway.services import services

HEADER = "X-VX11-Token"
SCOPE_ATTRIBUTE = "vx11_required_scope"
WINDOW_ATTRIBUTE = "vx11_window"


AUTH_ERRORS = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 503: "SERVICE_UNAVAILABLE"}


def requires(
    scope: Scope, *, window: str | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare the scope a view needs (read by :func:`authenticate`), and document it
    in the OpenAPI operation with the errors authentication can answer. ``window``: the
    target whose policy window the view acts under, read with the token
    (:func:`admitted`)."""
    errors = dict(AUTH_ERRORS)
    if scope in LIMITED_SCOPES:
        errors[429] = "TOO_MANY_REQUESTS"
    document = Blueprint.doc(
        security=[{SECURITY_SCHEME: []}],
        responses=errors,
        **{"x-vx11-scope": str(scope)},
    )

    def mark(view: Callable[..., Any]) -> Callable[..., Any]:
        setattr(view, SCOPE_ATTRIBUTE, scope)
        setattr(view, WINDOW_ATTRIBUTE, window)
        return document(view)

    return mark


def authenticated_blueprint(
    name: str, import_name: str, description: str | None, url_prefix: str | None = "/vx11"
) -> Blueprint:
    """A resource's blueprint, every view of it behind :func:`authenticate`."""
    blp = Blueprint(name, import_name, url_prefix=url_prefix, description=description)
    blp.before_request(authenticate)
    return blp


def authenticate() -> None:
    """A ``before_request`` hook: the caller's token, checked against the view's scope
    and counted against its rate, with the view's window, in one Redis round trip
    (:mod:`vx11.gateway.admission`); kept as ``g.token`` and ``g.admitted`` for the
    view."""
    token = request.headers.get(HEADER)
    if not token:
        raise AuthRequired()
    view = current_app.view_functions.get(request.endpoint or "")
    required = getattr(view, SCOPE_ATTRIBUTE, Scope.ADMIN)
    admitted = services().admission.admit(token, required, getattr(view, WINDOW_ATTRIBUTE, None))
    g.token, g.admitted = admitted.token, admitted


def caller() -> TokenInfo:
    """The token of the request being served (after :func:`authenticate`)."""
    return g.token


def admitted() -> Admitted:
    """What :func:`authenticate` found for the request being served: its token and,
    for a view declared with a window, that window and the uuid noted for its spawn."""
    return g.admitted


def owner_filter() -> str | None:
    """The owner whose spawns the caller may see: its own, or None (all) for admin."""
    info = caller()
    return None if info.is_admin else info.token_id
