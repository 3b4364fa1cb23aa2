"""Running the server: HTTP (uvicorn) or stdio, with start-up and graceful shutdown around it.

Shutdown order matters: stop accepting MCP calls, cancel in-flight pipelines (their records stay
non-terminal and are resumed at the next start), stop tenant processes, close the store, stop the
embedded Postgres servers this process started.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import shlex
import signal
import socket
import sys
from collections.abc import Callable, Iterator

import uvicorn

from inkmcp.app import open_runtime
from inkmcp.errors import InkError
from inkmcp.mcp.server import build_http_app, build_mcp
from inkmcp.serve_address import ADDRESS_FILE as ADDRESS_FILE  # re-exported: the record's helpers moved there
from inkmcp.serve_address import address_recorded
from inkmcp.serve_address import mcp_url as mcp_url
from inkmcp.serve_address import running_address as running_address
from inkmcp.settings import Settings

log = logging.getLogger("inkmcp")


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM after its own shutdown, which would kill the process before InkMCP
    stops tenant processes and Postgres. Handle the signal, and return normally instead."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        sigs = (signal.SIGINT, signal.SIGTERM)
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in sigs}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    held: list[int]
    """Duplicates of the listening sockets' fds, closed by `release_port` only after the compute provider's close.

    uvicorn closes its listening sockets as it stops; the provider kills the tenants' cgroups later (rt.close).
    In between, a tenant's double-forked daemon could bind the MCP port and read the next agent's Bearer key.
    A duplicate fd keeps the socket (and so the port) bound and listening until every tenant process is gone:
    a connection arriving then waits in the backlog and is reset at release, never reaching a tenant."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.held = [os.dup(sock.fileno()) for srv in getattr(self, "servers", []) for sock in srv.sockets or ()]

    def release_port(self) -> None:
        for fd in getattr(self, "held", []):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held = []


def keys_create_line(settings: Settings, *, address: bool = True) -> str:
    """The exact command that makes a key for this server. A new user restarting `make serve` saw nothing about
    keys once the first start's key scrolled away; and a bare `inkmcp keys create` without this server's data dir
    makes a key in another installation (the default dir), whose "claude mcp add" line names the default port.
    `address=False`: for a server already running on the data dir, whose URL the command reads from serve.json
    (this process's own port and host may be another's: the stdio refusal printed the stdio process's)."""
    env = [f"INKMCP_{name.upper()}={value}" for name, value, default in (
        ("port", settings.port, Settings.model_fields["port"].default),
        ("host", settings.host, Settings.model_fields["host"].default),
    ) if value != default and address]
    exe = sys.argv[0] if sys.argv and sys.argv[0].endswith("inkmcp") else "inkmcp"
    return " ".join([*env, shlex.quote(exe), "keys", "create", "--account", "NAME", "--data-dir",
                     shlex.quote(str(settings.data_dir))])


async def serve_http(settings: Settings, *, announce: Callable[[str], None]) -> None:
    rt = await open_runtime(settings, serve=True)
    uvicorn_server: _Server | None = None
    try:
        if not await rt.platform.accounts.has_any_key():
            issued = await rt.platform.accounts.create_key("default", "created on first start")
            from inkmcp.cli import claude_line

            announce(
                "First start: created account 'default' and an API key (shown once, store it now):\n"
                f"  {issued.key}\nConnect Claude Code with:\n  {claude_line(settings, issued.key)}"
            )
        else:
            announce(f"API keys are shown once, when made (a lost one cannot be shown again); a new one:\n  "
                     f"{keys_create_line(settings)}")
        server = build_mcp(rt.platform, rt.metrics, stdio_principal=None,
                           deploy_answer_within=settings.deploy_answer_within)
        # --- issue 11 (web): the web UI (GitHub sign-in, dashboard) on the same port; its session signing key is
        # a shared_keys row sealed by the runtime's encryption keys
        from inkmcp.web.build import build_web

        web = await build_web(rt.platform, rt.box)
        # --- end
        # cpthroughput: verified keys are cached, emptied by the revocation notices heard on this URL (mcp/auth.py)
        keys_conninfo = rt.store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        app = build_http_app(server, rt.platform, rt.metrics, host=settings.host, port=settings.port,
                             allowed_hosts=settings.allowed_hosts, web=web, keys_conninfo=keys_conninfo)
        # access_log=False: at log level "warning" the access lines were never shown, but each response still built
        # them (client address, path) before the logger dropped them
        config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning", access_log=False,
                                timeout_graceful_shutdown=10, lifespan="on")
        log.info("serving", extra={"mcp": f"http://{settings.host}:{settings.port}/mcp",
                                   "apps": f"http://<service>.<project>.{settings.apps_domain}:{settings.proxy_port}"})
        # Everything built so far lives as long as the process: keep it out of the garbage collector's full
        # collections. Without this, one gen-2 collection under load walked the whole ~130 MB heap and stalled
        # every request for 0.4 s (the p99 of 64 clients); with it the longest pause measured was 36 ms.
        gc.collect()
        gc.freeze()
        uvicorn_server = _Server(config)
        with address_recorded(settings):
            await uvicorn_server.serve()
    finally:
        try:
            await rt.close()
        finally:
            if uvicorn_server is not None:
                uvicorn_server.release_port()  # only now: no tenant process is left to bind the port
        log.info("stopped")


async def serve_stdio(settings: Settings, account: str) -> None:
    try:
        rt = await open_runtime(settings, serve=True)
    except InkError as e:
        await refuse_stdio(_stdio_refusal(settings, e))
        raise SystemExit(1) from None
    try:
        try:
            principal = await rt.platform.accounts.principal_for(account, "stdio")
        except InkError as e:
            await refuse_stdio(e.render())
            raise SystemExit(1) from None
        server = build_mcp(rt.platform, rt.metrics, stdio_principal=principal,
                           deploy_answer_within=settings.deploy_answer_within)
        await server.run_stdio_async()
    finally:
        await rt.close()


def _stdio_refusal(settings: Settings, e: InkError) -> str:
    """The start-up error as the stdio client should show it; beside a running `inkmcp serve`, how to reach that
    one instead (its URL from serve.json, and the command that makes it a key)."""
    running = running_address(settings.data_dir)
    if running is None:
        return e.render()
    way = (f"connect this client to that server over HTTP instead: {running[1]}, with a key from "
           f"`{keys_create_line(settings, address=False)}`")
    return type(e)(e.message, argument=e.argument, fix=f"{e.fix}; or {way}" if e.fix else way).render()


async def refuse_stdio(message: str) -> None:
    """Answer every request on stdin with a JSON-RPC error carrying `message`, until the client closes stdin.

    A stdio server that fails to start and exits shows the MCP client only "Connection closed" (the reason went
    to stderr, which clients hide or drop). Answering `initialize` (and anything after it) with an error is what
    the protocol has for "this server cannot serve you": the client's connect fails with this text. Notifications
    get no answer, as JSON-RPC requires. The text goes to stderr at once too (the operator's terminal or the
    client's log); the caller exits non-zero when the client hangs up.
    """
    import mcp_types as types
    from mcp.server.stdio import stdio_server
    from mcp.shared.message import SessionMessage

    error = types.ErrorData(code=types.INTERNAL_ERROR, message=f"inkmcp cannot start: {message}")
    print(f"error: {message}", file=sys.stderr, flush=True)
    async with stdio_server() as (read, write), write:  # closing `write` ends the transport's writer at EOF
        async for item in read:
            if isinstance(item, SessionMessage) and isinstance(item.message, types.JSONRPCRequest):
                await write.send(SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=item.message.id, error=error)))
