"""`inkmcp`: the operator's CLI. Every command goes through the same Platform as the MCP tools."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import click
import typer
import typer.main
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from inkmcp.errors import InkError
from inkmcp.logsetup import setup_logging
from inkmcp.settings import Settings


class _LazyGroup(TyperGroup):
    """The top-level command group, whose larger sub-apps are imported only when their command runs (or help lists
    them). Why: they were mounted at import, and their modules (billing's SQLAlchemy models, the nodes renderer,
    backup, dr) cost ~0.5 s of CPU in every `inkmcp` process, `inkmcp keys create` and `inkmcp doctor` included;
    the suite runs the CLI hundreds of times on two cores."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands = _LazyCommands(self.commands)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*super().list_commands(ctx), *(name for name in _LAZY if name not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY and cmd_name not in self.commands:
            self.commands[cmd_name]  # loads it (_LazyCommands.__missing__)
        return super().get_command(ctx, cmd_name)


class _LazyCommands(dict[str, click.Command]):
    """`group.commands[name]` loads a lazy sub-app too (code reading the built group, as tests/dr does)."""

    def __missing__(self, name: str) -> click.Command:
        if name not in _LAZY:
            raise KeyError(name)
        self[name] = command = _load(name)
        return command


_LAZY: dict[str, tuple[str, str, str | None]] = {
    # command: (module, attribute: a Typer app or a command function, help when mounted here)
    "nodes": ("inkmcp.nodes.cli", "nodes_app", "Harden and check machines over SSH (hardening/)."),
    # --- issue 13 (credits): `inkmcp credits grant|cap` and `inkmcp usage` (inkmcp/billing/cli.py)
    "credits": ("inkmcp.billing.cli", "credits_app", None),
    "usage": ("inkmcp.billing.cli", "usage", None),
    # --- issue 10 (dr): `inkmcp dr …`, production disaster-recovery steps (runbooks/dr)
    "dr": ("inkmcp.dr.cli", "dr_app", "Disaster recovery of the factory plane (runbooks/dr)."),
    # --- issue 10 (backup): `inkmcp backup create|verify|restore` and `inkmcp audit` (inkmcp/backup/cli.py)
    "backup": ("inkmcp.backup.cli", "backup_app", None),
    "audit": ("inkmcp.backup.cli", "audit", None),
}


def _load(name: str) -> click.Command:
    import importlib

    module, attribute, help_text = _LAZY[name]
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        command: click.Command = typer.main.get_group(target)  # as add_typer mounts it: no completion options
    else:  # a command function: a one-command app gives its click command
        single = typer.Typer(add_completion=False)
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    if help_text and not command.help:
        command.help = help_text
    return command


app = typer.Typer(cls=_LazyGroup, no_args_is_help=True, add_completion=False,
                  help="InkMCP: deploy infrastructure for AI agents.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys (one account may hold several).")
app.add_typer(keys_app, name="keys")
accounts_app = typer.Typer(no_args_is_help=True, help="Accounts: per-account limits.")
app.add_typer(accounts_app, name="accounts")


# --- issue 11 (github): `inkmcp accounts github-move FROM TO` (inkmcp/github/cli.py)
def _mount_github() -> None:
    from inkmcp.github.cli import github_move

    accounts_app.command("github-move")(github_move)


_mount_github()
# --- end
console = Console()
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

DataDir = Annotated[Path | None, typer.Option("--data-dir", envvar="INKMCP_DATA_DIR", help="state directory")]
Account = Annotated[str, typer.Option("--account", "-a", help="account name")]


def load_settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as e:
        for problem in e.errors():
            name = "INKMCP_" + "_".join(str(x) for x in problem["loc"]).upper()
            err.print(f"[red]Invalid configuration[/red] {name}: {problem['msg']}")
        raise typer.Exit(2) from None


_CLONE_NEWNS = 0x00020000
_MS_REC, _MS_SLAVE = 0x4000, 0x80000


