"""Following a spawn to its end for ``vx11 spawn ... --wait`` and ``vx11 spawn follow``:
its output streamed live from the gateway's Server-Sent Events (resumed after a break),
a progress line on a terminal, and the exit code its final state stands for."""

from __future__ import annotations

import base64
import queue
import sys
import threading
import time
from typing import Any, TextIO

import click

from vx11.cli.client import ApiError, Client, event_order
from vx11.cli.common import CliError, ExitCode, duration, stderr_is_terminal

ACTIVE = ("QUEUED", "RUNNING")
POLL_WAIT = 1.0
"""Seconds each ``?wait=`` read lasts when the event stream is lost and we poll."""
TICK = 0.1
"""Seconds between two frames of the progress line."""
RECONNECTS = 5
"""Times in a row a broken event stream is opened again before the record is read
instead (a gateway restarting, a proxy that cut the connection)."""
RECONNECT_DELAY = 0.25
"""Seconds before the first reconnection; each next one waits twice as long..."""
RECONNECT_DELAY_MAX = 2.0
"""...up to this."""

STATE_EXIT = {
    "TIMEOUT": ExitCode.TIMEOUT,
    "CANCELLED": ExitCode.CANCELLED,
    "ERROR": ExitCode.SPAWN_ERROR,
}


def exit_code_of(record: dict[str, Any]) -> int:
    """The exit code ``vx11`` ends with for a terminal ``record``: the job's own exit
    code when it ran to completion (DONE, FAILED; a signal N as 128+N, like a shell),
    else the code of its state."""
    status = record.get("status")
    if status in STATE_EXIT:
        return STATE_EXIT[status]
    code = record.get("exit_code")
    if status == "DONE":
        return code or 0
    if code is None or code == 0:  # FAILED without a usable code still fails
        return 1
    return 128 - code if code < 0 else code & 0xFF


def outcome_line(record: dict[str, Any]) -> str:
    """``spawn-1a2b3c4d DONE, exit 0, 48ms`` and the reason when there is one."""
    parts = [f"{record.get('spawn_id')} {record.get('status')}"]
    if record.get("exit_code") is not None:
        parts.append(f"exit {record['exit_code']}")
    if record.get("reason"):
        parts.append(str(record["reason"]))
    took = duration(record.get("duration_ms"))
    if took is not None:
        parts.append(took)
    return ", ".join(parts)


class Progress:
    """A one-line spinner on stderr while the spawn is QUEUED or RUNNING; on a terminal
    only, and only where the cursor stands at the start of a line."""

    FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
    ASCII_FRAMES = "|/-\\"

    def __init__(self, spawn_id: str, enabled: bool) -> None:
        self.spawn_id, self.enabled = spawn_id, enabled
        self.started = time.monotonic()
        self.frame = 0
        self.shown = False
        self.at_line_start = True
        encoding = (getattr(sys.stderr, "encoding", None) or "").lower()
        self.frames = self.FRAMES if "utf" in encoding else self.ASCII_FRAMES

    def tick(self, status: str) -> None:
        if not self.enabled or not self.at_line_start:
            return
        self.frame = (self.frame + 1) % len(self.frames)
        elapsed = time.monotonic() - self.started
        line = f"{self.frames[self.frame]} {self.spawn_id} {status} {elapsed:.1f}s"
        sys.stderr.write(f"\r{line}\x1b[K")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False

    def wrote(self, stream: TextIO, ended_line: bool) -> None:
        """Note output written to ``stream`` (ending a line or not): the spinner waits
        for a fresh line."""
        if stream is sys.stderr or _is_terminal(stream):
            self.at_line_start = ended_line


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Output:
    """Writes a spawn's output, its exact bytes, as it arrives, and what the final record
    holds beyond it. The stream and the record are read with ``encoding=base64``."""

    def __init__(self, progress: Progress, live: bool) -> None:
        self.progress, self.live = progress, live
        self.written = {"stdout": 0, "stderr": 0}

    def write(self, name: str, data: bytes) -> None:
        if not self.live or not data:
            return
        stream = sys.stdout if name == "stdout" else sys.stderr
        self.progress.clear()
        stream.flush()
        binary = getattr(stream, "buffer", None)
        if binary is not None:
            binary.write(data)
            binary.flush()
        else:  # a stream without bytes underneath (a test's): its text
            stream.write(data.decode("utf-8", "replace"))
            stream.flush()
        self.written[name] += len(data)
        self.progress.wrote(stream, data.endswith(b"\n"))

    def finish(self, record: dict[str, Any]) -> None:
        """Write what the live stream missed (a lost stream, events past its cap)."""
        for name in ("stdout", "stderr"):
            data = base64.b64decode(record.get(name) or "")
            self.write(name, data[self.written[name] :])


