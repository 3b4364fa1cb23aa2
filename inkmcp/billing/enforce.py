"""What happens at zero (or over the cap), beyond refusing mutating calls (`Ledger.check`), on both providers:

* on_demand services stop waking and answer a 402 page. Local provider: its proxy asks `wake_gate` before each
  wake; the gate reads only memory for accounts in good standing, and re-reads the account's row for an account
  the last metering pass saw blocked, so a top-up lets the very next request wake it. Coolify: the service's
  Traefik router is pointed at InkMCP's `/_inkmcp/suspended/<token>` page instead of Sablier
  (inkmcp/providers/compute/coolify/suspend.py), and pointed back after a top-up.
* persistent services keep running for INKMCP_GRACE_S, then are put to sleep: local, like on_demand ones (the
  provider's `suspend`: route kept, requests get the 402 page); Coolify, their applications stopped and their
  hosts sent to the 402 page. Once the account can pay again the next pass undoes it (`resume`: no redeploy).
* nothing is deleted, either way.

Every suspension is a row of `billing_suspensions` (migration 0012), written *before* the remote change and deleted
only once it was undone, each step saving what it is about to change: a process that crashes half-way, or another
replica, finishes exactly that work at its next pass. Remote passes run under a session advisory lock
(`pg_try_advisory_lock`): one replica at a time, the others skip. The rows are also what agents see:
`list_services` shows such a service as `suspended` (the provider's `runtime()` is wrapped), and `get_usage` says
why and how to add credits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from inkmcp.billing.ledger import AccountStatus, Ledger
from inkmcp.billing.metering import BLOCKED_ACCOUNTS
from inkmcp.providers.compute.base import RuntimeState, ServiceKey, ServiceRuntime
from inkmcp.store.refs import ref_of

log = logging.getLogger("inkmcp.billing")

ENFORCE_LOCK_KEY = zlib.crc32(b"inkmcp.billing.enforce")

WANTED = text("""
SELECT CAST(sv.id AS text), sv.mode, CAST(sv.live_deployment_id AS text) FROM services sv
JOIN projects p ON p.id = sv.project_id
JOIN billing_accounts b ON b.account_id = p.account_id
WHERE sv.live_deployment_id IS NOT NULL AND b.blocked_since IS NOT NULL
  AND (sv.mode = 'on_demand' OR (sv.mode = 'persistent' AND b.blocked_since + make_interval(secs => :grace) <= now()))
""")
"""Services that should be suspended now: on_demand ones of a blocked account, persistent ones past the grace."""
HAVE = text("SELECT CAST(service_id AS text), mode, state, token, detail FROM billing_suspensions "
            "WHERE provider = :provider")
KEYS = text("""
SELECT CAST(sv.id AS text), sv.name, sv.provider_ref, CAST(p.id AS text), p.name, p.provider_ref,
       CAST(p.account_id AS text)
