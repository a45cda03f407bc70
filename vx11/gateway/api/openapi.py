"""The published contract: the OpenAPI 3 document at ``/vx11/openapi.json``, made by
flask-smorest from the schemas the views validate with, and Swagger UI at
``/vx11/docs`` (served from the flask-swagger-ui package: no CDN, works offline).

Every operation documents its success answer, the scope it needs (``x-vx11-scope``,
and ``security``), and its error answers, which all share :class:`ErrorSchema`.
"""

from __future__ import annotations

from flask import Flask
from flask_smorest import Api
from flask_swagger_ui import get_swaggerui_blueprint
from marshmallow import INCLUDE, Schema, fields, validate

import vx11.core.callbacks  # noqa: F401 - defines an error code
from vx11.core.errors import VX11Error
from vx11.core.record import UTCDateTime
from vx11.gateway.api.errors import HTTP_CODES, UNAVAILABLE
from vx11.version import __version__

SPEC_PATH = "/vx11/openapi.json"
DOCS_PATH = "/vx11/docs"
SECURITY_SCHEME = "token"


def error_codes() -> list[str]:
    """Every ``error`` code the gateway answers with."""
    classes, codes = [VX11Error], set()
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    codes |= set(HTTP_CODES.values()) | {code for _, code, _ in UNAVAILABLE}
    return sorted(codes | {"http_error"})


class ErrorSchema(Schema):
    """Every error answer. ``error`` is the machine-readable code; ``message`` says it
    for a person. Some errors add fields: ``fields`` (422, per-field messages),
    ``required`` (403, the scope), ``retry_after`` (409, 429)."""

    class Meta:
        unknown = INCLUDE  # documented as open: an error may carry more detail

    error = fields.String(
        required=True,
        validate=validate.OneOf(error_codes()),
        metadata={"description": "Machine-readable code."},
    )
    message = fields.String(required=True)
    fields_ = fields.Dict(data_key="fields", metadata={"description": "422: field → messages."})
    required = fields.String(metadata={"description": "403: the scope the endpoint needs."})
    retry_after = fields.Integer(
        metadata={"description": "409, 429, 503 task_type_unavailable: seconds to wait."}
    )


class VX11Api(Api):
    ERROR_SCHEMA = ErrorSchema


def init_app(app: Flask) -> Api:
    """The Api object (register blueprints on it) and the docs page."""
    app.config.update(
        API_TITLE="VX11",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/vx11",
        OPENAPI_JSON_PATH="openapi.json",
    )
    api = VX11Api(
        app,
        spec_kwargs={
            "info": {
                "description": "A policy-gated remote-execution gateway. Nothing runs unless "
                "an operator has opened a policy window (SOLO_MADRE)."
            }
        },
    )
    api.register_field(UTCDateTime, "string", "date-time")
    api.spec.components.security_scheme(
        SECURITY_SCHEME, {"type": "apiKey", "in": "header", "name": "X-VX11-Token"}
    )
    app.register_blueprint(
        get_swaggerui_blueprint(DOCS_PATH, SPEC_PATH, config={"app_name": "VX11 API"}),
        name="docs",
    )
    return api
