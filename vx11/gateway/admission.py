"""Whether a request may reach its view, decided in one Redis round trip: its token
(known, not revoked, not expired, with the scope the view needs), its request rate
(:mod:`vx11.gateway.ratelimit`) and, for a spawn, the spawner window, with the new
spawn's uuid noted as not yet published (:mod:`vx11.core.unpublished`).

One Lua script does all of it, in the order the checks answer: 401 ``invalid_token``,
403 ``insufficient_scope``, 429 ``rate_limited``, then the window (a closed one is the
view's refusal, not an error). A request refused at a step is not counted by the steps
after it: a 401 or 403 takes no place in the rate window, and a refused or closed
request notes nothing. The development token is not in Redis: the script skips its
token step, and a request that needs neither a count nor a window makes no round trip.

A token's own rate (``rate_limit_per_second``) is fixed when it is made, so each process
keeps it once it has read the token; the first request of a token a process has not
seen yet, on a counted endpoint, reads the token first (two round trips, once).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, cast

from limits import RateLimitItem
from redis import Redis

from vx11.core.errors import InsufficientScope, InvalidToken
from vx11.core.policy import Window
from vx11.core.policy import key_for as window_key
from vx11.core.times import iso_z, utcnow
from vx11.core.tokens import (
    DEVELOPMENT,
    LAST_USED_RESOLUTION,
    TOKEN_ID_LENGTH,
    Scope,
    TokenInfo,
    TokenStore,
    hash_token,
)
from vx11.core.tokens import key_for as token_key
from vx11.core.unpublished import KEY as UNPUBLISHED_KEY
from vx11.gateway.ratelimit import COUNT, LIMITED_SCOPES, RateLimits

_SCRIPT = (
    COUNT
    + """
-- KEYS: the token's hash, its rate list, the window, the unpublished notes
-- ARGV: 1 '1' to check the token; 2 the scope required; 3 now (ISO 8601, seconds);
-- 4 the token is touched if last used at or before this (same form); 5 'stop': stop
-- after the token; 6 the rate's requests ('0': not counted); 7 its span, seconds;
-- 8 now (Unix time); 9 '1' to read the window; 10 the uuid noted if it is open
local token = {}
if ARGV[1] == '1' then
  token = redis.call('HGETALL', KEYS[1])
  if #token == 0 then return {'invalid'} end
  local fields = {}
  for i = 1, #token, 2 do fields[token[i]] = token[i + 1] end
  local expires = fields['expires_at']
  if expires and expires ~= '' and ARGV[3] >= expires then return {'invalid'} end
  local scopes = fields['scopes']
  if not scopes or scopes == '' then scopes = 'window,spawn,read' end
  local allowed = false
  for scope in string.gmatch(scopes, '[^,]+') do
    -- every scope grants read
    if scope == ARGV[2] or ARGV[2] == 'read' then allowed = true end
  end
  if not allowed then return {'scope', token} end
  local used = fields['last_used_at']
  if not used or used == '' or used <= ARGV[4] then
    redis.call('HSET', KEYS[1], 'last_used_at', ARGV[3])
  end
  if ARGV[5] == 'stop' then return {'token', token} end
end
local limit = tonumber(ARGV[6])
if limit > 0 then
  local oldest = count(KEYS[2], limit, tonumber(ARGV[7]), ARGV[8])
  if oldest then return {'limited', token, oldest} end
end
local window = false
if ARGV[9] == '1' then
  window = redis.call('GET', KEYS[3])
  if window and ARGV[10] ~= '' then redis.call('ZADD', KEYS[4], ARGV[8], ARGV[10]) end