FROM services sv JOIN projects p ON p.id = sv.project_id WHERE sv.id = ANY(CAST(:ids AS uuid[]))
""")
RECORD = text("""
INSERT INTO billing_suspensions (service_id, account_id, provider, mode, token, state)
SELECT sv.id, p.account_id, :provider, :mode, :token, 'suspending' FROM services sv
JOIN projects p ON p.id = sv.project_id WHERE sv.id = CAST(:sid AS uuid)
ON CONFLICT (service_id) DO NOTHING
""")
SAVE = text("UPDATE billing_suspensions SET detail = CAST(:detail AS jsonb), updated_at = now() "
            "WHERE service_id = CAST(:sid AS uuid)")
DONE = text("UPDATE billing_suspensions SET state = 'suspended', detail = CAST(:detail AS jsonb), updated_at = now() "
            "WHERE service_id = CAST(:sid AS uuid)")
FORGET = text("DELETE FROM billing_suspensions WHERE service_id = CAST(:sid AS uuid)")
BY_TOKEN = text("""
SELECT sv.name, p.name, CAST(p.account_id AS text), a.name FROM billing_suspensions x
JOIN services sv ON sv.id = x.service_id JOIN projects p ON p.id = sv.project_id JOIN accounts a ON a.id = p.account_id
WHERE x.token = :token
""")
SUSPENDED_IDS = text("SELECT CAST(service_id AS text), mode FROM billing_suspensions")

Save = Callable[[dict[str, Any]], Awaitable[None]]


class Suspender(Protocol):
    """How one compute provider suspends a service and undoes it (idempotent, resumable from `detail`)."""

    name: str

    async def suspend(self, key: ServiceKey, mode: str, token: str, detail: dict[str, Any], save: Save) -> None: ...

    async def resume(self, key: ServiceKey, mode: str, detail: dict[str, Any], save: Save) -> None: ...


class LocalSuspender:
    """The local provider: persistent services sleep through its `suspend`/`resume`; on_demand ones need nothing
    here (its proxy asks `wake_gate` before every wake). Its processes live in this process, so every replica
    handles its own (no lock)."""

    name = "local"
    remote = False

    def __init__(self, compute: Any) -> None:
        self.compute = compute

    async def suspend(self, key: ServiceKey, mode: str, token: str, detail: dict[str, Any], save: Save) -> None:
        if mode == "persistent" and await self.compute.suspend(key.service_id):
            log.info("service %s put to sleep: its account is out of credits past the grace period", key.service_id)

    async def resume(self, key: ServiceKey, mode: str, detail: dict[str, Any], save: Save) -> None:
        if mode == "persistent":
            await self.compute.resume(key.service_id)


def suspender_for(compute: Any, public_url: str | None) -> Any:
    if hasattr(compute, "suspend") and hasattr(compute, "resume"):
        return LocalSuspender(compute)
    if getattr(compute, "name", None) == "coolify":
        from inkmcp.providers.compute.coolify.suspend import CoolifySuspender

        suspender = CoolifySuspender(compute, public_url)
        suspender.remote = True  # type: ignore[attr-defined]
        return suspender
    return None


def page_text(service_name: str, project_name: str, status: AccountStatus, hint: str) -> str:
    """The 402 page's text, the same on both providers. Anyone who visits the tenant's host reads it, so it says why
    and what to do, never the account's balance (its owner sees that on the dashboard and through get_usage)."""
    return (f"{service_name}.{project_name} is asleep: {status.reason()} on its account. "
            f"It wakes once credits are added: {hint}.")


