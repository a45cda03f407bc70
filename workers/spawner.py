"""The spawner task ``vx11.spawn``: claim the spawn's record, run its code in the
sandbox, record the terminal state, and return the same summary as the Celery result."""

from __future__ import annotations

import base64
import codecs
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.exceptions
from celery import Task
from celery.exceptions import Reject

from vx11.core import logs
from vx11.core.config import Settings
from vx11.core.dispatch import SPAWN_TASK, publish_callback
from vx11.core.errors import IllegalTransition
from vx11.core.events import LIVE_TTL, STATE, SpawnEvents, output_event
from vx11.core.ledger import Ledger
from vx11.core.policy import SPAWN_TARGET, Window
from vx11.core.states import SpawnStatus
from vx11.core.times import utcnow
from workers.celery import app
from workers.resources import (
    events,
    ledger,
    requeued_while_database_down,
    settings,
    windows,
)
from workers.sandbox import (
    ACTIVE,
    Limits,
    Outcome,
    SandboxConfig,
    SandboxError,
    Watcher,
    run_sandboxed,
)
from workers.sandbox.artifacts import Collected
from workers.sandbox.levels import choose
from workers.shutdown import DEADLINE, ShutdownDeadline

log = logging.getLogger(__name__)


SUMMARY_FIELDS = (
    "spawn_id",
    "spawn_uuid",
    "status",
    "reason",
    "task_type",
    "exit_code",
    "stdout",
    "stderr",
    "stdout_truncated",
    "stderr_truncated",
    "duration_ms",
    "worker",
    "cpu_time_ms",
    "peak_memory_kb",
    "sandbox",
)


class SpawnWatcher(Watcher):
    """Streams a running spawn's output to its events as it comes, and stops the run
    when a cancel is requested or the worker's shutdown grace has run out. Redis trouble
    never stops a run: events are a view, the ledger is the record.

    Output is sent at once when the stream has been quiet for :attr:`COALESCE` seconds,
    else gathered until then (or the next tick): a program that writes a line at a time
    costs one stream entry per burst, not one per line.

    A tick asks Redis, in one round trip, whether a cancel is requested, and sends the
    output gathered and, once the run is a second old, the live snapshot. The claim
    asked for a cancel a moment ago (``cancel_requested``): a tick within half a
    :attr:`poll_interval` of the last ask asks nothing, so a short run makes no round
    trip of its own. No snapshot before :attr:`LIVE_EVERY`: nothing looks for one that
    young (the sweeper takes a run for lost only once it is ``LOST_AFTER`` old, and a
    job delivered again leaves its run alone for ``LIVE_TTL`` after its start)."""

    LIVE_EVERY = 1.0
    """Seconds between two live snapshots (which are also the worker's heartbeat), and
    from the claim to the first."""
    COALESCE = 0.05
    """Seconds output is gathered into one event while it keeps coming."""

    def __init__(
        self,
        spawn_uuid: str,
        events: SpawnEvents,
        shutdown: ShutdownDeadline = DEADLINE,
        *,
        cancel_requested: bool = False,
    ) -> None:
        self.spawn_uuid, self.events, self.shutdown = spawn_uuid, events, shutdown
        self.sample: Callable[[], dict[str, Any]] = lambda: {}
        self.checked = time.monotonic()
        """When Redis was last asked whether a cancel is requested."""
        self.cancel_requested = cancel_requested
        self.next_live = self.checked + self.LIVE_EVERY
        self.decoders = {
            name: codecs.getincrementaldecoder("utf-8")(errors="replace")
            for name in ("stdout", "stderr")
        }
        self.pending: list[list[Any]] = []
        """``[stream, text, bytes]`` not sent yet, in the order printed."""
        self.last_sent = 0.0
        self.shut_down = False
        """Stopped because the worker is stopping (not a cancel)."""

    def output(self, stream: str, data: bytes) -> None:
        text = self.decoders[stream].decode(data)
        if self.pending and self.pending[-1][0] == stream:
            self.pending[-1][1] += text
            self.pending[-1][2] += data
        else:
            self.pending.append([stream, text, data])
        if time.monotonic() - self.last_sent >= self.COALESCE:
            self.flush()

    def _take_pending(self) -> list[tuple[str, dict[str, Any]]]:
        pending, self.pending = self.pending, []
        self.last_sent = time.monotonic()
        return [(stream, output_event(text, data)) for stream, text, data in pending]

    def flush(self, final: bool = False) -> None:
        """Send what is pending; ``final``: also the end of a split UTF-8 character."""
        if final:
            for stream, decoder in self.decoders.items():
                if tail := decoder.decode(b"", final=True):
                    self.pending.append([stream, tail, b""])
        if not self.pending:
            return
        entries = self._take_pending()
        with _quietly("stream output of", self.spawn_uuid):
            self.events.send(self.spawn_uuid, entries)

    def started(self, sample: Callable[[], dict[str, Any]]) -> None:
        self.sample = sample

    def should_stop(self) -> bool:
        if self.shutdown.passed():
            self.shut_down = True
            return True
        now = time.monotonic()
        live_due = now >= self.next_live
        if not live_due and not self.pending and now - self.checked < self.poll_interval / 2:
            self.last_sent = now  # a tick sends what is pending: nothing was
            return self.cancel_requested  # asked less than a tick ago
        entries = self._take_pending()
        live = None
        if live_due:
            self.next_live = now + self.LIVE_EVERY
            live = self.sample()
        try:
            self.cancel_requested = self.events.send(
                self.spawn_uuid, entries, live=live, check_cancel=True
            )
        except redis.exceptions.RedisError as exc:
            if entries:
                log.warning("could not stream output of spawn %s: %s", self.spawn_uuid, exc)
            return False
        self.checked = now
        return self.cancel_requested


