"""``python -m bench``: run the VX11 benchmark and print its table."""

from bench.run import main

raise SystemExit(main())
