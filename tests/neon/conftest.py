"""Fixtures: the Neon stand-in backed by the session's real tenant PostgreSQL, and providers over it.

Every stand-in a test uses must end with no request or response outside Neon's published spec: the `neon`
fixture asserts that in teardown, so a client or stand-in drift fails the test that caused it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest
from pydantic import SecretStr

from inkmcp.neon.client import RetryPolicy
from inkmcp.neon.settings import NeonSettings
from inkmcp.neon.standin import Backing, NeonStandin
from inkmcp.providers.database.base import DatabaseCredentials
from inkmcp.providers.database.neon import NeonDatabaseProvider, build_neon_provider
from inkmcp.store.embedded import EmbeddedPostgres
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg
tenant_pg = _store_fixtures.tenant_pg
store_url = _store_fixtures.store_url
store = _store_fixtures.store

API_KEY = "neon-test-key-" + uuid.uuid4().hex
FAST = RetryPolicy(attempts=8, backoff_initial=0.01, backoff_max=0.2, max_total_wait=5.0)


@pytest.fixture
def neon(tenant_pg: EmbeddedPostgres) -> Iterator[NeonStandin]:
    backing = Backing(admin_url=tenant_pg.url(driver=None), host="127.0.0.1", port=tenant_pg.port)
    standin = NeonStandin(api_keys={API_KEY}, backing=backing, uri_options={"sslmode": "disable"}, op_delay=0.05)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()
        for project in list(standin.projects.values()):  # roles/databases left on the shared tenant server
            with standin._lock:
                standin._delete_project(project)
    assert standin.request_violations == [], standin.request_violations
    assert standin.response_violations == [], standin.response_violations


@pytest.fixture
async def make_provider(neon: NeonStandin) -> AsyncIterator[Callable[..., NeonDatabaseProvider]]:
    """`make(**settings) -> provider` over the stand-in, validating every request against the spec."""
    made: list[NeonDatabaseProvider] = []

    def make(**settings: object) -> NeonDatabaseProvider:
        s = NeonSettings(**{"api_key": SecretStr(API_KEY), "api_url": neon.url, "operation_timeout": 10.0,
                            **settings})  # type: ignore[arg-type]
        provider = build_neon_provider(s, validate=True, retry=FAST)
        made.append(provider)
        return provider

    yield make
    for p in made:
        await p.close()


def slug() -> str:
    return uuid.uuid4().hex


async def connect(creds: DatabaseCredentials) -> psycopg.AsyncConnection[tuple[object, ...]]:
    return await psycopg.AsyncConnection.connect(creds.url().get_secret_value(), connect_timeout=5, autocommit=True)


async def can_login(creds: DatabaseCredentials | SecretStr) -> bool:
    """Whether a login with these credentials (or this URL) succeeds now."""
    url = creds if isinstance(creds, SecretStr) else creds.url()
    try:
        conn = await psycopg.AsyncConnection.connect(url.get_secret_value(), connect_timeout=5, autocommit=True)
    except psycopg.OperationalError:
        return False
    await conn.close()
    return True
