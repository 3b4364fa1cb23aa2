"""Rate segments kept by PostgreSQL when a service's rate changes (migration 0012's trigger on `services`), and the
charge that reads them: exact over an interval that holds the change, nothing written for changes that do not
touch the rate, every path that ends a rate (undeploy, delete, a project's cascade) closes it."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import text

from inkmcp.billing.metering import RATE_DENOMINATOR, charge_interval
from inkmcp.billing.settings import Prices
from tests.billing.conftest import World

pytestmark = pytest.mark.asyncio

HOUR = 3600


async def segments(world: World, sid: uuid.UUID) -> list[tuple[int, str, int, int, int | None]]:
    async with world.store.sessionmaker() as s:
        rows = (await s.execute(text("SELECT id, kind, units, from_s, to_s FROM billing_segments "
                                     "WHERE subject_id = :s ORDER BY id"), {"s": sid})).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def run(world: World, sql: str, **params: object) -> None:
    async with world.store.sessionmaker.begin() as s:
        await s.execute(text(sql), params)


async def test_a_resize_inside_the_interval_is_charged_exactly_for_each_part(world: World) -> None:
    """1 GiB until the resize, 2 GiB after it, inside the interval being charged: the charge is exactly the two
    parts (MiB-seconds priced once, floored at 10^-6), read from the closed and the new segment."""
    account_id, _ = await world.account()
    sid = await world.live_service(account_id, memory_mb=1024)
    current = int(time.time()) // HOUR * HOUR
    await run(world, "UPDATE services SET settings = jsonb_set(settings, '{resources,memory_mb}', '2048') "
                     "WHERE id = :s", s=sid)
    (_, k1, u1, _, t1), (_, k2, u2, f2, t2) = await segments(world, sid)
    assert (k1, u1, k2, u2, t2) == ("persistent", 1024, "persistent", 2048, None)
    assert t1 == f2 and current <= f2 <= time.time() + 1  # closed and opened at the moment of the change
    prices = Prices(persistent=36)
    async with world.store.engine.begin() as conn:
        charged = await charge_interval(conn, prices, current, HOUR, replica="r", grace_s=0)
    assert charged is not None
    mib_s = 1024 * (f2 - current) + 2048 * (current + HOUR - f2)
    expected = mib_s * 36 * 1_000_000 // RATE_DENOMINATOR
    assert await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id) \
        == expected


async def test_changes_that_do_not_touch_the_rate_write_nothing(world: World) -> None:
    """A status/url update, a redeploy with the same memory, a change of cpus: the open segment stays, untouched."""
    account_id, _ = await world.account()
    sid = await world.live_service(account_id, memory_mb=1024)
    before = await segments(world, sid)
    assert len(before) == 1 and before[0][4] is None
    await run(world, "UPDATE services SET url = 'https://x.example' WHERE id = :s", s=sid)
    await run(world, "UPDATE services SET settings = jsonb_set(settings, '{resources,cpus}', '2') WHERE id = :s", s=sid)
    did = uuid.uuid4()
    await run(world, "INSERT INTO deployments (id, service_id, status, config_hash, finished_at) "
                     "VALUES (:d, :s, 'live', 'h2', now())", d=did, s=sid)
    await run(world, "UPDATE services SET live_deployment_id = :d WHERE id = :s", d=did, s=sid)
    assert await segments(world, sid) == before


async def test_every_way_a_rate_ends_closes_its_segment(world: World) -> None:
    """Undeployed (live_deployment_id cleared, as reconcile does), deleted, deleted with its project (cascade),
    turned on_demand: each closes the open segment; on_demand opens one without a rate (units 0: awake time is what
    it costs); back to persistent opens a new one, from the moment of the change."""
    account_id, _ = await world.account()
    undeployed, deleted, cascaded, flipped = [await world.live_service(account_id) for _ in range(4)]
    static = await world.live_service(account_id, mode="static")
    assert [s[2] for s in await segments(world, static)] == [1024]  # a static service's basis: 1024 (flat rate)
    await run(world, "UPDATE services SET live_deployment_id = NULL WHERE id = :s", s=undeployed)
    await run(world, "DELETE FROM services WHERE id = :s", s=deleted)
    await run(world, "DELETE FROM projects WHERE id = (SELECT project_id FROM services WHERE id = :s)", s=cascaded)
    await run(world, "UPDATE services SET mode = 'on_demand' WHERE id = :s", s=flipped)
    for sid in (undeployed, deleted, cascaded):
        rows = await segments(world, sid)
        assert len(rows) == 1 and rows[0][4] is not None, rows
    (_, k1, _, _, t1), (_, k2, u2, f2, t2) = await segments(world, flipped)
    assert (k1, k2, u2, t2) == ("persistent", "on_demand", 0, None) and t1 == f2  # no rate: charged while awake
    await run(world, "UPDATE services SET mode = 'persistent' WHERE id = :s", s=flipped)
    rows = await segments(world, flipped)
    assert len(rows) == 3 and rows[2][4] is None and rows[2][3] == rows[1][4] and rows[1][3] == rows[0][4]
    assert await world.scalar("SELECT count(*) FROM billing_segments WHERE to_s IS NULL") == 2  # flipped, static


async def test_one_statement_changing_many_services_writes_once_per_changed_service(world: World) -> None:
    """A set-based change (50 services resized in one UPDATE, 50 untouched in the same statement) closes and opens
    exactly the 50 changed ones."""
    account_id, _ = await world.account()
    sids = [await world.live_service(account_id, memory_mb=512) for _ in range(100)]
    await run(world, "UPDATE services SET settings = jsonb_set(settings, '{resources,memory_mb}', "
                     "CASE WHEN id = ANY(:half) THEN '768' ELSE '512' END::jsonb) WHERE id = ANY(:all)",
              half=sids[:50], all=sids)
    assert await world.scalar("SELECT count(*) FROM billing_segments") == 150
    assert await world.scalar("SELECT count(*) FROM billing_segments WHERE to_s IS NULL AND units = 768") == 50
    assert await world.scalar("SELECT count(*) FROM billing_segments WHERE to_s IS NOT NULL") == 50


async def test_a_price_change_needs_no_rewrite_and_past_grace_stops_persistent_charges(world: World) -> None:
    """Segments hold the basis, so a new price applies at the next charge; an account past its grace period pays
    for its static service but not for its persistent one (put to sleep)."""
    account_id, _ = await world.account()
    await world.live_service(account_id, memory_mb=1024)
    await world.live_service(account_id, mode="static")
    base = 1_950_000_000
    for k, prices in enumerate((Prices(persistent=36, static=10), Prices(persistent=72, static=10))):
        async with world.store.engine.begin() as conn:
            await charge_interval(conn, prices, base + HOUR * k, HOUR, replica="r", grace_s=0)
    micro = await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id)
    assert micro == (36 + 72) * 1_000_000 + 2 * 10 * 1_000_000  # 1 GiB-hour at 36 then 72; 2 static hours at 10
    await run(world, "UPDATE billing_accounts SET blocked_since = now() - interval '2 hours' WHERE account_id = :a",
              a=account_id)
    async with world.store.engine.begin() as conn:
        await charge_interval(conn, Prices(persistent=36, static=10), base + 2 * HOUR, HOUR, replica="r", grace_s=60)
    assert await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id) \
        == micro + 10 * 1_000_000
