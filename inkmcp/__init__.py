"""InkMCP: infrastructure that AI agents provision by themselves."""

__version__ = "0.1.0"
