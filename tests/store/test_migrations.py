"""Migrations: every table, idempotent, safe when several processes start at once, equal to the models."""

from __future__ import annotations

import threading
import time

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from inkmcp.store.db import MIGRATION_LOCK_KEY, alembic_config, migrate
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.models import Base

from .conftest import create_database

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def test_migrations_create_every_table_and_are_idempotent(control_pg: EmbeddedPostgres) -> None:
    url = create_database(control_pg, "mig")
    migrate(url)
    migrate(url)
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            assert tables == set(Base.metadata.tables) | {"alembic_version"}
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == HEAD
            fks = {fk["name"] for fk in inspect(conn).get_foreign_keys("services")}
            assert "fk_services_live_deployment" in fks
    finally:
        engine.dispose()


def test_concurrent_migrate_runs_once(control_pg: EmbeddedPostgres) -> None:
    """Four processes' worth of migrate() at once: all wait on the lock together, one migrates, none fails.

    The test holds the migration lock itself until it sees all four callers blocked on it in pg_locks:
    proof that they really ran concurrently, not one after another.
    """
    url = create_database(control_pg, "migc")
    dbname = url.rsplit("/", 1)[1].split("?")[0]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            migrate(url)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(4)]
    with psycopg.connect(control_pg.url(dbname, driver=None).get_secret_value(), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        waiting = 0
        while time.monotonic() < deadline:
            waiting = holder.execute(
                "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
                "WHERE l.locktype = 'advisory' AND NOT l.granted AND d.datname = %s", (dbname,)
            ).fetchone()[0]
            if waiting == len(threads):
                break
            time.sleep(0.05)
        assert waiting == len(threads), f"only {waiting} of {len(threads)} migrate() calls reached the lock"
        holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    for t in threads:
        t.join(60)
    assert not [t for t in threads if t.is_alive()], "a migrate() call hung"
    assert errors == []
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
            assert versions == [HEAD]  # one row, at head: the schema was created once
            assert set(inspect(conn).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


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
