"""deploy_app with a provider that needs no checkout here (Coolify; the fake stands for it): the fetch runs beside
the project's and a new service's records (one transaction), so a fetch that fails must take back exactly what this
call recorded and nothing else: a new project and service go, an existing project stays, an existing service keeps
its settings and env (it is updated only after its source was fetched).

Over a real PostgreSQL and real git repositories, with the replica factory of tests/replicas/test_leases.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from inkmcp.build.plan import Mode, ServiceType
from inkmcp.core.accounts import AccountService
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.leases import LeaseLost
from inkmcp.core.limits import LimitDefaults
from inkmcp.errors import InkError
from inkmcp.providers.compute.base import RefScope, Step
from inkmcp.store.db import Store
from inkmcp.store.models import EnvVar, Project, Service
from tests.replicas import test_leases as _leases
from tests.support import git_repo

embedded_pg_factory = _leases.embedded_pg_factory
control_pg = _leases.control_pg
store = _leases.store
replicas = _leases.replicas


async def rows(db: Store, name: str) -> tuple[Project | None, list[Service], list[EnvVar]]:
    async with db.sessionmaker() as s:
        project = (await s.execute(select(Project).where(Project.name == name))).scalar_one_or_none()
        if project is None:
            return None, [], []
        services = list((await s.execute(select(Service).where(Service.project_id == project.id))).scalars())
        envs = list((await s.execute(select(EnvVar).where(EnvVar.project_id == project.id))).scalars())
        return project, services, envs


async def test_a_failed_fetch_takes_back_only_what_the_call_recorded(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path
) -> None:
    a = replicas("a")
    assert not a._compute.needs_checkout
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")
    mirrors = a._compute.work_dir / "mirrors"  # type: ignore[attr-defined]

    # a new project and service, a ref that does not exist: nothing is left, not even the workspace it fetched into
    before = set(mirrors.iterdir()) if mirrors.exists() else set()
    try:
        await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="fresh", ref="no-such-branch",
                                        env_vars={"SECRET": "one"}))
        raise AssertionError("the deploy should have failed")
    except InkError as e:
        assert "no-such-branch" in e.render()
    assert await rows(store, "fresh") == (None, [], [])
    assert (set(mirrors.iterdir()) if mirrors.exists() else set()) == before

    # the project and its service deployed; then a bad ref for a second, new service and for the first one
    view = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="kept", env_vars={"SECRET": "one"}))
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"
    project, services, envs = await rows(store, "kept")
    assert project is not None and [s.name for s in services] == ["web"]
    settings = services[0].settings
    for service_name in ("second", "web"):
        try:
            await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="kept", service_name=service_name,
                                            ref="no-such-branch", start_command="python other.py",
                                            env_vars={"SECRET": "two"}))
            raise AssertionError("the deploy should have failed")
        except InkError as e:
            assert "no-such-branch" in e.render()
        again, services_now, envs_now = await rows(store, "kept")
        assert again is not None and again.id == project.id
        assert [s.name for s in services_now] == ["web"] and services_now[0].settings == settings
        assert [(e.scope, e.key, e.value_enc) for e in envs_now] == [(e.scope, e.key, e.value_enc) for e in envs]
    assert list(a._checkouts.iterdir()) == []


async def test_a_project_made_meanwhile_by_another_call_is_fetched_into_its_own_workspace(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path
) -> None:
    """precheck saw no project; another call made it before this one's ensure: this call fetches again into that
    project's workspace (its proposed one is removed) and deploys the service there."""
    a = replicas("a")
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")
    real = a._projects.precheck_deploy

    async def blind(*args: object) -> object:
        seen = await real(*args)  # type: ignore[arg-type]
        await a._projects.ensure(p, "raced", repo_url=str(repo))  # the other call, right after the precheck
        return seen

    a._projects.precheck_deploy = blind  # type: ignore[method-assign]
    view = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="raced"))
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"
    project, services, _ = await rows(store, "raced")
    assert project is not None and [s.name for s in services] == ["web"]
    mirrors = a._compute.work_dir / "mirrors"  # type: ignore[attr-defined]
    assert sorted(d.name for d in mirrors.iterdir()) == [str(project.id)]


async def test_refs_of_several_rows_and_a_step_are_one_fenced_write(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    """`record.many` (the Coolify provider's coalesced ref writes): every scope's ref in one statement, with a step
    when asked; a replica whose lease was taken over writes nothing of it (LeaseLost), and the terminal steps stay
    core's."""
    a = replicas("a")
    sid = await _leases.new_service(store, a)
    dep_id, lease = await a._create_or_reuse(sid, "1" * 40, "h", _leases.PLAN, ServiceType.webapp, Mode.persistent)
    assert lease is not None
    async with store.sessionmaker() as s:
        svc = await s.get(Service, sid)
        assert svc is not None
        project_id = svc.project_id
    record = a._recorder(dep_id, sid, project_id, lease)
    name = a._compute.name
    await record.many({RefScope.project: {"p": 1}, RefScope.service: {"s": 2}, RefScope.deployment: {"d": 3}})
    await record.many({RefScope.service: {"s": 4}, RefScope.deployment: {"d": 5}}, (Step.switching, "traffic"))
    async with store.sessionmaker() as s:
        project = await s.get(Project, project_id)
        service = await s.get(Service, sid)
        assert project is not None and service is not None
        assert project.provider_ref[name] == {"p": 1} and service.provider_ref[name] == {"s": 4}
    dep = await _leases.row(store, dep_id)
    assert dep.provider_ref[name] == {"d": 5} and dep.status == Step.switching.value
    assert (await _leases.events(store, dep_id))[-1] == (Step.switching.value, "traffic")
    # overhead9: several steps in one write (a held `building` and `switching`): an event each, in order
    await record.many({RefScope.deployment: {"d": 6}}, [(Step.building, "built"), (Step.switching, "traffic 2")])
    dep = await _leases.row(store, dep_id)
    assert dep.provider_ref[name] == {"d": 6} and dep.status == Step.switching.value
    assert (await _leases.events(store, dep_id))[-2:] == [(Step.building.value, "built"),
                                                         (Step.switching.value, "traffic 2")]
    await record.many({}, [(Step.building, "again")])  # steps without refs: the refs stay as they are
    assert (await _leases.row(store, dep_id)).provider_ref[name] == {"d": 6}
    with pytest.raises(ValueError):
        await record.many({}, (Step.live, "no"))
    with pytest.raises(ValueError):
        await record.many({}, [(Step.building, "x"), (Step.failed, "no")])
    assert (await _leases.events(store, dep_id))[-1] == (Step.building.value, "again")
    await _leases.set_lease(store, dep_id, "b", 30, lease.epoch + 1)  # replica b took it over
    with pytest.raises(LeaseLost):
        await record.many({RefScope.service: {"s": 6}}, (Step.building, "late"))
    async with store.sessionmaker() as s:
        service = await s.get(Service, sid)
        assert service is not None and service.provider_ref[name] == {"s": 4}
    assert (await _leases.events(store, dep_id))[-1] == (Step.building.value, "again")
