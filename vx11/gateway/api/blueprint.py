"""The blueprint every resource uses: flask-smorest's, with VX11's argument parser.

Views declare what they read with ``@blp.arguments(Schema)`` and what they answer
with ``@blp.response(200, Schema)``; the same marshmallow schemas validate requests,
shape responses and make the OpenAPI document (:mod:`vx11.gateway.api.openapi`).

The parser differs from webargs' in three ways, each on purpose:

- a body is JSON whatever its declared content type (the MVP's curl commands send
  JSON with ``-d`` and no content type), read by :func:`vx11.gateway.api.body.json_body`;
- a list in the query string may be repeated or comma-separated
  (``?status=DONE&status=FAILED``, ``?status=DONE,FAILED``); any other parameter
  may be given once, and an unknown one is an error, as in a body;
- a validation error is :class:`~vx11.core.errors.ValidationFailed`, so it has the one
  error shape (422 ``validation_error`` with ``fields``).
"""

from __future__ import annotations

from typing import Any, NoReturn

import flask_smorest
from flask import Request
from marshmallow import RAISE, Schema, ValidationError, fields
from webargs.flaskparser import FlaskParser

from vx11.core.errors import ValidationFailed
from vx11.gateway.api.body import json_body


class Parser(FlaskParser):
    DEFAULT_UNKNOWN_BY_LOCATION = {
        **FlaskParser.DEFAULT_UNKNOWN_BY_LOCATION,
        "query": RAISE,
        "querystring": RAISE,
    }
    DEFAULT_VALIDATION_STATUS = 422

    def load_json(self, req: Request, schema: Schema) -> Any:
        return json_body()

    def load_querystring(self, req: Request, schema: Schema) -> Any:
        data: dict[str, Any] = {}
        for name in req.args:
            values = req.args.getlist(name)
            if isinstance(schema.fields.get(name), fields.List):
                data[name] = [part for value in values for part in value.split(",")]
            elif len(values) > 1:
                raise ValidationFailed(fields={name: ["may be given only once"]})
            else:
                data[name] = values[0]
        return data

    def handle_error(self, error: ValidationError, req, schema, **kwargs: Any) -> NoReturn:
        messages = error.messages
        if isinstance(messages, dict) and len(messages) == 1:  # {location: {field: [...]}}
            (messages,) = messages.values()
        raise ValidationFailed(fields=messages)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()
