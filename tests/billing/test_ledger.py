"""Ledger and metering invariants on the real schema: idempotency under concurrency, exact rounding, caps."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid

import pytest
from sqlalchemy import text

from inkmcp.billing.breaker import Breaker, RetryLoop
from inkmcp.billing.ledger import CreditsExhausted, Ledger, RateLimited
from inkmcp.billing.metering import Meter, charge_interval, record_sizes
from inkmcp.billing.probes import awake_probe
from inkmcp.billing.service import own_postgres_sizes
from inkmcp.core.principal import Principal
from inkmcp.errors import InvalidArgument, NotFound
from inkmcp.providers.compute.base import RuntimeState, ServiceKey, ServiceRuntime
from inkmcp.store.db import open_store
from tests.billing.conftest import World, settings

pytestmark = pytest.mark.asyncio

BASE = 1_900_000_000  # interval starts far from the wall clock: nothing else charges these


async def sums(world: World, account_id: uuid.UUID) -> tuple[int, int, int]:
    """(cached balance, sum of entries, entries)"""
    balance = await world.scalar("SELECT balance FROM billing_accounts WHERE account_id = :a", a=account_id)
    total = await world.scalar("SELECT COALESCE(sum(amount), 0) FROM credit_entries WHERE account_id = :a",
                               a=account_id)
    n = await world.scalar("SELECT count(*) FROM credit_entries WHERE account_id = :a", a=account_id)
    return int(balance), int(total), int(n)  # type: ignore[arg-type]


async def test_concurrent_credits_replays_and_two_replicas_charging(world: World) -> None:
    """50 concurrent credits (30 distinct events, 20 replays of them) while two engines (two replicas' pools)
    charge the same 20 intervals: every event once, every interval once, balance == sum of distinct entries."""
    account_id, name = await world.account()
    await world.live_service(account_id, memory_mb=5120)  # 36/GiB-h at 1 s intervals: 0.05 per interval
    other = await open_store(world.url)
    try:
        ledgers = [Ledger(st.sessionmaker, settings(starter_credits=0)) for st in (world.store, other)]
        events = [(f"stripe:evt_{i}", 100 + i) for i in range(30)]
        calls = [ledgers[i % 2].credit(name, amt, source_id=src, kind="topup") for i, (src, amt) in enumerate(events)]
        calls += [ledgers[i % 2].credit(name, events[i % 7][1], source_id=events[i % 7][0], kind="topup")
                  for i in range(20)]

        async def replica(st: object, tag: str) -> list[object]:
            out = []
            for k in range(40):
                async with st.engine.begin() as conn:  # type: ignore[attr-defined]
                    out.append(await charge_interval(conn, settings().prices, BASE + k, 1, replica=tag, grace_s=0))
            return out

        results = await asyncio.gather(*calls, replica(world.store, "a"), replica(other, "b"))
    finally:
        await other.close()
    credits = results[:50]
    assert sum(1 for r in credits if r.applied) == 30  # type: ignore[attr-defined]
    charged_a, charged_b = results[50], results[51]
    assert all((a is None) != (b is None) for a, b in zip(charged_a, charged_b, strict=True))  # each exactly once
    balance, total, n = await sums(world, account_id)
    topups = sum(amt for _, amt in events)
    assert balance == total == topups - 2  # 40 intervals x 0.05 = exactly 2 minor units of usage
    assert n == 30 + 2
    assert await world.scalar("SELECT count(*) FROM billing_intervals") == 40
    assert await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id) \
        == 40 * 50_000
    # one rate segment for the service, opened once, not a row per interval
    assert await world.scalar("SELECT count(*) FROM billing_segments") == 1
    assert await world.scalar("SELECT count(DISTINCT source_id) FROM credit_entries") == n


async def test_tiny_intervals_sum_exactly_without_rounding_against_the_user(world: World) -> None:
    """0.02 minor units per interval, charged 125 times: exactly 2 units charged (at the 50th and 100th),
    never 125 (rounded up each time) nor 0 (rounded down each time); the 0.5 left carries over."""
    account_id, _ = await world.account()
    await world.live_service(account_id, memory_mb=2048)
    odd_id, _ = await world.account()
    await world.live_service(odd_id, memory_mb=100)  # 36*100/1024/3600 = 0.0009765625.. per interval
    prices = settings().prices
    for k in range(125):
        async with world.store.engine.begin() as conn:
            assert await charge_interval(conn, prices, BASE + 10_000 + k, 1, replica="r", grace_s=0) is not None
    balance, total, _ = await sums(world, account_id)
    assert balance == total == -2
    charges = await world.scalar("SELECT array_agg(amount ORDER BY id) FROM credit_entries WHERE account_id = :a "
                                 "AND kind = 'usage'", a=account_id)
    assert charges == [-1, -1]
    assert await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id) \
        == 125 * 20_000
    exact = 125 * 36 * 100 / 1024 / 3600  # 0.122...: the odd account owes less than one unit so far
    micro = await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=odd_id)
    assert exact * 1e6 - 125 <= micro <= exact * 1e6  # floored at 10^-6 per interval, never above the truth
    assert (await sums(world, odd_id))[0] == math.floor(exact) == 0


async def test_replica_catches_up_once_and_never_twice(world: World) -> None:
    """A replica that was down charges the intervals missed (bounded); two replicas passing at once charge each
    interval once."""
    account_id, _ = await world.account()
    await world.live_service(account_id, memory_mb=1024)
    now = [float(BASE + 50_000)]
    cfg = settings(metering_interval_s=10, metering_catchup_intervals=5, starter_credits=1000)
    a = Meter(world.store.engine, cfg, "a", clock=lambda: now[0])
    b = Meter(world.store.engine, cfg, "b", clock=lambda: now[0])
    first = await a.charge_due()
    assert len(first) == 1  # a fresh start charges only the last finished interval, no history
    now[0] += 30
    two = await asyncio.gather(a.charge_due(), b.charge_due())
    assert sorted(c.start_s for c in two[0] + two[1]) == [first[0].start_s + 10 * i for i in (1, 2, 3)]
    now[0] += 1000  # a long outage: only the last 5 intervals are caught up
    late = await b.charge_due()
    assert len(late) == 5
    assert await world.scalar("SELECT count(*) FROM billing_intervals") == 9
    assert await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id) \
        == 9 * 100_000  # 0.1 per 10 s interval, each interval once
    balance, total, _ = await sums(world, account_id)
    assert balance == total == 1000 - math.floor(9 * 10 * 36 / 3600)  # 9 intervals of 10 s at 0.1: 0.9 -> 0


async def test_cap_and_zero_refuse_with_balance_cap_and_how_to_add(world: World, make_ledger: object) -> None:
    account_id, name = await world.account()
    ledger: Ledger = make_ledger(starter_credits=50, public_url="https://ink.example")  # type: ignore[operator]
    p = Principal(account_id=account_id, account_name=name, actor="t")
    await ledger.check(p, "deploy_app")  # starter credits: allowed
    assert (await ledger.status(account_id)).balance == 50
    await ledger.set_cap(name, 0)
    with pytest.raises(CreditsExhausted) as e:
        await ledger.check(p, "deploy_app")
    text = e.value.render()
    assert "balance 50" in text and "monthly cap 0" in text and "https://ink.example/dashboard" in text
    await ledger.set_cap(name, None)
    await ledger.check(p, "deploy_app")
    async with world.store.engine.begin() as conn:  # a big charge drives the balance below zero
        await world.live_service(account_id, memory_mb=16384)
        await charge_interval(conn, ledger.settings.prices, BASE + 90_000, 3600, replica="r", grace_s=0)
    st = await ledger.status(account_id)
    assert st.balance == 50 - 36 * 16 and st.month_spend == 36 * 16
    with pytest.raises(CreditsExhausted) as e:
        await ledger.check(p, "provision_database")
    assert f"balance {st.balance}" in e.value.render() and "no credits left" in e.value.render()
    await ledger.credit(name, 1000, source_id="grant-1", reason="test")
    await ledger.check(p, "deploy_app")


async def test_credit_is_idempotent_and_validates(world: World, make_ledger: object) -> None:
    _, name = await world.account()
    ledger: Ledger = make_ledger()  # type: ignore[operator]
    first = await ledger.credit(name, 500, source_id="stripe:evt_1", kind="topup")
    again = await ledger.credit(name, 500, source_id="stripe:evt_1", kind="topup")
    assert first.applied and not again.applied and first.balance == again.balance == 500
    with pytest.raises(InvalidArgument, match="amount"):
        await ledger.credit(name, -5, source_id="x")
    with pytest.raises(InvalidArgument, match="amount"):
        await ledger.credit(name, 0, source_id="x")
    with pytest.raises(NotFound, match="no account"):
        await ledger.credit("nobody-" + uuid.uuid4().hex[:6], 5, source_id="y")
    assert await world.scalar("SELECT count(*) FROM credit_entries") == 1




async def test_rate_limit_is_a_shared_token_bucket_that_says_when_to_retry(world: World, make_ledger: object) -> None:
    account_id, name = await world.account()
    ledger: Ledger = make_ledger(starter_credits=100, rate_limit_per_minute=60, rate_limit_burst=3)  # type: ignore
    other = await open_store(world.url)  # a second replica's pool: the bucket is in the database, not in memory
    try:
        twin = Ledger(other.sessionmaker, ledger.settings)
        p = Principal(account_id=account_id, account_name=name, actor="t")
        await asyncio.gather(ledger.check(p, "deploy_app"), twin.check(p, "deploy_app"), ledger.check(p, "x"))
        with pytest.raises(RateLimited) as e:
            await twin.check(p, "deploy_app")
        assert "retry after" in e.value.render() and "deploy_app refused" in e.value.render()
        deadline = time.monotonic() + 10
        while True:  # one token a second comes back
            try:
                await twin.check(p, "deploy_app")
                break
            except RateLimited:
                assert time.monotonic() < deadline, "the bucket never refilled"
                await asyncio.sleep(0.2)
    finally:
        await other.close()


async def test_breaker_refuses_the_sixth_identical_failure_and_lets_a_change_through(world: World) -> None:
    """Five failed deployments of one config hash at the same step: the sixth identical deploy is refused naming
    them and their cause; another hash (a new commit, settings or env) is not counted."""
    account_id, _ = await world.account()
    service_id = await world.live_service(account_id)
    async with world.store.sessionmaker.begin() as s:
        for i in range(5):
            dep = uuid.uuid4()
            await s.execute(text("INSERT INTO deployments (id, service_id, status, commit, config_hash, error) "
                                 "VALUES (:d, :s, 'failed', :c, 'samehash', :e)"),
                            {"d": dep, "s": service_id, "c": "ab" * 20, "e": f"web exited with code 3 (try {i})"})
            for step in ("queued", "building", "starting", "failed"):
                await s.execute(text("INSERT INTO deployment_events (deployment_id, status, detail) "
                                     "VALUES (:d, :st, '')"), {"d": dep, "st": step})
    breaker = Breaker(world.store.sessionmaker, settings())
    with pytest.raises(RetryLoop) as e:
        await breaker(service_id, "samehash", "shop", "web")
    text_ = e.value.render()
    assert "already failed 5 times" in text_ and "at step starting" in text_ and "exited with code 3" in text_
    assert "abababababab" in text_ and "get_logs(project_name='shop'" in text_
    await breaker(service_id, "otherhash", "shop", "web")  # something changed: allowed
    await Breaker(world.store.sessionmaker, settings(retry_breaker_failures=6))(service_id, "samehash", "shop", "web")


async def test_builds_and_database_storage_are_charged_from_what_ran(world: World) -> None:
    """A 90-second build step (deployment_events) at 2/minute costs 3; a database measured with pg_database_size on
    a real server, at 1000/GB-month, costs size x time; each once, in the interval the build finished / per interval."""
    account_id, _ = await world.account()
    service_id = await world.live_service(account_id, mode="on_demand")  # asleep: costs nothing here
    start = BASE + 200_000
    dep = uuid.uuid4()
    async with world.store.sessionmaker.begin() as s:
        await s.execute(text("INSERT INTO deployments (id, service_id, status, config_hash, finished_at) "
                             "VALUES (:d, :s, 'live', 'h2', to_timestamp(:f))"), {"d": dep, "s": service_id,
                                                                                  "f": start + 30})
        for status, at in (("queued", start - 100), ("building", start - 95), ("releasing", start - 5),
                           ("live", start + 30)):
            await s.execute(text("INSERT INTO deployment_events (deployment_id, status, detail, at) "
                                 "VALUES (:d, :st, '', to_timestamp(:at))"), {"d": dep, "st": status, "at": at})
        project_id = await s.scalar(text("SELECT project_id FROM services WHERE id = :s"), {"s": service_id})
        db_name = world.url.rsplit("/", 1)[1].split("?")[0]
        db_id = await s.scalar(text(
            "INSERT INTO databases (id, project_id, kind, provider, tier, external_id, credentials_enc) "
            "VALUES (gen_random_uuid(), :p, 'postgres', 'postgres', 'free', :n, '\\x00') RETURNING id"),
            {"p": project_id, "n": db_name})
    admin = world.url.replace("postgresql+psycopg://", "postgresql://")  # a libpq URL, as app.py passes
    sizes = await own_postgres_sizes(admin, world.store.sessionmaker)()
    assert set(sizes) == {db_id} and sizes[db_id] > 1_000_000  # a real database is several MB
    async with world.store.engine.begin() as conn:
        await record_sizes(conn, sizes)
    prices = settings(prices={"build_minute": 2, "db_gb_month": 1000, "on_demand": 5}).prices
    for k in range(2):
        async with world.store.engine.begin() as conn:
            await charge_interval(conn, prices, start + 60 * k, 60, replica="r", grace_s=0, starter=10)
    async with world.store.sessionmaker() as s:
        rows = dict((await s.execute(text("SELECT kind, sum(micro) FROM billing_usage GROUP BY kind"))).all())
    assert rows["build"] == 3_000_000  # 90 s at 2 per minute, charged once although two intervals ran
    per_interval = 1000 * sizes[db_id] * 60 * 1_000_000 // (10**9 * 2592000)
    assert rows["database"] == 2 * per_interval and "on_demand" not in rows
    balance, total, _ = await sums(world, account_id)
    assert balance == total == 10 - (3_000_000 + 2 * per_interval) // 1_000_000


async def test_awake_time_from_a_provider_without_memory_of_it(world: World) -> None:
    """Coolify-like providers: awake = runtime() says running/starting. Only that service's time is charged; one the
    provider cannot answer for is not (in the user's favour)."""
    account_id, _ = await world.account()
    awake, _asleep, unknown = [await world.live_service(account_id, mode="on_demand") for _ in range(3)]

    class Remote:
        name = "coolify"

        async def runtime(self, key: ServiceKey) -> ServiceRuntime:
            if key.service_id == str(unknown):
                raise RuntimeError("API timeout")
            running = key.service_id == str(awake)
            return ServiceRuntime(state=RuntimeState.running if running else RuntimeState.sleeping)

    probe = awake_probe(Remote(), world.store.sessionmaker)
    assert list(await probe()) == [str(awake)]
    now = [float(BASE + 300_000)]
    meter = Meter(world.store.engine, settings(prices={"on_demand": 3600}, metering_interval_s=10, starter_credits=5),
                  "r", awake_probe=probe, clock=lambda: now[0])
    for _ in range(4):  # samples 2.5 s apart within one interval: awake from the 1st to the 4th, 7.5 s
        await meter.sample()
        now[0] += 2.5
    now[0] += 10
    assert len(await meter.charge_due()) >= 1
    async with world.store.sessionmaker() as s:
        rows = (await s.execute(text("SELECT subject_id, quantity, micro FROM billing_usage"))).all()
    assert [(r[0], r[1]) for r in rows] == [(awake, 7_500)]  # 7.5 s awake at 1 per second
    assert rows[0][2] == 7_500_000


async def test_a_replica_dying_mid_charge_leaves_nothing_and_the_survivor_charges(world: World) -> None:
    """Replica A claims an interval and dies before committing (its backend is terminated while it holds the lock):
    nothing of the interval is recorded, B waits on the lock, then charges it exactly once."""
    account_id, _ = await world.account()
    await world.live_service(account_id, memory_mb=1024)
    cfg = settings(metering_interval_s=10, starter_credits=100)
    now = [float(BASE + 400_000)]
    survivor = Meter(world.store.engine, cfg, "b", clock=lambda: now[0])
    start = survivor.due(now[0])
    dying = await open_store(world.url, pool_size=1, max_overflow=0)
    try:
        conn = await dying.engine.connect()
        await conn.begin()
        pid = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        assert await charge_interval(conn, cfg.prices, start, 10, replica="a", grace_s=0, starter=100) is not None
        waiting = asyncio.create_task(survivor.charge_due())  # waits for A (its lock, or the rows A wrote)
        deadline = time.monotonic() + 20
        while not await world.scalar("SELECT count(*) FROM pg_locks WHERE NOT granted"):
            assert time.monotonic() < deadline and not waiting.done(), "B never waited for A's lock"
            await asyncio.sleep(0.05)
        async with world.store.engine.connect() as admin:
            assert (await admin.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})).scalar_one()
        charged = await asyncio.wait_for(waiting, 30)
        with contextlib.suppress(Exception):
            await conn.close()
    finally:
        await dying.close()
    assert [c.start_s for c in charged] == [start]
    assert await world.scalar("SELECT replica FROM billing_intervals WHERE start_s = :s", s=start) == "b"
    assert await world.scalar("SELECT usage_micro FROM billing_accounts WHERE account_id = :a", a=account_id) \
        == 100_000
