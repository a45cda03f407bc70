"""Connections shared by the gateway, the workers and the CLI."""

from __future__ import annotations

from redis import Redis

from vx11.core.config import Settings


def make_redis(settings: Settings) -> Redis:
    """The Redis of windows and tokens, with short timeouts: a down Redis is an error in
    seconds, never a hang."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=min(settings.redis_timeout, 1.0),
        health_check_interval=30,
    )
