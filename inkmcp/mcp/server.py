"""The MCP server and the HTTP app around it (/mcp, /healthz, /metrics)."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import AsyncIterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import anyio
import pydantic_core
from mcp.server._otel import OpenTelemetryMiddleware
from mcp.server.auth.middleware.bearer_auth import AuthorizationContext
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.streamable_http import StreamableHTTPServerTransport
from mcp.server.streamable_http_manager import StreamableHTTPASGIApp, StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.jsonrpc_dispatcher import progress_token_from_params
from opentelemetry import trace
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from inkmcp import __version__
from inkmcp.core.platform import Platform
from inkmcp.core.principal import Principal
from inkmcp.mcp import schema
from inkmcp.mcp.auth import BearerAuthMiddleware, VerifiedKeys
from inkmcp.mcp.tools import register
from inkmcp.metrics import Metrics

# --- issue 11 (web)
if TYPE_CHECKING:
    from inkmcp.web.app import WebUI
# --- end

INSTRUCTIONS = (
    "Deploy apps from git repos. Start with deploy_app(repo_url=...); add database={'type':'postgres'} for "
    "Postgres (DATABASE_URL). Follow unfinished deployments with wait_for_deployment; debug with get_logs."
)


class InkMCPServer(MCPServer):
    """MCPServer that refuses unknown arguments and explains invalid ones argument by argument."""

    _schemas: dict[str, dict[str, Any]]

    def _arguments_schema(self, tool: Any) -> dict[str, Any]:
        """The tool's full argument schema (bounds, enums), made on its first refused call and kept."""
        schemas = self.__dict__.setdefault("_schemas", {})
        if tool.name not in schemas:
            schemas[tool.name] = schema.arguments_schema(tool.fn_metadata.arg_model)
        return schemas[tool.name]

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            try:
                tool.fn_metadata.arg_model.model_validate(arguments)
            except ValidationError as e:
                valid = sorted(tool.parameters.get("properties", {}))
                raise ToolError(schema.explain(e, valid, self._arguments_schema(tool))) from None
        else:
            raise ToolError(self._unknown_tool(name))
        return await super().call_tool(name, arguments, context)

    def _unknown_tool(self, name: str) -> str:
        """The SDK's "Unknown tool: deploy" left the agent to guess; name the likely one and list the rest, as
        refused arguments do."""
        names = sorted(tool.name for tool in self._tool_manager.list_tools())
        close = difflib.get_close_matches(name, names, n=2, cutoff=0.5) or [n for n in names if name and name in n][:2]
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        return f"Unknown tool {name[:80]!r}.{hint} Fix: call one of: {', '.join(names)} (tools/list describes them)."


