"""The ``vx11`` command: a client of the gateway's API, plus the local commands that
start the stack (``vx11 up``) and purge old records. It imports the core, never the
gateway or the workers."""

from vx11.cli.main import main

__all__ = ["main"]
