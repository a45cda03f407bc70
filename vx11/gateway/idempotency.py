"""Idempotency keys: a request retried with the same ``Idempotency-Key`` gets the answer
the first one got, and the work behind it is done once.

A key lives in Redis under ``vx11:idem:``, scoped by the caller's token. The one
request that wins ``SET NX`` holds a short-lived *pending* marker while it works, then
replaces it with its answer, kept 24 h. A concurrent request with the same key waits
briefly for that answer; a request that ends without one (refused, or failed) releases
the key, so the client's retry can still succeed. The spawn a key accepted also keeps
the key in the ledger (:attr:`Attempt.ledger_fields`): a request whose process died
after writing it, once its marker has lapsed, leaves a retry that finds that spawn
instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import RedisError

from vx11.core.errors import IdempotencyKeyInProgress, IdempotencyKeyReused

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
"""The request header that carries the key."""
KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")
"""A valid key: 1 to 255 visible ASCII characters."""
KEY_PREFIX = "vx11:idem:"
ANSWER_TTL = 24 * 3600
"""Seconds a key replays the answer of the request that first used it."""
PENDING_TTL = 60
"""Seconds an unfinished request holds its key: should its process die, the key frees
itself after this, rather than refusing the client's retries for a day."""
WAIT_FOR_PENDING = 2.0
"""Seconds a request waits for a concurrent one with its key before answering 409."""
POLL_INTERVAL = 0.05
"""Seconds between looks at a pending key while waiting."""
RETRY_AFTER = 1
"""Seconds a client told ``idempotency_key_in_progress`` should wait before retrying."""

# Compare-and-set on the exact marker this request wrote: a request whose marker expired
# and was taken over must not release or overwrite the newer one.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_ANSWER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


def is_valid_key(value: str) -> bool:
    return KEY_PATTERN.fullmatch(value) is not None


def key_for(scope: str, key: str) -> str:
    """The Redis key of ``key`` used by ``scope`` (a token label); hashed, so any
    label and key make a short key that cannot collide with another pair's."""
    pair = json.dumps([scope, key], separators=(",", ":"))
    return KEY_PREFIX + hashlib.sha256(pair.encode()).hexdigest()


def fingerprint(scope: str, request: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``scope`` and the validated ``request``: the same
    request however its body was spelt (key order, spacing, defaults left out)."""
    canonical = json.dumps([scope, request], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Attempt:
    """One request's use of a key: either the first request's ``replay``, or the
    ``marker`` this request holds the key with until it answers."""

    redis_key: str
    fingerprint: str
    replay: dict[str, Any] | None = None
    marker: str | None = None
    answered: bool = False

    @property
    def ledger_fields(self) -> dict[str, str]:
        """What the spawn this attempt accepts records of its key: the ledger keeps
        one spawn per (owner, key) for good, where Redis keeps the answer 24 h."""
        return {
            "idempotency_key": self.redis_key.removeprefix(KEY_PREFIX),
            "request_fingerprint": self.fingerprint,
        }


class IdempotencyKeys:
    """The idempotency keys kept in ``redis``."""

    def __init__(self, redis: Redis, *, wait: float = WAIT_FOR_PENDING) -> None:
        self.redis = redis
        self.wait = wait
        self._release_script = redis.register_script(_RELEASE)
        self._answer_script = redis.register_script(_ANSWER)

    @contextmanager
    def attempt(self, scope: str, key: str, request: Mapping[str, Any]) -> Iterator[Attempt]:
        """Use ``key`` for ``request`` on behalf of ``scope``.

        Yields an :class:`Attempt` carrying the answer to replay, or holding the key;
        a holder that leaves without :meth:`answer` (an exception, a refusal) releases
        the key. Raises :class:`~vx11.core.errors.IdempotencyKeyReused` when the key
        belongs to a different request, and :class:`~vx11.core.errors.IdempotencyKeyInProgress`
        when another request holds it for longer than the wait.
        """
        attempt = self._claim(key_for(scope, key), fingerprint(scope, request))
        try:
            yield attempt
        finally:
            if attempt.marker is not None and not attempt.answered:
                self._let_go(attempt)

    def answer(self, attempt: Attempt, answer: Mapping[str, Any]) -> None:
        """Keep ``answer`` as what the key of ``attempt`` (held) replays for 24 h."""
        if attempt.marker is None:
            raise ValueError("only the request holding the key answers for it")
        stored = json.dumps({"fingerprint": attempt.fingerprint, "answer": answer})
        attempt.answered = True
        try:
            kept = self._answer_script(
                keys=[attempt.redis_key], args=[attempt.marker, stored, ANSWER_TTL]
            )
        except RedisError:  # the spawn is accepted: its answer must not turn into a 503
            log.warning("could not keep the answer of idempotency key %s", attempt.redis_key)
            self._let_go(attempt)  # a retry then finds the spawn in the ledger
            return
        if not kept:  # held past PENDING_TTL: another request has the key now
            log.warning("idempotency key %s expired before its answer was kept", attempt.redis_key)

    def _claim(self, redis_key: str, request_print: str) -> Attempt:
        deadline = time.monotonic() + self.wait
        while True:
            marker = json.dumps({"fingerprint": request_print, "pending": uuid.uuid4().hex})
            if self.redis.set(redis_key, marker, nx=True, ex=PENDING_TTL):
                return Attempt(redis_key, request_print, marker=marker)
            raw = self.redis.get(redis_key)
            if raw is None:  # released or expired since the SET: try again at once
                continue
            entry = json.loads(raw)
            if entry["fingerprint"] != request_print:
                raise IdempotencyKeyReused()
            if "answer" in entry:
                return Attempt(redis_key, request_print, replay=entry["answer"])
            if time.monotonic() >= deadline:
                raise IdempotencyKeyInProgress(retry_after=RETRY_AFTER)
            time.sleep(POLL_INTERVAL)

    def _let_go(self, attempt: Attempt) -> None:
        assert attempt.marker is not None  # only an attempt holding the key lets it go
        try:
            self._release_script(keys=[attempt.redis_key], args=[attempt.marker])
        except RedisError:  # the request's own outcome matters more; the marker expires
            log.warning("could not release idempotency key %s", attempt.redis_key)
