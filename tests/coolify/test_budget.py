"""The request budget: InkMCP stays inside Coolify's rate limit by itself, across replicas.

Against the stand-in's per-user throttle (Laravel's fixed window that opens at the first request) and a real
PostgreSQL (the session's embedded server from tests/store): replicas as separate processes, each with its own
engine, hammer the stand-in and never see a 429, and the stand-in never receives more than the limit in any
window; the budget answers "wait" with the right time, a 429 that arrives anyway pauses every replica, and a spent
budget beyond the caller's patience raises a retryable error without sending anything.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from inkmcp.coolify.budget import (
    BudgetSettings,
    DbBudget,
    LocalBudget,
    RequestBudget,
    budget_key,
    make_budget,
)
from inkmcp.coolify.client import CoolifyClient, CoolifyRateLimited, CoolifyUnavailable, RetryPolicy
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.store.db import _normalize
from tests.coolify_standin import CoolifyStandin
from tests.store.conftest import control_pg, embedded_pg_factory, store_url  # noqa: F401 - fixtures
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]


def max_in_window(times: list[float], window: float) -> int:
    """The largest number of `times` inside any half-open interval of length `window`."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


class RecordingSleep:
    def __init__(self) -> None:
        self.calls: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)
        await asyncio.sleep(seconds)


def db_budget(store_url: str, key: str, **settings: float) -> DbBudget:  # noqa: F811 - not the fixture
    return DbBudget.from_url(store_url, key, BudgetSettings(**settings))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# The rule itself
# ---------------------------------------------------------------------------------------------------------


async def test_local_budget_grants_the_limit_then_names_the_wait() -> None:
    budget = LocalBudget(BudgetSettings(limit=3, window=0.4, margin=0.1))
    started = time.monotonic()
    assert [(await budget.reserve()).granted for _ in range(3)] == [True, True, True]
    wait = (await budget.reserve()).wait
    assert 0.4 < wait <= 0.5  # the first slot frees one hold (window + margin) after it was taken
    assert (await budget.reserve()).wait > 0  # a "wait" took nothing: still waiting
    await asyncio.sleep(wait)
    assert (await budget.reserve()).granted
    assert time.monotonic() - started >= 0.5


async def test_db_budget_grants_exactly_the_limit_to_competing_replicas(store_url: str) -> None:  # noqa: F811
    """Three budgets with their own engines (= three replicas) ask 90 slots at once from a limit of 25: exactly 25
    are granted, every refusal says how long to wait, and the row holds 25 stamps."""
    key = f"test:{time.monotonic_ns()}"
    budgets = [db_budget(store_url, key, limit=25, window=30.0, margin=1.0) for _ in range(3)]
    try:
        answers = await asyncio.gather(*[b.reserve() for b in budgets for _ in range(30)])
        assert sum(a.granted for a in answers) == 25
        assert all(30.0 < a.wait <= 31.0 for a in answers if not a.granted)
        assert sum(b.round_trips for b in budgets) <= 12  # 30 concurrent requests per replica share round trips
        engine = create_async_engine(_normalize(store_url))
        async with engine.connect() as conn:
            stamps = (await conn.execute(text("SELECT stamps FROM coolify_request_budget WHERE key = :k"),
                                         {"k": key})).scalar_one()
        await engine.dispose()
        assert len(stamps) == 25
    finally:
        for b in budgets:
            await b.aclose()


async def test_db_budget_known_wait_is_answered_without_the_database(store_url: str) -> None:  # noqa: F811
    budget = db_budget(store_url, f"test:{time.monotonic_ns()}", limit=2, window=5.0, margin=0.0)
    try:
        assert (await budget.reserve()).granted
        assert (await budget.reserve()).granted
        first = (await budget.reserve()).wait
        trips = budget.round_trips
        again = [(await budget.reserve()).wait for _ in range(20)]
        assert budget.round_trips == trips  # the process knows no slot frees earlier
        assert 4.5 < first <= 5.0 and all(0 < w <= first for w in again)
    finally:
        await budget.aclose()


