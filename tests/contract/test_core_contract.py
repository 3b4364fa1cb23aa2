"""Core over every provider: deploy_app's pipeline through the contract, with the real store.

The same DeployService and Platform as `inkmcp serve`, a real git repo (a Procfile with web + worker), the
control-plane database on embedded PostgreSQL (a fresh database per test: `restore_all` resumes every
unfinished deployment it finds, so no other test's rows may be there). A "restart" is a new provider instance
and a new DeployService over the same database, as after a crash of the InkMCP process.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select

from inkmcp.build.source import SourcePolicy
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployRequest, DeployService, ProviderRetry
from inkmcp.core.envvars import EnvService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.principal import Principal
from inkmcp.core.projects import ProjectService
from inkmcp.errors import InkError
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.base import LogScope, ProviderUnavailable, ServiceKey, Step
from inkmcp.providers.compute.fake import CRASH_POINTS
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Deployment, Service
from inkmcp.store.refs import ref_of
from tests.contract.conftest import (
    APP_FILES,
    HARNESSES,
    PROCFILE,
    PROVIDERS,
    REMOTE_PROVIDERS,
    Harness,
    Interrupt,
    Interrupting,
    provider_param,
    wait_for,
)
from tests.store import conftest as _store_fixtures
from tests.support import git_repo

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg

CORE_CRASH_POINTS = ("after_deploy_call", "after_remote_finished")
CORE_CRASH_CASES = [provider_param(name, where) for name in PROVIDERS
                    for where in ["step:building",
                                  *(f"point:{p}" for p in HARNESSES[name].crash_points if p in CORE_CRASH_POINTS)]]
assert {p for p in CORE_CRASH_POINTS} <= set(CRASH_POINTS)


@pytest.fixture
async def fresh_store(control_pg: EmbeddedPostgres) -> AsyncIterator[Store]:
    url = _store_fixtures.create_database(control_pg, "contract")
    await asyncio.to_thread(migrate, url)
    store = await open_store(url, pool_size=4, max_overflow=4)
    try:
        yield store
    finally:
        await store.close()


@dataclass
class Wired:
    """Core as `inkmcp serve` builds it (inkmcp/app.py), over one provider."""

    deploys: DeployService
    platform: Platform
    accounts: AccountService


@pytest.fixture
async def wire(fresh_store: Store, harness: Harness) -> AsyncIterator[Callable[[Any], Wired]]:
    box = SecretBox([Fernet.generate_key()])  # one key for every "process" of the test: it is the same store
    work = harness.root / "core-work"
    postgres = PostgresDatabaseProvider(SecretStr("postgresql://unused@127.0.0.1:1/unused"), public_host="127.0.0.1",
                                        public_port=1)  # no test here provisions a database  # fmt: skip

    def make(compute: Any) -> Wired:
        sessions = fresh_store.sessionmaker
        limits = LimitDefaults()
        projects = ProjectService(sessions, box, limits)
        envs = EnvService(sessions, box)
        databases = DatabaseService(sessions, box, postgres, None, limits)
        deploys = DeployService(
            sessions, projects=projects, envs=envs, databases=databases, compute=compute, work_dir=work,
            sources=SourcePolicy(allow_local=True), mac_key=b"m" * 32, metrics=Metrics(), max_env_bytes=65536,
            provider_retry=ProviderRetry(initial=0.05, maximum=0.2, window=30.0),
        )  # fmt: skip
        accounts = AccountService(sessions, limits)
        platform = Platform(sessions, accounts=accounts, audit=AuditLog(sessions), projects=projects, envs=envs,
                            databases=databases, deploys=deploys, compute=compute, max_env_bytes=65536)  # fmt: skip
        made.append(deploys)
        return Wired(deploys=deploys, platform=platform, accounts=accounts)

    made: list[DeployService] = []
    yield make
    for deploys in made:  # a test that failed half-way may have left pipelines running
        await deploys.close()


@pytest.fixture
def repo(harness: Harness) -> Path:
    """web + worker through a Procfile; readable by the project's user (the local provider fetches as it)."""
    return git_repo(harness.root / "repos" / uuid.uuid4().hex[:8], {**APP_FILES, "Procfile": PROCFILE})


async def deploy(core: Wired, p: Principal, repo: Path, name: str, message: str, *, wait: float = 90,
                 **kw: Any) -> Any:  # fmt: skip
    req = DeployRequest(repo_url=str(repo), project_name=name, env_vars={"MESSAGE": message}, **kw)
    return await core.platform.deploy_app(p, req, wait_seconds=wait)


async def key_of(core: Wired, p: Principal, name: str) -> ServiceKey:
    project, svc = await core.deploys.get_service(p, name, "web")
    return core.deploys.key_of(svc, project)


async def pipelines_end(core: Wired) -> None:
    """The deploy pipelines this DeployService started have ended (finished or died)."""
    await asyncio.gather(*list(core.deploys._tasks), return_exceptions=True)


