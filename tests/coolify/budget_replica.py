"""One InkMCP "replica" for tests/coolify/test_budget.py, run as its own process: a CoolifyClient with a DbBudget,
four concurrent callers sending GET /servers as fast as the budget lets them for a while, a JSON result file.

A module of its own so that the process imports only the client and the budget (not the stand-in and the test
fixtures): replicas start in a second, not in the many seconds a loaded 2-core box takes for the test module.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from inkmcp.coolify.budget import BudgetSettings, DbBudget
from inkmcp.coolify.client import CoolifyClient, RetryPolicy


async def _hammer(url: str, token: str, db_url: str, key: str, limit: int, window: float, seconds: float,
                  out: str) -> None:
    budget = DbBudget.from_url(db_url, key, BudgetSettings(limit=limit, window=window, margin=0.25))
    sent = 0
    async with CoolifyClient(url, token, budget=budget, retry=RetryPolicy(attempts=1, max_total_wait=60)) as c:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal sent
            while time.monotonic() < end:
                await c.list_servers()  # attempts=1: a 429 would raise and fail this replica
                sent += 1

        try:
            await asyncio.gather(*[worker() for _ in range(4)])
            result = {"sent": sent, "error": None, "round_trips": budget.round_trips}
        except Exception as e:
            result = {"sent": sent, "error": f"{type(e).__name__}: {e}", "round_trips": budget.round_trips}
    await budget.aclose()
    Path(out).write_text(json.dumps(result))


def main() -> None:
    url, token, db_url, key, limit, window, seconds, out = sys.argv[1:9]
    asyncio.run(_hammer(url, token, db_url, key, int(limit), float(window), float(seconds), out))


