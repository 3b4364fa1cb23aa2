"""What deploy_app says about reuse, and which rows update_env_vars retires (overhead6).

- Two identical deploy_app calls at once make one deployment; the call that joined the other's says `reused: true`
  also when it waited for the deployment (deploy_app's default): the waited view is rendered from the record, which
  does not know which call made it, and said `reused: false` to both.
- update_env_vars retires the no-op hashes of the rows a later call could still reuse (the live deployment, those on
  their way), not the whole history of the service on every env change; a repeat of a superseded deployment's
  arguments still deploys.

Over a real PostgreSQL, Platform over a DeployService on the fake remote provider (tests/replicas/test_leases.py)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from inkmcp.core import platform as platform_module
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.views import TERMINAL
from inkmcp.store.db import Store
from inkmcp.store.models import Deployment
from tests.replicas import test_leases as _leases
from tests.support import git_repo

embedded_pg_factory = _leases.embedded_pg_factory
control_pg = _leases.control_pg
store = _leases.store
replicas = _leases.replicas


def platform_of(store: Store, deploys: DeployService) -> Platform:
    return Platform(store.sessionmaker, accounts=AccountService(store.sessionmaker, LimitDefaults()),
                    audit=AuditLog(store.sessionmaker), projects=deploys._projects, envs=deploys._envs,
                    databases=deploys._databases, deploys=deploys, compute=deploys._compute,
                    max_env_bytes=65536)  # fmt: skip


async def hashes(store: Store, project_name: str) -> dict[uuid.UUID, tuple[str, str]]:
    """deployment id -> (status, config_hash), of the project's deployments."""
    from inkmcp.store.models import Project, Service

    async with store.sessionmaker() as s:
        rows = (await s.execute(
            select(Deployment.id, Deployment.status, Deployment.config_hash)
            .join(Service, Service.id == Deployment.service_id).join(Project, Project.id == Service.project_id)
            .where(Project.name == project_name))).all()  # fmt: skip
    return {r[0]: (r[1], r[2]) for r in rows}


async def test_the_call_that_joined_an_identical_deployment_says_reused_after_waiting(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path
) -> None:
    a = replicas("a")
    platform = platform_of(store, a)
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")
    for round_, env in enumerate(({"A": "1"}, {"A": "2"}, {"A": "3"})):  # a new project, then an existing service
        req = DeployRequest(repo_url=str(repo), project_name="twin", env_vars=env)
        views = await asyncio.gather(*(platform.deploy_app(p, req, wait_seconds=60) for _ in range(2)))
        assert {v.deployment_id for v in views} == {views[0].deployment_id}, views  # one deployment
        assert [v.status for v in views] == ["live", "live"], views
        assert sorted(v.reused for v in views) == [False, True], (round_, views)  # and one call made it
    again = await platform.deploy_app(p, req, wait_seconds=60)  # a repeat after it is live: reused at once
    assert again.reused and again.deployment_id == views[0].deployment_id


async def test_update_env_vars_retires_only_what_could_be_reused(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path
) -> None:
    a = replicas("a")
    platform = platform_of(store, a)
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")

    async def deploy(value: str) -> uuid.UUID:
        view = await platform.deploy_app(p, DeployRequest(repo_url=str(repo), project_name="envs",
                                                          env_vars={"A": value}), wait_seconds=60)
        assert view.status == "live", view
        return uuid.UUID(view.deployment_id)

    first, second = await deploy("1"), await deploy("2")
    before = await hashes(store, "envs")
    assert before[first][0] == "superseded" and before[second][0] == "live"

    await platform.update_env_vars(p, "envs", {"A": "1"}, "web")  # the live one now runs with A=1
    after = await hashes(store, "envs")
    assert after[first] == before[first]  # history left as it was
    assert after[second][0] == "live" and after[second][1] != before[second][1]  # the live one's is retired
    # a repeat of the superseded deployment's arguments (A=1: the same hash as `first`) deploys: its newest row of
    # that hash is terminal and not the live one
    third = await deploy("1")
    assert third not in (first, second)
    # and a repeat of the live one's arguments is the no-op
    view = await platform.deploy_app(p, DeployRequest(repo_url=str(repo), project_name="envs", env_vars={"A": "1"}),
                                     wait_seconds=60)
    assert view.reused and uuid.UUID(view.deployment_id) == third


def test_the_retired_statuses_are_the_terminal_ones() -> None:
    sql = str(platform_module._RETIRE_NOOP_HASHES)
    listed = set(re.findall(r"'(\w+)'", sql.split("NOT IN", 1)[1]))
    assert listed == set(TERMINAL)
