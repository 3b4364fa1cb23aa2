"""Metering overhead: charging 10,000 live services for one interval (benchmarks/metering.py, same code)."""

from __future__ import annotations

import pytest

from benchmarks.metering import bench
from tests.billing.conftest import World

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

STEADY_RATIO = 4.5
FIRST_RATIO = 6.0
"""Bounds on (server time of the charging transaction) / (an in-place UPDATE of as many rows, measured right before
and after it on the same server), the least of five paired rounds. Measured on the shared 2-core box at load 4-10
(other helpers' suites): steady 1.6-2.8, the first interval after every rate changed 2.1-2.8 (the charge itself
then read 28-172 ms and 37-255 ms: an absolute bound of 100 ms failed whenever the box was busy, mender3 saw 142 ms
beside a 200 ms baseline). The same bench with sequential scans forced (ALTER DATABASE … SET enable_indexscan = off,
enable_bitmapscan = off: a plan reading all of `billing_awake`, `services` and the ledger) read steady 4.3 and
first 8.6; before migration 0012 (segments written at charge time) the first interval took ~5 times as long."""


async def test_charging_10000_services_stays_a_small_multiple_of_a_same_run_baseline(world: World) -> None:
    """Server time (EXPLAIN ANALYZE: planning + execution) of every statement of the charging transaction (advisory
    lock, interval claim, new accounts' rows, the one statement that prices and charges) for 10,000 services over
    1,000 accounts (a third each persistent, static, on_demand awake half of every interval, with 4 hours of older
    awake samples in the table), in steady state and in the first interval after all 6,700 services that have a
    rate changed it (the interval then holds 13,400 rate segments: the closed and the new one of each).

    The issue's target is 100 ms on a quiet box; a test on a shared box cannot hold an absolute figure, so each
    measured round is paired with a baseline measured beside it (bench: `paired`) and the bound is on the least
    ratio (noise only ever adds time; the least round is the one the box disturbed least)."""
    result = await bench(world.url, services=10_000, rounds=5, first_rounds=5)
    print(result)
    assert result["first_segments"] == 13_400, result  # the measured interval really holds every change
    assert result["changed_services"] == 6_700, result
    assert result["ratio_min"] < STEADY_RATIO, result
    assert result["first_ratio_min"] < FIRST_RATIO, result
