"""Spawns in a batch: ``POST /vx11/spawns/batch``, many spawn requests in one.

Each item is what ``POST /vx11/spawn`` would take, and its result what that would have
answered, in the same order, with the HTTP status it would have had (``status_code``):
the accepted spawn, the policy's refusal, or the item's own error (its validation, its
rate limit, its token's quota, a dependency down). Each item is admitted as a request
of its own would be (:mod:`vx11.gateway.admission`): one rate-limit unit, one read of the
window, one audit entry. An ``Idempotency-Key`` covers the whole batch: a retry gets
the first answer back; a retry after a try that died half-way finds each spawn that
try recorded (each item's spawn keeps the batch's key with its index) and answers it.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from flask import g, jsonify, request
from marshmallow import Schema, ValidationError, fields, validate
from redis.exceptions import RedisError

from vx11.core.config import Settings
from vx11.core.errors import ValidationFailed, VX11Error
from vx11.core.ledger.store import AlreadyAccepted
from vx11.core.policy import SPAWN_TARGET
from vx11.core.tokens import Scope
from vx11.gateway.admission import Admitted
from vx11.gateway.api.auth import HEADER, admitted, authenticated_blueprint, caller, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.api.errors import UNAVAILABLE
from vx11.gateway.api.spawn_request import decoded, request_schema, spawn_example
from vx11.gateway.api.spawns import (
    ANSWER,
    IDEMPOTENCY_PARAMETER,
    REPLAYED,
    forget_unused_note,
    idempotency_key,
)
from vx11.gateway.idempotency import Attempt, fingerprint
from vx11.gateway.services import Services, services
from vx11.gateway.submit import resume, submit_spawn


def batch_schema(settings: Settings) -> type[Schema]:
    return Schema.from_dict(
        {
            "spawns": fields.List(
                fields.Dict(),
                required=True,
                validate=validate.Length(
                    min=1,
                    max=settings.max_batch,
                    error=f"1 to {settings.max_batch} spawn requests (VX11_MAX_BATCH)",
                ),
                metadata={
                    "description": "Spawn requests, each a body of POST /vx11/spawn "
                    f"(SpawnRequest); at most {settings.max_batch} (VX11_MAX_BATCH)."
                },
            )
        },
        name="SpawnBatch",
    )


class BatchAnswer(Schema):
    results = fields.List(
        fields.Dict(),
        metadata={
            "description": "In the order of the request's spawns, each what POST "
            "/vx11/spawn would have answered for it (a SpawnAnswer, or an error: error, "
            "message, fields...), with its status_code."
        },
    )


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("batches", __name__, __doc__)
    blp.teardown_request(forget_unused_note)
    item_schema = request_schema(settings)

    @blp.post("/spawns/batch")
    @requires(Scope.SPAWN, window=SPAWN_TARGET)
    @blp.arguments(batch_schema(settings), example={"spawns": [spawn_example(settings)] * 2})
    @blp.response(200, BatchAnswer)
    @blp.alt_response(409, response="CONFLICT")
    @blp.doc(parameters=[IDEMPOTENCY_PARAMETER])
    def create_batch(batch):
        """Submit spawns in a batch

        Up to ``VX11_MAX_BATCH`` spawn requests at once; ``results`` answers each in
        order, as ``POST /vx11/spawn`` would have, with its ``status_code``. Each item
        counts as one request against the token's rate limit and is audited. An
        ``Idempotency-Key`` covers the whole batch, as for one spawn."""
        svc = services()
        key = idempotency_key()
        g.note_used = True  # the request's own admission is the first item's: see _results
        if key is None:
            return {"results": _results(svc, item_schema, batch["spawns"], None)}
        with svc.idempotency.attempt(caller().token_id, key, batch) as attempt:
            if attempt.replay is not None:
                return jsonify(attempt.replay), {REPLAYED: "true"}
            answer = {"results": _results(svc, item_schema, batch["spawns"], attempt)}
            svc.idempotency.answer(attempt, answer)
            return answer

    return blp


def _results(
    svc: Services, schema: Schema, items: list[dict[str, Any]], attempt: Attempt | None
) -> list[dict[str, Any]]:
    results = []
    for index, item in enumerate(items):
        entry = admitted() if index == 0 else None
        try:
            if entry is None:
                entry = svc.admission.admit(request.headers[HEADER], Scope.SPAWN, SPAWN_TARGET)
            results.append(_one(svc, schema, item, entry, attempt, index))
        except VX11Error as exc:
            results.append({**exc.to_dict(), "status_code": exc.status})
        except Exception as exc:
            results.append(_unavailable(exc))
        finally:  # a note no spawn took is taken now, not left to the sweeper
            if entry is not None and entry.spawn_uuid and not _used(results):
                with contextlib.suppress(RedisError):
                    svc.unpublished.take(entry.spawn_uuid)
    return results


def _one(
    svc: Services,
    schema: Schema,
    item: dict[str, Any],
    entry: Admitted,
    attempt: Attempt | None,
    index: int,
) -> dict[str, Any]:
    try:
        spawn_request = schema.load(item)
    except ValidationError as exc:
        raise ValidationFailed(fields=exc.messages) from None
    spawn = decoded(spawn_request)
    ledger_fields = None
    if attempt is not None:  # the batch's key, with the item's index, and the item
        digest = hashlib.sha256(f"{attempt.redis_key}#{index}".encode()).hexdigest()
        item_print = fingerprint(caller().token_id, spawn_request)
        ledger_fields = {"idempotency_key": digest, "request_fingerprint": item_print}
    try:
        answer = submit_spawn(svc, spawn, entry, ledger_fields)
    except AlreadyAccepted as earlier:  # an earlier try of this batch recorded it
        assert ledger_fields is not None
        record = resume(svc, earlier.record, ledger_fields["request_fingerprint"])
        answer = {**record, "status": "QUEUED"}
    return {**ANSWER.dump(answer), "status_code": 200}


def _used(results: list[dict[str, Any]]) -> bool:
    """Whether the last item's noted uuid became a spawn (then its note is the
    spawn's to take, as a single request's is)."""
    return bool(results) and results[-1].get("spawn_uuid") is not None


def _unavailable(exc: Exception) -> dict[str, Any]:
    for kind, code, message in UNAVAILABLE:
        if isinstance(exc, kind):
            return {"error": code, "message": message, "status_code": 503}
    raise exc