def private_mounts() -> bool:
    """--- mender7: put this CLI process in a mount namespace of its own (root only), whose mounts never reach the
    host's and go when the process ends. Why: with `serve` stopped, the projects' filesystems are unmounted
    (diskquota), so a command reading tenant files (`inkmcp logs`) saw none; the provider now mounts what it
    needs (LocalComputeProvider._offline_files). Made in the host's namespace those mounts would outlive the
    command, and a `serve` stopping later would find (and unmount) mounts it never made. `serve`'s own mounts
    made later still reach this namespace (slave propagation), never the other way.

    Called before any thread starts (unshare applies to the calling thread; threads started later inherit it).
    False, and nothing changed, when not root or the kernel refuses (then nothing is mounted either: without
    root `ProjectDisks.enforced` is False)."""
    import ctypes
    import os

    if os.geteuid() != 0:
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        return False
    if libc.mount(b"none", b"/", None, _MS_REC | _MS_SLAVE, None) != 0:
        errno = ctypes.get_errno()
        raise InkError(f"could not make this command's mounts private: {os.strerror(errno)}",
                       fix="start `inkmcp serve` and run the command again (it reads the mounted files then)")
    return True


def run_with_platform(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    from inkmcp.app import open_runtime

    async def main() -> T:
        rt = await open_runtime(settings, serve=False)
        try:
            return await fn(rt.platform)
        finally:
            await rt.close()

    setup_logging("WARNING", json_logs=False)
    try:
        private_mounts()  # --- mender7: a stopped serve's tenant files mounted for this command only
        return asyncio.run(main())
    except InkError as e:
        err.print(f"[red]error:[/red] {e.render()}")
        raise typer.Exit(1) from None


def claude_line(settings: Settings, key: str, url: str | None = None) -> str:
    from inkmcp.serve_address import mcp_url

    url = url or mcp_url(settings)
    return f'claude mcp add --transport http mcpdeploy {url} --header "Authorization: Bearer {key}"'


def _url_for_keys(settings: Settings, configured: bool) -> tuple[str, str | None]:
    """The MCP URL for the printed `claude mcp add` line, and a note when it is a guess.

    The server running on this data dir says where it listens (serve.json); without one, the settings this
    command was given; with neither (no INKMCP_PORT/INKMCP_HOST, no --port/--host) the default, said as such,
    since a bare `keys create` printed port 8081 for a server on another port and the user's client failed."""
    from inkmcp.serve_address import mcp_url, running_address

    running = running_address(settings.data_dir)
    if running is not None:
        return running[1], None
    url = mcp_url(settings)
    if configured:
        return url, None
    return url, (f"No `inkmcp serve` is running on {settings.data_dir}, so this line assumes the default address "
                 f"{url}. If your server listens elsewhere, use its URL, or run this command with its settings: "
                 "--port / --host (or INKMCP_PORT / INKMCP_HOST).")


@app.command()
def serve(
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="MCP listen address")] = None,
    port: Annotated[int | None, typer.Option(help="MCP port (default 8081)")] = None,
    proxy_port: Annotated[int | None, typer.Option(help="port where deployed apps are served (default 8080)")] = None,
    stdio: Annotated[bool, typer.Option("--stdio", help="speak MCP over stdin/stdout instead of HTTP")] = False,
    account: Annotated[str, typer.Option(help="account used for --stdio")] = "default",
) -> None:
    """Run the MCP server (streamable HTTP at /mcp, plus /healthz and /metrics)."""
    settings = load_settings(data_dir=data_dir, host=host, port=port, proxy_port=proxy_port)
    setup_logging(settings.log_level, json_logs=settings.log_json)
    from inkmcp.serve import serve_http, serve_stdio

    try:
        if stdio:
            asyncio.run(serve_stdio(settings, account))
        else:
            asyncio.run(serve_http(settings, announce=lambda text: err.print(text, highlight=False)))
    except KeyboardInterrupt:
        pass
    except InkError as e:
        err.print(f"[red]error:[/red] {e.render()}")
        raise typer.Exit(1) from None


