"""Core with Neon as the configured default: `database={"type":"postgres"}` lands on Neon, concurrent deploys
of one project make one Neon project, and drop goes to whichever provider made each database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from cryptography.fernet import Fernet

from inkmcp.core.accounts import AccountService
from inkmcp.core.databases import DatabaseRequest, DatabaseService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.projects import ProjectService
from inkmcp.errors import InkError, ProviderError
from inkmcp.neon.standin import NeonStandin
from inkmcp.providers.database.byo import BringYourOwnDatabase
from inkmcp.providers.database.neon import NeonDatabaseProvider
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.providers.database.select import choose_default
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.neon.conftest import can_login

Make = Callable[..., NeonDatabaseProvider]


@pytest.fixture
async def own_server(tenant_pg: EmbeddedPostgres) -> AsyncIterator[PostgresDatabaseProvider]:
    provider = PostgresDatabaseProvider(tenant_pg.url(), public_host="127.0.0.1", public_port=tenant_pg.port)
    yield provider
    await provider.close()


def _services(store: Store, box: SecretBox, default: object, providers: dict[str, object]) -> DatabaseService:
    return DatabaseService(store.sessionmaker, box, default, BringYourOwnDatabase(), LimitDefaults(),  # type: ignore[arg-type]
                           providers=providers)  # type: ignore[arg-type]


async def _project(store: Store, box: SecretBox) -> uuid.UUID:
    limits = LimitDefaults()
    p = await AccountService(store.sessionmaker, limits).principal_for(f"neon-{uuid.uuid4().hex[:8]}", "test")
    project, _ = await ProjectService(store.sessionmaker, box, limits).ensure(p, f"n-{uuid.uuid4().hex[:10]}")
    return project.id


async def test_postgres_type_uses_the_configured_default(store: Store, neon: NeonStandin, make_provider: Make,
                                                         own_server: PostgresDatabaseProvider) -> None:
    box = SecretBox([Fernet.generate_key()])
    default, providers = choose_default(own_server, neon=make_provider())
    assert default.name == "neon" and set(providers) == {"postgres", "neon"}
    databases = _services(store, box, default, providers)

    project_id = await _project(store, box)
    infos = await asyncio.gather(*[databases.ensure(project_id, DatabaseRequest(type="postgres"))
                                   for _ in range(5)])
    assert {i.provider for i in infos} == {"postgres"}  # agents are not told which backend serves it...
    assert len({i.password.get_secret_value() for i in infos}) == 1  # one provision, everyone gets its login
    assert sum(i.created for i in infos) == 1
    assert neon.count("POST", "/projects") == 1  # ...but Neon did
    assert neon.count("POST", r".*/reset_password") == 0  # core's lock: the provider ran exactly once
    stored = await databases.get(project_id)
    assert stored is not None and stored.url.get_secret_value() == infos[0].url.get_secret_value()
    assert await can_login(stored.url)

    # A database made while our own server was the default is dropped by our own server, not by Neon.
    old_project = await _project(store, box)
    before = _services(store, box, own_server, {"postgres": own_server})
    old = await before.ensure(old_project, DatabaseRequest())
    assert old.provider == "postgres" and await can_login(old.url)
    assert await databases.drop(old_project)
    assert not await can_login(old.url)

    assert await databases.drop(project_id)
    assert not neon.projects and not await can_login(stored.url)


async def test_a_database_of_an_unconfigured_provider_is_not_dropped_blind(
        store: Store, neon: NeonStandin, make_provider: Make, own_server: PostgresDatabaseProvider) -> None:
    box = SecretBox([Fernet.generate_key()])
    with_neon = _services(store, box, make_provider(), {"postgres": own_server})
    project_id = await _project(store, box)
    info = await with_neon.ensure(project_id, DatabaseRequest())
    without_neon = _services(store, box, own_server, {"postgres": own_server})
    with pytest.raises(ProviderError, match="INKMCP_NEON_API_KEY"):
        await without_neon.drop(project_id)
    assert await with_neon.get(project_id) is not None and await can_login(info.url)
    assert await with_neon.drop(project_id)


def test_choose_default_rules(own_server: PostgresDatabaseProvider) -> None:
    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

    neon, coolify = Fake("neon"), Fake("coolify")
    assert choose_default(own_server)[0] is own_server
    assert choose_default(own_server, coolify=coolify)[0] is coolify  # type: ignore[arg-type]
    assert choose_default(own_server, neon=neon, coolify=coolify)[0] is neon  # type: ignore[arg-type]
    assert choose_default(own_server, neon=neon, choice="postgres")[0] is own_server  # type: ignore[arg-type]
    with pytest.raises(InkError, match=r"INKMCP_DATABASE_PROVIDER.*INKMCP_NEON_API_KEY"):
        choose_default(own_server, choice="neon")
    with pytest.raises(InkError, match="one of postgres, neon, coolify"):
        choose_default(own_server, choice="mysql")

