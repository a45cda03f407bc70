"""A stopping worker's grace for the spawns it runs.

On a warm shutdown (SIGTERM: ``vx11 up`` stopping, ``docker compose stop``) Celery
stops taking jobs and waits for the running ones. A spawn may run for an hour, longer
than anyone waits for a stop, so the worker gives its running spawns
``VX11_SHUTDOWN_GRACE`` seconds: one that ends by then keeps its outcome; one still
running is stopped and ends ERROR ``worker_shutdown`` with the output it printed so far,
recorded before the worker exits (and before ``vx11 up`` stops Redis).

The deadline lives in memory shared with the pool processes, which run the spawns:
it is mapped when this module is imported, before the pool forks.
"""

from __future__ import annotations

import mmap
import struct
import time

from celery import signals

from vx11.core.config import Settings

_DOUBLE = struct.Struct("d")


class ShutdownDeadline:
    """A ``time.monotonic()`` deadline (CLOCK_MONOTONIC: one clock for every process),
    shared by the processes forked after it is made; 0 while the worker is not stopping."""

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, _DOUBLE.size)  # anonymous and shared across fork

    def start(self, grace: float) -> None:
        """The worker is stopping: running spawns have ``grace`` seconds from now."""
        if self._read() == 0.0:
            _DOUBLE.pack_into(self._memory, 0, time.monotonic() + max(0.0, grace))

    def passed(self) -> bool:
        deadline = self._read()
        return deadline != 0.0 and time.monotonic() >= deadline

    def _read(self) -> float:
        value: float = _DOUBLE.unpack_from(self._memory, 0)[0]
        return value


DEADLINE = ShutdownDeadline()


@signals.worker_shutting_down.connect
def _grace_starts(**_) -> None:
    DEADLINE.start(Settings.from_env().shutdown_grace)
