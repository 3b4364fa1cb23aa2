"""What happens at zero (or over the cap), beyond refusing mutating calls (`Ledger.check`):

* on_demand services stop waking: the local provider asks `wake_gate` before each wake, and a refusal becomes a
  402 page from its proxy. The gate reads only memory for accounts in good standing; for an account the last
  metering pass saw blocked it re-reads the account's row, so a top-up lets the very next request wake it.
* persistent services keep running for INKMCP_GRACE_S, then are put to sleep like on_demand ones (the provider's
  `suspend`): their route stays, requests get the 402 page, and once the account can pay again the next pass wakes
  them (`resume`) or the next request does. Nothing is deleted or redeployed either way.

Providers without `suspend`/`resume`/`wake_gate` (Coolify today) get the refusals only; docs/billing.md says so.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from inkmcp.billing.ledger import Ledger
from inkmcp.billing.metering import BLOCKED_ACCOUNTS, SUSPENDED_SERVICES

log = logging.getLogger("inkmcp.billing")


@dataclass
class Enforcer:
    engine: AsyncEngine
    ledger: Ledger
    compute: Any
    blocked: set[str] = field(default_factory=set)
    suspended: set[str] = field(default_factory=set)

    def install(self) -> None:
        """Hook the wake gate into the compute provider, if it has one."""
        if hasattr(self.compute, "wake_gate"):
            self.compute.wake_gate = self.wake_gate

    async def wake_gate(self, key: Any) -> str | None:
        """None to let a sleeping service wake, else the text of the 402 page."""
        if key.account_id not in self.blocked:
            return None
        status = await self.ledger.status(uuid.UUID(key.account_id))
        if not status.blocked:
            self.blocked.discard(key.account_id)
            return None
        hint = self.ledger.settings.dashboard_hint(key.account_id)
        if self.ledger.settings.public_url is None:
            hint = "ask the operator of this server to add credits"
        return (f"{key.service_name}.{key.project_name} is asleep: its account has {status.reason()} "
                f"(balance {status.balance}). It wakes once credits are added: {hint}.")

    async def on_pass(self) -> None:
        """After each metering pass: refresh the blocked accounts, sleep persistent services past their grace
        period, wake those whose account can pay again."""
        grace = self.ledger.settings.grace_s
        async with self.engine.connect() as conn:
            self.blocked = {r[0] for r in await conn.execute(BLOCKED_ACCOUNTS)}
            due = {r[0] for r in await conn.execute(SUSPENDED_SERVICES, {"grace": grace})}
        suspend: Callable[[str], Awaitable[bool]] | None = getattr(self.compute, "suspend", None)
        resume: Callable[[str], Awaitable[bool]] | None = getattr(self.compute, "resume", None)
        if suspend is not None:
            for service_id in due - self.suspended:
                try:
                    if await suspend(service_id):
                        log.info("service %s put to sleep: its account is out of credits past the grace period",
                                 service_id)
                    self.suspended.add(service_id)
                except Exception:
                    log.exception("could not put service %s to sleep", service_id)
        if resume is not None:
            for service_id in self.suspended - due:
                try:
                    await resume(service_id)
                    self.suspended.discard(service_id)
                except Exception:
                    log.exception("could not wake service %s (its account can pay again)", service_id)


async def blocked_now(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return {r[0] for r in await conn.execute(text("SELECT CAST(account_id AS text) FROM billing_accounts "
                                                      "WHERE blocked_since IS NOT NULL"))}
