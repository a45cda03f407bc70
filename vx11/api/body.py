"""Reading a JSON body whatever its declared content type, and validating it.

The seed's curl commands send JSON with ``-d`` and no content type (so as
``application/x-www-form-urlencoded``): the body is parsed as JSON regardless.
"""

from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError, fields

from vx11.errors import BadRequest, ValidationFailed


def json_body() -> dict[str, Any]:
    raw = request.get_data(cache=False)  # bounded by MAX_CONTENT_LENGTH (413 beyond)
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("request body must be a JSON object")
    return data


def load(schema: Schema) -> dict[str, Any]:
    """The request body, validated by ``schema``: 400 if not JSON, 422 if invalid."""
    try:
        return schema.load(json_body())
    except ValidationError as exc:
        raise ValidationFailed(fields=exc.messages) from None


def load_query(schema: Schema) -> dict[str, Any]:
    """The query string, validated by ``schema``: 422 if invalid. A list field may be
    repeated or comma-separated (``?status=DONE&status=FAILED``, ``?status=DONE,FAILED``);
    any other parameter may be given once."""
    data: dict[str, Any] = {}
    for name in request.args:
        values = request.args.getlist(name)
        if isinstance(schema.fields.get(name), fields.List):
            data[name] = [part for value in values for part in value.split(",")]
        elif len(values) > 1:
            raise ValidationFailed(fields={name: ["may be given only once"]})
        else:
            data[name] = values[0]
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationFailed(fields=exc.messages) from None
