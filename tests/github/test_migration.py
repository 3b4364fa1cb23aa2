"""Migration 0008: downgrade removes exactly its tables, upgrade brings them back (the schema comparison with the
models is tests/store/test_migrations.py)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from inkmcp.store.db import alembic_config, migrate
from inkmcp.store.embedded import EmbeddedPostgres
from tests.store.conftest import create_database

TABLES = {"github_identities", "github_tracking", "github_deliveries", "deployment_triggers", "web_sessions"}


def tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0008_down_and_up(control_pg: EmbeddedPostgres) -> None:
    url = create_database(control_pg, "gh0008")
    migrate(url)
    before = tables(url)
    assert before >= TABLES
    command.downgrade(alembic_config(url), "0007")
    after = tables(url)
    assert not after & TABLES and {"accounts", "services", "deployments"} <= after
    command.upgrade(alembic_config(url), "head")
    assert tables(url) == before


def test_0011_down_and_up(control_pg: EmbeddedPostgres) -> None:
    """Migration 0011 (deploy keys, issue 11): downgrade drops only github_deploy_keys, upgrade brings it back."""
    url = create_database(control_pg, "gh0011")
    migrate(url)
    before = tables(url)
    assert "github_deploy_keys" in before
    command.downgrade(alembic_config(url), "0011")  # later revisions (0012, ...) are not this test's
    at_0011 = tables(url)
    command.downgrade(alembic_config(url), "0010")
    assert tables(url) == at_0011 - {"github_deploy_keys"}
    command.upgrade(alembic_config(url), "head")
    assert tables(url) == before
