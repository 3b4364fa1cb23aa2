"""`inkmcp nodes drain` end to end below the CLI: three Coolify stand-in servers (a real HTTP server validating
every request and answer against the 4.3.11 spec), services released through the real Coolify provider with
placement over a real PostgreSQL (core's rows: accounts, projects, services, deployments, placements), then one
node drained. Ground truth is the stand-in's state (applications, the server each is on, containers and their
env, deployments) and the database rows; nothing is asserted from the drain's own report alone."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import select, update

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.coolify.client import CoolifyClient, RetryPolicy
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.placement.adapter import CoolifyPlacement
from inkmcp.placement.coolify_nodes import CoolifyNodeSource
from inkmcp.placement.drain import Drainer
from inkmcp.placement.records import PlacementService
from inkmcp.placement.settings import PlacementSettings
from inkmcp.providers.compute.base import (
    ProviderRef,
    RefScope,
    ReleaseFailed,
    ReleaseRequest,
    Resources,
    ServiceKey,
    Step,
)
from inkmcp.providers.compute.coolify import policy
from inkmcp.providers.compute.coolify.provider import MOVE_CRASH_POINTS, CoolifyComputeProvider, Crash
from inkmcp.store.db import Store
from inkmcp.store.models import Account, Deployment, PlacementNode, Project, Service
from inkmcp.store.refs import ref_of, save_ref
from tests.coolify_standin import CoolifyStandin, NodeServer
from tests.placement.support import placement_settings_for

FAST = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, max_total_wait=2.0)
SETTLE = 0.3
"""How long a copy without a health check must keep running; above the stand-in's 2 x status_delay after which a
crashing container shows `degraded:unhealthy`, so a crash is caught inside the window."""
COMMIT = "c0ffee" + "0" * 34


@dataclass
class Env:
    standin: CoolifyStandin
    store: Store
    provider: CoolifyComputeProvider
    placement: PlacementService
    servers: list[NodeServer]
    account_id: uuid.UUID
    services: list[uuid.UUID] = field(default_factory=list)

    def drainer(self) -> Drainer:
        return Drainer(self.placement, self.provider, self.store.sessionmaker, fetch_url=lambda svc: svc.repo_url,
                       settle_seconds=SETTLE)

    def apps_of(self, service_id: uuid.UUID) -> list[Any]:
        """The service's applications Coolify keeps (deletions queued but not done are not counted)."""
        with self.standin._lock:
            self.standin._advance()
            return [a for a in self.standin.applications.values() if a.delete_at is None
                    and str(a.fields.get("name", "")).startswith(f"{service_id}-")]

    def apps_on(self, server: NodeServer) -> list[Any]:
        with self.standin._lock:
            self.standin._advance()
            return [a for a in self.standin.applications.values() if a.server_uuid == server.uuid
                    and a.delete_at is None]

    async def row(self, service_id: uuid.UUID) -> tuple[Service, ProviderRef]:
        async with self.store.session() as s:
            svc = await s.get(Service, service_id, populate_existing=True)
            assert svc is not None
            return svc, ref_of(svc.provider_ref, "coolify")

    async def deploy(self, name: str, memory_mb: int, *, worker: bool = False, message: str = "hi",
                     fails: bool = False, domains: tuple[str, ...] = (),
                     project_id: uuid.UUID | None = None, mode: Mode = Mode.persistent) -> uuid.UUID:
        """A service the way core deploys one: rows first, then the provider's release recording its refs in those
        rows, then the deployment live. In a new project `p-<name>`, or in `project_id`."""
        async with self.store.session() as s, s.begin():
            if project_id is None:
                project = Project(account_id=self.account_id, name=f"p-{name}")
                s.add(project)
                await s.flush()
            else:
                got = await s.get(Project, project_id)
                assert got is not None
                project = got
            svc = Service(project_id=project.id, name=name, service_type="webapp", mode=mode.value,
                          repo_url="https://git.example/app.git",
                          settings={"resources": {"memory_mb": memory_mb, "cpus": 0.5}})
            s.add(svc)
            await s.flush()
            processes = [ProcessSpec(name="web", command="python app.py", routed=True)]
            if worker:
                processes.append(ProcessSpec(name="worker", command="python worker.py", routed=False))
            plan = BuildPlan(stack=Stack.python, processes=tuple(processes), source="call", port=8000)
            dep = Deployment(service_id=svc.id, status="queued", commit=COMMIT, config_hash="h" * 64,
                             plan=plan.model_dump(mode="json"))
            s.add(dep)
            await s.flush()
            ids = (project.id, svc.id, dep.id)
        key = ServiceKey(account_id=str(self.account_id), project_id=str(ids[0]), service_id=str(ids[1]),
                         project_name=project.name, service_name=name)
        request = ReleaseRequest(
            deployment_id=str(ids[2]), key=key, service_type=ServiceType.webapp, mode=mode, plan=plan,
            commit=COMMIT, env={"MESSAGE": SecretStr(message)}, env_revision="r1",
            resources=Resources(memory_mb=memory_mb // (2 if worker else 1), cpus=0.5),
            repo_url=SecretStr("https://git.example/app.git"), checkout_dir=None, domains=list(domains))
        rows = {RefScope.project: ids[0], RefScope.service: ids[1], RefScope.deployment: ids[2]}

        async def record(scope: RefScope, ref: ProviderRef) -> None:
            await save_ref(self.store.sessionmaker, RefScope(scope).value, rows[RefScope(scope)], "coolify", ref)

        async def progress(step: Step, detail: str) -> None:
            pass

        async with self.store.session() as s:  # refs as core hands them back: from the rows
            project_row = await s.get(Project, ids[0], populate_existing=True)
            assert project_row is not None
            key = key.model_copy(update={"project_ref": ref_of(project_row.provider_ref, "coolify")})
        if fails:  # the first release fails: the service has a server and (stopped) applications, nothing live
            with pytest.raises(ReleaseFailed):
                await self.provider.release(request.model_copy(update={"key": key}), progress, record)
            async with self.store.session() as s, s.begin():
                await s.execute(update(Deployment).where(Deployment.id == ids[2]).values(status="failed"))
            self.services.append(ids[1])
            return ids[1]
        result = await self.provider.release(request.model_copy(update={"key": key}), progress, record)
        async with self.store.session() as s, s.begin():
            await s.execute(update(Deployment).where(Deployment.id == ids[2]).values(status="live", url=result.url))
            await s.execute(update(Service).where(Service.id == ids[1]).values(live_deployment_id=ids[2],
                                                                               url=result.url))
        self.services.append(ids[1])
        return ids[1]

    async def settled(self) -> None:
        """Until the stand-in has no queued work (deployments, deletions) left."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with self.standin._lock:
                self.standin._advance()
                busy = any(d.status in ("queued", "in_progress") for d in self.standin.deployments.values()) or any(
                    a.delete_at is not None for a in self.standin.applications.values())
            if not busy:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the stand-in did not settle within 10 s")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[CoolifyStandin]:
    with CoolifyStandin(tmp_path / "nodes", spec=CoolifySpec.load(), validation_delay=0.0, rate_limit=100_000,
                        build_seconds=0.05, status_delay=0.02, delete_delay=0.02, stop_delay=0.01) as s:
        yield s
    assert s.response_violations == [] and s.request_violations == []


@pytest.fixture
async def env(standin: CoolifyStandin, pstore: Store, tmp_path: Path) -> AsyncIterator[Env]:
    servers = standin.add_servers(3, capacities=[{"cpus": 4, "memory_mb": 8192}, {"cpus": 2, "memory_mb": 4096},
                                                 {"cpus": 2, "memory_mb": 4096}])
    build = standin.add_server("10.77.0.50", name="build", is_build_server=True, usable=True)
    build.capacity = {"memory_mb": 65536, "cpus": 32}
    settings: PlacementSettings = placement_settings_for([*servers, build], node_cache_seconds=0)
    token = standin.add_token("read", "read:sensitive", "write", "deploy")
    limits = policy.Limits()
    # no client-side spec check (the stand-in checks every request and answer against the spec, and the test
    # fails on any violation): half the CPU per request on a loaded 2-core machine
    client = CoolifyClient(standin.url, token, retry=FAST, transport=policy.PolicyTransport(limits=limits))
    placement = PlacementService(pstore.sessionmaker, CoolifyNodeSource(client, settings), settings.policy())
    provider = CoolifyComputeProvider(client, tmp_path / "work", place=CoolifyPlacement(placement),
                                      poll_interval=0.01, poll_max_interval=0.05, wait_timeout=20.0, limits=limits)
    async with pstore.session() as s, s.begin():
        account = Account(name=f"drain-{uuid.uuid4().hex[:8]}")
        s.add(account)
        await s.flush()
        account_id = account.id
    e = Env(standin, pstore, provider, placement, servers, account_id)
    try:
        yield e
    finally:
        await provider.close()
        async with pstore.session() as s, s.begin():  # the module's database is shared: leave no draining mark
            await s.execute(update(PlacementNode).values(draining_since=None))
            await s.execute(Account.__table__.delete().where(Account.id == account_id))


async def three_on_run1(env: Env) -> list[uuid.UUID]:
    """Best fit fills the largest server first: all three land on run-1 (8192 MiB)."""
    ids = [await env.deploy("big", 3072), await env.deploy("duo", 2048, worker=True),
           await env.deploy("small", 1024, domains=("www.small.example",))]
    for sid in ids:
        _, ref = await env.row(sid)
        assert ref["server_uuid"] == env.servers[0].uuid
    await env.settled()
    return ids


async def test_drain_moves_every_service_to_another_node_one_app_per_process_each_health_checked(env: Env) -> None:
    run1 = env.servers[0]
    ids = await three_on_run1(env)
    before = {sid: await env.row(sid) for sid in ids}
    lines: list[str] = []
    report = await env.drainer().drain("run-1", progress=lines.append)
    assert report.ok, report
    assert [o.service for o in report.outcomes] == ["big.p-big", "duo.p-duo", "small.p-small"]  # largest first
    await env.settled()
    for sid in ids:
        svc, ref = await env.row(sid)
        placed = await env.placement.placement_of(str(sid))
        assert placed is not None and placed.node_uuid == ref["server_uuid"] != run1.uuid
        target = env.standin.servers[ref["server_uuid"]]
        apps = env.apps_of(sid)
        processes = sorted(str(a.fields["name"]).rsplit("-", 1)[1] for a in apps)
        assert processes == sorted(before[sid][1]["apps"]), "exactly one application per process"
        assert sorted(a.uuid for a in apps) == sorted(ref["apps"].values())
        for app in apps:
            assert app.server_uuid == target.uuid
            assert app.status.startswith("running")  # health-checked before the switch
            assert app.container.commit == COMMIT and app.container.env["MESSAGE"] == "hi"  # same code, same env
            assert app.fields["git_commit_sha"] == COMMIT and app.settings["is_build_server_enabled"] is True
            deps = env.standin.deployments_of(app.uuid)
            assert [d.status for d in deps] == ["finished"]  # one deployment per new application, no duplicate
        # the URL follows the server's wildcard domain: record, services.url and the live deployment agree
        assert ref["url"] == f"https://{svc.name}-p-{svc.name}.{target.name}.apps.test" == svc.url
        async with env.store.session() as s:
            dep = await s.get(Deployment, svc.live_deployment_id)
            assert dep is not None and dep.url == ref["url"] and "move" not in ref_of(dep.provider_ref, "coolify")
    # the custom domain moved with the service; its CNAME now names the new host, and the report says so
    _, small = await env.row(ids[2])
    host = small["url"].removeprefix("https://")
    assert small["dns_records"] == [{"name": "www.small.example", "type": "CNAME", "value": host}]
    web = env.standin.applications[small["apps"]["web"]]
    assert web.fields["fqdn"] == f"https://{host},https://www.small.example"
    assert f"www.small.example CNAME {host}" in report.outcomes[2].detail
    assert env.apps_on(run1) == []
    status = {n.node.name: n for n in await env.placement.status()}
    assert status["run-1"].load.services == 0 and status["run-1"].not_target == "draining"
    assert any("moving big.p-big from run-1" in line for line in lines)
    # a drained node takes nothing new; undrain gives it back
    await env.drainer().undrain("run-1")
    assert {n.node.name: n for n in await env.placement.status()}["run-1"].not_target is None


async def test_dry_run_plans_and_changes_nothing(env: Env) -> None:
    ids = await three_on_run1(env)
    before = {sid: await env.row(sid) for sid in ids}
    requests = len(env.standin.requests)
    report = await env.drainer().drain("run-1", dry_run=True)
    assert report.dry_run and [o.status for o in report.outcomes] == ["planned"] * 3
    assert all(o.to_node in ("run-2", "run-3") for o in report.outcomes)
    assert [s.method for s in env.standin.requests[requests:]] == ["GET"] * (len(env.standin.requests) - requests)
    for sid in ids:
        assert (await env.row(sid))[1] == before[sid][1]
        placed = await env.placement.placement_of(str(sid))
        assert placed is not None and placed.node_uuid == env.servers[0].uuid
    assert {n.node.name: n.not_target for n in await env.placement.status()}["run-1"] is None  # no draining mark


@pytest.mark.parametrize("fault", ["crash_on_start", "fail_builds"])
async def test_a_move_whose_new_copy_fails_stops_the_drain_and_the_old_copy_keeps_serving(
        env: Env, fault: str) -> None:
    run1 = env.servers[0]
    ids = await three_on_run1(env)
    before = {sid: await env.row(sid) for sid in ids}
    old_apps = {a.uuid for a in env.apps_on(run1)}
    getattr(env.standin, fault)(times=1)  # the next new container crashes at start / the next build fails
    report = await env.drainer().drain("run-1")
    assert not report.ok
    assert [o.status for o in report.outcomes] == ["not moved", "not tried", "not tried"]
    first = report.outcomes[0]
    assert "keeps running on its server" in first.detail
    # crash_on_start: the new web copy's Coolify health check fails its deployment (the rolling update's gate)
    assert ("not healthy" in first.detail) if fault == "crash_on_start" else ("did not deploy" in first.detail)
    await env.settled()
    for sid in ids:  # records unchanged, placement unchanged, the old applications untouched and serving
        svc, ref = await env.row(sid)
        assert ref == before[sid][1] and svc.url == before[sid][0].url
        placed = await env.placement.placement_of(str(sid))
        assert placed is not None and placed.node_uuid == run1.uuid
        async with env.store.session() as s:
            dep = await s.get(Deployment, svc.live_deployment_id)
            assert dep is not None and "move" not in ref_of(dep.provider_ref, "coolify")
    assert {a.uuid for a in env.apps_on(run1)} == old_apps
    assert all(a.status.startswith("running") and a.container.env["MESSAGE"] == "hi" for a in env.apps_on(run1))
    assert env.apps_on(env.servers[1]) == [] and env.apps_on(env.servers[2]) == []  # the failed copy was deleted
    # resumable: the fault is spent, running the drain again moves everything
    again = await env.drainer().drain("run-1")
    assert again.ok and len(again.moved) == 3
    await env.settled()
    assert env.apps_on(run1) == []
    for sid in ids:
        assert len(env.apps_of(sid)) == len(before[sid][1]["apps"])


@pytest.mark.parametrize("point", MOVE_CRASH_POINTS)
async def test_a_crash_mid_move_resumes_without_duplicates(env: Env, point: str) -> None:
    run1 = env.servers[0]
    sid = await env.deploy("solo", 2048, worker=True, domains=("www.solo.example",))
    await env.settled()
    _, before = await env.row(sid)
    env.provider.crash_at.add(point)
    with pytest.raises(Crash):
        await env.drainer().drain("run-1")
    report = await env.drainer().drain("run-1")  # "the process restarted": the same command again
    assert report.ok and [o.status for o in report.outcomes] == ["moved"], report
    await env.settled()
    _, ref = await env.row(sid)
    placed = await env.placement.placement_of(str(sid))
    assert placed is not None and placed.node_uuid == ref["server_uuid"] != run1.uuid
    apps = env.apps_of(sid)
    assert sorted(a.uuid for a in apps) == sorted(ref["apps"].values()) and len(apps) == len(before["apps"])
    for app in apps:
        assert app.server_uuid == ref["server_uuid"] and app.status.startswith("running")
        assert len(env.standin.deployments_of(app.uuid)) == 1  # the resumed move re-attached, never deployed twice
    assert env.standin.applications[ref["apps"]["web"]].fields["fqdn"] == f"{ref['url']},https://www.solo.example"
    assert env.apps_on(run1) == []


@pytest.mark.parametrize("point", ["after_move_healthy", "after_move_switch"])
async def test_the_reconciler_sees_an_interrupted_move_as_a_move_not_as_orphans(env: Env, point: str) -> None:
    """A drain that died mid-move leaves two sets of applications for one service (the copies on the target and
    the old ones), one of them unrecorded in the service's ref. The reconciler must not call them orphans (a
    repair pass would delete them, and the move's record would then point at nothing): within the grace period they
    are a move in progress, after it an `interrupted_move` whose fix is the drain, never repaired by deletion. Once
    the drain runs again, nothing is left to report."""
    from inkmcp.core.reconcile import Action, DriftKind, Reconciler, ReconcileSettings

    sid = await env.deploy("mover", 2048, worker=True)
    await env.settled()
    env.provider.crash_at.add(point)
    with pytest.raises(Crash):
        await env.drainer().drain("run-1")
    await env.settled()
    both = sorted(a.uuid for a in env.apps_of(sid))
    _, ref = await env.row(sid)
    unrecorded = sorted(set(both) - set(ref["apps"].values()))
    assert len(both) == 4 and len(unrecorded) == 2, (both, ref["apps"])

    def ours(report: Any) -> list[Any]:  # the module's database holds other tests' services too
        return [d for d in report.drift if d.service_id == str(sid) or d.application in both]

    young = await Reconciler.for_provider(env.store.sessionmaker, env.provider).run()
    assert ours(young) == [] and sorted(young.moving) == unrecorded, young
    old = await Reconciler.for_provider(env.store.sessionmaker, env.provider,
                                        ReconcileSettings(grace_seconds=0)).run()
    drift = ours(old)
    assert sorted(d.application for d in drift) == unrecorded, drift
    assert all(d.kind == DriftKind.interrupted_move and d.action == Action.reported for d in drift), drift
    assert "inkmcp nodes drain" in drift[0].fix and env.servers[0].uuid in drift[0].detail
    assert sorted(a.uuid for a in env.apps_of(sid)) == both  # nothing touched

    report = await env.drainer().drain("run-1")
    assert report.ok, report
    await env.settled()
    after = await Reconciler.for_provider(env.store.sessionmaker, env.provider,
                                          ReconcileSettings(grace_seconds=0)).run()
    assert ours(after) == [] and after.moving == [], after
    assert len(env.apps_of(sid)) == 2


class RecordingRoutes:
    """The node-route writer's interface (routes.NodeRoutes), recording what the provider asks of it (the SSH
    path itself is tests/coolify/test_routes.py's, against a real sshd)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def apublish(self, node: Any, service_id: str, doc: dict[str, Any]) -> bool:
        self.calls.append(("publish", node.server_uuid))
        return True

    async def aremove(self, node: Any, service_id: str) -> bool:
        self.calls.append(("remove", node.server_uuid))
        return True

    async def alist(self, node: Any) -> list[Any]:
        return []


async def test_an_on_demand_service_takes_its_router_along_and_leaves_none_behind(env: Env) -> None:
    """An on_demand service is reached through the Traefik router InkMCP writes on its node: a move writes it on
    the target before the switch and removes the old node's after it; deleting the service removes it too."""
    routes = RecordingRoutes()
    env.provider.node_routes = routes  # type: ignore[attr-defined]
    run1 = env.servers[0]
    sid = await env.deploy("sleepy", 1024, mode=Mode.on_demand)
    await env.settled()
    assert routes.calls == [("publish", run1.uuid)]
    report = await env.drainer().drain("run-1")
    assert report.ok and [o.status for o in report.outcomes] == ["moved"], report
    svc, ref = await env.row(sid)
    assert ref["server_uuid"] != run1.uuid
    assert routes.calls[1:] == [("publish", ref["server_uuid"]), ("remove", run1.uuid)], routes.calls
    key = ServiceKey(account_id=str(env.account_id), project_id=str(svc.project_id), service_id=str(sid),
                     project_name="p-sleepy", service_name="sleepy", service_ref=ref)
    await env.provider.remove(key)
    assert routes.calls[-1] == ("remove", ref["server_uuid"])


async def test_a_node_that_is_the_only_fit_names_the_services_that_cannot_move(env: Env) -> None:
    run1 = env.servers[0]
    big = await env.deploy("huge", 6144)  # only run-1 (8192) has room for it
    small = await env.deploy("tiny", 1024)
    await env.settled()
    report = await env.drainer().drain("run-1")
    assert not report.ok
    by = {o.service: o for o in report.outcomes}
    assert by["huge.p-huge"].status == "cannot move" and "6144 MiB" in by["huge.p-huge"].detail
    assert by["tiny.p-tiny"].status == "moved"
    _, ref = await env.row(big)
    assert ref["server_uuid"] == run1.uuid and len(env.apps_on(run1)) == 1  # the stuck one keeps running there
    assert (await env.row(small))[1]["server_uuid"] != run1.uuid
    assert {n.node.name: n.not_target for n in await env.placement.status()}["run-1"] == "draining"


async def test_a_service_changed_during_its_move_is_not_switched(env: Env) -> None:
    """An env change recorded while the copy is built: the switch's compare-and-swap refuses, the copy goes."""
    run1 = env.servers[0]
    sid = await env.deploy("busy", 1024, domains=("www.busy.example",))
    await env.settled()
    (old_web,) = env.apps_of(sid)
    fqdn = old_web.fields["fqdn"]
    assert "https://www.busy.example" in fqdn

    async def meddle(line: str) -> None:
        if "health_check" in line:  # another InkMCP process records a change of the service meanwhile
            async with env.store.session() as s, s.begin():
                svc = await s.get(Service, sid)
                assert svc is not None
                ref = ref_of(svc.provider_ref, "coolify") | {"env_revision": "r2"}
                await s.execute(update(Service).where(Service.id == sid).values(
                    provider_ref={"coolify": json.loads(json.dumps(ref))}))

    report = await env.drainer().drain("run-1", progress=meddle)
    assert [o.status for o in report.outcomes] == ["not moved"] and "changed during the move" in \
        report.outcomes[0].detail
    await env.settled()
    _, ref = await env.row(sid)
    assert ref["server_uuid"] == run1.uuid and ref["env_revision"] == "r2"
    placed = await env.placement.placement_of(str(sid))
    assert placed is not None and placed.node_uuid == run1.uuid
    assert [a.server_uuid for a in env.apps_of(sid)] == [run1.uuid]
    # the move had the old application let go of the custom domain (Coolify refuses a domain in use twice); the
    # undone move gave it back
    assert env.standin.applications[old_web.uuid].fields["fqdn"] == fqdn
    async with env.store.session() as s:
        rows = (await s.execute(select(Deployment).where(Deployment.service_id == sid))).scalars().all()
        assert all("move" not in ref_of(d.provider_ref, "coolify") for d in rows)


async def test_an_env_change_running_at_the_switch_finishes_first_and_the_move_is_undone(env: Env) -> None:
    """The race an env change and a drain's switch would otherwise lose silently (the env change recording the
    old server's ref over the switch): core's env path holds the ref-switch lock for the whole change
    (`leases.hold_ref_switch`), the switch waits for it (seen as a waiting advisory lock in pg_locks), then
    finds the ref the env change wrote and undoes the move."""
    from sqlalchemy import text

    from inkmcp.core.leases import REF_SWITCH_LOCK_CLASS, hold_ref_switch

    run1 = env.servers[0]
    sid = await env.deploy("envy", 1024)
    await env.settled()
    held, finish = asyncio.Event(), asyncio.Event()

    async def env_change() -> None:
        async with hold_ref_switch(env.store.sessionmaker, sid):
            held.set()
            await finish.wait()
            async with env.store.session() as s, s.begin():  # what it records at its end: the new env revision
                svc = await s.get(Service, sid)
                assert svc is not None
                ref = ref_of(svc.provider_ref, "coolify") | {"env_revision": "r2"}
                await s.execute(update(Service).where(Service.id == sid).values(
                    provider_ref={"coolify": json.loads(json.dumps(ref))}))

    changing = asyncio.create_task(env_change())
    await asyncio.wait_for(held.wait(), 10)
    drain = asyncio.create_task(env.drainer().drain("run-1"))

    async def switch_waits() -> bool:
        async with env.store.session() as s:
            return bool((await s.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = :ns"),
                {"ns": REF_SWITCH_LOCK_CLASS})).scalar())

    deadline = time.monotonic() + 60
    while not await switch_waits():
        assert not drain.done(), drain.result()
        assert time.monotonic() < deadline, "the switch never reached the ref-switch lock"
        await asyncio.sleep(0.05)
    assert not drain.done()
    finish.set()
    await changing
    report = await asyncio.wait_for(drain, 60)
    assert [o.status for o in report.outcomes] == ["not moved"], report
    assert "changed during the move" in report.outcomes[0].detail
    await env.settled()
    _, ref = await env.row(sid)
    assert ref["server_uuid"] == run1.uuid and ref["env_revision"] == "r2"
    assert [a.server_uuid for a in env.apps_of(sid)] == [run1.uuid]