def running(instances: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(process, deployment) for process, deployment, _ in instances]


@pytest.mark.parametrize(("harness", "where"), CORE_CRASH_CASES, indirect=["harness"])
async def test_a_deploy_interrupted_by_a_crash_resumes_with_one_deployment(
    harness: Harness, wire: Callable[[Any], Wired], fresh_store: Store, repo: Path, where: str
) -> None:
    kind, point = where.split(":")
    wrapper = Interrupting(harness.provider, Step.building, Interrupt, armed=False)
    core = wire(wrapper)
    p = await core.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    name = f"crash-{uuid.uuid4().hex[:8]}"
    first = await deploy(core, p, repo, name, "one")
    assert first.status == "live", first

    if kind == "step":
        wrapper.armed = True
    else:
        harness.arm_crash(point)
    second = await deploy(core, p, repo, name, "two", wait=0)  # same commit, new env: a new deployment
    await pipelines_end(core)
    assert (await core.deploys.view(p, uuid.UUID(second.deployment_id))).done is False  # resumable, not failed
    await harness.settle()
    await core.deploys.close()

    provider = await harness.restart()
    core = wire(provider)
    restored, resumed = await core.deploys.restore_all()
    assert (restored, resumed) == (1, 1)
    done = await core.deploys.wait(p, uuid.UUID(second.deployment_id), timeout=90)
    assert done.status == "live", done
    assert any("resumed after restart" in line for line in done.history), done.history

    key = await key_of(core, p, name)
    assert running(await harness.instances(key)) == [("web", second.deployment_id), ("worker", second.deployment_id)]
    assert await harness.serve(key) == "two"
    census = harness.census(key)
    if census is not None:
        assert census["apps"] == {"web": 1, "worker": 1}, census
        assert census["deployments"][second.deployment_id] == {"web": 1, "worker": 1}, census
        # the provider's ids are in the database, where a restarted InkMCP (or another replica) finds them
        async with fresh_store.sessionmaker() as s:
            dep_ref = (await s.execute(select(Deployment.provider_ref)
                                       .where(Deployment.id == uuid.UUID(second.deployment_id)))).scalar_one()
            svc_ref = (await s.execute(select(Service.provider_ref).where(Service.id == uuid.UUID(key.service_id)))
                       ).scalar_one()  # fmt: skip
        assert set(ref_of(dep_ref, provider.name)["deployments"]) == {"web", "worker"}
        assert set(ref_of(svc_ref, provider.name)["apps"]) == {"web", "worker"}
    await core.deploys.close()


async def test_a_retryable_error_is_retried_until_the_deployment_is_live(
    harness: Harness, wire: Callable[[Any], Wired], repo: Path
) -> None:
    scenarios = ["step:building", *[s for s in harness.fault_scenarios() if s in ("lost_answer:deploy", "queue_full")]]
    for scenario in scenarios:
        wrapper = Interrupting(harness.provider, Step.building,
                               lambda: ProviderUnavailable("503 Service Unavailable", retry_after=0.05),
                               armed=scenario == "step:building")  # fmt: skip
        if scenario != "step:building":
            harness.arm_fault(scenario)
        core = wire(wrapper)
        p = await core.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
        name = f"retry-{uuid.uuid4().hex[:8]}"
        view = await deploy(core, p, repo, name, "one")
        assert view.status == "live", (scenario, view)
        assert any("waiting for the compute platform" in line for line in view.history), (scenario, view.history)
        assert wrapper.releases == 2, scenario
        key = await key_of(core, p, name)
        assert running(await harness.instances(key)) == [("web", view.deployment_id), ("worker", view.deployment_id)]
        census = harness.census(key)
        if census is not None:
            assert census["deployments"] == {view.deployment_id: {"web": 1, "worker": 1}}, (scenario, census)
        await core.deploys.close()


async def test_a_failing_build_fails_at_once_and_the_previous_version_serves(
    harness: Harness, wire: Callable[[Any], Wired], repo: Path
) -> None:
    wrapper = Interrupting(harness.provider, Step.building, Interrupt, armed=False)
    core = wire(wrapper)
    p = await core.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    name = f"broken-{uuid.uuid4().hex[:8]}"
    assert (await deploy(core, p, repo, name, "one")).status == "live"
    view = await deploy(core, p, repo, name, "two", build_command="echo compile error: missing colon >&2; exit 2")
    assert view.status == "failed" and view.error is not None
    assert view.error.startswith("building: ") and "compile error" in view.error, view.error
    assert wrapper.releases == 2  # one each: a permanent error is not retried
    assert await harness.serve(await key_of(core, p, name)) == "one"
    await core.deploys.close()


