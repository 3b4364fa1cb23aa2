"""The embedded tenant server's per-backend memory limit (inkmcp/store/tenant_memory.py) on a real server: set at
start from the configured budget, brought onto a server adopted without it (one restart), kept on one adopted with
it (no restart), and what a backend over it gets: Postgres's own `out of memory`, its session going on.

tests/security/test_tenant_postgres_limits.py performs the attack through `inkmcp serve` from a tenant's login."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from inkmcp.store import tenant_memory
from inkmcp.store.embedded import EmbeddedPostgres
from tests.store.conftest import _stop_by_pid, free_port

BUDGET_MB = 100


@pytest.fixture
def pgdata() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="inkmcp-pgmem-"))
    yield base  # the test stops its server by PID
    shutil.rmtree(base, ignore_errors=True)


def _start(pgdata: Path, port: int) -> tuple[EmbeddedPostgres, int]:
    pg = EmbeddedPostgres(pgdata / "pg", port=port)
    pg.start()
    assert pg.pid is not None
    return pg, pg.pid


def test_the_limit_reaches_an_adopted_server_once_and_a_hog_fails_alone(
    pgdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("INKMCP_TENANT_PG_BACKEND_MEMORY_MB", "0")  # as a server from before the limit existed
    pg, first = _start(pgdata, port)
    try:
        assert tenant_memory.address_space_limit_of(first) is None
        monkeypatch.setenv("INKMCP_TENANT_PG_BACKEND_MEMORY_MB", str(BUDGET_MB))
        pg, second = _start(pgdata, port)  # adopted without the limit: restarted with it
        assert second != first
        limit = tenant_memory.address_space_limit_of(second)
        assert limit is not None
        shm = limit // tenant_memory.MIB - tenant_memory.SLACK_MB - BUDGET_MB
        assert 8 <= shm <= 4096, f"shared memory counted as {shm} MiB"
        pg, third = _start(pgdata, port)  # adopted with it: left running
        assert third == second
        with psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as c, \
                psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as other:
            backend = c.execute("SELECT pg_backend_pid()").fetchone()[0]
            assert tenant_memory.address_space_limit_of(backend) == limit  # inherited by every backend
            other_pid = other.execute("SELECT pg_backend_pid()").fetchone()[0]
            with pytest.raises(psycopg.errors.OutOfMemory):
                c.execute(f"SELECT length(repeat('x', {(BUDGET_MB + tenant_memory.SLACK_MB) * 2} * 1024 * 1024))")
            assert c.execute("SELECT pg_backend_pid()").fetchone() == (backend,)
            assert other.execute("SELECT pg_backend_pid()").fetchone() == (other_pid,)
            # within the budget: an ordinary big query still runs
            assert c.execute(f"SELECT length(repeat('x', {BUDGET_MB // 2} * 1024 * 1024))").fetchone() == (
                BUDGET_MB // 2 << 20,)
        monkeypatch.setenv("INKMCP_TENANT_PG_BACKEND_MEMORY_MB", str(BUDGET_MB * 2))  # the operator changed it
        pg, fourth = _start(pgdata, port)
        assert fourth != third
        assert tenant_memory.address_space_limit_of(fourth) == limit + BUDGET_MB * tenant_memory.MIB
    finally:
        _stop_by_pid(pg, pg.pid)


def test_the_budget_and_its_default() -> None:
    assert tenant_memory.backend_budget_mb(None, 512) == tenant_memory.MIN_BUDGET_MB
    assert tenant_memory.backend_budget_mb(None, 16384) == 2048
    assert tenant_memory.backend_budget_mb(300, 16384) == 300
    assert tenant_memory.address_space_limit(150, 0) is None  # 0 = no limit
    assert tenant_memory.parse_shared_memory_mb("143\n") == 143
    assert tenant_memory.parse_shared_memory_mb("FATAL: x") is None
