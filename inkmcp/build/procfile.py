"""Procfile parsing (Heroku conventions), so apps that already deploy on Heroku-likes deploy here.

`type: command` per line; blank lines and `#` comments are ignored. `web` is the process that
receives HTTP traffic, `release` is the release command (run once per deployment before traffic,
not a long-running process), any other type runs without a route (workers, schedulers).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from inkmcp.build.manifest import read_repo_text
from inkmcp.build.plan import ProcessSpec
from inkmcp.errors import BuildPlanError

PROCFILE = "Procfile"
_LINE = re.compile(r"^(?P<type>[A-Za-z0-9_-]+)\s*:\s*(?P<command>.*)$")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_OTHERWISE = "or pass start_command to run something else"


def _error(message: str, fix: str) -> BuildPlanError:
    """An error in the repo's Procfile, not in the call: `argument="repo_url"` renders it without an
    "Argument '...'" prefix (errors._AboutTheRepoFiles), so the agent reads "fix the Procfile", not "change an
    argument it never passed"."""
    return BuildPlanError(message, argument="repo_url", fix=fix)


def _malformed(filename: str, number: int, line: str) -> BuildPlanError:
    """What is wrong with a line that is not `type: command`, and the line to write instead."""
    kind, colon, command = line.partition(":")
    kind, command = kind.strip(), command.strip()
    first, *rest = line.split(None, 1)
    if (not colon or " " in kind or "\t" in kind) and _NAME.match(first) and rest:
        why = f"has no `:` after the process type {first!r}"
        example = f"{first}: {rest[0].strip()}"
    elif not colon:
        why = "has no process type and `:` before the command"
        example = f"web: {line}"
    elif not kind:
        why = "has no process type before the `:`"
        example = f"web: {command}"
    else:
        why = f"has the process type {kind!r}, which is not only letters, digits, `_` and `-`"
        example = f"{re.sub(r'[^A-Za-z0-9_-]+', '_', kind)}: {command}"
    return _error(
        f"{filename} line {number} ({line[:80]!r}) {why}: each Procfile line is `type: command`.",
        f"change line {number} of {filename} to `{example[:80]}`, commit and push, {_OTHERWISE}",
    )


class Procfile(BaseModel):
    """Parsed Procfile: process types in file order, and the release command if any."""

    model_config = ConfigDict(frozen=True)

    processes: dict[str, str]
    release: str | None = None

    def specs(self, only: str | None = None) -> tuple[ProcessSpec, ...]:
        """ProcessSpecs for all types (only `web` routed), or for the single type `only` (unrouted)."""
        if only is not None:
            return (ProcessSpec(name=only, command=self.processes[only], routed=False),)
        return tuple(ProcessSpec(name=n, command=c, routed=n == "web") for n, c in self.processes.items())


def parse_procfile(text: str, *, filename: str = PROCFILE) -> Procfile:
    """Parse Procfile text; raise BuildPlanError naming the line for anything malformed.

    Strict on purpose: a silently skipped line would deploy an app without a process the agent
    expected, which is harder to debug than an error at deploy time.
    """
    processes: dict[str, str] = {}
    release: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.match(line)
        if not match:
            raise _malformed(filename, number, line)
        kind, command = match["type"], match["command"].strip()
        if not command:
            raise _error(
                f"{filename} line {number}: process type {kind!r} has an empty command.",
                f"put the command after `{kind}:` on line {number} of {filename} (e.g. `{kind}: python app.py`), "
                f"or remove that line; commit and push; {_OTHERWISE}",
            )
        if kind == "release":
            release = command
            continue
        if kind in processes:
            first = next(n for n, raw_first in enumerate(text.splitlines(), start=1)
                         if (m := _LINE.match(raw_first.strip())) and m["type"] == kind)  # fmt: skip
            raise _error(
                f"{filename} line {number}: process type {kind!r} is defined twice (lines {first} and {number}).",
                f"keep one `{kind}:` line in {filename} (give the other process a name of its own, e.g. "
                f"`{kind}2:`), commit and push",
            )
        processes[kind] = command
    if not processes and release is None:
        raise _error(
            f"{filename} defines no processes (no `type: command` line).",
            f"add a line such as `web: python app.py` to {filename}, commit and push, {_OTHERWISE}",
        )
    return Procfile(processes=processes, release=release)


def load_procfile(app_dir: Path, *, checkout: Path | None = None) -> Procfile | None:
    """Parse `app_dir/Procfile`, or return None when there is none.

    `checkout` (default `app_dir`) bounds where a symlinked Procfile may point.
    """
    text = read_repo_text(app_dir, PROCFILE, root=checkout)
    if text is None:
        return None
    # named as the repo has it (apps/api/Procfile in a monorepo), so the agent knows which file to change
    where = app_dir.resolve().relative_to((checkout or app_dir).resolve())
    return parse_procfile(text, filename=str(where / PROCFILE))
