"""`inkmcp dr …`: one command per disaster-recovery step (runbooks/dr/ says when and where to run each).

Secrets never come in as flags (argv is visible to every user of the host and lands in shell history): the
Hetzner token, the Coolify token and the operator key are read from INKMCP_DR_* environment variables only.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from inkmcp.dr.errors import DrError
from inkmcp.dr.settings import DrSettings

dr_app = typer.Typer(no_args_is_help=True, help="Disaster recovery of the factory plane (runbooks/dr).")
out = Console()
err = Console(stderr=True, soft_wrap=True)

# Options more than one command takes, each defined once (name, help, default). A None default means "not given":
# _settings then falls back to the INKMCP_DR_* variable or DrSettings' default.
BoxId = Annotated[int | None, typer.Option("--box-id", help="Storage Box ID (Hetzner API) [INKMCP_DR_BOX_ID]")]
BOX_OPTIONS: dict[str, Any] = {
    "box_host": Annotated[str | None, typer.Option("--box-host", help="Storage Box host [INKMCP_DR_BOX_HOST]")],
    "box_user": Annotated[str | None, typer.Option("--box-user", help="Storage Box user [INKMCP_DR_BOX_USER]")],
    "box_port": Annotated[int | None, typer.Option("--box-port", help="SSH port of the box (23) [INKMCP_DR_BOX_PORT]")],
    "box_key": Annotated[Path | None, typer.Option("--box-key", help="private key for the box [INKMCP_DR_BOX_KEY]")],
    "box_known_hosts": Annotated[Path | None, typer.Option("--box-known-hosts", help="known_hosts for the box")],
}
CoolifyDir = Annotated[Path | None, typer.Option("--coolify-dir", help="Coolify's data dir (/data/coolify)")]
CoolifyVersion = Annotated[str | None, typer.Option(
    help="Coolify's installed version (default: the tag of `docker inspect coolify`)")]
Database = Annotated[str | None, typer.Option(help="database the dumps were taken of (their name prefix)")]
NoSnapshots = Annotated[bool, typer.Option("--no-snapshots", help="search only the box's live directory")]
At = Annotated[str | None, typer.Option(help="use the latest one made at or before this time (ISO 8601)")]
Box = dict[str, Any]
"""The Storage Box options of a command decorated with @storage_box, by DrSettings field name."""


def storage_box(*, box_id: bool = False) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the Storage Box options (BOX_OPTIONS, and --box-id for the commands that use the Hetzner API),
    after its own, and hand them to it as one `box` dict.

    Typer reads a command's parameters from its signature, so the wrapper shows a signature with the options in
    place of `box`: defined once instead of repeated on (and passed on by) every command that reaches the box."""
    options = BOX_OPTIONS | ({"box_id": BoxId} if box_id else {})

    def deco(fn: Callable[..., None]) -> Callable[..., None]:
        sig = inspect.signature(fn, eval_str=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in sig.parameters.items() if name != "box"]
        params = own + [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=kind)
                        for name, kind in options.items()]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            fn(box={name: kwargs.pop(name) for name in options}, **kwargs)

        command.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        return command

    return deco


def _settings(**overrides: Any) -> DrSettings:
    try:
        return DrSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        for problem in e.errors():
            err.print(f"[red]invalid setting[/red] INKMCP_DR_{str(problem['loc'][0]).upper()}: {problem['msg']}")
        raise typer.Exit(2) from None


