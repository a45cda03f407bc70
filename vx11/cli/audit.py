"""``vx11 audit``: the audit log (``GET /vx11/audit``), every policy decision with who,
from where and why; an ``admin`` token reads it."""

from __future__ import annotations

from typing import Any

import click

from vx11.cli.client import Client
from vx11.cli.common import Moment, choices_option, client_command, echo_listing, table, when

EVENTS = (
    "window_opened",
    "window_extended",
    "window_closed",
    "window_expired",
    "spawn_accepted",
    "spawn_refused",
    "spawn_cancelled",
    "token_created",
    "token_revoked",
)
"""What an entry records, as ``vx11.core.audit.AuditEvent`` names it (a test keeps the two
equal; the CLI does not import the core's audit module, which loads SQLAlchemy)."""


@click.command()
@choices_option(
    "--event",
    "events",
    EVENTS,
    metavar="EVENT,...",
    help=f"Only entries of these events ({', '.join(EVENTS)}): any case, "
    "comma-separated or repeated.",
)
@click.option("--target", help="Only entries about this window target (spawner).")
@click.option("--token-label", help="Only entries by tokens with this label.")
@click.option("--token-id", help="Only entries by the token with this id.")
@click.option(
    "--spawn", "spawn_id", metavar="ID", help="Only entries about this spawn (id or uuid)."
)
@click.option("--since", type=Moment(), help="Written at or after: ISO 8601 or a time ago (2h).")
@click.option("--until", type=Moment(), help="Written before: ISO 8601 or a time ago.")
@click.option("--limit", type=click.IntRange(1, 200), help="Entries per page  [default: 50]")
@click.option("--all", "all_pages", is_flag=True, help="Follow next_cursor to the last page.")
@client_command
def audit(
    client: Client,
    events: tuple[str, ...],
    target: str | None,
    token_label: str | None,
    token_id: str | None,
    spawn_id: str | None,
    since: str | None,
    until: str | None,
    limit: int | None,
    all_pages: bool,
    as_json: bool,
) -> None:
    """The audit log, newest first: one page (--limit), or all of it (--all).

    Each entry is one decision (a window opened, extended, closed or run out; a spawn
    accepted, refused or cancelled; a token created or revoked): when, by which token,
    from which address, about what, and why. --json has each entry whole, its detail
    included. Needs an admin token."""
    params = {
        "event": list(events) or None,
        "target": target,
        "token_label": token_label,
        "token_id": token_id,
        "spawn_id": spawn_id,
        "since": since,
        "until": until,
        "limit": limit,
    }
    echo_listing(
        client, "/vx11/audit", "entries", params,
        all_pages=all_pages, as_json=as_json, render=audit_table,
    )  # fmt: skip


def audit_table(entries: list[dict[str, Any]]) -> str:
    return table(
        ("at (utc)", "event", "target", "spawn", "token", "from", "reason"),
        (
            (
                when(e.get("at")),
                e.get("event"),
                e.get("target"),
                e.get("spawn_id"),
                e.get("token_label") or e.get("token_id"),
                e.get("remote_addr"),
                e.get("reason"),
            )
            for e in entries
        ),
    )
