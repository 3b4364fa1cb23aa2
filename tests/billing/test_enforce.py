"""The enforcer's bookkeeping on the real schema: a suspension is recorded before the remote change, a failure half
way is finished at the next pass with what was saved, two replicas never both act, a restarted process resumes
what the database says was suspended, and the 402 page answers for exactly the suspended service."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from inkmcp.billing.enforce import Enforcer
from inkmcp.billing.ledger import Ledger
from inkmcp.billing.metering import MARK_BLOCKED
from inkmcp.providers.compute.base import RuntimeState, ServiceKey, ServiceRuntime
from inkmcp.store.db import open_store
from tests.billing.conftest import World, settings

pytestmark = pytest.mark.asyncio


class Remote:
    """A remote provider's suspender as the enforcer sees it (CoolifySuspender's shape): every call logged, the
    first `fail` calls of `suspend` die after saving their first step (as a crash or a network error would)."""

    name = "coolify"
    remote = True

    def __init__(self, fail: int = 0, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, str, str, dict[str, Any]]] = []
        self.fail = fail
        self.delay = delay

    async def suspend(self, key: ServiceKey, mode: str, token: str, detail: dict[str, Any], save: Any) -> None:
        self.calls.append(("suspend", key.service_id, mode, dict(detail)))
        if "stopped" not in detail:
            detail["stopped"] = [f"app-{key.service_id[:8]}"]
            await save(detail)
        await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("Coolify went away")

    async def resume(self, key: ServiceKey, mode: str, detail: dict[str, Any], save: Any) -> None:
        self.calls.append(("resume", key.service_id, mode, dict(detail)))


class Compute:
    name = "coolify"

    async def runtime(self, key: ServiceKey) -> ServiceRuntime:
        return ServiceRuntime(state=RuntimeState.running, deployment_id="d")


async def rows(world: World) -> dict[str, tuple[str, str, str, dict[str, Any]]]:
    async with world.store.sessionmaker() as s:
        found = (await s.execute(text("SELECT CAST(service_id AS text), mode, state, token, detail "
                                      "FROM billing_suspensions"))).all()
    return {r[0]: (r[1], r[2], r[3], r[4]) for r in found}


async def block(world: World, account_id: uuid.UUID, ago_s: int) -> None:
    async with world.store.sessionmaker.begin() as s:
        await s.execute(text("UPDATE billing_accounts SET balance = -5, blocked_since = now() - make_interval("
                             "secs => :ago) WHERE account_id = :a"), {"a": account_id, "ago": ago_s})


async def passed(e: Enforcer) -> None:
    """One metering pass's enforcement, waited for (a remote provider's runs in a task of its own)."""
    await e.on_pass()
    await e.settle()
    await e._refresh()


async def top_up(world: World, account_id: uuid.UUID, amount: int = 105) -> None:
    """Credits added, then what the next metering pass does first (MARK_BLOCKED: the account is no longer blocked)."""
    async with world.store.sessionmaker.begin() as s:
        await s.execute(text("UPDATE billing_accounts SET balance = balance + :n WHERE account_id = :a"),
                        {"a": account_id, "n": amount})
        await s.execute(MARK_BLOCKED, {"default_cap": None})


def enforcer(world: World, remote: Remote, engine: Any = None, **kw: Any) -> Enforcer:
    ledger = Ledger(world.store.sessionmaker, settings(grace_s=60, public_url="https://ink.example", **kw))
    return Enforcer(engine or world.store.engine, ledger, Compute(), suspender=remote)


async def test_recorded_before_the_remote_change_and_finished_after_a_failure(world: World) -> None:
    account_id, _ = await world.account()
    await Ledger(world.store.sessionmaker, settings()).status(account_id)  # the billing row
    persistent = str(await world.live_service(account_id))
    on_demand = str(await world.live_service(account_id, mode="on_demand"))
    remote = Remote(fail=2)
    e = enforcer(world, remote)
    await block(world, account_id, ago_s=10)  # within the grace period: only on_demand stops waking
    await passed(e)
    first = await rows(world)
    assert set(first) == {on_demand} and first[on_demand][1] == "suspending"  # recorded, the remote call failed
    assert first[on_demand][3]["stopped"] == [f"app-{on_demand[:8]}"]  # what it was about to change, saved
    await block(world, account_id, ago_s=120)  # past the grace period: the persistent one too
    await passed(e)
    await passed(e)
    done = await rows(world)
    assert {k: v[1] for k, v in done.items()} == {on_demand: "suspended", persistent: "suspended"}
    assert done[on_demand][2] == first[on_demand][2]  # the same 402 page (token) across the retries
    retries = [c for c in remote.calls if c[1] == on_demand]
    assert retries[-1][3]["stopped"] == [f"app-{on_demand[:8]}"]  # the retry started from the saved step
    before = len(remote.calls)
    await passed(e)
    assert len(remote.calls) == before  # converged: nothing repeated
    # a release that was under way when the account was blocked goes live: that release is suspended again
    did = uuid.uuid4()
    async with world.store.sessionmaker.begin() as s:
        await s.execute(text("INSERT INTO deployments (id, service_id, status, config_hash, finished_at) "
                             "VALUES (:d, :s, 'live', 'h2', now())"), {"d": did, "s": persistent})
        await s.execute(text("UPDATE services SET live_deployment_id = :d WHERE id = :s"), {"d": did, "s": persistent})
    await passed(e)
    again = remote.calls[before:]
    assert [(c[0], c[1]) for c in again] == [("suspend", persistent)] and again[0][3]["reread"] is True
    assert (await rows(world))[persistent][3]["live"] == str(did)
    await passed(e)
    assert len(remote.calls) == before + 1


async def test_two_replicas_never_both_act_and_a_restart_resumes_from_the_database(world: World) -> None:
    account_id, _ = await world.account()
    await Ledger(world.store.sessionmaker, settings()).status(account_id)
    sids = {str(await world.live_service(account_id, mode="on_demand")) for _ in range(3)}
    await block(world, account_id, ago_s=0)
    other = await open_store(world.url)
    try:
        a, b = Remote(delay=0.2), Remote(delay=0.2)
        ea, eb = enforcer(world, a), enforcer(world, b, engine=other.engine)
        await asyncio.gather(passed(ea), passed(eb))
        suspends = [c[1] for c in a.calls + b.calls if c[0] == "suspend"]
        assert sorted(suspends) == sorted(sids) and bool(a.calls) != bool(b.calls)  # one replica, once each
    finally:
        await other.close()
    await top_up(world, account_id)  # while no process runs
    fresh = Remote()
    e = enforcer(world, fresh)  # a new process: nothing in memory
    await passed(e)
    assert sorted(c[1] for c in fresh.calls if c[0] == "resume") == sorted(sids)
    assert all(c[3] for c in fresh.calls)  # each resume got what its suspension saved
    assert await rows(world) == {}


async def test_the_402_page_and_the_reported_state(world: World) -> None:
    account_id, _ = await world.account()
    await Ledger(world.store.sessionmaker, settings()).status(account_id)
    sid = str(await world.live_service(account_id, mode="on_demand"))
    other_account, _ = await world.account()
    bystander = str(await world.live_service(other_account, mode="on_demand"))
    await block(world, account_id, ago_s=0)
    e = enforcer(world, Remote())
    e.install()
    await passed(e)
    token = (await rows(world))[sid][2]
    status, body = await e.page(token)
    assert status == 402 and "is asleep: no credits left on its account." in body
    assert "balance" not in body  # the page is public: the balance is the owner's business
    assert "https://ink.example/dashboard" in body
    assert (await e.page("guessed-" + token[:10]))[0] == 503  # an unknown token reveals nothing
    key = ServiceKey(account_id=str(account_id), project_id="p", service_id=sid, project_name="p", service_name="web")
    assert (await e.compute.runtime(key)).state == RuntimeState.suspended
    other = key.model_copy(update={"service_id": bystander})
    assert (await e.compute.runtime(other)).state == RuntimeState.running
    async with world.store.sessionmaker.begin() as s:
        await s.execute(text("UPDATE billing_accounts SET balance = 100 WHERE account_id = :a"), {"a": account_id})
    assert (await e.page(token))[0] == 402  # read from the database at most once a second per token
    await asyncio.sleep(1.1)
    assert (await e.page(token))[0] == 503  # paid again: "waking up, retry" until the router is back
    await top_up(world, account_id, amount=0)  # the next metering pass sees the account can pay
    await passed(e)
    assert (await e.compute.runtime(key)).state == RuntimeState.running