async def test_a_service_that_never_went_live_moves_its_reservation_and_its_next_release_goes_to_the_target(
        env: Env) -> None:
    run1 = env.servers[0]
    env.standin.fail_builds(times=1)
    sid = await env.deploy("draft", 1024, fails=True)
    await env.settled()
    _, before = await env.row(sid)
    assert before["server_uuid"] == run1.uuid and before.get("apps") and not before.get("live")
    report = await env.drainer().drain("run-1")
    assert report.ok and [o.status for o in report.outcomes] == ["moved"], report
    await env.settled()
    _, ref = await env.row(sid)
    placed = await env.placement.placement_of(str(sid))
    assert placed is not None and placed.node_uuid == ref["server_uuid"] != run1.uuid
    assert not ref.get("apps") and env.apps_of(sid) == [] and env.apps_on(run1) == []
    # the next release of the service builds on the new server, not the drained one
    svc, _ = await env.row(sid)
    async with env.store.session() as s:
        dep = (await s.execute(select(Deployment).where(Deployment.service_id == sid))).scalar_one()
    async with env.store.session() as s, s.begin():
        project = await s.get(Project, svc.project_id)
        assert project is not None
    key = ServiceKey(account_id=str(env.account_id), project_id=str(project.id), service_id=str(sid),
                     project_name=project.name, service_name=svc.name, project_ref=ref_of(project.provider_ref,
                                                                                         "coolify"), service_ref=ref)
    request = ReleaseRequest(
        deployment_id=str(uuid.uuid4()), key=key, service_type=ServiceType.webapp, mode=Mode.persistent,
        plan=BuildPlan.model_validate(dep.plan), commit=COMMIT, resources=Resources(memory_mb=1024, cpus=0.5),
        repo_url=SecretStr("https://git.example/app.git"), checkout_dir=None)
    refs: dict[RefScope, ProviderRef] = {}

    async def record(scope: RefScope, value: ProviderRef) -> None:
        refs[RefScope(scope)] = value

    async def progress(step: Step, detail: str) -> None:
        pass

    await env.provider.release(request, progress, record)
    assert [a.server_uuid for a in env.apps_of(sid)] == [ref["server_uuid"]]