@keys_app.command("create")
def keys_create(
    account: Account,
    label: Annotated[str | None, typer.Option()] = None,
    data_dir: DataDir = None,
    host: Annotated[str | None, typer.Option(help="the server's MCP host, for the printed line (default: the "
                                                   "running server's, else 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="the server's MCP port, for the printed line (default: the "
                                                  "running server's, else 8081)")] = None,
) -> None:
    """Create the account if needed and print a new key (shown once) with the line that connects Claude Code."""
    import os

    settings = load_settings(data_dir=data_dir, host=host, port=port)
    configured = host is not None or port is not None or any(os.environ.get(v) for v in ("INKMCP_PORT", "INKMCP_HOST"))
    issued = run_with_platform(settings, lambda p: p.accounts.create_key(account, label))
    console.print(f"API key for account [bold]{issued.account}[/bold] (shown once, store it now):")
    print(issued.key)
    url, note = _url_for_keys(settings, configured)
    console.print("\nAdd it to Claude Code:")
    print(claude_line(settings, issued.key, url))
    if note:
        err.print(note, highlight=False)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="the key or its prefix")], data_dir: DataDir = None) -> None:
    """Revoke a key; requests with it get 401 at once."""
    settings = load_settings(data_dir=data_dir)
    n = run_with_platform(settings, lambda p: p.accounts.revoke_key(key))
    console.print(f"revoked {n} key(s)")


