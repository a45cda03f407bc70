"""The VX11 version, read by setup.cfg and reported by /health."""

__version__ = "0.2.0"
