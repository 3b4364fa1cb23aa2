"""The operations agents and operators call, one method per tool, each audited when it mutates.

MCP tools and CLI commands are thin adapters over this class, so there is never a second path
to the same effect.
"""

from __future__ import annotations

import uuid
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.accounts import AccountService, LimitOverrides
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseInfo, DatabaseRequest, DatabaseService
from inkmcp.core.deployments import (
    BUILD_TIME_ENV,
    DeployRequest,
    DeployService,
    ProcessNotService,
    ProgressSink,
    unavailable,
)
from inkmcp.core.envvars import PROJECT_SCOPE, EnvService, mask, validate_env_payload
from inkmcp.core.limits import AccountLimits
from inkmcp.core.logs import MAX_TAIL, LogsView, bound, redact
from inkmcp.core.principal import Principal
from inkmcp.core.projects import ProjectService
from inkmcp.core.views import DeploymentSummary, DeploymentView, ProjectView, ServiceView
from inkmcp.errors import DeployFailed, InvalidArgument, NotFound, scrub_paths
from inkmcp.providers.compute.base import ComputeProvider, LogScope, ProviderUnavailable
from inkmcp.providers.database.base import Tier
from inkmcp.store.models import Deployment, Service
from inkmcp.store.refs import ref_of

# --- overhead6: only the rows a later call could still reuse (_reusable_of: the service's live deployment, and
# deployments on their way), not every non-failed row of the service's history on every env change: a terminal row
# that is not the live one never becomes reusable again (only _LIVE_SQL sets `live`, on the deployment it releases;
# the reconciler only clears live_deployment_id), so the newest row of a hash being one of those means "deploy".
# The status list is core.views.TERMINAL (tests/replicas/test_deploy_path_new_project.py checks they agree).
_RETIRE_NOOP_HASHES = text("""
    UPDATE deployments d SET config_hash = md5(d.config_hash || clock_timestamp()::text)
    FROM services s
    WHERE s.id = ANY(:services) AND d.service_id = s.id
      AND (d.id = s.live_deployment_id OR d.status NOT IN ('live', 'failed', 'superseded'))
""")
# --- end overhead6
"""update_env_vars changed what these services run with, so no earlier deployment is "the same deploy" any more:
deploy_app's no-op check (`DeployService._reusable`) compares the call's commit + settings + env hash with its
deployments', and a repeat of the call that set GREETING=hi, made after update_env_vars set GREETING=hello2,
matched the live deployment and answered `reused` while "hello2" was served. An md5 (32 hex) never equals a
keyed sha256 (64 hex); failed deployments keep theirs, which the retry breaker (billing/breaker.py) counts."""

class ProjectResult(BaseModel):
    project: str
    created: bool


class ProjectList(BaseModel):
    projects: list[ProjectView]
    total: int
    truncated: bool


class EnvUpdate(BaseModel):
    project: str
    scope: str = Field(description="'project' or the service name")
    set: list[str]
    unset: list[str]
    restarted: list[str] = Field(description="services restarted (and healthy) with the new values")
    pending: list[str] = Field(
        default_factory=list, description="services whose restart is queued; list_services shows env=applied once done"
    )
    note: str


class EnvList(BaseModel):
    project: str
    scope: str
    env: dict[str, str] = Field(description="masked unless reveal=true")
    masked: bool
    services: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="without service_name: each service's own values (deploy_app's env_vars), which override env "
        "for that service; they read as lost when only the project-wide ones were shown")
    # --- newuser4: an agent checking "is DATABASE_URL set?" after provision_database / database= saw `env: {}` and
    # set it by hand from get_database_credentials; the variables every service gets from the add-ons are listed too
    add_ons: dict[str, str] = Field(
        default_factory=dict,
        description="set in every service by the project's database / Redis (DATABASE_URL, PG*, REDIS_URL); a "
        "variable of the same name in env or services overrides it")
    # --- end


class DatabaseView(BaseModel):
    project: str
    provider: str
    tier: str
    created: bool
    env_var: str = "DATABASE_URL"
    note: str


class RedisCredentials(BaseModel):
    """The project's Redis add-on (what its services get as REDIS_URL)."""

    host: str
    port: int
    user: str
    password: str
    url: str


class Credentials(BaseModel):
    """The project's Postgres at the top level (as before Redis existed; None when it has only Redis), its Redis
    under `redis`."""

    project: str
    provider: str | None
    host: str | None
    port: int | None
    database: str | None
    user: str | None
    password: str | None
    url: str | None
    redis: RedisCredentials | None = None


class Deleted(BaseModel):
    deleted: str
    database_deleted: bool = False


