"""Per-token request rates on the spawn and window endpoints, counted in Redis so every
gateway process and replica shares one count per token.

The counting is the ``limits`` library's moving window (the engine flask-limiter is built
on; flask-limiter itself checks before the token is verified, so it cannot key by it),
with its Redis lists and keys, done in the same Lua script as the token check
(:mod:`vx11.gateway.admission`), so a counted request costs no round trip of its own:
a rate of ``n`` per ``m`` seconds lets at most ``n`` requests through in any ``m``-second
span, so a quiet token may send its ``n`` at once. A refused request takes no place in
the window. Timestamps are the gateway's clock: replicas on several hosts need them in
sync (NTP), or a fast clock counts a little short.
"""

from __future__ import annotations

import functools
import math
import time
from fractions import Fraction

from limits import RateLimitItem, RateLimitItemPerSecond

from vx11.core.config import Settings
from vx11.core.errors import RateLimited
from vx11.core.tokens import Scope

KEY_PREFIX = "vx11:ratelimit"
LIMITED_SCOPES = frozenset({Scope.SPAWN, Scope.WINDOW})
"""Requests to endpoints needing these scopes are counted: submit, cancel, open, close."""
LONGEST_SPAN = 10
"""Longest span, seconds, a fractional rate is counted over (0.3/s: 3 in any 10 s)."""


@functools.lru_cache(maxsize=256)
def rate_item(per_second: float) -> RateLimitItem:
    """``per_second`` as ``n`` requests in any ``m`` seconds: the fraction ``n/m`` nearest
    to it with ``m`` at most :data:`LONGEST_SPAN` (20 → 20 per 1 s, 2.5 → 5 per 2 s,
    0.3 → 3 per 10 s); a rate below one per :data:`LONGEST_SPAN` seconds is one per
    ``1/per_second`` seconds, rounded (0.05 → 1 per 20 s)."""
    if per_second * LONGEST_SPAN < 1:
        return RateLimitItemPerSecond(1, max(1, round(1 / per_second)))
    fraction = Fraction(per_second).limit_denominator(LONGEST_SPAN)
    return RateLimitItemPerSecond(fraction.numerator, fraction.denominator)


def describe(item: RateLimitItem) -> str:
    unit = "second" if item.multiples == 1 else f"{item.multiples} seconds"
    return f"{item.amount} request{'s' if item.amount != 1 else ''} per {unit}"


class RateLimits:
    """The request-rate limits of every gateway process: which rate a token has, the
    Redis list its requests are counted in, and the refusal. The counting itself is
    :data:`COUNT`, run in the request's admission script (:mod:`vx11.gateway.admission`)."""

    def __init__(self, settings: Settings) -> None:
        self.default_per_second = settings.rate_limit_per_second

    def item_for(self, own_rate: float | None) -> RateLimitItem | None:
        """The rate of a token whose own rate is ``own_rate`` (None: the default), as
        ``n`` per ``m`` seconds; None: not limited."""
        per_second = own_rate
        if per_second is None:
            per_second = self.default_per_second
        if per_second <= 0:  # 0: no limit
            return None
        return rate_item(per_second)

    @staticmethod
    def key_for(item: RateLimitItem, token_id: str) -> str:
        """The Redis list of the requests of token ``token_id`` counted against ``item``
        (the limits library's key, so counts survive an upgrade)."""
        return f"{KEY_PREFIX}:{item.key_for(token_id)}"

    @staticmethod
    def refusal(item: RateLimitItem, oldest: float) -> RateLimited:
        """The 429 for a request over ``item`` whose window's oldest request counted was
        at ``oldest`` (Unix time): a place frees when that one leaves the window."""
        return RateLimited(
            f"this token is over its rate limit of {describe(item)} on spawn and window requests",
            retry_after=max(1, math.ceil(oldest + item.get_expiry() - time.time())),
        )


COUNT = """
local function count(key, limit, span, now)
  local entry = redis.call('LINDEX', key, limit - 1)
  if entry and tonumber(entry) >= tonumber(now) - span then return entry end
  redis.call('LPUSH', key, now)
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('EXPIRE', key, span)
  return false
end
"""
"""``count(key, limit, span, now)``, ``now`` a Unix time as text: a request counted in
the moving window of ``limit`` requests in any ``span`` seconds (the limits library's
list: newest first, one entry per request); or, when the window is full, not counted and
the oldest entry returned."""
