"""Per-account limits hit exactly at the limit under concurrent calls; tiers and tenant connections."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import func, select, update

from inkmcp.core.accounts import LimitOverrides
from inkmcp.core.databases import DatabaseRequest
from inkmcp.core.deployments import DeployRequest
from inkmcp.core.limits import LimitReached
from inkmcp.errors import InvalidArgument
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.postgres import DEFAULT_CONNECTION_LIMITS, database_name_for
from inkmcp.store.models import Database, Deployment, Project, Service


def _split(results: list[object]) -> tuple[list[object], list[BaseException]]:
    return ([r for r in results if not isinstance(r, BaseException)],
            [r for r in results if isinstance(r, BaseException)])


def _roles(core, project_ids: list) -> set[str]:
    names = [database_name_for(pid.hex) for pid in project_ids]
    with psycopg.connect(core.tenant_pg.url(driver=None).get_secret_value()) as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,)).fetchall()
    return {r[0] for r in rows}


async def test_service_limit_is_exact_under_concurrent_creation(make_core) -> None:
    core = make_core(max_services_per_project=4)
    acct = await core.account("svc")
    name = core.name("many")
    project, _ = await core.projects.ensure(acct, name)
    reqs = [DeployRequest(repo_url="https://git.example/a.git", service_name=f"s{i}") for i in range(12)]
    results = await asyncio.gather(*[core.deploys._ensure_service(project.id, r) for r in reqs],
                                   return_exceptions=True)
    made, refused = _split(results)
    assert len(made) == 4 and len(refused) == 8, results
    assert all(isinstance(e, LimitReached) for e in refused), refused
    assert "account limit reached: 4 services per project (INKMCP_MAX_SERVICES_PER_PROJECT)" in str(refused[0])
    async with core.store.session() as s:
        n = (await s.execute(select(func.count()).select_from(Service).where(Service.project_id == project.id)))
        assert n.scalar_one() == 4
    # an existing service is redeployable at the limit
    names = {r.service_name for r, res in zip(reqs, results, strict=True) if not isinstance(res, BaseException)}
    again = await core.deploys._ensure_service(project.id, DeployRequest(repo_url="https://git.example/b.git",
                                                                         service_name=sorted(names)[0]))
    assert again in made
    with pytest.raises(LimitReached):  # and deploy_app's early check agrees
        await core.projects.precheck_deploy(acct, name, "one-more")


async def test_concurrent_builds_limit_is_exact_and_frees_when_a_build_ends(make_core) -> None:
    core = make_core(max_concurrent_builds=2)
    acct = await core.account("builder")
    services = [await core.service(acct, core.name(f"b{i}")) for i in range(6)]
    results = await asyncio.gather(*[core.deployment(sid) for sid in services], return_exceptions=True)
    made, refused = _split(results)
    assert len(made) == 2 and len(refused) == 4, results
    assert all(isinstance(e, LimitReached) for e in refused), refused
    assert str(refused[0]).startswith(
        "account limit reached: 2 concurrent builds (INKMCP_MAX_CONCURRENT_BUILDS_PER_ACCOUNT); "
        "wait for a deployment to finish (wait_for_deployment) or ask the operator to raise it"
    )
    other = await core.account("neighbour")  # another account is not affected
    await core.deployment(await core.service(other, core.name("n")))
    async with core.store.session() as s, s.begin():
        await s.execute(update(Deployment).where(Deployment.id == made[0]).values(status="live"))
    free_sid = next(sid for sid, r in zip(services, results, strict=True) if isinstance(r, BaseException))
    await core.deployment(free_sid)  # one slot came back
    with pytest.raises(LimitReached):
        await core.deployment(free_sid)


async def test_tier_not_granted_is_refused_with_the_allowed_tiers(make_core) -> None:
    core = make_core()
    acct = await core.account("tiers")
    project, _ = await core.projects.ensure(acct, core.name("db"))
    with pytest.raises(InvalidArgument) as err:
        await core.databases.ensure(project.id, DatabaseRequest(tier=Tier.standard))
    assert "database tier 'standard' is not available to this account; allowed tiers: free." in err.value.render()
    assert err.value.argument == "tier"
    assert _roles(core, [project.id]) == set()  # nothing was provisioned
    await core.accounts.set_limits(acct.account_name,
                                   LimitOverrides(database_tiers=[Tier.free, Tier.standard]))
    info = await core.databases.ensure(project.id, DatabaseRequest(tier=Tier.standard))
    assert info.tier == "standard" and info.created
    with psycopg.connect(core.tenant_pg.url(driver=None).get_secret_value()) as conn:
        limit = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (info.user,)).fetchone()[0]
    assert limit == DEFAULT_CONNECTION_LIMITS[Tier.standard]


async def test_database_limit_is_exact_under_concurrent_provisioning(make_core) -> None:
    core = make_core(max_databases=2)
    acct = await core.account("dbs")
    projects = [(await core.projects.ensure(acct, core.name(f"d{i}")))[0] for i in range(5)]
    results = await asyncio.gather(*[core.databases.ensure(p.id, DatabaseRequest()) for p in projects],
                                   return_exceptions=True)
    made, refused = _split(results)
    assert len(made) == 2 and len(refused) == 3, results
    assert all(isinstance(e, LimitReached) for e in refused), refused
    assert "account limit reached: 2 databases (INKMCP_MAX_DATABASES_PER_ACCOUNT)" in str(refused[0])
    async with core.store.session() as s:
        n = await s.execute(select(func.count()).select_from(Database).join(Project)
                            .where(Project.account_id == acct.account_id))
        assert n.scalar_one() == 2
    assert len(_roles(core, [p.id for p in projects])) == 2  # refused ones created no role either


async def test_role_connection_limit_is_enforced_by_postgres(make_core) -> None:
    core = make_core()
    acct = await core.account("conns")
    project, _ = await core.projects.ensure(acct, core.name("c"))
    info = await core.databases.ensure(project.id, DatabaseRequest())
    limit = DEFAULT_CONNECTION_LIMITS[Tier.free]
    url = info.url.get_secret_value()
    conns = []
    try:
        for _ in range(limit):
            conns.append(await psycopg.AsyncConnection.connect(url))
        with pytest.raises(psycopg.OperationalError, match="too many connections for role"):
            conns.append(await psycopg.AsyncConnection.connect(url))
    finally:
        for c in conns:
            await c.close()


async def test_wrong_connection_limits_of_existing_roles_are_corrected(make_core) -> None:
    core = make_core()
    acct = await core.account("recon")
    project, _ = await core.projects.ensure(acct, core.name("r"))
    info = await core.databases.ensure(project.id, DatabaseRequest())
    admin = core.tenant_pg.url(driver=None).get_secret_value()
    with psycopg.connect(admin, autocommit=True) as conn:  # as made by an older version: free = 50
        conn.execute(f'ALTER ROLE "{info.user}" CONNECTION LIMIT 50')
    assert await core.databases.reconcile_connection_limits() >= 1
    with psycopg.connect(admin) as conn:
        got = conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (info.user,)).fetchone()[0]
    assert got == DEFAULT_CONNECTION_LIMITS[Tier.free]
    ensure = core.databases._postgres.ensure_connection_limit
    assert await ensure(info.user, Tier.free) is False  # idempotent: nothing left to change
