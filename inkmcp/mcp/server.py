"""The MCP server and the HTTP app around it (/mcp, /healthz, /metrics)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from inkmcp import __version__
from inkmcp.core.platform import Platform
from inkmcp.core.principal import Principal
from inkmcp.mcp import schema
from inkmcp.mcp.auth import BearerAuthMiddleware
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

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Context | None = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        if tool is not None:
            try:
                tool.fn_metadata.arg_model.model_validate(arguments)
            except ValidationError as e:
                valid = sorted(tool.parameters.get("properties", {}))
                raise ToolError(schema.explain(e, valid)) from None
        return await super().call_tool(name, arguments, context)


def build_mcp(platform: Platform, metrics: Metrics, *, stdio_principal: Principal | None,
              deploy_answer_within: float) -> InkMCPServer:
    server = InkMCPServer(name="inkmcp", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")
    register(server, platform, metrics, stdio_principal=stdio_principal, deploy_answer_within=deploy_answer_within)
    for tool in server._tool_manager.list_tools():
        tool.parameters = schema.input_schema(tool.parameters)
        tool.fn_metadata.arg_model = schema.strict_model(tool.fn_metadata.arg_model)
        tool.fn_metadata.output_schema = schema.output_schema(tool.fn_metadata.output_schema)
        tool.__dict__.pop("output_schema", None)  # reset the cached_property
    return server


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
) -> Starlette:
    hosts = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", *allowed_hosts]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{h}" for h in hosts] + [f"https://{h}" for h in allowed_hosts],
    )
    mcp_app = server.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)

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
            Mount("/", app=mcp_app),
        ],
        lifespan=lambda _app: server.session_manager.run(),
    )
    # --- issue 11 (web): sign-in and dashboard paths (/, /auth/..., /dashboard..., /static/...) go to the web UI
    # (same Host check as /mcp, plus INKMCP_PUBLIC_URL's host); everything else reaches `app` unchanged. The bearer
    # middleware below guards only /mcp, so the web paths need no exemption there.
    if web is not None:
        app = web.mount(app, hosts)  # type: ignore[assignment]
    # --- end
    return BearerAuthMiddleware(app, platform.accounts.authenticate,  # type: ignore[return-value]
                                on_reject=metrics.http_unauthorized.inc)
