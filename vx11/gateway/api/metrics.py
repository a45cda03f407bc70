"""``GET /metrics``: the gateway's Prometheus metrics (:mod:`vx11.gateway.metrics`), for a token
with the ``read`` scope; and the timing and counting of every ``POST /vx11/spawn``
answer, whichever part of the gateway gave it."""

from __future__ import annotations

import logging
import time

from flask import Response, g, request

from vx11.core.config import Settings
from vx11.core.tokens import Scope
from vx11.gateway import metrics
from vx11.gateway.api.auth import authenticated_blueprint, requires
from vx11.gateway.api.blueprint import Blueprint
from vx11.gateway.services import services

log = logging.getLogger(__name__)

SPAWN_ENDPOINT = "spawns.create_spawn"
"""The view of ``POST /vx11/spawn``, whose answers are counted."""
REPLAYED = "Idempotent-Replayed"
EXPOSITION = {
    "description": "Prometheus' text format (version 0.0.4): see docs/operations.md.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def blueprint(settings: Settings) -> Blueprint:
    blp = authenticated_blueprint("metrics", __name__, __doc__, url_prefix=None)
    scraper = metrics.Scraper(settings.metrics_cache_seconds, settings.metrics_timeout)

    @blp.get("/metrics")
    @requires(Scope.READ)
    @blp.doc(responses={200: EXPOSITION})
    def prometheus_metrics():
        """Prometheus metrics

        Spawns accepted and refused (by reason), the time to answer a spawn request,
        spawns by state, the queues' depth, the open windows, the live workers and their
        sandbox level, and ``vx11_up`` for each dependency: a dependency that is down is
        reported, never an error."""
        return Response(scraper.exposition(services()), content_type=metrics.CONTENT_TYPE)

    # Refusals are answered from many places (authentication, the rate limiter, the
    # schema, the quota, the policy, the error handlers); the answer itself says which,
    # so every one is counted here, once, as the client saw it.
    @blp.before_app_request
    def _start_timer() -> None:
        if request.endpoint == SPAWN_ENDPOINT:
            g.vx11_spawn_started = time.perf_counter()

    @blp.after_app_request
    def _count_spawn_answer(response: Response) -> Response:
        started = g.pop("vx11_spawn_started", None)
        if request.endpoint != SPAWN_ENDPOINT:
            return response
        try:
            body = response.get_json(silent=True)
            error = body.get("error") if isinstance(body, dict) else None
            elapsed = time.perf_counter() - started if started is not None else None
            replayed = response.headers.get(REPLAYED) == "true"
            metrics.observe_spawn_answer(response.status_code, error, replayed, elapsed)
        except Exception:  # a metric is never worth a failed answer
            log.exception("could not count a spawn answer")
        return response

    return blp
