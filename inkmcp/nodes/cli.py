"""`inkmcp nodes`: harden machines outside Pulumi over SSH, or check them for drift.

Mounted by the main CLI as `inkmcp nodes`; uses the same renderer and plan as the muscle stack.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console

from inkmcp.nodes.render import HostParams

nodes_app = typer.Typer(no_args_is_help=True, help="Run servers: hardening and drift checks over SSH.")
out = Console()
err = Console(stderr=True, soft_wrap=True)


@nodes_app.callback()
def nodes() -> None:
    """Run servers: hardening and drift checks over SSH."""
    # A callback keeps `harden` a named sub-command even while it is the group's only command.


def load_params(
    params_file: Path | None, root: str, user: str, private_cidrs: list[str] | None, allow_users: list[str] | None
) -> HostParams:
    """Parameters from an optional YAML/JSON file (same fields as HostParams), then flags on top.
    The SSH user is always added to AllowUsers so hardening can never lock out the session applying it."""
    data: dict[str, Any] = {}
    if params_file is not None:
        text = params_file.read_text()
        data = json.loads(text) if params_file.suffix == ".json" else (yaml.safe_load(text) or {})
        if not isinstance(data, dict):
            raise typer.BadParameter("the params file must hold a mapping of HostParams fields", param_hint="--params")
    data["root"] = root
    if private_cidrs:
        data["private_cidrs"] = private_cidrs
    users = list(allow_users or data.get("ssh_allow_users") or [])
    if user not in users:
        users.append(user)
    data["ssh_allow_users"] = users
    try:
        return HostParams(**data)
    except ValidationError as e:
        for problem in e.errors():
            err.print(f"[red]invalid parameter[/red] {'.'.join(str(x) for x in problem['loc'])}: {problem['msg']}")
        raise typer.Exit(2) from None


@nodes_app.command("harden")
def harden(
    host: Annotated[str, typer.Argument(help="host name or address to harden over SSH")],
    user: Annotated[str, typer.Option(help="SSH user (root, or one with passwordless sudo)")] = "root",
    port: Annotated[int, typer.Option(help="SSH port")] = 22,
    key: Annotated[Path | None, typer.Option(help="private key file (default: agent and ~/.ssh keys)")] = None,
    root: Annotated[str, typer.Option(help="path prefix on the host; not '/' = stage into a directory only")] = "/",
    check: Annotated[bool, typer.Option("--check", help="report drift, change nothing; exit 1 on drift")] = False,
    params: Annotated[Path | None, typer.Option("--params", help="YAML/JSON file with HostParams fields")] = None,
    private_cidr: Annotated[
        list[str] | None, typer.Option("--private-cidr", help="platform private network to block (repeat)")
    ] = None,
    allow_user: Annotated[list[str] | None, typer.Option("--allow-user", help="sshd AllowUsers entry (repeat)")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per remote command")] = 60.0,
) -> None:
    """Apply the run-server hardening to HOST (or, with --check, report how HOST differs from it)."""
    # fabric/paramiko load lazily: every other `inkmcp` command would pay ~0.3 s for them at start
    from inkmcp.nodes.apply import apply_host, connect
    from inkmcp.nodes.check import NodeError, check_host

    host_params = load_params(params, root, user, private_cidr, allow_user)
    try:
        conn = connect(host, user=user, port=port, key_filename=key)
    except NodeError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    try:
        if check:
            drift = check_host(conn, host_params, timeout=timeout)
            for item in drift:
                out.print(f"drift {item}", markup=False)
            if drift:
                raise typer.Exit(1)
            out.print("no drift")
            return
        report = apply_host(conn, host_params, timeout=timeout)
        out.print(report.summary(), markup=False)
    except NodeError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    finally:
        conn.close()


sandbox_app = typer.Typer(no_args_is_help=True, help="A run server in a box on this machine (inkmcp/nodes/sandbox.py).")
nodes_app.add_typer(sandbox_app, name="sandbox")


@sandbox_app.command("up")
def sandbox_up(
    dir: Annotated[Path, typer.Option("--dir", help="the box's directory (packages, state, data)")],
    params: Annotated[Path | None, typer.Option("--params", help="YAML/JSON file with HostParams fields")] = None,
) -> None:
    """Start a private dockerd 26 + containerd + runsc, configured by the hardening renderer; the last
    line is DOCKER_HOST=unix://... for the box."""
    from inkmcp.nodes.sandbox import SandboxError, up

    try:
        state = up(dir.resolve(), params)
    except SandboxError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    # Plain print: the DOCKER_HOST line must reach scripts unwrapped and unstyled, whatever the terminal width.
    print(f"sandbox up in {state.up_seconds} s (netns {state.netns}, log {state.dir}/dockerd.log)")
    # The stand-ins the box's registry serves (docker.io mirror), pullable by tag or by this digest.
    for ref, digest in state.images.items():
        print(f"image {ref}@{digest}")
    print(f"DOCKER_HOST={state.docker_host}", flush=True)


