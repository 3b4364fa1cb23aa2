"""Issue 8 (overhead6): deploy_app records a new project and its first service in one transaction of two statements
sent at once (`DeployService._new_project_and_service`: the account's row lock, then one insert statement) instead of
ProjectService.ensure_with's ORM transaction (~11 round trips). It makes the same rows, under the same lock and the
same limits; whenever it cannot insert (the name taken, by this account or another; a limit; the account gone) it
inserts nothing and deploy_app takes ensure_with's path, which refuses as before.

Over a real PostgreSQL, with `DeployService`s standing for replicas (tests/replicas/test_leases.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from inkmcp.core.accounts import AccountService
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.limits import LimitDefaults, LimitReached
from inkmcp.core.principal import Principal
from inkmcp.errors import Conflict
from inkmcp.store.db import Store
from inkmcp.store.models import Project, Service
from tests.replicas import test_leases as _leases
from tests.support import git_repo

embedded_pg_factory = _leases.embedded_pg_factory
control_pg = _leases.control_pg
store = _leases.store
replicas = _leases.replicas

SKIP = ("id", "project_id", "name", "created_at", "updated_at")


async def principal(store: Store) -> Principal:
    return await AccountService(store.sessionmaker, LimitDefaults()).principal_for(f"acct-{uuid.uuid4().hex[:6]}", "t")


async def rows_of(store: Store, project_name: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    async with store.sessionmaker() as s:
        project = (await s.execute(select(Project).where(Project.name == project_name))).scalar_one_or_none()
        if project is None:
            return None
        services = (await s.execute(select(Service).where(Service.project_id == project.id))).scalars().all()
        columns = {c.key for c in Project.__mapper__.column_attrs} - set(SKIP)
        service_columns = {c.key for c in Service.__mapper__.column_attrs} - set(SKIP)
        return ({k: getattr(project, k) for k in columns},
                [{k: getattr(svc, k) for k in service_columns} for svc in services])


async def count_projects(store: Store) -> int:
    async with store.sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(Project))).scalar_one()


async def test_the_fast_path_makes_the_rows_ensure_with_makes(
    store: Store, replicas: Callable[..., DeployService], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = replicas("a")
    repo = git_repo(tmp_path / "app", {"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    p = await principal(store)
    calls: list[Any] = []
    real = a._new_project_and_service

    async def fast(*args: Any, **kw: Any) -> Any:
        calls.append(result := await real(*args, **kw))
        return result

    monkeypatch.setattr(a, "_new_project_and_service", fast)
    req = {"repo_url": str(repo), "service_name": "api", "port": 8080, "env_vars": {"MESSAGE": "hi"}}
    view = await a.deploy(p, DeployRequest(project_name="quick", **req))
    assert calls and calls[0] is not None  # taken: one transaction made the project and its service
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"

    async def none(*args: Any, **kw: Any) -> None:
        return None

    monkeypatch.setattr(a, "_new_project_and_service", none)  # ensure_with's path, as before
    view = await a.deploy(p, DeployRequest(project_name="slow", **req))
    assert (await a.wait(p, uuid.UUID(view.deployment_id), timeout=60)).status == "live"
    quick, slow = await rows_of(store, "quick"), await rows_of(store, "slow")
    assert quick is not None and slow is not None
    # the same columns after the same deploy (the provider's refs differ only by their ids)
    for (project, services) in (quick, slow):
        project.pop("provider_ref")
        for svc in services:
            svc.pop("provider_ref"), svc.pop("live_deployment_id"), svc.pop("url")
    assert quick == slow
    assert quick[1][0]["settings"]["port"] == 8080 and quick[0]["repo_url"] == str(repo)


async def test_a_url_with_credentials_is_stored_as_ensure_with_stores_it(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a = replicas("a")
    p = await principal(store)
    url = "https://user:s3cret-token@git.example/app.git"
    made = await a._new_project_and_service(p, "sealed", DeployRequest(repo_url=url), uuid.uuid4())
    assert made is not None
    project, created, (service_id, new) = made
    assert created and new and project.name == "sealed" and "s3cret" not in (project.repo_url or "")
    async with store.sessionmaker() as s:
        svc = await s.get(Service, service_id)
        stored = await s.get(Project, project.id)
        assert svc is not None and stored is not None
        assert "s3cret" not in svc.repo_url and "s3cret" not in (stored.repo_url or "")
        assert svc.repo_url_enc is not None and a._projects.fetch_url(svc) == url
        assert (svc.service_type, svc.mode, svc.provider_ref, stored.account_id) == (
            "webapp", "persistent", {}, p.account_id)


async def test_what_stands_in_the_way_inserts_nothing_and_ensure_with_refuses_as_before(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a = replicas("a")
    p, other = await principal(store), await principal(store)
    req = DeployRequest(repo_url="https://git.example/app.git")
    assert await a._new_project_and_service(other, "Taken", req, uuid.uuid4()) is not None
    before = await count_projects(store)

    # the name held by another account (any case): nothing, then ensure_with's Conflict naming a free name
    assert await a._new_project_and_service(p, "taken", req, uuid.uuid4()) is None
    with pytest.raises(Conflict, match="is taken"):
        await a._projects.ensure(p, "taken", req.repo_url)
    # this account's own project of that name: nothing here (the project exists: ensure_with finds it)
    assert await a._new_project_and_service(other, "taken", req, uuid.uuid4()) is None

    # the account's project limit (its own override), and a limit of 0 services per project
    async with store.sessionmaker.begin() as s:
        await s.execute(text("UPDATE accounts SET max_projects = 1 WHERE id = :id"), {"id": other.account_id})
    assert await a._new_project_and_service(other, "second", req, uuid.uuid4()) is None
    with pytest.raises(LimitReached, match="1 projects"):
        await a._projects.ensure(other, "second", req.repo_url)
    a._projects.limits = LimitDefaults(max_services_per_project=0)
    assert await a._new_project_and_service(p, "noservice", req, uuid.uuid4()) is None
    assert await count_projects(store) == before


async def test_concurrent_calls_for_one_new_name_make_one_project(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    a, b = replicas("a"), replicas("b")
    p = await principal(store)
    req = DeployRequest(repo_url="https://git.example/app.git")
    results = await asyncio.gather(*(d._new_project_and_service(p, "race", req, uuid.uuid4())
                                     for d in (a, b, a, b)))  # fmt: skip
    assert sum(r is not None for r in results) == 1
    made = await rows_of(store, "race")
    assert made is not None and len(made[1]) == 1


async def test_the_project_limit_holds_for_concurrent_new_projects(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    """The count runs after the account's row lock, on a snapshot of its own: four calls at once for four names
    with room for two make two projects."""
    a, b = replicas("a"), replicas("b")
    p = await principal(store)
    async with store.sessionmaker.begin() as s:
        await s.execute(text("UPDATE accounts SET max_projects = 2 WHERE id = :id"), {"id": p.account_id})
    req = DeployRequest(repo_url="https://git.example/app.git")
    results = await asyncio.gather(*(d._new_project_and_service(p, f"many-{i}", req, uuid.uuid4())
                                     for i, d in enumerate((a, b, a, b))))  # fmt: skip
    assert sum(r is not None for r in results) == 2
    async with store.sessionmaker() as s:
        n = (await s.execute(select(func.count()).select_from(Project)
                             .where(Project.account_id == p.account_id))).scalar_one()
    assert n == 2


async def test_the_project_claim_is_a_fenced_compare_and_set(
    store: Store, replicas: Callable[..., DeployService]
) -> None:
    """core's `record.claim_project` (overhead6, the Coolify provider's project create without a lookup): of two
    pipelines of one project's services claiming at once, one writes its ref and the other gets that ref back; a ref
    recording a project, a create in flight or a create answered with an error is never overwritten; a pipeline
    whose lease was taken writes nothing."""
    from inkmcp.build.plan import Mode, ServiceType
    from inkmcp.core.leases import LeaseLost

    a, b = replicas("a"), replicas("b")
    web = await _leases.new_service(store, a)
    async with store.sessionmaker() as s:
        project_id = (await s.get(Service, web)).project_id  # type: ignore[union-attr]
    api = await a._ensure_service(project_id, DeployRequest(repo_url="https://git.example/app.git",
                                                            service_name="api"))  # fmt: skip
    (d1, l1), (d2, l2) = [await d._create_or_reuse(sid, "0" * 40, uuid.uuid4().hex, _leases.PLAN, ServiceType.webapp,
                                                   Mode.persistent) for d, sid in ((a, web), (b, api))]  # fmt: skip
    rec1, rec2 = a._recorder(d1, web, project_id, l1), b._recorder(d2, api, project_id, l2)
    name = a._compute.name
    mine, theirs = {"pending": {"project": 1.0}}, {"pending": {"project": 2.0}}
    results = await asyncio.gather(rec1.claim_project(mine), rec2.claim_project(theirs))
    assert sorted(won for won, _ in results) == [False, True], results
    winner = mine if results[0][0] else theirs
    assert [ref for won, ref in results if not won] == [winner]  # the loser sees the winner's ref
    async with store.sessionmaker() as s:
        assert (await s.get(Project, project_id)).provider_ref[name] == winner  # type: ignore[union-attr]

    for stored in ({"project_uuid": "p1", "environment_uuid": "e1"}, {"create_answered_error": True}, winner):
        async with store.sessionmaker.begin() as s:
            await s.execute(text("UPDATE projects SET provider_ref = jsonb_build_object(CAST(:n AS text), "
                                 "CAST(:r AS jsonb)) WHERE id = :id"),
                            {"n": name, "r": json.dumps(stored), "id": project_id})  # fmt: skip
        assert await rec1.claim_project({"pending": {"project": 3.0}}) == (False, stored)

    async with store.sessionmaker.begin() as s:  # a free ref again, and l1's lease taken by b
        await s.execute(text("UPDATE projects SET provider_ref = '{}'::jsonb WHERE id = :id"), {"id": project_id})
    await _leases.set_lease(store, d1, "a", -1, 1)
    assert await b._leases.claim(d1) is not None
    with pytest.raises(LeaseLost):
        await rec1.claim_project(mine)
    async with store.sessionmaker() as s:
        assert (await s.get(Project, project_id)).provider_ref == {}  # type: ignore[union-attr]
