"""Domain errors that an agent can act on.

Every error names the argument at fault, what was wrong and what to pass instead, because the
reader is usually a model deciding its next call, not a human reading a stack trace.
"""

from __future__ import annotations


class InkError(Exception):
    """Base of every error InkMCP reports to a caller (agent or operator)."""

    code = "error"

    def __init__(self, message: str, *, argument: str | None = None, fix: str | None = None) -> None:
        self.message = message
        self.argument = argument
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        parts = []
        if self.argument:
            parts.append(f"Argument '{self.argument}': {self.message}")
        else:
            parts.append(self.message)
        if self.fix:
            parts.append(f"Fix: {self.fix}")
        return " ".join(parts)


class InvalidArgument(InkError):
    code = "invalid_argument"


class NotFound(InkError):
    code = "not_found"


class Conflict(InkError):
    code = "conflict"


class SourceError(InkError):
    """The repository could not be fetched or checked out."""

    code = "source_error"


class BuildPlanError(InkError):
    """Nothing in the call or the repo says what to run."""

    code = "build_plan_error"


class BuildFailed(InkError):
    code = "build_failed"


class DeployFailed(InkError):
    code = "deploy_failed"


class ProviderError(InkError):
    code = "provider_error"


class Unauthorized(InkError):
    code = "unauthorized"
