"""One error type for every DR step: the CLI prints its message and exits 1, nothing half-done behind it."""

from __future__ import annotations


class DrError(RuntimeError):
    """A step refused or failed; the message names what to pass or fix instead."""
