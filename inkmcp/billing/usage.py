"""The `get_usage` view: balance, cap, spend this month, burn rate, days left, top services by cost. Bounded: a
fixed handful of numbers and at most TOP services, whatever the account's size."""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.billing.ledger import Ledger

TOP = 5


class ServiceCost(BaseModel):
    name: str = Field(description="project/service (project/postgres for storage)")
    kind: str
    cost: float = Field(description="this month, minor units")


class UsageView(BaseModel):
    billing: bool = Field(description="false: this server does not charge")
    balance: int | None = None
    monthly_cap: int | None = None
    spent_this_month: int | None = None
    burn_per_hour: int | None = Field(default=None, description="charged in the last hour, minor units")
    days_left: float | None = Field(default=None, description="at that rate; null if nothing burns")
    blocked: bool = False
    top: list[ServiceCost] = Field(default_factory=list)
    note: str = ""


TOP_SQL = text("""
SELECT label, kind, CAST(sum(micro) AS bigint) FROM (
  SELECT label, kind, micro FROM billing_usage WHERE account_id = :a AND day_s >= :since
  UNION ALL
  SELECT label, kind, CASE WHEN kind = 'persistent' THEN CAST(:p_persistent AS bigint)
                           ELSE CAST(:p_static AS bigint) END * units * 1000000
                      * GREATEST(0, LEAST(COALESCE(to_s, :now), :now) - GREATEST(from_s, :since)) / 3686400
  FROM billing_segments WHERE account_id = :a AND (to_s IS NULL OR to_s > :since) AND units > 0
) x GROUP BY label, kind ORDER BY 3 DESC LIMIT :top
""")
"""This month's cost per service: per-day rows (awake time, builds, storage) plus the rate segments of persistent and
static services (today's price x the segment's basis x overlap with the month: a price change re-prices the
month's report, not the ledger)."""
BURN_SQL = text("SELECT COALESCE(CAST(-sum(amount) AS bigint), 0) FROM credit_entries WHERE account_id = :a "
                "AND kind = 'usage' AND at >= now() - interval '1 hour'")


def _month_start_epoch(now: float) -> int:
    t = time.gmtime(now)
    return int(time.mktime((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, 0)) - time.timezone)


async def usage_view(ledger: Ledger | None, account_id: uuid.UUID, account_name: str, *,
                     sessions: async_sessionmaker[AsyncSession] | None = None, now: float | None = None) -> UsageView:
    if ledger is None or not ledger.settings.enabled:
        return UsageView(billing=False, note="this server does not meter or charge (INKMCP_PRICES unset)")
    now = time.time() if now is None else now
    st = await ledger.status(account_id)
    async with (sessions or ledger.sessions)() as s:
        prices = ledger.settings.prices
        rows = (await s.execute(TOP_SQL, {"a": account_id, "since": _month_start_epoch(now), "now": int(now),
                                          "top": TOP, "p_persistent": prices.persistent if prices else 0,
                                          "p_static": prices.static if prices else 0})).all()
        burn = (await s.execute(BURN_SQL, {"a": account_id})).scalar_one()
    days = None if burn <= 0 else round(max(st.balance, 0) / (burn * 24), 2)
    note = ""
    if st.blocked:
        note = (f"{st.reason()}: mutating calls are refused, on_demand services answer 402 instead of waking and "
                f"persistent ones are suspended after the grace period (list_services: state suspended); "
                f"{ledger.settings.dashboard_hint(account_name)}")
    return UsageView(
        billing=True, balance=st.balance, monthly_cap=st.cap, spent_this_month=st.month_spend,
        burn_per_hour=burn, days_left=days, blocked=st.blocked,
        top=[ServiceCost(name=r[0], kind=r[1], cost=round(r[2] / 1_000_000, 2)) for r in rows], note=note,
    )


def as_dict(view: UsageView) -> dict[str, Any]:
    return view.model_dump(mode="json")