@contextlib.contextmanager
def _quietly(what: str, spawn_uuid: str):
    try:
        yield
    except redis.exceptions.RedisError as exc:
        log.warning("could not %s spawn %s: %s", what, spawn_uuid, exc)


def _announce_start(spawn_uuid: str) -> bool:
    """The ``state RUNNING`` event, and whether a cancel is already requested (a retry
    of a run cancelled when its worker was lost), in one round trip."""
    running = (STATE, {"status": SpawnStatus.RUNNING.value})
    with _quietly("announce the start of", spawn_uuid):
        return events().send(spawn_uuid, [running], check_cancel=True)
    return False


def finished(record: dict[str, Any]) -> dict[str, Any]:
    """Announce a terminal record on its event stream; its summary, the task's result."""
    result = summary(record)
    light = {k: v for k, v in result.items() if k not in ("stdout", "stderr")}
    with _quietly("announce the end of", record["spawn_uuid"]):
        events().finish(record["spawn_uuid"], light)
    if record.get("callback_url"):
        publish_callback(app, record["spawn_uuid"])
    return result


def sandbox_config() -> SandboxConfig:
    """The sandbox the worker chose at start (:class:`workers.SandboxStep`), or, outside
    a worker, the one :func:`workers.sandbox.levels.choose` picks now."""
    if ACTIVE.config is None:
        ACTIVE.config = choose(settings())
    return ACTIVE.config


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The Celery result: the record's outcome, JSON-safe."""
    return {key: record.get(key) for key in SUMMARY_FIELDS}


def terminal_state(outcome: Outcome) -> tuple[SpawnStatus, str | None]:
    """The spawn's state and reason, from how its run ended."""
    if outcome.stopped:
        return SpawnStatus.CANCELLED, "cancelled"
    if outcome.limit_hit in ("wall_time_limit", "cpu_time_limit"):
        return SpawnStatus.TIMEOUT, outcome.limit_hit
    if outcome.limit_hit:  # memory_limit, output_limit
        return SpawnStatus.FAILED, outcome.limit_hit
    if outcome.exit_code == 0:
        return SpawnStatus.DONE, None
    if outcome.term_signal:
        return SpawnStatus.FAILED, f"signal:{outcome.term_signal}"
    return SpawnStatus.FAILED, None


