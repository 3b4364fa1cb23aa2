from __future__ import annotations

import threading

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from inkmcp.store.db import migrate
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Base

from .conftest import create_database


def test_migrations_create_every_table_and_are_idempotent(control_pg: EmbeddedPostgres) -> None:
    url = create_database(control_pg, "mig")
    migrate(url)
    migrate(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert tables == set(Base.metadata.tables) | {"alembic_version"}
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0002"
            fks = {fk["name"] for fk in inspect(conn).get_foreign_keys("services")}
            assert "fk_services_live_deployment" in fks
    finally:
        engine.dispose()


def test_concurrent_migrate_runs_once(control_pg: EmbeddedPostgres) -> None:
    url = create_database(control_pg, "migc")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(url)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []


def test_autogenerate_finds_no_difference(store_url: str) -> None:
    engine = create_engine(store_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(ctx, Base.metadata) == []
    finally:
        engine.dispose()
