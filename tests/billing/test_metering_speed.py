"""Metering overhead: charging 10,000 live services for one interval (benchmarks/metering.py, same code)."""

from __future__ import annotations

import pytest

from benchmarks.metering import bench
from tests.billing.conftest import World

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


async def test_charging_10000_services_takes_under_100ms_also_after_every_rate_changed(world: World) -> None:
    """Server time (EXPLAIN ANALYZE: planning + execution) of every statement of the charging transaction (advisory
    lock, interval claim, new accounts' rows, the one statement that prices and charges) for 10,000 services over
    1,000 accounts (a third each persistent, static, on_demand awake half of every interval, with 4 hours of older
    awake samples in the table), in steady state and in the first interval after all 6,700 services that have a
    rate changed it (the interval then holds 13,400 rate segments: the closed and the new one of each).

    The issue's target is 100 ms; the bound is on the least of the repeated measurements (as before: the box is
    shared, and noise only ever adds time). Measured on the shared 2-core box at load 4-6 (other helpers' suites):
    steady 30-45 ms (medians 38-73), first interval after the change 48-62 ms (medians 62-95); before migration
    0012: ~80 and 250-300 ms. A per-row round trip, a plan that reads all of `billing_awake`, `services` or the
    ledger, or segments written at charge time again would each break the bound."""
    result = await bench(world.url, services=10_000, rounds=5, first_rounds=5)
    print(result)
    assert result["first_segments"] == 13_400, result  # the measured interval really holds every change
    assert result["changed_services"] == 6_700, result
    assert result["server_ms_min"] < 100, result
    assert result["first_server_ms_min"] < 100, result
