"""Domain errors that an agent can act on.

Every error names the argument at fault, what was wrong and what to pass instead, because the
reader is usually a model deciding its next call, not a human reading a stack trace.

The same reader must never see this server's absolute paths (`/var/lib/inkmcp/compute/services/<id>/
releases/<id>/src/app.py`): they say nothing it can act on (its files are relative to its repo), and
they describe the server's layout to whoever deploys there. `scrub_paths` rewrites them into the
relative forms an agent knows (`./app.py`, `.venv/lib/...`, `~`); components that own a directory
register it (`register_server_paths`) and every boundary where text leaves for an agent (errors,
log lines, build output) passes it through `scrub_paths`.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings


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


class _AboutTheRepoFiles(InkError):
    """An error in the repo's files (a manifest, a lock file, the dependencies), not in the call.

    `argument="repo_url"` here means the repo's files: the URL itself was fetched fine, so the message is
    not prefixed "Argument 'repo_url'", which an agent reads as "pass another repo_url" (a new user's agent
    did). The message names the file and what is wrong with it; the fix says what to change and push.
    Any other argument (build_command, env_vars, start_command) is named as every InkError does.
    """

    def render(self) -> str:
        if self.argument != "repo_url":
            return super().render()
        return " ".join([self.message, *([f"Fix: {self.fix}"] if self.fix else [])])


class BuildPlanError(_AboutTheRepoFiles):
    """Nothing in the call or the repo says what to run, or a file that says it is invalid (inkmcp.yaml,
    package.json, pyproject.toml, a platform file): with `argument="repo_url"` rendered without the prefix."""

    code = "build_plan_error"


class BuildFailed(_AboutTheRepoFiles):
    """The app's build failed (its dependencies, lock files, build scripts), never a malformed call.

    With `argument="repo_url"` (the repo's files) rendered without the argument prefix (`_AboutTheRepoFiles`);
    the message says which step failed and how; the caller appends the build output's last lines.
    A failure an argument of the call did cause (build_command, env_vars) names it as every InkError does.
    """

    code = "build_failed"


class DeployFailed(InkError):
    code = "deploy_failed"


class ProviderError(InkError):
    code = "provider_error"


class Unauthorized(InkError):
    code = "unauthorized"


# -- absolute server paths ---------------------------------------------------------------------------

_END = r"(?=/|[^\w.-]|$)"  # a path component ends here: `/srv/x` must not match inside `/srv/xy`
_paths_lock = threading.Lock()
_named: dict[str, tuple[re.Pattern[str], str]] = {}  # tried first: the forms an agent can act on
_fallback: dict[str, tuple[re.Pattern[str], str]] = {}  # then whatever else lies under a registered dir


def register_server_paths(root: Path, named: Iterable[tuple[str, str]] = (), *, fallback: str = "<server>") -> None:
    """Declare a directory of this server whose absolute paths must not reach agents.

    `named`: (regex of a path below `root`, what to show instead), e.g. (r"releases/[^/]+/src", ".")
    turns `<root>/releases/d1/src/app.py` into `./app.py`; tried before any fallback. Anything else
    under `root` shows as `fallback` + the rest. Both the path as given and its real path (symlinks
    resolved) are matched. Idempotent; process-wide, because errors are rendered far from the
    component that knows the directory.
    """
    forms = {os.path.normpath(str(root)), os.path.realpath(root)}
    with _paths_lock:
        for form in sorted(forms, key=len, reverse=True):
            if form in ("/", "."):
                raise ValueError(f"refusing to scrub {form!r}: every path would match")
            base = re.escape(form.rstrip("/"))
            for sub, shown in named:
                pattern = base + "/" + sub + _END
                _named.setdefault(pattern, (re.compile(pattern), shown))
            pattern = base + _END
            _fallback.setdefault(pattern, (re.compile(pattern), fallback))


def scrub_paths(text: str) -> str:
    """`text` with every registered server path replaced by its relative form (see the module docstring)."""
    if not text or "/" not in text:
        return text
    with _paths_lock:
        tiers = [list(_named.values()), list(_fallback.values())]
    for rules in tiers:  # named forms before any fallback; within a tier the deeper directory first
        for compiled, shown in sorted(rules, key=lambda r: len(r[0].pattern), reverse=True):
            text = compiled.sub(lambda _m, s=shown: s, text)
    return text


register_server_paths(Path(__file__).resolve().parent, fallback="<inkmcp>")  # spawn/shim errors name files here


S = TypeVar("S", bound=BaseSettings)


def settings_from_env(
    cls: type[S], prefix: str, where: str, fixes: Mapping[str, str] | None = None, /, **overrides: object
) -> S:
    """`cls(**overrides)` read from the environment: the one reader of a settings class for every component.

    A bad value raises `InkError` naming `<prefix><FIELD>` (never its value; for a value with parts, such as
    a JSON object, the part as "(field a.b)"), and what to set it to: `fixes[field]` when given (say, an
    example), else the field's description, else `where`. `fixes` is positional-only, so `overrides` may
    name any field.
    """
    try:
        return cls(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(part) for part in err.get("loc") or ()] or ["?"]
        variable = prefix + loc[0].upper()
        detail = f" (field {'.'.join(loc[1:])})" if len(loc) > 1 else ""
        info = cls.model_fields.get(loc[0])
        hint = info.description if info is not None and info.description else f"see {where}"
        fix = (fixes or {}).get(loc[0]) or f"set {variable} to {hint}"
        raise InkError(f"invalid configuration {variable}{detail}: {err['msg']}", argument=variable, fix=fix) from None