def build_mcp(platform: Platform, metrics: Metrics, *, stdio_principal: Principal | None,
              deploy_answer_within: float) -> InkMCPServer:
    server = InkMCPServer(name="inkmcp", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    # --- cpthroughput (issue 12 item 4): InkMCP sets up no OpenTelemetry tracer, so the SDK's span per message is a
    # no-op that still cost ~3% of a call (attributes, context extraction, a proxy tracer lookup). With a tracer
    # provider installed (opentelemetry-instrument), the middleware stays.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        lowlevel = server._lowlevel_server
        lowlevel.middleware = [m for m in lowlevel.middleware if not isinstance(m, OpenTelemetryMiddleware)]
    # --- end
    register(server, platform, metrics, stdio_principal=stdio_principal, deploy_answer_within=deploy_answer_within)
    for tool in server._tool_manager.list_tools():
        tool.parameters = schema.input_schema(tool.parameters)
        tool.fn_metadata.arg_model = schema.strict_model(tool.fn_metadata.arg_model)
        tool.fn_metadata.output_schema = schema.output_schema(tool.fn_metadata.output_schema)
        tool.__dict__.pop("output_schema", None)  # reset the cached_property
    return server


# --- cpthroughput (issue 12 item 4): the answer mode is chosen per request
QUICK_TOOLS = frozenset({
    "ensure_project", "list_projects", "list_services", "list_env_vars", "get_database_credentials", "get_usage",
})
"""Tools that answer from the database alone, in milliseconds: without a progress token their call is answered as one
JSON body. Every other tool (builds, deploys, waits, provisioning, backups, logs from a remote) keeps the SSE stream,
whose keep-alive pings hold the connection open through proxies while it runs."""

_ANSWER_AS_JSON: ContextVar[bool] = ContextVar("inkmcp_answer_as_json", default=False)


def answers_as_json(body: bytes) -> bool:
    """Whether a POSTed JSON-RPC message is answered with one `application/json` body instead of an SSE stream.

    The streamable HTTP spec lets the server pick either for every request. An SSE answer costs the SDK an
    EventSourceResponse with its own task group, a ping task, a disconnect listener and two memory streams: about
    1 ms of this 2-core machine's CPU per call, 40% of a `list_projects`. Nothing but the response can travel for a
    request that carries no progress token (no `notifications/progress`; the tools send no log messages and no
    requests to the client), so those are answered as JSON, except `tools/call` of a tool not in QUICK_TOOLS. A
    request with a progress token always streams, so progress works exactly as before."""
    try:
        message = pydantic_core.from_json(body)
    except ValueError:
        return False  # the SDK answers the parse error itself
    if not isinstance(message, dict) or "id" not in message:
        return False  # notifications and responses: 202, no body either way
    params = message.get("params")
    if progress_token_from_params(params) is not None:
        return False
    if message.get("method") == "tools/call":
        return isinstance(params, dict) and params.get("name") in QUICK_TOOLS
    return True


def is_batch(body: bytes) -> bool:
    """Whether a POSTed body is a JSON array: a JSON-RPC batch.

    MCP removed batching in protocol 2025-06-18 and the SDK (2.3.0) answers one with its pydantic validation error of
    every message type it tried (-32602, a screenful), which tells a client nothing it can act on. Refused before
    the SDK sees it (`_BATCH_REFUSED`), in one line that says what to send instead; nothing in the batch runs."""
    return body.lstrip()[:1] == b"["


_BATCH_REFUSED = JSONResponse({"jsonrpc": "2.0", "id": None, "error": {
    "code": -32600,  # Invalid Request
    "message": "JSON-RPC batches are not supported (MCP removed batching in protocol 2025-06-18): send one JSON-RPC "
               "message per POST (each request may go in its own concurrent POST on the same session); nothing in "
               "this batch was run."}}, status_code=400)


class _AnswerModeTransport(StreamableHTTPServerTransport):
    """The SDK's transport, with `is_json_response_enabled` read per request (a context variable set while one POST
    is handled) instead of once per server. The session's message router runs in its own task, where the variable
    keeps its default (False): messages related to a streamed request reach its stream as before."""

    @property  # type: ignore[override]
    def is_json_response_enabled(self) -> bool:
        return _ANSWER_AS_JSON.get()

    @is_json_response_enabled.setter
    def is_json_response_enabled(self, value: bool) -> None:
        """The SDK's constructor sets it; the mode is decided per request, so the value is not kept."""

    async def _handle_post_request(self, scope: Scope, request: Request, receive: Receive, send: Send) -> None:
        body = await request.body()  # Request caches the body for the SDK
        if is_batch(body):
            await _BATCH_REFUSED(scope, receive, send)
            return
        mode = _ANSWER_AS_JSON.set(answers_as_json(body))
        try:
            await super()._handle_post_request(scope, request, receive, send)
        finally:
            _ANSWER_AS_JSON.reset(mode)


class _SessionManager(StreamableHTTPSessionManager):
    """The SDK's session manager, whose session transports choose their answer mode per request.

    Why the `__class__` swap: the official `mcp` SDK (2.3.0, read in `mcp/server/streamable_http_manager.py` and
    `streamable_http.py`) offers the answer mode only as one bool per manager (`json_response`), copied into every
    transport it builds, and builds the session's `StreamableHTTPServerTransport` itself inside `_admit_session`,
    with no transport class or factory parameter (the stateless path and the 2026 "modern" path likewise). Setting
    `transport.is_json_response_enabled` per POST would race: one session serves concurrent POSTs, and the
    session's router task reads the flag too. The alternative, re-implementing `_admit_session` to construct
    `_AnswerModeTransport`, would copy the SDK's private session bookkeeping (`_server_instances`,
    `_session_owners`, the session limit), which drifts silently on an upgrade. The swap keeps the SDK's object,
    state and registration: `_AnswerModeTransport` adds no instance state and neither class has `__slots__`, so
    the layouts are the same. On an SDK upgrade, re-check that `_admit_session` still returns the new transport
    (tests/e2e/test_answer_mode.py fails if JSON answers stop) and whether a supported per-request mode exists.
    """

    def _admit_session(self, requestor: AuthorizationContext | None) -> StreamableHTTPServerTransport | None:
        transport = super()._admit_session(requestor)
        if transport is not None:  # same object and state, its answer mode per request (no state of its own)
            transport.__class__ = _AnswerModeTransport
        return transport


@contextlib.asynccontextmanager
async def _serving(manager: StreamableHTTPSessionManager, keys: VerifiedKeys | None) -> AsyncIterator[None]:
    """The app's lifespan: the SDK's session manager, and the key cache's revocation listener beside it."""
    async with manager.run(), anyio.create_task_group() as tg:
        if keys is not None:
            tg.start_soon(keys.run)
        yield
        tg.cancel_scope.cancel()


def _mcp_first(mcp: ASGIApp, rest: ASGIApp) -> ASGIApp:
    """POST/GET/DELETE /mcp straight to the SDK's endpoint; every other path through the Starlette app. The MCP
    endpoint needs none of Starlette's routing and middleware (the SDK's transport answers its own errors), and
    going through two Starlette apps cost ~8% of a call."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/mcp":
            await mcp(scope, receive, send)
        else:
            await rest(scope, receive, send)

    return app
# --- end


# --- issue 11 (github)
def _github_routes(platform: Platform) -> list[Route]:
    from inkmcp.github.webhooks import webhook_routes

    return webhook_routes(platform)
# --- end


def build_http_app(
    server: InkMCPServer,
    platform: Platform,
    metrics: Metrics,
    *,
    host: str,
    port: int,
    allowed_hosts: list[str],
    # --- issue 11 (web): the web UI (inkmcp/web), served on this port in front of the MCP app
    web: WebUI | None = None,
    # --- end
    keys_conninfo: str | None = None,  # cpthroughput: the store's libpq URL: verified keys cached (mcp/auth.py)
) -> Starlette:
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", *allowed_hosts]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts] + [f"https://{h}" for h in allowed_hosts],
    )
    # --- cpthroughput: the SDK's session manager and endpoint (what server.streamable_http_app builds, with the
    # answer mode chosen per request), routed before Starlette
    manager = _SessionManager(app=server._lowlevel_server, security_settings=security)
    server._lowlevel_server._session_manager = manager
    mcp_endpoint = StreamableHTTPASGIApp(manager)
    keys = VerifiedKeys(platform.accounts.authenticate, keys_conninfo) if keys_conninfo else None
    # --- end

    async def healthz(_: Request) -> Response:
        try:
            await platform.deploys.count_live()
        except Exception:
            return JSONResponse({"status": "degraded", "store": "unreachable"}, status_code=503)
        return JSONResponse({"status": "ok", "version": __version__})

    async def metrics_endpoint(_: Request) -> Response:
        metrics.running_services.set(await platform.deploys.count_live())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/metrics", metrics_endpoint),
            # --- issue 11 (github): POST /webhooks/github (push-to-deploy; GitHub signs it, so no bearer key)
            *_github_routes(platform),
            # --- end
            # --- issue 13 (credits): POST /webhooks/stripe when billing and INKMCP_STRIPE_WEBHOOK_SECRET are set
            *(platform.billing.routes() if platform.billing is not None else []),
            # --- end
            # cpthroughput: requests to /mcp itself never get here (_mcp_first); the route keeps /mcp/ -> /mcp
            Route("/mcp", endpoint=mcp_endpoint),
        ],
        lifespan=lambda _app: _serving(manager, keys),
    )
    # --- issue 11 (web): sign-in and dashboard paths (/, /auth/..., /dashboard..., /static/...) go to the web UI
    # (same Host check as /mcp, plus INKMCP_PUBLIC_URL's host); everything else reaches `app` unchanged. The bearer
    # middleware below guards only /mcp, so the web paths need no exemption there.
    if web is not None:
        app = web.mount(app, hosts)  # type: ignore[assignment]
    # --- end
    return BearerAuthMiddleware(_mcp_first(mcp_endpoint, app), keys or platform.accounts.authenticate,  # type: ignore[return-value]
                                on_reject=metrics.http_unauthorized.inc)