@keys_app.command("list")
def keys_list(account: Annotated[str | None, typer.Option("--account", "-a")] = None, data_dir: DataDir = None
              ) -> None:
    """Keys by prefix (keys themselves are never stored)."""
    settings = load_settings(data_dir=data_dir)
    keys = run_with_platform(settings, lambda p: p.accounts.list_keys(account))
    table = Table("prefix", "account", "label", "created", "last used", "revoked")
    for k in keys:
        table.add_row(k.prefix, k.account, k.label or "", f"{k.created_at:%Y-%m-%d %H:%M}",
                      f"{k.last_used_at:%Y-%m-%d %H:%M}" if k.last_used_at else "",
                      f"{k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "")
    console.print(table)


Limit = Annotated[int | None, typer.Option(min=0, show_default=False)]


@accounts_app.command("limits")
def accounts_limits(
    name: Annotated[str, typer.Argument(help="account name")],
    max_projects: Limit = None,
    max_services_per_project: Limit = None,
    max_databases: Limit = None,
    max_concurrent_builds: Limit = None,
    db_tiers: Annotated[str | None, typer.Option(help="database tiers it may choose, e.g. free,standard",
                                                 show_default=False)] = None,
    reset: Annotated[bool, typer.Option("--reset", help="back to the INKMCP_MAX_* defaults first")] = False,
    data_dir: DataDir = None,
) -> None:
    """Show an account's limits; with options, override the INKMCP_MAX_* defaults for it."""
    from inkmcp.core.accounts import LimitOverrides
    from inkmcp.core.limits import SETTING_OF

    settings = load_settings(data_dir=data_dir)
    try:
        overrides = LimitOverrides(
            max_projects=max_projects,
            max_services_per_project=max_services_per_project,
            max_databases=max_databases,
            max_concurrent_builds=max_concurrent_builds,
            database_tiers=[t.strip() for t in db_tiers.split(",") if t.strip()] if db_tiers is not None else None,
            reset=reset,
        )
    except ValidationError as e:
        for problem in e.errors():
            field = str(problem["loc"][0])
            option = "--db-tiers" if field == "database_tiers" else "--" + field.replace("_", "-")
            hint = " (tiers: free, standard)" if field == "database_tiers" else ""
            err.print(f"[red]error:[/red] {option}: {problem['msg']}{hint}")
        raise typer.Exit(2) from None
    changing = reset or any(v is not None for v in overrides.model_dump(exclude={"reset"}).values())

    async def go(p: Any) -> Any:
        if changing:
            return await p.set_account_limits(name, overrides)
        return await p.account_limits(name)

    limits = run_with_platform(settings, go)
    table = Table("limit", "value", "source")
    for field, setting in SETTING_OF.items():
        value = getattr(limits, field)
        shown = ",".join(t.value for t in value) if field == "database_tiers" else str(value)
        table.add_row(field.replace("_", "-"), shown, "this account" if field in limits.overridden else setting)
    console.print(f"limits of account [bold]{limits.account}[/bold]:")
    console.print(table)


async def _principal(platform: Any, account: str) -> Any:
    return await platform.accounts.principal_for(account, "cli")


@app.command("projects")
def projects(account: Account = "default", data_dir: DataDir = None) -> None:
    """List an account's projects."""
    settings = load_settings(data_dir=data_dir)

    async def go(p: Any) -> Any:
        return await p.list_projects(await _principal(p, account))

    result = run_with_platform(settings, go)
    table = Table("project", "services", "database", "repo")
    for pr in result.projects:
        table.add_row(pr.name, str(pr.services), pr.database or "", pr.repo_url or "")
    console.print(table)


@app.command("services")
def services(project: str, account: Account = "default", data_dir: DataDir = None) -> None:
    """List a project's services with URL, mode and last deployment."""
    settings = load_settings(data_dir=data_dir)

    async def go(p: Any) -> Any:
        return await p.list_services(await _principal(p, account), project)

    table = Table("service", "type", "mode", "url", "deployment", "status")
    for s in run_with_platform(settings, go):
        table.add_row(s.name, s.type, s.mode, s.url or "", s.deployment_id or "", s.deployment_status or "")
    console.print(table)


@app.command("deployment")
def deployment(deployment_id: str, account: Account = "default", data_dir: DataDir = None) -> None:
    """Show a deployment and its status history."""
    settings = load_settings(data_dir=data_dir)

    async def go(p: Any) -> Any:
        return await p.wait_for_deployment(await _principal(p, account), deployment_id, timeout=0)

    v = run_with_platform(settings, go)
    console.print(f"[bold]{v.project}/{v.service}[/bold] {v.status} {v.url or ''} commit {v.commit or ''}")
    for line in v.history:
        console.print(f"  {line}", highlight=False)
    if v.error:
        console.print(f"[red]{v.error}[/red]", highlight=False)


@app.command("logs")
def logs(
    project: str,
    service: Annotated[str | None, typer.Option("--service", "-s")] = None,
    scope: Annotated[str, typer.Option(help="build or runtime")] = "runtime",
    tail: int = 100,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new lines (Ctrl-C stops)")] = False,
    account: Account = "default",
    data_dir: DataDir = None,
) -> None:
    """Print the last log lines of a service (secrets redacted); --follow keeps tailing."""
    from inkmcp.core.types import LogScope

    settings = load_settings(data_dir=data_dir)

    async def go(p: Any) -> None:
        who = await _principal(p, account)
        seen: list[str] = []
        while True:
            view = await p.get_logs(who, project, scope=LogScope(scope), service_name=service, tail=tail)
            for line in _new_lines(seen, view.lines):
                sys.stdout.write(line + "\n")
            sys.stdout.flush()
            seen = view.lines
            if not follow:
                return
            await asyncio.sleep(1)

    with contextlib.suppress(KeyboardInterrupt):
        run_with_platform(settings, go)


def _new_lines(before: list[str], after: list[str]) -> list[str]:
    """Lines of `after` not already printed: find the longest tail of `before` that starts `after`."""
    for k in range(min(len(before), len(after)), 0, -1):
        if before[-k:] == after[:k]:
            return after[k:]
    return after


@app.command("deployments")
def deployments(
    project: str,
    service: Annotated[str | None, typer.Option("--service", "-s")] = None,
    limit: int = 20,
    account: Account = "default",
    data_dir: DataDir = None,
) -> None:
    """A project's recent deployments, newest first."""
    settings = load_settings(data_dir=data_dir)

    async def go(p: Any) -> Any:
        return await p.list_deployments(await _principal(p, account), project, service, limit)

    table = Table("deployment", "service", "status", "commit", "created", "error")
    for d in run_with_platform(settings, go):
        table.add_row(d.deployment_id, d.service, d.status, (d.commit or "")[:12], f"{d.created_at:%Y-%m-%d %H:%M:%S}",
                      (d.error or "")[:60])
    console.print(table)


@app.command("rotate-encryption-key")
def rotate_encryption_key(
    retire: Annotated[bool, typer.Option("--retire", help="drop every key but the primary")] = False,
    data_dir: DataDir = None,
) -> None:
    """Add a new primary key and re-encrypt every secret under it; old keys stay until --retire.

    Order: rotate, restart `inkmcp serve` (it loads keys at start), then `--retire`.
    """
    import os

    from inkmcp.store.crypto import ENV_VAR, KEY_FILE_RELATIVE, SecretBox, add_primary_key, retire_old_keys, rotate_all

    settings = load_settings(data_dir=data_dir)
    if os.environ.get(ENV_VAR):
        err.print(f"[red]error:[/red] keys come from {ENV_VAR}; put a new key first in that list, restart, "
                  "and run this command without the variable's old keys removed")
        raise typer.Exit(2)
    key_file = settings.data_dir / KEY_FILE_RELATIVE
    if retire:
        retire_old_keys(key_file)
        console.print("old keys retired; only the primary key remains")
        return
    add_primary_key(key_file)

    async def go() -> int:
        from inkmcp.app import open_runtime

        rt = await open_runtime(settings, serve=False)
        try:
            return await rotate_all(rt.store, SecretBox.load(settings.data_dir))
        finally:
            await rt.close()

    setup_logging("WARNING", json_logs=False)
    n = asyncio.run(go())
    console.print(f"re-encrypted {n} secret values under the new key. Restart `inkmcp serve`, then run "
                  "`inkmcp rotate-encryption-key --retire`.")


@app.command("doctor")
def doctor(
    url: Annotated[str | None, typer.Option("--url", envvar="INKMCP_COOLIFY_URL", help="Coolify's base URL (unset: "
                                            "check this machine for the local provider)")] = None,
    token: Annotated[str | None, typer.Option("--token", envvar="INKMCP_COOLIFY_TOKEN", help="Coolify API token",
                                              show_default=False)] = None,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="run the gVisor probe on every run server")] = True,
    probe_image: Annotated[str | None, typer.Option(envvar="INKMCP_DOCTOR_PROBE_IMAGE",
                                                    help="probe image (hardening/probe), without tag")] = None,
    probe_tag: Annotated[str | None, typer.Option(envvar="INKMCP_DOCTOR_PROBE_TAG")] = None,
    probe_timeout: Annotated[float | None, typer.Option(help="seconds to wait for each probe")] = None,
    data_dir: DataDir = None,
) -> None:
    """Check the installation and print what to fix for each failure; exits 1 if any check fails.

    With Coolify (--url/--token or INKMCP_COOLIFY_URL/TOKEN): can it be InkMCP's production compute (API, token
    abilities, servers, gVisor). Without: can this machine run apps with the local provider, safely (control-plane
    PostgreSQL, root, cgroups, the tenant sandbox, disk per project and free disk, proxy, ports, tools).
    """
    from inkmcp.doctor import Status

    if url:
        if not token:
            err.print("[red]error:[/red] --url needs --token (or INKMCP_COOLIFY_TOKEN): a Coolify API token")
            raise typer.Exit(2)
        report = _coolify_doctor(url, token, probe, {"image": probe_image, "tag": probe_tag, "timeout": probe_timeout})
    else:  # --- mender8: the local provider's own checks (a local-only operator could not run the doctor at all)
        from inkmcp.doctor_local import run_local_doctor

        settings = load_settings(data_dir=data_dir)
        setup_logging("WARNING", json_logs=False)
        try:
            private_mounts()  # the disk probe's mount goes with this process even if it is killed
        except InkError as e:
            err.print(f"[red]error:[/red] {e.render()}")
            raise typer.Exit(1) from None
        report = run_local_doctor(settings)
    colour = {Status.ok: "green", Status.warn: "yellow", Status.fail: "red", Status.skipped: "dim"}
    table = Table("check", "result", "detail", "fix")
    for c in report.checks:
        table.add_row(c.name, f"[{colour[c.status]}]{c.status.value}[/]", c.detail, c.fix)
    console.print(table)
    if not report.ok:
        raise typer.Exit(1)


