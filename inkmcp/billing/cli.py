"""Operator commands: `inkmcp credits grant|cap` and `inkmcp usage`. Mounted by inkmcp/cli.py.

They work whether or not billing is on (INKMCP_PRICES): a grant made before prices are set is in the balance when
they are. Every change is audited like an MCP call (actor `cli`).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import text

from inkmcp.billing.ledger import Ledger
from inkmcp.billing.settings import load_billing_settings
from inkmcp.billing.usage import usage_view
from inkmcp.errors import InkError

credits_app = typer.Typer(no_args_is_help=True, help="Credits: grants and monthly spend caps (docs/billing.md).")
console = Console()
err = Console(stderr=True, soft_wrap=True)

AccountOpt = Annotated[str, typer.Option("--account", "-a", help="account name")]


def _run(fn: Any) -> Any:
    """`fn(platform, ledger)` with the store open (as every operator command runs), errors as one red line."""
    from inkmcp.cli import load_settings, run_with_platform

    try:
        billing = load_billing_settings()
    except InkError as e:
        err.print(f"[red]error:[/red] {e.render()}")
        raise typer.Exit(2) from None
    return run_with_platform(load_settings(), lambda p: fn(p, Ledger(p.sessions, billing)))


@credits_app.command("grant")
def grant(
    account: AccountOpt,
    amount: Annotated[int, typer.Option(min=1, help="minor units (e.g. cents), > 0")],
    reason: Annotated[str, typer.Option(help="why, kept in the ledger")],
    id: Annotated[str | None, typer.Option("--id", help="idempotency key: the same id again grants nothing more")
                  ] = None,
) -> None:
    """Grant credits to an account (once per --id; without one, every run is a new grant)."""
    source = f"grant:{id}" if id else f"grant:{uuid.uuid4()}"

    async def go(p: Any, ledger: Ledger) -> Any:
        await ledger.account_id(account)
        principal = await p.accounts.principal_for(account, "cli")
        args = {"amount": amount, "reason": reason, "source_id": source}
        async with p._audited(principal, "credits_grant", account, args):
            return await ledger.credit(account, amount, source_id=source, kind="grant", reason=reason)

    result = _run(go)
    verb = "granted" if result.applied else "already granted (same --id): nothing added"
    console.print(f"{verb} {amount} to [bold]{result.account}[/bold]; balance {result.balance}")


@credits_app.command("cap")
def cap(
    account: AccountOpt,
    amount: Annotated[int | None, typer.Option(min=0, help="monthly spend cap, minor units")] = None,
    reset: Annotated[bool, typer.Option("--reset", help="back to INKMCP_MONTHLY_CAP")] = False,
) -> None:
    """Set (or with --reset clear) an account's monthly spend cap; without options, show it."""
    if amount is not None and reset:
        err.print("[red]error:[/red] pass either --amount N or --reset, not both")
        raise typer.Exit(2)

    async def go(p: Any, ledger: Ledger) -> Any:
        account_id, _ = await ledger.account_id(account)
        if amount is None and not reset:
            return await ledger.status(account_id)
        principal = await p.accounts.principal_for(account, "cli")
        async with p._audited(principal, "credits_cap", account, {"amount": amount, "reset": reset}):
            return await ledger.set_cap(account, None if reset else amount)

    st = _run(go)
    shown = "none" if st.cap is None else str(st.cap)
    console.print(f"[bold]{account}[/bold]: monthly cap {shown}, spent {st.month_spend} this month, "
                  f"balance {st.balance}")


ACCOUNTS = text("""
SELECT a.name, b.balance, COALESCE(b.monthly_cap, CAST(:cap AS bigint)),
       CASE WHEN b.month_start = CAST(date_trunc('month', now() AT TIME ZONE 'UTC') AS date) THEN b.month_spend
            ELSE 0 END, b.blocked_since
FROM accounts a LEFT JOIN billing_accounts b ON b.account_id = a.id ORDER BY a.name LIMIT 500
""")


def usage(account: Annotated[str | None, typer.Option("--account", "-a", help="one account, in detail")] = None
          ) -> None:
    """Balances, caps and spend of every account, or one account's detail (burn rate, days left, top services)."""

    async def go(p: Any, ledger: Ledger) -> Any:
        if account is not None:
            account_id, name = await ledger.account_id(account)
            return await usage_view(ledger, account_id, name)
        async with p.sessions() as s:
            return (await s.execute(ACCOUNTS, {"cap": ledger.settings.monthly_cap})).all()

    result = _run(go)
    if account is None:
        table = Table("account", "balance", "monthly cap", "spent this month", "blocked since")
        for name, balance, cap_, spend, blocked in result:
            table.add_row(name, "" if balance is None else str(balance), "" if cap_ is None else str(cap_),
                          "" if spend is None else str(spend), f"{blocked:%Y-%m-%d %H:%M}" if blocked else "")
        console.print(table)
        return
    view = result
    if not view.billing:
        console.print(view.note)
    table = Table("balance", "monthly cap", "spent this month", "burn / hour", "days left")
    table.add_row(str(view.balance), "none" if view.monthly_cap is None else str(view.monthly_cap),
                  str(view.spent_this_month), str(view.burn_per_hour),
                  "-" if view.days_left is None else f"{view.days_left:g}")
    console.print(table)
    if view.top:
        top = Table("service", "kind", "cost this month")
        for row in view.top:
            top.add_row(row.name, row.kind, f"{row.cost:g}")
        console.print(top)
    if view.note:
        console.print(view.note)
