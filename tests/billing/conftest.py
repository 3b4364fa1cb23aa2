"""Billing tests run on the real control-plane schema (embedded PostgreSQL, migrated to head).

Metering charges every live service in the database for an interval, so each test gets its own database, cloned
from one migrated template (CREATE DATABASE ... TEMPLATE: ~0.1 s instead of a migration per test).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from inkmcp.billing.ledger import Ledger
from inkmcp.billing.settings import BillingSettings, Prices
from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.billing.stripe_standin import StripeStandIn
from tests.store import conftest as _store_fixtures
from tests.store.conftest import create_database
from tests.support import serving

embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg


@pytest.fixture(scope="session")
def billing_template(control_pg: EmbeddedPostgres) -> str:
    url = create_database(control_pg, "billtpl")
    migrate(url)
    return url.rsplit("/", 1)[1].split("?")[0]


def clone(pg: EmbeddedPostgres, template: str) -> str:
    name = f"bill_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return pg.url(name).get_secret_value()


@dataclass
class World:
    """A fresh migrated store plus helpers that write rows as deploy_app would leave them."""

    store: Store
    url: str

    async def account(self, name: str | None = None) -> tuple[uuid.UUID, str]:
        name = name or f"acct-{uuid.uuid4().hex[:8]}"
        async with self.store.sessionmaker.begin() as s:
            aid = (await s.execute(text("INSERT INTO accounts (id, name) VALUES (:i, :n) RETURNING id"),
                                   {"i": uuid.uuid4(), "n": name})).scalar_one()
        return aid, name

    async def live_service(self, account_id: uuid.UUID, *, mode: str = "persistent", memory_mb: int = 1024,
                           live_since: str = "2000-01-01") -> uuid.UUID:
        pid, sid, did = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
        async with self.store.sessionmaker.begin() as s:
            await s.execute(text("INSERT INTO projects (id, account_id, name) VALUES (:p, :a, :n)"),
                            {"p": pid, "a": account_id, "n": f"p-{pid.hex[:10]}"})
            await s.execute(text(
                "INSERT INTO services (id, project_id, name, service_type, mode, repo_url, settings) "
                "VALUES (:s, :p, 'web', 'webapp', :m, 'https://git.example/x.git', CAST(:st AS jsonb))"),
                {"s": sid, "p": pid, "m": mode, "st": f'{{"resources": {{"memory_mb": {memory_mb}, "cpus": 1}}}}'})
            await s.execute(text(
                "INSERT INTO deployments (id, service_id, status, config_hash, finished_at) "
                "VALUES (:d, :s, 'live', 'h', CAST(:t AS timestamptz))"), {"d": did, "s": sid, "t": live_since})
            await s.execute(text("UPDATE services SET live_deployment_id = :d WHERE id = :s"), {"d": did, "s": sid})
        return sid

    async def scalar(self, query: str, **params: object) -> object:
        async with self.store.sessionmaker() as s:
            return (await s.execute(text(query), params)).scalar()


@pytest.fixture
async def world(control_pg: EmbeddedPostgres, billing_template: str) -> AsyncIterator[World]:
    url = clone(control_pg, billing_template)
    store = await open_store(url)
    yield World(store=store, url=url)
    await store.close()


def settings(**kw: object) -> BillingSettings:
    prices = kw.pop("prices", {"persistent": 36})
    return BillingSettings(prices=Prices(**prices), **kw)  # type: ignore[arg-type]


@pytest.fixture
def make_ledger(world: World) -> Callable[..., Ledger]:
    return lambda **kw: Ledger(world.store.sessionmaker, settings(**kw))


STRIPE_KEY, STRIPE_SECRET = "sk_test_" + "k" * 24, "whsec_" + "s" * 32
"""The e2e servers' Stripe key and webhook secret (the stand-in checks the key; the server signs nothing)."""


@pytest.fixture(scope="module")
def stripe() -> Iterator[StripeStandIn]:
    """A Stripe stand-in per test module, serving until the module is done."""
    standin = StripeStandIn(STRIPE_KEY)
    with serving(standin.server):
        yield standin
