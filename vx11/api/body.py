"""Reading a JSON body whatever its declared content type, and validating it.

The seed's curl commands send JSON with ``-d`` and no content type (so as
``application/x-www-form-urlencoded``): the body is parsed as JSON regardless.
"""

from __future__ import annotations

import json
from typing import Any

from flask import request
from marshmallow import Schema, ValidationError

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