async def test_db_budget_slots_free_after_the_hold(store_url: str) -> None:  # noqa: F811
    budget = db_budget(store_url, f"test:{time.monotonic_ns()}", limit=2, window=0.3, margin=0.1)
    try:
        assert [(await budget.reserve()).granted for _ in range(2)] == [True, True]
        wait = (await budget.reserve()).wait
        assert 0.3 < wait <= 0.4
        await asyncio.sleep(wait)
        assert (await budget.reserve()).granted
    finally:
        await budget.aclose()


async def test_a_late_answer_holds_its_slot_from_the_answer(store_url: str) -> None:  # noqa: F811
    """A request whose answer took longer than the margin may have reached Coolify that late: settle moves its
    stamp, so the next slot comes one window after the answer, not after the grant."""
    for budget in (LocalBudget(BudgetSettings(limit=1, window=0.5, margin=0.05)),
                   db_budget(store_url, f"test:{time.monotonic_ns()}", limit=1, window=0.5, margin=0.05)):
        try:
            grant = await budget.reserve()
            await asyncio.sleep(0.3)  # the request in flight, slow
            answered = time.monotonic()
            await budget.settle(grant)
            wait = (await budget.reserve()).wait
            # from the answer, not 0.25; plus the grant's round trip (`slack`: DbBudget's stamp is on the database's
            # clock somewhere in it, so settle counts it in; the first grant's includes connecting: 59 ms once in CI)
            assert 0.4 < wait <= 0.55 + grant.slack, (type(budget).__name__, wait, grant.slack)
            await asyncio.sleep(wait)
            assert (await budget.reserve()).granted
            assert time.monotonic() - answered >= 0.48  # (clock granularity between the two clocks)
        finally:
            await budget.aclose()


async def test_slots_taken_ahead_only_while_half_the_budget_is_free(store_url: str) -> None:  # noqa: F811
    """Sequential calls (a deploy's steps) cost a round trip every few requests while the log is under half the
    limit; near the limit every slot is a round trip of its own, so nothing is hoarded; a slot taken ahead is
    used within margin/2 of its grant or dropped."""
    key = f"test:{time.monotonic_ns()}"
    budget = db_budget(store_url, key, limit=10, window=30.0, margin=0.4, prefetch=4)
    try:
        for _ in range(5):
            assert (await budget.reserve()).granted
        assert budget.round_trips == 1  # 1 asked + 4 ahead
        for expected_trips in (2, 3):
            assert (await budget.reserve()).granted
            assert budget.round_trips == expected_trips  # 5 of 10 used: no more taken ahead
        engine = create_async_engine(_normalize(store_url))
        async with engine.connect() as conn:
            stamps = (await conn.execute(text("SELECT stamps FROM coolify_request_budget WHERE key = :k"),
                                         {"k": key})).scalar_one()
        await engine.dispose()
        assert len(stamps) == 7
    finally:
        await budget.aclose()
    other = db_budget(store_url, f"test:{time.monotonic_ns()}", limit=100, margin=0.2, prefetch=4)
    try:
        assert (await other.reserve()).granted
        await asyncio.sleep(0.15)  # past the lease of margin/2: the 4 taken ahead are not used
        grant = await other.reserve()
        assert grant.granted and other.round_trips == 2 and time.monotonic() - grant.at < 0.1
    finally:
        await other.aclose()


async def test_a_prompt_answer_costs_no_round_trip(store_url: str) -> None:  # noqa: F811
    budget = db_budget(store_url, f"test:{time.monotonic_ns()}", limit=5, margin=1.0, prefetch=0)
    try:
        grant = await budget.reserve()
        await budget.settle(grant)
        assert (budget.round_trips, budget.settled_late) == (1, 0)
    finally:
        await budget.aclose()


