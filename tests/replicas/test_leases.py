"""Leases and fencing in one process, over a real PostgreSQL: the rules the multi-process tests rely on, each
shown directly (two `DeployService`s with different replica ids stand for two replicas)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select, text

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.build.source import SourcePolicy
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.envvars import EnvService
from inkmcp.core.leases import Lease, LeaseConfig, LeaseLost, Leases
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.projects import ProjectService
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.base import RefScope, Step
from inkmcp.providers.compute.fake import FakeComputeProvider, FakeRemote
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Account, Deployment, DeploymentEvent, Project
from tests.replicas.conftest import wait_for
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg

PLAN = BuildPlan(stack=Stack.none, source="call", processes=(ProcessSpec(name="web", command="run", routed=True),))


@pytest.fixture
async def store(control_pg: EmbeddedPostgres) -> AsyncIterator[Store]:
    url = _store_fixtures.create_database(control_pg, "leases")
    await asyncio.to_thread(migrate, url)
    s = await open_store(url, pool_size=4, max_overflow=4)
    yield s
    await s.close()


@pytest.fixture
async def replicas(store: Store, tmp_path: Path) -> AsyncIterator[Callable[..., DeployService]]:
    """`make(replica_id, **lease config) -> DeployService` over the same store and the same in-process remote."""
    box = SecretBox([Fernet.generate_key()])
    remote = FakeRemote(tick=0.002)
    postgres = PostgresDatabaseProvider(SecretStr("postgresql://unused@127.0.0.1:1/unused"), public_host="127.0.0.1",
                                        public_port=1)  # fmt: skip
    made: list[DeployService] = []

    def make(replica_id: str, **cfg: float) -> DeployService:
        sessions, limits = store.sessionmaker, LimitDefaults()
        projects = ProjectService(sessions, box, limits)
        deploys = DeployService(
            sessions, projects=projects, envs=EnvService(sessions, box),
            databases=DatabaseService(sessions, box, postgres, None, limits),
            compute=FakeComputeProvider(remote, tmp_path / "compute"), work_dir=tmp_path / f"work-{replica_id}",
            sources=SourcePolicy(allow_local=True), mac_key=b"m" * 32, metrics=Metrics(), max_env_bytes=65536,
            replica=LeaseConfig(replica_id=replica_id, **cfg),
        )  # fmt: skip
        made.append(deploys)
        return deploys

    yield make
    for d in made:
        await d.close()
    await remote.close()
    await postgres.close()


async def new_service(store: Store, deploys: DeployService) -> uuid.UUID:
    async with store.sessionmaker.begin() as s:
        acct = Account(name=f"a-{uuid.uuid4().hex[:8]}")
        s.add(acct)
        await s.flush()
        project = Project(account_id=acct.id, name=f"p-{uuid.uuid4().hex[:8]}")
        s.add(project)
        await s.flush()
        project_id = project.id
    return await deploys._ensure_service(project_id, DeployRequest(repo_url="https://git.example/app.git"))


async def new_deployment(store: Store, deploys: DeployService) -> uuid.UUID:
    sid = await new_service(store, deploys)
    return await deploys._create_deployment(sid, "0" * 40, uuid.uuid4().hex, PLAN, ServiceType.webapp, Mode.persistent)


async def set_lease(store: Store, dep_id: uuid.UUID, claimed_by: str | None, seconds: float, epoch: int) -> None:
    async with store.sessionmaker.begin() as s:
        await s.execute(text("UPDATE deployments SET claimed_by = :who, lease_epoch = :epoch, "
                             "lease_until = now() + make_interval(secs => :secs) WHERE id = :id"),
                        {"who": claimed_by, "epoch": epoch, "secs": seconds, "id": dep_id})  # fmt: skip


async def row(store: Store, dep_id: uuid.UUID) -> Deployment:
    async with store.sessionmaker() as s:
        return (await s.execute(select(Deployment).where(Deployment.id == dep_id))).scalar_one()


async def events(store: Store, dep_id: uuid.UUID) -> list[tuple[str, str]]:
    async with store.sessionmaker() as s:
        rows = await s.execute(select(DeploymentEvent.status, DeploymentEvent.detail)
                               .where(DeploymentEvent.deployment_id == dep_id).order_by(DeploymentEvent.id))
        return [tuple(r) for r in rows.all()]  # type: ignore[misc]


async def test_a_new_deployment_is_claimed_by_its_replica_and_not_claimable_by_another(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a = replicas("a")
    dep = await new_deployment(store, a)
    r = await row(store, dep)
    assert (r.claimed_by, r.lease_epoch) == ("a", 1) and r.lease_until is not None
    assert await Leases(store.sessionmaker, LeaseConfig(replica_id="b")).claim(dep) is None


async def test_two_replicas_racing_for_an_expired_lease_get_one_winner(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    dep = await new_deployment(store, replicas("a"))
    for _ in range(5):
        await set_lease(store, dep, "dead", -1, 7)
        contenders = [Leases(store.sessionmaker, LeaseConfig(replica_id=f"r{i}")) for i in range(4)]
        won = [x for x in await asyncio.gather(*(c.claim(dep) for c in contenders)) if x is not None]
        assert len(won) == 1, won
        assert (won[0].epoch, won[0].taken_from) == (8, "dead")
        assert (await row(store, dep)).claimed_by == won[0].replica_id


async def test_writes_under_a_lease_that_was_taken_over_are_refused_and_change_nothing(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a, b = replicas("a"), replicas("b")
    dep = await new_deployment(store, a)
    stale = Lease(dep, "a", 1)
    await set_lease(store, dep, "a", -1, 1)  # a's lease expired (a paused)
    taken = await b._leases.claim(dep)
    assert taken is not None and taken.epoch == 2
    before_events, before = await events(store, dep), await row(store, dep)
    r = await row(store, dep)
    with pytest.raises(LeaseLost):
        await a._record(stale, Step.building, "a late step")
    record = a._recorder(dep, r.service_id, uuid.uuid4(), stale)
    with pytest.raises(LeaseLost):
        await record(RefScope.deployment, {"deployments": {"web": "late"}})
    with pytest.raises(LeaseLost):
        await record(RefScope.service, {"apps": {"web": "late"}})
    assert await a._fail(stale, "a late failure") == "lost"
    assert await events(store, dep) == before_events
    after = await row(store, dep)
    assert (after.status, after.provider_ref, after.error) == (before.status, before.provider_ref, before.error)
    # the holder of the current epoch writes as usual
    await b._record(taken, Step.building, "b's step")
    await b._recorder(dep, r.service_id, uuid.uuid4(), taken)(RefScope.deployment, {"deployments": {"web": "x"}})
    assert (await events(store, dep))[-1] == ("building", "b's step")
    assert (await row(store, dep)).provider_ref == {"fake": {"deployments": {"web": "x"}}}


async def test_the_heartbeat_keeps_a_running_lease_and_stops_the_pipeline_once_it_is_taken(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a = replicas("a", lease_seconds=1.0, heartbeat_seconds=0.1, scan_seconds=0.1)
    remote: FakeRemote = a._compute.remote  # type: ignore[attr-defined]
    sid = await new_service(store, a)
    async with remote.hold():  # the remote build never finishes: the pipeline stays in its release
        dep, lease = await a._create_or_reuse(sid, "0" * 40, uuid.uuid4().hex, PLAN, ServiceType.webapp,
                                              Mode.persistent)  # fmt: skip
        assert lease is not None
        a._start(lease, None)
        task = a._held[dep][1]
        first = (await row(store, dep)).lease_until
        assert first is not None
        await wait_for(lambda: _renewed(store, dep, first), 10, "the heartbeat renewed the lease")
        assert not task.done()
        async with store.sessionmaker.begin() as s:  # another replica takes it (as after an expiry)
            await s.execute(text("UPDATE deployments SET claimed_by = 'b', lease_epoch = lease_epoch + 1 "
                                 "WHERE id = :id"), {"id": dep})  # fmt: skip
        before = await events(store, dep)
        await wait_for(lambda: asyncio.sleep(0, task.done()), 10, "a stopped its pipeline")
    assert dep not in a._held
    assert await events(store, dep) == before  # nothing written after the takeover, not even `failed`
    assert (await row(store, dep)).status not in ("live", "failed")


async def _renewed(store: Store, dep: uuid.UUID, first: object) -> bool:
    until = (await row(store, dep)).lease_until
    return until is not None and until > first  # type: ignore[operator]


async def test_start_up_takes_back_its_own_claims_and_abandoned_ones_but_not_a_live_replicas(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    maker = replicas("setup")
    own, other, unclaimed, expired = [await new_deployment(store, maker) for _ in range(4)]
    await set_lease(store, own, "a", 30, 3)  # a's previous run (same data dir, same id): not expired yet
    await set_lease(store, other, "b", 30, 1)  # b is alive
    await set_lease(store, unclaimed, None, -1, 0)  # made before leases existed
    await set_lease(store, expired, "c", -1, 4)  # c died
    a = replicas("a", lease_seconds=30.0)
    _, resumed = await a.restore_all()
    assert resumed == 3
    claims = {d: ((r := await row(store, d)).claimed_by, r.lease_epoch) for d in (own, other, unclaimed, expired)}
    assert claims == {own: ("a", 4), other: ("b", 1), unclaimed: ("a", 1), expired: ("a", 5)}
    assert ("queued", "resumed after restart") in await events(store, own)
    assert ("queued", "taken over by replica a (the lease of c expired)") in await events(store, expired)
    assert not [e for e in await events(store, other) if e[0] == "queued" and "replica" in e[1]]
