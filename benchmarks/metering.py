"""Metering overhead (issue 13): database time to charge 10,000 live services for one interval.

Seeds a fresh database (migrated to head) with N services over N/10 accounts (persistent, on_demand with awake samples
and static, a third each) and charges R consecutive intervals through `charge_interval`, the exact statement the
metering loop runs: each is one transaction (advisory lock, interval claim, new accounts' rows, one INSERT ... SELECT
pricing every service and charging every account). Reports, per interval, the wall time of that transaction and the
server's own execution time of the pricing statement (`pg_stat_statements` is not needed: EXPLAIN ANALYZE of the same
statement in a rolled-back transaction). Target: under 100 ms.

    .venv/bin/python benchmarks/metering.py                 # an embedded PostgreSQL of its own
    .venv/bin/python benchmarks/metering.py --url postgresql://...   # an existing empty database
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

from inkmcp.billing.ledger import ENSURE_ALL
from inkmcp.billing.metering import (
    CLAIM,
    LOCK,
    METERING_LOCK_KEY,
    charge_interval,
    charge_params,
    charge_statement,
)
from inkmcp.billing.settings import Prices
from inkmcp.store.db import migrate, open_store

PRICES = Prices(persistent=2, on_demand=3, static=1, build_minute=1, db_gb_month=10)
SEED = """
WITH a AS (
  INSERT INTO accounts (id, name) SELECT gen_random_uuid(), 'bench-' || g FROM generate_series(1, :accounts) g
  RETURNING id, name
), p AS (
  INSERT INTO projects (id, account_id, name) SELECT gen_random_uuid(), a.id, a.name || '-' || g
  FROM a, generate_series(1, :per) g RETURNING id, name
), s AS (
  INSERT INTO services (id, project_id, name, service_type, mode, repo_url, settings)
  SELECT gen_random_uuid(), p.id, 'web',  'webapp',
         (ARRAY['persistent', 'on_demand', 'static'])[1 + abs(hashtext(p.name)) % 3], 'https://git.example/x.git',
         '{"resources": {"memory_mb": 512, "cpus": 1}}'::jsonb
  FROM p RETURNING id, mode
), d AS (
  INSERT INTO deployments (id, service_id, status, config_hash, finished_at)
  SELECT gen_random_uuid(), s.id, 'live', 'h', now() - interval '1 day' FROM s RETURNING id, service_id
)
SELECT count(*) FROM d
"""


# --- mender4: the baseline is measured beside each measured round (right before and right after it; the least of
# the two), so each ratio compares two times taken under the same load. One baseline after all rounds read 200 ms at
# load 10 while the charge beside it had read 142 (ratio 0.7), and 13-25 ms at load 4 while the charge read 36-127
# (ratio 1.2-5.9): as a bound it failed on a busy box and could not tell a 5x slower charge from noise.
async def baseline_table(store: Any, rows: int) -> None:
    """The baseline's table: `rows` rows of a two-index table, updated in place (HOT) by `baseline_once`."""
    async with store.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE bench_baseline (id uuid PRIMARY KEY, account int, n bigint) "
                                "WITH (fillfactor = 50)"))
        await conn.execute(text("CREATE INDEX ON bench_baseline (account)"))
        await conn.execute(text("INSERT INTO bench_baseline SELECT gen_random_uuid(), g % 1000, 0 "
                                "FROM generate_series(1, :n) g"), {"n": rows})
        await conn.execute(text("ANALYZE bench_baseline"))


async def baseline_once(store: Any) -> float:
    """The least any per-service record costs, measured on the same server as the charge: one in-place UPDATE of
    every row of `bench_baseline` (server time). The ratio to it is what stays comparable between a quiet machine and
    a loaded one, when both are measured at the same moment."""
    async with store.engine.begin() as conn:
        plan = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) UPDATE bench_baseline SET n = n + 1")
                                   )).scalar_one()
    return plan[0]["Execution Time"] + plan[0]["Planning Time"]


async def paired(store: Any, measure: Any) -> tuple[float, float]:
    """(`await measure()`, the baseline beside it: the lesser of one measured just before and one just after)."""
    before = await baseline_once(store)
    took = await measure()
    return took, min(before, await baseline_once(store))
# --- end mender4


async def transaction_ms(conn: Any, prices: Prices, s: int, replica: str = "bench") -> float:
    """Server time (planning + execution, EXPLAIN ANALYZE) of every statement of one charging transaction, in the
    order `charge_interval` runs them: advisory lock, interval claim, new accounts' rows, the charge itself."""
    steps = [(LOCK, {"k": METERING_LOCK_KEY}), (CLAIM, {"s": s, "l": 60, "r": replica}), (ENSURE_ALL, {"starter": 0}),
             (charge_statement(prices), charge_params(prices, s, 60, 0.0, None))]
    total = 0.0
    for stmt, params in steps:
        plan = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + stmt.text), params)).scalar_one()
        total += plan[0]["Execution Time"] + plan[0]["Planning Time"]
        if os.environ.get("METERING_PLAN") and stmt.text.startswith("WITH"):
            def walk(n: dict, d: int = 0) -> None:
                print("  " * d, n["Node Type"], n.get("Relation Name", ""), n.get("CTE Name", ""),
                      n["Actual Total Time"], n.get("Actual Rows"))
                for c in n.get("Plans", []):
                    walk(c, d + 1)
            walk(plan[0]["Plan"])
    return total


HISTORY = 240
"""Earlier intervals with awake samples (4 hours of 60 s intervals: 800,000 rows for 3,333 on_demand services), so
that a plan reading the whole `billing_awake` table instead of one interval's rows shows in the figure."""

