"""Spawns: ``POST /vx11/spawn``, ``GET /vx11/spawn/<id>`` (alias ``/vx11/result/<id>``) and
the history, ``GET /vx11/spawns``."""

from __future__ import annotations

import contextlib
import functools
from dataclasses import replace
from typing import Any

from flask import g, jsonify, request
from marshmallow import Schema, fields, post_load, validate
from redis.exceptions import RedisError

from vx11.core import runtimes
from vx11.core.config import Settings
from vx11.core.errors import ValidationFailed
from vx11.core.ledger import SpawnFilter
from vx11.core.ledger.store import AlreadyAccepted
from vx11.core.policy import SPAWN_TARGET
from vx11.core.record import SpawnDetail, SpawnRecord, UTCDateTime, encoded
from vx11.core.states import SpawnStatus
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import (
    admitted,
    authenticated_blueprint,
    caller,
    owner_filter,
    requires,
)
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.api.fields import Choice, PageQuery, page_schema
from vx11.gateway.api.spawn_request import (
    CORRELATION_ID,
    decoded,
    encoding_field,
    request_schema,
    spawn_example,
)
from vx11.gateway.idempotency import HEADER as IDEMPOTENCY_KEY
from vx11.gateway.idempotency import is_valid_key
from vx11.gateway.lifecycle import is_terminal, wait_for_end
from vx11.gateway.services import Services, services
from vx11.gateway.stream import with_progress
from vx11.gateway.submit import resume, submit_spawn


class SpawnAnswer(Schema):
    """The answer to a spawn request: the accepted spawn (``error`` null), or the
    policy's refusal (``error: off_by_policy``, ids null, nothing queued)."""

    spawn_id = fields.String(required=True, allow_none=True)
    spawn_uuid = fields.String(required=True, allow_none=True)
    status = fields.String(required=True, validate=validate.OneOf(("QUEUED", "ERROR")))
    task_type = fields.String()
    correlation_id = fields.String(allow_none=True)
    created_at = UTCDateTime()
    error = fields.String(
        required=True,
        allow_none=True,
        dump_default=None,
        validate=validate.OneOf(("off_by_policy",)),
    )
    reason = fields.String(allow_none=True, metadata={"description": "Why it was refused."})
    hint = fields.String(metadata={"description": "How to get it accepted."})


ANSWER = SpawnAnswer()


MAX_WAIT = 60


class RecordQuery(Schema):
    """The query string of ``GET /vx11/spawn/<id>``."""

    wait = fields.Float(
        load_default=0,
        validate=validate.Range(0, MAX_WAIT, error="must be between {min} and {max} seconds"),
        metadata={"description": "Seconds to wait for the spawn to end before answering."},
    )
    encoding = encoding_field(
        "utf8: stdout and stderr as text; base64: as base64 of their exact bytes (the "
        "answer says encoding: base64)."
    )


IDEMPOTENCY_PARAMETER = {
    "in": "header",
    "name": IDEMPOTENCY_KEY,
    "required": False,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[!-~]+$"},
    "description": "Makes retries safe: see the operation's description.",
}
REPLAYED = "Idempotent-Replayed"
"""The response header that marks an answer replayed for an idempotency key."""


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key``, if it has one; 422 if it is malformed."""
    key = request.headers.get(IDEMPOTENCY_KEY)
    if key is not None and not is_valid_key(key):
        message = "must be 1 to 255 visible ASCII characters"
        raise ValidationFailed(fields={IDEMPOTENCY_KEY: [message]})
    return key


def accept(svc: Services, spawn_request: dict[str, Any]) -> dict[str, Any]:
    """The answer to a valid spawn request: the accepted spawn, or the refusal."""
    g.note_used = True
    return submit_spawn(svc, spawn_request, admitted())


def forget_unused_note(_exc: BaseException | None) -> None:
    """At the end of a request whose spawn uuid was noted unpublished
    (:mod:`vx11.gateway.admission`) but never recorded (invalid, replayed, refused by
    its key), take the note away; one left behind is the sweeper's to take."""
    entry = g.get("admitted")
    if entry is None or entry.spawn_uuid is None or g.get("note_used"):
        return
    with contextlib.suppress(RedisError):
        services().unpublished.take(entry.spawn_uuid)


def accept_once(svc: Services, spawn_request: dict[str, Any], spawn: dict[str, Any], key: str):
    """:func:`accept` of ``spawn`` (the request ``spawn_request``, :func:`decoded`), once
    per idempotency ``key`` of the caller's token; only an accepted spawn is kept as the
    key's answer. The ledger keeps the key with its spawn, so a retry after a request
    that died half-way answers that spawn."""
    with svc.idempotency.attempt(caller().token_id, key, spawn_request) as attempt:
        if attempt.replay is not None:
            return jsonify(attempt.replay), {REPLAYED: "true"}
        g.note_used = True
        try:
            answer = submit_spawn(svc, spawn, admitted(), attempt.ledger_fields)
        except AlreadyAccepted as earlier:
            record = resume(svc, earlier.record, attempt.fingerprint)
            replay = ANSWER.dump({**record, "status": "QUEUED"})  # as it was accepted
            svc.idempotency.answer(attempt, replay)
            return jsonify(replay), {REPLAYED: "true"}
        if not answer.get("error"):
            svc.idempotency.answer(attempt, ANSWER.dump(answer))
        return answer


