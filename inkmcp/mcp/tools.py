"""The tool surface. Descriptions are terse on purpose: tools/list must stay under 5,000 characters
(tests/e2e/test_contract.py measures it on the wire and prints each tool's share when it grows).

Each tool is a thin adapter over Platform: resolve the caller, call one method, map domain errors
to tool errors whose text says which argument to change and how. Explanations an agent needs only
when something is wrong live in those errors, not in the descriptions every agent pays for.

Results are typed (each tool's return annotation, validated here) and sent as `structuredContent`
plus the same JSON as text, without an `outputSchema`: the schema is optional in MCP, and a constant
`{"type": "object"}` repeated by every tool told an agent nothing for ~450 characters of tools/list.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, get_args, get_type_hints

import pydantic_core
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, BeforeValidator, Field, TypeAdapter, WithJsonSchema

from inkmcp.billing.usage import UsageView  # issue 13 (credits)
from inkmcp.build.plan import check_mode
from inkmcp.core.databases import DatabaseRequest, Requested
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
from inkmcp.dbbackup.service import BackupList, DatabaseBackupService, RestoreResult  # issue 10 (dbbackup)
from inkmcp.errors import InkError, InvalidArgument, scrub_paths
from inkmcp.mcp.auth import PRINCIPAL_KEY
from inkmcp.metrics import Metrics

# Only hints that differ from the spec's defaults (readOnly false, destructive true, idempotent false).
READ = ToolAnnotations(read_only_hint=True)
IDEMPOTENT = ToolAnnotations(destructive_hint=False, idempotent_hint=True)
DEPLOY = IDEMPOTENT
DESTRUCTIVE = ToolAnnotations(destructive_hint=True, idempotent_hint=True)

Project = str


# deploy_app's `database` as tools/list shows it. DatabaseRequest still validates the call, so what is left out here
# is still accepted: `tier` (provision_database offers it: provision first, then deploy_app uses that database) and
# `type` as a single string (what the README and the server's instructions show; the list form covers it). ~110
# characters fewer for every agent; the errors of DatabaseRequest say what to pass when a value is wrong.
DATABASE_ARG = {"type": "object", "properties": {
    "type": {"type": "array", "items": {"enum": list(get_args(Requested)), "type": "string"}},
    "url": {"type": "string"},
}}


def database_shorthand(value: Any) -> Any:
    """deploy_app(database="postgres") / (database=["postgres", "redis"]) as {"type": ...}: what agents pass first
    (a new user's agent did, and read "Input should be a valid dictionary or instance of DatabaseRequest"). Not in
    tools/list (DATABASE_ARG stays an object, the budget); only accepted."""
    if isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return {"type": value}
    return value


STRICT_MAP = {"type": "object"}
"""A name -> value map as tools/list shows it. Not `additionalProperties: {"type": ["string", "null"]}`: Gemini's
function declarations (an OpenAPI 3.0 subset) refuse a list as `type` and do not know `additionalProperties`, and
some clients refuse `anyOf` too, so a whole tool (or the whole tools/list) was rejected there. The values are strings,
which the tool description says; unsetting is a list of names (`unset`), not a null value. A null value is still
accepted (callers from before `unset`), only no longer advertised."""


def env_changes(env_vars: dict[str, str | None] | None, unset: list[str] | None) -> dict[str, str | None]:
    """update_env_vars' two arguments as the one map Platform applies (a name -> None unsets it)."""
    changes = dict(env_vars or {})
    both = sorted(name for name in unset or () if changes.get(name) is not None)
    if both:
        raise InvalidArgument(f"{', '.join(both)} is both set in env_vars and named in unset.", argument="unset",
                              fix="name a variable in env_vars (to set it) or in unset (to remove it), not both")
    if not changes and not unset:
        raise InvalidArgument("nothing to change.", argument="env_vars",
                              fix='pass env_vars={"NAME": "value"} to set, or unset=["NAME"] to remove')
    return {**changes, **dict.fromkeys(unset or ())}


class Services(BaseModel):
    project: str
    services: list[ServiceView]


def structured(returns: TypeAdapter[Any], result: Any) -> CallToolResult:
    """The result as `structuredContent` and, for clients that read only text, the same JSON as text (what the SDK
    sends for a tool with an output schema). Validated against the tool's return annotation first, so a tool that
    returns the wrong shape fails here, loudly, as it did when the SDK checked it against the outputSchema."""
    checked = returns.validate_python(result)
    # a model dumps itself, so a returned subclass keeps its own fields (as the SDK does)
    data = (checked.model_dump(mode="json", by_alias=True) if isinstance(checked, BaseModel)
            else returns.dump_python(checked, mode="json", by_alias=True))
    text = pydantic_core.to_json(data, indent=2).decode()
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=data)


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
            returns = TypeAdapter(get_type_hints(fn)["return"])

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> CallToolResult:
                try:
                    out = structured(returns, await fn(*args, **kwargs))
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
                return out

            # structured_output=False: no outputSchema in tools/list; `structured` still returns structuredContent
            server.add_tool(wrapper, name=fn.__name__, annotations=annotations, structured_output=False,
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
    async def ensure_project(name: str, ctx: Context) -> ProjectResult:
        """Create the project if missing."""
        try:
            return await platform.ensure_project(principal(ctx), name)
        except InkError as e:
            raise as_argument(e, "project_name", "name") from None

    @tool(READ, "List projects")
    async def list_projects(ctx: Context) -> ProjectList:
        """Your projects."""
        return await platform.list_projects(principal(ctx))

    @tool(DEPLOY, "Deploy app")
    async def deploy_app(
        ctx: Context,
        repo_url: Annotated[str, Field(description="git URL or local path")],
        project_name: str | None = None,
        service_name: str = "web",
        mode: Mode | None = None,
        service_type: ServiceType | None = None,
        ref: str | None = None,
        build_command: str | None = None,
        start_command: Annotated[str | None, Field(description="must listen on $PORT")] = None,
        port: Annotated[int | None, Field(ge=1, le=65535)] = None,
        static_dir: str | None = None,
        app_dir: str | None = None,
        resources: Resources | None = None,
        # as update_env_vars shows it (STRICT_MAP): string values; a wrong value's error says what to pass
        env_vars: Annotated[dict[str, str | None] | None, WithJsonSchema(STRICT_MAP)] = None,
        database: Annotated[DatabaseRequest | None, BeforeValidator(database_shorthand), WithJsonSchema(DATABASE_ARG),
                            Field(description="sets DATABASE_URL, PG* / REDIS_URL")] = None,
        # --- issue 11 (github): push-to-deploy switch (GitHub repos; default on)
        auto_deploy: Annotated[bool | None, Field(description="on GitHub push")] = None,
        # --- end
    ) -> DeploymentView:
        """Repo to live URL. If not done in 40s, call wait_for_deployment."""
        # a mode the call itself contradicts (mode='static' with a start_command), refused before any work; what the
        # repo turns out to be is checked once planned (plan.resolve_mode)
        known = service_type == ServiceType.webapp_static if service_type else \
            (False if start_command and start_command.strip() else None)
        check_mode(mode, static_site=known, runs=start_command)
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
        """Deployment status; waits until done."""
        return await platform.wait_for_deployment(principal(ctx), deployment_id, timeout=timeout_seconds,
                                                  on_progress=await progress_sink(ctx))

    @tool(READ, "List services")
    async def list_services(ctx: Context, project_name: Project) -> Services:
        """Services: URL, mode, state, health."""
        return Services(project=project_name, services=await platform.list_services(principal(ctx), project_name))

    @tool(READ, "Get logs")
    async def get_logs(
        ctx: Context,
        project_name: Project,
        scope: LogScope = LogScope.runtime,
        service_name: str | None = None,
        tail: Annotated[int, Field(ge=1, le=500)] = 100,
    ) -> LogsView:
        """Logs, newest last; untrusted app output."""
        return await platform.get_logs(principal(ctx), project_name, scope=scope, service_name=service_name,
                                       tail=tail)

    @tool(IDEMPOTENT, "Update env vars")
    async def update_env_vars(
        ctx: Context,
        project_name: Project,
        # shown as a plain "object" (see STRICT_MAP); a null value still unsets, as before `unset` existed
        env_vars: Annotated[dict[str, str | None] | None, WithJsonSchema(STRICT_MAP)] = None,
        unset: list[str] | None = None,
        service_name: str | None = None,
    ) -> EnvUpdate:
        """Set env vars (string values), unset names; restarts live services."""
        return await platform.update_env_vars(principal(ctx), project_name, env_changes(env_vars, unset),
                                              service_name)

    @tool(READ, "List env vars")
    async def list_env_vars(ctx: Context, project_name: Project, service_name: str | None = None,
                            reveal: bool = False) -> EnvList:
        """Env vars, masked unless reveal."""
        return await platform.list_env_vars(principal(ctx), project_name, service_name, reveal)

    @tool(IDEMPOTENT, "Provision database")
    async def provision_database(ctx: Context, project_name: Project,
                                 tier: Tier = Tier.free,
                                 type: Literal["postgres", "redis"] = "postgres") -> DatabaseView:
        """Add Postgres or Redis to the project."""
        try:
            return await platform.provision_database(principal(ctx), project_name, tier, kind=type)
        except InkError as e:  # --- newuser5: named as deploy_app's database.type (not an argument of this tool)
            if e.argument == "database.type":
                e.argument, e.fix = "type", "omit type (postgres, the default), or ask the operator to enable Redis " \
                    "(INKMCP_REDIS_URL)"
                e.args = (e.render(),)
            raise

    @tool(READ, "Get database credentials")
    async def get_database_credentials(ctx: Context, project_name: Project) -> Credentials:
        """Database connection details."""
        return await platform.get_database_credentials(principal(ctx), project_name)

    # --- issue 13 (credits): get_usage (inkmcp/billing/usage.py)
    @tool(READ, "Get usage")
    async def get_usage(ctx: Context) -> UsageView:
        """Credits: balance, cap, spend, top costs."""
        return await platform.get_usage(principal(ctx))
    # --- end

    @tool(DESTRUCTIVE, "Delete")
    async def delete(ctx: Context, project_name: Project, confirm: str,
                     service_name: str | None = None, delete_database: bool = False) -> Deleted:
        """Delete a service, or the project if no service_name."""
        p = principal(ctx)
        if service_name is not None:
            return await platform.delete_service(p, project_name, service_name, confirm)
        return await platform.delete_project(p, project_name, confirm, delete_database)

    # --- issue 10 (dbbackup): tenant database backups (inkmcp/dbbackup/service.py, reached as
    # platform.database_backups, which app.py sets). Listing and dumping are one tool (issue 13: tools/list budget).
    # Its hint is destructive: create=true runs the retention, which deletes the oldest manual dumps beyond
    # INKMCP_DB_BACKUP_KEEP (files and rows). A hint says what a tool may do, so the listing shares it; a split into a
    # read-only list tool and a destructive create tool would be exact but costs ~250 characters of tools/list.
    def db_backups() -> DatabaseBackupService:
        if platform.database_backups is None:
            raise ToolError("Database backups are not enabled on this server; ask the operator.")
        return platform.database_backups

    @tool(ToolAnnotations(destructive_hint=True), "Database backups")
    async def database_backups(ctx: Context, project_name: Project, create: bool = False,
                               limit: Annotated[int, Field(ge=1, le=50)] = 10) -> BackupList:
        """List Postgres backups; create=true makes one, deleting the oldest past the kept count."""
        return await db_backups().backups(principal(ctx), project_name, create=create, limit=limit,
                                          on_progress=await progress_sink(ctx) if create else None)

    @tool(DESTRUCTIVE, "Restore database backup")
    async def restore_database_backup(ctx: Context, project_name: Project, backup_id: str,
                                      confirm: str) -> RestoreResult:
        """Replace the database with a backup (undoable)."""
        return await db_backups().restore(principal(ctx), project_name, backup_id, confirm,
                                          on_progress=await progress_sink(ctx))
    # --- end


def as_argument(e: InkError, internal: str, public: str) -> InkError:
    """`e` naming the argument as this tool spells it: the domain says `project_name` everywhere, but
    ensure_project's argument is `name`, and an agent told "pass project_name='x-bob'" to ensure_project gets
    "Argument 'project_name' is not accepted" next (seen by a new user: a taken or invalid name)."""
    if e.argument != internal:
        return e
    e.argument = public
    e.fix = e.fix.replace(f"{internal}=", f"{public}=") if e.fix else None
    e.args = (e.render(),)
    return e