async def test_pause_stops_every_replica_until_it_ends(store_url: str) -> None:  # noqa: F811
    key = f"test:{time.monotonic_ns()}"
    # b takes no slots ahead: those (at most `prefetch`, for margin/2 s) would still be used into a pause
    a, b = db_budget(store_url, key), db_budget(store_url, key, prefetch=0)
    try:
        assert (await b.reserve()).granted
        await a.pause(1.5)
        wait = (await b.reserve()).wait  # b learns it from the database, in its next round trip
        assert 1.3 < wait <= 1.5
        await asyncio.sleep(wait)
        assert (await b.reserve()).granted
    finally:
        await a.aclose()
        await b.aclose()


def test_reserve_must_leave_something() -> None:
    with pytest.raises(ValueError, match=r"INKMCP_COOLIFY_RATE_RESERVE .* pass a reserve below the limit"):
        LocalBudget(BudgetSettings(limit=10, reserve=10))


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKMCP_COOLIFY_RATE_LIMIT", "120")
    monkeypatch.setenv("INKMCP_COOLIFY_RATE_WINDOW", "30")
    s = BudgetSettings()
    assert (s.limit, s.window, s.hold) == (120, 30.0, 31.0)


async def test_budgets_are_pluggable(store_url: str) -> None:  # noqa: F811
    assert isinstance(LocalBudget(), RequestBudget)
    assert isinstance(make_budget("1|t"), LocalBudget)
    shared = make_budget("1|t", store_url)
    assert isinstance(shared, DbBudget) and isinstance(shared, RequestBudget) and shared.key == budget_key("1|t")
    await shared.aclose()
    assert budget_key("1|secret") != budget_key("2|secret") and "secret" not in budget_key("1|secret")


# ---------------------------------------------------------------------------------------------------------
# The client with a budget, against the stand-in's throttle
# ---------------------------------------------------------------------------------------------------------


async def test_client_waits_for_its_budget_instead_of_meeting_a_429(tmp_path: Path, spec: CoolifySpec) -> None:
    """Coolify allows 3 per second; the budget knows it: the fourth call waits for the slot, never a 429."""
    with CoolifyStandin(tmp_path, rate_limit=3, rate_window=1.0, spec=spec) as standin:
        token = standin.add_token("read")
        sleep = RecordingSleep()
        budget = LocalBudget(BudgetSettings(limit=3, window=1.0, margin=0.1))
        async with CoolifyClient(standin.url, token, sleep=sleep, budget=budget) as c:
            for _ in range(7):
                assert await c.list_servers() == []
        assert [r.status for r in standin.requests] == [200] * 7
        assert 2.0 < sum(sleep.calls) <= 2.4  # two holds (window + margin): slots free one by one, on time
        assert max_in_window([r.at for r in standin.requests], 1.0) <= 3


async def test_spent_budget_beyond_the_callers_patience_sends_nothing(tmp_path: Path, spec: CoolifySpec) -> None:
    """A deploy path with 5 s of patience and a budget spent for a minute: a retryable error naming the wait,
    raised at once, and Coolify sees nothing (so nothing counts against the limit either)."""
    with CoolifyStandin(tmp_path, spec=spec) as standin:
        token = standin.add_token("read")
        budget = LocalBudget(BudgetSettings(limit=2, window=60.0))
        async with CoolifyClient(standin.url, token, budget=budget,
                                 retry=RetryPolicy(max_total_wait=5.0)) as c:
            await c.list_servers()
            await c.list_servers()
            started = time.monotonic()
            with pytest.raises(CoolifyRateLimited) as caught:
                await c.list_servers()
        assert time.monotonic() - started < 0.5
        e = caught.value
        assert e.retryable and e.status is None and 59 < (e.retry_after or 0) <= 61
        assert "request budget" in str(e) and "next slot in" in str(e)
        assert len(standin.requests) == 2