# --- history -----------------------------------------------------------------------------

"""Most records one history page holds."""
STATUSES = tuple(status.value for status in SpawnStatus)


class HistoryQuery(PageQuery):
    """The query string of ``GET /vx11/spawns``; loads as the ledger's page arguments."""

    status = fields.List(
        Choice(STATUSES),
        load_default=list,
        metadata={
            "description": "Only spawns in these states, in any case (done is DONE): "
            "repeat it or separate with commas for several."
        },
    )
    correlation_id = fields.String(
        validate=CORRELATION_ID,
        metadata={"description": "Only spawns with this correlation_id."},
    )

    @post_load
    def _page_arguments(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        spawn_filter = SpawnFilter(
            statuses=tuple(dict.fromkeys(SpawnStatus(value) for value in data["status"])),
            task_type=data.get("task_type"),
            correlation_id=data.get("correlation_id"),
            since=data.get("since"),
            until=data.get("until"),
        )
        return {"filters": spawn_filter, "limit": data["limit"], "cursor": data.get("cursor")}


class SpawnSummary(SpawnRecord):
    """A record in a history page: without its output and live processes."""

    class Meta:
        exclude = ("stdout", "stderr", "processes")


SpawnPage = page_schema("SpawnPage", "spawns", SpawnSummary)


@functools.cache
def history_query(settings: Settings) -> type[Schema]:
    """The history's query, with this server's task types."""
    task_type = Choice(
        [r.name for r in runtimes.load(settings)],
        metadata={"description": "Only spawns of this task type (GET /vx11/runtimes)."},
    )
    return HistoryQuery.from_dict({"task_type": task_type}, name="HistoryQuery")


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("spawns", __name__, __doc__)

    blp.teardown_request(forget_unused_note)

    @blp.post("/spawn")
    @requires(Scope.SPAWN, window=SPAWN_TARGET)
    @blp.arguments(request_schema(settings), example=spawn_example(settings))
    @blp.response(200, SpawnAnswer)
    @blp.alt_response(409, response="CONFLICT")
    @blp.doc(parameters=[IDEMPOTENCY_PARAMETER])
    def create_spawn(spawn_request):
        """Submit a spawn

        Queue python, shell or bash code while the spawner window is open.

        A closed window is a semantic refusal: HTTP 200 with ``error: off_by_policy``.

        An ``Idempotency-Key`` header (1 to 255 visible ASCII characters; else 422) makes
        retries safe: the same request with the same key, from the same token, within 24 h
        gets the first answer back (header ``Idempotent-Replayed: true``) and queues
        nothing; a different request with that key is 409 ``idempotency_key_reused``. A
        retry that arrives while the first is still being served waits up to 2 s for its
        answer, else 409 ``idempotency_key_in_progress`` with ``Retry-After``. A refusal or
        a failure does not use the key up.
        """
        svc = services()
        key = idempotency_key()
        spawn = decoded(spawn_request)
        if key is None:
            return accept(svc, spawn)
        return accept_once(svc, spawn_request, spawn, key)

    @blp.get("/spawn/<ident>")
    @blp.get("/result/<ident>")
    @requires(Scope.READ)
    @blp.arguments(RecordQuery, location="query")
    @blp.response(200, SpawnDetail)
    @blp.alt_response(404, response="NOT_FOUND")
    def get_spawn(query, ident: str):
        """Read a spawn

        The spawn's record, by ``spawn_id`` or ``spawn_uuid`` (``/vx11/result/<ident>``
        is the MVP's path to the same). ``?wait=<seconds>`` (up to 60) answers as soon as
        the spawn is terminal, or when the wait runs out. While it runs, ``processes``
        shows its live processes, and ``stdout`` and ``stderr`` the output so far.
        Another token's spawn is 404, as an unknown one (admin reads all)."""
        svc = services()
        record = svc.ledger.get(ident, owner=owner_filter())
        if query["wait"] and not is_terminal(record):
            record = wait_for_end(svc, record["spawn_uuid"], query["wait"])
        return encoded(with_progress(svc, record), query["encoding"])

    @blp.get("/spawns")
    @requires(Scope.READ)
    @blp.arguments(history_query(settings), location="query")
    @blp.response(200, SpawnPage)
    @blp.alt_response(400, response="BAD_REQUEST")
    def list_spawns(query):
        """The spawn history

        Newest first: ``{"spawns": [...], "next_cursor": str|null}``. Only the
        caller's own spawns (admin: everyone's).

        Each item is the spawn's record as ``GET /vx11/spawn/<id>`` gives it,
        *without* the heavy fields (code, stdin, stdout, stderr) and the live
        ``processes``: read one spawn for those.

        Query: ``status`` (a spawn state; repeat it or separate with commas for
        several), ``task_type``, ``correlation_id``, ``since`` (created at or after)
        and ``until`` (created before), ISO 8601 with naive meaning UTC; ``limit`` 1 to
        200 (50); and ``cursor``, a page's ``next_cursor``, for the page after it.
        Pages stay stable while spawns arrive: following cursors repeats and skips
        nothing. ``next_cursor`` is null on the last page. A malformed query is 422
        naming the field; a cursor this server did not hand out is 400
        ``bad_cursor``."""
        query["filters"] = replace(query["filters"], owner=owner_filter())
        page = services().ledger.page(**query)
        return {"spawns": page.rows, "next_cursor": page.next_cursor}

    return blp
