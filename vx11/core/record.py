"""A spawn's record as clients see it: the API's answer and the callback's payload are
the same serialisation, made here for the gateway and the workers alike."""

from __future__ import annotations

import base64
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


class ArtifactInfo(Schema):
    """One file a spawn kept."""

    path = fields.String(metadata={"description": "Its path under the working directory."})
    size = fields.Integer(metadata={"description": "Its size, bytes."})
    sha256 = fields.String(metadata={"description": "The SHA-256 of its content, in hex."})


class SpawnRecord(Schema):
    """A spawn's record as the API answers it, and as its callback delivers it."""

    max_retries = fields.Integer(
        allow_none=True,
        metadata={"description": "Re-runs asked for if its worker is lost (the request's)."},
    )
    attempts = fields.Integer(
        allow_none=True,
        metadata={"description": "Times a worker has started it: 1, more after a lost worker."},
    )
    processes = fields.Dict(
        allow_none=True,
        metadata={"description": "While RUNNING: count, pids, rss_kb, cpu_time_ms."},
    )
    spawn_id = fields.String(metadata={"description": "Its short id: spawn-<8 hex>."})
    spawn_uuid = fields.String(metadata={"description": "Its full id; also its Celery task id."})
    status = fields.String(
        metadata={
            "description": "QUEUED, RUNNING, then for good DONE (exit 0), FAILED, TIMEOUT, "
            "CANCELLED or ERROR (VX11 failed it: reason says why)."
        }
    )
    reason = fields.String(
        allow_none=True,
        metadata={
            "description": "Why it ended as it did, when its exit status does not say: "
            "wall_time_limit, cpu_time_limit, memory_limit, output_limit, signal:<name>, "
            "cancelled, worker_lost, ...; null for DONE."
        },
    )
    task_type = fields.String(metadata={"description": "What ran its code (the request's)."})
    ttl_seconds = fields.Integer(metadata={"description": "Its wall-clock limit, seconds."})
    exit_code = fields.Integer(
        allow_none=True,
        metadata={"description": "The code's exit status; null until it ends, or if none."},
    )
    stdout = fields.String(
        allow_none=True,
        metadata={
            "description": "Its standard output (up to limits.max_output_bytes); "
            "while RUNNING, what it has printed so far."
        },
    )
    stderr = fields.String(
        allow_none=True,
        metadata={
            "description": "Its standard error (up to limits.max_output_bytes); "
            "while RUNNING, what it has printed so far."
        },
    )
    stdout_truncated = fields.Boolean(
        metadata={
            "description": "True when stdout went past max_output_bytes: the rest was dropped."
        }
    )
    stderr_truncated = fields.Boolean(
        metadata={
            "description": "True when stderr went past max_output_bytes: the rest was dropped."
        }
    )
    created_at = UTCDateTime(metadata={"description": "When it was accepted."})
    started_at = UTCDateTime(
        allow_none=True, metadata={"description": "When a worker started it (the last attempt)."}
    )
    finished_at = UTCDateTime(allow_none=True, metadata={"description": "When it ended."})
    duration_ms = fields.Integer(
        allow_none=True, metadata={"description": "Wall-clock time of its run, ms."}
    )
    worker = fields.String(
        allow_none=True, metadata={"description": "The Celery worker that ran it (node name)."}
    )
    window_id = fields.String(
        allow_none=True, metadata={"description": "The policy window it was accepted under."}
    )
    correlation_id = fields.String(
        allow_none=True, metadata={"description": "The request's correlation_id."}
    )
    metadata = fields.Dict(
        allow_none=True, metadata={"description": "The request's metadata, as it was given."}
    )
    limits = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        allow_none=True,
        metadata={
            "description": "The limits it ran under: cpu_time_limit, memory_limit_mb, "
            "max_processes, max_output_bytes, max_file_size_mb; each the request's, or "
            "the server's default."
        },
    )
    args = fields.List(
        fields.String(), allow_none=True, metadata={"description": "The request's args."}
    )
    cpu_time_ms = fields.Integer(
        allow_none=True, metadata={"description": "CPU time its processes used, ms."}
    )
    peak_memory_kb = fields.Integer(
        allow_none=True, metadata={"description": "Its peak resident memory, KiB."}
    )
    sandbox = fields.String(
        allow_none=True, metadata={"description": "The sandbox level it ran at: bwrap or basic."}
    )
    artifacts = fields.List(
        fields.Nested(ArtifactInfo),
        allow_none=True,
        metadata={
            "description": "The files it kept (its artifacts patterns), each read at GET "
            "/vx11/spawn/<id>/artifacts/<path>; null when it asked for none, or until it ends."
        },
    )
    artifacts_truncated = fields.Boolean(
        allow_none=True,
        metadata={"description": "True when max_artifact_bytes left matching files out."},
    )
    callbacks = fields.List(
        fields.Dict(),
        allow_none=True,
        metadata={
            "description": "Deliveries to the spawn's callback_url, oldest first: at, "
            "attempt, status_code or error, duration_ms, outcome (delivered, retrying, "
            "failed). Null until the first attempt, and without a callback_url."
        },
    )


class FileInfo(Schema):
    """One of the files a spawn was given (its content is not answered back)."""

    path = fields.String(metadata={"description": "Its path under the working directory."})
    size = fields.Integer(metadata={"description": "Its size, bytes."})


class SpawnDetail(SpawnRecord):
    """One spawn's record with the code it runs: the answer of ``GET /vx11/spawn/<id>``,
    of its cancel, and its event stream's ``end``. History pages and callbacks carry
    the record without it: a page never reads it (one of the ledger's heavy fields), and
    a callback goes to the client that submitted it."""

    code = fields.String(metadata={"description": "The code the spawn was submitted with."})
    files = fields.List(
        fields.Nested(FileInfo),
        allow_none=True,
        metadata={"description": "The files it was given (path and size); null if none."},
    )
    encoding = fields.String(
        dump_default="utf8",
        metadata={
            "description": "How stdout and stderr are given: utf8, as text (bytes that are "
            "not UTF-8 replaced by U+FFFD), or base64, of their exact bytes "
            "(?encoding=base64)."
        },
    )


def encoded(record: dict[str, Any], encoding: str) -> dict[str, Any]:
    """``record`` with its stdout and stderr as ``encoding`` (``utf8`` or ``base64``)
    gives them: base64 of the exact bytes (the ledger's ``*_raw`` where the text is not
    them)."""
    if encoding != "base64":
        return record
    answer = {**record, "encoding": encoding}
    for name in ("stdout", "stderr"):
        raw = record.get(f"{name}_raw")
        if raw is None and record[name] is not None:
            raw = record[name].encode("utf-8")
        answer[name] = None if raw is None else base64.b64encode(raw).decode("ascii")
    return answer


RECORD = SpawnRecord()
DETAIL = SpawnDetail()