def _coolify_doctor(url: str, token: str, probe: bool, overrides: dict[str, Any]) -> Any:
    from inkmcp.coolify.client import CoolifyClient
    from inkmcp.doctor import GvisorProbe, ProbeSettings, check_local_proxy, run_doctor

    probe_settings = ProbeSettings(**{k: v for k, v in overrides.items() if v is not None})

    async def go() -> Any:
        try:
            client = CoolifyClient(url, token, url_setting="INKMCP_COOLIFY_URL", token_setting="INKMCP_COOLIFY_TOKEN")  # noqa: S106 - a setting name
        except ValueError as e:
            err.print(f"[red]error:[/red] {e}")
            raise typer.Exit(2) from None
        async with client:
            return await run_doctor(client, probe=GvisorProbe(client, probe_settings) if probe else None)

    setup_logging("WARNING", json_logs=False)
    report = asyncio.run(go())
    check_local_proxy(report)  # --- proxy6: the local provider's proxy (InkMCP's nginx module or headers-more, why)
    return report


@app.command("reconcile")
def reconcile(
    repair: Annotated[bool, typer.Option("--repair", help="delete old orphans, mark services whose Coolify "
                                         "applications are gone (default: report only)")] = False,
    data_dir: DataDir = None,
) -> None:
    """Compare InkMCP's records with Coolify's (compute = Coolify) and report drift; exits 1 while drift remains.
    Settings: INKMCP_RECONCILE_* (inkmcp/core/reconcile.py)."""
    from inkmcp.core.reconcile import Reconciler, ReconcileSettings, table

    settings = load_settings(data_dir=data_dir)

    async def go() -> Any:
        from inkmcp.app import open_runtime

        rt = await open_runtime(settings, serve=False)
        try:
            if rt.compute.name != "coolify":
                err.print("[red]error:[/red] compute is not Coolify: the reconciler compares InkMCP's records with "
                          "Coolify's; set INKMCP_COOLIFY_URL and INKMCP_COOLIFY_TOKEN")
                raise typer.Exit(2)
            return await Reconciler.for_provider(rt.store.sessionmaker, rt.compute, ReconcileSettings()).run(
                repair=repair)
        finally:
            await rt.close()

    setup_logging("WARNING", json_logs=False)
    try:
        report = asyncio.run(go())
    except InkError as e:
        err.print(f"[red]error:[/red] {e.render()}")
        raise typer.Exit(1) from None
    if report.skipped:
        err.print(f"[yellow]{report.skipped}[/yellow]; run again when it is done")
        raise typer.Exit(1)
    console.print(table(report))
    left = len(report.remaining) + len(report.errors)
    console.print(f"{len(report.drift)} drift found, {len(report.drift) - len(report.remaining)} repaired, "
                  f"{left} left ({report.seconds:.1f} s)")
    if left:
        raise typer.Exit(1)

# --- tenantdisk2: stop the embedded tenant server (and unmount its disks) when no `inkmcp serve` follows
@app.command("stop-tenant-server")
def stop_tenant_server_command(data_dir: DataDir = None) -> None:
    """Stop the embedded tenant PostgreSQL server and unmount its databases' disks (refused while `inkmcp serve`
    runs). For when no serve follows one that was killed (or one that had adopted the server and stopped)."""
    from inkmcp.store.tenant_disks import stop_tenant_server

    settings = load_settings(data_dir=data_dir)
    setup_logging("WARNING", json_logs=False)
    try:  # in the host's mount namespace (not private_mounts): the mounts to remove are the host's
        console.print(stop_tenant_server(settings.data_dir))
    except InkError as e:
        err.print(f"[red]error:[/red] {e.render()}")
        raise typer.Exit(1) from None
# --- end tenantdisk2

if __name__ == "__main__":
    app()