def limits_for(ttl_seconds: int, requested: dict[str, int] | None, cfg: Settings) -> Limits:
    """The run's limits: what the gateway resolved for the spawn, never past this
    worker's own maximums (a message could come from anyone who can write to the broker)."""
    asked = requested or {}

    def pick(name: str, default: int, maximum: int) -> int:
        return max(1, min(int(asked.get(name, default)), maximum))

    return Limits(
        wall_time=ttl_seconds,
        cpu_time=pick("cpu_time_limit", ttl_seconds, cfg.cpu_time_limit_max),
        memory_mb=pick("memory_limit_mb", cfg.memory_limit_mb, cfg.memory_limit_mb_max),
        max_processes=pick("max_processes", cfg.max_processes, cfg.max_processes_max),
        max_file_size_mb=pick("max_file_size_mb", cfg.max_file_size_mb, cfg.max_file_size_mb_max),
        output_bytes=pick("max_output_bytes", cfg.max_output_bytes, cfg.max_output_bytes_max),
    )


class SpawnFailed(Exception):
    """Raised by the spawn task, once the ledger holds the outcome, for a spawn that
    ended FAILED, TIMEOUT, CANCELLED or ERROR: Celery, Flower and ``celery result`` then
    show FAILURE with this message (``spawn-1a2b3c4d FAILED, exit 3``) rather than
    SUCCESS. It is one of the task's expected errors (``throws``): logged on one line
    without a traceback, never retried."""


UNSUCCESSFUL = {SpawnStatus.FAILED, SpawnStatus.TIMEOUT, SpawnStatus.CANCELLED, SpawnStatus.ERROR}


def outcome_of_task(result: dict[str, Any]) -> dict[str, Any]:
    """The task's result (a DONE spawn's summary, or a spawn not ended by this run),
    or :class:`SpawnFailed` raised for an unsuccessful end. The message names the spawn,
    its state, reason and exit code, never its output (Celery logs it)."""
    if result.get("status") not in UNSUCCESSFUL:
        return result
    parts = [f"{result.get('spawn_id')} {result.get('status')}"]
    if result.get("exit_code") is not None:
        parts.append(f"exit {result['exit_code']}")
    if result.get("reason"):
        parts.append(str(result["reason"]))
    raise SpawnFailed(", ".join(parts))


