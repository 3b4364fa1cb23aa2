"""Placement over a real PostgreSQL: the embedded servers of tests/store, a fresh migrated database per test
module, and account/project/service rows to place (placements reference services)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Account, Project, Service
from tests.store import conftest as _store_fixtures

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg


@pytest.fixture(scope="module")
async def placement_url(control_pg: EmbeddedPostgres) -> str:
    url = _store_fixtures.create_database(control_pg, "placement")
    await asyncio.to_thread(migrate, url)
    return url


@pytest.fixture(scope="module")
async def pstore(placement_url: str) -> AsyncIterator[Store]:
    store = await open_store(placement_url, pool_size=4, max_overflow=4)
    yield store
    await store.close()


async def make_services(store: Store, count: int, *, projects: int = 1) -> list[tuple[str, str]]:
    """`count` services spread round-robin over `projects` new projects of a new account: [(service, project)]."""
    tag = uuid.uuid4().hex[:8]
    async with store.session() as s, s.begin():
        account = Account(name=f"acct-{tag}")
        s.add(account)
        await s.flush()
        ps = [Project(account_id=account.id, name=f"p{i}-{tag}") for i in range(projects)]
        s.add_all(ps)
        await s.flush()
        services = [Service(project_id=ps[i % projects].id, name=f"s{i}", service_type="webapp", mode="persistent",
                            repo_url="https://git.example/app.git", settings={}) for i in range(count)]
        s.add_all(services)
        await s.flush()
        return [(str(sv.id), str(sv.project_id)) for sv in services]
