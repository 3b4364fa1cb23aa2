"""`inkmcp dr`'s shared options: each defined once (inkmcp/dr/cli.py), so the commands that take one agree on its
help text and default, and every command that reaches the Storage Box hands all of its box options to DrSettings.

The commands run through the real typer app; only `_settings` is replaced, to record what a command passes and
stop it there (nothing reaches a box)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from inkmcp.cli import app
from inkmcp.dr import cli as dr_cli

BOX_ARGS = ["--box-host", "box.example", "--box-user", "u1-sub2", "--box-port", "2323", "--box-key", "/k/id",
            "--box-known-hosts", "/k/known"]
BOX_SETTINGS = {"box_host": "box.example", "box_user": "u1-sub2", "box_port": 2323, "box_key": Path("/k/id"),
                "box_known_hosts": Path("/k/known")}
# command -> whether it also takes --box-id (the ones that use the Hetzner API for snapshots)
BOX_COMMANDS = {"backup-coolify": False, "list-dumps": True, "restore-postgres": True, "restore-coolify": False,
                "backup-registry": True}


def dr_commands() -> dict[str, Any]:
    """The click commands typer built for `inkmcp dr` (typer 0.29 brings its own click classes: duck-typed)."""
    return dict(get_command(app).commands["dr"].commands)  # type: ignore[attr-defined]


def test_an_option_means_the_same_on_every_command() -> None:
    seen: dict[str, set[tuple[str, Any]]] = defaultdict(set)
    for command in dr_commands().values():
        for param in command.params:
            if param.param_type_name == "option" and param.name != "help":
                seen[param.opts[0]].add((param.help or "", param.default))
    assert {"--box-host", "--box-id", "--at", "--database", "--no-snapshots", "--coolify-version"} <= set(seen)
    differ = {opt: sorted(variants, key=str) for opt, variants in seen.items() if len(variants) > 1}
    # meant to differ: --work-dir (another place per command), --pg-bin (restore-coolify's is inside --db-exec),
    # --dump (a file name on the box for restore-postgres, a local pg_dump file for restore-coolify)
    assert set(differ) <= {"--work-dir", "--pg-bin", "--dump"}, differ


@pytest.mark.parametrize("command", sorted(BOX_COMMANDS))
def test_box_options_reach_the_settings(command: str, monkeypatch: pytest.MonkeyPatch) -> None:
    passed: list[dict[str, Any]] = []

    def record(**overrides: Any) -> None:
        passed.append(overrides)
        raise typer.Exit(0)

    monkeypatch.setattr(dr_cli, "_settings", record)
    with_id = ["--box-id", "77"] if BOX_COMMANDS[command] else []
    r = CliRunner().invoke(app, ["dr", command, *BOX_ARGS, *with_id])
    assert r.exit_code == 0, r.output
    [overrides] = passed
    assert {k: overrides[k] for k in BOX_SETTINGS} == BOX_SETTINGS
    assert overrides.get("box_id") == (77 if with_id else None) and ("box_id" in overrides) is bool(with_id)
    if not with_id:  # not offered where it does nothing
        r = CliRunner().invoke(app, ["dr", command, "--box-id", "77"])
        assert r.exit_code == 2 and "No such option" in r.output

    # not given: None, so DrSettings falls back to INKMCP_DR_* and its defaults
    passed.clear()
    assert CliRunner().invoke(app, ["dr", command]).exit_code == 0
    assert all(passed[0][k] is None for k in BOX_SETTINGS)
