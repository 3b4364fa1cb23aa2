"""The reconciler (inkmcp/core/reconcile.py) against real drift: services deployed through core and the real
Coolify provider onto the Coolify stand-in (every request checked against Coolify's spec), records in a real
PostgreSQL, and drift made the way it happens — an application deleted in Coolify behind InkMCP's back, orphans
left in InkMCP's Coolify projects, a deployment killed between creating an application and recording it, a
deployment killed after Coolify finished it — next to resources outside InkMCP's prefix that must never be touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select, text
from typer.testing import CliRunner

from inkmcp.build.source import SourcePolicy
from inkmcp.cli import app as cli_app
from inkmcp.coolify.client import CoolifyClient
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployRequest, DeployService, ProviderRetry
from inkmcp.core.envvars import EnvService
from inkmcp.core.leases import LeaseConfig
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.projects import ProjectService
from inkmcp.core.reconcile import Action, DriftKind, Reconciler, ReconcileSettings, Report, start_periodic
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.coolify import policy
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Deployment, Project, Service
from inkmcp.store.refs import ref_of
from tests.contract.conftest import APP_FILES, PROCFILE, CoolifyHarness, wait_for
from tests.store import conftest as _store_fixtures
from tests.support import git_repo

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg

OLD = "2020-01-01T00:00:00.000000Z"  # a Coolify created_at far beyond the grace period
SETTINGS = ReconcileSettings(grace_seconds=3600, delete_wait_seconds=10, poll_seconds=0.02)


@pytest.fixture
def fresh_url(control_pg: EmbeddedPostgres) -> str:
    url = _store_fixtures.create_database(control_pg, "reconcile")
    migrate(url)
    return url


@pytest.fixture
async def fresh_store(fresh_url: str) -> AsyncIterator[Store]:
    store = await open_store(fresh_url, pool_size=6, max_overflow=6)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def wire(fresh_store: Store, h: CoolifyHarness) -> AsyncIterator[Callable[[Any], Platform]]:
    """Core as `inkmcp serve` builds it over `compute`, with a 1 s lease (a killed pipeline's lease expires fast)."""
    box = SecretBox([Fernet.generate_key()])
    postgres = PostgresDatabaseProvider(SecretStr("postgresql://unused@127.0.0.1:1/unused"), public_host="127.0.0.1",
                                        public_port=1)  # fmt: skip
    made: list[DeployService] = []

    def make(compute: Any) -> Platform:
        sessions = fresh_store.sessionmaker
        limits = LimitDefaults()
        projects = ProjectService(sessions, box, limits)
        envs = EnvService(sessions, box)
        databases = DatabaseService(sessions, box, postgres, None, limits)
        deploys = DeployService(
            sessions, projects=projects, envs=envs, databases=databases, compute=compute, work_dir=h.root / "core",
            sources=SourcePolicy(allow_local=True), mac_key=b"m" * 32, metrics=Metrics(), max_env_bytes=65536,
            provider_retry=ProviderRetry(initial=0.05, maximum=0.2, window=30.0),
            replica=LeaseConfig(replica_id="r1", lease_seconds=1.0, heartbeat_seconds=0.3, scan_seconds=0.3),
        )  # fmt: skip
        made.append(deploys)
        return Platform(sessions, accounts=AccountService(sessions, limits), audit=AuditLog(sessions),
                        projects=projects, envs=envs, databases=databases, deploys=deploys, compute=compute,
                        max_env_bytes=65536)  # fmt: skip

    yield make
    for deploys in made:
        await deploys.close()


def reconciler(h: CoolifyHarness, store: Store, **settings: Any) -> Reconciler:
    """A reconciler with its own client (as the CLI has), the wire policy included."""
    client = CoolifyClient(h.standin.url, h.token, validate_with=h.spec, retry=h.RETRY,
                           transport=policy.PolicyTransport(limits=policy.Limits()))  # fmt: skip
    return Reconciler(store.sessionmaker, client, settings=SETTINGS.model_copy(update=settings))


class Operator:
    """Someone acting in Coolify directly (a root token of the same team), as in Coolify's UI."""

    def __init__(self, h: CoolifyHarness) -> None:
        self.h = h
        self.http = httpx.Client(base_url=h.standin.url + "/api/v1",
                                 headers={"Authorization": f"Bearer {h.standin.add_token('root')}"})
        self.server = next(iter(h.standin.servers))

    def project(self, name: str) -> tuple[str, str]:
        r = self.http.post("/projects", json={"name": name})
        assert r.status_code == 201, r.text
        project = r.json()["uuid"]
        return project, self.http.get(f"/projects/{project}/production").json()["uuid"]

    def app(self, project: tuple[str, str], name: str, *, old: bool = True) -> str:
        r = self.http.post("/applications/public", json={
            "project_uuid": project[0], "environment_name": "production", "environment_uuid": project[1],
            "server_uuid": self.server, "name": name,
            "git_repository": "https://github.com/someone/site", "git_branch": "main", "build_pack": "nixpacks",
            "ports_exposes": "3000"})  # fmt: skip
        assert r.status_code == 201, r.text
        if old:
            with self.h.standin._lock:
                self.h.standin.applications[r.json()["uuid"]].created_at = OLD
        return str(r.json()["uuid"])

    def age(self, project: str) -> None:
        with self.h.standin._lock:
            for env in self.h.standin.projects[project].environments:
                env.created_at = OLD

    def close(self) -> None:
        self.http.close()


async def deploy(platform: Platform, p: Any, repo: Path, name: str, *, wait: float = 60) -> Any:
    req = DeployRequest(repo_url=str(repo), project_name=name, env_vars={"MESSAGE": "one"})
    return await platform.deploy_app(p, req, wait_seconds=wait)


async def service_row(store: Store, platform: Platform, p: Any, name: str) -> Service:
    _, svc = await platform.deploys.get_service(p, name, "web")
    async with store.sessionmaker() as s:
        row = await s.get(Service, svc.id)
        assert row is not None
        return row


def coolify_ref(row: Any) -> dict[str, Any]:
    return ref_of(row.provider_ref, "coolify")


def alive(h: CoolifyHarness, uuid_: str) -> bool:
    with h.standin._lock:
        h.standin._advance()
        app = h.standin.applications.get(uuid_)
        return app is not None and app.delete_at is None


def exists(h: CoolifyHarness, uuid_: str) -> bool:
    """Still in Coolify (a queued delete not done yet counts)."""
    with h.standin._lock:
        h.standin._advance()
        return uuid_ in h.standin.applications


def kinds(report: Report) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for d in report.drift:
        out.setdefault(d.kind.value, []).append(d.application or d.coolify_project or d.deployment_id or "")
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.slow  # ~7 s: three services deployed, two killed pipelines taken over, a redeploy
async def test_drift_is_reported_then_exactly_the_orphans_are_repaired_and_everything_else_stays(
    h: CoolifyHarness, wire: Callable[[Any], Platform], fresh_store: Store
) -> None:
    platform = wire(h.provider)
    p = await platform.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    repo = git_repo(h.root / "repos" / "app", {**APP_FILES, "Procfile": PROCFILE})
    a, b, c = (f"{x}-{uuid.uuid4().hex[:8]}" for x in "abc")

    # A: deployed and live; then Coolify loses its worker and gets another commit on its web
    assert (await deploy(platform, p, repo, a)).status == "live"
    a_row = await service_row(fresh_store, platform, p, a)
    a_apps = coolify_ref(a_row)["apps"]
    async with fresh_store.sessionmaker() as s:
        a_project = coolify_ref(await s.get(Project, a_row.project_id))
    # B: killed right after Coolify created its web application, before InkMCP recorded it (the retry adopts it)
    h.arm_crash("after_create_app")
    b_dep = (await deploy(platform, p, repo, b, wait=0)).deployment_id
    # C: killed after Coolify finished its deployments, before InkMCP recorded the release (a stuck deployment)
    await asyncio.gather(*list(platform.deploys._tasks), return_exceptions=True)
    h.arm_crash("after_remote_finished")
    c_dep = (await deploy(platform, p, repo, c, wait=0)).deployment_id
    await asyncio.gather(*list(platform.deploys._tasks), return_exceptions=True)
    await h.settle()
    b_row = await service_row(fresh_store, platform, p, b)
    b_orphan = next(u for u, app in h.standin.applications.items() if app.fields.get("name") == f"{b_row.id}-web")
    # its worker's create went out beside the web's (one write-ahead write for both): in flight at the kill, made too
    b_worker = next(u for u, app in h.standin.applications.items()
                    if app.fields.get("name") == f"{b_row.id}-worker")  # fmt: skip
    assert "apps" not in coolify_ref(b_row)
    with h.standin._lock:  # as old as any orphan: only the deployment in flight protects it
        h.standin.applications[b_orphan].created_at = OLD
        h.standin.applications[b_worker].created_at = OLD

    op = Operator(h)
    try:
        r = op.http.delete(f"/applications/{a_apps['worker']}")
        assert r.status_code == 200, r.text
        await wait_for(lambda: asyncio.sleep(0, not alive(h, a_apps["worker"])), what="the worker deleted")
        r = op.http.patch(f"/applications/{a_apps['web']}", json={"git_commit_sha": "f" * 40})
        assert r.status_code == 200, r.text
        a_cp = (a_project["project_uuid"], a_project["environment_uuid"])
        stray = op.app(a_cp, f"{uuid.uuid4()}-web")  # no service has this id
        young = op.app(a_cp, f"{uuid.uuid4()}-web", old=False)  # maybe a create whose record is on its way
        dup = op.app(a_cp, f"{a_row.id}-web")  # a second web of A: the provider never adopts it
        empty = op.project(f"inkmcp-{uuid.uuid4()}")
        op.age(empty[0])
        full = op.project(f"inkmcp-{uuid.uuid4()}")
        op.age(full[0])
        in_full = op.app(full, "anything")
        foreign = op.project("customer-site")
        op.age(foreign[0])
        foreign_app = op.app(foreign, f"{uuid.uuid4()}-web")
        lookalike = op.project("inkmcp-legacy")  # InkMCP's prefix, but not a name InkMCP makes
        op.age(lookalike[0])
        lookalike_app = op.app(lookalike, "old-site")
    finally:
        op.close()

    async def expired() -> bool:
        async with fresh_store.sessionmaker() as s:
            return bool((await s.execute(text("SELECT lease_until < now() FROM deployments WHERE id = :id"),
                                         {"id": uuid.UUID(c_dep)})).scalar())  # fmt: skip

    await wait_for(expired, what="the killed pipeline's lease expired")

    # report only: everything found, nothing changed
    rec = reconciler(h, fresh_store)
    since = len(h.standin.requests)
    report = await rec.run()
    assert report.errors == [] and report.skipped is None
    assert kinds(report) == {
        "orphan_application": sorted([stray, young, dup, in_full]),
        "orphan_project": sorted([empty[0], full[0]]),
        "missing_application": [a_apps["worker"]],
        "commit_drift": [a_apps["web"]],
        "stuck_deployment": [c_dep],
    }, report.drift
    assert sorted(report.adoptable) == sorted([b_orphan, b_worker])
    assert all(d.action == Action.reported for d in report.drift)
    assert [s.path for s in h.standin.requests[since:] if s.method != "GET"] == []
    assert len(report.remaining) == 9

    # repair: exactly the old orphans go; the young one, B's adoptable app and everything foreign stay
    since = len(h.standin.requests)
    report = await rec.run(repair=True)
    assert report.errors == []
    actions = {d.application or d.coolify_project or d.deployment_id: d.action for d in report.drift}
    assert actions == {stray: Action.deleted, dup: Action.deleted, in_full: Action.deleted, young: Action.kept,
                       empty[0]: Action.deleted, full[0]: Action.deleted, a_apps["worker"]: Action.marked,
                       a_apps["web"]: Action.reported, c_dep: Action.reported}, report.drift  # fmt: skip
    deletes = sorted(s.path for s in h.standin.requests[since:] if s.method == "DELETE")
    assert deletes == sorted([f"/api/v1/applications/{x}" for x in (stray, dup, in_full)]
                             + [f"/api/v1/projects/{x}" for x in (empty[0], full[0])])  # fmt: skip
    for gone in (stray, dup, in_full):
        assert not alive(h, gone)
    for kept in (young, b_orphan, b_worker, foreign_app, lookalike_app, a_apps["web"]):
        assert alive(h, kept), kept
    assert set(h.standin.projects) >= {foreign[0], lookalike[0], a_project["project_uuid"]}
    assert not {empty[0], full[0]} & set(h.standin.projects)
    async with fresh_store.sessionmaker() as s:
        a_now = await s.get(Service, a_row.id)
        assert a_now is not None and a_now.live_deployment_id is None  # the same deploy_app is no longer a no-op
        ref = coolify_ref(a_now)
        assert ref["apps"] == {"web": a_apps["web"]}
        assert ref["needs_redeploy"]["missing"] == {"worker": a_apps["worker"]}
        statuses = {str(d.id): d.status for d in (await s.execute(select(Deployment))).scalars()}
    assert statuses[b_dep] not in ("live", "failed") and statuses[c_dep] not in ("live", "failed")  # left to takeover
    report = await rec.run()  # the marked service stays in the report until its owner redeploys it
    assert [d.service_id for d in report.of(DriftKind.awaiting_redeploy)] == [str(a_row.id)]
    assert not report.of(DriftKind.missing_application)

    # the takeover finishes B (adopting its unrecorded application) and C; the owner redeploys A
    await platform.deploys.close()
    platform = wire(await h.restart())
    await platform.deploys.restore_all()
    for dep in (b_dep, c_dep):
        assert (await platform.deploys.wait(p, uuid.UUID(dep), timeout=60)).status == "live"
    b_apps = coolify_ref(await service_row(fresh_store, platform, p, b))["apps"]
    assert b_apps == {"web": b_orphan, "worker": b_worker}  # adopted, not made again
    assert h.census(h.key().model_copy(update={"service_id": str(b_row.id)}))["apps"] == {"web": 1, "worker": 1}
    again = await deploy(platform, p, repo, a)
    assert again.status == "live" and again.deployment_id != str(a_row.live_deployment_id)
    a_apps_now = coolify_ref(await service_row(fresh_store, platform, p, a))["apps"]
    assert a_apps_now["web"] == a_apps["web"] and alive(h, a_apps_now["worker"])
    assert a_apps_now["worker"] != a_apps["worker"]

    report = await rec.run(repair=True)
    assert kinds(report) == {"orphan_application": [young]} and report.adoptable == [], report.drift
    assert report.redeployed == [str(a_row.id)]
    assert "needs_redeploy" not in coolify_ref(await service_row(fresh_store, platform, p, a))
    await rec.client.aclose()


async def test_a_project_deleted_in_coolify_is_forgotten_so_the_next_deploy_makes_it_again(
    h: CoolifyHarness, wire: Callable[[Any], Platform], fresh_store: Store
) -> None:
    platform = wire(h.provider)
    p = await platform.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    repo = git_repo(h.root / "repos" / "app", {**APP_FILES, "Procfile": PROCFILE})
    name = f"gone-{uuid.uuid4().hex[:8]}"
    assert (await deploy(platform, p, repo, name)).status == "live"
    row = await service_row(fresh_store, platform, p, name)
    apps = coolify_ref(row)["apps"]
    async with fresh_store.sessionmaker() as s:
        project = coolify_ref(await s.get(Project, row.project_id))["project_uuid"]
    op = Operator(h)
    try:  # Coolify deletes a project only once it is empty
        for app in apps.values():
            assert op.http.delete(f"/applications/{app}").status_code == 200
        await wait_for(lambda: asyncio.sleep(0, not any(exists(h, a) for a in apps.values())), what="apps deleted")
        assert op.http.delete(f"/projects/{project}").status_code == 200
    finally:
        op.close()
    rec = reconciler(h, fresh_store)
    report = await rec.run()
    assert kinds(report) == {"missing_project": [project], "missing_application": sorted(apps.values())}
    report = await rec.run(repair=True)
    assert {d.action for d in report.drift} == {Action.marked}, report.drift
    async with fresh_store.sessionmaker() as s:
        assert "project_uuid" not in coolify_ref(await s.get(Project, row.project_id))
    again = await deploy(platform, p, repo, name)
    assert again.status == "live", again
    async with fresh_store.sessionmaker() as s:
        made = coolify_ref(await s.get(Project, row.project_id))["project_uuid"]
    assert made != project and made in h.standin.projects
    now = coolify_ref(await service_row(fresh_store, platform, p, name))["apps"]
    assert set(now) == {"web", "worker"} and all(alive(h, a) for a in now.values())
    report = await rec.run(repair=True)
    assert report.drift == [] and report.redeployed == [str(row.id)], report.drift
    await rec.client.aclose()


async def test_two_reconcilers_at_once_repair_once(h: CoolifyHarness, fresh_store: Store) -> None:
    op = Operator(h)
    try:
        project = op.project(f"inkmcp-{uuid.uuid4()}")
        op.age(project[0])
        orphan = op.app(project, f"{uuid.uuid4()}-web")
    finally:
        op.close()
    with h.standin._lock:
        h.standin.delete_delay = 0.3  # the first pass holds its lock while Coolify's queued delete runs
    one, two = reconciler(h, fresh_store), reconciler(h, fresh_store)
    since = len(h.standin.requests)
    reports = await asyncio.gather(one.run(repair=True), two.run(repair=True))
    skipped = [r for r in reports if r.skipped]
    done = [r for r in reports if not r.skipped]
    assert len(skipped) == 1 and len(done) == 1, reports
    assert "another reconciler" in (skipped[0].skipped or "")
    assert {(d.kind, d.action) for d in done[0].drift} == {(DriftKind.orphan_application, Action.deleted),
                                                           (DriftKind.orphan_project, Action.deleted)}
    deletes = [s.path for s in h.standin.requests[since:] if s.method == "DELETE"]
    assert sorted(deletes) == sorted([f"/api/v1/applications/{orphan}", f"/api/v1/projects/{project[0]}"])
    # a later pass finds nothing left and repeats nothing
    later = await one.run(repair=True)
    assert later.drift == [] and later.skipped is None
    for r in (one, two):
        await r.client.aclose()


async def test_the_cli_reports_drift_with_exit_1_and_repairs_with_exit_0(
    h: CoolifyHarness, fresh_url: str, tmp_path: Path
) -> None:
    """`inkmcp reconcile [--repair]` as an operator runs it, configured by the environment only (in-process through
    typer's runner, in a thread with its own event loop: a subprocess would spend its time compiling imports)."""
    op = Operator(h)
    try:
        project = op.project(f"inkmcp-{uuid.uuid4()}")
        op.age(project[0])
        orphan = op.app(project, f"{uuid.uuid4()}-web")
        foreign = op.app(op.project("customer-site"), f"{uuid.uuid4()}-web")
    finally:
        op.close()
    env = {"INKMCP_DATABASE_URL": fresh_url, "INKMCP_COOLIFY_URL": h.standin.url, "INKMCP_COOLIFY_TOKEN": h.token,
           "INKMCP_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "300",
           "INKMCP_TENANT_DATABASE_URL": "postgresql://unused@127.0.0.1:1/unused"}  # fmt: skip

    async def cli(*args: str) -> tuple[int, str]:
        result = await asyncio.to_thread(CliRunner().invoke, cli_app, ["reconcile", *args], env=env)
        return result.exit_code, result.output

    code, out = await cli()
    assert code == 1, out
    assert "orphan_application" in out and "orphan_project" in out and "dry run" in out, out
    assert h.token not in out
    assert alive(h, orphan)
    code, out = await cli("--repair")
    assert code == 0, out
    assert "2 drift found, 2 repaired, 0 left" in out, out
    assert not alive(h, orphan) and alive(h, foreign)
    code, out = await cli()
    assert code == 0 and "0 drift found" in out, out


async def test_the_periodic_pass_of_serve_reports_only_unless_repair_is_set(
    h: CoolifyHarness, fresh_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """`start_periodic` as inkmcp/app.py wires it over the provider: report-only by default (drift logged, nothing
    deleted), repairing with INKMCP_RECONCILE_REPAIR=true; the task ends with the runtime's exit stack."""
    op = Operator(h)
    try:
        project = op.project(f"inkmcp-{uuid.uuid4()}")
        op.age(project[0])
        orphan = op.app(project, f"{uuid.uuid4()}-web")
    finally:
        op.close()
    caplog.set_level(logging.WARNING, logger="inkmcp.reconcile")
    for repair in (False, True):
        async with contextlib.AsyncExitStack() as stack:
            task = start_periodic(stack, fresh_store.sessionmaker, h.provider,
                                  SETTINGS.model_copy(update={"interval_seconds": 0.05, "repair": repair}))
            assert task is not None
            if repair:
                await wait_for(lambda: asyncio.sleep(0, not alive(h, orphan)), what="the orphan deleted")
            else:
                await wait_for(lambda: asyncio.sleep(0, orphan in caplog.text), what="the orphan reported")
                assert alive(h, orphan)
        assert task.done()
    assert start_periodic(contextlib.AsyncExitStack(), fresh_store.sessionmaker, h.provider,
                          SETTINGS.model_copy(update={"interval_seconds": 0})) is None


def test_settings_and_prefix_errors_name_what_to_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INKMCP_RECONCILE_GRACE_SECONDS", "-5")
    with pytest.raises(ValueError, match="grace_seconds"):
        ReconcileSettings()
    monkeypatch.setenv("INKMCP_RECONCILE_GRACE_SECONDS", "60")
    monkeypatch.setenv("INKMCP_RECONCILE_REPAIR", "true")
    assert ReconcileSettings().repair is True and ReconcileSettings().grace_seconds == 60
    with pytest.raises(ValueError, match="INKMCP_COOLIFY_PROJECT_PREFIX"):
        Reconciler(None, None, project_prefix="")  # type: ignore[arg-type]
