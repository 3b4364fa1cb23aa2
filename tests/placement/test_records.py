"""Placement against the control-plane PostgreSQL: reservations, stickiness, release, draining, and replicas
placing at the same time (separate processes, each with its own pool and engine) never overbooking a node."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import uuid
from typing import Any

import pytest
from sqlalchemy import delete, func, select, text

from inkmcp.build.plan import Mode
from inkmcp.placement.models import Demand, Node, PlacementBusy, PlacementError, Policy
from inkmcp.placement.records import PlacementService
from inkmcp.providers.compute.base import Resources, ServiceKey
from inkmcp.store.db import Store, open_store
from inkmcp.store.models import Placement, PlacementNode, Service
from inkmcp.store.statements import statement_pool
from tests.placement import replica
from tests.placement.conftest import make_services


def node(uuid_: str, memory: int = 4096, cpus: int = 4000, **kw: Any) -> Node:
    return Node(uuid=uuid_, name=f"name-{uuid_}", memory_mb=memory, millicpus=cpus,
                wildcard_base=f"{uuid_}.apps.test", **kw)


def fixed(*nodes: Node) -> Any:
    async def source() -> list[Node]:
        return list(nodes)
    return source


def uniq(prefix: str) -> str:
    """Node uuids unique to the test: the module's database is shared by its tests."""
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def key(sid: str, pid: str) -> ServiceKey:
    return ServiceKey(account_id="a", project_id=pid, service_id=sid, project_name="p", service_name="s")


async def rows(store: Store, node_uuid: str) -> list[Placement]:
    async with store.session() as s:
        return list((await s.execute(select(Placement).where(Placement.node_uuid == node_uuid))).scalars())


async def test_reserve_is_recorded_idempotent_and_sticky_across_redeploys(pstore: Store) -> None:
    a, b = uniq("a"), uniq("b")
    placer = PlacementService(pstore.sessionmaker, fixed(node(a, memory=8192), node(b, memory=2048)))
    (sid, pid), = await make_services(pstore, 1)
    first = await placer.place(key(sid, pid), Mode.persistent, Resources(memory_mb=1024, cpus=0.5), processes=2)
    assert first.server_uuid == a and first.wildcard_base == f"{a}.apps.test" and not first.moved
    for _ in range(3):  # a redeploy, a retry after a crash: the same node, one row, the same charge
        assert await placer.place(key(sid, pid), Mode.persistent, Resources(memory_mb=1024, cpus=0.5),
                                  processes=2) == first
    [row] = await rows(pstore, a)
    assert (row.memory_mb, row.millicpus, row.charged_memory_mb, row.mode) == (2048, 1000, 2048, "persistent")
    # another InkMCP replica (its own service object, same database) sees the same placement
    other = PlacementService(pstore.sessionmaker, fixed(node(b, memory=2048), node(a, memory=8192)))
    assert (await other.place(key(sid, pid), Mode.persistent, Resources(memory_mb=1024, cpus=0.5),
                              processes=2)).server_uuid == a
    # new limits: resized in place, not moved
    bigger = await placer.place(key(sid, pid), Mode.persistent, Resources(memory_mb=2048, cpus=1), processes=2)
    assert bigger.server_uuid == a and not bigger.moved
    assert (await placer.placement_of(sid)).charged_memory_mb == 4096  # type: ignore[union-attr]


async def test_on_demand_overcommit_and_the_clear_error_when_nothing_fits(pstore: Store) -> None:
    n = uniq("n")
    placer = PlacementService(pstore.sessionmaker, fixed(node(n, memory=4096, cpus=8000)),
                              Policy(on_demand_overcommit=4))
    services = await make_services(pstore, 9)
    for sid, pid in services[:8]:  # 8 x 2048 MiB asleep-most-of-the-time on 4096 MiB
        assert (await placer.place(key(sid, pid), Mode.on_demand, Resources(memory_mb=2048, cpus=1))).server_uuid == n
    sid, pid = services[8]
    with pytest.raises(PlacementError) as err:
        await placer.place(key(sid, pid), Mode.on_demand, Resources(memory_mb=2048, cpus=1))
    assert "2048 MiB" in str(err.value) and "largest free room" in str(err.value) and n not in str(err.value)
    assert await placer.placement_of(sid) is None


