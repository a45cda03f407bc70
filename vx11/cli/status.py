"""``vx11 status`` and ``vx11 window open|close|status``: the gateway's health and the
policy windows."""

from __future__ import annotations

from typing import Any

import click

from vx11.cli.client import Client
from vx11.cli.common import client_command, echo_answer, echo_json

SERVICES = (
    ("redis", "redis"),
    ("broker", "broker"),
    ("result_backend", "results"),
    ("database", "ledger"),
)


def _health(check: dict[str, Any]) -> str:
    if not check.get("ok"):
        return f"DOWN  {check.get('error') or ''}".rstrip()
    latency = check.get("latency_ms")
    detail = check.get("dialect") or check.get("transport") or check.get("backend") or ""
    text = "ok" if latency is None else f"ok    {latency:g} ms"
    return f"{text}  {detail}".rstrip()


def opened_line(window: dict[str, Any]) -> str:
    if not window.get("extended"):
        return window_line(window)
    return f"{window_line(window)}; extended (it was to end {window['previous_expires_at']})"


def window_line(window: dict[str, Any]) -> str:
    if not window.get("is_open"):
        return f"{window['target']} closed"
    reason = f" - {window['reason']}" if window.get("reason") else ""
    return (
        f"{window['target']} open, {window['ttl_remaining_seconds']} s left "
        f"(until {window['expires_at']}, window {window['window_id']}){reason}"
    )


def status_text(client: Client, status: dict[str, Any]) -> str:
    services = status.get("services", {})
    lines = [
        f"gateway   {client.base_url}  ok",
        f"policy    {status.get('policy')} ({status.get('mode')})",
    ]
    for key, label in SERVICES:
        if key in services:
            lines.append(f"{label:<9} {_health(services[key])}")
    sandbox = status.get("sandbox") or {}
    levels = sandbox.get("levels") or {}
    spawner = services.get("spawner", {})
    offered = status.get("task_types") or {}
    if levels:
        workers = ", ".join(
            f"{name} ({level or 'unknown'}: {' '.join(offered.get(name) or {}) or '-'})"
            for name, level in levels.items()
        )
        lines.append(f"workers   {len(levels)} live: {workers}; sandbox level {sandbox['level']}")
    elif spawner.get("ok") is False:
        lines.append(f"workers   NONE answered  {spawner.get('error') or ''}".rstrip())
    windows = status.get("windows") or []
    if not windows:
        lines.append("windows   none open: spawns are refused (SOLO_MADRE)")
    for i, window in enumerate(windows):
        lines.append(f"{'windows' if i == 0 else '':<9} {window_line(window)}")
    return "\n".join(lines)


@click.command()
@client_command
def status(client: Client, as_json: bool) -> None:
    """The gateway, its dependencies, the live workers and the open windows."""
    answer = client.status()
    echo_answer(answer, as_json, lambda answer: status_text(client, answer))


@click.group()
def window() -> None:
    """Open, close and look at policy windows (SOLO_MADRE: spawns need an open
    ``spawner`` window)."""


@window.command("open")
@click.argument("target")
@click.option("--ttl", type=click.IntRange(min=1), help="Seconds it stays open  [default: 600]")
@click.option("--reason", help="Why it is opened (kept in the audit log).")
@client_command
def window_open(
    client: Client, target: str, ttl: int | None, reason: str | None, as_json: bool
) -> None:
    """Open TARGET's window for --ttl seconds from now; an open one is extended (the
    same window, ending then)."""
    answer = client.open_window(target, ttl, reason)
    echo_answer(answer, as_json, opened_line)


@window.command("close")
@click.argument("target")
@click.option("--reason", help="Why it is closed (kept in the audit log).")
@click.option(
    "--cancel-running", is_flag=True, help="Also cancel the spawns running under this window."
)
@client_command
def window_close(
    client: Client, target: str, reason: str | None, cancel_running: bool, as_json: bool
) -> None:
    """Close TARGET's window; queued spawns accepted under it will not start."""
    answer = client.close_window(target, reason, cancel_running)
    if as_json:
        echo_json(answer)
        return
    was = "was open" if answer.get("was_open") else "was not open"
    line = f"{answer['target']} closed ({was})"
    if cancel_running:
        cancelled = answer.get("cancelled") or []
        line += f"; cancelled {len(cancelled)} running spawn{'s' * (len(cancelled) != 1)}"
    click.echo(line)


@window.command("status")
@click.argument("target")
@client_command
def window_status(client: Client, target: str, as_json: bool) -> None:
    """Whether TARGET's window is open, and for how long."""
    answer = client.window_status(target)
    echo_answer(answer, as_json, window_line)
