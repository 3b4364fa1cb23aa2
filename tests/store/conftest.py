"""Shared fixtures: embedded PostgreSQL servers started once per session, a migrated store.

`embedded_pg_factory` is self-contained (only tmp_path_factory) so it can move to tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql

from inkmcp.store.db import Store, migrate, open_store
from inkmcp.store.embedded import EmbeddedPostgres

EmbeddedPgFactory = Callable[..., EmbeddedPostgres]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_by_pid(pg: EmbeddedPostgres, pid: int | None) -> None:
    """Clean stop, then make sure the postmaster we started is gone (by PID, never by name)."""
    with contextlib.suppress(Exception):
        pg.stop()
    for p in {pid, pg.pid} - {None}:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.TimeoutExpired):
            proc = psutil.Process(p)
            if proc.name() == "postgres" and proc.status() != psutil.STATUS_ZOMBIE:
                os.kill(p, signal.SIGQUIT)
                proc.wait(10)


@pytest.fixture(scope="session")
def embedded_pg_factory() -> Iterator[EmbeddedPgFactory]:
    """`make(name, *, tcp=False, **kwargs) -> EmbeddedPostgres`, started; all stopped at session end.

    Data lives in a private mkdtemp, not pytest's tmp_path: concurrent pytest sessions of the same
    user prune each other's old `pytest-N` dirs, which would pull pgdata out from under a server.
    """
    base = Path(tempfile.mkdtemp(prefix="inkmcp-pgtest-"))
    started: list[tuple[EmbeddedPostgres, int | None]] = []

    def make(name: str, *, tcp: bool = False, pgdata: Path | None = None, **kwargs: object) -> EmbeddedPostgres:
        port = free_port() if tcp else None
        pg = EmbeddedPostgres(pgdata or base / name, port=port, **kwargs)  # type: ignore[arg-type]
        pg.start()
        started.append((pg, pg.pid))
        return pg

    yield make
    for pg, pid in reversed(started):
        _stop_by_pid(pg, pid)
    shutil.rmtree(base, ignore_errors=True)
    for pg, _ in started:
        if pg.socket_dir != pg.pgdata:
            shutil.rmtree(pg.socket_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def control_pg(embedded_pg_factory: EmbeddedPgFactory) -> EmbeddedPostgres:
    """Socket-only server, like the control-plane store."""
    return embedded_pg_factory("control")


@pytest.fixture(scope="session")
def tenant_pg(embedded_pg_factory: EmbeddedPgFactory) -> EmbeddedPostgres:
    """TCP + password server, like the tenant server."""
    return embedded_pg_factory("tenants", tcp=True)


def create_database(pg: EmbeddedPostgres, prefix: str = "t") -> str:
    """A fresh empty database on `pg`; returns its SQLAlchemy URL (psycopg driver)."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return pg.url(name).get_secret_value()


@pytest.fixture(scope="session")
def store_url(control_pg: EmbeddedPostgres) -> str:
    url = create_database(control_pg, "store")
    migrate(url)
    return url


@pytest.fixture(scope="session")
async def store(store_url: str) -> AsyncIterator[Store]:
    s = await open_store(store_url)
    yield s
    await s.close()
