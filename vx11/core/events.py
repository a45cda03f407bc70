"""A spawn's live events: one Redis stream per spawn, written by whoever changes the
spawn (the worker, or the gateway when it cancels a queued one) and read by the gateway
for ``?wait=`` and the Server-Sent Events stream. A reader that comes late replays
the stream from its start, or resumes after the id of the last event it had; the ledger
stays the record of truth.

Events: ``state`` (``{"status": ...}``), ``stdout`` and ``stderr`` (``{"text": ...}``,
the captured output as it is produced, with ``"base64"``, its exact bytes, when the
text is not them: :func:`output_event`) and ``end`` (the terminal record's summary).
Cancel requests for running spawns are keys beside the streams.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence
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

STATE = "state"
OUTPUT = ("stdout", "stderr")
END = "end"
READ_COUNT = 500
"""Entries one read fetches, at most."""
MAX_ID_PART = 2**64 - 1
"""The largest either half of a stream entry's id (``<ms>-<seq>``) may be."""


def stream_key(spawn_uuid: str) -> str:
    return f"{STREAM_PREFIX}{spawn_uuid}"


def cancel_key(spawn_uuid: str) -> str:
    return f"{CANCEL_PREFIX}{spawn_uuid}"


def live_key(spawn_uuid: str) -> str:
    return f"{LIVE_PREFIX}{spawn_uuid}"


def parse_id(value: str) -> tuple[int, int]:
    """A stream entry's id, ``<milliseconds>-<sequence>``, as the pair of numbers it is
    ordered by; ValueError if ``value`` is no such id."""
    ms, dash, seq = value.partition("-")
    if not (dash and ms.isdigit() and seq.isdigit() and ms.isascii() and seq.isascii()):
        raise ValueError(f"not a stream entry id: {value[:40]!r}")
    parsed = int(ms), int(seq)
    if max(parsed) > MAX_ID_PART:
        raise ValueError(f"not a stream entry id: {value[:40]!r}")
    return parsed


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

    def send(
        self,
        spawn_uuid: str,
        entries: Sequence[tuple[str, dict[str, Any]]] = (),
        *,
        live: dict[str, Any] | None = None,
        check_cancel: bool = False,
    ) -> bool:
        """In one round trip: append ``entries`` (``(kind, data)``, in order), set the
        live snapshot (the running spawn's processes now, also its worker's heartbeat,
        lasting :data:`LIVE_TTL`) to ``live`` unless None and, with ``check_cancel``,
        ask whether a cancel is requested; whether one is (False when not asked).
        Nothing to do: no round trip at all."""
        pipe = self.redis.pipeline(transaction=False)
        key = stream_key(spawn_uuid)
        for kind, data in entries:
            pipe.xadd(
                key,
                {"kind": kind, "data": json.dumps(data)},
                maxlen=STREAM_MAXLEN,
                approximate=True,
            )
        if live is not None:
            pipe.set(live_key(spawn_uuid), json.dumps(live), ex=LIVE_TTL)
        if check_cancel:
            pipe.exists(cancel_key(spawn_uuid))
        if not len(pipe):
            return False
        replies = pipe.execute()
        return check_cancel and bool(replies[-1])

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
            self.redis.xread({stream_key(spawn_uuid): after}, block=block_ms, count=READ_COUNT),
        )
        return [_event(entry) for _key, entries in reply or [] for entry in entries]

    def replay(self, spawn_uuid: str, after: str = "0") -> Iterator[Event]:
        """Every event after ``after`` the stream holds now, read a page at a time."""
        while True:
            events = self.read(spawn_uuid, after=after)
            yield from events
            if len(events) < READ_COUNT:
                return
            after = events[-1].id

    def last(self, spawn_uuid: str) -> Event | None:
        """The stream's newest event; None when the stream is empty or gone (expired)."""
        entries = cast(list[Any], self.redis.xrevrange(stream_key(spawn_uuid), count=1))
        return _event(entries[0]) if entries else None

    def output_so_far(self, spawn_uuid: str) -> dict[str, bytes] | None:
        """``{"stdout": ..., "stderr": ...}``: the bytes the spawn's current run has
        streamed so far (the output events since the stream's last ``state``: a retry's
        run starts afresh); None when there is no stream."""
        output: dict[str, list[bytes]] | None = None
        for event in self.replay(spawn_uuid):
            if output is None or event.kind == STATE:
                output = {name: [] for name in OUTPUT}
            if event.kind in output:
                output[event.kind].append(event_bytes(event.data))
        return None if output is None else {name: b"".join(parts) for name, parts in output.items()}

    def request_cancel(self, spawn_uuid: str) -> None:
        self.redis.set(cancel_key(spawn_uuid), b"1", ex=CANCEL_TTL)

    def cancel_requested(self, spawn_uuid: str) -> bool:
        return bool(self.redis.exists(cancel_key(spawn_uuid)))

    def live(self, spawn_uuids: list[str]) -> dict[str, dict[str, Any]]:
        """The live snapshots of those of ``spawn_uuids`` that have one."""
        if not spawn_uuids:
            return {}
        raws = self.redis.mget([live_key(u) for u in spawn_uuids])
        return {u: json.loads(raw) for u, raw in zip(spawn_uuids, raws, strict=True) if raw}


def output_event(text: str, data: bytes) -> dict[str, str]:
    """An output event's data: ``text``, and ``data`` as base64 when ``text`` is not
    exactly it (bytes that are not UTF-8, or a character cut between two events)."""
    event = {"text": text}
    if text.encode("utf-8") != data:
        event["base64"] = base64.b64encode(data).decode("ascii")
    return event


def event_bytes(data: dict[str, str]) -> bytes:
    """The exact bytes of an output event's data."""
    if "base64" in data:
        return base64.b64decode(data["base64"])
    return data["text"].encode("utf-8")


def _event(entry: Any) -> Event:
    """An event from a stream entry as the RESP2 client gives it: (id, fields), in bytes."""
    entry_id, fields = entry
    return Event(entry_id.decode(), fields[b"kind"].decode(), json.loads(fields[b"data"]))
