"""The spawns a gateway has recorded and not yet confirmed published: one Redis sorted
set, each spawn's uuid scored with the instant it was noted.

A gateway accepts a spawn with one database commit (the record and its audit entry) and
one publish. It notes the spawn's uuid here before the commit, in the same Redis round
trip that checks the request's token, rate and window (:mod:`vx11.gateway.admission`),
and takes the note away once the job is published, before it answers
(:func:`vx11.gateway.submit.publish`). A note still here a while later is a gateway that
died (or stalled) between the two: its client got no answer, and the workers' sweeper
ends the spawn ERROR ``gateway_lost`` (:func:`workers.sweeper.end_unpublished`).

Whoever removes a note decides the spawn's fate, and :meth:`Unpublished.take` says who
did: a sweeper that takes it ends the spawn; a gateway that finds it already taken
knows the spawn was taken for lost, and does not answer it as queued.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import cast

from redis import Redis

KEY = "vx11:unpublished"


class Unpublished:
    """The notes kept in ``redis``."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def note(self, spawn_uuid: str) -> None:
        """Note ``spawn_uuid`` as recorded and not yet published."""
        self.redis.zadd(KEY, {spawn_uuid: time.time()})

    def fresh(self) -> Iterator[str]:
        """New spawn uuids, each noted before it is handed out."""
        while True:
            spawn_uuid = str(uuid.uuid4())
            self.note(spawn_uuid)
            yield spawn_uuid

    def take(self, spawn_uuid: str) -> bool:
        """Remove the note of ``spawn_uuid``: whether this call removed it (False: it
        was taken already, or never noted)."""
        return bool(self.redis.zrem(KEY, spawn_uuid))

    def noted(self, spawn_uuid: str) -> bool:
        return self.redis.zscore(KEY, spawn_uuid) is not None

    def all(self) -> set[str]:
        """Every uuid noted now."""
        members = cast(list[bytes], self.redis.zrange(KEY, 0, -1))
        return {member.decode() for member in members}

    def older_than(self, seconds: float) -> list[str]:
        """The uuids noted more than ``seconds`` ago, oldest first."""
        members = cast(list[bytes], self.redis.zrangebyscore(KEY, "-inf", time.time() - seconds))
        return [member.decode() for member in members]
