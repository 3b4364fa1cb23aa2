"""The credits ledger: append-only entries, one per grant, top-up, usage charge or refund.

Every entry carries a unique `source_id` (`INSERT ... ON CONFLICT (source_id) DO NOTHING`), so the event behind it
(a Stripe event id, a metering pass, an operator's grant with its own id) can be delivered any number of times and
counts once. The balance is the sum of the entries; `billing_accounts.balance` caches it and is changed only in the
statement that inserts the entry it sums (both or neither), so the check before a mutating call reads one row.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from inkmcp.billing.settings import BillingSettings
from inkmcp.core.principal import Principal
from inkmcp.errors import InkError, InvalidArgument, NotFound

CreditKind = Literal["grant", "topup", "refund"]

ENSURE_ALL = text("""
WITH new AS (
  INSERT INTO billing_accounts (account_id, balance)
  SELECT a.id, :starter FROM accounts a
  WHERE NOT EXISTS (SELECT 1 FROM billing_accounts b WHERE b.account_id = a.id)
  ON CONFLICT (account_id) DO NOTHING
  RETURNING account_id
)
INSERT INTO credit_entries (account_id, kind, amount, source_id, reason)
SELECT account_id, 'grant', :starter, 'starter:' || account_id, 'starter credits' FROM new WHERE :starter > 0
""")
"""Every account gets its billing row, and INKMCP_STARTER_CREDITS with it, in one statement (both or neither)."""

ENSURE_ONE = text("""
WITH new AS (
  INSERT INTO billing_accounts (account_id, balance) VALUES (:account, :starter)
  ON CONFLICT (account_id) DO NOTHING RETURNING account_id
)
INSERT INTO credit_entries (account_id, kind, amount, source_id, reason)
SELECT account_id, 'grant', :starter, 'starter:' || account_id, 'starter credits' FROM new WHERE :starter > 0
""")

CREDIT = text("""
WITH e AS (
  INSERT INTO credit_entries (account_id, kind, amount, source_id, reason)
  VALUES (:account, :kind, :amount, :source, :reason)
  ON CONFLICT (source_id) DO NOTHING
  RETURNING account_id, amount
)
UPDATE billing_accounts b SET balance = b.balance + e.amount, updated_at = now()
FROM e WHERE b.account_id = e.account_id
RETURNING b.balance
""")

STATUS = text("""
SELECT b.balance, COALESCE(b.monthly_cap, CAST(:default_cap AS bigint)) AS cap,
       CASE WHEN b.month_start = CAST(date_trunc('month', now() AT TIME ZONE 'UTC') AS date)
            THEN b.month_spend ELSE 0 END AS spend,
       b.blocked_since
FROM billing_accounts b WHERE b.account_id = :account
""")


CHECK_AND_TAKE = text("""
WITH cur AS (
  SELECT account_id,
         LEAST(CAST(:burst AS float8), COALESCE(tokens, CAST(:burst AS float8))
               + CAST(:per_s AS float8) * GREATEST(0, extract(epoch FROM now() - COALESCE(tokens_at, now())))) AS have
  FROM billing_accounts WHERE account_id = :account FOR UPDATE
)
UPDATE billing_accounts b
SET tokens = CASE WHEN cur.have >= 1 THEN cur.have - 1 ELSE cur.have END, tokens_at = now()
FROM cur WHERE b.account_id = cur.account_id
RETURNING b.balance, COALESCE(b.monthly_cap, CAST(:default_cap AS bigint)),
          CASE WHEN b.month_start = CAST(date_trunc('month', now() AT TIME ZONE 'UTC') AS date)
               THEN b.month_spend ELSE 0 END,
          cur.have
