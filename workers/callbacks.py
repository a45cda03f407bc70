"""The callback task ``vx11.callback``: POST a finished spawn's record to its
``callback_url``, signed, retried with backoff, each attempt written on the record.

The spawner queues it (:func:`workers.spawner.finished`) for every terminal record that
has a callback. The URL policy, the pinned connection and the signature are
:mod:`vx11.core.callbacks`, shared with the gateway.
"""

from __future__ import annotations

import http.client
import json
import logging
import time
from typing import Any

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from vx11.core.callbacks import (
    CALLBACK_TASK,
    CallbackPolicy,
    CallbackRefused,
    Resolver,
    UnresolvableHost,
    backoff,
    signed_headers,
)
from vx11.core.config import Settings
from vx11.core.ledger import Ledger
from vx11.core.record import SpawnRecord
from vx11.core.times import iso_z, utcnow
from workers.celery import app
from workers.resources import ledger, settings

log = logging.getLogger(__name__)

PAYLOAD = SpawnRecord(exclude=("callbacks",))
"""The body: the record as ``GET /vx11/spawn/<id>`` gives it, but for ``callbacks``,
which the delivery itself is writing (so every attempt sends the same body)."""

DELIVERED, RETRYING, FAILED = "delivered", "retrying", "failed"
"""An attempt's ``outcome``; the last attempt's is the delivery's: delivered or failed."""


def payload(record: dict[str, Any]) -> bytes:
    """The JSON body delivered for ``record``."""
    return json.dumps(PAYLOAD.dump({**record, "processes": None}), separators=(",", ":")).encode()


def attempt_delivery(
    record: dict[str, Any], cfg: Settings, attempt: int, resolve: Resolver | None = None
) -> dict[str, Any]:
    """Deliver ``record`` once (attempt number ``attempt``, from 1) and describe how it
    went, as the entry :func:`record_attempt` appends: ``outcome`` retrying means the
    caller should try again after ``retry_in`` seconds."""
    at, started = utcnow(), time.monotonic()
    entry: dict[str, Any] = {"at": iso_z(at), "attempt": attempt}
    retryable = False
    try:
        if not cfg.callback_secret:
            raise CallbackRefused("callbacks are disabled on this worker (no VX11_CALLBACK_SECRET)")
        # Vetted again, now: the configuration or the host's DNS answer may have changed
        # since the gateway accepted it, and the POST goes to the addresses vetted here.
        destination = CallbackPolicy.from_settings(cfg, resolve).vet(record["callback_url"])
        body = payload(record)
        status = destination.post(
            body, signed_headers(cfg.callback_secret, body), cfg.callback_timeout
        )
    except UnresolvableHost as exc:
        entry["error"], retryable = str(exc), True
    except CallbackRefused as exc:
        entry["error"] = f"refused: {exc}"
    except (OSError, http.client.HTTPException, SoftTimeLimitExceeded) as exc:
        entry["error"], retryable = _describe(exc, cfg), True
    else:
        entry["status_code"] = status
        retryable = status >= 500 or status == 429
    entry["duration_ms"] = round((time.monotonic() - started) * 1000)
    if 200 <= entry.get("status_code", 0) < 300:
        entry["outcome"] = DELIVERED
    elif retryable and attempt < cfg.callback_max_attempts:
        entry["outcome"], entry["retry_in"] = RETRYING, backoff(attempt, cfg.callback_backoff_base)
    else:
        entry["outcome"] = FAILED
    return entry


def record_attempt(store: Ledger, spawn_uuid: str, entry: dict[str, Any]) -> None:
    """Append ``entry`` to the spawn's ``callbacks`` (:meth:`Ledger.append_callback`)."""
    store.append_callback(spawn_uuid, entry)


def _describe(exc: BaseException, cfg: Settings) -> str:
    if isinstance(exc, TimeoutError | SoftTimeLimitExceeded):
        return f"no answer within {cfg.callback_timeout:g} s"
    return f"{type(exc).__name__}: {exc}"[:300]


def _time_limits() -> tuple[float, float]:
    # A receiver that trickles its answer a byte at a time never trips the socket
    # timeout; the soft limit ends such an attempt (recorded, retried), the hard one
    # is only the backstop.
    soft = settings().callback_timeout * 3 + 5
    return soft, soft + 10


_SOFT_LIMIT, _HARD_LIMIT = _time_limits()


@app.task(
    name=CALLBACK_TASK,
    bind=True,
    ignore_result=True,
    soft_time_limit=_SOFT_LIMIT,
    time_limit=_HARD_LIMIT,
)
def deliver_callback(self: Task, spawn_uuid: str) -> None:
    """POST the spawn's record to its ``callback_url``: 2xx is delivered; a connection
    error, 5xx or 429 is tried again after ``VX11_CALLBACK_BACKOFF_BASE`` * 2**n
    seconds, up to ``VX11_CALLBACK_MAX_ATTEMPTS`` attempts; any other answer, or a URL
    the policy now refuses, is final. Deliveries are at least once: a redelivered
    task may POST again."""
    store, cfg = ledger(), settings()
    record = store.get(spawn_uuid)
    if not record.get("callback_url"):
        return
    attempt = self.request.retries + 1
    entry = attempt_delivery(record, cfg, attempt)
    record_attempt(store, spawn_uuid, entry)
    level = logging.WARNING if entry["outcome"] == FAILED else logging.INFO
    log.log(level, "callback of spawn %s, attempt %d: %s", spawn_uuid, attempt, entry)
    if entry["outcome"] == RETRYING:
        raise self.retry(countdown=entry["retry_in"], max_retries=cfg.callback_max_attempts - 1)
