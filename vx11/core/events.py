"""A spawn's live events: one Redis stream per spawn, written by whoever changes the
spawn (the worker, or the gateway when it cancels a queued one) and read by the gateway
for ``?wait=`` and the Server-Sent Events stream. A reader that comes late replays
the stream from its start; the ledger stays the record of truth.

Events: ``state`` (``{"status": ...}``), ``stdout`` and ``stderr`` (``{"text": ...}``,
the captured output as it is produced) and ``end`` (the terminal record's summary).
Cancel requests for running spawns are keys beside the streams.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis

STREAM_PREFIX = "vx11:events:"
CANCEL_PREFIX = "vx11:cancel:"
LIVE_PREFIX = "vx11:live:"
LIVE_TTL = 10
"""Seconds a running spawn's live snapshot lasts unless its worker refreshes it (each
second): a snapshot gone means the worker running it is gone."""
STREAM_MAXLEN = 20_000
"""Entries kept per stream, at most (output beyond the captured bytes is never sent)."""
STREAM_TTL = 3600
"""Seconds a finished spawn's stream stays readable; the ledger keeps the record."""
CANCEL_TTL = 86_400

END = "end"


def stream_key(spawn_uuid: str) -> str:
    return f"{STREAM_PREFIX}{spawn_uuid}"


def cancel_key(spawn_uuid: str) -> str:
    return f"{CANCEL_PREFIX}{spawn_uuid}"


def live_key(spawn_uuid: str) -> str:
    return f"{LIVE_PREFIX}{spawn_uuid}"


@dataclass(frozen=True)
class Event:
    """One entry of a spawn's stream: its stream id (what ``Last-Event-ID`` names), its
    kind (``state``, ``stdout``, ``stderr``, ``end``) and its data."""

    id: str
    kind: str
    data: dict[str, Any]


class SpawnEvents:
    """Append, read and wait for the events of spawns kept in ``redis``."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def append(self, spawn_uuid: str, kind: str, data: dict[str, Any]) -> None:
        self.redis.xadd(
            stream_key(spawn_uuid),
            {"kind": kind, "data": json.dumps(data)},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )

    def finish(self, spawn_uuid: str, summary: dict[str, Any]) -> None:
        """Append the ``end`` event and let the stream (and any cancel request) expire."""
        pipe = self.redis.pipeline()
        pipe.xadd(
            stream_key(spawn_uuid),
            {"kind": END, "data": json.dumps(summary, default=str)},
            maxlen=STREAM_MAXLEN,
            approximate=True,
        )
        pipe.expire(stream_key(spawn_uuid), STREAM_TTL)
        pipe.delete(cancel_key(spawn_uuid), live_key(spawn_uuid))
        pipe.execute()

    def read(self, spawn_uuid: str, after: str = "0", block_ms: int | None = None) -> list[Event]:
        """Events after ``after`` (an event id; ``0`` from the start), waiting up to
        ``block_ms`` for the first one when there is none yet."""
        # make_redis's client speaks RESP2, where the answer is always a list:
        # [[stream, [(id, fields), ...]], ...], all in bytes.
        reply = cast(
            list[list[Any]],
            self.redis.xread({stream_key(spawn_uuid): after}, block=block_ms, count=500),
        )
        events = []
        for _key, entries in reply or []:
            for entry_id, fields in entries:
                events.append(
                    Event(
                        entry_id.decode(),
                        fields[b"kind"].decode(),
                        json.loads(fields[b"data"]),
                    )
                )
        return events

    def request_cancel(self, spawn_uuid: str) -> None:
        self.redis.set(cancel_key(spawn_uuid), b"1", ex=CANCEL_TTL)

    def cancel_requested(self, spawn_uuid: str) -> bool:
        return bool(self.redis.exists(cancel_key(spawn_uuid)))

    def set_live(self, spawn_uuid: str, snapshot: dict[str, Any]) -> None:
        """The running spawn's processes now; also its worker's heartbeat."""
        self.redis.set(live_key(spawn_uuid), json.dumps(snapshot), ex=LIVE_TTL)

    def live(self, spawn_uuids: list[str]) -> dict[str, dict[str, Any]]:
        """The live snapshots of those of ``spawn_uuids`` that have one."""
        if not spawn_uuids:
            return {}
        raws = self.redis.mget([live_key(u) for u in spawn_uuids])
        return {u: json.loads(raw) for u, raw in zip(spawn_uuids, raws, strict=True) if raw}