async def test_release_and_service_deletion_free_the_room(pstore: Store) -> None:
    n = uniq("n")
    placer = PlacementService(pstore.sessionmaker, fixed(node(n, memory=2048)))
    (s1, p1), (s2, p2) = await make_services(pstore, 2)
    await placer.place(key(s1, p1), Mode.persistent, Resources(memory_mb=2048, cpus=1))
    with pytest.raises(PlacementError):
        await placer.place(key(s2, p2), Mode.persistent, Resources(memory_mb=2048, cpus=1))
    await placer.release(key(s1, p1))
    assert not await placer.release_service(s1)  # a repeat is harmless
    await placer.place(key(s2, p2), Mode.persistent, Resources(memory_mb=2048, cpus=1))
    # core deletes the service row: the reservation goes with it (ON DELETE CASCADE), no release call needed
    async with pstore.session() as s, s.begin():
        await s.execute(delete(Service).where(Service.id == uuid.UUID(s2)))
    assert await rows(pstore, n) == []


async def test_a_service_moves_only_when_its_node_drains_or_goes(pstore: Store) -> None:
    a, b, c = uniq("a"), uniq("b"), uniq("c")
    nodes = [node(a, memory=8192), node(b, memory=4096), node(c, memory=4096)]
    placer = PlacementService(pstore.sessionmaker, fixed(*nodes))
    (sid, pid), = await make_services(pstore, 1)
    res = Resources(memory_mb=1024, cpus=0.5)
    assert (await placer.place(key(sid, pid), Mode.persistent, res)).server_uuid == a
    await placer.set_draining(nodes[0])
    moved = await placer.place(key(sid, pid), Mode.persistent, res)
    assert moved.moved and moved.server_uuid in {b, c}
    assert [r.service_id for r in await rows(pstore, a)] == []
    # the node it is on disappears from Coolify's list: placed anew on the remaining one
    gone = PlacementService(pstore.sessionmaker, fixed(*[n for n in nodes if n.uuid != moved.server_uuid]))
    again = await gone.place(key(sid, pid), Mode.persistent, res)
    assert again.moved and again.server_uuid == ({b, c} - {moved.server_uuid}).pop()


