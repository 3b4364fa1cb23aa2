"""`inkmcp backup create|verify|restore` and `inkmcp audit`, mounted by inkmcp/cli.py (`_mount_backup`).

Long steps show a rich progress display on stderr; stdout carries only the result (create prints the set's path
on its last line, so scripts can take it with `tail -1`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from inkmcp.errors import InkError

backup_app = typer.Typer(no_args_is_help=True, help="One-machine backups: create, verify and restore backup sets.")
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="INKMCP_DATA_DIR", help="state directory")]


@contextlib.contextmanager
def _progress() -> Iterator[tuple[Any, Any, Any]]:
    """(step(text), advance(bytes), total(bytes)) callbacks drawing one rich progress display on stderr."""
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                  TimeElapsedColumn(), console=err, transient=False) as bar:
        task = bar.add_task("starting", total=None)

        def step(text: str) -> None:
            bar.update(task, description=text, total=None, completed=0)

        def advance(n: int) -> None:
            bar.advance(task, n)

        def total(n: int) -> None:
            bar.update(task, total=n, completed=0)

        yield step, advance, total


def _fail(e: InkError) -> typer.Exit:
    err.print(f"[red]error:[/red] {e.render()}", highlight=False)
    return typer.Exit(1)


def _settings(data_dir: Path | None) -> Any:
    from inkmcp.cli import load_settings

    return load_settings(data_dir=data_dir)


@backup_app.command("create")
def create(
    to: Annotated[Path, typer.Option("--to", help="directory the set is written into (one subdirectory per set)")],
    keys_to: Annotated[Path | None, typer.Option("--keys-to", help="write the encryption keys here instead of into "
                                                 "the set (another disk or machine), so one stolen copy is not "
                                                 "enough")] = None,
    data_dir: DataDir = None,
) -> None:
    """Back up everything of this installation (the server may be running); prints the set's path last."""
    from inkmcp.backup.create import create_backup

    settings = _settings(data_dir)
    try:
        with _progress() as (step, advance, _total):
            created = create_backup(settings, to, keys_to=keys_to, step=step, progress=advance)
    except InkError as e:
        raise _fail(e) from None
    m = created.manifest
    err.print(f"backed up {len(m.tenant_databases)} tenant database(s), {len(m.redis)} Redis add-on(s), the sources "
              f"of {len(m.sources)} project(s): {created.size / 2**20:.1f} MiB in {created.seconds:.1f} s; "
              f"control plane as of {m.control_snapshot_at.isoformat()}", highlight=False)
    if created.keys_path is not None:
        err.print(f"keys written apart to {created.keys_path} (restore needs --keys-from)", highlight=False)
    else:
        err.print("[yellow]the keys are inside the set[/yellow]: whoever has a copy can read its secrets; use "
                  "--keys-to to keep them apart", highlight=False)
    print(created.path)


@backup_app.command("verify")
def verify_cmd(
    path: Annotated[Path, typer.Argument(help="the backup set directory")],
    keys_from: Annotated[Path | None, typer.Option("--keys-from", help="where --keys-to wrote the keys, or an "
                                                   "installation's secrets/encryption.keys")] = None,
) -> None:
    """Check a set without restoring it; exits 1 with the reason on any change, truncation or version mismatch."""
    import os

    from inkmcp.backup.manifest import verify
    from inkmcp.store.crypto import ENV_VAR

    env = os.environ.get(ENV_VAR, "").strip()
    env_keys = [k.strip() for k in env.split(",") if k.strip()] if env else None
    try:
        with _progress() as (step, advance, total):
            step("verifying")
            checked = verify(path, keys_from=keys_from, env_keys=env_keys, progress=advance, total=total)
    except InkError as e:
        raise _fail(e) from None
    m = checked.manifest
    print(f"ok: {len(m.files)} files, {sum(f.size for f in m.files)} bytes; InkMCP {m.inkmcp_version}, schema "
          f"{m.schema_revision}; control plane as of {m.control_snapshot_at.isoformat()}")
    print(checked.note)


@backup_app.command("restore")
def restore_cmd(
    from_: Annotated[Path, typer.Option("--from", help="the backup set directory")],
    keys_from: Annotated[Path | None, typer.Option("--keys-from", help="where --keys-to wrote the keys")] = None,
    data_dir: DataDir = None,
) -> None:
    """Restore a set into an empty (or missing) data dir with the server stopped; writes nothing on any refusal."""
    from inkmcp.backup.restore import restore_backup

    settings = _settings(data_dir)
    try:
        with _progress() as (step, advance, total):
            restored = restore_backup(settings, from_, keys_from=keys_from, step=step, progress=advance, total=total)
    except InkError as e:
        raise _fail(e) from None
    m = restored.verified.manifest
    print(f"restored {from_} into {restored.data_dir} in {restored.seconds:.1f} s: control plane as of "
          f"{m.control_snapshot_at.isoformat()}, {len(m.tenant_databases)} tenant database(s), {len(m.redis)} Redis "
          "add-on(s)")
    if not restored.keys_written:
        print("keys: none written; INKMCP_ENCRYPTION_KEYS must stay set for `inkmcp serve`")
    if m.mac_key_from_env:
        print("INKMCP_MAC_KEY was set when the set was made: set it again (it is not in the set)")
    print("next: `inkmcp serve` brings every service back at its URL (rebuilt from its recorded commit)")


def _since(value: str | None) -> datetime | None:
    """ISO time (`2026-12-01T05:00`, UTC unless it says) or a duration back from now (`90m`, `2h`, `7d`)."""
    if value is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if value[:-1].isdigit() and value[-1:] in units:
        return datetime.now(UTC) - timedelta(seconds=int(value[:-1]) * units[value[-1]])
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]error:[/red] --since {value!r} is neither an ISO time (2026-12-01T05:00) nor a duration "
                  "(90m, 2h, 7d)", highlight=False)
        raise typer.Exit(2) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def audit(
    account: Annotated[str | None, typer.Option("--account", "-a", help="only this account's entries")] = None,
    since: Annotated[str | None, typer.Option("--since", help="from this time on: ISO (UTC unless given) or a "
                                              "duration back from now, e.g. 2h")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100_000, help="at most this many (the newest)")] = 1000,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    data_dir: DataDir = None,
) -> None:
    """The audit log, oldest first: who did what, when, with which (redacted) arguments and result."""
    from inkmcp.app import open_runtime
    from inkmcp.logsetup import setup_logging

    settings = _settings(data_dir)
    when = _since(since)

    async def go() -> Any:
        rt = await open_runtime(settings, serve=False)
        try:
            return await rt.platform.audit.query(account=account, since=when, limit=limit)
        finally:
            await rt.close()

    setup_logging("WARNING", json_logs=False)
    try:
        rows = asyncio.run(go())
    except InkError as e:
        raise _fail(e) from None
    if as_json:
        for r in rows:
            print(json.dumps(r.model_dump(mode="json"), sort_keys=True))
        return
    table = Table("at", "account", "actor", "action", "target", "result", "arguments")
    for r in rows:
        table.add_row(f"{r.at:%Y-%m-%d %H:%M:%S}", r.account or "", r.actor, r.action, r.target or "",
                      r.result if r.result == "ok" else f"{r.result}: {(r.error or '')[:60]}",
                      json.dumps(r.arguments, sort_keys=True)[:80])
    out.print(table)
