"""``vx11 runtimes``: the task types the gateway accepts, and who runs them."""

from __future__ import annotations

from typing import Any

import click

from vx11.cli.client import Client
from vx11.cli.common import client_command, echo_answer, table


def runtimes_table(answer: dict[str, Any]) -> str:
    rows = [
        (
            runtime["name"],
            runtime["version"] or "-",
            "yes" if runtime["accepted"] else "no: no live worker offers it",
            len(runtime["workers"]),
            " ".join([*runtime["interpreter"], runtime["main"] or "CODE"]),
        )
        for runtime in answer["runtimes"]
    ]
    return table(("TYPE", "VERSION", "ACCEPTED", "WORKERS", "RUNS"), rows)


@click.command()
@client_command
def runtimes(client: Client, as_json: bool) -> None:
    """The task types the gateway accepts (vx11 spawn TYPE): each one's version on the
    live workers, whether a spawn of it is accepted now, and how it runs its code."""
    echo_answer(client.runtimes(), as_json, runtimes_table)
