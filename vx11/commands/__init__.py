"""The ``vx11`` commands that talk to a running gateway over HTTP (``vx11.client``),
and the token commands; ``vx11.cli`` registers them on its ``main`` group."""

from __future__ import annotations

import click

from vx11.commands.spawns import spawn, spawns
from vx11.commands.status import status, window
from vx11.commands.tokens import token

COMMANDS: tuple[click.Command, ...] = (status, window, spawn, spawns, token)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