async def test_a_429_anyway_pauses_the_other_replicas(tmp_path: Path, spec: CoolifySpec,
                                                      store_url: str) -> None:  # noqa: F811
    """Coolify's limit is lower than configured (another API user, a changed API_RATE_LIMIT): replica A meets the
    429, waits Retry-After and pauses the shared budget; replica B, asked meanwhile, waits too instead of sending
    into the closed window."""
    with CoolifyStandin(tmp_path, rate_limit=2, rate_window=2.0, spec=spec) as standin:
        token = standin.add_token("read")
        key = budget_key(token) + f":{time.monotonic_ns()}"
        a_budget, b_budget = db_budget(store_url, key), db_budget(store_url, key)
        async with CoolifyClient(standin.url, token, budget=a_budget) as a, \
                CoolifyClient(standin.url, token, budget=b_budget) as b:
            await a.list_servers()
            await a.list_servers()
            a_call = asyncio.ensure_future(a.list_servers())  # 429, Retry-After 2: pauses, sleeps, retries
            deadline = time.monotonic() + 5
            while not any(r.status == 429 for r in standin.requests):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)  # let A record the pause
            await b.list_servers()
            await a_call
        await a_budget.aclose()
        await b_budget.aclose()
        statuses = [r.status for r in standin.requests]
        assert statuses == [200, 200, 429, 200, 200]
        limited_at = standin.requests[2].at
        assert all(r.at - limited_at >= 1.0 for r in standin.requests[3:])  # nobody sent into the closed window


async def test_an_unreadable_budget_sends_nothing(tmp_path: Path, spec: CoolifySpec) -> None:
    """The control-plane database is down: the call fails as a retryable CoolifyUnavailable naming the database
    setting, and Coolify receives nothing (sending without a budget could break the shared limit)."""
    with CoolifyStandin(tmp_path, spec=spec) as standin:
        token = standin.add_token("read")
        port = free_port()  # nothing listens there
        budget = DbBudget.from_url(f"postgresql://inkmcp@127.0.0.1:{port}/inkmcp", budget_key(token))
        async with CoolifyClient(standin.url, token, budget=budget) as c:
            with pytest.raises(CoolifyUnavailable) as caught:
                await c.list_servers()
        await budget.aclose()
        assert caught.value.retryable and "INKMCP_DATABASE_URL" in str(caught.value)
        assert "nothing was sent" in str(caught.value) and standin.requests == []


# ---------------------------------------------------------------------------------------------------------
# Replicas as processes
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_three_replica_processes_never_see_a_429(tmp_path: Path, spec: CoolifySpec,
                                                       store_url: str) -> None:  # noqa: F811
    """Three InkMCP processes, four concurrent callers each, one token, Coolify at 30 requests per 2 s: for 6 s
    they send as fast as the budget lets them. The stand-in answers no 429, never receives more than 30 in any
    2 s, and the budget is not needlessly slow (at least two full windows' worth arrive)."""
    limit, window, seconds = 30, 2.0, 6.0
    with CoolifyStandin(tmp_path / "nodes", rate_limit=limit, rate_window=window, spec=spec) as standin:
        token = standin.add_token("read")
        key = budget_key(token)
        procs = []
        outs = [tmp_path / f"replica{i}.json" for i in range(3)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            for out in outs:
                procs.append(subprocess.Popen(
                    [sys.executable, "-c", "from tests.coolify.budget_replica import main; main()",
                     standin.url, token, store_url, key, str(limit), str(window), str(seconds), str(out)],
                    cwd=REPO, env=env))
            for p in procs:
                assert p.wait(timeout=60) == 0
        finally:
            for p in procs:
                if p.poll() is None:  # only on failure: stop exactly the replicas this test started
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(10)
        results = [json.loads(o.read_text()) for o in outs]
        assert [r["error"] for r in results] == [None, None, None]
        statuses = [r.status for r in standin.requests]
        assert 429 not in statuses
        assert sum(r["sent"] for r in results) == len(statuses)
        arrivals = [r.at for r in standin.requests]
        assert max_in_window(arrivals, window) <= limit
        assert len(arrivals) >= 2 * limit
        assert all(r["sent"] > 0 for r in results)  # every replica got a share
