"""Issue 8 (overhead8): a new deployment's pipeline reads its first rows (the deployment, its service and project,
the service's older deployments not yet terminal) and its env (the agent's values, the add-ons' variables) in the
transaction that creates it (`DeployService._create_with_reads`), after that transaction's writes, instead of in
three statements on three pool connections right after deploy_app's answer. What the release gets must be what
those reads would have given: the call's own env vars and the project-wide ones, the service's recorded refs, and
an older deployment of the service still on its way is waited for (then everything is read again).

Over a real PostgreSQL, with `DeployService`s standing for replicas (tests/replicas/test_leases.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from inkmcp.build.plan import Mode, ServiceType
from inkmcp.core import databases as databases_module
from inkmcp.core import deployments as deployments_module
from inkmcp.core import envvars as envvars_module
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.envvars import PROJECT_SCOPE
from inkmcp.providers.compute.base import ReleaseResult
from inkmcp.store.db import Store
from inkmcp.store.models import Project, Service
from inkmcp.store.statements import StatementPool
from tests.replicas import test_leases as _leases
from tests.replicas.conftest import wait_for
from tests.replicas.test_deploy_path_new_project import principal
from tests.support import git_repo

embedded_pg_factory = _leases.embedded_pg_factory
control_pg = _leases.control_pg
store = _leases.store
replicas = _leases.replicas

FIRST_READS = {deployments_module._LOAD_FIRST_SQL: "rows and older deployments", deployments_module._LOAD_SQL: "rows",
               envvars_module._RESOLVE: "env values", databases_module._ROWS: "add-ons"}


def watch(monkeypatch: pytest.MonkeyPatch, a: DeployService) -> tuple[list[str], list[dict[str, Any]]]:
    """(the first-read statements sent on their own, what each release was given)."""
    reads: list[str] = []
    releases: list[dict[str, Any]] = []
    real_fetch = StatementPool.fetch

    async def fetch(pool: Any, query: str, params: Any = ()) -> Any:
        if query in FIRST_READS:
            reads.append(FIRST_READS[query])
        return await real_fetch(pool, query, params)

    real_release = a._compute.release

    async def release(request: Any, progress: Any, record: Any) -> ReleaseResult:
        releases.append({"deployment": request.deployment_id, "service_ref": dict(request.key.service_ref),
                         "env": {k: v.get_secret_value() for k, v in request.env.items()}})
        return await real_release(request, progress, record)  # type: ignore[no-any-return]

    monkeypatch.setattr(StatementPool, "fetch", fetch)
    monkeypatch.setattr(a._compute, "release", release)
    return reads, releases


async def test_a_new_deployments_first_reads_come_with_the_transaction_that_made_it(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = replicas("a")
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await principal(store)
    reads, releases = watch(monkeypatch, a)

    # a new project and service: no read of its own between deploy_app's answer and the release (deploy_app's own
    # reads, before the deployment is made, are not the pipeline's: the list starts when it answers)
    view = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="pre", env_vars={"MESSAGE": "one"}))
    reads.clear()
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"
    assert reads == [] and len(releases) == 1, (reads, releases)
    assert releases[0]["deployment"] == view.deployment_id and releases[0]["env"]["MESSAGE"] == "one"

    # a redeploy with a changed value, after a project-wide value and a provider ref were recorded: the release
    # gets the value this call wrote (in the same transaction), the project-wide one and the ref
    project_id, service_id = await ids_of(store, "pre")
    async with store.sessionmaker.begin() as s:
        await a._envs.apply(s, project_id, PROJECT_SCOPE, {"SHARED": "yes"})
    await a._recorder(uuid.UUID(view.deployment_id), service_id, project_id)("service", {"note": "recorded"})
    view2 = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="pre", env_vars={"MESSAGE": "two"}))
    reads.clear()
    assert (await a.wait(p, uuid.UUID(view2.deployment_id), timeout=60)).status == "live"
    assert reads == [] and len(releases) == 2, (reads, releases)
    assert releases[1]["deployment"] == view2.deployment_id
    assert {k: releases[1]["env"].get(k) for k in ("MESSAGE", "SHARED")} == {"MESSAGE": "two", "SHARED": "yes"}
    assert releases[1]["service_ref"].get("note") == "recorded"


async def test_an_older_deployment_on_its_way_read_by_that_transaction_is_waited_for(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The transaction's read of the service's older deployments (after its locks) finds one still on its way: the
    pipeline waits for it, then reads its rows and env again (what the older release recorded meanwhile)."""
    a = replicas("a")
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await principal(store)
    view = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="older"))
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"
    project_id, service_id = await ids_of(store, "older")
    # a deployment of the service whose pipeline does not run yet (claimed by this replica: not taken over)
    older, older_lease = await a._create_or_reuse(service_id, "6" * 40, "h6", _leases.PLAN, ServiceType.webapp,
                                                  Mode.persistent)  # fmt: skip
    assert older_lease is not None
    reads, releases = watch(monkeypatch, a)
    view2 = await a.deploy(p, DeployRequest(repo_url=str(repo), project_name="older", env_vars={"MESSAGE": "two"}))
    reads.clear()
    dep = uuid.UUID(view2.deployment_id)

    async def waiting() -> bool:
        return ("queued", "waiting for the previous deployment of this service") in await _leases.events(store, dep)

    await wait_for(waiting, 10, "the new deployment waiting for the older one")
    assert releases == []
    await a._recorder(older, service_id, project_id, older_lease)("service", {"note": "by the older release"})
    async with store.sessionmaker.begin() as s:
        await a._envs.apply(s, project_id, str(service_id), {"LATE": "yes"})
    await a._record_live(older_lease, None)
    assert (await a.wait(p, dep, timeout=60)).status == "live"
    assert len(releases) == 1 and releases[0]["service_ref"].get("note") == "by the older release", releases
    assert releases[0]["env"].get("LATE") == "yes" and "rows" in reads, (reads, releases)


async def ids_of(store: Store, project_name: str) -> tuple[uuid.UUID, uuid.UUID]:
    async with store.sessionmaker() as s:
        project = (await s.execute(select(Project).where(Project.name == project_name))).scalar_one()
        svc = (await s.execute(select(Service).where(Service.project_id == project.id))).scalar_one()
        return project.id, svc.id

