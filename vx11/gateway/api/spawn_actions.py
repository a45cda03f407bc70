"""Acting on one spawn: ``POST /vx11/spawn/<id>/cancel`` and its live event stream,
``GET /vx11/spawn/<id>/events`` (Server-Sent Events, served by :mod:`vx11.gateway.stream`)."""

from __future__ import annotations

from urllib.parse import quote

from flask import Response, request, stream_with_context
from marshmallow import Schema

from vx11.core.config import Settings
from vx11.core.errors import NotFound
from vx11.core.record import SpawnDetail
from vx11.core.tokens import Scope
from vx11.gateway.api.auth import authenticated_blueprint, owner_filter, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.api.spawn_request import encoding_field
from vx11.gateway.lifecycle import cancel
from vx11.gateway.services import services
from vx11.gateway.stream import LAST_EVENT_ID, LAST_EVENT_ID_PARAMETER, event_stream, last_event_id

EVENT_STREAM = {
    "description": "Server-Sent Events, each with its ``id:``: ``state``, ``stdout``, "
    "``stderr``, then ``end`` (its data: the terminal record); ``error`` if Redis is lost "
    "mid-stream.",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}
ARTIFACT = {
    "description": "The artifact's exact bytes.",
    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
}
NOTHING_LEFT = {
    "description": "The client's ``Last-Event-ID`` is the stream's ``end``: nothing is "
    "left to send, and EventSource stops reconnecting."
}


class EventsQuery(Schema):
    """The query string of ``GET /vx11/spawn/<id>/events``."""

    encoding = encoding_field("utf8: output events as text; base64: as their exact bytes.")


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("spawn_actions", __name__, __doc__, url_prefix="/vx11/spawn")

    @blp.post("/<ident>/cancel")
    @requires(Scope.SPAWN)
    @blp.response(200, SpawnDetail)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.alt_response(409, response="CONFLICT")
    def cancel_spawn(ident: str):
        """Cancel a spawn

        Cancel a queued or running spawn; the record as it stands after (a running one
        normally CANCELLED already). A finished spawn: 409 ``already_finished``.
        Another token's spawn is 404 (admin may cancel any)."""
        return cancel(services(), ident, owner=owner_filter())

    @blp.get("/<ident>/events")
    @requires(Scope.READ)
    @blp.arguments(EventsQuery, location="query")
    @blp.alt_response(400, response="BAD_REQUEST")
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.doc(parameters=[LAST_EVENT_ID_PARAMETER], responses={200: EVENT_STREAM, 204: NOTHING_LEFT})
    def spawn_events(query, ident: str):
        """Follow a spawn

        Server-Sent Events: ``state`` changes, ``stdout``/``stderr`` text as the code
        produces it, then ``end`` with the terminal record; each event carries its
        ``id:``. A late client replays the stream, a finished spawn's too (once its
        stream has expired, a replay made from the record, ids ``0-1`` to ``0-4``). A
        ``Last-Event-ID`` header resumes strictly after that event (400 ``bad_request``
        if it is no event id); when it names the ``end``, the answer is 204.
        ``?encoding=base64``: each ``stdout``/``stderr`` event carries ``base64``, the
        exact bytes, instead of ``text``, and the ``end`` record gives them so too."""
        svc = services()
        record = svc.ledger.get(ident, owner=owner_filter())  # 404 before the stream starts
        after = last_event_id(request.headers.get(LAST_EVENT_ID))
        body = event_stream(svc, record, after, query["encoding"])
        if body is None:
            return Response(status=204)
        return Response(
            stream_with_context(body),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @blp.get("/<ident>/artifacts/<path:path>")
    @requires(Scope.READ)
    @blp.alt_response(404, response="NOT_FOUND")
    @blp.doc(responses={200: ARTIFACT})
    def get_artifact(ident: str, path: str):
        """Read an artifact

        The bytes of a file the spawn kept (its ``artifacts`` patterns; the record
        lists them with their size and SHA-256), as ``application/octet-stream``. A
        path the spawn did not keep is 404, as is another token's spawn (admin reads
        all)."""
        svc = services()
        record = svc.ledger.get(ident, owner=owner_filter())
        content = svc.ledger.artifact(record["spawn_uuid"], path)
        if content is None:
            raise NotFound(f"spawn {record['spawn_id']} kept no artifact {path[:200]!r}")
        name = path.rsplit("/", 1)[-1]
        return Response(
            content,
            mimetype="application/octet-stream",
            headers={
                "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}",
                "X-Content-Type-Options": "nosniff",
            },
        )

    return blp
