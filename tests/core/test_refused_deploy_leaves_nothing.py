"""A deploy_app that is refused changes nothing: not the service's env vars, not its settings, and a service (or
project) the refused call made for itself is gone again.

Each refusal is performed for real, through the same DeployService and Platform as `inkmcp serve`, over the real
store (embedded PostgreSQL), a real git repo, and a real compute provider: the local one (real processes, the
path where core checks the source out itself) and the Coolify provider over the spec-validated stand-in (the path
that fetches beside recording the project and service). What is checked is what an agent sees afterwards:
`list_env_vars`, `list_services` (its env state says whether the live processes run the stored env),
`get_service`'s record, `list_projects`, and what the live app answers.

The bug these catch (newuser, 2026-12-01): the settings and env were written before the checks that can still
refuse the call, so three concurrent deploy_app (web V=1, web V=2, site) at a limit of two builds left the refused
V=1 stored while V=2 ran, and the next restart would have quietly taken the refused value.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from inkmcp.billing.breaker import Breaker, RetryLoop
from inkmcp.billing.settings import BillingSettings
from inkmcp.build.source import SourcePolicy
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseRequest, DatabaseService
from inkmcp.core.deployments import ComputeUnavailable, DeployRequest, DeployService, ProcessNotService, ProviderRetry
from inkmcp.core.envvars import EnvService
from inkmcp.core.limits import LimitDefaults, LimitReached
from inkmcp.core.platform import Platform
from inkmcp.core.principal import Principal
from inkmcp.core.projects import ProjectService
from inkmcp.errors import BuildPlanError, Conflict, InvalidArgument, NotFound
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.base import LogScope, ProviderUnavailable, ReleaseRequest
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.contract.conftest import APP_FILES, PROCFILE, CoolifyHarness, Harness, LocalHarness
from tests.support import git_commit, git_repo

BUILD_LIMIT = 2


class Gated:
    """The real provider, with releases that start only once `open` is set: deployments stay in progress (and
    count against the account's concurrent builds) for as long as a test needs them to. `before_fetch`, once: a
    step run when the next deploy_app asks for its source workspace, i.e. after its advisory precheck of the
    limits and before its deployment is created (how other calls get in between, deterministically)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.open = asyncio.Event()
        self.open.set()
        self.before_fetch: Callable[[], Awaitable[None]] | None = None
        self.removal = asyncio.Event()  # removals at the platform proceed once set
        self.removal.set()
        self.removing = asyncio.Event()  # a removal has begun
        self.removal_fails: BaseException | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def remove(self, key: Any) -> None:
        self.removing.set()
        await self.removal.wait()
        failure, self.removal_fails = self.removal_fails, None
        if failure is not None:
            raise failure
        await self._inner.remove(key)

    async def source_workspace(self, project_id: str) -> Any:
        step, self.before_fetch = self.before_fetch, None
        if step is not None:
            await step()
        return await self._inner.source_workspace(project_id)

    async def release(self, request: ReleaseRequest, progress: Any, record: Any) -> Any:
        await self.open.wait()
        return await self._inner.release(request, progress, record)


@dataclass
class World:
    harness: Harness
    compute: Gated
    deploys: DeployService
    platform: Platform
    p: Principal
    repo: Path

    def name(self, label: str) -> str:
        return f"{label}-{uuid.uuid4().hex[:8]}"

    async def deploy(self, project: str, service: str = "web", *, wait: float = 60, repo: Path | None = None,
                     **kw: Any) -> Any:  # fmt: skip
        req = DeployRequest(repo_url=str(repo or self.repo), project_name=project, service_name=service, **kw)
        return await self.platform.deploy_app(self.p, req, wait_seconds=wait)

    async def stored(self, project: str, service: str = "web") -> tuple[dict[str, str], dict[str, Any]]:
        """What an agent reads back of a service: its env (revealed) and its record's settings."""
        env = (await self.platform.list_env_vars(self.p, project, service, reveal=True)).env
        _, svc = await self.deploys.get_service(self.p, project, service)
        return env, {"settings": svc.settings, "ref": svc.ref, "repo_url": svc.repo_url, "mode": svc.mode,
                     "type": svc.service_type, "live": svc.live_deployment_id}  # fmt: skip

    async def services(self, project: str) -> dict[str, Any]:
        return {v.name: v for v in await self.platform.list_services(self.p, project)}

    async def serves(self, project: str, service: str = "web") -> str | None:
        project_row, svc = await self.deploys.get_service(self.p, project, service)
        return await self.harness.serve(self.deploys.key_of(svc, project_row))

    async def projects(self) -> list[str]:
        return [x.name for x in (await self.platform.list_projects(self.p)).projects]


@pytest.fixture(params=["local", "coolify"])
async def world(request: pytest.FixtureRequest, store: Store, tenant_pg: EmbeddedPostgres) -> AsyncIterator[World]:
    harness: Harness = LocalHarness() if request.param == "local" else CoolifyHarness()
    await harness.setup()
    box = SecretBox([Fernet.generate_key()])
    sessions = store.sessionmaker
    limits = LimitDefaults(max_concurrent_builds=BUILD_LIMIT)
    postgres = PostgresDatabaseProvider(tenant_pg.url(), public_host="127.0.0.1", public_port=tenant_pg.port)
    projects = ProjectService(sessions, box, limits)
    envs = EnvService(sessions, box)
    databases = DatabaseService(sessions, box, postgres, None, limits)
    compute = Gated(harness.provider)
    deploys = DeployService(
        sessions, projects=projects, envs=envs, databases=databases, compute=compute,  # type: ignore[arg-type]
        work_dir=harness.root / "core-work", sources=SourcePolicy(allow_local=True), mac_key=b"r" * 32,  # type: ignore[attr-defined]
        metrics=Metrics(), max_env_bytes=65536, provider_retry=ProviderRetry(initial=0.05, maximum=0.2, window=30.0))
    accounts = AccountService(sessions, limits)
    platform = Platform(sessions, accounts=accounts, audit=AuditLog(sessions), projects=projects, envs=envs,
                        databases=databases, deploys=deploys, compute=compute, max_env_bytes=65536)  # type: ignore[arg-type]
    p = await accounts.principal_for(f"refused-{uuid.uuid4().hex[:8]}", "test")
    repo = git_repo(harness.root / "repos" / uuid.uuid4().hex[:8], {**APP_FILES, "Procfile": PROCFILE})  # type: ignore[attr-defined]
    try:
        yield World(harness, compute, deploys, platform, p, repo)
    finally:
        compute.open.set()
        compute.removal.set()
        await deploys.close()
        await postgres.close()
        await harness.teardown()


async def finish(w: World, *views: Any) -> list[Any]:
    return [await w.deploys.wait(w.p, uuid.UUID(v.deployment_id), timeout=60) for v in views]


async def test_a_deploy_refused_at_the_build_limit_changes_no_env_or_setting(world: World) -> None:
    """The limit decided where the deployment is created: each refused call passed the advisory precheck, then two
    other deploy_app calls (site, web) filled the account's two builds before it got to create its deployment."""
    w = world
    name = w.name("limit")
    assert (await w.deploy(name, env_vars={"MESSAGE": "zero"}, ref="main")).status == "live"
    settings_before = (await w.stored(name))[1]

    async def refused_at_create(call: Callable[[], Awaitable[Any]], message: str) -> tuple[Any, ...]:
        held: list[Any] = []
        seen: list[Any] = []

        async def fill() -> None:
            held.append(await w.deploy(name, "site", wait=0, env_vars={"MESSAGE": f"site-{message}"}))
            held.append(await w.deploy(name, wait=0, env_vars={"MESSAGE": message}, ref="main"))
            seen.append(await w.stored(name))

        w.compute.open.clear()
        w.compute.before_fetch = fill
        with pytest.raises(LimitReached, match="2 concurrent builds"):
            await call()
        assert w.compute.before_fetch is None and len(held) == 2  # refused at create, after the fill
        stored = await w.stored(name)
        w.compute.open.set()
        assert [v.status for v in await finish(w, *held)] == ["live", "live"]
        return seen[0], stored

    accepted, after = await refused_at_create(
        lambda: w.deploy(name, wait=0, env_vars={"MESSAGE": "two", "EXTRA": "x"}, build_command="echo refused",
                         port=9999, ref=None), "one")  # fmt: skip
    assert accepted[0] == {"MESSAGE": "one"}  # an accepted call's env is stored with its deployment
    assert after == accepted  # not MESSAGE=two, no EXTRA, no build_command, port or ref change
    assert accepted[1]["settings"] == settings_before["settings"] and accepted[1]["ref"] == "main"
    assert await w.serves(name) == "one"
    assert (await w.services(name))["web"].env == "applied"  # what runs is what is stored

    await refused_at_create(lambda: w.deploy(name, "api", wait=0, env_vars={"MESSAGE": "api"}), "three")
    assert sorted(await w.services(name)) == ["site", "web"]  # the refused call's new service is gone

    fresh = w.name("limit-new")
    await refused_at_create(lambda: w.deploy(fresh, wait=0, env_vars={"MESSAGE": "new"}), "four")
    assert fresh not in await w.projects()  # and the project it made
    assert (await w.stored(name))[0] == {"MESSAGE": "four"} and await w.serves(name) == "four"


async def test_three_concurrent_deploys_at_a_limit_of_two_store_only_what_was_accepted(world: World) -> None:
    """The user's report, as it happened: web V=1, web V=2 and a new site at once, two builds allowed."""
    w = world
    name = w.name("three")
    assert (await w.deploy(name, env_vars={"MESSAGE": "zero"})).status == "live"
    w.compute.open.clear()
    calls = {"one": w.deploy(name, wait=0, env_vars={"MESSAGE": "one"}),
             "two": w.deploy(name, wait=0, env_vars={"MESSAGE": "two"}),
             "site": w.deploy(name, "site", wait=0, env_vars={"MESSAGE": "site"})}
    results = dict(zip(calls, await asyncio.gather(*calls.values(), return_exceptions=True), strict=True))
    refused = [k for k, r in results.items() if isinstance(r, BaseException)]
    assert len(refused) == 1 and isinstance(results[refused[0]], LimitReached), results
    env, _ = await w.stored(name)
    accepted_web = [k for k in ("one", "two") if k not in refused]
    assert env["MESSAGE"] in accepted_web, (env, refused)
    if refused == ["site"]:
        assert "site" not in await w.services(name)

    w.compute.open.set()
    done = await finish(w, *(r for r in results.values() if not isinstance(r, BaseException)))
    assert {v.status for v in done} <= {"live", "superseded"}, done
    env, _ = await w.stored(name)
    assert await w.serves(name) == env["MESSAGE"]
    assert (await w.services(name))["web"].env == "applied"  # nothing pending for the next restart to pick up


async def test_a_deploy_refused_for_its_plan_changes_no_env_or_setting(world: World) -> None:
    w = world
    name = w.name("plan")
    assert (await w.deploy(name, env_vars={"MESSAGE": "one"}, build_command="echo built")).status == "live"
    before = await w.stored(name)
    git_commit(w.repo, {"Procfile": "web python3 web.py\n"}, "a broken Procfile")
    with pytest.raises(BuildPlanError, match="Procfile line 1"):
        await w.deploy(name, env_vars={"MESSAGE": "two", "CRASH": None}, port=8123, mode="on_demand")
    assert await w.stored(name) == before
    with pytest.raises(BuildPlanError):
        await w.deploy(name, "api", env_vars={"MESSAGE": "api"})
    assert sorted(await w.services(name)) == ["web"]
    git_commit(w.repo, {"Procfile": PROCFILE, "inkmcp.yaml": "services: [unclosed\n"}, "a broken inkmcp.yaml")
    with pytest.raises(BuildPlanError, match=r"inkmcp\.yaml"):
        await w.deploy(name, env_vars={"MESSAGE": "three"}, start_command="python3 web.py")
    assert await w.stored(name) == before
    fresh = w.name("plan-new")
    with pytest.raises(BuildPlanError):
        await w.deploy(fresh, env_vars={"MESSAGE": "new"})
    assert fresh not in await w.projects()  # the project this call made is gone with its service
    assert await w.serves(name) == "one"
    assert (await w.services(name))["web"].env == "applied"


async def test_a_static_site_refused_a_mode_keeps_its_env_and_settings(world: World) -> None:
    w = world
    name = w.name("static")
    site = git_repo(w.repo.parent / f"site-{uuid.uuid4().hex[:6]}", {"index.html": "<h1>hi</h1>\n"})
    assert (await w.deploy(name, "site", repo=site, env_vars={"A": "1"})).status == "live"
    before = await w.stored(name, "site")
    with pytest.raises(InvalidArgument, match="does not apply to a static site") as refused:
        await w.deploy(name, "site", repo=site, mode="persistent", env_vars={"A": "2"}, ref="main")
    assert refused.value.argument == "mode"
    assert await w.stored(name, "site") == before
    with pytest.raises(InvalidArgument, match="static site"):
        await w.deploy(name, "docs", repo=site, mode="on_demand")
    assert sorted(await w.services(name)) == ["site"]


@pytest.mark.parametrize("world", ["coolify"], indirect=True)
async def test_a_deploy_refused_by_the_retry_breaker_keeps_the_env_that_runs(world: World) -> None:
    """Two failures of one config, then a good one goes live, then the failing config again: the breaker refuses
    it, and the env stays the good one's (before: the refused call's CRASH=web was stored for the next restart)."""
    w = world
    w.deploys.breaker = Breaker(w.deploys._sessions, BillingSettings(retry_breaker_failures=2))  # type: ignore[attr-defined]
    name = w.name("loop")
    bad = {"MESSAGE": "bad", "CRASH": "web"}
    for _ in range(2):
        assert (await w.deploy(name, env_vars=bad)).status == "failed"
    assert (await w.deploy(name, env_vars={"MESSAGE": "good", "CRASH": None})).status == "live"
    before = await w.stored(name)
    with pytest.raises(RetryLoop, match="already failed 2 times"):
        await w.deploy(name, env_vars=bad)
    assert await w.stored(name) == before
    assert before[0] == {"MESSAGE": "good"}
    assert (await w.services(name))["web"].env == "applied"


@pytest.mark.parametrize("world", ["local"], indirect=True)
async def test_a_deploy_with_a_database_refused_for_its_plan_makes_no_service_and_no_database(world: World) -> None:
    """The database path (`deploy_app(database=...)`): the plan is read before the database is made."""
    w = world
    name = w.name("db")
    assert (await w.deploy(name, env_vars={"MESSAGE": "one"})).status == "live"
    before = await w.stored(name)
    broken = git_repo(w.repo.parent / f"broken-{uuid.uuid4().hex[:6]}", {**APP_FILES, "Procfile": "web:\n"})
    with pytest.raises(BuildPlanError, match="empty command"):
        await w.deploy(name, "api", repo=broken, database=DatabaseRequest(), env_vars={"MESSAGE": "api"})
    with pytest.raises(BuildPlanError):
        await w.deploy(name, repo=broken, database=DatabaseRequest(), env_vars={"MESSAGE": "two"})
    assert sorted(await w.services(name)) == ["web"]
    assert await w.stored(name) == before
    assert [x.database for x in (await w.platform.list_projects(w.p)).projects if x.name == name] == [None]


@pytest.mark.parametrize("world", ["local"], indirect=True)
async def test_the_same_deploy_again_is_still_a_no_op(world: World) -> None:
    """Env now goes with the deployment: a repeat with the same env (and an unset of an absent key) is reused,
    and a new value makes a new deployment whose env is stored."""
    w = world
    name = w.name("again")
    first = await w.deploy(name, env_vars={"MESSAGE": "one"})
    again = await w.deploy(name, env_vars={"MESSAGE": "one", "NOPE": None})
    assert (again.reused, again.deployment_id) == (True, first.deployment_id)
    newer = await w.deploy(name, env_vars={"MESSAGE": "two"})
    assert not newer.reused and newer.status == "live"
    assert (await w.stored(name))[0] == {"MESSAGE": "two"} and await w.serves(name) == "two"


@pytest.mark.parametrize("world", ["coolify"], indirect=True)
async def test_a_missing_service_name_says_which_services_and_processes_exist(world: World) -> None:
    """`worker` of a Procfile runs inside service `web`: every tool asked for service 'worker' says so (before, only
    get_logs did; update_env_vars and the rest said "no service 'worker'"), and a name that is neither lists the
    services with their processes."""
    w = world
    name = w.name("procs")
    assert (await w.deploy(name, env_vars={"MESSAGE": "one"})).status == "live"
    site = git_repo(w.repo.parent / f"site-{uuid.uuid4().hex[:6]}", {"index.html": "<h1>hi</h1>\n"})
    assert (await w.deploy(name, "site", repo=site)).status == "live"
    with pytest.raises(ProcessNotService) as e:
        await w.platform.update_env_vars(w.p, name, {"X": "1"}, "worker")
    assert e.value.argument == "service_name" and e.value.service == "web"
    assert "'worker' is a process of service 'web'" in e.value.message and "web, worker" in e.value.message
    assert "service_name='web'" in (e.value.fix or "")
    assert (await w.stored(name))[0] == {"MESSAGE": "one"}  # and nothing was stored anywhere
    with pytest.raises(NotFound) as logs:
        await w.platform.get_logs(w.p, name, scope=LogScope.runtime, service_name="worker", tail=10)
    assert "'worker | '" in (logs.value.fix or "")  # get_logs says where that process's lines are
    with pytest.raises(NotFound) as missing:
        await w.deploys.get_service(w.p, name, "nope")
    assert not isinstance(missing.value, ProcessNotService)
    assert "no service 'nope'" in missing.value.message
    assert "it has 2: site; web (processes: web, worker)" in missing.value.message, missing.value.message
    assert missing.value.fix == "pass one of: site, web"


@pytest.mark.parametrize("world", ["coolify"], indirect=True)
async def test_a_deploy_during_the_service_s_deletion_is_refused_at_once_not_kept_waiting(world: World) -> None:
    """delete held the service's lock for the whole removal at Coolify (the deploy key's delete waits up to 300 s
    for the applications' queued deletes), so a deploy_app of the service waited that long on the lock, holding a
    statement-pool connection. Now the removal runs outside the lock, the service marked; a deploy meanwhile is
    refused at once and writes nothing, and a removal that fails leaves the service as it was."""
    w = world
    name = w.name("del")
    first = await w.deploy(name, env_vars={"MESSAGE": "one"})
    assert first.status == "live"

    w.compute.removal_fails = ProviderUnavailable("503 Service Unavailable", retry_after=1)
    with pytest.raises(ComputeUnavailable):
        await w.platform.delete_service(w.p, name, "web", "web")
    again = await w.deploy(name, env_vars={"MESSAGE": "one"})  # a failed deletion leaves it deployable, as before
    assert (again.reused, again.deployment_id) == (True, first.deployment_id)

    w.compute.removal.clear()
    w.compute.removing.clear()
    deleting = asyncio.ensure_future(w.platform.delete_service(w.p, name, "web", "web"))
    await asyncio.wait_for(w.compute.removing.wait(), 20)
    with pytest.raises(Conflict, match="is being deleted") as refused:
        await asyncio.wait_for(w.deploy(name, wait=0, env_vars={"MESSAGE": "two"}), 10)
    with pytest.raises(Conflict, match="is being deleted"):  # the same deploy again is no longer a no-op either
        await asyncio.wait_for(w.deploy(name, wait=0, env_vars={"MESSAGE": "one"}), 10)
    assert f"delete(project_name={name!r}, service_name='web', confirm='web')" in (refused.value.fix or "")
    assert (await w.stored(name))[0] == {"MESSAGE": "one"}
    assert [d.deployment_id for d in await w.platform.list_deployments(w.p, name, "web")] == [first.deployment_id]
    w.compute.removal.set()
    await asyncio.wait_for(deleting, 30)
    assert "web" not in await w.services(name)
    anew = await w.deploy(name, env_vars={"MESSAGE": "two"})
    assert anew.status == "live" and await w.serves(name) == "two"


async def test_a_refused_call_takes_back_its_new_service_and_a_concurrent_call_using_it_is_told_to_call_again(
        world: World) -> None:
    """Call A makes service `api` and is then refused (a broken Procfile); call B, meanwhile, found `api` (A's) and
    got as far as creating its deployment. A takes `api` back under the service's lock, so B finds it gone: B is
    refused with "call deploy_app again" and writes nothing (before this change A left `api` behind, with B's
    settings and A's env), and B's repeat makes `api` anew and deploys it."""
    w = world
    name = w.name("race")
    assert (await w.deploy(name, env_vars={"MESSAGE": "one"})).status == "live"
    broken = git_repo(w.repo.parent / f"broken-{uuid.uuid4().hex[:6]}", {**APP_FILES, "Procfile": "web python3\n"})
    reached: list[uuid.UUID] = []
    b_found_it, a_done = asyncio.Event(), asyncio.Event()

    async def breaker(service_id: uuid.UUID, config_hash: str, project_name: str, service_name: str) -> None:
        reached.append(service_id)  # the last step before the plan (A's refusal) and the deployment (B's)
        if len(reached) == 1:
            await b_found_it.wait()
        else:
            b_found_it.set()
            await a_done.wait()

    w.deploys.breaker = breaker  # type: ignore[attr-defined]

    async def call_a() -> None:
        try:
            await w.deploy(name, "api", repo=broken, env_vars={"A_ONLY": "a"})
        finally:
            a_done.set()

    a = asyncio.ensure_future(call_a())
    while not reached:
        await asyncio.sleep(0.01)
    with pytest.raises(Conflict, match="was removed while this deploy_app was setting it up") as told:
        await asyncio.wait_for(w.deploy(name, "api", wait=0, env_vars={"MESSAGE": "b"}), 30)
    assert told.value.fix == "call deploy_app again"
    with pytest.raises(BuildPlanError):
        await a
    assert reached[0] == reached[1]  # B had found the service A made
    assert sorted(await w.services(name)) == ["web"]
    w.deploys.breaker = None  # type: ignore[attr-defined]
    again = await w.deploy(name, "api", env_vars={"MESSAGE": "b"})
    assert again.status == "live" and await w.serves(name, "api") == "b"
    assert (await w.stored(name, "api"))[0] == {"MESSAGE": "b"}  # nothing of A's