@sandbox_app.command("down")
def sandbox_down(dir: Annotated[Path, typer.Option("--dir", help="the box's directory given to `up`")]) -> None:
    """Stop exactly what `up` started in DIR (by its pid files and cgroup) and delete its namespace."""
    from inkmcp.nodes.sandbox import SandboxError, down

    try:
        done = down(dir.resolve())
    except SandboxError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    out.print("\n".join(done) if done else f"no box is up in {dir}", markup=False)


replay_app = typer.Typer(no_args_is_help=True,
                         help="Coolify v4.3.11's run-server commands against a box (inkmcp/nodes/replay_run.py).")
nodes_app.add_typer(replay_app, name="replay")


@replay_app.command("run")
def replay_run(
    box: Annotated[Path, typer.Option("--box", help="the box's directory (`inkmcp nodes sandbox up --dir DIR`)")],
    ops: Annotated[
        list[str] | None, typer.Argument(help="operation ids (`python -m inkmcp.nodes.replay list`)")
    ] = None,
    all_ops: Annotated[bool, typer.Option("--all", help="every operation of the data, in its order")] = False,
    set_values: Annotated[
        list[str] | None, typer.Option("--set", help="NAME=VALUE for a placeholder (repeat); default: fresh values")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="results and the matrix as JSON on stdout")] = False,
) -> None:
    """Run Coolify operations against the box as Coolify does; print where each container ended up
    (platform / sandboxed / refused, with the proof). Exit 1 when an operation did not work as Coolify expects."""
    from inkmcp.nodes.replay import ReplayError, load_replay
    from inkmcp.nodes.replay_run import BoxShell, ReplayResult, format_matrix, matrix, parse_sets, run_many

    data = load_replay()
    if all_ops and ops:
        raise typer.BadParameter("give operation ids or --all, not both", param_hint="--all")
    op_ids = [op.id for op in data.operations] if all_ops else list(ops or [])
    if not op_ids:
        raise typer.BadParameter("name at least one operation, or pass --all", param_hint="OPS")
    try:
        for op_id in op_ids:
            data.operation(op_id)
        values = parse_sets(set_values or [])
        shell = BoxShell(box)

        def progress(result: ReplayResult) -> None:
            err.print(f"{result.op}: {'ok' if result.ok else 'NOT OK'}"
                      f"{'' if result.failed_step is None else f' (stopped at {result.failed_step})'}"
                      f" in {result.seconds} s", markup=False)

        results = run_many(shell.box, op_ids, values, data=data, on_result=progress)
    except ReplayError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None
    rows = matrix(results)
    if as_json:
        print(json.dumps({
            "box": str(shell.box),
            "selector_sha256": shell.selector_digest(),
            "results": [r.model_dump(mode="json", by_alias=True) for r in results],
            "matrix": [row.model_dump(mode="json", by_alias=True) for row in rows],
        }, indent=2))
    else:
        print(format_matrix(rows))
        for r in results:
            for c in [*r.files, *r.expectations]:
                if c.ok is False:
                    print(f"{r.op}: FAILED {c.what}: {c.detail}")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


@sandbox_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def sandbox_exec(
    ctx: typer.Context,
    dir: Annotated[Path, typer.Option("--dir", help="the box's directory given to `up`")],
) -> None:
    """Run a command in the box as Coolify's SSH session runs on a node (default `bash -se` reading stdin):
    root, the box's network and mount namespaces (/var/run/docker.sock, /data/coolify, /root are the
    box's), no DOCKER_HOST, the box's docker CLI with compose and buildx on PATH. Exit code passes through.

        echo 'docker compose version' | inkmcp nodes sandbox exec --dir DIR
        inkmcp nodes sandbox exec --dir DIR -- docker ps"""
    import subprocess

    from inkmcp.nodes.sandbox import SandboxError, exec_argv

    command = list(ctx.args) or ["bash", "-se"]
    try:
        argv = exec_argv(dir.resolve(), command)
    except SandboxError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    raise typer.Exit(subprocess.run(argv, check=False).returncode)


