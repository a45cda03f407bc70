"""``python -m vx11.cli``: the ``vx11`` command."""

from vx11.cli.main import main

main()
