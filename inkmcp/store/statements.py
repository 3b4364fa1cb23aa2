"""Hot single statements (authentication, list_projects, the deploy pipeline's fenced writes) as plain psycopg
statements on psycopg's own pool.

Why not the ORM here: these run on every MCP request or many times per deployment. Measured on the 2-core dev box,
one indexed SELECT costs 1.7 ms of InkMCP's CPU through an ORM session (pool checkout with pre-ping, greenlet bridge,
entity loading), 1.0 ms through SQLAlchemy Core, and 0.25 ms as a prepared statement on a `psycopg_pool` connection
(benchmarks/control_plane.py). A Coolify deploy_app records ~27 single-statement steps and refs (each fenced by the
deployment's lease, each committed before the next remote call), so they take this path too. Everything that reads
or writes across several statements in one transaction stays on the ORM.

The pool belongs to the store's engine (`statement_pool(sessions)` finds it from any session factory bound to that
engine), so every caller, tests included, takes the same path. It opens on first use and is closed by
`Store.close()`. Connections are autocommit: every statement is its own transaction. A read that fails because the
server closed the connection (the embedded server restarted) is retried once on a fresh connection, which is safe
for a read and costs no liveness round trip; a write is not retried (it may have committed before the connection
broke), its error goes to the caller as it would from the ORM.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

MIN_SIZE = 1
MAX_SIZE = 8
"""Statements are one indexed statement each (well under a millisecond in PostgreSQL), so a few connections keep
64 concurrent clients from queueing; the ORM's own pool (store.db.POOL_SIZE) stays the one that holds many."""

_pools: weakref.WeakKeyDictionary[AsyncEngine, StatementPool] = weakref.WeakKeyDictionary()


class StatementPool:
    def __init__(self, conninfo: str) -> None:
        self._pool = AsyncConnectionPool(conninfo, min_size=MIN_SIZE, max_size=MAX_SIZE, open=False,
                                         kwargs={"autocommit": True, "application_name": "inkmcp-statements"})

    async def _ready(self) -> AsyncConnectionPool:
        if self._pool.closed:  # opened on first use; open() is safe to call concurrently (psycopg_pool)
            await self._pool.open(wait=True, timeout=15)
        return self._pool

    async def fetch(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only statement (prepared by psycopg after its first uses on a connection)."""
        pool = await self._ready()
        for attempt in (1, 2):
            try:
                async with pool.connection() as conn:
                    cur = await conn.execute(query, params, prepare=True)  # type: ignore[arg-type]
                    return await cur.fetchall()
            except psycopg.OperationalError:
                if attempt == 2:
                    raise
                await pool.check()  # drop connections the server closed, then try once more
        raise AssertionError("unreachable")

    async def write(self, query: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[tuple[Any, ...]]:
        """The RETURNING rows of one writing statement, committed (autocommit), not retried."""
        pool = await self._ready()
        async with pool.connection() as conn:
            cur = await conn.execute(query, params, prepare=True)  # type: ignore[arg-type]
            return await cur.fetchall()

    async def transaction(self, statements: Sequence[tuple[str, Sequence[Any] | Mapping[str, Any]]]
                          ) -> list[list[tuple[Any, ...]]]:
        """Several statements in one transaction, sent at once with its BEGIN and COMMIT (psycopg's pipeline
        mode): one round trip for all of them. PostgreSQL still runs them one after the other, each on a snapshot
        of its own taken when it starts (READ COMMITTED), so a statement after one that waited for a lock sees
        what was committed meanwhile. A failing statement rolls the whole transaction back and raises. Not
        retried. Returns each statement's rows (empty for one without rows)."""
        pool = await self._ready()
        async with pool.connection() as conn:
            cursors = []
            async with conn.pipeline(), conn.transaction():
                for query, params in statements:
                    cursors.append(await conn.execute(query, params, prepare=True))  # type: ignore[arg-type]
            return [await cur.fetchall() if cur.description is not None else [] for cur in cursors]

    # --- overhead2: placement's reserve runs one interactive transaction on this pool (a few pipelined round
    # trips instead of an ORM session's one per statement): inkmcp/placement/records.py
    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One autocommit connection of the pool, for a caller that runs its own `conn.transaction()`."""
        pool = await self._ready()
        async with pool.connection() as conn:
            yield conn

    async def check(self) -> None:
        """Drop connections the server closed (after an OperationalError), as `fetch` does before its retry."""
        await (await self._ready()).check()
    # --- end overhead2

    async def close(self) -> None:
        await self._pool.close()  # a no-op on a pool never opened


def statement_pool(sessions: async_sessionmaker[AsyncSession]) -> StatementPool:
    """The read pool of the engine `sessions` is bound to (created on first call)."""
    engine = sessions.kw["bind"]
    pool = _pools.get(engine)
    if pool is None:
        url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        pool = _pools[engine] = StatementPool(url)
    return pool


async def close_statement_pool(engine: AsyncEngine) -> None:
    pool = _pools.pop(engine, None)
    if pool is not None:
        await pool.close()
