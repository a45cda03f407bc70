"""Per-token request rates on the spawn and window endpoints, counted in Redis so every
gateway process and replica shares one count per token.

The counting is the ``limits`` library's moving window (the engine flask-limiter is built
on; flask-limiter itself checks before the token is verified, so it cannot key by it):
a rate of ``n`` per ``m`` seconds lets at most ``n`` requests through in any ``m``-second
span, so a quiet token may send its ``n`` at once. A refused request takes no place in
the window. Timestamps are the gateway's clock: replicas on several hosts need them in
sync (NTP), or a fast clock counts a little short.
"""

from __future__ import annotations

import math
import time
from fractions import Fraction

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.storage import RedisStorage
from limits.strategies import MovingWindowRateLimiter
from redis import Redis

from vx11.core.config import Settings
from vx11.core.errors import RateLimited
from vx11.core.tokens import Scope, TokenInfo

KEY_PREFIX = "vx11:ratelimit"
LIMITED_SCOPES = frozenset({Scope.SPAWN, Scope.WINDOW})
"""Requests to endpoints needing these scopes are counted: submit, cancel, open, close."""
LONGEST_SPAN = 10
"""Longest span, seconds, a fractional rate is counted over (0.3/s: 3 in any 10 s)."""


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
    """The request-rate check of every gateway process, on the gateway's Redis."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        # The gateway's own connection pool: its timeouts, and a down Redis raises
        # redis.exceptions.ConnectionError (a 503), as everywhere else in the gateway.
        storage = RedisStorage(
            settings.redis_url, connection_pool=redis.connection_pool, key_prefix=KEY_PREFIX
        )
        self.limiter = MovingWindowRateLimiter(storage)
        self.default_per_second = settings.rate_limit_per_second

    def check(self, token: TokenInfo, scope: Scope) -> None:
        """Count a request by ``token`` to an endpoint needing ``scope``; raise
        :class:`~vx11.core.errors.RateLimited` if it is over the token's rate."""
        if scope not in LIMITED_SCOPES:
            return
        per_second = token.rate_limit_per_second
        if per_second is None:
            per_second = self.default_per_second
        if per_second <= 0:  # 0: no limit
            return
        item = rate_item(per_second)
        if self.limiter.hit(item, token.token_id):
            return
        reset_at = self.limiter.get_window_stats(item, token.token_id).reset_time
        limit = describe(item)
        raise RateLimited(
            f"this token is over its rate limit of {limit} on spawn and window requests",
            retry_after=max(1, math.ceil(reset_at - time.time())),
        )
