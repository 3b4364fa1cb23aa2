"""Bearer API-key authentication for /mcp.

Checked on every HTTP request (not once per MCP session), so a revoked key stops working at once.
The resolved Principal rides in the ASGI scope, where tool calls find it through the request the
SDK attaches to each message.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from inkmcp.core.principal import Principal

PRINCIPAL_KEY = "inkmcp.principal"
Authenticate = Callable[[str], Awaitable[Principal | None]]


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