@contextmanager
def _steps(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the current step, each finished step printed above it; DrError -> exit 1 with its text."""
    with out.status(title) as status:
        def progress(message: str) -> None:
            out.print(f"  {message}")
            status.update(f"{title}: {message}")

        try:
            yield progress
        except DrError as e:
            status.stop()
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(1) from None


def _operator_key() -> str:
    key = os.environ.get("INKMCP_DR_OPERATOR_KEY", "").strip()
    if not key:
        err.print("[red]error:[/red] INKMCP_DR_OPERATOR_KEY is not set: export the operator key from your secret "
                  "store (`inkmcp dr keygen` made it); it is never passed as a flag")
        raise typer.Exit(2)
    return key


@dr_app.command()
def keygen() -> None:
    """Print a new operator key (Fernet) for the Coolify secrets bundle; keep it in your secret store only."""
    from inkmcp.dr.bundle import new_operator_key

    out.print(new_operator_key(), markup=False, highlight=False)


@dr_app.command("backup-coolify")
@storage_box()
def backup_coolify_cmd(
    box: Box, coolify_dir: CoolifyDir = None, coolify_version: CoolifyVersion = None,
    no_db_backup: Annotated[bool, typer.Option("--no-db-backup", help="leave out Coolify's newest database backup")]
    = False,
) -> None:
    """On the master: APP_KEY (source/.env) and ssh/keys, encrypted with the operator key, to the Storage Box."""
    from inkmcp.dr.coolify import backup_coolify, detect_version

    s = _settings(**box, coolify_dir=coolify_dir)
    key = _operator_key()
    with _steps("backing up Coolify's secrets") as progress:
        version = coolify_version or detect_version()
        progress(f"Coolify {version}, {s.coolify_dir}")
        path = backup_coolify(s, coolify_version=version, operator_key=key, with_db_backup=not no_db_backup)
    out.print(path, markup=False, highlight=False)


@dr_app.command("list-dumps")
@storage_box(box_id=True)
def list_dumps_cmd(box: Box, database: Database = None, no_snapshots: NoSnapshots = False) -> None:
    """The control-plane dumps on the Storage Box, live and in its snapshots, oldest first (what --at chooses from)."""
    from inkmcp.dr.postgres import list_dumps

    s = _settings(**box, database=database)
    with _steps("listing dumps") as progress:
        dumps = list_dumps(s, snapshots=not no_snapshots, progress=progress)
    t = Table("taken at (UTC)", "dump", "bytes", "source")
    for d in dumps:
        t.add_row(f"{d.taken_at:%Y-%m-%d %H:%M:%S}", d.name, str(d.size), d.source)
    out.print(t)


@dr_app.command("restore-postgres")
@storage_box(box_id=True)
def restore_postgres_cmd(
    box: Box,
    at: At = None,
    dump: Annotated[str | None, typer.Option(help="restore this dump file name instead of choosing by --at")] = None,
    work_dir: Annotated[Path, typer.Option(help="where the dump is copied to")]
    = Path("/var/lib/postgresql/inkmcp-restore"),
    run_as: Annotated[str | None, typer.Option(help="OS user running pg_restore/psql (default: postgres when root)")]
    = None,
    database: Database = None,
    into: Annotated[str | None, typer.Option(help="empty database to restore into (default: --database)")] = None,
    pg_bin: Annotated[Path | None, typer.Option(help="directory of pg_restore/psql")] = None,
    no_snapshots: NoSnapshots = False,
) -> None:
    """On a fresh Postgres host: the control-plane database from the Storage Box (live dumps, then snapshots)."""
    from inkmcp.dr.dumps import parse_at
    from inkmcp.dr.postgres import restore_postgres

    s = _settings(**box, database=database, pg_bin=pg_bin)
    user = run_as if run_as is not None else ("postgres" if os.geteuid() == 0 else None)
    with _steps("restoring the control-plane database") as progress:
        when = parse_at(at)
        r = restore_postgres(s, at=when, work_dir=work_dir, dump_name=dump, into=into, run_as=user or None,
                             use_snapshots=not no_snapshots, progress=progress)
    t = Table("dump", "source", "taken at (UTC)", "relations", "seconds")
    t.add_row(r.dump.name, r.dump.source, f"{r.dump.taken_at:%Y-%m-%d %H:%M:%S}", str(r.tables),
              " ".join(f"{k}={v:.1f}" for k, v in r.seconds.items()))
    out.print(t)


@dr_app.command("restore-coolify")
@storage_box()
def restore_coolify_cmd(
    box: Box,
    dump: Annotated[Path | None, typer.Option(help="Coolify's own pg_dump (custom format); default: the one in "
                                                   "the bundle")] = None,
    bundle: Annotated[Path | None, typer.Option(help="a secrets bundle file (default: from the box by --at)")]
    = None,
    at: At = None,
    coolify_version: CoolifyVersion = None,
    db_exec: Annotated[str | None, typer.Option(help="command prefix reaching Coolify's database")] = None,
    pg_bin: Annotated[Path | None, typer.Option(help="directory of pg_restore/psql (inside --db-exec)")] = None,
    authorized_keys: Annotated[Path, typer.Option(help="root's authorized_keys on this host")]
    = Path("/root/.ssh/authorized_keys"),
    work_dir: Annotated[Path, typer.Option(help="where the bundle is copied to")] = Path("/root/inkmcp-dr"),
    coolify_dir: CoolifyDir = None,
) -> None:
    """On a fresh master (same Coolify version): restore its database, APP_PREVIOUS_KEYS and SSH keys."""
    from inkmcp.dr.coolify import CoolifyDb, detect_version, fetch_bundle, parse_exec, restore_coolify
    from inkmcp.dr.dumps import parse_at

    s = _settings(**box, coolify_dir=coolify_dir)
    key = _operator_key()
    with _steps("restoring Coolify") as progress:
        version = coolify_version or detect_version()
        if bundle is not None:
            label, data = str(bundle), bundle.read_bytes()
        else:
            work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            label, data = fetch_bundle(s, parse_at(at), work_dir)
        progress(f"bundle {label}")
        r = restore_coolify(s, dump=dump, bundle_bytes=data, bundle_label=label, operator_key=key,
                            installed_version=version, db=CoolifyDb(parse_exec(db_exec), pg_bin=pg_bin),
                            work_dir=work_dir,
                            authorized_keys=authorized_keys, progress=progress)
    keys = ", ".join(r.keys_restored) or "none"
    out.print(f"restored Coolify {r.coolify_version}: {r.values_checked} encrypted value(s) decrypt, "
              f"{r.previous_keys} key(s) in APP_PREVIOUS_KEYS, SSH keys restored: {keys}", markup=False)
    out.print(f"next: curl -fsSL https://cdn.coollabs.io/coolify/install.sh | bash -s {r.coolify_version}   "
              "(restarts Coolify with the new .env), then `inkmcp dr revalidate-servers`", markup=False)


@dr_app.command("revalidate-servers")
def revalidate_servers_cmd(
    coolify_url: Annotated[str | None, typer.Option(help="Coolify URL [INKMCP_DR_COOLIFY_API_URL]")] = None,
    timeout: Annotated[float, typer.Option(help="seconds to wait for every server")] = 300,
    poll: Annotated[float, typer.Option(help="seconds between status reads")] = 2.0,
    settle: Annotated[float, typer.Option(help="a server counts as usable only this long after its validation "
                                                "was queued (the API shows no 'validating' state)")] = 30.0,
) -> None:
    """Queue Coolify's validation of every run/build server and wait until each is reachable and usable."""
    from inkmcp.dr.servers import revalidate_servers

    s = _settings(coolify_api_url=coolify_url)
    if not s.coolify_api_url or s.coolify_api_token is None:
        err.print("[red]error:[/red] pass --coolify-url (or INKMCP_DR_COOLIFY_API_URL) and set "
                  "INKMCP_DR_COOLIFY_API_TOKEN (a token with read and write)")
        raise typer.Exit(2)
    with _steps("re-validating servers") as progress:
        states = asyncio.run(revalidate_servers(s.coolify_api_url, s.coolify_api_token, timeout=timeout, poll=poll,
                                                settle=settle, progress=progress))
    t = Table("server", "ip", "usable", "validation log")
    for st in states:
        t.add_row(st.name, st.ip, "yes" if st.usable else "[red]no[/red]", st.log[:200])
    out.print(t)
    bad = [st.name for st in states if not st.usable]
    if bad:
        err.print(f"[red]error:[/red] not usable after {timeout:.0f} s: {', '.join(bad)}; check SSH from the master "
                  "(the restored key must be in each server's authorized_keys) and Docker on the server")
        raise typer.Exit(1)


@dr_app.command("backup-registry")
@storage_box(box_id=True)
def backup_registry_cmd(
    box: Box,
    storage: Annotated[Path | None, typer.Option(help="registry storage directory (/var/lib/registry)")] = None,
    no_snapshot: Annotated[bool, typer.Option("--no-snapshot", help="copy only, no Storage Box snapshot")] = False,
) -> None:
    """On the registry host: copy its storage to the Storage Box and snapshot the box (Volumes have no snapshots)."""
    from inkmcp.dr.registry import backup_registry

    s = _settings(**box, registry_storage=storage)
    with _steps("backing up the registry") as progress:
        r = backup_registry(s, snapshot=not no_snapshot, progress=progress)
    out.print(f"{r.files} file(s), {r.bytes} bytes on the box"
              + (f"; snapshot {r.snapshot.name} (id {r.snapshot.id})" if r.snapshot else ""), markup=False)
