"""Old finished deployments are pruned (inkmcp/core/retention.py), on the real control-plane PostgreSQL: what goes,
with its step history, and what is never touched (the newest per service, the recent, the live one, those on their
way, other services')."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from sqlalchemy import text

from inkmcp.core.retention import Retention
from tests.core.conftest import Core


async def _aged(core: Core, service_id: uuid.UUID, status: str, days_ago: float, minutes: int) -> uuid.UUID:
    """A deployment of `service_id` made `minutes` before now (the order) that finished `days_ago` (or is on its
    way, if `status` is not terminal), with one step event."""
    dep = await core.deployment(service_id)
    async with core.store.sessionmaker() as s, s.begin():
        await s.execute(text(
            "UPDATE deployments SET status = :st, created_at = now() - make_interval(mins => :m),"
            " finished_at = CASE WHEN :fin THEN now() - make_interval(secs => :age) END"
            " WHERE id = :id"), {"st": status, "m": minutes, "age": days_ago * 86400, "id": dep,
                                                      "fin": status in ("live", "failed")})
        await s.execute(text("INSERT INTO deployment_events (deployment_id, status, detail) VALUES (:id, :st, '')"),
                        {"id": dep, "st": status})
    return dep


async def _left(core: Core, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    async with core.store.sessionmaker() as s:
        rows = await s.execute(text("SELECT id FROM deployments WHERE id = ANY(:ids)"), {"ids": ids})
        events = await s.execute(text("SELECT DISTINCT deployment_id FROM deployment_events "
                                      "WHERE deployment_id = ANY(:ids)"), {"ids": ids})
        left = {r[0] for r in rows}
        assert {r[0] for r in events} <= left  # no history left behind for a deleted deployment
        return left


async def test_old_finished_deployments_go_the_kept_ones_stay(make_core: Callable[..., Core]) -> None:
    core = make_core()
    p = await core.account()
    web = await core.service(p, core.name("keep"), "web")
    other = await core.service(p, core.name("keep2"), "web")
    # web, newest first: two recent-by-order ones (kept: the newest 2), then older ones
    newest = await _aged(core, web, "failed", 90, 1)
    second = await _aged(core, web, "live", 90, 2)
    old_failed = await _aged(core, web, "failed", 90, 3)
    old_live_record = await _aged(core, web, "live", 90, 4)  # went live once, replaced since
    live_now = await _aged(core, web, "live", 90, 5)  # the service's live deployment, however old
    young = await _aged(core, web, "failed", 1, 6)  # beyond the newest 2 but finished a day ago
    stuck = await _aged(core, web, "building", 90, 7)  # on its way (a pipeline or lease owns it)
    older_failed = await _aged(core, web, "failed", 120, 8)
    others = [await _aged(core, other, "failed", 90, m) for m in (1, 2, 3)]  # another service: its own newest 2
    async with core.store.sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE services SET live_deployment_id = :d WHERE id = :s"), {"d": live_now, "s": web})
    everything = [newest, second, old_failed, old_live_record, live_now, young, stuck, older_failed, *others]

    deleted = await Retention(keep=2, days=30).prune(core.store.sessionmaker)

    left = await _left(core, everything)
    assert left == {newest, second, live_now, young, stuck, others[0], others[1]}, left
    assert deleted >= 4  # old_failed, old_live_record, older_failed, others[2] (other tests' rows may go too)
    async with core.store.sessionmaker() as s:
        live = (await s.execute(text("SELECT live_deployment_id FROM services WHERE id = :s"), {"s": web})).scalar()
    assert live == live_now
    await Retention(keep=2, days=30).prune(core.store.sessionmaker)  # again: nothing more of these goes
    assert await _left(core, everything) == left


async def test_pruning_runs_in_bounded_batches_and_concurrently(make_core: Callable[..., Core]) -> None:
    """Batches of `batch` rows, several per call; two replicas pruning at once delete each row once, fail nothing."""
    core = make_core()
    p = await core.account()
    svc = await core.service(p, core.name("batch"), "web")
    ids = [await _aged(core, svc, "failed", 60, m) for m in range(1, 13)]  # 12: the newest 1 kept, 11 pruned
    policy = Retention(keep=1, days=30, batch=3)
    first, second = await asyncio.gather(policy.prune(core.store.sessionmaker), policy.prune(core.store.sessionmaker))
    assert await _left(core, ids) == {ids[0]}
    assert first + second >= 11
