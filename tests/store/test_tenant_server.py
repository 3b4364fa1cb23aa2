"""One tenant server per control plane (inkmcp/store/tenant_server.py), against real PostgreSQL servers: the first
replica records its tenant server; another tenant server is refused with the setting to fix; an unreachable one
is an InkError naming it. (tests/replicas/test_two_serves.py shows the same with two whole `inkmcp serve`.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import psycopg
import pytest
from cryptography.fernet import Fernet

from inkmcp.errors import InkError
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.tenant_server import MARKER_TABLE, check_tenant_server, tenant_server_identity
from tests.store.conftest import EmbeddedPgFactory, create_database


@pytest.fixture
async def fresh(control_pg: EmbeddedPostgres) -> AsyncIterator[Store]:
    url = create_database(control_pg, "tenantsrv")
    await asyncio.to_thread(migrate, url)
    store = await open_store(url, pool_size=2, max_overflow=0)
    yield store
    await store.close()


@pytest.fixture(scope="module")
def other_tenant_pg(embedded_pg_factory: EmbeddedPgFactory) -> EmbeddedPostgres:
    return embedded_pg_factory("tenants-other", tcp=True)


def _admin(pg: EmbeddedPostgres) -> str:
    return pg.url(driver=None).get_secret_value()


async def test_the_first_server_is_recorded_and_the_same_one_passes_again(
    fresh: Store, tenant_pg: EmbeddedPostgres
) -> None:
    box = SecretBox([Fernet.generate_key()])
    first = await check_tenant_server(fresh.sessionmaker, box, _admin(tenant_pg), embedded=False, own_is_default=True)
    again = await asyncio.gather(*[check_tenant_server(fresh.sessionmaker, box, _admin(tenant_pg), embedded=False,
                                                       own_is_default=True) for _ in range(4)])
    assert set(again) == {first} == {await tenant_server_identity(_admin(tenant_pg))}
    with psycopg.connect(_admin(tenant_pg)) as conn:
        assert conn.execute(f"SELECT count(*) FROM {MARKER_TABLE}").fetchone() == (1,)


async def test_another_server_is_refused_naming_the_setting(
    fresh: Store, tenant_pg: EmbeddedPostgres, other_tenant_pg: EmbeddedPostgres
) -> None:
    box = SecretBox([Fernet.generate_key()])
    await check_tenant_server(fresh.sessionmaker, box, _admin(tenant_pg), embedded=False, own_is_default=True)
    with pytest.raises(InkError) as caught:
        await check_tenant_server(fresh.sessionmaker, box, _admin(other_tenant_pg), embedded=True, own_is_default=True)
    text = caught.value.render()
    assert "INKMCP_TENANT_DATABASE_URL" in text and "embedded server" in text
    # Not the default provider and no database recorded on our own server: nothing can split, so it starts.
    assert await check_tenant_server(fresh.sessionmaker, box, _admin(other_tenant_pg), embedded=True,
                                     own_is_default=False)
    # Other encryption keys cannot read the record: refused, naming the keys.
    with pytest.raises(InkError) as keys:
        await check_tenant_server(fresh.sessionmaker, SecretBox([Fernet.generate_key()]), _admin(tenant_pg),
                                  embedded=False, own_is_default=True)
    assert "INKMCP_ENCRYPTION_KEYS" in keys.value.render()


async def test_an_unreachable_tenant_server_is_an_error_naming_the_setting(fresh: Store) -> None:
    box = SecretBox([Fernet.generate_key()])
    with pytest.raises(InkError) as caught:
        await check_tenant_server(fresh.sessionmaker, box, "postgresql://nobody:s3cret-pw@127.0.0.1:1/x",
                                  embedded=False, own_is_default=True)
    text = caught.value.render()
    assert "INKMCP_TENANT_DATABASE_URL" in text and "s3cret-pw" not in text
