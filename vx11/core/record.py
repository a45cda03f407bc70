"""A spawn's record as clients see it: the API's answer and the callback's payload are
the same serialisation, made here for the gateway and the workers alike."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from marshmallow import Schema, fields

from vx11.core.times import iso_z


class UTCDateTime(fields.Field[datetime]):
    """A datetime written as ISO 8601 UTC with ``Z``."""

    def _serialize(
        self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any
    ) -> str | None:
        return iso_z(value)


class SpawnRecord(Schema):
    """A spawn's record as the API answers it, and as its callback delivers it."""

    max_retries = fields.Integer(allow_none=True)
    attempts = fields.Integer(allow_none=True)
    processes = fields.Dict(
        allow_none=True,
        metadata={"description": "While RUNNING: count, pids, rss_kb, cpu_time_ms."},
    )
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
    started_at = UTCDateTime(allow_none=True)
    finished_at = UTCDateTime(allow_none=True)
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
    callbacks = fields.List(
        fields.Dict(),
        allow_none=True,
        metadata={
            "description": "Deliveries to the spawn's callback_url, oldest first: at, "
            "attempt, status_code or error, duration_ms, outcome (delivered, retrying, "
            "failed). Null until the first attempt, and without a callback_url."
        },
    )


class SpawnDetail(SpawnRecord):
    """One spawn's record with the code it runs: the answer of ``GET /vx11/spawn/<id>``,
    of its cancel, and its event stream's ``end``. History pages and callbacks carry
    the record without it: a page never reads it (one of the ledger's heavy fields), and
    a callback goes to the client that submitted it."""

    code = fields.String(metadata={"description": "The code the spawn was submitted with."})


RECORD = SpawnRecord()
DETAIL = SpawnDetail()