""")
"""The check before a mutating call, in one round trip: the account's balance, cap and spend, and a token taken from
its rate-limit bucket (refilled continuously, on the database's clock, so every replica shares one bucket)."""


class AccountStatus(BaseModel):
    """What the check before a mutating call reads (one row)."""

    balance: int
    cap: int | None
    month_spend: int

    @property
    def blocked(self) -> bool:
        return self.balance <= 0 or (self.cap is not None and self.month_spend >= self.cap)

    def reason(self) -> str:
        if self.balance <= 0:
            return "no credits left"
        return "the monthly spend cap is reached"


class CreditResult(BaseModel):
    account: str
    applied: bool
    balance: int
    source_id: str


class RateLimited(InkError):
    """Too many mutating calls from one account: a retry loop, most likely."""

    code = "rate_limited"


class CreditsExhausted(InkError):
    """A mutating call refused because the account has no credits or reached its monthly cap."""

    code = "payment_required"


@dataclass
class Ledger:
    sessions: async_sessionmaker[AsyncSession]
    settings: BillingSettings

    async def account_id(self, account: str | uuid.UUID) -> tuple[uuid.UUID, str]:
        """(id, name) of an account given by name or id; a typo is an error naming the account, never a new one."""
        async with self.sessions() as s:
            if isinstance(account, uuid.UUID):
                row = (await s.execute(text("SELECT id, name FROM accounts WHERE id = :a"), {"a": account})).first()
            else:
                row = (await s.execute(text("SELECT id, name FROM accounts WHERE name = :a"), {"a": account})).first()
        if row is None:
            raise NotFound(f"no account {str(account)!r}.", argument="account",
                           fix="pass an existing account name (`inkmcp keys list` shows them)")
        return row[0], row[1]

    async def ensure_all(self, conn: AsyncConnection | AsyncSession) -> None:
        await conn.execute(ENSURE_ALL, {"starter": self.settings.starter_credits})

    async def credit(
        self, account: str | uuid.UUID, amount: int, *, source_id: str, kind: CreditKind = "grant",
        reason: str | None = None,
    ) -> CreditResult:
        """Add `amount` minor units once per `source_id` (a replay changes nothing and says `applied=False`).

        A Stripe top-up is `credit(account, amount_total, source_id="stripe:evt_...", kind="topup")`."""
        if kind not in ("grant", "topup", "refund"):
            raise InvalidArgument(f"kind {kind!r} is not a credit.", argument="kind", fix="pass grant, topup or refund")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
            raise InvalidArgument(f"amount {amount!r} must be a positive integer of minor units.", argument="amount",
                                  fix="pass e.g. --amount 500 (5.00 in a currency with cents)")
        if not source_id or len(source_id) > 200:
            raise InvalidArgument("source_id must be 1..200 characters.", argument="source_id",
                                  fix="pass the id of the event that caused the credit, e.g. stripe:evt_...")
        account_id, name = await self.account_id(account)
        async with self.sessions.begin() as s:
            await s.execute(ENSURE_ONE, {"account": account_id, "starter": self.settings.starter_credits})
            row = (await s.execute(CREDIT, {"account": account_id, "kind": kind, "amount": amount,
                                            "source": source_id, "reason": reason})).first()
            if row is not None:
                return CreditResult(account=name, applied=True, balance=row[0], source_id=source_id)
            balance = (await s.execute(text("SELECT balance FROM billing_accounts WHERE account_id = :a"),
                                       {"a": account_id})).scalar_one()
        return CreditResult(account=name, applied=False, balance=balance, source_id=source_id)

    async def status(self, account_id: uuid.UUID) -> AccountStatus:
        """One round trip once the account's billing row exists (a second, once, to create it)."""
        params = {"account": account_id, "default_cap": self.settings.monthly_cap}
        async with self.sessions() as s:
            row = (await s.execute(STATUS, params)).first()
            if row is None:
                await s.execute(ENSURE_ONE, {"account": account_id, "starter": self.settings.starter_credits})
                await s.commit()
                row = (await s.execute(STATUS, params)).first()
        assert row is not None
        return AccountStatus(balance=row[0], cap=row[1], month_spend=row[2])

    async def set_cap(self, account: str | uuid.UUID, amount: int | None) -> AccountStatus:
        """The account's monthly spend cap in minor units (None: back to INKMCP_MONTHLY_CAP). For the operator's
        `inkmcp credits cap` and the dashboard."""
        if amount is not None and (isinstance(amount, bool) or not isinstance(amount, int) or amount < 0):
            raise InvalidArgument(f"cap {amount!r} must be a non-negative integer of minor units.", argument="amount",
                                  fix="pass e.g. --amount 2000, or --reset for the default cap")
        account_id, _ = await self.account_id(account)
        async with self.sessions.begin() as s:
            await s.execute(ENSURE_ONE, {"account": account_id, "starter": self.settings.starter_credits})
            await s.execute(text("UPDATE billing_accounts SET monthly_cap = :cap, updated_at = now() "
                                 "WHERE account_id = :a"), {"cap": amount, "a": account_id})
        return await self.status(account_id)

    async def check(self, p: Principal, action: str) -> None:
        """Before every mutating call: refuse it, saying why and how to go on, when the account cannot pay or calls
        faster than INKMCP_RATE_LIMIT_PER_MINUTE (one round trip once the account's billing row exists)."""
        per_s = self.settings.rate_limit_per_minute / 60
        burst = self.settings.rate_limit_burst if per_s > 0 else 10**9
        params = {"account": p.account_id, "default_cap": self.settings.monthly_cap, "burst": burst, "per_s": per_s}
        async with self.sessions.begin() as s:
            row = (await s.execute(CHECK_AND_TAKE, params)).first()
            if row is None:
                await s.execute(ENSURE_ONE, {"account": p.account_id, "starter": self.settings.starter_credits})
                row = (await s.execute(CHECK_AND_TAKE, params)).first()
        assert row is not None
        st = AccountStatus(balance=row[0], cap=row[1], month_spend=row[2])
        if st.blocked:
            raise CreditsExhausted(refusal(p.account_name, action, st),
                                   fix=self.settings.dashboard_hint(p.account_name))
        have = float(row[3])
        if have < 1:
            wait = max(0.1, (1 - have) / per_s)
            raise RateLimited(
                f"{action} refused: account {p.account_name!r} made more than {self.settings.rate_limit_burst} "
                f"changing calls in a burst ({self.settings.rate_limit_per_minute:g} per minute on average).",
                fix=f"retry after {wait:.1f} s; if the same call keeps failing, read get_logs instead of repeating it",
            )


def refusal(account: str, action: str, st: AccountStatus) -> str:
    cap = "no monthly cap" if st.cap is None else f"monthly cap {st.cap}"
    return (f"{action} refused: account {account!r} has {st.reason()} (balance {st.balance}, {cap}, spent "
            f"{st.month_spend} this month; amounts in minor units). Running services keep their data; nothing was "
            "changed.")
