"""API tokens: only their SHA-256 hashes are stored, in Redis.

Tokens are random (``vx11_<43 url-safe chars>``), so a plain SHA-256 is a sound
verifier: a lookup by hash never compares the secret itself, and the hash of a
guess tells an attacker nothing about the stored one. The development token is
compared with :func:`hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from redis import Redis

KEY_PREFIX = "vx11:token:"
INDEX_KEY = "vx11:tokens"
TOKEN_PREFIX = "vx11_"


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def key_for(token_hash: str) -> str:
    return f"{KEY_PREFIX}{token_hash}"


@dataclass(frozen=True)
class TokenInfo:
    token_id: str
    """The first 12 hex digits of the hash: safe to show, enough to revoke by."""
    label: str
    created_at: str


class TokenStore:
    """Create, verify, list and revoke tokens kept in ``redis``."""

    def __init__(self, redis: Redis, *, dev_token: str | None = None) -> None:
        self.redis = redis
        self.dev_token = dev_token

    def create(self, label: str) -> tuple[str, TokenInfo]:
        """A new token; the plain value is returned here and never stored."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_hash = hash_token(token)
        created_at = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        pipe = self.redis.pipeline()
        pipe.hset(key_for(token_hash), mapping={"label": label, "created_at": created_at})
        pipe.sadd(INDEX_KEY, token_hash)
        pipe.execute()
        return token, TokenInfo(token_hash[:12], label, created_at)

    def verify(self, token: str) -> str | None:
        """The label of ``token`` if it is valid, else None."""
        if self.dev_token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), self.dev_token.encode()
        ):
            return "development"
        label = self.redis.hget(key_for(hash_token(token)), "label")
        return label.decode() if label is not None else None

    def list(self) -> list[TokenInfo]:
        hashes = sorted(h.decode() for h in self.redis.smembers(INDEX_KEY))
        pipe = self.redis.pipeline()
        for token_hash in hashes:
            pipe.hgetall(key_for(token_hash))
        infos = []
        for token_hash, data in zip(hashes, pipe.execute(), strict=True):
            if data:
                infos.append(
                    TokenInfo(
                        token_hash[:12], data[b"label"].decode(), data[b"created_at"].decode()
                    )
                )
        return infos

    def revoke(self, token_id: str) -> bool:
        """Revoke the token whose id (hash prefix, at least 8 hex digits) is ``token_id``."""
        if len(token_id) < 8:
            return False
        matches = [
            h.decode() for h in self.redis.smembers(INDEX_KEY) if h.decode().startswith(token_id)
        ]
        if len(matches) != 1:
            return False
        pipe = self.redis.pipeline()
        pipe.delete(key_for(matches[0]))
        pipe.srem(INDEX_KEY, matches[0])
        pipe.execute()
        return True

    def count(self) -> int:
        return self.redis.scard(INDEX_KEY)
