"""What the gateway checks and prepares once, when a process starts."""

from __future__ import annotations

import logging
from pathlib import Path

import redis.exceptions

from vx11.gateway.services import Services

log = logging.getLogger(__name__)


class StartupRefused(RuntimeError):
    """Raised when the gateway must not serve with the configuration it was given."""


def prepare_storage(svc: Services) -> None:
    """Make the data directory and the ledger's tables (idempotent)."""
    if svc.settings.effective_database_url.startswith("sqlite"):
        Path(svc.settings.data_dir).mkdir(parents=True, exist_ok=True)
    svc.ledger.create_schema()


def check_production_tokens(svc: Services) -> None:
    """In production, refuse to start while no real token exists (the development
    token is never accepted there)."""
    if not svc.settings.production:
        return
    try:
        count = svc.tokens.count()
    except redis.exceptions.RedisError as exc:
        raise StartupRefused(f"production mode: cannot check tokens in Redis ({exc})") from exc
    if count == 0:
        raise StartupRefused(
            "production mode: no API token exists and the development token is refused; "
            "create one with `vx11 token create --local --label <who> --scope admin`"
        )
