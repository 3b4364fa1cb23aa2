"""Migration 0006 (placement): it goes down and up again cleanly, and what it creates matches the models."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import create_engine, inspect

from inkmcp.store.db import alembic_config, migrate
from inkmcp.store.embedded import EmbeddedPostgres
from tests.store import conftest as _store_fixtures


def _tables(url: str) -> dict[str, set[str]]:
    engine = create_engine(url)
    try:
        insp = inspect(engine)
        return {t: {c["name"] for c in insp.get_columns(t)} for t in insp.get_table_names() if "placement" in t}
    finally:
        engine.dispose()


async def test_0006_downgrades_and_upgrades(control_pg: EmbeddedPostgres) -> None:
    url = _store_fixtures.create_database(control_pg, "mig6")
    await asyncio.to_thread(migrate, url)
    created = _tables(url)
    assert set(created) == {"placements", "placement_nodes"}
    assert {"service_id", "node_uuid", "charged_memory_mb", "charged_millicpus", "mode", "labels"} <= \
        created["placements"]
    cfg = alembic_config(url)
    await asyncio.to_thread(command.downgrade, cfg, "0005")
    assert _tables(url) == {}
    await asyncio.to_thread(command.upgrade, cfg, "head")
    assert _tables(url) == created