CHANGE_ALL = """
UPDATE services SET
  mode = CASE mode WHEN 'static' THEN 'persistent' ELSE mode END,
  settings = jsonb_set(settings, '{resources,memory_mb}', CASE mode WHEN 'static' THEN '256' ELSE '1024' END::jsonb)
WHERE mode IN ('persistent', 'static')
"""
"""Every service that has a rate changes it at once (persistent ones resized, static ones made persistent), now:
inside the interval charged next, so that interval holds two segments for each of them (the closed and the new)."""


async def bench(url: str, services: int = 10_000, rounds: int = 5, first_rounds: int = 5) -> dict[str, float]:
    """Steady state: `rounds` intervals charged as the loop does (wall time) alternating with `rounds` measured as
    server time; then every rated service changes its rate (CHANGE_ALL, timed: the rate bookkeeping that happens
    then, PostgreSQL's trigger) and the interval holding the change is measured `first_rounds` times, each in a
    rolled-back transaction so that each measures the same first charge."""
    store = await open_store(url)
    try:
        per = 10
        current = int(time.time()) // 60 * 60  # the interval holding "now": CHANGE_ALL's segments begin/end in it
        start = current - 60 * 2 * rounds
        async with store.engine.begin() as conn:
            await conn.execute(text(SEED), {"accounts": services // per, "per": per})
            await conn.execute(text("UPDATE services s SET live_deployment_id = d.id FROM deployments d "
                                    "WHERE d.service_id = s.id AND s.live_deployment_id IS NULL"))
            await conn.execute(text(  # plus HISTORY older intervals' samples, as the table holds in production
                "INSERT INTO billing_awake (service_id, start_s, replica, awake_ms) SELECT id, :s + 60 * g, 'r', 30000 "
                "FROM services, generate_series(-CAST(:h AS int), CAST(:n AS int)) g WHERE mode = 'on_demand'"),
                {"s": start, "n": 2 * rounds, "h": HISTORY})
            await conn.execute(text("ANALYZE"))
        await baseline_table(store, services)  # mender4
        walls, server, bases = [], [], []
        for r in range(rounds * 2):
            s = start + 60 * r
            if r % 2:  # the server's own time for the charging transaction's statements, committed like a real pass
                async def committed(s: int = s) -> float:
                    async with store.engine.begin() as conn:
                        return await transaction_ms(conn, PRICES, s)
                took, base = await paired(store, committed)  # mender4: a baseline beside each round
                server.append(took)
                bases.append(base)
                continue
            t0 = time.perf_counter()  # the whole pass of one interval as the loop runs it, round trips included
            async with store.engine.begin() as conn:
                charged = await charge_interval(conn, PRICES, s, 60, replica="bench", grace_s=0.0)
            walls.append((time.perf_counter() - t0) * 1000)
            assert charged is not None and charged.usage_rows >= services * 2 // 3 - services // 20, charged
        async with store.engine.begin() as conn:
            plan = (await conn.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + CHANGE_ALL))).scalar_one()
            change_ms = plan[0]["Execution Time"] + plan[0]["Planning Time"]
            changed = plan[0]["Plan"]["Plans"][0]["Actual Rows"] if plan[0]["Plan"].get("Plans") else None
        first, first_bases, segs = [], [], None
        for _ in range(first_rounds):
            async def rolled_back() -> float:
                nonlocal segs
                conn = await store.engine.connect()
                try:
                    trans = await conn.begin()
                    took = await transaction_ms(conn, PRICES, current)
                    segs = (await conn.execute(text("SELECT count(*) FROM billing_segments WHERE units > 0 AND "
                                                    "(to_s IS NULL OR to_s > :s)"), {"s": current})).scalar_one()
                    await trans.rollback()
                    return took
                finally:
                    await conn.close()
            took, base = await paired(store, rolled_back)  # mender4: a baseline beside each round
            first.append(took)
            first_bases.append(base)
        # --- mender4: each round's ratio to the baseline beside it; the least is what tests judge (noise only adds
        # time), the median shows the spread
        ratios = [t / b for t, b in zip(server, bases, strict=True)]
        first_ratios = [t / b for t, b in zip(first, first_bases, strict=True)]
        base = min(bases + first_bases)
        return {"services": services, "baseline_ms_min": round(base, 1),
                "ratio_min": round(min(ratios), 2), "ratio_median": round(statistics.median(ratios), 2),
                "first_ratio_min": round(min(first_ratios), 2),
                "first_ratio_median": round(statistics.median(first_ratios), 2),
                # --- end mender4
                "wall_ms_median": round(statistics.median(walls), 1),
                "wall_ms_min": round(min(walls), 1), "server_ms_median": round(statistics.median(server), 1),
                "server_ms_min": round(min(server), 1), "server_ms_max": round(max(server), 1),
                "changed_services": changed, "change_ms": round(change_ms, 1),
                "first_segments": segs, "first_server_ms_median": round(statistics.median(first), 1),
                "first_server_ms_min": round(min(first), 1),
                "first_server_ms_max": round(max(first), 1)}
    finally:
        await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an empty PostgreSQL database (default: an embedded server of its own)")
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    if args.url:
        migrate(args.url)
        print(json.dumps(asyncio.run(bench(args.url, args.services, args.rounds))))
        return
    from inkmcp.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="inkmcp-bench-metering-")) / "pg")
    pg.start()
    try:
        url = pg.url(database="postgres").get_secret_value()
        migrate(url)
        print(json.dumps(asyncio.run(bench(url, args.services, args.rounds))))
    finally:
        pg.stop()


_ = uuid
if __name__ == "__main__":
    main()
