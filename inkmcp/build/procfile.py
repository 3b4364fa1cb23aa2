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
_FIX = "make each Procfile line `type: command` (e.g. `web: gunicorn app:app`), or pass start_command"


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
            raise BuildPlanError(
                f"{filename} line {number} ({line[:80]!r}) is not `type: command`.",
                argument="start_command",
                fix=_FIX,
            )
        kind, command = match["type"], match["command"].strip()
        if not command:
            raise BuildPlanError(
                f"{filename} line {number}: process type {kind!r} has an empty command.",
                argument="start_command",
                fix=_FIX,
            )
        if kind == "release":
            release = command
            continue
        if kind in processes:
            raise BuildPlanError(
                f"{filename} line {number}: process type {kind!r} is defined twice.",
                argument="start_command",
                fix="keep one line per process type in the Procfile",
            )
        processes[kind] = command
    if not processes and release is None:
        raise BuildPlanError(
            f"{filename} defines no processes.",
            argument="start_command",
            fix="add a line such as `web: python app.py` to the Procfile, or pass start_command",
        )
    return Procfile(processes=processes, release=release)


def load_procfile(app_dir: Path, *, checkout: Path | None = None) -> Procfile | None:
    """Parse `app_dir/Procfile`, or return None when there is none.

    `checkout` (default `app_dir`) bounds where a symlinked Procfile may point.
    """
    text = read_repo_text(app_dir, PROCFILE, root=checkout)
    return None if text is None else parse_procfile(text)
