from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from pydantic import SecretStr

from inkmcp.errors import InvalidArgument
from inkmcp.providers.database.base import DatabaseProvider, Tier
from inkmcp.providers.database.postgres import DEFAULT_CONNECTION_LIMITS, PostgresDatabaseProvider, database_name_for
from inkmcp.store.embedded import EmbeddedPostgres


@pytest.fixture(scope="session")
def provider(tenant_pg: EmbeddedPostgres) -> PostgresDatabaseProvider:
    assert tenant_pg.port is not None
    return PostgresDatabaseProvider(tenant_pg.url(), public_host="127.0.0.1", public_port=tenant_pg.port)


def slug() -> str:
    return f"app-{uuid.uuid4().hex[:8]}"


def _connect(url: SecretStr) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url.get_secret_value(), connect_timeout=5, autocommit=True)


def _admin_scalar(pg: EmbeddedPostgres, q: str, params: tuple[object, ...] = ()) -> object:
    with psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as c:
        row = c.execute(q, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None


def test_database_name_is_safe_and_injective() -> None:
    assert database_name_for("my-app") == "ink_my_app"
    assert database_name_for("shop42") == "ink_shop42"
    hashed = database_name_for("my_app")
    assert hashed.startswith("ink_my_app__") and hashed != "ink_my_app"
    assert database_name_for("My-App") != database_name_for("my-app")
    evil = database_name_for('x"; DROP DATABASE postgres; --')
    assert all(ch.isalnum() or ch == "_" for ch in evil) and evil == evil.lower()
    assert len(database_name_for("a" * 200)) <= 63
    assert database_name_for("a" * 200) != database_name_for("a" * 201)
    with pytest.raises(InvalidArgument):
        database_name_for("")


def test_implements_protocol(provider: PostgresDatabaseProvider) -> None:
    assert isinstance(provider, DatabaseProvider)


async def test_provision_twice_same_database_new_password(
    provider: PostgresDatabaseProvider, tenant_pg: EmbeddedPostgres
) -> None:
    s = slug()
    first = await provider.provision(owner_slug=s, tier=Tier.free)
    assert first.provider == "postgres" and first.external_id == database_name_for(s)
    with _connect(first.credentials.url()) as c:
        c.execute("CREATE TABLE t (x int)")  # owner can create in public (PG15+ pg_database_owner)
        c.execute("INSERT INTO t VALUES (1)")
    second = await provider.provision(owner_slug=s, tier=Tier.free)
    assert second.external_id == first.external_id
    assert second.credentials.password.get_secret_value() != first.credentials.password.get_secret_value()
    with _connect(second.credentials.url()) as c:
        assert c.execute("SELECT x FROM t").fetchone() == (1,)  # same database, data kept
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        _connect(first.credentials.url())
    limit = _admin_scalar(tenant_pg, "SELECT rolconnlimit FROM pg_roles WHERE rolname=%s", (first.external_id,))
    assert limit == DEFAULT_CONNECTION_LIMITS[Tier.free]
    assert len(first.credentials.password.get_secret_value()) >= 43  # 32 random bytes, urlsafe b64
    await provider.drop(first.external_id)


async def test_tenants_are_isolated(provider: PostgresDatabaseProvider, tenant_pg: EmbeddedPostgres) -> None:
    a = await provider.provision(owner_slug=slug(), tier=Tier.free)
    b = await provider.provision(owner_slug=slug(), tier=Tier.standard)
    a_on_b = a.credentials.model_copy(update={"database": b.credentials.database})
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        _connect(a_on_b.url())
    for shared in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            _connect(a.credentials.model_copy(update={"database": shared}).url())
    # PUBLIC has no CREATE on schema public (PG15+ default): only the database owner may create.
    with _connect(a.credentials.url()) as c:
        owner = c.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname='public'").fetchone()
        assert owner == ("pg_database_owner",)
        assert c.execute("SELECT has_schema_privilege('public', 'public', 'CREATE')").fetchone() == (False,)
        assert c.execute("SELECT has_schema_privilege('public', 'CREATE')").fetchone() == (True,)  # as owner
        assert c.execute("SELECT rolsuper OR rolcreatedb OR rolcreaterole FROM pg_roles "
                         "WHERE rolname = current_user").fetchone() == (False,)
    await provider.drop(a.external_id)
    await provider.drop(b.external_id)


async def test_drop_is_idempotent_and_terminates_sessions(
    provider: PostgresDatabaseProvider, tenant_pg: EmbeddedPostgres
) -> None:
    h = await provider.provision(owner_slug=slug(), tier=Tier.free)
    conn = _connect(h.credentials.url())  # an app still connected
    await provider.drop(h.external_id)
    await provider.drop(h.external_id)
    conn.close()
    assert _admin_scalar(tenant_pg, "SELECT count(*) FROM pg_database WHERE datname=%s", (h.external_id,)) == 0
    assert _admin_scalar(tenant_pg, "SELECT count(*) FROM pg_roles WHERE rolname=%s", (h.external_id,)) == 0
    with pytest.raises(psycopg.OperationalError):
        _connect(h.credentials.url())


async def test_drop_refuses_foreign_databases(provider: PostgresDatabaseProvider) -> None:
    for name in ("postgres", "template1", "ink_", 'ink_x"; --'):
        with pytest.raises(InvalidArgument, match="external_id"):
            await provider.drop(name)


async def test_concurrent_provisions_make_one_database(
    provider: PostgresDatabaseProvider, tenant_pg: EmbeddedPostgres
) -> None:
    s = slug()
    handles = await asyncio.gather(*(provider.provision(owner_slug=s, tier=Tier.free) for _ in range(5)))
    assert len({h.external_id for h in handles}) == 1
    name = handles[0].external_id
    assert _admin_scalar(tenant_pg, "SELECT count(*) FROM pg_database WHERE datname=%s", (name,)) == 1
    # exactly one of the returned passwords (the last one set) is valid
    ok = 0
    for h in handles:
        try:
            _connect(h.credentials.url()).close()
            ok += 1
        except psycopg.OperationalError:
            pass
    assert ok == 1
    await provider.drop(name)