@pytest.mark.parametrize("attempts", [8, 1])
async def test_a_second_replica_waits_for_the_node_lock_and_then_sees_the_room_taken(pstore: Store,
                                                                                     placement_url: str,
                                                                                     attempts: int) -> None:
    """Deterministic proof of the scheme: replica 1 holds node N's row lock with its reservation written but not
    committed; replica 2 (own pool) chose N from its stale read and must *wait* (seen in pg_locks), then re-read N's
    load, find it full and never overbook: with attempts left it decides again and refuses (nothing fits), with
    none left it says busy (retryable)."""
    n = uniq("n")
    (s1, p1), (s2, p2) = await make_services(pstore, 2)
    holding, go_on = asyncio.Event(), asyncio.Event()

    async def hold(demand: Demand, _node: Node) -> None:
        holding.set()
        await go_on.wait()

    first = PlacementService(pstore.sessionmaker, fixed(node(n, memory=2048)), before_commit=hold)
    store2 = await open_store(placement_url, pool_size=2, max_overflow=0)
    try:
        second = PlacementService(store2.sessionmaker, fixed(node(n, memory=2048)), attempts=attempts)
        t1 = asyncio.create_task(first.place(key(s1, p1), Mode.persistent, Resources(memory_mb=2048, cpus=1)))
        await asyncio.wait_for(holding.wait(), 30)
        t2 = asyncio.create_task(second.place(key(s2, p2), Mode.persistent, Resources(memory_mb=2048, cpus=1)))
        deadline = time.monotonic() + 30
        waiting = 0
        async with pstore.session() as s:
            while time.monotonic() < deadline and not waiting:
                waiting = (await s.execute(text(
                    "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                    "WHERE NOT l.granted AND a.datname = current_database()"))).scalar_one()
                await s.rollback()
                if not waiting:
                    await asyncio.sleep(0.02)
        assert waiting, "the second replica never waited for the node lock"
        assert not t2.done()
        go_on.set()
        assert (await t1).server_uuid == n
        with pytest.raises(PlacementError if attempts > 1 else PlacementBusy):
            await t2
        assert second.retries >= 1  # it saw the fresh load and did not write
    finally:
        go_on.set()
        await store2.close()
    assert [r.service_id for r in await rows(pstore, n)] == [uuid.UUID(s1)]


async def test_a_reserve_after_the_server_closed_its_connection_goes_through_on_a_fresh_one(
        pstore: Store, placement_url: str) -> None:
    """`reserve` runs on the statement pool's psycopg connections (no liveness ping on checkout). After the server
    closed the pooled connection (a restart; here pg_terminate_backend on exactly that backend), the next reserve
    fails on it once, drops it and decides again on a fresh connection: it answers, and records exactly one row."""
    n = uniq("n")
    (s1, p1), (s2, p2) = await make_services(pstore, 2)
    own = await open_store(placement_url, pool_size=1, max_overflow=0)
    try:
        placer = PlacementService(own.sessionmaker, fixed(node(n, memory=4096)))
        assert (await placer.place(key(s1, p1), Mode.persistent, Resources(memory_mb=512, cpus=0.5))).server_uuid == n
        async with statement_pool(own.sessionmaker).connection() as conn:
            backend = conn.info.backend_pid
        async with pstore.session() as s:
            assert (await s.execute(text("SELECT pg_terminate_backend(:p)"), {"p": backend})).scalar_one()
        placed = await placer.place(key(s2, p2), Mode.persistent, Resources(memory_mb=512, cpus=0.5))
        assert placed.server_uuid == n
        async with statement_pool(own.sessionmaker).connection() as conn:
            assert conn.info.backend_pid != backend
    finally:
        await own.close()
    assert sorted(r.service_id for r in await rows(pstore, n)) == sorted([uuid.UUID(s1), uuid.UUID(s2)])


async def test_spread_holds_when_replicas_place_a_projects_services_at_once(pstore: Store,
                                                                             placement_url: str) -> None:
    nodes = [node(uniq("n"), memory=8192) for _ in range(3)]
    services = await make_services(pstore, 3)
    stores = [await open_store(placement_url, pool_size=2, max_overflow=0) for _ in range(3)]
    try:
        placers = [PlacementService(s.sessionmaker, fixed(*nodes)) for s in stores]
        got = await asyncio.gather(*(p.place(key(sid, pid), Mode.persistent, Resources(memory_mb=512, cpus=0.25),
                                             spread=True) for p, (sid, pid) in zip(placers, services, strict=True)))
    finally:
        for s in stores:
            await s.close()
    assert sorted(g.server_uuid for g in got) == sorted(n.uuid for n in nodes)


@pytest.mark.slow
def test_replicas_in_separate_processes_never_overbook_a_node(placement_url: str, pstore: Store) -> None:
    """4 processes x 3 concurrent placements each, every process asking for the same 40 services (in its own
    order) on 3 nodes with room for 12 of them: exactly 12 placed, each once and on the node every replica was
    told, no node over capacity."""
    nodes = [{"uuid": uniq("n"), "name": f"n{i}", "memory_mb": 2048, "millicpus": 8000,
              "wildcard_base": "apps.test"} for i in range(3)]
    services = asyncio.run(make_services_sync(placement_url, 40))
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    procs = [ctx.Process(target=replica.run, args=(placement_url, nodes, services, 512, seed, barrier, out))
             for seed in range(4)]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
    finally:
        for p in procs:  # only the processes this test started, by their handle
            if p.is_alive():
                p.kill()
                p.join(10)
    answers: dict[str, set[str | None]] = {}
    for got, _ in results:
        assert set(got) == {sid for sid, _ in services}
        for sid, where in got.items():
            assert where != "busy"
            answers.setdefault(sid, set()).add(where)
    placed = {sid: next(iter(w)) for sid, w in answers.items() if w != {None}}
    assert all(len(w) == 1 for w in answers.values()), "replicas were told different nodes for one service"
    assert len(placed) == 12
    got_rows = asyncio.run(node_sums(placement_url, [n["uuid"] for n in nodes]))
    assert got_rows == {n["uuid"]: (4, 2048) for n in nodes}
    print(f"retries across replicas: {sum(r for _, r in results)}")


async def make_services_sync(url: str, count: int) -> list[tuple[str, str]]:
    store = await open_store(url, pool_size=1, max_overflow=0)
    try:
        return await make_services(store, count)
    finally:
        await store.close()


async def node_sums(url: str, node_uuids: list[str]) -> dict[str, tuple[int, int]]:
    store = await open_store(url, pool_size=1, max_overflow=0)
    try:
        async with store.session() as s:
            got = await s.execute(select(Placement.node_uuid, func.count(), func.sum(Placement.charged_memory_mb))
                                  .where(Placement.node_uuid.in_(node_uuids)).group_by(Placement.node_uuid))
            return {u: (int(c), int(m)) for u, c, m in got}
    finally:
        await store.close()


async def test_drain_plan_marks_the_node_and_moves_commit_without_overbooking(pstore: Store) -> None:
    old, x, y = uniq("old"), uniq("x"), uniq("y")
    nodes = [node(old, memory=8192), node(x, memory=4096), node(y, memory=2048)]
    placer = PlacementService(pstore.sessionmaker, fixed(*nodes))
    services = await make_services(pstore, 3)
    for (sid, pid), mb in zip(services, (3072, 2048, 1024), strict=True):
        placed = await placer.place(key(sid, pid), Mode.persistent, Resources(memory_mb=mb, cpus=0.5))
        assert placed.server_uuid == old
    plan = await placer.plan_drain(f"name-{old}")
    assert plan.complete and [m.service_id for m in plan.moves] == [sid for sid, _ in services]
    assert [m.to_node for m in plan.moves] == [x, y, x]
    async with pstore.session() as s:
        assert (await s.get(PlacementNode, old)).draining_since is not None  # type: ignore[union-attr]
    # a new service never lands on the draining node, though best fit would pick it (the only node in use)
    (new, newp), = await make_services(pstore, 1)
    assert (await placer.place(key(new, newp), Mode.persistent, Resources(memory_mb=1024, cpus=0.5))).server_uuid \
        != old
    await placer.release_service(new)
    # executing the plan: each move committed under the target's lock; a repeat is a no-op
    first = await placer.commit_move(plan.moves[0])
    assert first.node_uuid == x and (await placer.commit_move(plan.moves[0])).node_uuid == x
    # something else took y's room since the plan was made: that move is refused, not overbooked
    (intruder, ip), = await make_services(pstore, 1)
    await placer.place(key(intruder, ip), Mode.persistent, Resources(memory_mb=2048, cpus=0.5))
    with pytest.raises(PlacementError, match="plan the drain again"):
        await placer.commit_move(plan.moves[1])
    await placer.commit_move(plan.moves[2])
    assert sorted(r.memory_mb for r in await rows(pstore, x)) == [1024, 3072]
    assert [r.memory_mb for r in await rows(pstore, old)] == [2048]
    with pytest.raises(LookupError, match="known run servers"):
        await placer.plan_drain("no-such-server")


async def test_status_shows_each_nodes_reservations_and_why_it_takes_nothing(pstore: Store) -> None:
    a, b, c = uniq("a"), uniq("b"), uniq("c")
    placer = PlacementService(pstore.sessionmaker, fixed(node(a, memory=8192), node(b, memory=0, cpus=0),
                                                         node(c, memory=4096)), Policy(on_demand_overcommit=4))
    (s1, p1), (s2, p2) = await make_services(pstore, 2)
    await placer.place(key(s1, p1), Mode.persistent, Resources(memory_mb=1024, cpus=0.5))
    await placer.place(key(s2, p2), Mode.on_demand, Resources(memory_mb=2048, cpus=1))
    await placer.set_draining(node(c, memory=4096))
    got = {st.node.uuid: st for st in await placer.status()}
    assert (got[a].load.memory_mb, got[a].load.hard_memory_mb, got[a].load.services) == (1024 + 512, 1024, 2)
    assert got[a].load.on_demand_max_memory_mb == 2048 and got[a].not_target is None
    assert got[b].not_target == "no capacity configured (INKMCP_PLACEMENT_NODES)"
    assert got[c].not_target == "draining" and got[c].load.services == 0


# -- affinity and a project's database ---------------------------------------------------------------------

DB = "its project's database"


async def test_a_pinned_service_is_reserved_on_its_node_or_refused_and_never_moved_by_a_reserve(pstore: Store) -> None:
    a, b = uniq("a"), uniq("b")
    placer = PlacementService(pstore.sessionmaker, fixed(node(a, memory=8192), node(b, memory=2048)))
    (s1, p), (s2, _), (s3, _), (s4, _) = await make_services(pstore, 4)
    res = Resources(memory_mb=1024, cpus=0.5)
    # best fit would open a (the largest); the requirement puts both on b, spreading yields to it
    for sid in (s1, s2):
        placed = await placer.place(key(sid, p), Mode.persistent, res, spread=True, require_node=b, require_why=DB)
        assert placed.server_uuid == b and not placed.moved
    assert sorted(str(r.service_id) for r in await rows(pstore, b)) == sorted([s1, s2])
    # b is full: refused with the reason, nothing written, nothing placed on a instead
    with pytest.raises(PlacementError) as err:
        await placer.place(key(s3, p), Mode.persistent, res, require_node=b, require_why=DB)
    msg = str(err.value)
    assert "run server of its project's database" in msg and "has no room" in msg and "0 MiB of memory" in msg
    assert "resources=" in msg and b not in msg and f"name-{b}" in err.value.detail
    assert await placer.placement_of(s3) is None and await rows(pstore, a) == []
    # placed on a before the database existed: a later pinned reserve reports it and keeps the row
    assert (await placer.place(key(s4, p), Mode.persistent, res)).server_uuid == a
    with pytest.raises(PlacementError, match="runs on another run server than its project's database"):
        await placer.place(key(s4, p), Mode.persistent, res, require_node=b, require_why=DB)
    assert (await placer.placement_of(s4)).node_uuid == a  # type: ignore[union-attr]
    # a draining required node: refused with that reason
    await placer.release_service(s2)
    await placer.set_draining(node(b, memory=2048))
    with pytest.raises(PlacementError, match="is being drained"):
        await placer.place(key(s3, p), Mode.persistent, res, require_node=b, require_why=DB)
    assert await placer.placement_of(s3) is None


async def test_a_first_placement_through_the_adapter_is_three_round_trips_and_honours_the_database_pin(
        pstore: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """overhead8 (issue 8): the adapter's read of where the project's Coolify database lives is a statement of
    reserve's first round trip (records.Pin), and a new placement's loads go out with it: three round trips
    (pipeline syncs) and no read of its own, where the read and reserve were five in turn. The pin still decides:
    with the database on the smaller node the service goes there (best fit would open the larger one), and a
    project without a database is placed freely."""
    import psycopg

    from inkmcp.placement.adapter import CoolifyPlacement
    from inkmcp.providers.database.coolify import REF_KEY
    from inkmcp.store.statements import StatementPool

    big, small = uniq("big"), uniq("small")
    service = PlacementService(pstore.sessionmaker, fixed(node(big, memory=8192), node(small, memory=4096)))
    place = CoolifyPlacement(service)
    (s1, p1), = await make_services(pstore, 1)
    (s2, p2), = await make_services(pstore, 1)
    async with pstore.session() as s, s.begin():
        await s.execute(text("UPDATE projects SET provider_ref = jsonb_build_object(CAST(:k AS text), "
                             "jsonb_build_object('server_uuid', CAST(:n AS text))) WHERE id = :p"),
                        {"k": REF_KEY, "n": small, "p": uuid.UUID(p1)})
    syncs: list[int] = []
    reads: list[str] = []
    real_sync, real_fetch = psycopg.AsyncPipeline.sync, StatementPool.fetch

    async def sync(pipe: Any) -> None:
        syncs.append(1)
        await real_sync(pipe)

    async def fetch(pool: Any, query: str, params: Any = ()) -> Any:
        reads.append(query)
        return await real_fetch(pool, query, params)

    monkeypatch.setattr(psycopg.AsyncPipeline, "sync", sync)
    monkeypatch.setattr(StatementPool, "fetch", fetch)
    res = Resources(memory_mb=1024, cpus=0.5)
    free = await place(key(s2, p2), Mode.persistent, res)
    assert free.uuid == big  # no database: best fit opens the larger node
    assert len(syncs) == 2 and reads == [], (syncs, reads)  # two syncs, then the write goes with the COMMIT
    pinned = await place(key(s1, p1), Mode.persistent, res)
    assert pinned.uuid == small  # best fit would have packed it beside the first, on the open larger node
    assert len(syncs) == 4 and reads == [], (syncs, reads)
    assert (await service.placement_of(s1)).node_uuid == small  # type: ignore[union-attr]


async def test_a_projects_database_is_counted_on_its_node_until_released(pstore: Store) -> None:
    a, b = uniq("a"), uniq("b")
    placer = PlacementService(pstore.sessionmaker, fixed(node(a, memory=8192), node(b, memory=4096, cpus=2000)))
    (s1, p1), (_, p2) = await make_services(pstore, 2, projects=2)
    got = await placer.reserve_database(p1, b, 3072, 1.5)
    assert (got.node_uuid, got.charged_memory_mb, got.charged_millicpus) == (b, 3072, 1500)
    assert await placer.reserve_database(p1, b, 3072, 1.5) == got  # idempotent
    assert await placer.database_reservation(p1) == got
    status = {st.node.uuid: st.load for st in await placer.status()}
    assert (status[b].memory_mb, status[b].hard_memory_mb, status[b].services, status[b].databases) == (
        3072, 3072, 0, 1)
    # the database's room is taken: a service of its project pinned there with 1536 MiB does not fit ...
    with pytest.raises(PlacementError, match="has no room") as err:
        await placer.place(key(s1, p1), Mode.persistent, Resources(memory_mb=1536, cpus=0.25), require_node=b,
                           require_why=DB)
    assert "1024 MiB of memory" in str(err.value)
    # ... 1024 MiB does
    assert (await placer.place(key(s1, p1), Mode.persistent, Resources(memory_mb=1024, cpus=0.25), require_node=b,
                               require_why=DB)).server_uuid == b
    # a second database on the full node is refused before Coolify is asked; unchecked it is recorded as is
    with pytest.raises(PlacementError, match="the project's database must run on the run server") as derr:
        await placer.reserve_database(p2, b, 512, 0.5)
    assert "has no room for it" in str(derr.value) and await placer.database_reservation(p2) is None
    assert (await placer.reserve_database(p2, b, 512, 0.5, check=False)).node_uuid == b
    assert {st.node.uuid: st.load for st in await placer.status()}[b].memory_mb == 3072 + 1024 + 512
    # released: the room is back; a repeat is harmless
    assert await placer.release_database(p2) and not await placer.release_database(p2)
    assert await placer.release_database(p1)
    assert {st.node.uuid: st.load for st in await placer.status()}[b].memory_mb == 1024
    # a draining node takes no new database; the project's row going takes its reservation along
    await placer.set_draining(node(a, memory=8192))
    with pytest.raises(PlacementError, match="is being drained"):
        await placer.reserve_database(p2, a, 512, 0.5)
    await placer.reserve_database(p2, b, 512, 0.5)
    async with pstore.session() as s, s.begin():
        await s.execute(text("DELETE FROM projects WHERE id = :p"), {"p": uuid.UUID(p2)})
    assert {st.node.uuid: st.load for st in await placer.status()}[b].memory_mb == 1024
    with pytest.raises(LookupError, match="deleted"):
        await placer.reserve_database(p2, b, 512, 0.5)


async def test_drain_plan_keeps_services_whose_database_is_on_the_node_and_moves_others_to_theirs(
        pstore: Store) -> None:
    old, big, dbn = uniq("old"), uniq("big"), uniq("db")
    placer = PlacementService(pstore.sessionmaker, fixed(node(old, memory=8192), node(big, memory=16384),
                                                         node(dbn, memory=4096)))
    (here, ph), (there, pt), (free, pf) = await make_services(pstore, 3, projects=3)
    # all on old (best fit would open big); "there" the smallest, so the plan takes it last (largest first)
    for sid, pid, mb in ((here, ph, 1024), (there, pt, 512), (free, pf, 1024)):
        assert (await placer.place(key(sid, pid), Mode.persistent, Resources(memory_mb=mb, cpus=0.1),
                                   require_node=old)).server_uuid == old
    asked: list[list[str]] = []

    async def affinity(project_ids: Any) -> dict[str, str]:
        asked.append(list(project_ids))
        return {ph: old, pt: dbn}

    plan = await placer.plan_drain(old, mark=False, affinity=affinity)
    assert sorted(asked[0]) == sorted([ph, pt, pf])
    assert [s for s, _ in plan.stuck] == [here] and "cannot move without it" in plan.stuck[0][1]
    # free opens big (the largest empty node); best fit would then pack "there" beside it, but its database is on db
    assert [(m.service_id, m.to_node) for m in plan.moves] == [(free, big), (there, dbn)]