class Platform:
    # --- issue 10 (dbbackup): the tenant database backups service (inkmcp/dbbackup/service.py), set by app.py;
    # None where nothing wires it (its MCP tools then say backups are not enabled on this server).
    database_backups: Any = None
    # --- end
    # --- issue 11 (github): inkmcp.github.wiring.GitHubIntegration (deploy hooks, webhook handler), set by
    # inkmcp.github.wiring.install from app.py; None when GitHub is not configured
    github: Any = None
    # --- end

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        accounts: AccountService,
        audit: AuditLog,
        projects: ProjectService,
        envs: EnvService,
        databases: DatabaseService,
        deploys: DeployService,
        compute: ComputeProvider,
        max_env_bytes: int,
    ) -> None:
        self.sessions = sessions
        self.accounts = accounts
        self.audit = audit
        self.projects = projects
        self.envs = envs
        self.databases = databases
        self.deploys = deploys
        self.compute = compute
        self._max_env_bytes = max_env_bytes
        # --- issue 13 (credits): inkmcp.billing.service.Billing, set by app.py when INKMCP_PRICES is set; None =
        # billing off: nothing is checked or refused.
        self.billing: Any = None
        # --- end

    # --- issue 13 (credits): one cheap query before each mutating call; refused with balance, cap and how to add
    async def _can_pay(self, p: Principal, action: str) -> None:
        if self.billing is not None:
            await self.billing.check(p, action)

    async def get_usage(self, p: Principal) -> Any:
        from inkmcp.billing.usage import usage_view

        return await usage_view(self.billing.ledger if self.billing else None, p.account_id, p.account_name)
    # --- end

    def _audited(
        self, p: Principal, action: str, target: str | None, arguments: dict[str, Any]
    ) -> AbstractAsyncContextManager[None]:
        return self.audit.recording(p, action, target, arguments)

    # ---------------------------------------------------------------- projects
    async def ensure_project(self, p: Principal, name: str) -> ProjectResult:
        async with self._audited(p, "ensure_project", name, {"name": name}):
            project, created = await self.projects.ensure(p, name)
        return ProjectResult(project=project.name, created=created)

    # ------------------------------------------------------- operator: limits
    async def account_limits(self, account_name: str) -> AccountLimits:
        return await self.accounts.get_limits(account_name)

    async def set_account_limits(self, account_name: str, overrides: LimitOverrides) -> AccountLimits:
        """Operator command (CLI only, never an MCP tool): per-account overrides of the INKMCP_MAX_* defaults."""
        await self.accounts.get_limits(account_name)  # a typo is an error, never a new account
        p = await self.accounts.principal_for(account_name, "cli")
        args = overrides.model_dump(mode="json", exclude_none=True)
        async with self._audited(p, "set_account_limits", account_name, args):
            return await self.accounts.set_limits(account_name, overrides)

    async def list_projects(self, p: Principal) -> ProjectList:
        projects, total = await self.projects.list(p)
        return ProjectList(projects=projects, total=total, truncated=total > len(projects))

    # -------------------------------------------------------------- deployments
    async def deploy_app(
        self, p: Principal, req: DeployRequest, *, wait_seconds: float, on_progress: ProgressSink | None = None
    ) -> DeploymentView:
        args = req.model_dump(mode="json", exclude_none=True)
        async with self._audited(p, "deploy_app", f"{req.project_name or req.repo_url}/{req.service_name}", args):
            await self._can_pay(p, "deploy_app")  # --- issue 13 (credits) --- end
            view = await self.deploys.deploy(p, req)
        if view.done or wait_seconds <= 0:
            return view
        # --- overhead6: a call that joined an identical deployment (made before it, or by a concurrent identical
        # call) says so after waiting too: `wait` renders the record, which does not know which call made it
        waited = await self.deploys.wait(p, uuid.UUID(view.deployment_id), timeout=wait_seconds,
                                         on_progress=on_progress)
        return waited.model_copy(update={"reused": True}) if view.reused else waited
        # --- end overhead6

    async def wait_for_deployment(
        self, p: Principal, deployment_id: str, *, timeout: float, on_progress: ProgressSink | None = None
    ) -> DeploymentView:
        try:
            dep_id = uuid.UUID(deployment_id)
        except ValueError:
            raise InvalidArgument(
                f"{deployment_id!r} is not a deployment id.",
                argument="deployment_id",
                fix="pass the deployment_id returned by deploy_app (a UUID)",
            ) from None
        return await self.deploys.wait(p, dep_id, timeout=timeout, on_progress=on_progress)

    async def list_services(self, p: Principal, project_name: str) -> list[ServiceView]:
        return await self.deploys.list_services(p, project_name)

    async def list_deployments(
        self, p: Principal, project_name: str, service_name: str | None, limit: int = 20
    ) -> list[DeploymentSummary]:
        return await self.deploys.list_deployments(p, project_name, service_name, limit)

    async def get_logs(
        self,
        p: Principal,
        project_name: str,
        *,
        scope: LogScope,
        service_name: str | None,
        tail: int,
    ) -> LogsView:
        """Build scope shows the service's latest deployment, the one an agent is fixing."""
        if not 1 <= tail <= MAX_TAIL:
            raise InvalidArgument(f"tail={tail} is out of range.", argument="tail", fix=f"pass 1..{MAX_TAIL}")
        try:
            project, svc = await self.deploys.get_service(p, project_name, service_name)
        except ProcessNotService as e:  # its lines are in its service's logs, prefixed with its name
            raise NotFound(e.message, argument="service_name",
                           fix=f"pass service_name={e.service!r}: its logs hold every process's lines, those of "
                               f"this one prefixed '{service_name} | '") from None
        deployment_id = None
        deployment_ref = None
        if scope == LogScope.build:
            async with self.sessions() as s:
                latest = (
                    await s.execute(
                        select(Deployment.id, Deployment.provider_ref)
                        .where(Deployment.service_id == svc.id)
                        .order_by(Deployment.created_at.desc())
                        .limit(1)
                    )
                ).first()
            if latest is not None:
                deployment_id = str(latest[0])
                deployment_ref = ref_of(latest[1], self.compute.name)
        try:
            raw = await self.compute.logs(
                self.deploys.key_of(svc, project), scope, deployment_id=deployment_id, deployment_ref=deployment_ref,
                tail=tail + 50,
            )  # fmt: skip
        except ProviderUnavailable as e:
            raise unavailable(e, "reading the logs") from None
        secrets = await self.deploys.secrets_of(project.id, svc.id)
        lines, truncated = bound(redact([scrub_paths(line) for line in raw], secrets), tail)
        # --- newuser5: during a first deploy (or after one that failed before starting) an agent calling get_logs()
        # read `lines: []` (runtime, nothing ran yet) as "no output at all"; the build's lines were one scope away
        note = None
        if not lines and scope == LogScope.runtime:
            async with self.sessions() as s:
                latest = (await s.execute(select(Deployment.id, Deployment.status)
                                          .where(Deployment.service_id == svc.id)
                                          .order_by(Deployment.created_at.desc()).limit(1))).first()  # fmt: skip
            if latest is not None and latest[1] != "live":
                note = (f"no runtime output: the latest deployment ({latest[0]}, status {latest[1]!r}) has not run "
                        f"anything that printed; its build output: get_logs(project_name={project.name!r}, "
                        f"service_name={svc.name!r}, scope='build')")
        # --- end
        return LogsView(
            project=project.name,
            service=svc.name,
            scope=scope.value,
            deployment_id=deployment_id,
            lines=lines,
            truncated=truncated or len(raw) > tail,
            note=note,  # newuser5
        )

    # ----------------------------------------------------------------- env vars
    async def update_env_vars(
        self, p: Principal, project_name: str, env_vars: dict[str, str | None], service_name: str | None
    ) -> EnvUpdate:
        validate_env_payload(env_vars, self._max_env_bytes)
        args = {"project_name": project_name, "env_vars": env_vars, "service_name": service_name}
        async with self._audited(p, "update_env_vars", project_name, args):
            await self._can_pay(p, "update_env_vars")  # --- issue 13 (credits) --- end
            project = await self.projects.get(p, project_name)
            if service_name is not None:
                _, svc = await self.deploys.get_service(p, project_name, service_name)
                scope, targets = str(svc.id), [svc]
            else:
                scope = PROJECT_SCOPE
                async with self.sessions() as s:
                    targets = list(
                        (await s.execute(select(Service).where(Service.project_id == project.id))).scalars().all()
                    )
            before = await self.envs.snapshot(project.id)
            async with self.sessions.begin() as s:
                set_keys, unset_keys = await self.envs.apply(s, project.id, scope, env_vars)
                if set_keys or unset_keys:
                    await s.execute(_RETIRE_NOOP_HASHES, {"services": [t.id for t in targets]})
            restarted: list[str] = []
            pending: list[str] = []
            rebuild: list[str] = []  # newuser6
            built_in: list[str] = []  # newuser6
            if set_keys or unset_keys:
                applied = await self.deploys.apply_env(project, targets, changed=[*set_keys, *unset_keys])
                restarted, pending, rebuild = applied.restarted, applied.pending, applied.rebuild
                built_in = applied.built_in  # newuser6
                if applied.failed or applied.unavailable:
                    # All or nothing: put the old values back, and the old env on what already took the new one.
                    await self.envs.restore(project.id, before)
                    await self.deploys.apply_env(project, [t for t in targets
                                                           if t.name in restarted + pending + rebuild])
                    if applied.failed:
                        name, reason = next(iter(applied.failed.items()))
                        raise DeployFailed(
                            f"service {name!r} did not start with the new values ({reason}); nothing was changed, "
                            "every service keeps its previous values.",
                            argument="env_vars",
                            fix=f"read get_logs(project_name={project_name!r}, service_name={name!r}) and pass "
                            "values the app accepts",
                        )
                    name, reason = next(iter(applied.unavailable.items()))
                    raise unavailable(ProviderUnavailable(reason), f"applying env to service {name!r} (the old "
                                      "values were put back, so nothing changed)")  # fmt: skip
        live = [t.name for t in targets if t.live_deployment_id]
        notes = []
        if restarted:
            notes.append(f"restarted {', '.join(restarted)} with the new values")
        if pending:
            notes.append(f"restart queued for {', '.join(pending)}: they serve the old values until it finishes; "
                         f"list_services(project_name={project.name!r}) shows env='applied' once they run the new ones")
        if rebuild:  # --- newuser6
            sites = f"{rebuild[0]} is a static site" if len(rebuild) == 1 else \
                f"{', '.join(rebuild)} are static sites"
            notes.append(f"{sites}: its files were built with the previous values (a build reads env vars, e.g. "
                         f"Vite's VITE_*), and a restart serves the same files: {self._rebuild_how()}")
        if built_in:  # --- newuser6: a Next app's NEXT_PUBLIC_* went on serving its old value after the restart
            names = [k for k in [*set_keys, *unset_keys] if BUILD_TIME_ENV.match(k)]
            notes.append(f"{', '.join(names)} {'is' if len(names) == 1 else 'are'} read by the build of "
                         f"{', '.join(built_in)} and inlined in the files it writes, which a restart keeps: "
                         f"{self._rebuild_how()}")
        if notes:
            note = "; ".join(notes)
        elif not set_keys and not unset_keys:
            # unset of a name never set (or the same values again) said "stored; sleeping services pick the values
            # up when they wake": an agent took it for a change and waited for one
            absent = sorted(k for k, v in env_vars.items() if v is None)
            note = "nothing changed: " + (f"not set, so nothing to unset: {', '.join(absent)}; " if absent else "") + \
                "list_env_vars shows the current names"
        elif live:
            note = "stored; sleeping services pick the values up when they wake"
        else:
            note = "stored; applied at the next deploy_app"
        return EnvUpdate(
            project=project.name,
            scope="project" if service_name is None else service_name,
            set=set_keys,
            unset=unset_keys,
            restarted=restarted,
            pending=pending,
            note=note,
        )

    def _rebuild_how(self) -> str:
        """--- newuser6: how a service gets a build with new env values: a deploy of the same commit rebuilds on the
        local provider; Coolify reuses the image it built for that commit (its /deploy without force), so only a new
        commit rebuilds there."""
        if getattr(self.compute, "rebuilds_same_commit", True):
            return "call deploy_app again (the same arguments) to rebuild with the new values"
        return ("a deploy of the same commit reuses the image built for it, so commit a change (and push it), then "
                "call deploy_app to rebuild with the new values")

    async def list_env_vars(
        self, p: Principal, project_name: str, service_name: str | None, reveal: bool
    ) -> EnvList:
        project = await self.projects.get(p, project_name)
        svc_id = None
        if service_name is not None:
            _, svc = await self.deploys.get_service(p, project_name, service_name)
            svc_id = svc.id
        env = await self.envs.resolve(project.id, svc_id)
        injected = await self.databases.env_for(project.id)  # newuser4
        own: dict[str, dict[str, SecretStr]] = {}
        if service_name is None:  # deploy_app stores its env_vars on the service: show them beside the shared ones
            async with self.sessions() as s:
                names = {str(i): n for i, n in await s.execute(
                    select(Service.id, Service.name).where(Service.project_id == project.id))}
            own = {names[scope]: values for scope, values in (await self.envs.by_scope(project.id)).items()
                   if scope in names}
        if reveal:
            await self.audit.record(p, "reveal_env_vars", target=project_name, arguments={"service_name": service_name})

        def shown(values: dict[str, SecretStr]) -> dict[str, str]:
            return {k: (v.get_secret_value() if reveal else mask(v.get_secret_value())) for k, v in values.items()}

        return EnvList(
            project=project.name,
            scope=service_name or "project",
            env=shown(env),
            masked=not reveal,
            services={name: shown(values) for name, values in sorted(own.items())},
            add_ons=shown(injected),  # newuser4
        )

    # ---------------------------------------------------------------- databases
    async def provision_database(
        self, p: Principal, project_name: str, tier: Tier, kind: Literal["postgres", "redis"] = "postgres"
    ) -> DatabaseView:
        args = {"tier": tier.value} if kind == "postgres" else {"tier": tier.value, "type": kind}
        async with self._audited(p, "provision_database", project_name, args):
            await self._can_pay(p, "provision_database")  # --- issue 13 (credits) --- end
            project = await self.projects.get(p, project_name)
            info = await self.databases.ensure(project.id, DatabaseRequest(type=kind, tier=tier))
        env_var = "REDIS_URL" if kind == "redis" else "DATABASE_URL"
        also = "" if kind == "redis" else " (with PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE)"
        return DatabaseView(
            project=project.name,
            provider=info.provider,
            tier=info.tier,
            created=info.created,
            env_var=env_var,
            note=f"{env_var}{also} is injected into this project's services at their next deploy_app",
        )

    async def get_database_credentials(self, p: Principal, project_name: str) -> Credentials:
        project = await self.projects.get(p, project_name)
        addons = await self.databases.addons(project.id)
        if not addons:
            raise InvalidArgument(
                f"project {project_name!r} has no database.",
                argument="project_name",
                fix=f"call provision_database(project_name={project_name!r}) first",
            )
        await self.audit.record(p, "get_database_credentials", target=project_name, arguments={})
        info: DatabaseInfo | None = addons.get("postgres")
        redis = addons.get("redis")
        return Credentials(
            project=project.name,
            provider=info.provider if info else None,
            host=info.host if info else None,
            port=info.port if info else None,
            database=info.database if info else None,
            user=info.user if info else None,
            password=info.password.get_secret_value() if info else None,
            url=info.url.get_secret_value() if info else None,
            redis=None if redis is None else RedisCredentials(
                host=redis.host, port=redis.port, user=redis.user, password=redis.password.get_secret_value(),
                url=redis.url.get_secret_value()),
        )

    # --------------------------------------------------------------- deletions
    async def delete_service(self, p: Principal, project_name: str, service_name: str, confirm: str) -> Deleted:
        if confirm != service_name:
            raise InvalidArgument(
                "confirmation does not match.",
                argument="confirm",
                fix=f"pass confirm={service_name!r} (the service name) to delete it",
            )
        args = {"project_name": project_name, "service_name": service_name}
        async with self._audited(p, "delete_service", f"{project_name}/{service_name}", args):
            project, svc = await self.deploys.get_service(p, project_name, service_name)
            await self.deploys.remove_service(project, svc)
        return Deleted(deleted=f"{project_name}/{service_name}")

    async def delete_project(
        self, p: Principal, project_name: str, confirm: str, delete_database: bool
    ) -> Deleted:
        if confirm != project_name:
            raise InvalidArgument(
                "confirmation does not match.",
                argument="confirm",
                fix=f"pass confirm={project_name!r} (the project name) to delete it",
            )
        args = {"project_name": project_name, "delete_database": delete_database}
        async with self._audited(p, "delete_project", project_name, args):
            project = await self.projects.get(p, project_name)
            db = await self.databases.addons(project.id)  # Postgres and/or Redis: both hold data
            if db and not delete_database:
                raise InvalidArgument(
                    "the project has a database, which would be lost with it.",
                    argument="delete_database",
                    # --- mcpbudget (issue 13): the tool is delete(service_name=...); there is no delete_service tool
                    fix="pass delete_database=true to delete it too, or delete services one by one with "
                        f"delete(project_name={project_name!r}, service_name=..., confirm=<the service name>)",
                    # --- end
                )
            async with self.sessions() as s:
                services = (await s.execute(select(Service).where(Service.project_id == project.id))).scalars().all()
            for svc in services:
                await self.deploys.remove_service(project, svc)
            try:
                await self.compute.remove_project(str(project.id), ref_of(project.provider_ref, self.compute.name))
            except ProviderUnavailable as e:
                raise unavailable(e, f"deleting project {project_name!r} (its services are gone already)") from None
            dropped = await self.databases.drop(project.id) if db else False
            async with self.sessions.begin() as s:
                obj = await s.get(type(project), project.id)
                if obj is not None:
                    await s.delete(obj)
        return Deleted(deleted=project_name, database_deleted=dropped)
