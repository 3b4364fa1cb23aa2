"""Metering overhead: charging 10,000 live services for one interval (benchmarks/metering.py, same code)."""

from __future__ import annotations

import pytest

from benchmarks.metering import bench
from tests.billing.conftest import World

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_charging_10000_services_is_one_set_based_statement(world: World) -> None:
    """Server time of the pricing-and-charging statement for 10,000 services over 1,000 accounts (a third each
    persistent, static, on_demand awake half of every interval), and the cheapest possible per-service write
    measured in the same run (one in-place UPDATE of 10,000 rows) for comparison.

    The issue's target is 100 ms. On the shared 2-core box at load ~10 the steady state measured 70-115 ms (the
    first interval after a change, which opens rate segments, 250-300 ms); the bound leaves room for that load, and
    a per-row round trip, a plan that rescans the ledger or an index grown per interval would each break it."""
    result = await bench(world.url, services=10_000, rounds=3)
    print(result)
    assert result["server_ms_min"] < 250, result
