"""A request budget that keeps every InkMCP replica inside Coolify's API rate limit, so no 429 reaches an agent.

Coolify throttles its API per *user*: `API_RATE_LIMIT` requests per minute, 200 by default (`config/api.php`,
Laravel's `throttle:api`; ../shared/coolify/NOTES.md §a), and all tokens of that user share it. Several InkMCP
replicas (and the CLI) using one token must therefore share one budget, or each would spend the whole limit.

Why a sliding log, not a token bucket or a fixed window of our own
-----------------------------------------------------------------
Laravel's limiter is a fixed window that opens at the first request after the previous one expired: its phase is
unknown to us. A token bucket of capacity N refilled at N/window, or our own fixed window of N, can put up to
~2N requests into one of Coolify's windows (a full burst at the end of ours, another at the start of the next).
The only rule that stays under the limit whatever the phase is "at most N requests in ANY interval of one window":
a sliding log of the send times of the last N requests. It costs an array of at most N float8 per key (1.6 KB at
200) and is exact. Each slot is held for `window + margin` seconds: the margin covers the gap between the moment
a slot is granted and the moment the request reaches Coolify (lock wait, HTTP latency, jitter), so that two
requests granted one window apart can never land in one of Coolify's windows.

Across replicas: `DbBudget`, one row per key (a hash of the token) in the control-plane Postgres
(`coolify_request_budget`, migration 0004), changed only by the SQL function `inkmcp_coolify_budget_take`, which
locks the row, drops expired stamps, grants what fits and answers how long to wait otherwise, in one statement and
one round trip. Everything is timed by the database's clock, so replicas on hosts with skewed clocks still agree.

In-process fast path (what keeps a request at no more than one short round trip):
* coalescing: concurrent requests of one process share one round trip (the first caller takes slots for every
  waiter queued meanwhile);
* known wait: after the database answered "full, next slot in t s", callers of this process are answered locally
  until then (stamps only expire, pauses only extend, so nothing can free a slot earlier);
* autocommit connection without pre-ping: the round trip is the function call alone (measured in
  benchmarks/coolify_client.py; about 0.3-0.6 ms over a local socket).

A 429 from Coolify anyway (another API user of the same Coolify account, a lower API_RATE_LIMIT than configured)
calls `pause(retry_after)`: every replica stops sending until then.

`LocalBudget` is the same sliding log in memory for a process alone (the CLI, tests, a single replica without a
database). Both implement the `RequestBudget` protocol the client takes.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from typing import Protocol, runtime_checkable

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

PAUSE_SLACK = 0.05
"""Seconds of a pause still to run that `reserve` ignores: the client sleeps the Retry-After itself and may wake a
few milliseconds before the pause's end on another clock; Retry-After is rounded up to whole seconds anyway."""


class BudgetSettings(BaseSettings):
    """The limit InkMCP keeps to, per Coolify user. Environment: INKMCP_COOLIFY_RATE_LIMIT,
    INKMCP_COOLIFY_RATE_WINDOW, INKMCP_COOLIFY_RATE_MARGIN, INKMCP_COOLIFY_RATE_RESERVE."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_COOLIFY_RATE_", extra="ignore")

    limit: int = Field(default=200, ge=1, description="Coolify's API_RATE_LIMIT: requests per window per user "
                       "(NOTES.md §a; 200 unless the Coolify operator changed API_RATE_LIMIT)")
    window: float = Field(default=60.0, gt=0, description="Coolify's throttle window in seconds (Laravel: 60)")
    margin: float = Field(default=1.0, ge=0, description="seconds each slot is held beyond the window, covering "
                          "the time from the grant to the request's arrival at Coolify")
    reserve: int = Field(default=0, ge=0, description="slots per window left unused for other API users of the "
                         "same Coolify account (an operator's scripts, `pulumi up`)")

    @property
    def effective_limit(self) -> int:
        if self.reserve >= self.limit:
            raise ValueError(f"INKMCP_COOLIFY_RATE_RESERVE ({self.reserve}) leaves nothing of "
                             f"INKMCP_COOLIFY_RATE_LIMIT ({self.limit}); pass a reserve below the limit")
        return self.limit - self.reserve

    @property
    def hold(self) -> float:
        """Seconds a granted slot counts against the limit."""
        return self.window + self.margin


def budget_key(token: str) -> str:
    """The row key for a token: its SHA-256 (the token never reaches the database). Pass the same explicit key to
    every client whose tokens belong to one Coolify user: Coolify's limit is per user, not per token."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@runtime_checkable
