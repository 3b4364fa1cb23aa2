"""Metering: charge what actually ran, one interval at a time, set-based, exactly once across replicas.

Time is cut into intervals of INKMCP_METERING_INTERVAL_S aligned on the epoch. An interval is charged once it is
over (plus a settling margin for the last awake samples) by whichever replica gets there first:

* One transaction per interval, under a transaction-level advisory lock, first inserts the interval's row in
  `billing_intervals` (`ON CONFLICT DO NOTHING`): a second replica waits for the lock, finds the row and skips.
  A replica that dies mid-transaction leaves nothing (rollback); the survivor charges the interval at its next
  pass. Intervals missed while no replica ran are caught up, at most INKMCP_METERING_CATCHUP_INTERVALS of them.
* One statement then prices the interval and charges every account. Persistent and static services are read from
  their rate segments (`billing_segments`), which PostgreSQL keeps when a service's rate changes (migration 0012's
  trigger on `services`), not here: an interval costs the same whether no service or every service changed. Awake
  time, builds and storage go to per-day rows (`billing_usage`, UNIQUE (kind, subject, day)). The statement adds
  to each account's exact total `usage_micro` (millionths of a minor unit) and charges the account the difference
  of floor(total / 10^6) before and after: fractions of a minor unit carry over to the next interval instead of
  being rounded up (or lost) each time, so a month of tiny intervals costs exactly what one long interval would.

What counts (prices from INKMCP_PRICES, integer minor units):
  persistent  reserved memory (resources.memory_mb, default 512 MiB) x time live, per GiB-hour; not while the
              account is out of credits past the grace period (its services are put to sleep then)
  on_demand   awake time, per hour: the longest any replica saw in the interval (`billing_awake`, sampled)
  static      a flat rate per hour live
  build       the build step of each finished deployment (first `building` event to the next step), per minute
  database    the last measured size of each database on our own Postgres server, per GB-month (30 days)
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from inkmcp.billing.ledger import ENSURE_ALL
from inkmcp.billing.settings import BillingSettings, Prices

log = logging.getLogger("inkmcp.billing")

METERING_LOCK_KEY = zlib.crc32(b"inkmcp.billing.metering")
MICRO = 1_000_000
MONTH_S = 30 * 86400

AwakeProbe = Callable[[], Awaitable[Iterable[str]]]
"""Ids of the services awake on this replica right now (the compute provider's view)."""
SizeProbe = Callable[[], Awaitable[dict[uuid.UUID, int]]]
"""Size in bytes of each managed database this replica can measure, by `databases.id`."""


RATE_DENOMINATOR = 1024 * 3600
"""A segment's cost per second is price x units x 10^6 / this (units: MiB reserved, or 1024 for a static service)."""


def _rated_sql(prices: Prices) -> str:
    """Persistent and static services as the CTE `rated`: per account, the exact cost in [:s, :e) of the rate
    segments overlapping it (`pm` persistent, `sm` static; MiB-seconds summed exactly, priced and floored at 10^-6
    once per account and kind, so never above the exact cost) and how many segments there were.

    Segments are kept by PostgreSQL when a service's rate basis changes (migration 0012's trigger on `services`:
    deployed, resized, mode changed, undeployed, deleted), so this only reads them: the open ones plus those closed
    inside the interval (index on `to_s`), a few thousand rows for 10,000 services, however many changed."""
    kinds = [k for k, p in (("persistent", prices.persistent), ("static", prices.static)) if p]
    if not kinds:
        return ("rated AS (SELECT NULL::uuid AS account_id, CAST(0 AS bigint) AS pm, CAST(0 AS bigint) AS sm, "
                "CAST(0 AS bigint) AS n WHERE false)")
    micro = ("CAST(floor(sum(CASE WHEN g.kind = '{k}' THEN g.units * (LEAST(COALESCE(g.to_s, :e), :e) - "
             "GREATEST(g.from_s, :s)) ELSE 0 END) * CAST(:p_{k} AS bigint) * 1000000 / "
             + str(RATE_DENOMINATOR) + ") AS bigint)")  # sum() is numeric: no overflow, floored once
    return """rated AS (
  SELECT g.account_id, """ + micro.format(k="persistent") + """ AS pm, """ + micro.format(k="static") + """ AS sm,
         count(*) AS n
  FROM billing_segments g
  WHERE (g.to_s IS NULL OR g.to_s > :s) AND g.from_s < :e AND g.kind IN (""" + ", ".join(
        f"'{k}'" for k in kinds) + """)
  GROUP BY g.account_id
)"""


def _other_sql(prices: Prices) -> str:
    """Usage that varies per interval (awake time, builds, storage) as the CTE `other`, kept per day and subject.
    Awake time counts for services live on_demand now: their open segment (units 0, kept by the trigger like the
    others) gives account and label without reading `services`."""
    parts = []
    if prices.on_demand:
        parts.append("""
  SELECT g.account_id, 'on_demand' AS kind, g.subject_id, g.label,
         CAST(:day AS bigint) AS day_s, aw.ms AS quantity, CAST(:p_on_demand AS bigint) * aw.ms * 1000 / 3600 AS micro
  FROM (SELECT service_id, CAST(LEAST(max(awake_ms), (:e - :s) * 1000) AS bigint) AS ms FROM billing_awake
        WHERE start_s = :s GROUP BY service_id) aw
  JOIN billing_segments g ON g.subject_id = aw.service_id AND g.kind = 'on_demand' AND g.to_s IS NULL""")
    if prices.build_minute:
        parts.append("""
  SELECT p.account_id, 'build', d.id, p.name || '/' || sv.name,
         CAST(floor(extract(epoch FROM d.finished_at)) AS bigint), q.ms,
         CAST(:p_build AS bigint) * q.ms * 1000000 / 60000
  FROM deployments d JOIN services sv ON sv.id = d.service_id JOIN projects p ON p.id = sv.project_id
  CROSS JOIN LATERAL (SELECT min(at) AS b0 FROM deployment_events WHERE deployment_id = d.id AND status = 'building') bb
  CROSS JOIN LATERAL (SELECT COALESCE(min(at), d.finished_at) AS b1 FROM deployment_events
                      WHERE deployment_id = d.id AND at > bb.b0 AND status <> 'building') be
  CROSS JOIN LATERAL (SELECT GREATEST(0, CAST(floor(extract(epoch FROM be.b1 - bb.b0) * 1000) AS bigint)) AS ms) q
  WHERE d.finished_at >= to_timestamp(:s) AND d.finished_at < to_timestamp(:e) AND bb.b0 IS NOT NULL""")
    if prices.db_gb_month:
        parts.append("""
  SELECT p.account_id, 'database', db.id, p.name || '/' || db.kind, CAST(:day AS bigint),
         CAST(z.size_bytes / 1000000 AS bigint) * (:e - :s),
         CAST(floor(CAST(:p_db AS numeric) * z.size_bytes * (:e - :s) * 1000000 / (1000000000::numeric * 2592000))
              AS bigint)
  FROM billing_db_sizes z JOIN databases db ON db.id = z.database_id JOIN projects p ON p.id = db.project_id""")
    if not parts:
        parts.append("SELECT NULL::uuid AS account_id, NULL AS kind, NULL::uuid AS subject_id, NULL AS label, "
                     "NULL::bigint AS day_s, NULL::bigint AS quantity, NULL::bigint AS micro WHERE false")
    return "other AS (" + "\n  UNION ALL".join(parts) + "\n)"


def _services_sql(prices: Prices) -> str:
    """Everything priced for [:s, :e): `rated` (per account) and `other` (per subject, kinds with a zero price left
    out entirely)."""
    return "WITH " + _rated_sql(prices) + ",\n" + _other_sql(prices)


CHARGE_TAIL = """,
upd AS (  -- the day's row of each subject, updated in place (HOT: fillfactor 50, no indexed column changes)
  UPDATE billing_usage u SET quantity = u.quantity + o.quantity, micro = u.micro + o.micro
  FROM other o WHERE o.micro > 0 AND u.kind = o.kind AND u.subject_id = o.subject_id AND u.day_s = o.day_s
),
ins AS (  -- the first interval of a day (the same snapshot: rows the UPDATE above did not find)
  INSERT INTO billing_usage AS u (account_id, kind, subject_id, label, day_s, quantity, micro)
  SELECT account_id, kind, subject_id, label, day_s, quantity, micro FROM other o
  WHERE micro > 0 AND NOT EXISTS (SELECT 1 FROM billing_usage x WHERE x.kind = o.kind AND x.subject_id = o.subject_id
                                  AND x.day_s = o.day_s)
  ON CONFLICT (kind, subject_id, day_s) DO UPDATE
    SET quantity = u.quantity + EXCLUDED.quantity, micro = u.micro + EXCLUDED.micro
),
agg AS (SELECT account_id, CAST(sum(pm) AS bigint) AS pm, CAST(sum(om) AS bigint) AS om, CAST(sum(n) AS bigint) AS n
        FROM (SELECT account_id, pm, sm AS om, n FROM rated
              UNION ALL
              SELECT account_id, 0, micro, 1 FROM other WHERE micro > 0) x
        GROUP BY account_id),
paid AS (  -- persistent services cost nothing once their account is past its grace period (they are put to sleep)
  SELECT b.account_id, b.usage_micro, agg.n, agg.om + CASE WHEN b.blocked_since IS NOT NULL
           AND b.blocked_since + make_interval(secs => :grace) <= to_timestamp(:s) THEN 0 ELSE agg.pm END AS m
  FROM billing_accounts b JOIN agg ON agg.account_id = b.account_id
),
calc AS (
  SELECT account_id, usage_micro + m AS total, n, (usage_micro + m) / 1000000 - usage_micro / 1000000 AS amount
  FROM paid WHERE m > 0
),
led AS (
  INSERT INTO credit_entries (account_id, kind, amount, source_id, reason)
  SELECT account_id, 'usage', -amount, 'usage:' || account_id || ':' || total, 'interval ' || CAST(:s AS bigint)
  FROM calc WHERE amount > 0
)
UPDATE billing_accounts b SET
  usage_micro = calc.total,
  balance = b.balance - calc.amount,
  month_spend = CASE WHEN b.month_start = CAST(:month AS date) THEN b.month_spend ELSE 0 END + calc.amount,
  month_start = CAST(:month AS date),
  updated_at = now()
FROM calc WHERE b.account_id = calc.account_id
RETURNING calc.n, calc.amount
"""

BLOCKED = """(b.balance <= 0 OR (COALESCE(b.monthly_cap, CAST(:default_cap AS bigint)) IS NOT NULL AND
  (CASE WHEN b.month_start = CAST(date_trunc('month', now() AT TIME ZONE 'UTC') AS date) THEN b.month_spend ELSE 0 END)
  >= COALESCE(b.monthly_cap, CAST(:default_cap AS bigint))))"""

MARK_BLOCKED = text(f"""
UPDATE billing_accounts b SET blocked_since = CASE WHEN {BLOCKED} THEN COALESCE(b.blocked_since, now()) END
WHERE ({BLOCKED}) <> (b.blocked_since IS NOT NULL)
""")

BLOCKED_ACCOUNTS = text("SELECT CAST(account_id AS text) FROM billing_accounts WHERE blocked_since IS NOT NULL")


LOCK = text("SELECT pg_advisory_xact_lock(:k)")
CLAIM = text("INSERT INTO billing_intervals (start_s, length_s, replica) VALUES (:s, :l, :r) "
             "ON CONFLICT (start_s) DO NOTHING RETURNING start_s")
"""The charging transaction's statements, in order: LOCK, CLAIM, ENSURE_ALL, `charge_statement` (benchmarks/metering.py
times exactly these)."""


@dataclass
class Charged:
    start_s: int
    usage_rows: int
    charged_minor: int
    accounts: int


def _month(now: float) -> str:
    return time.strftime("%Y-%m-01", time.gmtime(now))


def charge_statement(prices: Prices) -> TextClause:
    """The one statement that prices every subject for an interval and charges every account."""
    return text(_services_sql(prices) + CHARGE_TAIL)


def charge_params(prices: Prices, start_s: int, length_s: int, grace_s: float, now: float | None) -> dict[str, Any]:
    return {"s": start_s, "e": start_s + length_s, "day": start_s - start_s % 86400, "grace": grace_s,
            "month": _month(time.time() if now is None else now),
            "p_persistent": prices.persistent, "p_static": prices.static, "p_on_demand": prices.on_demand,
            "p_build": prices.build_minute, "p_db": prices.db_gb_month}


async def charge_interval(
    conn: AsyncConnection, prices: Prices, start_s: int, length_s: int, *, replica: str, grace_s: float,
    starter: int = 0, now: float | None = None,
) -> Charged | None:
    """Charge [start_s, start_s + length_s) in the caller's transaction; None if another pass charged it already.

    The caller commits (or rolls back: then nothing of the interval is recorded and a later pass redoes it)."""
    await conn.execute(LOCK, {"k": METERING_LOCK_KEY})
    claimed = (await conn.execute(CLAIM, {"s": start_s, "l": length_s, "r": replica})).first()
    if claimed is None:
        return None
    # Accounts made since the last pass get their billing row (and starter credits) before they are charged.
    await conn.execute(ENSURE_ALL, {"starter": starter})
    rows = (await conn.execute(charge_statement(prices), charge_params(prices, start_s, length_s, grace_s, now))).all()
    return Charged(start_s=start_s, usage_rows=sum(r[0] for r in rows), charged_minor=sum(r[1] for r in rows),
                   accounts=len(rows))


async def record_awake(conn: AsyncConnection, service_ids: Iterable[str], start_s: int, replica: str, ms: int,
                       length_s: int) -> None:
    """Add `ms` of awake time to each service's row for the interval, as this replica saw it (capped at its length)."""
    ids = list(service_ids)
    if not ids or ms <= 0:
        return
    await conn.execute(text("""
INSERT INTO billing_awake (service_id, start_s, replica, awake_ms)
SELECT CAST(x AS uuid), :s, :r, LEAST(:ms, :cap) FROM unnest(CAST(:ids AS text[])) AS x
ON CONFLICT (service_id, start_s, replica) DO UPDATE
  SET awake_ms = LEAST(:cap, billing_awake.awake_ms + EXCLUDED.awake_ms)
"""), {"ids": ids, "s": start_s, "r": replica, "ms": ms, "cap": length_s * 1000})


async def record_sizes(conn: AsyncConnection, sizes: dict[uuid.UUID, int]) -> None:
    if not sizes:
        return
    await conn.execute(text("""
INSERT INTO billing_db_sizes (database_id, size_bytes, measured_at)
SELECT CAST(k AS uuid), v, now() FROM unnest(CAST(:ks AS text[]), CAST(:vs AS bigint[])) AS t(k, v)
WHERE EXISTS (SELECT 1 FROM databases d WHERE d.id = CAST(k AS uuid))
ON CONFLICT (database_id) DO UPDATE SET size_bytes = EXCLUDED.size_bytes, measured_at = now()
"""), {"ks": [str(k) for k in sizes], "vs": list(sizes.values())})


@dataclass
class Meter:
    """The metering loop of one replica: sample awake time, measure databases, charge finished intervals, then
    tell the enforcer which accounts are blocked. Every replica may run one (see the module docstring)."""

    engine: AsyncEngine
    settings: BillingSettings
    replica: str
    awake_probe: AwakeProbe | None = None
    size_probe: SizeProbe | None = None
    on_pass: Callable[[], Awaitable[None]] | None = None
    clock: Callable[[], float] = time.time
    _last_sample: float | None = field(default=None, init=False)
    _last_sizes: float = field(default=0.0, init=False)

    @property
    def interval(self) -> int:
        return self.settings.metering_interval_s

    @property
    def sample_s(self) -> float:
        return max(0.1, min(5.0, self.interval / 4))

    @property
    def prices(self) -> Prices:
        assert self.settings.prices is not None
        return self.settings.prices

    async def sample(self) -> None:
        """Credit this replica's awake on_demand services with the time since the last sample (if they are awake
        now, they are counted as awake since then: the error is at most one sample period per wake or sleep)."""
        now = self.clock()
        last, self._last_sample = self._last_sample, now
        if self.awake_probe is None or last is None:
            return
        awake = list(await self.awake_probe())
        if not awake:
            return
        ms = round((now - last) * 1000)
        start = math.floor(now / self.interval) * self.interval
        async with self.engine.begin() as conn:
            await record_awake(conn, awake, start, self.replica, ms, self.interval)

    async def measure(self) -> None:
        now = self.clock()
        if self.size_probe is None or now - self._last_sizes < self.settings.db_size_every_s:
            return
        self._last_sizes = now
        sizes = await self.size_probe()
        async with self.engine.begin() as conn:
            await record_sizes(conn, sizes)

    def due(self, now: float) -> int:
        """Start of the newest interval that may be charged now (over, plus the settling margin)."""
        return math.floor((now - self.sample_s - 0.5) / self.interval) * self.interval - self.interval

    async def charge_due(self) -> list[Charged]:
        now = self.clock()
        last_due = self.due(now)
        async with self.engine.begin() as conn:
            await conn.execute(ENSURE_ALL, {"starter": self.settings.starter_credits})
            end = (await conn.execute(text("SELECT max(start_s + length_s) FROM billing_intervals"))).scalar()
        first = last_due if end is None else math.ceil(end / self.interval) * self.interval
        first = max(first, last_due - (self.settings.metering_catchup_intervals - 1) * self.interval)
        done = []
        for start in range(first, last_due + 1, self.interval):
            async with self.engine.begin() as conn:
                charged = await charge_interval(conn, self.prices, start, self.interval, replica=self.replica,
                                                grace_s=self.settings.grace_s,
                                                starter=self.settings.starter_credits, now=now)
            if charged is not None:
                done.append(charged)
        async with self.engine.begin() as conn:
            await conn.execute(MARK_BLOCKED, {"default_cap": self.settings.monthly_cap})
            if done:
                await conn.execute(text("DELETE FROM billing_awake WHERE start_s < :old"),
                                   {"old": int(now) - 2 * 86400})
        return done

    async def run_once(self) -> list[Charged]:
        await self.sample()
        try:
            await self.measure()
        except Exception as e:  # storage keeps its last measured size; time and awake charges go on
            log.warning("measuring database sizes failed (%s); charging the last measured sizes", type(e).__name__)
        charged = await self.charge_due()
        if self.on_pass is not None:
            await self.on_pass()
        return charged

    async def run(self) -> None:
        """Until cancelled. A failing pass is logged and retried at the next tick (nothing half-charged)."""
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("metering pass failed; retrying at the next tick")
            await asyncio.sleep(self.sample_s)
