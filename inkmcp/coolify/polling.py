"""Waiting for Coolify: poll a deployment or an application's status with an interval that grows, to a deadline.

Why: Coolify does everything asynchronously (deployments are queued jobs, statuses are refreshed by a background
job; NOTES.md §d) and has no push channel, so InkMCP polls, and every poll costs one request of a budget of 200
a minute per Coolify user shared by every deploy in flight. A fixed 1 s poll of 30 concurrent builds alone would
be 1800 requests a minute. The interval therefore starts short (a restart or a cached build ends in seconds) and
grows geometrically to a ceiling (0.5 s -> 10 s by default: about 25 requests for a 3-minute build), each poll goes
through the client and so through its `RequestBudget`, and a poll that finds the budget spent or Coolify briefly
unavailable is not a failure: polling goes on, within the deadline.

Callers report progress: `on_change` is called with a `Progress` for the first status seen and for every change
(an MCP tool turns it into a progress notification, so an agent sees "in_progress" instead of silence or a 429).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from inkmcp.coolify.client import CoolifyClient, CoolifyError, CoolifyRateLimited
from inkmcp.coolify.models import Application, Deployment

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class Backoff(BaseModel):
    """The poll interval: `initial`, times `factor` after each poll, at most `maximum` seconds."""

    model_config = ConfigDict(frozen=True)

    initial: float = Field(default=0.5, gt=0)
    factor: float = Field(default=1.5, ge=1)
    maximum: float = Field(default=10.0, gt=0)

    def intervals(self) -> Any:
        interval = min(self.initial, self.maximum)
        while True:
            yield interval
            interval = min(self.maximum, interval * self.factor)


DEFAULT_BACKOFF = Backoff()


@dataclass(frozen=True, slots=True)
class Progress:
    """One observed status change of what is being waited for."""

    what: str
    """e.g. "deployment abc…" or "application abc…"."""
    status: str
    previous: str | None
    elapsed: float
    """Seconds since the wait began."""
    polls: int
    """Requests spent on this wait so far."""


ProgressCallback = Callable[[Progress], Awaitable[None] | None]


class PollTimeout(CoolifyError):
    """The deadline passed before the awaited state: `last_status` is what was seen last. Retryable: whatever was
    awaited may still get there (a long build); the caller reports it and can wait again."""

    retryable = True

    def __init__(self, message: str, *, last_status: str | None, polls: int, **kw: Any) -> None:
        self.last_status = last_status
        self.polls = polls
        super().__init__(message, **kw)


async def poll(fetch: Callable[[], Awaitable[T]], status_of: Callable[[T], str], done: Callable[[T], bool], *,
               what: str, timeout: float, backoff: Backoff = DEFAULT_BACKOFF,
               on_change: ProgressCallback | None = None, sleep: Sleep = asyncio.sleep) -> T:
    """Call `fetch` until `done(result)`, sleeping a growing interval between calls; return the last result.

    Retryable Coolify errors of a poll (the budget spent beyond the client's patience, Coolify unavailable after the
    client's own retries) do not end the wait: the next poll comes after max(interval, retry_after). Permanent
    errors (404: the thing is gone, 401/403) are raised at once. Past `timeout` seconds: PollTimeout."""
    if timeout <= 0:
        raise ValueError(f"timeout={timeout}: pass the seconds to wait for {what}, > 0")
    started = time.monotonic()
    deadline = started + timeout
    previous: str | None = None
    polls = 0
    intervals = backoff.intervals()
    last_error: CoolifyError | None = None
    while True:
        wait = next(intervals)
        polls += 1
        try:
            result = await fetch()
        except CoolifyError as e:
            if not e.retryable:
                raise
            last_error = e
            if isinstance(e, CoolifyRateLimited) and e.retry_after:
                wait = max(wait, e.retry_after)
        else:
            last_error = None
            status = status_of(result)
            if status != previous:
                if on_change is not None:
                    outcome = on_change(Progress(what, status, previous, time.monotonic() - started, polls))
                    if inspect.isawaitable(outcome):
                        await outcome
                previous = status
            if done(result):
                return result
        remaining = deadline - time.monotonic()
        if remaining <= 0 or (last_error is not None and wait > remaining):
            why = f"; last error: {last_error}" if last_error is not None else ""
            raise PollTimeout(f"{what} still {previous or 'unknown'} after {timeout:.0f} s ({polls} polls){why}",
                              last_status=previous, polls=polls)
        await sleep(min(wait, remaining))


async def wait_for_deployment(client: CoolifyClient, deployment_uuid: str, *, timeout: float = 1800.0,
                              backoff: Backoff = DEFAULT_BACKOFF, on_change: ProgressCallback | None = None,
                              sleep: Sleep = asyncio.sleep) -> Deployment:
    """Until the deployment is `finished`, `failed` or `cancelled-by-user`; return it (the caller reads `status`
    and `log_lines()`). A failed build is a result, not an exception."""
    return await poll(lambda: client.get_deployment(deployment_uuid), lambda d: d.status, lambda d: d.finished,
                      what=f"deployment {deployment_uuid}", timeout=timeout, backoff=backoff, on_change=on_change,
                      sleep=sleep)


async def wait_for_application(client: CoolifyClient, app_uuid: str, *,
                               until: Callable[[Application], bool] = lambda a: a.running, timeout: float = 300.0,
                               backoff: Backoff = DEFAULT_BACKOFF, on_change: ProgressCallback | None = None,
                               sleep: Sleep = asyncio.sleep) -> Application:
    """Until `until(application)` (default: its status starts with `running`); return the application. Coolify
    refreshes statuses in the background, so a status right after a deployment may still be the old one."""
    return await poll(lambda: client.get_application(app_uuid), lambda a: a.status or "unknown", until,
                      what=f"application {app_uuid}", timeout=timeout, backoff=backoff, on_change=on_change,
                      sleep=sleep)
