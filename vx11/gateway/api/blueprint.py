"""The blueprint every resource uses: flask-smorest's, with VX11's argument parser.

Views declare what they read with ``@blp.arguments(Schema)`` and what they answer
with ``@blp.response(200, Schema)``; the same marshmallow schemas validate requests,
shape responses and make the OpenAPI document (:mod:`vx11.gateway.api.openapi`).

The parser differs from webargs' in three ways, each on purpose:

- a body is JSON whatever its declared content type (the MVP's curl commands send
  JSON with ``-d`` and no content type), read by :func:`vx11.gateway.api.body.json_body`;
- a list in the query string may be repeated or comma-separated
  (``?status=DONE&status=FAILED``, ``?status=DONE,FAILED``); any other parameter
  may be given once;
- a validation error is :class:`~vx11.core.errors.ValidationFailed`, so it has the one
  error shape (422 ``validation_error`` with ``fields``).

And every view refuses a query parameter it does not take, as a body field it does
not know is refused: 422 ``unknown_parameter`` naming it (``POST /vx11/spawn?wait=10``
would otherwise answer as if ``wait`` meant something). The parameters a view takes
are the ones its OpenAPI operation documents: its query schema's fields
(``@blp.arguments(Schema, location="query")``) and any ``{"in": "query"}`` parameter
given to ``@blp.doc(parameters=[...])``.

A path parameter means the same on every endpoint that has it, so its description is
given once, in :data:`PATH_PARAMETERS`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

import flask_smorest
from flask import Request, request
from marshmallow import RAISE, Schema, ValidationError, fields
from webargs.flaskparser import FlaskParser

from vx11.core.errors import UnknownParameter, ValidationFailed
from vx11.gateway.api.body import json_body

QUERY_LOCATIONS = ("query", "querystring")
PATH_PARAMETERS = {
    "ident": "The spawn: its spawn_id (spawn-<8 hex>) or its spawn_uuid.",
    "target": "A policy window's target, one of VX11_WINDOW_TARGETS (spawner gates spawns).",
    "token_id": "The token's id, or 8 or more of its leading hex digits.",
    "path": "An artifact's path under the spawn's working directory, as its record lists it.",
}
"""What each path parameter of the API's URLs names, by its name in the URL rule."""
RELATIVE_PATH = r"^(?:(?!\.\.?/)[^/]+/)*(?!\.\.?$)[^/]+$"
"""A relative path without empty, ``.`` or ``..`` parts."""
PATH_SCHEMAS = {"path": {"type": "string", "minLength": 1, "pattern": RELATIVE_PATH}}
"""Path parameters narrower than any string: a ``path`` rule variable takes slashes."""
_RULE_VARIABLE = re.compile(r"<(?:[^:<>]+:)?(\w+)>")


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

    def add_url_rule(
        self,
        rule,
        endpoint=None,
        view_func=None,
        provide_automatic_options=None,
        *,
        parameters=None,
        **options: Any,
    ):
        if view_func is not None:
            view_func = strict_query(view_func)
        given = list(parameters or [])
        named = {parameter["name"] for parameter in given if parameter.get("in") == "path"}
        for name in _RULE_VARIABLE.findall(rule):
            if name in PATH_PARAMETERS and name not in named:
                parameter = {"in": "path", "name": name, "description": PATH_PARAMETERS[name]}
                if name in PATH_SCHEMAS:
                    parameter["schema"] = PATH_SCHEMAS[name]
                given.append(parameter)
        return super().add_url_rule(
            rule,
            endpoint,
            view_func,
            provide_automatic_options,
            parameters=given or None,
            **options,
        )


def strict_query(view: Callable[..., Any]) -> Callable[..., Any]:
    """``view``, refusing a query string that names a parameter it does not take
    (:func:`query_parameters`); its operation documents that 422."""
    taken = query_parameters(view)
    view = flask_smorest.Blueprint.doc(responses={422: "UNPROCESSABLE_ENTITY"})(view)

    @functools.wraps(view)
    def strict(*args: Any, **kwargs: Any) -> Any:
        unknown = [name for name in request.args if name not in taken]
        if unknown:
            raise unknown_parameters(unknown, taken)
        return view(*args, **kwargs)

    return strict


def query_parameters(view: Callable[..., Any]) -> frozenset[str]:
    """The names of the query parameters ``view``'s OpenAPI operation documents."""
    doc = getattr(view, "_apidoc", {})
    names: set[str] = set()
    for argument in doc.get("arguments", {}).get("parameters", []):
        if argument["in"] in QUERY_LOCATIONS:
            schema = argument["schema"]
            schema = schema() if isinstance(schema, type) else schema
            names.update(field.data_key or name for name, field in schema.load_fields.items())
    for parameter in doc.get("manual_doc", {}).get("parameters", []):
        if parameter.get("in") == "query":
            names.add(parameter["name"])
    return frozenset(names)


def unknown_parameters(unknown: Iterable[str], taken: Iterable[str]) -> UnknownParameter:
    names = [name[:100] for name in unknown]  # echoed back: a long one is cut
    plural = "s" if len(names) > 1 else ""
    takes = ", ".join(sorted(taken)) if taken else "no query parameter"
    return UnknownParameter(
        f"unknown query parameter{plural} {', '.join(names)}: this endpoint takes {takes}",
        fields={name: ["unknown query parameter"] for name in names},
    )