async def test_cli_drain_and_undrain_over_the_runtime(env: Env, placement_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`inkmcp nodes drain` as an operator runs it: the runtime from INKMCP_* settings (the same database, Coolify
    and placement settings as `inkmcp serve`), a table on stdout, exit 1 while anything could not move."""
    from typer.testing import CliRunner

    from inkmcp.cli import app

    run1 = env.servers[0]
    huge = await env.deploy("huge", 6144)
    tiny = await env.deploy("tiny", 1024)
    await env.settled()
    token = env.standin.add_token("read", "read:sensitive", "write", "deploy")
    nodes = {s.name: {"memory_mb": s.capacity["memory_mb"], "cpus": s.capacity["cpus"]} for s in env.servers}
    for name, value in {
        "INKMCP_DATA_DIR": str(tmp_path / "data"), "INKMCP_DATABASE_URL": placement_url,
        "INKMCP_TENANT_DATABASE_URL": placement_url, "INKMCP_COOLIFY_URL": env.standin.url,
        "INKMCP_COOLIFY_TOKEN": token, "INKMCP_COOLIFY_POLL_INTERVAL": "0.01",
        "INKMCP_COOLIFY_POLL_MAX_INTERVAL": "0.05", "INKMCP_PLACEMENT_NODES": json.dumps(nodes),
        "INKMCP_PLACEMENT_NODE_CACHE_SECONDS": "0", "INKMCP_DRAIN_SETTLE_SECONDS": str(SETTLE),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(app, ["nodes", *args], catch_exceptions=False)

    dry = await asyncio.to_thread(cli, "drain", "run-1", "--dry-run")
    assert dry.exit_code == 1, dry.output  # huge fits nowhere else: exit 1 already in the plan
    assert "planned" in dry.output and "cannot move" in dry.output and "6144 MiB" in dry.output
    assert (await env.row(tiny))[1]["server_uuid"] == run1.uuid
    done = await asyncio.to_thread(cli, "drain", "run-1")
    assert done.exit_code == 1, done.output
    assert "moved" in done.output and "cannot move" in done.output
    svc, ref = await env.row(tiny)
    target = env.standin.servers[ref["server_uuid"]].name
    assert target != "run-1" and svc.url == ref["url"] and target in svc.url
    assert [line for line in done.output.splitlines() if "tiny.p-tiny" in line and target in line]
    assert (await env.row(huge))[1]["server_uuid"] == run1.uuid
    unknown = await asyncio.to_thread(cli, "drain", "run-9")
    assert unknown.exit_code == 2 and "known run servers" in unknown.output
    back = await asyncio.to_thread(cli, "undrain", "run-1")
    assert back.exit_code == 0 and "takes new services again" in back.output
    assert {n.node.name: n.not_target for n in await env.placement.status()}["run-1"] is None


async def test_a_projects_services_stay_beside_its_coolify_database_when_placed_and_drained(env: Env) -> None:
    """A project with a Coolify-managed Postgres on run-2 (made by the real database provider over the stand-in):
    its services land on run-2 although best fit would pack them onto run-1, a service run-2 has no room for is
    refused with the reason (never placed elsewhere), and draining run-2 leaves them there as `cannot move`
    (their DATABASE_URL's host exists only on run-2's network). A service whose database is on run-3 moves to
    run-3 when its node drains, not where best fit would put it."""
    from inkmcp.providers.compute.base import ComputeError
    from inkmcp.providers.database.base import Tier
    from inkmcp.providers.database.coolify import CoolifyDatabaseProvider, CoolifyDatabaseSettings

    run1, run2, run3 = env.servers
    other = await env.deploy("other", 1024)
    late = await env.deploy("late", 1024)
    for sid in (other, late):  # best fit: the largest, then packed beside the first
        assert (await env.row(sid))[1]["server_uuid"] == run1.uuid
    async with env.store.session() as s, s.begin():
        shop = Project(account_id=env.account_id, name="p-shop")
        s.add(shop)
        await s.flush()
    token = env.standin.add_token("read", "read:sensitive", "write", "deploy")
    databases = CoolifyDatabaseProvider(
        CoolifyClient(env.standin.url, token, retry=FAST),
        CoolifyDatabaseSettings(server="run-2", poll_interval=0.02, poll_max_interval=0.1, start_timeout=10.0,
                                start_grace=0.3), sessions=env.store.sessionmaker, placement=env.placement)
    try:
        handle = await databases.provision(owner_slug=shop.id.hex, tier=Tier.free)
    finally:
        await databases.close()
    assert env.standin.databases[handle.external_id].server_uuid == run2.uuid
    web = await env.deploy("web", 1024, project_id=shop.id)
    _, ref = await env.row(web)
    assert ref["server_uuid"] == run2.uuid and [a.server_uuid for a in env.apps_of(web)] == [run2.uuid]
    # run-2 (4096 MiB) holds the database (256) and web (1024): 3072 more is refused, nothing made anywhere
    requests = len(env.standin.requests)
    with pytest.raises(ComputeError) as err:
        await env.deploy("api", 3072, project_id=shop.id)
    msg = str(err.value)
    assert "must run on the run server of its project's database" in msg and "has no room" in msg
    assert "2816 MiB of memory" in msg and "run-2" not in msg and run2.uuid not in msg
    assert not [r for r in env.standin.requests[requests:] if r.method == "POST" and "applications" in r.path]
    assert len(env.apps_on(run1)) == 2 and len(env.apps_on(run3)) == 0

    # draining run-2: web cannot move (dry run and real drain say so, and nothing moves)
    await env.settled()
    for dry in (True, False):
        requests = len(env.standin.requests)
        report = await env.drainer().drain("run-2", dry_run=dry)
        [out] = [o for o in report.outcomes if o.service == "web.p-shop"]
        assert out.status == "cannot move" and not report.ok
        assert "its project's database" in out.detail and "cannot move without it" in out.detail
        assert "does not move a project's database" in out.detail
        assert not [r for r in env.standin.requests[requests:] if r.method != "GET"]
    await env.settled()
    _, after = await env.row(web)
    assert after == ref and [a.server_uuid for a in env.apps_of(web)] == [run2.uuid]
    assert (await env.placement.placement_of(str(web))).node_uuid == run2.uuid  # type: ignore[union-attr]
    await env.drainer().undrain("run-2")

    # late was placed on run-1 before its project's database was made on run-3: drained, it goes to run-3
    svc, _ = await env.row(late)
    await save_ref(env.store.sessionmaker, "project", svc.project_id, "coolify-db", {"server_uuid": run3.uuid})
    report = await env.drainer().drain("run-1")
    assert report.ok, report
    await env.settled()
    assert (await env.row(late))[1]["server_uuid"] == run3.uuid  # best fit would have packed it onto run-2
    assert [a.server_uuid for a in env.apps_of(late)] == [run3.uuid]
    assert (await env.row(other))[1]["server_uuid"] == run2.uuid
