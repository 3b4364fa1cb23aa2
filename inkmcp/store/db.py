"""Connecting to the control-plane store and migrating it.

Migrations are plain alembic, configured in code (no alembic.ini to ship or locate): `migrate()`
upgrades to head under a PostgreSQL advisory lock, so several InkMCP processes starting at once
(server + CLI, or replicas) run the migration exactly once and the others wait and find it done.

Runtime access is async SQLAlchemy over psycopg 3. The pool is deliberately small: PostgreSQL on a
2-core box does not get faster past a handful of active backends, and MCP tool calls hold a
connection only for short transactions, so 64 concurrent clients queue briefly on 16-32 connections
rather than each holding a backend of its own (see `POOL_SIZE` for measurements).
"""

from __future__ import annotations

import select
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as _create_async_engine
from sqlalchemy.pool import NullPool

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

MIGRATION_LOCK_KEY = zlib.crc32(b"inkmcp.store.migrate")
"""pg_advisory_xact_lock key; any stable bigint works, crc32 keeps it readable in pg_locks."""

POOL_SIZE = 16
MAX_OVERFLOW = 16
POOL_TIMEOUT_S = 15.0
"""Measured on the 2-core dev box: 64 concurrent clients, each transaction = one indexed SELECT + one
audit INSERT + commit, over the unix socket. Throughput was flat at ~450-650 tx/s for every pool
from 5 to 64 connections (the client process's CPU is the limit, not PostgreSQL); p99 latency fell
from ~450-600 ms (5-10 connections, time spent queueing for the pool) to ~160-340 ms at 30-64.
16 + 16 overflow (at most 32 backends, well under the embedded server's max_connections=200)
keeps tail latency near the best case without a backend per client."""


def _normalize(url: str | URL, driver: str = "psycopg") -> URL:
    """Accept postgres://, postgresql:// or postgresql+<driver>:// and pin the psycopg 3 driver."""
    u = make_url(url) if isinstance(url, str) else url
    if u.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"store URL must be a PostgreSQL URL, got scheme {u.drivername!r}")
    return u.set(drivername=f"postgresql+{driver}")


def alembic_config(url: str | URL | None = None) -> Config:
    """An alembic Config pointing at our migrations, without any ini file."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if url is not None:
        # render_as_string keeps the password; '%' must be escaped for ConfigParser interpolation.
        cfg.set_main_option(
            "sqlalchemy.url", _normalize(url).render_as_string(hide_password=False).replace("%", "%%")
        )
    return cfg


def migrate(url: str) -> None:
    """Upgrade the store at `url` to the newest revision. Idempotent and safe to run concurrently.

    Runs in one transaction that first takes a transaction-level advisory lock: a second caller
    blocks on the lock, then sees alembic_version already at head and does nothing. A failed
    migration rolls back completely (PostgreSQL DDL is transactional).
    """
    engine = create_sync_engine(_normalize(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
            cfg = alembic_config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    finally:
        engine.dispose()


async def create_engine(url: str | URL, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> AsyncEngine:
    """Async engine for the store, with a liveness check on checkout that costs no round trip.

    SQLAlchemy's `pool_pre_ping` sends `SELECT 1` on every checkout: 32 round trips per `deploy_app` on the
    Coolify path (issue 8's overhead figure). `_closed_under_us` catches what pre-ping was there for (a
    restarted or terminated server closes every pooled connection: the backend sends FATAL and EOF, so the
    idle socket turns readable) with one `select()` instead, and the pool replaces such a connection before
    handing it out."""
    engine = _create_async_engine(
        _normalize(url),
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_timeout=POOL_TIMEOUT_S,
        pool_pre_ping=False,
        pool_recycle=3600,
        connect_args={"application_name": "inkmcp", "connect_timeout": 10},
    )
    event.listen(engine.sync_engine, "checkout", _closed_under_us)
    return engine


def _closed_under_us(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Refuse a pooled connection whose socket is readable while idle: between transactions the server only
    writes to it to say it is going away (FATAL on terminate or shutdown, then EOF). Raising
    DisconnectionError makes the pool discard it and check out another (SQLAlchemy retries up to three
    times, then opens a fresh one). A false alarm (an unsolicited NOTICE) costs one reconnect, nothing more."""
    try:
        fd = dbapi_connection.driver_connection.pgconn.socket
    except Exception:  # closed already: psycopg raises on a closed pgconn
        raise DisconnectionError("connection already closed") from None
    readable, _, _ = select.select([fd], [], [], 0)
    if readable:
        raise DisconnectionError("the server closed the connection while it sat in the pool")


@dataclass(slots=True)
class Store:
    """The engine plus a session factory; `session()` is what request handlers use."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    def session(self) -> AsyncSession:
        return self.sessionmaker()

    async def close(self) -> None:
        from inkmcp.store.statements import close_statement_pool

        await close_statement_pool(self.engine)
        await self.engine.dispose()


async def open_store(url: str, *, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> Store:
    """Open (not migrate) the store; call `migrate(url)` first, e.g. in a thread at startup.

    `expire_on_commit=False`: objects stay readable after commit, which handlers rely on when they
    build a response from rows they just wrote.
    """
    engine = await create_engine(url, pool_size=pool_size, max_overflow=max_overflow)
    return Store(engine=engine, sessionmaker=async_sessionmaker(engine, expire_on_commit=False))
