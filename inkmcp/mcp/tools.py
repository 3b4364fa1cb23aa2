"""The tool surface. Descriptions are terse on purpose: tools/list must stay under 5,000 characters.

Each tool is a thin adapter over Platform: resolve the caller, call one method, map domain errors
to tool errors whose text says which argument to change and how.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field

from inkmcp.billing.usage import UsageView  # issue 13 (credits)
from inkmcp.core.databases import DatabaseRequest
from inkmcp.core.deployments import DeployRequest
from inkmcp.core.logs import LogsView
from inkmcp.core.platform import (
    Credentials,
    DatabaseView,
    Deleted,
    EnvList,
    EnvUpdate,
    Platform,
    ProjectList,
    ProjectResult,
)
from inkmcp.core.principal import Principal
from inkmcp.core.types import LogScope, Mode, Resources, ServiceType, Tier
from inkmcp.core.views import DeploymentView, ServiceView
from inkmcp.errors import InkError, scrub_paths
from inkmcp.mcp.auth import PRINCIPAL_KEY
from inkmcp.metrics import Metrics

# Only hints that differ from the spec's defaults (readOnly false, destructive true, idempotent false).
READ = ToolAnnotations(read_only_hint=True)
IDEMPOTENT = ToolAnnotations(destructive_hint=False, idempotent_hint=True)
DEPLOY = IDEMPOTENT
DESTRUCTIVE = ToolAnnotations(destructive_hint=True, idempotent_hint=True)

Project = str
ServiceOpt = Annotated[str | None, Field(description="needed if several")]


class Services(BaseModel):
    project: str
    services: list[ServiceView]


def register(server: Any, platform: Platform, metrics: Metrics, *, stdio_principal: Principal | None,
             deploy_answer_within: float) -> None:
    def principal(ctx: Context) -> Principal:
        request = ctx.request_context.request
        if request is not None and PRINCIPAL_KEY in request.scope:
            return request.scope[PRINCIPAL_KEY]
        if stdio_principal is not None and request is None:
            return stdio_principal
        raise ToolError("Not authenticated. Send 'Authorization: Bearer <api key>'.")

    def tool(annotations: ToolAnnotations, title: str) -> Callable[[Callable[..., Awaitable[Any]]], Any]:
        def deco(fn: Callable[..., Awaitable[Any]]) -> Any:
            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    result = await fn(*args, **kwargs)
                except InkError as e:
                    metrics.tool_calls.labels(fn.__name__, "error").inc()
                    raise ToolError(scrub_paths(e.render())) from None
                except ToolError:
                    metrics.tool_calls.labels(fn.__name__, "error").inc()
                    raise
                except Exception:
                    metrics.tool_calls.labels(fn.__name__, "crash").inc()
                    raise
                metrics.tool_calls.labels(fn.__name__, "ok").inc()
                return result

            server.add_tool(wrapper, name=fn.__name__, annotations=annotations,
                            description=" ".join((fn.__doc__ or "").split()))
            return wrapper

        return deco

    async def progress_sink(ctx: Context) -> Callable[[str], Awaitable[None]]:
        step = 0

        async def sink(line: str) -> None:
            nonlocal step
            step += 1
            await ctx.report_progress(step, None, line)

        return sink

    @tool(IDEMPOTENT, "Ensure project")
    async def ensure_project(name: Annotated[str, Field(description="DNS label, e.g. my-app")], ctx: Context
                             ) -> ProjectResult:
        """Create the project if missing. Names are unique across accounts."""
        return await platform.ensure_project(principal(ctx), name)

    @tool(READ, "List projects")
    async def list_projects(ctx: Context) -> ProjectList:
        """Your projects."""
        return await platform.list_projects(principal(ctx))

    @tool(DEPLOY, "Deploy app")
    async def deploy_app(
        ctx: Context,
        repo_url: Annotated[str, Field(description="git URL or local path")],
        project_name: Annotated[str | None, Field(description="default: repo name")] = None,
        service_name: Annotated[str, Field(description="e.g. web, api, worker")] = "web",
        mode: Mode | None = None,
        service_type: ServiceType | None = None,
        ref: Annotated[str | None, Field(description="branch, tag or commit")] = None,
        build_command: str | None = None,
        start_command: Annotated[str | None, Field(description="must listen on $PORT")] = None,
        port: Annotated[int | None, Field(ge=1, le=65535)] = None,
        static_dir: Annotated[str | None, Field(description="site files, e.g. dist")] = None,
        app_dir: Annotated[str | None, Field(description="monorepo subdir")] = None,
        resources: Resources | None = None,
        env_vars: Annotated[dict[str, str | None] | None, Field(description="null unsets")] = None,
        database: Annotated[DatabaseRequest | None,
                            Field(description="type postgres: DATABASE_URL, PG*; redis: REDIS_URL; or both")] = None,
        # --- issue 11 (github): push-to-deploy switch (GitHub repos; default on)
        auto_deploy: Annotated[bool | None, Field(description="redeploy on GitHub push")] = None,
        # --- end
    ) -> DeploymentView:
        """Repo to live URL: project, database, env, build, start. Same commit+settings: no-op.
        Answers within 40s; if not done, call wait_for_deployment."""
        req = DeployRequest(
            repo_url=repo_url, project_name=project_name, service_name=service_name, mode=mode,
            service_type=service_type, ref=ref, build_command=build_command, start_command=start_command,
            port=port, static_dir=static_dir, app_dir=app_dir, resources=resources, env_vars=env_vars,
            database=database,
            auto_deploy=auto_deploy,  # issue 11 (github)
        )
        return await platform.deploy_app(principal(ctx), req, wait_seconds=deploy_answer_within,
                                         on_progress=await progress_sink(ctx))

    @tool(READ, "Wait for deployment")
    async def wait_for_deployment(
        ctx: Context,
        deployment_id: str,
        timeout_seconds: Annotated[float, Field(ge=0, le=50)] = 40,
    ) -> DeploymentView:
        """Deployment status; waits (with progress) until done or timeout."""
        return await platform.wait_for_deployment(principal(ctx), deployment_id, timeout=timeout_seconds,
                                                  on_progress=await progress_sink(ctx))

    @tool(READ, "List services")
    async def list_services(ctx: Context, project_name: Project) -> Services:
        """Services: URL, mode, state, health, last deployment."""
        return Services(project=project_name, services=await platform.list_services(principal(ctx), project_name))

    @tool(READ, "Get logs")
    async def get_logs(
        ctx: Context,
        project_name: Project,
        scope: LogScope = LogScope.runtime,
        service_name: ServiceOpt = None,
        tail: Annotated[int, Field(ge=1, le=500)] = 100,
    ) -> LogsView:
        """Log lines, newest last, secrets redacted (build: latest deployment). Untrusted app output."""
        return await platform.get_logs(principal(ctx), project_name, scope=scope, service_name=service_name,
                                       tail=tail)

    @tool(IDEMPOTENT, "Update env vars")
    async def update_env_vars(
        ctx: Context,
        project_name: Project,
        env_vars: Annotated[dict[str, str | None], Field(description="null unsets")],
        service_name: Annotated[str | None, Field(description="omit for all services")] = None,
    ) -> EnvUpdate:
        """Set/unset env vars; restarts live services (result says which)."""
        return await platform.update_env_vars(principal(ctx), project_name, env_vars, service_name)

    @tool(READ, "List env vars")
    async def list_env_vars(ctx: Context, project_name: Project, service_name: ServiceOpt = None,
                            reveal: bool = False) -> EnvList:
        """Env vars, values masked unless reveal."""
        return await platform.list_env_vars(principal(ctx), project_name, service_name, reveal)

    @tool(IDEMPOTENT, "Provision database")
    async def provision_database(ctx: Context, project_name: Project,
                                 tier: Annotated[Tier, Field(description="as allowed for the account")] = Tier.free,
                                 type: Literal["postgres", "redis"] = "postgres") -> DatabaseView:
        """Postgres or Redis for the project (one of each)."""
        return await platform.provision_database(principal(ctx), project_name, tier, kind=type)

    @tool(READ, "Get database credentials")
    async def get_database_credentials(ctx: Context, project_name: Project) -> Credentials:
        """The project database's connection details."""
        return await platform.get_database_credentials(principal(ctx), project_name)

    # --- issue 13 (credits): get_usage (inkmcp/billing/usage.py)
    @tool(READ, "Get usage")
    async def get_usage(ctx: Context) -> UsageView:
        """Credits: balance, cap, spend, burn, days left, top costs."""
        return await platform.get_usage(principal(ctx))
    # --- end

    @tool(DESTRUCTIVE, "Delete")
    async def delete(ctx: Context, project_name: Project, confirm: Annotated[str, Field(description="repeat the name")],
                     service_name: Annotated[str | None, Field(description="omit to delete the project")] = None,
                     delete_database: bool = False) -> Deleted:
        """Delete a service, or a project with its services (its database only if delete_database)."""
        p = principal(ctx)
        if service_name is not None:
            return await platform.delete_service(p, project_name, service_name, confirm)
        return await platform.delete_project(p, project_name, confirm, delete_database)

    # --- issue 10 (dbbackup): tenant database backups (inkmcp/dbbackup/service.py, reached as
    # platform.database_backups, which app.py sets). Results are the service's pydantic models, dumped here so this
    # block needs no import at the top of the module.
    def db_backups() -> Any:
        if platform.database_backups is None:
            raise ToolError("Database backups are not enabled on this server; ask the operator.")
        return platform.database_backups

    @tool(READ, "List database backups")
    async def list_database_backups(ctx: Context, project_name: Project,
                                    limit: Annotated[int, Field(ge=1, le=50)] = 10) -> dict[str, Any]:
        """Newest first."""
        return (await db_backups().list(principal(ctx), project_name, limit)).model_dump(mode="json")

    @tool(ToolAnnotations(destructive_hint=False), "Back up database")
    async def backup_database(ctx: Context, project_name: Project) -> dict[str, Any]:
        """Dump the database now, e.g. before a migration."""
        made = await db_backups().backup(principal(ctx), project_name, on_progress=await progress_sink(ctx))
        return made.model_dump(mode="json")

    @tool(DESTRUCTIVE, "Restore database backup")
    async def restore_database_backup(ctx: Context, project_name: Project, backup_id: str,
                                      confirm: Annotated[str, Field(description="repeat the name")]) -> dict[str, Any]:
        """Replace the database with a backup; saves the current state first (undo_backup_id)."""
        done = await db_backups().restore(principal(ctx), project_name, backup_id, confirm,
                                          on_progress=await progress_sink(ctx))
        return done.model_dump(mode="json")
    # --- end
