"""Spawns: ``POST /vx11/spawn`` and ``GET /vx11/spawn/<id>`` (alias ``/vx11/result/<id>``)."""

from __future__ import annotations

import functools
import json

from flask import Blueprint
from marshmallow import Schema, ValidationError, fields, validate

from vx11.api.auth import require_token
from vx11.api.body import load
from vx11.api.fields import UTCDateTime
from vx11.config import Settings
from vx11.services import services
from vx11.submit import submit_spawn

bp = Blueprint("spawns", __name__, url_prefix="/vx11")
bp.before_request(require_token)

TASK_TYPES = ("python", "shell")
CORRELATION_ID = validate.Regexp(
    r"^[A-Za-z0-9._:@/+=-]{1,128}$",
    error="1 to 128 characters of letters, digits and ._:@/+=-",
)
MAX_ARG_BYTES = 4096
"""Longest single entry of a spawn's ``args``, bytes of UTF-8."""


def _utf8_max(limit: int, what: str):
    def check(value: str) -> None:
        if len(value.encode("utf-8", "surrogatepass")) > limit:
            raise ValidationError(f"{what} is longer than {limit} bytes")

    return check


def _valid_arg(value: str) -> None:
    # An argument becomes an execve() string: NUL would cut it short, and a lone
    # surrogate has no UTF-8 form at all.
    if "\0" in value:
        raise ValidationError("an argument may not contain a NUL character")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValidationError("an argument must be valid Unicode text") from None
    if size > MAX_ARG_BYTES:
        raise ValidationError(f"an argument is longer than {MAX_ARG_BYTES} bytes")


def _limit(low: int, high: int) -> fields.Integer:
    """An optional per-spawn limit; ``high`` is the server's maximum. Left out, it takes
    the server's default (:func:`vx11.submit.resolve_limits`)."""
    error = f"must be between {low} and {high} (the server's maximum)"
    return fields.Integer(strict=True, validate=validate.Range(low, high, error=error))


def _json_max(limit: int):
    def check(value: dict) -> None:
        if len(json.dumps(value, separators=(",", ":"))) > limit:
            raise ValidationError(f"metadata is larger than {limit} bytes of JSON")

    return check


@functools.cache
def request_schema(settings: Settings) -> Schema:
    """The spawn request schema, with this deployment's limits."""
    return Schema.from_dict(
        {
            "task_type": fields.String(required=True, validate=validate.OneOf(TASK_TYPES)),
            "code": fields.String(
                required=True,
                validate=[validate.Length(min=1), _utf8_max(settings.max_code_bytes, "code")],
            ),
            "ttl_seconds": fields.Integer(
                strict=True,
                load_default=settings.spawn_default_ttl,
                validate=validate.Range(1, settings.spawn_max_ttl),
            ),
            "stdin": fields.String(
                load_default=None,
                allow_none=True,
                validate=_utf8_max(settings.max_stdin_bytes, "stdin"),
            ),
            "correlation_id": fields.String(
                load_default=None, allow_none=True, validate=CORRELATION_ID
            ),
            "metadata": fields.Dict(
                keys=fields.String(),
                load_default=None,
                allow_none=True,
                validate=_json_max(settings.max_metadata_bytes),
            ),
            "cpu_time_limit": _limit(1, settings.cpu_time_limit_max),
            "memory_limit_mb": _limit(16, settings.memory_limit_mb_max),
            "max_processes": _limit(1, settings.max_processes_max),
            "max_output_bytes": _limit(0, settings.max_output_bytes_max),
            "max_file_size_mb": _limit(1, settings.max_file_size_mb_max),
            "args": fields.List(
                fields.String(validate=_valid_arg),
                load_default=list,
                validate=validate.Length(
                    max=settings.max_args,
                    error=f"at most {settings.max_args} arguments (the server's maximum)",
                ),
            ),
        },
        name="SpawnRequest",
    )()


class SpawnAccepted(Schema):
    spawn_id = fields.String()
    spawn_uuid = fields.String()
    status = fields.String()
    task_type = fields.String()
    correlation_id = fields.String(allow_none=True)
    created_at = UTCDateTime()
    error = fields.Constant(None)


class SpawnRecord(Schema):
    spawn_id = fields.String()
    spawn_uuid = fields.String()
    status = fields.String()
    reason = fields.String(allow_none=True)
    task_type = fields.String()
    ttl_seconds = fields.Integer()
    exit_code = fields.Integer(allow_none=True)
    stdout = fields.String(allow_none=True)
    stderr = fields.String(allow_none=True)
    stdout_truncated = fields.Boolean()
    stderr_truncated = fields.Boolean()
    created_at = UTCDateTime()
    started_at = UTCDateTime()
    finished_at = UTCDateTime()
    duration_ms = fields.Integer(allow_none=True)
    worker = fields.String(allow_none=True)
    window_id = fields.String(allow_none=True)
    correlation_id = fields.String(allow_none=True)
    metadata = fields.Dict(allow_none=True)
    limits = fields.Dict(keys=fields.String(), values=fields.Integer(), allow_none=True)
    args = fields.List(fields.String(), allow_none=True)
    cpu_time_ms = fields.Integer(allow_none=True)
    peak_memory_kb = fields.Integer(allow_none=True)
    sandbox = fields.String(allow_none=True)


ACCEPTED = SpawnAccepted()
RECORD = SpawnRecord()


@bp.post("/spawn")
def create_spawn():
    """Queue python or shell code while the spawner window is open.

    A closed window is a semantic refusal: HTTP 200 with ``error: off_by_policy``.
    """
    svc = services()
    result = submit_spawn(svc, load(request_schema(svc.settings)))
    if result.get("error"):
        return result
    return ACCEPTED.dump(result)


@bp.get("/spawn/<ident>")
@bp.get("/result/<ident>")
def get_spawn(ident: str):
    """The spawn's record, by ``spawn_id`` or ``spawn_uuid``."""
    return RECORD.dump(services().ledger.get(ident))