@app.task(name=SPAWN_TASK, bind=True, throws=(SpawnFailed,))
def spawn(self: Task, spawn_uuid: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """The ``vx11.spawn`` task: :func:`run_spawn`, its result as Celery shows it."""
    return outcome_of_task(run_spawn(self, spawn_uuid, *args, **kwargs))


def run_spawn(
    self: Task,
    spawn_uuid: str,
    task_type: str,
    code: str,
    ttl_seconds: int,
    stdin: str | None = None,
    window_id: str | None = None,
    correlation_id: str | None = None,
    limits: dict[str, int] | None = None,
    args: list[str] | None = None,
    attempt: int = 1,
    stdin_base64: str | None = None,
    merge_stderr: bool = False,
    files: list[dict[str, Any]] | None = None,
    artifacts: list[str] | None = None,
    max_artifact_bytes: int = 0,
) -> dict[str, Any]:
    """Run one spawn, as its ``attempt``-th start. A job whose record has already left
    QUEUED (a redelivery after a lost worker, or a spawn ended meanwhile) is never run a
    second time, unless its worker was lost and it asked for retries; one whose policy
    window has closed since it was accepted never starts (SOLO_MADRE)."""
    store, cfg = ledger(), settings()
    refusal = _policy_refusal(self, window_id)
    if refusal is not None:
        return _end_unstarted(store, spawn_uuid, *refusal)
    try:
        _claim(store, spawn_uuid, attempt, self.request.hostname)
    except IllegalTransition:
        retry = _after_lost_worker(store, spawn_uuid, attempt)
        if retry is None:
            return summary(store.get(spawn_uuid))
        attempt = retry
        _claim(store, spawn_uuid, attempt, self.request.hostname)
        logs.bind(attempt=attempt)  # this run's lines: the retry's number
    log.info(
        "spawn %s claimed",
        spawn_uuid,
        extra={"attempt": attempt, "worker": self.request.hostname, "task_type": task_type},
    )
    watcher = SpawnWatcher(spawn_uuid, events(), cancel_requested=_announce_start(spawn_uuid))
    try:
        outcome = run_sandboxed(
            task_type,
            code,
            stdin=base64.b64decode(stdin_base64) if stdin_base64 is not None else stdin,
            args=list(args or ()),
            merge_stderr=merge_stderr,
            files=[(f["path"], base64.b64decode(f["base64"])) for f in files or ()],
            artifacts=artifacts or (),
            artifact_bytes=min(max_artifact_bytes, cfg.max_artifact_bytes_max),
            limits=limits_for(ttl_seconds, limits, cfg),
            config=sandbox_config(),
            watcher=watcher,
        )
    except Exception as exc:
        log.exception("spawn %s: the sandbox failed", spawn_uuid)
        # A SandboxError's message is written for the user (bash not installed…); any
        # other error's may hold anything, and goes to the worker's log only.
        cause = str(exc) if isinstance(exc, SandboxError) else type(exc).__name__
        reason: str | None = f"sandbox_error: {cause}"[:128]
        record = _end_run(store, spawn_uuid, attempt, SpawnStatus.ERROR, reason=reason)
        return finished(record) if record else summary(store.get(spawn_uuid))
    watcher.flush(final=True)  # the stream holds all the output before its end
    status, reason = terminal_state(outcome)
    kept = _keep_artifacts(store, spawn_uuid, outcome.collected)
    if outcome.stopped and watcher.shut_down:
        status, reason = SpawnStatus.ERROR, "worker_shutdown"
    record = _end_run(
        store,
        spawn_uuid,
        attempt,
        status,
        reason=reason,
        exit_code=outcome.exit_code,
        stdout=outcome.stdout,
        stderr=outcome.stderr,
        stdout_raw=_unless_text(outcome.stdout_bytes, outcome.stdout),
        stderr_raw=_unless_text(outcome.stderr_bytes, outcome.stderr),
        stdout_truncated=outcome.stdout_truncated,
        stderr_truncated=outcome.stderr_truncated,
        duration_ms=outcome.duration_ms,
        cpu_time_ms=outcome.cpu_time_ms,
        peak_memory_kb=outcome.peak_memory_kb,
        sandbox=outcome.level,
        **kept,
    )
    if record is None:
        return summary(store.get(spawn_uuid))
    log.info(
        "spawn %s %s (exit %s)",
        spawn_uuid,
        status,
        outcome.exit_code,
        extra={
            "state": str(status),
            "reason": reason,
            "exit_code": outcome.exit_code,
            "duration_ms": outcome.duration_ms,
            "cpu_time_ms": outcome.cpu_time_ms,
            "peak_memory_kb": outcome.peak_memory_kb,
            "sandbox": outcome.level,
        },
    )
    return finished(record)


def _keep_artifacts(store: Ledger, spawn_uuid: str, collected: Collected | None) -> dict[str, Any]:
    """Keep the run's artifacts in the ledger; the record's fields that list them."""
    if collected is None:
        return {}
    store.keep_artifacts(spawn_uuid, [(a.path, a.data) for a in collected.artifacts])
    listed = [
        {"path": a.path, "size": len(a.data), "sha256": a.sha256} for a in collected.artifacts
    ]
    return {"artifacts": listed, "artifacts_truncated": collected.truncated}


def _unless_text(output: bytes, text: str) -> bytes | None:
    """The exact bytes, kept beside the text only when the text is not them."""
    return None if text.encode("utf-8") == output else output


POLICY_RETRIES = 10
"""Tries, 3 s apart, to read the policy window before a spawn is ended ERROR."""
POLICY_WAIT = 8.0
"""Seconds a job first waits in its pool process for Redis to answer again (a restart
takes a few), well inside Celery's soft time limit (ttl + 15 s): its retries go through
the broker, often that same Redis, which cannot take them while it is down."""


def _policy_refusal(task: Task, window_id: str | None) -> tuple[SpawnStatus, str] | None:
    """None when the window the spawn was accepted under is the one open now; else the
    state and reason to end it with. Redis down: the job, not yet started, waits and
    tries again, then gives up. A retry the broker cannot take ends it at once: the
    job is gone, and its record must not stay QUEUED."""
    try:
        window = _read_window(POLICY_WAIT if task.request.retries == 0 else 0.0)
    except redis.exceptions.RedisError as exc:
        if task.request.retries >= POLICY_RETRIES:
            return SpawnStatus.ERROR, "policy_unavailable"
        try:
            raise task.retry(countdown=3, max_retries=POLICY_RETRIES) from exc
        except Reject:  # Celery could not publish the retry
            return SpawnStatus.ERROR, "policy_unavailable"
    if window is None or window.window_id != window_id:
        return SpawnStatus.CANCELLED, "window_closed"
    return None


def _read_window(patience: float) -> Window | None:
    """The open spawner window (or None), read again every half second for up to
    ``patience`` seconds while Redis does not answer."""
    deadline = time.monotonic() + patience
    while True:
        try:
            return windows().get(SPAWN_TARGET)
        except redis.exceptions.RedisError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def _end_run(
    store: Ledger, spawn_uuid: str, attempt: int, status: SpawnStatus, **fields: Any
) -> dict[str, Any] | None:
    """End this run, the ``attempt``-th start, in ``status``: the record, or None if the
    record is no longer this run's. That happens when the sweeper took this worker for
    lost (cut off from Redis, not from the ledger) and a retry started or the spawn was
    ended meanwhile: the record stays theirs and this run's outcome is dropped."""
    try:
        return store.transition(spawn_uuid, status, attempt=attempt, **fields)
    except IllegalTransition:
        log.warning(
            "spawn %s: attempt %s ended after the record moved on; its outcome is dropped",
            spawn_uuid,
            attempt,
        )
        return None


def _end_unstarted(
    store: Ledger, spawn_uuid: str, status: SpawnStatus, reason: str
) -> dict[str, Any]:
    try:
        with requeued_while_database_down():
            record = store.transition(spawn_uuid, status, reason=reason)
    except IllegalTransition:
        return summary(store.get(spawn_uuid))
    log.info("spawn %s not run: %s", spawn_uuid, reason)
    return finished(record)


def _claim(store: Ledger, spawn_uuid: str, attempt: int, worker: str) -> dict[str, Any]:
    """QUEUED -> RUNNING as the ``attempt``-th start: a stale delivery of an earlier
    attempt cannot claim it (IllegalTransition)."""
    with requeued_while_database_down():
        return store.transition(
            spawn_uuid,
            SpawnStatus.RUNNING,
            attempt=attempt - 1,
            attempts=attempt,
            started_at=utcnow(),
            worker=worker,
        )


def _may_still_run(record: dict[str, Any]) -> bool:
    """Its run's heartbeat is there, or it started too recently to have written one."""
    if events().live([record["spawn_uuid"]]):
        return True
    started = record["started_at"]
    return started is not None and (utcnow() - started).total_seconds() < LIVE_TTL


def _after_lost_worker(store: Ledger, spawn_uuid: str, attempt: int) -> int | None:
    """Called when this delivery could not claim the spawn. If its record is RUNNING as
    this very attempt, the worker that ran it was lost (Celery handed the job back):
    with retries left (``max_retries``: only for such system failures, never for code
    that failed) the spawn goes back to QUEUED and the next attempt's number is
    returned, to run now; without, it ends ERROR ``worker_lost``. Anything else (a
    finished spawn, a stale delivery of an earlier attempt) is left as it is: None."""
    record = store.get(spawn_uuid)
    if record["status"] != SpawnStatus.RUNNING or (record["attempts"] or 0) != attempt:
        log.warning("spawn %s not run: record is %s", spawn_uuid, record["status"])
        return None
    if _may_still_run(record):
        # A broker connection that dropped hands the job back (RabbitMQ at once, Redis
        # on restoring unacked jobs) while its run goes on: leave it to that run, and
        # to the sweeper if the run stops beating.
        log.warning("spawn %s delivered again while its run is alive: left to it", spawn_uuid)
        return None
    try:
        if attempt <= (record["max_retries"] or 0):
            store.transition(
                spawn_uuid, SpawnStatus.QUEUED, attempt=attempt, reason="retry: worker_lost"
            )
            log.warning("spawn %s lost its worker; starting attempt %s", spawn_uuid, attempt + 1)
            return attempt + 1
        finished(
            store.transition(spawn_uuid, SpawnStatus.ERROR, attempt=attempt, reason="worker_lost")
        )
    except IllegalTransition:
        pass  # the sweeper got there first
    return None