def as_text(record: dict[str, Any]) -> dict[str, Any]:
    """A record read with ``encoding=base64`` as a read without it gives it."""
    if record.get("encoding") != "base64":
        return record
    text = {
        name: None if record.get(name) is None
        else base64.b64decode(record[name]).decode("utf-8", "replace")
        for name in ("stdout", "stderr")
    }  # fmt: skip
    return {**record, **text, "encoding": "utf8"}


def _read_events(client: Client, spawn_id: str, inbox: queue.Queue) -> None:
    """Put the spawn's events into ``inbox``, each once, then None.

    A stream that broke, or ended before its ``end``, after it had delivered events is
    opened again with the last event's id as ``Last-Event-ID``; events already had are
    skipped, should the gateway replay the stream from its start. When the first
    connection fails, or :data:`RECONNECTS` in a row bring no new event, the waiter reads
    the record instead (a refusal of the first connection, such as ``not_found``, is
    handed to it)."""
    last_id: str | None = None
    delivered = False
    breaks = 0
    while True:
        try:
            for event in client.events(spawn_id, last_event_id=last_id, encoding="base64"):
                if event.id is not None:
                    if not _after(event.id, last_id):
                        continue
                    last_id, breaks = event.id, 0
                delivered = True
                inbox.put(event)
                if event.kind in ("end", "error"):
                    inbox.put(None)
                    return
        except ApiError as exc:
            if not delivered:
                inbox.put(exc)
                break
            if not exc.transport:  # a gateway that answers but cannot stream: read instead
                break
        except Exception as exc:  # the reader thread must hand every failure to the waiter
            inbox.put(ApiError(None, "unreachable", f"the event stream failed: {exc}"))
            break
        if not delivered:
            break
        breaks += 1
        if breaks > RECONNECTS:
            break
        time.sleep(min(RECONNECT_DELAY * 2 ** (breaks - 1), RECONNECT_DELAY_MAX))
    inbox.put(None)


def _after(event_id: str, last_id: str | None) -> bool:
    """Whether the event ``event_id`` comes after ``last_id``, the last one had; an id
    whose order cannot be told counts as new."""
    order, last = event_order(event_id), event_order(last_id)
    return order is None or last is None or order > last


def follow(client: Client, spawn_id: str, *, live_output: bool = True) -> dict[str, Any]:
    """Wait for ``spawn_id`` to end and return its terminal record; its output goes to
    stdout and stderr as it arrives when ``live_output``. Ctrl-C leaves the spawn as it
    is and says how to follow it again or cancel it."""
    progress = Progress(spawn_id, enabled=stderr_is_terminal())
    output = _Output(progress, live_output)
    try:
        record = _stream(client, spawn_id, progress, output)
        if record is None:  # the stream was lost: read the record instead
            record = _poll(client, spawn_id, progress)
    except KeyboardInterrupt:
        progress.clear()
        raise CliError(
            f"interrupted; {spawn_id} goes on (vx11 spawn follow {spawn_id} follows it "
            f"again, vx11 spawn cancel {spawn_id} stops it)",
            ExitCode.CANCELLED,
        ) from None
    finally:
        progress.clear()
    output.finish(record)
    if live_output and not progress.at_line_start:
        # the job's last line had no newline: our own line starts on the next one
        click.echo("", err=True)
    return as_text(record)


def _stream(
    client: Client, spawn_id: str, progress: Progress, output: _Output
) -> dict[str, Any] | None:
    """The ``end`` event's record, or None when the stream ended or broke without it."""
    inbox: queue.Queue = queue.Queue()
    threading.Thread(
        target=_read_events, args=(client, spawn_id, inbox), name="vx11-events", daemon=True
    ).start()
    status = "QUEUED"
    while True:
        try:
            item = inbox.get(timeout=TICK)
        except queue.Empty:
            progress.tick(status)
            continue
        if item is None:
            return None
        if isinstance(item, ApiError):
            if item.transport:
                return None
            raise item
        if item.kind == "state":
            status = item.data.get("status", status)
        elif item.kind in ("stdout", "stderr"):
            output.write(item.kind, base64.b64decode(item.data.get("base64", "")))
        elif item.kind == "end":
            return item.data
        elif item.kind == "error":  # the gateway lost Redis: the ledger still knows
            return None
        progress.tick(status)


def _poll(client: Client, spawn_id: str, progress: Progress) -> dict[str, Any]:
    while True:
        record = client.get_spawn(spawn_id, wait=POLL_WAIT, encoding="base64")
        if record.get("status") not in ACTIVE:
            return record
        progress.tick(record["status"])