@pytest.mark.parametrize("harness", [provider_param(name) for name in REMOTE_PROVIDERS], indirect=True)
async def test_a_refusal_of_the_platform_fails_the_deployment_naming_the_operator(
    harness: Harness, wire: Callable[[Any], Wired], repo: Path
) -> None:
    wrapper = Interrupting(harness.provider, Step.building, Interrupt, armed=False)
    core = wire(wrapper)
    p = await core.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    name = f"refused-{uuid.uuid4().hex[:8]}"
    harness.refuse("deploy", "Missing required permissions: deploy")
    view = await deploy(core, p, repo, name, "one")
    assert view.status == "failed" and view.error is not None
    assert "refused" in view.error and "Missing required permissions: deploy" in view.error
    assert "not a problem in your app" in view.error and "operator" in view.error
    assert wrapper.releases == 1
    await core.deploys.close()


class _WatchingEnv:
    """The provider, with a look at pg_locks from inside `update_env`: core must hold the service's ref-switch lock
    there (leases.hold_ref_switch), or a drain's switch could be overwritten by this change's ref."""

    def __init__(self, inner: Any, store: Store) -> None:
        self.inner, self.store, self.held = inner, store, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def update_env(self, key: ServiceKey, *args: Any) -> Any:
        from sqlalchemy import text

        from inkmcp.core.leases import REF_SWITCH_LOCK_CLASS, service_lock_key

        async with self.store.session() as s:
            self.held.append((await s.execute(text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = :ns "
                "AND objid = :key"), {"ns": REF_SWITCH_LOCK_CLASS,
                                      "key": service_lock_key(uuid.UUID(key.service_id)) & 0xFFFFFFFF})).scalar())
        return await self.inner.update_env(key, *args)


async def test_update_env_vars_reports_what_the_provider_really_did(
    harness: Harness, wire: Callable[[Any], Wired], repo: Path, fresh_store: Store
) -> None:
    """`restarted` services serve the new values when the call returns; `pending` ones still serve the old
    values and list_services says env=pending until they run the new ones, then env=applied. The provider is asked
    under the service's ref-switch lock."""
    watching = _WatchingEnv(harness.provider, fresh_store)
    core = wire(watching)
    p = await core.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    name = f"env-{uuid.uuid4().hex[:8]}"
    assert (await deploy(core, p, repo, name, "one")).status == "live"
    key = await key_of(core, p, name)
    async with harness.hold():
        update = await core.platform.update_env_vars(p, name, {"MESSAGE": "two"}, None)
        assert sorted(update.restarted + update.pending) == ["web"], update
        (service,) = await core.platform.list_services(p, name)
        if update.restarted:
            assert await harness.serve(key) == "two"
            assert service.env == "applied" and "restarted web" in update.note
        else:
            assert await harness.serve(key) == "one"
            assert service.env == "pending" and "restart queued for web" in update.note, (service, update.note)

    async def applied() -> bool:
        (service,) = await core.platform.list_services(p, name)
        return service.env == "applied"

    await wait_for(applied, what="list_services env=applied")
    assert await harness.serve(key) == "two"
    assert watching.held == [1], watching.held
    await core.deploys.close()


@pytest.fixture(autouse=True)
def _no_leftover_checkouts(harness: Harness) -> Any:
    yield
    shutil.rmtree(harness.root / "core-work", ignore_errors=True)


@pytest.mark.parametrize("harness", [provider_param(name) for name in REMOTE_PROVIDERS], indirect=True)
async def test_an_unavailable_platform_is_a_retryable_tool_error_and_nothing_changes(
    harness: Harness, wire: Callable[[Any], Wired], repo: Path
) -> None:
    """Outside a deployment (which waits it out), ProviderUnavailable reaches the agent as an error that says to
    call again; list_services shows the state as unknown instead of failing; a refused delete keeps the record,
    so the repeat finishes it."""
    core = wire(harness.provider)
    p = await core.accounts.principal_for(f"acct-{uuid.uuid4().hex[:8]}", "test")
    name = f"flaky-{uuid.uuid4().hex[:8]}"
    assert (await deploy(core, p, repo, name, "one")).status == "live"

    harness.arm_fault("unavailable:get_app")
    (service,) = await core.platform.list_services(p, name)
    assert (service.state, service.health) == ("unknown", "unknown")

    harness.arm_fault("unavailable:app_logs")
    with pytest.raises(InkError) as err:
        await core.platform.get_logs(p, name, scope=LogScope.runtime, service_name="web", tail=10)
    text = err.value.render()
    assert "the compute platform is unavailable" in text and "call the same tool again" in text, text

    key = await key_of(core, p, name)
    harness.arm_fault("unavailable:delete_app")
    with pytest.raises(InkError) as err:
        await core.platform.delete_service(p, name, "web", confirm="web")
    assert "deleting service 'web' did not happen" in err.value.render()
    assert [s.name for s in await core.platform.list_services(p, name)] == ["web"]
    await core.platform.delete_service(p, name, "web", confirm="web")
    assert await core.platform.list_services(p, name) == []
    census = harness.census(key)
    assert census is not None and census["apps"] == {}, census
    await core.deploys.close()
