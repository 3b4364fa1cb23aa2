"""How `inkmcp serve` picks the provider behind `database={"type":"postgres"}` in production (inkmcp/app.py): with
Coolify compute and no Neon key it is Coolify-managed Postgres on a run server; INKMCP_DATABASE_PROVIDER=postgres
keeps our own server. Either way agents see the same result shape and `provider: postgres`, never the backend.

A real `inkmcp serve` over MCP against the Coolify stand-in (every request checked against Coolify's spec)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from inkmcp.coolify.standin import CoolifyStandin
from tests.support import call, mcp_session, running_server, traversable_tmpdir

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]


@pytest.fixture
def standin() -> Iterator[CoolifyStandin]:
    root = traversable_tmpdir("inkmcp-dbwire-")
    try:
        with CoolifyStandin(root / "nodes", rate_limit=100_000, status_delay=0.02, delete_delay=0.05,
                            stop_delay=0.02, validation_delay=0.0) as s:
            s.add_servers(1, cpus=16, memory_mb=32768, wildcard_base="apps.test")
            s.add_private_key()
            yield s
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert s.request_violations == [] and s.response_violations == []


def _env(standin: CoolifyStandin, **extra: str) -> dict[str, str]:
    return {"INKMCP_COOLIFY_URL": standin.url, "INKMCP_COOLIFY_TOKEN": standin.add_token("root"),
            "INKMCP_COOLIFY_DB_POLL_INTERVAL": "0.05", "INKMCP_COOLIFY_DB_POLL_MAX_INTERVAL": "0.2",
            "INKMCP_COOLIFY_RATE_LIMIT": "100000", "INKMCP_PLACEMENT_DEFAULT_NODE": '{"memory_mb": 32768, "cpus": 16}',
            **extra}


def _databases(standin: CoolifyStandin) -> list[object]:
    with standin._lock:
        return [d for d in standin.databases.values() if d.delete_at is None]


async def test_with_coolify_compute_a_managed_database_is_a_coolify_postgres(standin: CoolifyStandin) -> None:
    with running_server("inkmcp-dbwire-c-", ("alice",), **_env(standin)) as srv:
        async with mcp_session(srv, srv.keys["alice"]) as s:
            await call(s, "ensure_project", name="shop")
            made = await call(s, "provision_database", project_name="shop")
            creds = await call(s, "get_database_credentials", project_name="shop")
            again = await call(s, "provision_database", project_name="shop")
        dbs = _databases(standin)
        assert len(dbs) == 1, dbs  # the repeat found the first
        db = dbs[0]
        assert made["created"] and not again["created"]
        assert made["provider"] == creds["provider"] == "postgres"  # what the agent asked for, not the backend
        assert creds["host"] == db.uuid  # the container's name on the server's network (Coolify's internal URL)
        assert creds["password"] and creds["password"] in creds["url"]
        assert db.fields.get("postgres_password") == creds["password"]


async def test_database_provider_postgres_keeps_our_own_server_under_coolify_compute(standin: CoolifyStandin) -> None:
    with running_server("inkmcp-dbwire-p-", ("alice",), **_env(standin, INKMCP_DATABASE_PROVIDER="postgres")) as srv:
        async with mcp_session(srv, srv.keys["alice"]) as s:
            await call(s, "ensure_project", name="shop")
            await call(s, "provision_database", project_name="shop")
            creds = await call(s, "get_database_credentials", project_name="shop")
        assert _databases(standin) == []
        assert creds["provider"] == "postgres" and creds["host"] == "127.0.0.1"
