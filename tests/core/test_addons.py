"""Add-ons through core (issue 9 item 6): DATABASE_URL plus PG*, Redis as `database={"type":"redis"}` with
REDIS_URL, both for one project, quotas, credentials, deletion, and migration 0007 over real servers."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import psycopg
import pytest
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from inkmcp.core.databases import DatabaseRequest, postgres_env
from inkmcp.core.limits import LimitReached
from inkmcp.errors import InvalidArgument
from inkmcp.providers.database.base import DatabaseCredentials
from inkmcp.providers.database.redis import RedisProvider, RespConnection
from inkmcp.store.embedded import EmbeddedPostgres
from tests.core.test_addons_redis import redis_provider
from tests.store.conftest import create_database


@pytest.fixture
async def redis() -> AsyncIterator[RedisProvider]:
    async with redis_provider() as provider:
        yield provider


def _connect_with_only(env: dict[str, SecretStr], query: str) -> str:
    """Run `query` in a fresh Python whose environment holds only `env`, as an app reading PG* would:
    psycopg.connect("") takes everything from the libpq variables."""
    clean = {k: v.get_secret_value() for k, v in env.items()} | {"PATH": os.environ["PATH"]}
    code = f"import psycopg; print(psycopg.connect('', connect_timeout=5).execute({query!r}).fetchone()[0])"
    proc = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, timeout=30,
                          check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


async def test_postgres_gives_database_url_and_pg_variables_that_connect_alone(make_core) -> None:
    core = make_core()
    acct = await core.account("pg")
    name = core.name("pgvars")
    project, _ = await core.projects.ensure(acct, name)
    info = await core.databases.ensure(project.id, DatabaseRequest())
    env = await core.databases.env_for(project.id)
    assert set(env) == {"DATABASE_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"}
    url = urlsplit(env["DATABASE_URL"].get_secret_value())
    assert (env["PGHOST"].get_secret_value(), int(env["PGPORT"].get_secret_value())) == (url.hostname, url.port)
    assert env["PGUSER"].get_secret_value() == url.username == info.user
    assert env["PGPASSWORD"].get_secret_value() == info.password.get_secret_value()
    assert env["PGDATABASE"].get_secret_value() == url.path.lstrip("/") == info.database
    pg_only = {k: v for k, v in env.items() if k != "DATABASE_URL"}
    who = await asyncio.to_thread(_connect_with_only, pg_only, "SELECT current_user || '@' || current_database()")
    assert who == f"{info.user}@{info.database}"


def test_url_options_with_a_libpq_variable_become_one() -> None:
    creds = DatabaseCredentials(host="ep-x.neon.tech", port=5432, database="app", user="u", password=SecretStr("p"),
                                options={"sslmode": "require", "options": "endpoint=ep-x", "foo": "bar"})
    env = postgres_env(creds)
    assert env["PGSSLMODE"].get_secret_value() == "require"
    assert env["PGOPTIONS"].get_secret_value() == "endpoint=ep-x"
    assert "sslmode=require" in env["DATABASE_URL"].get_secret_value()
    assert not any("foo" in k.lower() for k in env)


async def test_a_variable_the_agent_set_wins_over_the_injected_one(make_core, redis) -> None:
    core = make_core(redis=redis)
    acct = await core.account("win")
    name = core.name("win")
    service_id = await core.service(acct, name)
    project = await core.projects.get(acct, name)
    await core.databases.ensure(project.id, DatabaseRequest(type=["postgres", "redis"]))
    await core.platform.update_env_vars(acct, name, {"PGHOST": "db.internal", "REDIS_URL": "redis://cache:6379/2"},
                                        None)  # fmt: skip
    env = await core.deploys.effective_env(project.id, service_id)
    assert env["PGHOST"].get_secret_value() == "db.internal"
    assert env["REDIS_URL"].get_secret_value() == "redis://cache:6379/2"
    assert env["PGUSER"].get_secret_value().startswith("ink_")  # the rest stays injected


async def test_postgres_and_redis_for_one_project_in_one_request(make_core, redis) -> None:
    core = make_core(redis=redis)
    acct = await core.account("both")
    name = core.name("both")
    project, _ = await core.projects.ensure(acct, name)
    first = await core.databases.ensure(project.id, DatabaseRequest(type=["postgres", "redis"]))
    assert first.provider == "postgres" and first.created
    env = await core.databases.env_for(project.id)
    assert {"DATABASE_URL", "PGHOST", "REDIS_URL"} <= set(env)
    url = urlsplit(env["REDIS_URL"].get_secret_value())
    assert url.scheme == "redis" and url.hostname == "127.0.0.1" and url.path == "/0"

    # REDIS_URL works as an app uses it: AUTH with its user and password, then any key.
    conn = await RespConnection.open(url.hostname, url.port)  # type: ignore[arg-type]
    assert await conn.execute("AUTH", url.username, url.password) == "OK"  # type: ignore[arg-type]
    assert await conn.execute("SET", "hits", "41") == "OK" and await conn.execute("INCR", "hits") == 42
    await conn.close()

    # Asking again (Redis alone, then both) changes nothing: same passwords, nothing new created.
    again = await core.databases.ensure(project.id, DatabaseRequest(type="redis"))
    assert again.provider == "redis" and not again.created
    assert await core.databases.env_for(project.id) == env

    creds = await core.platform.get_database_credentials(acct, name)
    assert creds.provider == "postgres" and creds.url == env["DATABASE_URL"].get_secret_value()
    assert creds.redis is not None and creds.redis.url == env["REDIS_URL"].get_secret_value()
    listed = [p for p in (await core.platform.list_projects(acct)).projects if p.name == name]
    assert len(listed) == 1 and listed[0].database == "postgres"  # one row, though the project has two add-ons


async def test_redis_alone_then_delete_project_drops_it(make_core, redis) -> None:
    core = make_core(redis=redis)
    acct = await core.account("ronly")
    name = core.name("ronly")
    project, _ = await core.projects.ensure(acct, name)
    view = await core.platform.provision_database(acct, name, core.limits.database_tiers[0], kind="redis")
    assert view.env_var == "REDIS_URL" and view.created
    assert set(await core.databases.env_for(project.id)) == {"REDIS_URL"}
    creds = await core.platform.get_database_credentials(acct, name)
    assert creds.url is None and creds.redis is not None
    ident = creds.redis.user
    assert redis.instance(ident).running_pid() is not None

    with pytest.raises(InvalidArgument, match="delete_database"):  # its data would be lost silently
        await core.platform.delete_project(acct, name, name, delete_database=False)
    deleted = await core.platform.delete_project(acct, name, name, delete_database=True)
    assert deleted.database_deleted
    assert redis.instance(ident).running_pid() is None and not (redis.base / ident).exists()
    with pytest.raises(OSError):
        await RespConnection.open(creds.redis.host, creds.redis.port, timeout=1)


async def test_redis_counts_against_max_databases(make_core, redis) -> None:
    core = make_core(redis=redis, max_databases=1)
    acct = await core.account("quota")
    project, _ = await core.projects.ensure(acct, core.name("quota"))
    await core.databases.ensure(project.id, DatabaseRequest(type="postgres"))
    with pytest.raises(LimitReached, match="max-databases"):
        await core.databases.ensure(project.id, DatabaseRequest(type="redis"))
    assert await core.databases.get(project.id, "redis") is None
    assert redis.idents() == []  # refused before any server was started


async def test_requests_that_cannot_be_met_say_what_to_pass(make_core, redis) -> None:
    core = make_core()  # no Redis provider configured
    acct = await core.account("bad")
    project, _ = await core.projects.ensure(acct, core.name("bad"))
    with pytest.raises(InvalidArgument, match="does not offer the Redis add-on") as e:
        await core.databases.ensure(project.id, DatabaseRequest(type="redis"))
    assert e.value.argument == "database.type"
    for bad in (["postgres", "byo"], ["redis", "redis"]):
        with pytest.raises(InvalidArgument, match=r"one Postgres \(managed or byo\) and one Redis"):
            await core.databases.ensure(project.id, DatabaseRequest(type=bad))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="names no add-on"):
        await core.databases.ensure(project.id, DatabaseRequest(type=[]))
    assert await core.databases.addons(project.id) == {}


def _exec(url: str, sql: str, **params: object) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            res = conn.execute(text(sql), params)
            return [tuple(r) for r in res] if res.returns_rows else []
    finally:
        engine.dispose()


def test_migration_0007_keeps_existing_databases_and_allows_one_of_each_kind(control_pg: EmbeddedPostgres) -> None:
    from tests.store.test_migration_0003 import _to

    url = create_database(control_pg, "m7")
    _to(url, "0006")
    aid, pid = uuid.uuid4(), uuid.uuid4()
    _exec(url, "INSERT INTO accounts (id, name) VALUES (:i, 'a')", i=aid)
    _exec(url, "INSERT INTO projects (id, account_id, name) VALUES (:i, :a, 'p')", i=pid, a=aid)
    insert = ("INSERT INTO databases (id, project_id, provider, tier, external_id, credentials_enc{}) "
              "VALUES (:i, :p, :prov, 'free', 'ink_x', 'x'{})")  # fmt: skip
    _exec(url, insert.format("", ""), i=uuid.uuid4(), p=pid, prov="postgres")
    _to(url, "0007")
    assert _exec(url, "SELECT kind, provider FROM databases") == [("postgres", "postgres")]
    _exec(url, insert.format(", kind", ", 'redis'"), i=uuid.uuid4(), p=pid, prov="redis")
    with pytest.raises(Exception, match="uq_databases_project_kind"):
        _exec(url, insert.format("", ""), i=uuid.uuid4(), p=pid, prov="byo")
    _to(url, "0006", down=True)
    assert _exec(url, "SELECT provider FROM databases") == [("postgres",)]  # the Redis row could not stay
    with pytest.raises(Exception, match="databases_project_id_key"):
        _exec(url, insert.format("", ""), i=uuid.uuid4(), p=pid, prov="byo")
    with psycopg.connect(control_pg.url(urlsplit(url).path.lstrip("/"), driver=None).get_secret_value()) as c:
        cols = c.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'databases'")
        assert "kind" not in {r[0] for r in cols.fetchall()}


async def test_concurrent_requests_for_redis_make_one(make_core, redis) -> None:
    core = make_core(redis=redis)
    acct = await core.account("conc")
    project, _ = await core.projects.ensure(acct, core.name("conc"))
    infos = await asyncio.gather(*[core.databases.ensure(project.id, DatabaseRequest(type="redis"))
                                   for _ in range(4)])  # fmt: skip
    assert sum(i.created for i in infos) == 1
    assert len({i.password.get_secret_value() for i in infos}) == 1  # the stored one is the one that works
    assert len(redis.idents()) == 1
    url = urlsplit((await core.databases.env_for(project.id))["REDIS_URL"].get_secret_value())
    conn = await RespConnection.open(url.hostname, url.port)  # type: ignore[arg-type]
    assert await conn.execute("AUTH", url.username, url.password) == "OK"  # type: ignore[arg-type]
    await conn.close()
