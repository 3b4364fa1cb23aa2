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
* prefetch: while the shared log is under half the limit, a round trip also takes `prefetch` slots ahead, which
  this process uses within `margin / 2` seconds of their grant (the margin covers them: a slot's stamp is valid
  while its request arrives within `margin` of the grant, and `settle` corrects a late one); a sequence of calls
  (a deploy's create, envs, deploy, polls) then costs a round trip every few requests. The number taken ahead
  doubles (up to 8 x `prefetch`) each time the process used all it had taken before their lease ran out (a
  burst: ~18 requests of a first deploy cost 3 round trips instead of 4), and falls back to `prefetch` when some
  expire unused. Unused ones simply expire: they are only taken while half the budget is free. A replica may
  still spend the few it holds (for at most margin/2 s) after another replica recorded a 429 pause; those meet
  the 429 and wait like the first;
* known wait: after the database answered "full, next slot in t s", callers of this process are answered locally
  until then (stamps only expire, pauses only extend, so nothing can free a slot earlier);
* autocommit connection without pre-ping: the round trip is the function call alone (measured in
  benchmarks/coolify_client.py), a prepared statement on a plain psycopg connection kept by the budget (issue 8:
  ~0.25 ms of CPU per round trip where SQLAlchemy's engine took ~1 ms; a first deploy takes one or two);
* `settle` costs nothing when the answer came within `margin` (the common case), one more round trip otherwise.

A 429 from Coolify anyway (another API user of the same Coolify account, a lower API_RATE_LIMIT than configured)
calls `pause(retry_after)`: every replica stops sending until then.

`LocalBudget` is the same sliding log in memory for a process alone (the CLI, tests, a single replica without a
database). Both implement the `RequestBudget` protocol the client takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from bisect import insort
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import psycopg
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
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
    prefetch: int = Field(default=4, ge=0, description="slots a replica takes ahead in one round trip while the "
                          "shared log is under half the limit; each is usable for margin/2 seconds, then dropped")

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


@dataclass(frozen=True, slots=True)
class Grant:
    """A budget's answer. `wait == 0`: a slot is yours, send now, then `settle` it when the answer (or the
    failure) is back. `wait > 0`: nothing was taken; trying again after `wait` seconds can succeed."""

    wait: float
    stamp: float = 0.0
    """The slot's time on the budget's clock (epoch seconds for DbBudget, monotonic for LocalBudget)."""
    at: float = 0.0
    """time.monotonic() of the grant in this process."""
    slack: float = 0.0
    """How much earlier than `at` the stamp may have been taken: the grant's round trip (DbBudget stamps on the
    database's clock, at some moment of the round trip)."""

    def age(self, now: float) -> float:
        """The longest the slot can have existed at local time `now`."""
        return now - self.at + self.slack

    @property
    def granted(self) -> bool:
        return self.wait <= 0


@runtime_checkable
class RequestBudget(Protocol):
    """What the Coolify client asks before each request it sends, and tells after."""

    async def reserve(self) -> Grant:
        """Take one slot, or say how long until one can be had (taking nothing)."""
        ...

    async def settle(self, grant: Grant) -> None:
        """The request of `grant` is over (answered or failed): its arrival at Coolify is now bounded."""
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
        self._margin = self.settings.margin
        self._stamps: list[float] = []  # sorted
        self._paused_until = 0.0

    def _expire(self, now: float) -> None:
        cut = 0
        while cut < len(self._stamps) and self._stamps[cut] <= now - self._hold:
            cut += 1
        del self._stamps[:cut]

    async def reserve(self) -> Grant:
        now = time.monotonic()
        if self._paused_until - now > PAUSE_SLACK:
            return Grant(self._paused_until - now)
        self._expire(now)
        if len(self._stamps) < self._limit:
            self._stamps.append(now)
            return Grant(0.0, stamp=now, at=now)
        return Grant(max(0.001, self._stamps[len(self._stamps) - self._limit] + self._hold - now))

    async def settle(self, grant: Grant) -> None:
        now = time.monotonic()
        if not grant.granted or grant.age(now) <= self._margin:
            return
        try:
            self._stamps.remove(grant.stamp)
        except ValueError:
            pass
        insort(self._stamps, now - self._margin)  # held until now + window: the latest arrival + window

    async def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def aclose(self) -> None:
        return None


_TAKE = "SELECT granted, wait_s, t FROM inkmcp_coolify_budget_take(%(key)s, %(want)s, %(extra)s, %(limit)s, %(hold)s)"
_SETTLE = "SELECT inkmcp_coolify_budget_settle(%(key)s, %(stamp)s, %(late)s, %(hold)s)"
_PAUSE = "SELECT inkmcp_coolify_budget_pause(%(key)s, %(seconds)s)"
_IDLE = 2
"""Connections a DbBudget keeps open between round trips (its flush, and a settle or pause beside it)."""


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
        # the round trips go over plain psycopg connections to the engine's database (module docstring)
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._margin = self.settings.margin
        self._waiters: list[asyncio.Future[Grant]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._wait_until = 0.0  # monotonic: the database said no slot before then
        self._prefetch = self.settings.prefetch if self._margin > 0 else 0
        self._ahead = self._prefetch  # slots the next round trip takes ahead: doubles in a burst (module docstring)
        self._lease = self._margin / 2
        self._pool: list[Grant] = []  # slots taken ahead, newest last
        self.round_trips = 0
        self.settled_late = 0

    @classmethod
    def from_url(cls, url: str | URL, key: str, settings: BudgetSettings | None = None) -> DbBudget:
        from inkmcp.store.db import _normalize

        engine = create_async_engine(_normalize(url), pool_size=2, max_overflow=2, pool_pre_ping=False,
                                     connect_args={"application_name": "inkmcp-coolify-budget",
                                                   "connect_timeout": 10})
        return cls(engine, key, settings, own_engine=True)

    async def reserve(self) -> Grant:
        now = time.monotonic()
        fresh = [g for g in self._pool if g.age(now) < self._lease]
        if len(fresh) < len(self._pool):
            self._ahead = self._prefetch  # some expired unused: not a burst
        self._pool = fresh
        if self._pool:
            grant = self._pool.pop()  # taken ahead, still within its lease: no round trip
            if not self._pool:  # every slot taken ahead was used in time: take twice as many next time
                self._ahead = min(self._ahead * 2, self._prefetch * 8)
            return grant
        if self._wait_until - now > 0:
            return Grant(self._wait_until - now)  # known: no slot anywhere before then
        future: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await future

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """An autocommit connection: an idle one, else a new one (no ping first: a dead one fails the round trip,
        is closed, and the next round trip connects afresh). A connection whose round trip failed or was cancelled
        is never reused (its state is unknown)."""
        if self._idle:
            conn = self._idle.pop()
        else:
            conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True, connect_timeout=10,
                                                         application_name="inkmcp-coolify-budget")
        try:
            yield conn
        except BaseException:
            await asyncio.shield(conn.close())
            raise
        if len(self._idle) < _IDLE and not conn.closed:
            self._idle.append(conn)
        else:
            await conn.close()

    async def _call(self, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        """One prepared statement, one round trip; its first row."""
        async with self._connection() as conn:
            cur = await conn.execute(sql, params, prepare=True)  # type: ignore[arg-type]
            return await cur.fetchone()

    async def _flush(self) -> None:
        """Take slots for every queued waiter in one round trip per batch, until nobody waits. Whatever fails,
        every waiter of the batch gets an answer (the error), never a future left pending."""
        while self._waiters:
            batch, self._waiters = self._waiters, []
            sent = time.monotonic()
            try:
                row = await self._call(_TAKE, {
                    "key": self.key, "want": len(batch), "extra": 0 if self._pool else self._ahead,
                    "limit": self._limit, "hold": float(self._hold)})  # fmt: skip
                self.round_trips += 1
                assert row is not None  # the function returns one row
                granted, wait, stamp = int(row[0]), float(row[1]), float(row[2])
            except BaseException as e:
                error = e if isinstance(e, Exception) else RuntimeError("the request budget was cancelled")
                for f in batch:
                    if not f.done():
                        f.set_exception(error)
                if not isinstance(e, Exception):
                    raise
                continue
            now = time.monotonic()
            if wait > 0:
                self._wait_until = now + wait
            slots = [Grant(0.0, stamp=stamp, at=now, slack=now - sent) for _ in range(granted)]
            for f in batch:
                # A cancelled waiter's slot stays spent until it expires: conservative.
                if not f.done():
                    f.set_result(slots.pop() if slots else Grant(max(0.001, wait)))
            self._pool.extend(slots)  # what was taken ahead

    async def settle(self, grant: Grant) -> None:
        """Free when the answer came within the margin; else one round trip moves the stamp to the latest
        possible arrival (now), which lands well before the old stamp expires (requests time out long before a
        window passes)."""
        late = grant.age(time.monotonic())
        if not grant.granted or late <= self._margin:
            return
        await self._call(_SETTLE, {"key": self.key, "stamp": float(grant.stamp), "late": float(late - self._margin),
                                   "hold": float(self._hold)})  # fmt: skip
        self.settled_late += 1

    async def pause(self, seconds: float) -> None:
        self._pool.clear()  # slots taken ahead are not to be used into a 429
        self._ahead = self._prefetch
        await self._call(_PAUSE, {"key": self.key, "seconds": float(seconds)})
        self._wait_until = max(self._wait_until, time.monotonic() + seconds - PAUSE_SLACK)

    async def aclose(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher], timeout=5)
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        if self._own is not None:
            await self._own.dispose()


def make_budget(token: str, database_url: str | URL | None = None, *, key: str | None = None,
                settings: BudgetSettings | None = None) -> RequestBudget:
    """The budget a process should use: shared through the control-plane Postgres when it has one (replicas,
    `inkmcp serve` with INKMCP_DATABASE_URL), else in-process (the CLI, a single replica on its embedded store's
    data dir). `key`: one per Coolify *user* (default: the token's hash; pass the same key for several tokens of
    one user, whose limit they share). Settings from INKMCP_COOLIFY_RATE_* unless given."""
    settings = settings or BudgetSettings()
    if database_url is None:
        return LocalBudget(settings)
    return DbBudget.from_url(database_url, key or budget_key(token), settings)
