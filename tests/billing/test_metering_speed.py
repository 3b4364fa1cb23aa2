"""Metering overhead: charging 10,000 live services for one interval (benchmarks/metering.py, same code)."""

from __future__ import annotations

import pytest

from benchmarks.metering import bench
from tests.billing.conftest import World

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_charging_10000_services_is_one_set_based_statement(world: World) -> None:
    """Server time of the pricing-and-charging statement for 10,000 services over 1,000 accounts, against the
    cheapest possible per-service write measured in the same run (one in-place UPDATE of 10,000 rows).

    The issue's target is 100 ms; on the shared 2-core box (load ~10) this measured 400-600 ms with a baseline of
    20-30 ms, so the absolute bound here is loose and the ratio carries the check: a per-row round trip, a plan
    that rescans the ledger or an index grown per interval would each multiply it."""
    result = await bench(world.url, services=10_000, rounds=3)
    print(result)
    assert result["server_ms_min"] < 2000, result
    assert result["ratio_min"] < 40, result
