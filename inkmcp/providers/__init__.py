"""Providers: the only code that talks to an OS or a remote API. They know nothing of MCP."""