class RequestBudget(Protocol):
    """What the Coolify client asks before each request it sends."""

    async def reserve(self) -> float:
        """Take one slot: 0.0 when the caller may send now; else nothing was taken and the value is the number of
        seconds after which trying again can succeed."""
        ...

    async def pause(self, seconds: float) -> None:
        """Coolify answered 429 with Retry-After `seconds`: nobody sharing this budget sends before then."""
        ...

    async def aclose(self) -> None:
        ...


class LocalBudget:
    """The sliding log in this process only (no database): the CLI, tests, a single replica."""

    def __init__(self, settings: BudgetSettings | None = None) -> None:
        self.settings = settings or BudgetSettings()
        self._limit = self.settings.effective_limit
        self._hold = self.settings.hold
        self._stamps: deque[float] = deque()
        self._paused_until = 0.0
        self._now = time.monotonic

    async def reserve(self) -> float:
        now = self._now()
        if self._paused_until - now > PAUSE_SLACK:
            return self._paused_until - now
        while self._stamps and self._stamps[0] <= now - self._hold:
            self._stamps.popleft()
        if len(self._stamps) < self._limit:
            self._stamps.append(now)
            return 0.0
        return max(0.001, self._stamps[len(self._stamps) - self._limit] + self._hold - now)

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, self._now() + seconds)

    async def aclose(self) -> None:
        return None


TAKE_SQL = text("SELECT granted, wait_s FROM inkmcp_coolify_budget_take(:key, :want, :limit, :hold)")
PAUSE_SQL = text("SELECT inkmcp_coolify_budget_pause(:key, :seconds)")


class DbBudget:
    """The sliding log in the control-plane Postgres, shared by every replica using the same `key`.

    Build it with `DbBudget.from_url(INKMCP_DATABASE_URL, key=budget_key(token))` (its own two-connection
    autocommit engine without pre-ping: one round trip per grant), or pass an engine. The table and function come
    from migration 0004 (`inkmcp.store.db.migrate`)."""

    def __init__(self, engine: AsyncEngine, key: str, settings: BudgetSettings | None = None, *,
                 own_engine: bool = False) -> None:
        self.settings = settings or BudgetSettings()
        self.key = key
        self._limit = self.settings.effective_limit
        self._hold = self.settings.hold
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._own = engine if own_engine else None
        self._waiters: list[asyncio.Future[float]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wait_until = 0.0  # monotonic: the database said no slot before then
        self.round_trips = 0

    @classmethod
    def from_url(cls, url: str | URL, key: str, settings: BudgetSettings | None = None) -> DbBudget:
        from inkmcp.store.db import _normalize

        engine = create_async_engine(_normalize(url), pool_size=2, max_overflow=2, pool_pre_ping=False,
                                     connect_args={"application_name": "inkmcp-coolify-budget",
                                                   "connect_timeout": 10})
        return cls(engine, key, settings, own_engine=True)

    async def reserve(self) -> float:
        now = time.monotonic()
        if self._wait_until - now > 0:
            return self._wait_until - now  # known: no slot anywhere before then
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    async def _flush(self) -> None:
        """Take slots for every queued waiter in one round trip per batch, until nobody waits."""
        while self._waiters:
            batch, self._waiters = self._waiters, []
            try:
                async with self._engine.connect() as conn:
                    row = (await conn.execute(TAKE_SQL, {"key": self.key, "want": len(batch), "limit": self._limit,
                                                         "hold": self._hold})).one()
                self.round_trips += 1
            except BaseException as e:
                for f in batch:
                    if not f.done():
                        f.set_exception(e if isinstance(e, Exception) else RuntimeError("budget cancelled"))
                if not isinstance(e, Exception):
                    raise
                continue
            granted, wait = int(row.granted), float(row.wait_s)
            if wait > 0:
                self._wait_until = time.monotonic() + wait
            for i, f in enumerate(batch):
                if not f.done():
                    f.set_result(0.0 if i < granted else max(0.001, wait))
                elif i < granted:
                    pass  # a cancelled waiter's slot stays spent: conservative

    async def pause(self, seconds: float) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(PAUSE_SQL, {"key": self.key, "seconds": float(seconds)})
        self._wait_until = max(self._wait_until, time.monotonic() + seconds - PAUSE_SLACK)

    async def aclose(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher], timeout=5)
        if self._own is not None:
            await self._own.dispose()
