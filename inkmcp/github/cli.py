"""`inkmcp accounts github-move FROM TO`: the operator's side of the sign-in rule that never takes over an account
(inkmcp/github/identity.py): when the GitHub user who got `LOGIN-gh<id>` owns the operator-made account `LOGIN`,
move the GitHub binding there."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

console = Console()


def github_move(
    from_account: Annotated[str, typer.Argument(help="account the GitHub user signed in to, e.g. alice-gh123")],
    to_account: Annotated[str, typer.Argument(help="account to bind that GitHub user to instead, e.g. alice")],
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="INKMCP_DATA_DIR",
                                                  help="state directory")] = None,
) -> None:
    """Move a GitHub sign-in (and its stored token) to another account that has none."""
    from inkmcp.cli import load_settings, run_with_platform
    from inkmcp.github.identity import move_identity

    settings = load_settings(data_dir=data_dir)

    async def go(p: Any) -> Any:
        # moved first: a typo in either name is an error and creates nothing (principal_for would make the account)
        user = await move_identity(p.sessions, from_account, to_account)
        principal = await p.accounts.principal_for(to_account, "cli")
        await p.audit.record(principal, "github_move", target=f"{from_account}->{to_account}",
                             arguments={"from_account": from_account, "to_account": to_account, "github_id": user.id})
        return user

    user = run_with_platform(settings, go)
    console.print(f"GitHub user [bold]{user.login}[/bold] (id {user.id}) now signs in to account "
                  f"[bold]{to_account}[/bold]; keys and projects of {from_account} stay there.")
