"""Which live worker offers which task type: one Redis hash, a field per worker.

A worker announces what it offers (each task type with its interpreter's version) when
it starts and again every :data:`INTERVAL` seconds, each announcement good for
:data:`LIFETIME`; it withdraws it when it stops. A worker that died without a word
drops out once its last announcement is stale. The gateway reads the hash to accept bash
or a declared task type only while a live worker offers it (python and shell queue while
no worker runs, as a spawn always could), to answer ``GET /vx11/runtimes`` and to show it
in ``/vx11/status``; every gateway reads the same hash, whichever worker host announced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from typing import cast

from redis import Redis

KEY = "vx11:offers"
INTERVAL = 10
"""Seconds between a worker's announcements."""
LIFETIME = 3 * INTERVAL
"""An announcement not renewed for this long is a worker gone."""


class Offers:
    """The announcements kept in ``redis``."""

    def __init__(self, redis: Redis, clock: Callable[[], float] = time.time) -> None:
        self.redis = redis
        self.clock = clock

    def announce(self, worker: str, task_types: Mapping[str, str | None]) -> None:
        """``worker`` offers ``task_types`` (name: version) for :data:`LIFETIME` more."""
        entry = {"task_types": dict(task_types), "until": self.clock() + LIFETIME}
        self.redis.hset(KEY, worker, json.dumps(entry))

    def withdraw(self, worker: str) -> None:
        self.redis.hdel(KEY, worker)

    def live(self) -> dict[str, dict[str, str | None]]:
        """Each live worker's task types (name: version), by worker; stale ones are
        removed on the way."""
        now = self.clock()
        entries = cast(dict[bytes, bytes], self.redis.hgetall(KEY))
        live, stale = {}, []
        for worker, raw in entries.items():
            entry = json.loads(raw)
            if entry["until"] < now:
                stale.append(worker)
            else:
                live[worker.decode()] = entry["task_types"]
        if stale:
            self.redis.hdel(KEY, *stale)
        return dict(sorted(live.items()))

    def offers(self, task_type: str) -> bool:
        """Whether a live worker offers ``task_type`` now (one Redis read)."""
        return any(task_type in task_types for task_types in self.live().values())