@dataclass
class Enforcer:
    engine: AsyncEngine
    ledger: Ledger
    compute: Any
    blocked: set[str] = field(default_factory=set)
    suspended: dict[str, str] = field(default_factory=dict)
    """service id -> mode, as recorded in billing_suspensions at the last pass (what `runtime()` reports)."""
    suspender: Any = None
    _failing: dict[str, str] = field(default_factory=dict)
    """service id -> the last failure logged for it (a failure repeated every pass is logged once)."""
    _task: asyncio.Task[None] | None = None
    _pages: dict[str, tuple[float, int, str]] = field(default_factory=dict)
    """token -> (until, status, text): a page is read from the database at most once a second per token, so a flood
    of requests to a suspended service's host costs the database nothing more."""

    def __post_init__(self) -> None:
        if self.suspender is None:
            self.suspender = suspender_for(self.compute, self.ledger.settings.public_url)

    def install(self) -> None:
        """Hook the wake gate into the compute provider (local), and report suspended services as such."""
        if hasattr(self.compute, "wake_gate"):
            self.compute.wake_gate = self.wake_gate
        runtime = getattr(self.compute, "runtime", None)
        if runtime is not None and not getattr(runtime, "_billing", False):
            async def reported(key: ServiceKey) -> ServiceRuntime:
                rt: ServiceRuntime = await runtime(key)
                if key.service_id not in self.suspended or (rt.state == RuntimeState.stopped
                                                            and rt.detail == "not deployed"):
                    return rt
                why = ("its account cannot pay: persistent services stop after the grace period, on_demand ones "
                       "answer 402 instead of waking; a top-up wakes it (get_usage says how)")
                return rt.model_copy(update={"state": RuntimeState.suspended, "detail": f"suspended: {why}"})

            reported._billing = True  # type: ignore[attr-defined]
            self.compute.runtime = reported

    async def wake_gate(self, key: Any) -> str | None:
        """None to let a sleeping service wake, else the text of the 402 page."""
        if key.account_id not in self.blocked:
            return None
        status = await self.ledger.status(uuid.UUID(key.account_id))
        if not status.blocked:
            self.blocked.discard(key.account_id)
            return None
        return page_text(key.service_name, key.project_name, status, self._hint(key.account_id))

    def _hint(self, account: str) -> str:
        if self.ledger.settings.public_url is None:
            return "ask the operator of this server to add credits"
        return self.ledger.settings.dashboard_hint(account)

    async def page(self, token: str) -> tuple[int, str]:
        """The 402 page behind `/_inkmcp/suspended/<token>` (what a Coolify router of a suspended service sends
        to): 402 while the account cannot pay; 503 with a retry hint once it can (the router is being put back)."""
        if not token or len(token) > 64:
            return 404, "not found\n"
        now = time.monotonic()
        cached = self._pages.get(token)
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        if len(self._pages) > 10_000:
            self._pages = {k: v for k, v in self._pages.items() if v[0] > now}
        answer = await self._page(token)
        self._pages[token] = (now + 1.0, *answer)
        return answer

    async def _page(self, token: str) -> tuple[int, str]:
        async with self.engine.connect() as conn:
            row = (await conn.execute(BY_TOKEN, {"token": token})).first()
        if row is None:
            return 503, "This service is waking up (its account can pay again); retry in a few seconds.\n"
        status = await self.ledger.status(uuid.UUID(row[2]))
        if not status.blocked:
            return 503, "This service is waking up (its account can pay again); retry in a few seconds.\n"
        return 402, page_text(row[0], row[1], status, self._hint(row[3])) + "\n"

    def routes(self) -> list[Any]:
        """`/_inkmcp/suspended/{token}`, served by `inkmcp serve` beside /mcp (Billing.routes)."""
        from starlette.requests import Request
        from starlette.responses import PlainTextResponse
        from starlette.routing import Route

        async def endpoint(request: Request) -> PlainTextResponse:
            status, body = await self.page(str(request.path_params.get("token", "")))
            headers = {"Retry-After": "2"} if status == 503 else {}
            return PlainTextResponse(body, status_code=status, headers={**headers, "Cache-Control": "no-store"})

        return [Route("/_inkmcp/suspended/{token}", endpoint,
                      methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])]

    async def on_pass(self) -> None:
        """After each metering pass: refresh the blocked accounts, then suspend what should be and resume what
        no longer should be (see the module docstring). A remote provider's work (Coolify's API, SSH to run
        servers) runs in a task of its own, one at a time, so a slow or unreachable node never holds up the
        metering loop (whose awake samples count the time between two passes)."""
        async with self.engine.connect() as conn:
            self.blocked = {r[0] for r in await conn.execute(BLOCKED_ACCOUNTS)}
        if self.suspender is not None:
            if getattr(self.suspender, "remote", False):
                if self._task is None or self._task.done():
                    self._task = asyncio.create_task(self._remote_pass(), name="billing-enforce")
            else:
                await self._converge()
        await self._refresh()

    async def settle(self) -> None:
        """Wait for the remote pass under way, if any (tests; shutdown)."""
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._task)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _refresh(self) -> None:
        async with self.engine.connect() as conn:
            self.suspended = {r[0]: r[1] for r in await conn.execute(SUSPENDED_IDS)}

    async def _remote_pass(self) -> None:
        """One replica at a time (session advisory lock; the others skip this pass)."""
        try:
            async with self.engine.connect() as lock_conn:
                got = (await lock_conn.execute(text("SELECT pg_try_advisory_lock(:k)"),
                                               {"k": ENFORCE_LOCK_KEY})).scalar()
                await lock_conn.commit()
                if not got:
                    return
                try:
                    await self._converge()
                finally:
                    await lock_conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": ENFORCE_LOCK_KEY})
                    await lock_conn.commit()
            await self._refresh()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("enforcement pass failed; retrying at the next metering pass")

    async def _converge(self) -> None:
        provider = self.suspender.name
        async with self.engine.connect() as conn:
            found = (await conn.execute(WANTED, {"grace": self.ledger.settings.grace_s})).all()
            wanted = {r[0]: r[1] for r in found}
            live = {r[0]: r[2] for r in found}
            have = {r[0]: (r[1], r[2], r[3], dict(r[4] or {}))
                    for r in await conn.execute(HAVE, {"provider": provider})}
            ids = sorted(set(wanted) | set(have))
            keys = {r[0]: r for r in await conn.execute(KEYS, {"ids": ids})} if ids else {}
        for sid, mode in sorted(wanted.items()):
            if sid in have and have[sid][1] == "suspended" and have[sid][0] == mode:
                if have[sid][3].get("live") == live[sid]:
                    continue
                # a release that was under way when the account was blocked went live since (its router and
                # containers are the new release's): suspend that one, reading its router again
                have[sid] = (mode, "suspending", have[sid][2], {**have[sid][3], "reread": True})
            if sid in have and have[sid][0] != mode:  # the mode changed under the suspension: undo, then redo
                await self._resume(sid, have[sid], keys)
                have.pop(sid, None)
            await self._suspend(sid, mode, live[sid], have.get(sid), keys)
        for sid in sorted(set(have) - set(wanted)):
            await self._resume(sid, have[sid], keys)

    def _failed(self, sid: str, e: Exception, message: str) -> None:
        what = f"{type(e).__name__}: {e}"
        if self._failing.get(sid) != what:  # each pass retries; the same failure is logged once
            self._failing[sid] = what
            log.error(message + ": %s", sid, what, exc_info=e)

    def _key(self, row: Any) -> ServiceKey:
        name = self.suspender.name
        return ServiceKey(account_id=row[6], project_id=row[3], service_id=row[0], project_name=row[4],
                          service_name=row[1], project_ref=ref_of(row[5], name), service_ref=ref_of(row[2], name))

    def _saver(self, sid: str) -> Save:
        async def save(detail: dict[str, Any]) -> None:
            async with self.engine.begin() as conn:
                await conn.execute(SAVE, {"sid": sid, "detail": json.dumps(detail)})

        return save

    async def _suspend(self, sid: str, mode: str, live: str, had: tuple[str, str, str, dict[str, Any]] | None,
                       keys: dict[str, Any]) -> None:
        if sid not in keys:
            return
        token = had[2] if had else secrets.token_urlsafe(24)
        detail = {**(had[3] if had else {}), "live": live}
        if had is None:
            async with self.engine.begin() as conn:
                await conn.execute(RECORD, {"sid": sid, "provider": self.suspender.name, "mode": mode,
                                            "token": token})
        try:
            await self.suspender.suspend(self._key(keys[sid]), mode, token, detail, self._saver(sid))
        except Exception as e:
            self._failed(sid, e, "could not suspend service %s (its account cannot pay); retrying at the next pass")
            return
        self._failing.pop(sid, None)
        async with self.engine.begin() as conn:
            await conn.execute(DONE, {"sid": sid, "detail": json.dumps(detail)})  # with the release it suspended
        log.info("service %s (%s) suspended: its account cannot pay", sid, mode)

    async def _resume(self, sid: str, had: tuple[str, str, str, dict[str, Any]], keys: dict[str, Any]) -> None:
        if sid in keys:
            try:
                await self.suspender.resume(self._key(keys[sid]), had[0], had[3], self._saver(sid))
            except Exception as e:
                self._failed(sid, e, "could not resume service %s (its account can pay again); retrying at the next "
                                     "pass")
                return
            self._failing.pop(sid, None)
        async with self.engine.begin() as conn:
            await conn.execute(FORGET, {"sid": sid})
        log.info("service %s resumed: its account can pay again", sid)
