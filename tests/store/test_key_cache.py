"""The verified-key cache in front of authentication (inkmcp/mcp/auth.py, issue 12 item 4), against a real
PostgreSQL: it saves the database lookup, a revocation through InkMCP empties it before the next request (NOTIFY
heard on a LISTEN connection), a revocation that bypasses InkMCP takes effect within the TTL, a lookup that raced a
revocation does not put the old answer back, and nothing is cached while the listener is not connected."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import psycopg

from inkmcp.core.accounts import AccountService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.principal import Principal
from inkmcp.mcp.auth import VerifiedKeys
from inkmcp.store.db import Store


def conninfo(store: Store) -> str:
    return store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


class Counting:
    """AccountService.authenticate, counting the lookups that reach the database."""

    def __init__(self, accounts: AccountService) -> None:
        self.accounts = accounts
        self.lookups = 0
        self.before_answer: Callable[[], Awaitable[None]] | None = None

    async def __call__(self, token: str) -> Principal | None:
        self.lookups += 1
        principal = await self.accounts.authenticate(token)
        if self.before_answer is not None:
            await self.before_answer()
        return principal


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def listening(keys: VerifiedKeys) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(keys.run())
    try:
        await until(lambda: keys.listening)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def new_key(store: Store) -> tuple[AccountService, str]:
    accounts = AccountService(store.sessionmaker, LimitDefaults())
    return accounts, (await accounts.create_key(f"kc-{uuid.uuid4().hex[:8]}")).key


async def test_a_verified_key_is_looked_up_once_and_a_revocation_empties_the_cache_at_once(store: Store) -> None:
    accounts, key = await new_key(store)
    counting = Counting(accounts)
    keys = VerifiedKeys(counting, conninfo(store))
    async with listening(keys):
        first = await keys(key)
        assert first is not None
        for _ in range(5):
            assert await keys(key) == first
        assert counting.lookups == 1, "a verified key should be served from the cache"
        assert await keys(key + "x") is None and await keys(key + "x") is None
        assert counting.lookups == 3, "an unknown key must reach the database every time"

        notices = keys.notices
        assert await accounts.revoke_key(key) == 1  # what `inkmcp keys revoke` runs, in another process or here
        await until(lambda: keys.notices > notices)
        assert await keys(key) is None
        assert counting.lookups == 4


async def test_a_dashboard_revocation_notifies_too(store: Store) -> None:
    accounts, key = await new_key(store)
    keys = VerifiedKeys(Counting(accounts), conninfo(store))
    async with listening(keys):
        principal = await keys(key)
        assert principal is not None
        infos = [k for k in await accounts.list_keys(principal.account_name) if k.prefix == principal.actor]
        notices = keys.notices
        await accounts.revoke_account_key(principal.account_id, infos[0].id)
        await until(lambda: keys.notices > notices)
        assert await keys(key) is None


async def test_a_revocation_written_around_inkmcp_takes_effect_within_the_ttl(store: Store) -> None:
    """An UPDATE typed into psql sends no notice: the bound is the TTL (KEY_TTL in production, 0.5 s here)."""
    accounts, key = await new_key(store)
    keys = VerifiedKeys(Counting(accounts), conninfo(store), ttl=0.5)
    async with listening(keys):
        assert await keys(key) is not None
        cached_by = time.monotonic()  # the entry's clock starts before this: it expires by cached_by + 0.5
        async with await psycopg.AsyncConnection.connect(conninfo(store), autocommit=True) as admin:
            await admin.execute("UPDATE api_keys SET revoked_at = now() WHERE prefix = %s", (key[:14],))
        # every lookup that starts past the TTL answers from the database (was: done within 0.1 s past it, which a
        # database round trip at load can take; the bound is on when the lookup starts, not on its speed)
        while True:
            started = time.monotonic()
            if await keys(key) is None:
                break
            assert started < cached_by + 0.5, "a revoked key was served from the cache past the TTL"
            await asyncio.sleep(0.02)


async def test_a_lookup_that_raced_a_revocation_does_not_refill_the_cache(store: Store) -> None:
    """The lookup reads the key as valid, the revocation commits and is heard, then the lookup answers: its
    (already stale) answer is returned once but not kept, so the next request asks the database again."""
    accounts, key = await new_key(store)
    counting = Counting(accounts)
    keys = VerifiedKeys(counting, conninfo(store))
    async with listening(keys):

        async def revoke_meanwhile() -> None:
            counting.before_answer = None
            notices = keys.notices
            await accounts.revoke_key(key)
            await until(lambda: keys.notices > notices)

        counting.before_answer = revoke_meanwhile
        assert await keys(key) is not None  # read before the revocation
        assert await keys(key) is None
        assert counting.lookups == 2


async def test_nothing_is_cached_while_the_listener_is_down(store: Store) -> None:
    accounts, key = await new_key(store)
    counting = Counting(accounts)
    keys = VerifiedKeys(counting, conninfo(store))
    assert await keys(key) is not None and await keys(key) is not None  # never listened: every call looks up
    assert counting.lookups == 2

    async with listening(keys):
        assert await keys(key) is not None
        lookups = counting.lookups
        async with await psycopg.AsyncConnection.connect(conninfo(store), autocommit=True) as admin:
            cur = await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                      "WHERE application_name = 'inkmcp-key-revocations' AND pid <> pg_backend_pid()")
            assert any(row[0] for row in await cur.fetchall())
        await until(lambda: not keys.listening, timeout=5)
        assert await keys(key) is not None and counting.lookups == lookups + 1, "the cache must be empty and unused"
        assert await keys(key) is not None and counting.lookups == lookups + 2
        await until(lambda: keys.listening, timeout=5)  # back after RELISTEN_AFTER
        assert await keys(key) is not None and await keys(key) is not None
        assert counting.lookups == lookups + 3
