"""The engine's pool without `pool_pre_ping` (inkmcp/store/db.py `_closed_under_us`): a connection the server closed
while it sat in the pool is replaced before anyone gets it (no failed transaction after a restart or a terminate),
and a live pooled connection is handed out without a round trip."""

from __future__ import annotations

import asyncio
import time

import psycopg
from sqlalchemy import event, text

from inkmcp.store.db import Store


async def _pooled_backends(store: Store) -> set[int]:
    """Check out several connections at once so the pool holds more than one, and say which backends they are."""
    together = asyncio.Barrier(4)

    async def pid() -> int:
        async with store.session() as s:
            value = (await s.execute(text("SELECT pg_backend_pid()"))).scalar_one()
            await together.wait()  # every connection is checked out at once: four distinct backends
            return int(value)

    return set(await asyncio.gather(*(pid() for _ in range(together.parties))))


async def test_connections_closed_by_the_server_cost_no_failed_transaction(store: Store) -> None:
    pids = await _pooled_backends(store)
    assert len(pids) == 4
    url = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        await admin.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [list(pids)])
        deadline = time.monotonic() + 10
        while True:  # what a restart looks like from the pool: every backend it held is gone
            cur = await admin.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [list(pids)])
            if (await cur.fetchone())[0] == 0:  # type: ignore[index]
                break
            assert time.monotonic() < deadline, "terminated backends did not go away"
            await asyncio.sleep(0.01)
    # every pooled connection is dead; each of these transactions must still succeed, on a fresh backend
    after = await _pooled_backends(store)
    assert not (after & pids)
    for _ in range(5):
        async with store.sessionmaker.begin() as s:
            assert (await s.execute(text("SELECT 1"))).scalar_one() == 1


async def test_a_live_pooled_connection_is_reused_without_a_ping(store: Store) -> None:
    async with store.session() as s:  # at least one connection sits in the pool now
        await s.execute(text("SELECT 1"))
    pings: list[object] = []
    connects: list[object] = []
    original = store.engine.dialect.do_ping

    def counting_ping(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return original(dbapi_connection)

    def on_connect(dbapi_connection: object, _record: object) -> None:
        connects.append(dbapi_connection)

    store.engine.dialect.do_ping = counting_ping  # type: ignore[method-assign]
    event.listen(store.engine.sync_engine, "connect", on_connect)
    try:
        for _ in range(5):
            async with store.sessionmaker.begin() as s:
                await s.execute(text("SELECT pg_backend_pid()"))
    finally:
        store.engine.dialect.do_ping = original  # type: ignore[method-assign]
        event.remove(store.engine.sync_engine, "connect", on_connect)
    assert connects == []  # every transaction reused a pooled connection: none was taken for dead
    assert pings == []
