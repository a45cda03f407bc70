"""Policy windows (SOLO_MADRE): nothing runs for a target unless its window is open.

A window is one Redis key per target holding JSON, written with a native TTL, so it
expires by itself and every gateway process and replica sees the same windows.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from redis import Redis

POLICY = "SOLO_MADRE"
SPAWN_TARGET = "spawner"
"""The window that gates spawns."""
KEY_PREFIX = "vx11:window:"


def key_for(target: str) -> str:
    return f"{KEY_PREFIX}{target}"


@dataclass(frozen=True)
class Window:
    target: str
    window_id: str
    opened_at: datetime
    expires_at: datetime
    reason: str | None

    def to_json(self) -> str:
        data = asdict(self)
        data["opened_at"] = self.opened_at.isoformat()
        data["expires_at"] = self.expires_at.isoformat()
        return json.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Window:
        data = json.loads(raw)
        data["opened_at"] = datetime.fromisoformat(data["opened_at"])
        data["expires_at"] = datetime.fromisoformat(data["expires_at"])
        return cls(**data)

    def ttl_remaining(self, now: datetime | None = None) -> int:
        left = (self.expires_at - (now or datetime.now(UTC))).total_seconds()
        return max(0, round(left))


class WindowStore:
    """Open, close and read the policy windows kept in ``redis``."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def open(self, target: str, ttl_seconds: int, reason: str | None = None) -> Window:
        """Open ``target``'s window for ``ttl_seconds``, replacing any open one."""
        now = datetime.now(UTC)
        window = Window(
            target=target,
            window_id=str(uuid.uuid4()),
            opened_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            reason=reason,
        )
        self.redis.set(key_for(target), window.to_json(), ex=ttl_seconds)
        return window

    def close(self, target: str) -> Window | None:
        """Close ``target``'s window; the window that was open, if any."""
        raw = self.redis.getdel(key_for(target))
        return Window.from_json(raw) if raw else None

    def get(self, target: str) -> Window | None:
        """``target``'s open window, or None."""
        raw = self.redis.get(key_for(target))
        return Window.from_json(raw) if raw else None

    def open_windows(self, targets: tuple[str, ...]) -> list[Window]:
        raws = self.redis.mget([key_for(t) for t in targets])
        return [Window.from_json(raw) for raw in raws if raw]
