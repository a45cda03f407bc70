"""Policy windows (SOLO_MADRE): nothing runs for a target unless its window is open.

A window is one Redis key per target holding JSON, written with a native TTL, so it
expires by itself and every gateway process and replica sees the same windows. Each
window opened is also tracked (:class:`OpenWindows`) until it is closed, replaced or
seen expired, so that a worker's sweeper can record its expiry in the audit log.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from redis import Redis

from vx11.core.audit import AuditEntry, AuditEvent, AuditLog
from vx11.core.times import iso_z, utcnow

POLICY = "SOLO_MADRE"
SPAWN_TARGET = "spawner"
"""The window that gates spawns."""
KEY_PREFIX = "vx11:window:"


def key_for(target: str) -> str:
    return f"{KEY_PREFIX}{target}"


@dataclass(frozen=True)
class Window:
    """One target's open window: the same ``window_id`` from its opening to its close
    or expiry, however often it is extended."""

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


# Atomic, so two gateways opening one target at once agree on the window: an open one
# is extended (its id and opening instant kept), a closed one opened anew.
_OPEN = """
local current = redis.call('GET', KEYS[1])
local window = cjson.decode(ARGV[1])
if current then
  local open = cjson.decode(current)
  window['window_id'] = open['window_id']
  window['opened_at'] = open['opened_at']
end
local encoded = cjson.encode(window)
redis.call('SET', KEYS[1], encoded, 'EX', ARGV[2])
return {encoded, current or false}
"""


@dataclass(frozen=True)
class Opened:
    """What opening a target's window did: ``window`` is open now; ``previous`` is the
    same window as it was before this open extended it (or shortened it), None when
    the target was closed and this opened a new one."""

    window: Window
    previous: Window | None = None

    @property
    def extended(self) -> bool:
        return self.previous is not None


class WindowStore:
    """Open, close and read the policy windows kept in ``redis``."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._open_script = redis.register_script(_OPEN)

    def open(self, target: str, ttl_seconds: int, reason: str | None = None) -> Opened:
        """Open ``target``'s window for ``ttl_seconds`` from now. A window already open
        stays the same window (its id, its opening instant), now ending then: spawns
        accepted under it stay startable, until the new end (later or earlier)."""
        now = datetime.now(UTC)
        asked = Window(
            target=target,
            window_id=str(uuid.uuid4()),
            opened_at=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            reason=reason,
        )
        raw, previous = self._open_script(
            keys=[key_for(target)], args=[asked.to_json(), ttl_seconds]
        )
        return Opened(Window.from_json(raw), Window.from_json(previous) if previous else None)

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


# --- windows that run out -------------------------------------------------------------------

OPEN_WINDOWS_KEY = "vx11:audit:open-windows"
"""Hash of the windows opened and not yet closed, replaced or seen expired:
window_id → JSON ``{target, opened_at, expires_at, expires, opened_by}``."""

# Atomic, so two gateways opening the same target at once cannot leave a replaced
# window tracked: a window is tracked only while it is the target's current one, and
# tracking it forgets the windows it replaced (those still running when it opened;
# one that had already run out is left for the sweeper to record as expired).
_TRACK = """
local current = redis.call('GET', KEYS[1])
if not current or cjson.decode(current)['window_id'] ~= ARGV[1] then return {} end
local replaced = {}
local tracked = redis.call('HGETALL', KEYS[2])
for i = 1, #tracked, 2 do
  local entry = cjson.decode(tracked[i + 1])
  if tracked[i] ~= ARGV[1] and entry['target'] == ARGV[3]
     and entry['expires'] > tonumber(ARGV[4]) then
    redis.call('HDEL', KEYS[2], tracked[i])
    replaced[#replaced + 1] = tracked[i]
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return replaced
"""


@dataclass(frozen=True)
class TrackedWindow:
    """What :class:`OpenWindows` keeps of a window, enough to record its expiry."""

    window_id: str
    target: str
    opened_at: str
    expires_at: str
    expires: float
    """``expires_at`` as a Unix time, for the comparisons made in Redis."""
    opened_by: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        del data["window_id"]
        return json.dumps(data)


class OpenWindows:
    """The windows not yet closed, replaced or recorded as expired, kept in ``redis``
    so that any worker can record an expiry, and exactly one does."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._track_script = redis.register_script(_TRACK)

    def track(self, window: Window, opened_by: str | None) -> str | None:
        """Track ``window`` (just opened) if it is still its target's window; the id of
        the window it replaced, if one was running."""
        tracked = TrackedWindow(
            window.window_id,
            window.target,
            iso_z(window.opened_at),
            iso_z(window.expires_at),
            window.expires_at.timestamp(),
            opened_by,
        )
        replaced = self._track_script(
            keys=[key_for(window.target), OPEN_WINDOWS_KEY],
            args=[window.window_id, tracked.to_json(), window.target, window.opened_at.timestamp()],
        )
        return replaced[0].decode() if replaced else None

    def forget(self, window_id: str) -> None:
        """Stop tracking a window that was closed."""
        self.redis.hdel(OPEN_WINDOWS_KEY, window_id)

    def expired(self, now: datetime | None = None) -> list[TrackedWindow]:
        """The tracked windows whose end has passed."""
        instant = (now or utcnow()).timestamp()
        # The client does not decode responses (make_redis): every reply is bytes.
        windows = cast(dict[bytes, bytes], self.redis.hgetall(OPEN_WINDOWS_KEY))
        tracked = [
            TrackedWindow(window_id.decode(), **json.loads(raw))
            for window_id, raw in windows.items()
        ]
        return [window for window in tracked if window.expires <= instant]

    def record_expired(self, audit_log: AuditLog, now: datetime | None = None) -> list[str]:
        """Record ``window_expired`` once for each tracked window that ran out; their ids.

        Several workers may sweep at once: the one whose HDEL removes the entry writes
        it. If that write fails, the entry is put back for a later sweep.
        """
        recorded = []
        for window in self.expired(now):
            raw = self.redis.get(key_for(window.target))
            if raw and Window.from_json(raw).window_id == window.window_id:
                continue  # Redis still holds it: this host's clock runs ahead
            if not self.redis.hdel(OPEN_WINDOWS_KEY, window.window_id):
                continue  # another sweeper has it
            try:
                audit_log.record(expired_entry(window))
            except Exception:
                self.redis.hsetnx(OPEN_WINDOWS_KEY, window.window_id, window.to_json())
                raise
            recorded.append(window.window_id)
        return recorded


def expired_entry(window: TrackedWindow) -> AuditEntry:
    return AuditEntry(
        AuditEvent.WINDOW_EXPIRED,
        target=window.target,
        window_id=window.window_id,
        token_label=window.opened_by,
        reason="ttl_elapsed",
        detail={"opened_at": window.opened_at, "expires_at": window.expires_at},
    )
