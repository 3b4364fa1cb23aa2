"""Shared fixtures: embedded PostgreSQL servers started once per session, a migrated store.

`embedded_pg_factory` is self-contained (only tmp_path_factory) so it can move to tests/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
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
    """The postmaster we started (by PID, never by name) shut down at once, then the product's stop for what follows
    a stop (tablespaces unmounted, the reserved port given back).

    suitefast: SIGQUIT (PostgreSQL's immediate shutdown: no shutdown checkpoint), not `pg_ctl -m fast` first: these
    servers' files are deleted right after, and a clean stop's checkpoint of every database a session created took
    10-35 s per server under load (the session's last test carried 70-80 s of it). `pg_ctl stop` itself is tested
    by tests/store/test_embedded.py."""
    for p in {pid, pg.pid} - {None}:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(p)
            if proc.name() == "postgres" and proc.status() != psutil.STATUS_ZOMBIE:
                os.kill(p, signal.SIGQUIT)
                deadline = time.monotonic() + 10
                # gone, or a zombie that its (non-reaping) new parent keeps: psutil's wait() would wait it out
                while proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
                    time.sleep(0.02)
    with contextlib.suppress(Exception):
        pg.stop()


@pytest.fixture(scope="session")
def embedded_pg_factory() -> Iterator[EmbeddedPgFactory]:
    """`make(name, *, tcp=False, **kwargs) -> EmbeddedPostgres`, started; all stopped at session end.

    Each new pgdata is a copy of the process's initdb template (tests.support.initdb_template: the product's own
    initdb step, run once per process), not an initdb of its own: the packages that re-export these fixtures
    (core, contract, billing, placement, github, ...) each start servers of their own, and their initdb runs were
    ~4-7 s each under load (suitefast).

    Data lives in a private mkdtemp, not pytest's tmp_path: concurrent pytest sessions of the same
    user prune each other's old `pytest-N` dirs, which would pull pgdata out from under a server.
    """
    base = Path(tempfile.mkdtemp(prefix="inkmcp-pgtest-"))
    started: list[tuple[EmbeddedPostgres, int | None]] = []

    def make(name: str, *, tcp: bool = False, pgdata: Path | None = None, **kwargs: object) -> EmbeddedPostgres:
        port = free_port() if tcp else None
        target = pgdata or base / name
        if not target.exists():  # --- suitefast: a copy of the process's initdb template, not an initdb of its own
            from tests.support import initdb_template

            target.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", "--reflink=auto", str(initdb_template()), str(target)], check=True)
        pg = EmbeddedPostgres(target, port=port, **kwargs)  # type: ignore[arg-type]
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
