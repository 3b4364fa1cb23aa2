"""Bearer API-key authentication for /mcp.

Checked on every HTTP request (not once per MCP session), so a revoked key stops working at the next request.
The resolved Principal rides in the ASGI scope, where tool calls find it through the request the SDK attaches to
each message.

`VerifiedKeys` (issue 12 item 4) keeps keys the database accepted for a few seconds, so a busy agent's calls skip
the authentication round trip (a quarter of a `list_projects` call's CPU). It is emptied at once when any InkMCP
process revokes a key: the revoking transaction sends a PostgreSQL NOTIFY on `KEYS_CHANNEL`
(`AccountService.revoke_key`, `revoke_account_key`), which every serving process hears on a LISTEN connection.
Nothing is cached while that connection is not listening. The bound for a revocation that bypasses InkMCP (an
UPDATE typed into psql, a restored database) or a notification that never arrives (a network partition with no
reset) is `KEY_TTL` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import psycopg
from starlette.types import ASGIApp, Receive, Scope, Send

from inkmcp.core.accounts import KEYS_CHANNEL
from inkmcp.core.principal import Principal

PRINCIPAL_KEY = "inkmcp.principal"
Authenticate = Callable[[str], Awaitable[Principal | None]]

KEY_TTL = 5.0
"""Seconds a verified key is trusted without asking the database again, when no revocation notice arrives."""
MAX_KEYS = 10_000
"""Cached keys at most; past it the cache starts over (a key is one small entry; this is a bound, not a tuning)."""
RELISTEN_AFTER = 1.0

log = logging.getLogger("inkmcp.auth")


class VerifiedKeys:
    """`authenticate` with a short memory of the keys it accepted (see the module docstring for the bounds).

    A lookup that started before a revocation notice must not refill the cache with what it read before it: every
    notice (and every change of the listening state) bumps a generation, and a result is kept only if the generation
    it started under is still current. Only accepted keys are kept; an unknown key costs its database lookup every
    time, as before."""

    def __init__(self, authenticate: Authenticate, conninfo: str, *, ttl: float = KEY_TTL) -> None:
        self._authenticate = authenticate
        self._conninfo = conninfo
        self._ttl = ttl
        self._keys: dict[bytes, tuple[Principal, float]] = {}
        self._generation = 0
        self.listening = False
        self.notices = 0  # revocation notices heard (tests wait on it)

    def _forget(self, *, listening: bool) -> None:
        self._keys.clear()
        self._generation += 1
        self.listening = listening

    async def __call__(self, token: str) -> Principal | None:
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._keys.get(digest)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        generation = self._generation
        principal = await self._authenticate(token)
        if principal is None:
            self._keys.pop(digest, None)
        elif self.listening and generation == self._generation:
            if len(self._keys) >= MAX_KEYS:
                self._keys.clear()
            self._keys[digest] = (principal, now + self._ttl)
        return principal

    async def run(self) -> None:
        """LISTEN for revocations until cancelled; reconnect after a lost connection (caching nothing meanwhile)."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name="inkmcp-key-revocations")
                async with conn:
                    await conn.execute(f"LISTEN {KEYS_CHANNEL}")
                    self._forget(listening=True)  # a revocation while nobody listened: start empty
                    async for _ in conn.notifies():
                        self.notices += 1
                        self._forget(listening=True)
            except (psycopg.Error, OSError) as e:
                log.warning("key revocation listener lost its connection (%s); verifying every key until it is back",
                            type(e).__name__)
            finally:
                self._forget(listening=False)
            await asyncio.sleep(RELISTEN_AFTER)


class BearerAuthMiddleware:
    def __init__(self, app: ASGIApp, authenticate: Authenticate, *, protect_prefix: str = "/mcp",
                 on_reject: Callable[[], None] | None = None) -> None:
        self.app = app
        self.authenticate = authenticate
        self.prefix = protect_prefix
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = header.partition(" ")
        principal = await self.authenticate(token.strip()) if scheme.lower() == "bearer" and token else None
        if principal is None:
            if self.on_reject:
                self.on_reject()
            reason = "missing" if not header else "invalid or revoked"
            body = json.dumps({
                "error": "unauthorized",
                "message": f"API key {reason}. Send 'Authorization: Bearer dk_live_...'; "
                "create a key with `inkmcp keys create --account NAME`.",
            }).encode()
            await send({
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b'Bearer realm="inkmcp"'),
                    (b"content-length", str(len(body)).encode()),
                ],
            })
            await send({"type": "http.response.body", "body": body})
            return
        scope[PRINCIPAL_KEY] = principal
        await self.app(scope, receive, send)