@nodes_app.command("attack")
def attack(
    box: Annotated[Path, typer.Option("--box", help="directory of a box brought up with `nodes sandbox up`")],
    ids: Annotated[list[str] | None, typer.Argument(help="attack ids (default: all), e.g. A1 A6a")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per attack instead of a table")] = False,
) -> None:
    """Run the tenant attacks of inkmcp/nodes/attacks.py against the box and judge each from inside the
    container; exit 1 when an outcome differs from the design's (try a hardening change here first)."""
    from inkmcp.nodes.attacks import run_all
    from inkmcp.nodes.sandbox import SandboxError

    try:
        results = run_all(box.resolve(), ids or None)
    except SandboxError as e:
        err.print(f"[red]error:[/red] {e}")
        raise typer.Exit(1) from None
    if as_json:
        for r in results:
            print(r.model_dump_json())
    else:
        print("| attack | what | expected | outcome | evidence |\n|---|---|---|---|---|")
        for r in results:
            print(f"| {r.id} | {r.title} | {r.expected} | {r.outcome}{'' if r.ok else ' **(differs)**'} | "
                  f"{r.evidence[:200]} |")
    if not all(r.ok for r in results):
        raise typer.Exit(1)


# -- draining (issue 8 item 6): needs the runtime (settings → store → Coolify provider + placement) ------------

DataDirOption = Annotated[Path | None, typer.Option("--data-dir", envvar="INKMCP_DATA_DIR", help="state directory")]


def _with_drainer(data_dir: Path | None, fn: Any) -> Any:
    """Open the runtime as `inkmcp serve` would (same INKMCP_* settings, nothing started), run `fn(drainer)`."""
    import asyncio

    from inkmcp.cli import load_settings
    from inkmcp.errors import InkError
    from inkmcp.logsetup import setup_logging

    settings = load_settings(data_dir=data_dir)

    async def main() -> Any:
        from inkmcp.app import open_runtime
        from inkmcp.placement.drain import Drainer

        rt = await open_runtime(settings, serve=False)
        try:
            return await fn(Drainer.from_runtime(rt))
        finally:
            await rt.close()

    setup_logging("WARNING", json_logs=False)
    try:
        return asyncio.run(main())
    except InkError as e:
        err.print(f"[red]error:[/red] {e.render()}")
        raise typer.Exit(1) from None
    except LookupError as e:  # unknown node name, or compute is not Coolify
        err.print(f"[red]error:[/red] {e.args[0] if e.args else e}", markup=False)
        raise typer.Exit(2) from None


@nodes_app.command("drain")
def drain(
    name: Annotated[str, typer.Argument(help="the run server's name in Coolify (or its uuid)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="plan only, change nothing")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Move every service off run server NAME, one at a time, each health-checked on its new server before the
    old copy is deleted (inkmcp/placement/drain.py). The server takes no new services from now on (`undrain`
    gives it back). Stops at the first failure; running it again continues. Exit 1 if anything did not move."""
    from rich.table import Table

    async def run(drainer: Any) -> Any:
        def progress(line: str) -> None:
            err.print(line, markup=False, highlight=False)

        return await drainer.drain(name, dry_run=dry_run, progress=progress)

    report = _with_drainer(data_dir, run)
    table = Table(title=f"{'plan for draining' if report.dry_run else 'drain of'} {report.node}")
    for column in ("service", "from", "to", "status", "seconds", "detail"):
        table.add_column(column, overflow="fold")
    colour = {"moved": "green", "planned": "cyan", "not tried": "yellow"}
    for o in report.outcomes:
        table.add_row(o.service, o.from_node, o.to_node or "-", f"[{colour.get(o.status, 'red')}]{o.status}[/]",
                      f"{o.seconds:g}" if o.seconds else "", o.detail)
    if not report.outcomes:
        table.caption = "no services on this server"
    out.print(table)
    if not report.ok:
        raise typer.Exit(1)


@nodes_app.command("undrain")
def undrain(
    name: Annotated[str, typer.Argument(help="the run server's name in Coolify (or its uuid)")],
    data_dir: DataDirOption = None,
) -> None:
    """Clear the draining mark of run server NAME: new services may be placed there again (services already
    moved stay where they are)."""

    async def run(drainer: Any) -> Any:
        return await drainer.undrain(name)

    node = _with_drainer(data_dir, run)
    out.print(f"{node.name} ({node.uuid}) takes new services again", markup=False)
