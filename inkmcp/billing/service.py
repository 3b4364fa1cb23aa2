"""Billing as the composition root wires it: the ledger, the metering loop and the enforcer, or nothing at all
when INKMCP_PRICES is unset (then `build_billing` returns None and no call is ever refused)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from inkmcp.billing.breaker import Breaker
from inkmcp.billing.enforce import Enforcer
from inkmcp.billing.ledger import AccountStatus, CreditKind, CreditResult, Ledger
from inkmcp.billing.metering import Meter
from inkmcp.billing.probes import awake_probe
from inkmcp.billing.settings import BillingSettings, load_billing_settings
from inkmcp.billing.stripe import Stripe, StripeSettings
from inkmcp.billing.usage import UsageView, usage_view
from inkmcp.core.principal import Principal
from inkmcp.errors import settings_from_env


@dataclass
class Billing:
    settings: BillingSettings
    ledger: Ledger
    meter: Meter
    enforcer: Enforcer
    breaker: Breaker
    stripe: Stripe

    async def checkout_url(self, account: str, amount: int, *, success_url: str, cancel_url: str) -> str:
        """For the dashboard's "Add credits" button: a Stripe Checkout Session's URL (the webhook credits it)."""
        return await self.stripe.create_checkout_session(account, amount, success_url=success_url,
                                                         cancel_url=cancel_url)

    def routes(self) -> list[Any]:
        """HTTP routes to serve beside /mcp: POST /webhooks/stripe when INKMCP_STRIPE_WEBHOOK_SECRET is set, and
        /_inkmcp/suspended/{token} (the 402 page of a suspended service under Coolify)."""
        stripe = self.stripe.routes() if self.stripe.settings.webhook_secret is not None else []
        # --- billcore (issue 13): the 402 page Coolify routers of suspended services point at
        return [*stripe, *self.enforcer.routes()]
        # --- end billcore

    async def check(self, p: Principal, action: str) -> None:
        """Raise CreditsExhausted (a tool error with balance, cap and how to add credits) if `p` cannot pay."""
        await self.ledger.check(p, action)

    async def usage(self, p: Principal) -> UsageView:
        return await usage_view(self.ledger, p.account_id, p.account_name)

    async def credit(self, account: str | uuid.UUID, amount: int, *, source_id: str, kind: CreditKind = "grant",
                     reason: str | None = None) -> CreditResult:
        return await self.ledger.credit(account, amount, source_id=source_id, kind=kind, reason=reason)

    async def set_cap(self, account: str | uuid.UUID, amount: int | None) -> AccountStatus:
        """For the dashboard and `inkmcp credits cap`: the account's monthly spend cap (None = the default)."""
        return await self.ledger.set_cap(account, amount)

    def start(self, stack: AsyncExitStack) -> None:
        """Run the metering loop until the runtime closes (cancelled first)."""
        self.enforcer.install()
        task = asyncio.create_task(self.meter.run(), name="billing-metering")

        async def stop() -> None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self.enforcer.close()  # --- billcore: its remote pass runs in a task of its own
            await self.stripe.aclose()  # the kept Stripe client's connections

        stack.push_async_callback(stop)


def own_postgres_sizes(admin_libpq_url: str, sessions: async_sessionmaker[AsyncSession]) -> Any:
    """Size probe for databases on our own Postgres server (provider 'postgres'): one pg_database_size query.
    Neon and Coolify-managed databases are not measured (docs/billing.md)."""

    async def probe() -> dict[uuid.UUID, int]:
        async with sessions() as s:
            rows = (await s.execute(text("SELECT id, external_id FROM databases WHERE provider = 'postgres' "
                                         "AND kind = 'postgres'"))).all()
        if not rows:
            return {}
        by_name = {r[1]: r[0] for r in rows}
        async with await psycopg.AsyncConnection.connect(admin_libpq_url, autocommit=True) as conn:
            cur = await conn.execute("SELECT datname, pg_database_size(datname) FROM pg_database "
                                     "WHERE datname = ANY(%s)", (list(by_name),))
            return {by_name[name]: size for name, size in await cur.fetchall()}

    return probe


def load_stripe_settings() -> StripeSettings:
    """A bad value is an InkError naming INKMCP_STRIPE_<FIELD> and what it takes (its description)."""
    return settings_from_env(StripeSettings, "INKMCP_STRIPE_", "docs/billing.md")


def build_billing(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], compute: Any, *, replica: str,
    tenant_admin_url: str | None = None, settings: BillingSettings | None = None,
) -> Billing | None:
    settings = settings or load_billing_settings()
    if not settings.enabled:
        return None
    ledger = Ledger(sessions, settings)
    enforcer = Enforcer(engine, ledger, compute)
    meter = Meter(engine, settings, replica, awake_probe=awake_probe(compute, sessions),
                  size_probe=own_postgres_sizes(tenant_admin_url, sessions) if tenant_admin_url else None,
                  on_pass=enforcer.on_pass)
    return Billing(settings=settings, ledger=ledger, meter=meter, enforcer=enforcer,
                   breaker=Breaker(sessions, settings), stripe=Stripe(load_stripe_settings(), ledger))