end
return {'ok', token, window}
"""
)


_UNKNOWN = object()


@dataclass(frozen=True)
class Admitted:
    """A request let through: its token and, for a view gated by a window, that window
    (None: closed) and, when open, the uuid noted for the spawn it may record."""

    token: TokenInfo
    window: Window | None = None
    spawn_uuid: str | None = None


class Admission:
    """The checks before every authenticated view, on the gateway's Redis."""

    def __init__(self, redis: Redis, tokens: TokenStore, rate_limits: RateLimits) -> None:
        self.tokens, self.rate_limits = tokens, rate_limits
        self._script = redis.register_script(_SCRIPT)
        self._own_rates: dict[str, float | None] = {}
        """Token hash -> the token's own rate (None: it has none), as read once."""

    def admit(self, token: str, scope: Scope, window: str | None = None) -> Admitted:
        """Admit a request with ``token`` to a view needing ``scope`` and, with
        ``window``, reading that target's window (and noting a spawn uuid if it is
        open). Raises :class:`~vx11.core.errors.InvalidToken`,
        :class:`~vx11.core.errors.InsufficientScope` or
        :class:`~vx11.core.errors.RateLimited`; Redis errors pass through."""
        counted = scope in LIMITED_SCOPES
        if self.tokens.is_development(token):
            item = self.rate_limits.item_for(None) if counted else None
            if item is None and not window:
                return Admitted(DEVELOPMENT)  # nothing to ask Redis
            return self._run(None, scope, item, window)
        token_hash = hash_token(token)
        if not counted and not window:
            return Admitted(self._read(token_hash, scope))
        item = None
        if counted:
            own_rate = self._own_rates.get(token_hash, _UNKNOWN)
            if own_rate is _UNKNOWN:
                own_rate = self._remember(token_hash, self._read(token_hash, scope))
            item = self.rate_limits.item_for(cast(float | None, own_rate))
        return self._run(token_hash, scope, item, window)

    def _read(self, token_hash: str, scope: Scope) -> TokenInfo:
        """The token, checked (and touched), with no count and no window."""
        reply = self._call(token_hash, scope, stop_after_token=True)
        return self._checked(token_hash, reply, scope)

    def _run(
        self,
        token_hash: str | None,
        scope: Scope,
        item: RateLimitItem | None,
        window: str | None,
    ) -> Admitted:
        spawn_uuid = str(uuid.uuid4()) if window else None
        reply = self._call(token_hash, scope, item=item, window=window, spawn_uuid=spawn_uuid)
        info = DEVELOPMENT if token_hash is None else self._checked(token_hash, reply, scope)
        if reply[0] == b"limited":
            assert item is not None
            raise self.rate_limits.refusal(item, float(reply[2]))
        raw = reply[2] if window else None
        if not raw:
            return Admitted(info)
        return Admitted(info, Window.from_json(raw), spawn_uuid)

    def _call(
        self,
        token_hash: str | None,
        scope: Scope,
        *,
        stop_after_token: bool = False,
        item: RateLimitItem | None = None,
        window: str | None = None,
        spawn_uuid: str | None = None,
    ) -> list[Any]:
        now = utcnow()
        rate_key = ""
        if item is not None:
            owner = token_hash[:TOKEN_ID_LENGTH] if token_hash else DEVELOPMENT.token_id
            rate_key = self.rate_limits.key_for(item, owner)
        keys = [
            token_key(token_hash) if token_hash else "",
            rate_key,
            window_key(window) if window else "",
            UNPUBLISHED_KEY,
        ]
        args = [
            "1" if token_hash else "0",
            str(scope),
            iso_z(now, timespec="seconds"),
            iso_z(now - LAST_USED_RESOLUTION, timespec="seconds"),
            "stop" if stop_after_token else "",
            item.amount if item else 0,
            item.get_expiry() if item else 0,
            repr(now.timestamp()),
            "1" if window else "0",
            spawn_uuid or "",
        ]
        reply: list[Any] = self._script(keys=keys, args=args)
        return reply

    def _checked(self, token_hash: str, reply: list[Any], scope: Scope) -> TokenInfo:
        """The token of ``reply``, or the 401 or 403 the script found."""
        if reply[0] == b"invalid":
            raise InvalidToken()
        data = reply[1]
        info = TokenInfo.from_redis(token_hash, dict(zip(data[::2], data[1::2], strict=True)))
        if reply[0] == b"scope" or not info.allows(scope):
            raise InsufficientScope(f"this token lacks the {scope} scope", required=str(scope))
        if info.expired():
            raise InvalidToken()
        return info

    def _remember(self, token_hash: str, info: TokenInfo) -> float | None:
        """Keep the token's own rate; that rate."""
        if len(self._own_rates) >= 10_000:  # tokens are few; never grow without bound
            self._own_rates.clear()
        self._own_rates[token_hash] = info.rate_limit_per_second
        return info.rate_limit_per_second
