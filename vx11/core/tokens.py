"""API tokens and their scopes: only SHA-256 hashes are stored, in Redis.

Tokens are random (``vx11_<43 url-safe chars>``, a prefix secret scanners can look
for), so a plain SHA-256 is a sound verifier: a lookup by hash never compares the
secret itself, and the hash of a guess tells an attacker nothing about the stored one.
The development token is compared with :func:`hmac.compare_digest`.

Every request reads its token from Redis: a revoke or an expiry takes effect on the
next request, whichever gateway process serves it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, cast, overload

from redis import Redis
from redis.typing import EncodableT, FieldT

from vx11.core.times import iso_z, utcnow

KEY_PREFIX = "vx11:token:"
INDEX_KEY = "vx11:tokens"
TOKEN_PREFIX = "vx11_"
TOKEN_ID_LENGTH = 12
"""Hex digits of the hash that name a token: safe to show, enough to revoke by."""
LAST_USED_RESOLUTION = timedelta(seconds=60)
"""``last_used_at`` is rewritten at most this often, so reading a token stays one
round trip on most requests."""
DEVELOPMENT_ID = "development"


class Scope(StrEnum):
    ADMIN = "admin"
    """Manage tokens and read everything: every spawn, the audit log."""
    WINDOW = "window"
    """Open and close policy windows."""
    SPAWN = "spawn"
    """Submit spawns, and cancel its own."""
    READ = "read"
    """Read the status, the windows and its own spawns."""


SCOPES = tuple(scope.value for scope in Scope)
IMPLIED = {
    Scope.ADMIN: {Scope.READ},
    Scope.WINDOW: {Scope.READ},
    Scope.SPAWN: {Scope.READ},
    Scope.READ: set(),
}
"""What each scope grants besides itself: every scope may read what it may see."""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


def key_for(token_hash: str) -> str:
    return f"{KEY_PREFIX}{token_hash}"


@overload
def _iso_s(value: datetime) -> str: ...
@overload
def _iso_s(value: None) -> None: ...
@overload
def _iso_s(value: datetime | None) -> str | None: ...
def _iso_s(value: datetime | None) -> str | None:
    return iso_z(value, timespec="seconds")


def _parse(value: bytes | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.decode().replace("Z", "+00:00"))


@dataclass(frozen=True)
class TokenInfo:
    """What the gateway knows of a token: everything but the token itself."""

    token_id: str
    label: str
    scopes: tuple[str, ...]
    created_at: datetime | None
    expires_at: datetime | None = None
    last_used_at: datetime | None = None
    rate_limit_per_second: float | None = None
    """Overrides ``VX11_RATE_LIMIT_PER_SECOND`` for this token."""
    max_active_spawns: int | None = None
    """Overrides ``VX11_MAX_ACTIVE_SPAWNS`` for this token."""

    def allows(self, scope: str) -> bool:
        granted = {Scope(s) for s in self.scopes}
        for s in list(granted):
            granted |= IMPLIED[s]
        return Scope(scope) in granted

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN in self.scopes

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and (now or utcnow()) >= self.expires_at

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scopes"] = list(self.scopes)
        for name in ("created_at", "expires_at", "last_used_at"):
            data[name] = _iso_s(data[name])
        return data

    @classmethod
    def from_redis(cls, token_hash: str, data: dict[bytes, bytes]) -> TokenInfo:
        rate = data.get(b"rate_limit_per_second")
        active = data.get(b"max_active_spawns")
        scopes = data.get(b"scopes")
        return cls(
            token_id=token_hash[:TOKEN_ID_LENGTH],
            label=data[b"label"].decode(),
            # a token made before scopes existed could do everything but manage tokens
            scopes=tuple(scopes.decode().split(",")) if scopes else ("window", "spawn", "read"),
            created_at=_parse(data.get(b"created_at")),
            expires_at=_parse(data.get(b"expires_at")),
            last_used_at=_parse(data.get(b"last_used_at")),
            rate_limit_per_second=float(rate) if rate else None,
            max_active_spawns=int(active) if active else None,
        )


DEVELOPMENT = TokenInfo(DEVELOPMENT_ID, "development", SCOPES, None)
"""The development token: every scope, never accepted in production."""


class TokenStore:
    """Create, verify, list and revoke tokens kept in ``redis``."""

    def __init__(self, redis: Redis, *, dev_token: str | None = None) -> None:
        self.redis = redis
        self.dev_token = dev_token
        # HSET only if the key still exists: a concurrent revoke must stay revoked.
        self._touch = redis.register_script(
            "if redis.call('EXISTS', KEYS[1]) == 1 then "
            "redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1]) end"
        )

    def create(
        self,
        label: str,
        scopes: tuple[str, ...] | list[str],
        *,
        expires_at: datetime | None = None,
        rate_limit_per_second: float | None = None,
        max_active_spawns: int | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token; the plain value is returned here and never stored."""
        scopes = tuple(dict.fromkeys(Scope(s).value for s in scopes))
        if not scopes:
            raise ValueError("a token needs at least one scope")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token_hash = hash_token(token)
        created_at = utcnow().replace(microsecond=0)
        expires_at = expires_at.replace(microsecond=0) if expires_at else None
        info = TokenInfo(
            token_id=token_hash[:TOKEN_ID_LENGTH],
            label=label,
            scopes=scopes,
            created_at=created_at,
            expires_at=expires_at,
            rate_limit_per_second=rate_limit_per_second,
            max_active_spawns=max_active_spawns,
        )
        mapping: dict[FieldT, EncodableT] = {
            "label": label,
            "scopes": ",".join(scopes),
            "created_at": _iso_s(created_at),
        }
        if expires_at:
            mapping["expires_at"] = _iso_s(expires_at)
        if rate_limit_per_second is not None:
            mapping["rate_limit_per_second"] = repr(float(rate_limit_per_second))
        if max_active_spawns is not None:
            mapping["max_active_spawns"] = str(int(max_active_spawns))
        pipe = self.redis.pipeline()
        pipe.hset(key_for(token_hash), mapping=mapping)
        if info.expires_at:
            # Redis forgets it a day after it expires; until then it answers "expired".
            pipe.expireat(key_for(token_hash), info.expires_at + timedelta(days=1))
        pipe.sadd(INDEX_KEY, token_hash)
        pipe.execute()
        return token, info

    def is_development(self, token: str) -> bool:
        """Whether ``token`` is the development token (and it is accepted here)."""
        return self.dev_token is not None and hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), self.dev_token.encode()
        )

    def verify(self, token: str) -> TokenInfo | None:
        """The token's info if it is valid now (known, not revoked, not expired). The
        gateway checks a request's token with its rate and window in one round trip
        (:mod:`vx11.gateway.admission`); this is the same check on its own."""
        if self.is_development(token):
            return DEVELOPMENT
        token_hash = hash_token(token)
        # The client does not decode responses (make_redis): every reply is bytes.
        data = cast(dict[bytes, bytes], self.redis.hgetall(key_for(token_hash)))
        if not data:
            return None
        info = TokenInfo.from_redis(token_hash, data)
        now = utcnow()
        if info.expired(now):
            return None
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION:
            self._touch(keys=[key_for(token_hash)], args=[_iso_s(now)])
        return info

    def get(self, token_id: str) -> TokenInfo | None:
        token_hash = self._resolve(token_id)
        if token_hash is None:
            return None
        data = cast(dict[bytes, bytes], self.redis.hgetall(key_for(token_hash)))
        return TokenInfo.from_redis(token_hash, data) if data else None

    def list(self) -> list[TokenInfo]:
        hashes = sorted(h.decode() for h in cast(set[bytes], self.redis.smembers(INDEX_KEY)))
        pipe = self.redis.pipeline()
        for token_hash in hashes:
            pipe.hgetall(key_for(token_hash))
        infos = []
        for token_hash, data in zip(hashes, pipe.execute(), strict=True):
            if data:
                infos.append(TokenInfo.from_redis(token_hash, data))
            else:  # expired out of Redis: forget it
                self.redis.srem(INDEX_KEY, token_hash)
        return infos

    def _resolve(self, token_id: str) -> str | None:
        """The one stored hash starting with ``token_id`` (at least 8 hex digits)."""
        if len(token_id) < 8 or not all(c in "0123456789abcdef" for c in token_id):
            return None
        members = cast(set[bytes], self.redis.smembers(INDEX_KEY))
        matches = [h.decode() for h in members if h.decode().startswith(token_id)]
        return matches[0] if len(matches) == 1 else None

    def revoke(self, token_id: str) -> bool:
        """Revoke the token whose id (hash prefix, at least 8 hex digits) is ``token_id``."""
        token_hash = self._resolve(token_id)
        if token_hash is None:
            return False
        pipe = self.redis.pipeline()
        pipe.delete(key_for(token_hash))
        pipe.srem(INDEX_KEY, token_hash)
        pipe.execute()
        return True

    def count(self) -> int:
        return self.redis.scard(INDEX_KEY)
