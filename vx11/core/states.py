"""Spawn states and the transitions between them, shared by the gateway and the workers.

::

    QUEUED ──► RUNNING ──► DONE | FAILED | TIMEOUT | CANCELLED | ERROR
       ▲          │
       └──────────┘ a retry, after its worker was lost (``max_retries``)
       └──────────────────────────────────► CANCELLED | ERROR

A terminal state never changes. :func:`check_transition` is the one rule book; the
ledger enforces it atomically with a compare-and-set on the current state.
"""

from __future__ import annotations

from enum import StrEnum

from vx11.core.errors import IllegalTransition


class SpawnStatus(StrEnum):
    QUEUED = "QUEUED"
    """Accepted and published; no worker has started it."""
    RUNNING = "RUNNING"
    """A worker claimed it and its code is executing in the sandbox."""
    DONE = "DONE"
    """The code exited with status 0."""
    FAILED = "FAILED"
    """The code exited non-zero or was killed by a signal it provoked."""
    TIMEOUT = "TIMEOUT"
    """The code hit its wall-clock or CPU-time limit and was killed."""
    CANCELLED = "CANCELLED"
    """Stopped on request or by policy before it could finish."""
    ERROR = "ERROR"
    """VX11 itself failed the spawn; ``reason`` says why."""

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {
        SpawnStatus.DONE,
        SpawnStatus.FAILED,
        SpawnStatus.TIMEOUT,
        SpawnStatus.CANCELLED,
        SpawnStatus.ERROR,
    }
)

#: For each state, the states it may be entered from.
ALLOWED_SOURCES: dict[SpawnStatus, frozenset[SpawnStatus]] = {
    SpawnStatus.QUEUED: frozenset({SpawnStatus.RUNNING}),  # only to retry a lost run
    SpawnStatus.RUNNING: frozenset({SpawnStatus.QUEUED}),
    SpawnStatus.DONE: frozenset({SpawnStatus.RUNNING}),
    SpawnStatus.FAILED: frozenset({SpawnStatus.RUNNING}),
    SpawnStatus.TIMEOUT: frozenset({SpawnStatus.RUNNING}),
    SpawnStatus.CANCELLED: frozenset({SpawnStatus.QUEUED, SpawnStatus.RUNNING}),
    SpawnStatus.ERROR: frozenset({SpawnStatus.QUEUED, SpawnStatus.RUNNING}),
}


def check_transition(current: SpawnStatus, target: SpawnStatus) -> None:
    """Raise :class:`IllegalTransition` unless ``current → target`` is allowed."""
    if current not in ALLOWED_SOURCES[target]:
        raise IllegalTransition(current, target)
