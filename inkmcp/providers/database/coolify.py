"""Databases as Coolify-managed PostgreSQL (`POST /databases/postgresql`), one per InkMCP project, on the run
server where the project's apps run.

Layout and why:

* **One Coolify Postgres per InkMCP project**, in a Coolify project of its own named
  `<INKMCP_COOLIFY_DB_PROJECT_PREFIX><InkMCP project uuid>` (default `inkmcp-db-…`); the database carries the same
  name and a description with the marker `[inkmcp-db:<owner slug>]`. Not in the compute provider's Coolify project
  (`inkmcp-<uuid>`): core removes that project *before* it drops the database (platform.delete_project), and Coolify
  refuses to delete a project that still holds a resource, so a shared project would stall every project delete.
  The reconciler only reads `inkmcp-<uuid>` names, so it never touches these.
* **Names come from InkMCP's ids only** (the project uuid; role and database `ink_<project hex>`, the self-hosted
  provider's `database_name_for`); nothing a tenant typed reaches Coolify. The password is generated here: 48
  characters from [A-Za-z0-9] (~285 bits; inside Coolify's DB_PASSWORD_PATTERN, and nothing to URL-escape).
  Memory and CPU limits come from this module's settings per tier (`limits_memory`, `limits_cpus`).
* **Placement**: a database must sit on the server of the apps that use it, because the only address it has is its
  container name (the database uuid) on that server's Coolify Docker network. The server is, in order: the one
  recorded by an earlier attempt; the server most of the project's services run on (the compute provider's
  `services.provider_ref.coolify.server_uuid`, else placement's `placements.node_uuid`); `INKMCP_COOLIFY_DB_SERVER`;
  otherwise placement's roomiest target (`PlacementService.status()`: most free memory) when placement is wired,
  else the first usable run server with a wildcard domain — the same rule as the compute provider's default
  placement, so a project's first service lands beside its database. Core provisions the database *before* the
  first service is placed (deployments.deploy), so for a new project this choice is the project's home; placement
  must then keep the project's services on `projects.provider_ref["coolify-db"].server_uuid`
  (`database_server_of`): placement's adapter (inkmcp/placement/adapter.py) requires that node for every service
  of the project, and `inkmcp nodes drain` never moves a service away from its database.
  The database's own limits count on its node: with placement wired, the server is reserved
  (`PlacementService.reserve_database`, checked against the node's room under its lock) before Coolify is asked
  to create the database, recorded as-is for a database found already running, and released on `drop`.
* **Recorded in the control-plane database**: every remote id goes to `projects.provider_ref["coolify-db"]`
  (`save_ref`, durable before the next remote step): the Coolify project and environment, the server, and the
  database uuid as soon as Coolify answers; core stores the database uuid again as the handle's `external_id`.
* **Idempotent**: a provision looks for the recorded uuid, then for the name/marker in `GET /databases`, before it
  creates anything. A create whose answer was lost (timeout, dropped connection) is never repeated blind: the
  database is looked up for `lookup_grace` seconds and adopted when it appears; if it does not, the call fails
  retryable and the next one looks again. A create answered 5xx is repeated only after a lookup shows it made
  nothing (the answer came, so the request is over). If duplicates exist anyway (two replicas racing without
  core's lock), the oldest is kept and the others are deleted. One `asyncio.Lock` per project in this process;
  core's advisory lock serialises replicas.
* **Password on a repeat**: Coolify keeps the password and shows it to `read:sensitive` tokens, so a repeat reads it
  back instead of resetting it (a reset through Coolify would not change the role in an initialised cluster).
* **Running**: created with `instant_deploy`, then `GET /databases/{uuid}` is polled with backoff until its status
  starts with `running` (`running:unhealthy` — pg_isready failing — is waited out), bounded by `start_timeout`. A
  database still `exited` after `start_grace` (a lost start job, or one found stopped) gets one `POST …/start`.
  An unreachable server (`server_status` false, or the server not usable before creating) fails at once with an
  error naming the server.
* **Reachability, honestly**: the credentials' host is the database uuid, port 5432: reachable from containers on
  that server's Coolify network (the project's apps), from nowhere else — not from the agent's machine and not from
  the internet (no public port is opened). `REACHABILITY` says so for get_database_credentials. Every tenant
  container on that server shares the network, so isolation between tenants there is the password (SCRAM), as on
  the self-hosted server; the tenant's login is the cluster's superuser, but only of its own container.

`drop(external_id)` deletes the database (volumes included), waits for Coolify's queued delete, then deletes its
Coolify project; it refuses a database whose name lacks the prefix and treats 404 as done.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import string
import uuid as uuidlib
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.coolify import models as m
from inkmcp.coolify.client import (
    CoolifyAuthError,
    CoolifyBadRequest,
    CoolifyClient,
    CoolifyConflict,
    CoolifyContractError,
    CoolifyError,
    CoolifyNotFound,
    CoolifyPermissionError,
    CoolifyUnavailable,
    CoolifyValidationError,
)
from inkmcp.coolify.spec import SpecError
from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.placement.models import PlacementError
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, Tier
from inkmcp.providers.database.postgres import database_name_for
from inkmcp.store.models import Project
from inkmcp.store.refs import RefNotStored, ref_of, save_ref

log = logging.getLogger("inkmcp.coolify.database")

REF_KEY = "coolify-db"
"""This provider's entry in `projects.provider_ref` (the compute provider's is "coolify")."""

REACHABILITY = ("reachable only from this project's apps (on the same run server's internal network); not from "
                "outside, e.g. not from your machine or the internet")
"""What an agent should be told next to these credentials (the host is a container name, not a DNS name)."""

_PASSWORD_ALPHABET = string.ascii_letters + string.digits
_PASSWORD_LENGTH = 48
_COOLIFY_UUID = re.compile(r"^[a-z0-9]{6,64}$")
_HEX_SLUG = re.compile(r"^[0-9a-f]{32}$")

Progress = Callable[[str], Awaitable[None]]


class CoolifyDatabaseSettings(BaseSettings):
    """`INKMCP_COOLIFY_DB_*`. The Coolify URL and token are the compute provider's (`INKMCP_COOLIFY_URL`,
    `INKMCP_COOLIFY_TOKEN`; the token needs read, read:sensitive (to read the password back), write, and deploy
    (`POST /databases/{uuid}/start`))."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_COOLIFY_DB_", extra="ignore")

    project_prefix: str = Field(
        default="inkmcp-db-", min_length=3, max_length=40, pattern=r"^[a-z0-9][a-z0-9-]*-$",
        description="Coolify project (and database) name prefix; must differ from the compute prefix `inkmcp-`+uuid")
    environment: str = Field(default="production", min_length=3, max_length=64, pattern=r"^[a-z0-9][a-z0-9-]*$",
                             description="Coolify environment inside each database project (Coolify makes production)")
    server: str | None = Field(
        default=None, description="Coolify server name or uuid for databases of projects with no service placed yet; "
                                  "unset = placement's roomiest run server (or the first usable one)")
    image: str | None = Field(default=None, max_length=255, pattern=r"^[a-z0-9][a-z0-9._/:-]*$",
                              description="Postgres image, e.g. postgres:16-alpine; unset = Coolify's default")
    free_memory_mb: int = Field(default=256, ge=64, le=65536, description="memory limit of a free-tier database")
    free_cpus: float = Field(default=0.5, gt=0, le=64, description="CPU limit of a free-tier database")
    standard_memory_mb: int = Field(default=1024, ge=64, le=262144, description="memory limit, standard tier")
    standard_cpus: float = Field(default=1.0, gt=0, le=128, description="CPU limit, standard tier")
    start_timeout: float = Field(default=300.0, gt=0, le=3600, description="seconds to wait for `running`")
    start_grace: float = Field(default=30.0, ge=0, le=600,
                               description="seconds a new database may stay `exited` before InkMCP asks to start it")
    delete_timeout: float = Field(default=300.0, gt=0, le=3600, description="seconds to wait for a queued delete")
    lookup_grace: float = Field(default=15.0, ge=0, le=300,
                                description="seconds to look for a database whose create answer was lost")
    poll_interval: float = Field(default=1.0, gt=0, le=60)
    poll_max_interval: float = Field(default=10.0, gt=0, le=300)

    def limits(self, tier: Tier) -> tuple[str, str]:
        """(limits_memory, limits_cpus) as Coolify takes them: "256m", "0.5"."""
        mem, cpus = self.limits_of(tier)
        return f"{mem}m", f"{cpus:g}"

    def limits_of(self, tier: Tier) -> tuple[int, float]:
        """(memory MiB, cpus) of a database of this tier: what placement reserves on its server."""
        if tier == Tier.standard:
            return self.standard_memory_mb, self.standard_cpus
        return self.free_memory_mb, self.free_cpus


class ListedDatabase(BaseModel):
    """An item of `GET /databases` / `GET /databases/{uuid}` with the columns this provider reads (the spec types the
    answer as a string, NOTES.md §h; the model's `$appends` add `server_status` = the server is functional)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    uuid: str
    name: str | None = None
    description: str | None = None
    status: str | None = None
    database_type: str | None = None
    server_status: bool | None = None
    postgres_user: str | None = None
    postgres_db: str | None = None
    postgres_password: SecretStr | None = None
    internal_db_url: SecretStr | None = None
    created_at: str | None = None
    id: int | None = None


_LISTED: TypeAdapter[list[ListedDatabase]] = TypeAdapter(list[ListedDatabase])


def marker(owner_slug: str) -> str:
    return f"[inkmcp-db:{owner_slug}]"


def generate_password() -> SecretStr:
    return SecretStr("".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(_PASSWORD_LENGTH)))


def project_uuid_of(owner_slug: str) -> uuidlib.UUID | None:
    """Core's owner slug is the project id's hex (core.databases.owner_slug); anything else has no project row."""
    return uuidlib.UUID(hex=owner_slug) if _HEX_SLUG.fullmatch(owner_slug) else None


async def database_server_of(sessions: async_sessionmaker[AsyncSession], project_id: uuidlib.UUID) -> str | None:
    """The run server holding the project's Coolify database, if any: placement should keep the project's services
    there (the database is reachable only on that server's network)."""
    async with sessions() as s:
        refs = (await s.execute(select(Project.provider_ref).where(Project.id == project_id))).scalar_one_or_none()
    server = ref_of(refs, REF_KEY).get("server_uuid")
    return str(server) if server else None


async def database_servers_of(sessions: async_sessionmaker[AsyncSession],
                              project_ids: Sequence[str]) -> dict[str, str]:
    """`database_server_of` for many projects at once ({project_id: server uuid}, projects without a Coolify
    database left out): what a drain pins each project's services to (placement.records.Affinity)."""
    ids = [uuidlib.UUID(p) for p in project_ids]
    if not ids:
        return {}
    async with sessions() as s:
        rows = (await s.execute(select(Project.id, Project.provider_ref[REF_KEY]["server_uuid"].astext).where(
            Project.id.in_(ids), Project.provider_ref[REF_KEY]["server_uuid"].is_not(None)))).all()
    return {str(pid): str(server) for pid, server in rows if server}


class CoolifyDatabaseProvider:
    """DatabaseProvider over Coolify's API (module docstring). `sessions`: the control-plane store, for the refs and
    the project's server; `placement`: a `PlacementService` (inkmcp.placement.records) to choose a server for a
    project with nothing placed yet; `progress`: awaited with a line at each status change while waiting."""

    name = "coolify"
    reachability = REACHABILITY

    def __init__(self, client: CoolifyClient, settings: CoolifyDatabaseSettings | None = None, *,
                 sessions: async_sessionmaker[AsyncSession] | None = None, placement: Any = None,
                 build_server_uuid: str | None = None, compute_ref_key: str = "coolify",
                 progress: Progress | None = None) -> None:
        self.client = client
        self.settings = settings or CoolifyDatabaseSettings()
        self._sessions = sessions
        self._placement = placement
        self._build_server = build_server_uuid
        self._compute_key = compute_ref_key
        self._progress = progress
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def __repr__(self) -> str:
        return f"CoolifyDatabaseProvider(url={self.client.base_url!r}, prefix={self.settings.project_prefix!r})"

    def resource_name(self, owner_slug: str) -> str:
        project = project_uuid_of(owner_slug)
        tail = str(project) if project else database_name_for(owner_slug).removeprefix("ink_").replace("_", "-")
        return f"{self.settings.project_prefix}{tail}"

    # -- errors ----------------------------------------------------------------------------------------------

    def _fail(self, e: Exception, what: str) -> ProviderError:
        if isinstance(e, ProviderError):
            return e
        if isinstance(e, CoolifyAuthError | CoolifyPermissionError):
            return ProviderError(f"{what}: {e}", argument="INKMCP_COOLIFY_TOKEN",
                                 fix="give the token the abilities read, read:sensitive, write and deploy (or root)")
        if isinstance(e, CoolifyError) and e.retryable:
            return ProviderError(f"{what}: {e}", fix="retry later (the next attempt finds what this one created)")
        if isinstance(e, CoolifyValidationError):
            return ProviderError(f"{what}: Coolify refused the request: {e}",
                                 fix="check the INKMCP_COOLIFY_DB_* settings named above (image, limits); if none "
                                     "is named, report this: InkMCP built a request Coolify does not accept")
        if isinstance(e, SpecError):
            return ProviderError(f"{what}: InkMCP built a request outside Coolify's published API ({e}); report this")
        return ProviderError(f"{what}: {e}")

    async def _say(self, line: str) -> None:
        log.info("%s", line)
        if self._progress is not None:
            await self._progress(line)

    # -- refs ------------------------------------------------------------------------------------------------

    async def _load_ref(self, project_id: uuidlib.UUID | None) -> dict[str, Any] | None:
        """This provider's ref of the project; None when there is no project row to record on (no store, or a slug
        that is not a project of this control plane, e.g. a contract test's): then nothing is recorded."""
        if self._sessions is None or project_id is None:
            return None
        async with self._sessions() as s:
            row = (await s.execute(select(Project.provider_ref).where(Project.id == project_id))).first()
        return ref_of(row[0], REF_KEY) if row is not None else None

    async def _record(self, project_id: uuidlib.UUID | None, ref: dict[str, Any]) -> None:
        if self._sessions is None or project_id is None:
            return
        try:
            await save_ref(self._sessions, "project", project_id, REF_KEY, ref)
        except RefNotStored:
            raise ProviderError("the project was deleted while its database was being made",
                                fix="deploy the project again") from None

    # -- Coolify reads ---------------------------------------------------------------------------------------

    async def _list(self) -> list[ListedDatabase]:
        response = await self.client.request("GET", "/databases")
        try:
            return _LISTED.validate_python(response.json())
        except (ValueError, ValidationError) as e:
            raise CoolifyContractError(f"answer does not match what InkMCP expects: {e}", method="GET",
                                       path="/databases", status=response.status_code) from None

    async def _get(self, db_uuid: str) -> ListedDatabase | None:
        try:
            response = await self.client.request("GET", f"/databases/{db_uuid}")
        except CoolifyNotFound:
            return None
        try:
            return ListedDatabase.model_validate(response.json())
        except (ValueError, ValidationError) as e:
            raise CoolifyContractError(f"answer does not match what InkMCP expects: {e}", method="GET",
                                       path=f"/databases/{db_uuid}", status=response.status_code) from None

    def _ours(self, db: ListedDatabase, name: str, owner_slug: str) -> bool:
        return db.name == name or marker(owner_slug) in (db.description or "")

    async def _find(self, name: str, owner_slug: str, prefer: str | None = None) -> ListedDatabase | None:
        """Ours by name or marker. Duplicates (replicas racing without core's lock) are deleted, keeping the recorded
        one (`prefer`), else the oldest (ties by uuid, so every replica keeps the same one)."""
        found = [d for d in await self._list() if self._ours(d, name, owner_slug)]
        if not found:
            return None
        found.sort(key=lambda d: (d.uuid != prefer, d.created_at or "", d.uuid))
        keep, extra = found[0], found[1:]
        for dup in extra:
            log.warning("deleting duplicate Coolify database %s (%s); keeping %s", dup.uuid, name, keep.uuid)
            await self.client.delete_database(dup.uuid, missing_ok=True)
        return keep

    # -- provision -------------------------------------------------------------------------------------------

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        tier = Tier(tier)
        if not owner_slug:
            raise InvalidArgument("must not be empty", argument="owner_slug", fix="pass the project id's hex")
        async with self._locks[owner_slug]:
            try:
                return await self._provision(owner_slug, tier)
            except (CoolifyError, SpecError, httpx.HTTPError) as e:
                raise self._fail(e, f"provisioning the database of project {owner_slug}") from None

    async def _provision(self, owner_slug: str, tier: Tier) -> DatabaseHandle:
        project_id = project_uuid_of(owner_slug)
        name = self.resource_name(owner_slug)
        loaded = await self._load_ref(project_id)
        if loaded is None:
            project_id = None  # nothing to record on
        ref = loaded or {}
        # One listing even when a uuid is recorded: it finds a database whose create answer was lost, and it is
        # where duplicates converge (provisioning is rare; the request is cheap against the rate limit).
        db = await self._find(name, owner_slug, prefer=ref.get("database_uuid"))
        if db is None and ref.get("database_uuid"):
            log.warning("recorded Coolify database %s of %s is gone; creating it again", ref["database_uuid"], name)
            ref.pop("database_uuid")
        created = False
        if db is None:
            db_uuid = await self._create(owner_slug, name, tier, project_id, ref)
            created = True
        else:
            db_uuid = db.uuid
            if ref.get("database_uuid") != db_uuid:
                ref["database_uuid"] = db_uuid
                await self._record(project_id, ref)
            if ref.get("server_uuid"):  # it runs there already: count it as it is (never refused)
                await self._reserve(project_id, str(ref["server_uuid"]), tier, check=False)
        running = await self._wait_running(db_uuid, created)
        return DatabaseHandle(provider=self.name, tier=tier, external_id=db_uuid,
                              credentials=self._credentials(running))

    async def _create(self, owner_slug: str, name: str, tier: Tier, project_id: uuidlib.UUID | None,
                      ref: dict[str, Any]) -> str:
        server = await self._server_for(project_id, ref)
        await self._reserve(project_id, server, tier, check=True)
        if ref.get("server_uuid") != server:
            ref["server_uuid"] = server
            await self._record(project_id, ref)
        project_uuid, env_uuid = await self._ensure_project(name, owner_slug, project_id, ref)
        ident = database_name_for(owner_slug)
        memory, cpus = self.settings.limits(tier)
        body = m.PostgresCreate(
            project_uuid=project_uuid, environment_uuid=env_uuid, environment_name=self.settings.environment,
            server_uuid=server, name=name, description=f"InkMCP database {marker(owner_slug)}; managed by InkMCP",
            postgres_user=ident, postgres_db=ident, postgres_password=generate_password().get_secret_value(),
            limits_memory=memory, limits_cpus=cpus, instant_deploy=True,
            **({"image": self.settings.image} if self.settings.image else {}))
        attempts = 0
        while True:
            attempts += 1
            try:
                made = await self.client.create_postgresql(body)
            except CoolifyUnavailable as e:
                found = await self._after_ambiguous_create(e, name, owner_slug)
                if found is not None:
                    db_uuid = found.uuid
                    break
                if attempts >= 3:
                    raise
                log.info("create of %s answered %s and made nothing; creating again", name, e.status)
                continue
            except CoolifyNotFound as e:
                raise ProviderError(f"Coolify does not know the database's server or project: {e}",
                                    argument="INKMCP_COOLIFY_DB_SERVER" if "Server" in e.message else None,
                                    fix="check INKMCP_COOLIFY_DB_SERVER names a run server of this token's team; "
                                        "then retry") from None
            else:
                db_uuid = made.uuid
                log.info("created Coolify database %s (%s) on server %s", db_uuid, name, server)
                break
        ref["database_uuid"] = db_uuid
        await self._record(project_id, ref)
        return db_uuid

    async def _after_ambiguous_create(self, e: CoolifyUnavailable, name: str,
                                      owner_slug: str) -> ListedDatabase | None:
        """Look for a create whose outcome is unknown. Returns it, or None when it is certain that nothing was made
        (the request was answered 5xx, or never sent) so a second create is safe; raises when it cannot be sure."""
        answered = e.status is not None
        not_sent = isinstance(e.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (0 if answered or not_sent else self.settings.lookup_grace)
        interval = self.settings.poll_interval
        while True:
            found = await self._find(name, owner_slug)
            if found is not None:
                log.info("Coolify database %s found after an ambiguous create (%s)", found.uuid, e.message)
                return found
            if answered or not_sent:
                return None
            if loop.time() >= deadline:
                raise ProviderError(
                    f"Coolify did not answer the create of database {name} and it has not appeared",
                    fix="retry later: the next attempt looks for it again before creating anything")
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
            interval = min(self.settings.poll_max_interval, interval * 1.5)

    async def _ensure_project(self, name: str, owner_slug: str, project_id: uuidlib.UUID | None,
                              ref: dict[str, Any]) -> tuple[str, str]:
        if ref.get("project_uuid") and ref.get("environment_uuid"):
            return str(ref["project_uuid"]), str(ref["environment_uuid"])
        project_uuid = ref.get("project_uuid")
        if not project_uuid:  # by name first: a create whose answer was lost must not make a second project
            project_uuid = next((p.uuid for p in await self.client.list_projects() if p.name == name), None)
        if not project_uuid:
            body = m.ProjectCreate(name=name, description=f"InkMCP database project {marker(owner_slug)}")
            try:
                project_uuid = await self.client.create_project(body)
            except CoolifyUnavailable:
                project_uuid = next((p.uuid for p in await self.client.list_projects() if p.name == name), None)
                if not project_uuid:
                    raise
        ref["project_uuid"] = project_uuid
        await self._record(project_id, ref)
        project = await self.client.get_project(str(project_uuid))
        env = next((e.uuid for e in project.environments if e.name == self.settings.environment and e.uuid), None)
        if env is None:
            try:
                env = await self.client.create_environment(str(project_uuid), self.settings.environment)
            except CoolifyConflict:
                envs = await self.client.list_environments(str(project_uuid))
                env = next(str(e.uuid) for e in envs if e.name == self.settings.environment)
        ref["environment_uuid"] = env
        await self._record(project_id, ref)
        return str(project_uuid), str(env)

    # -- the server ------------------------------------------------------------------------------------------

    async def _project_server(self, project_id: uuidlib.UUID | None) -> str | None:
        """The server most of the project's services run on (compute's service ref, else placement's row)."""
        if self._sessions is None or project_id is None:
            return None
        sql = text("""
            SELECT server, count(*) AS n FROM (
                SELECT coalesce(s.provider_ref -> :key ->> 'server_uuid', p.node_uuid) AS server
                FROM services s LEFT JOIN placements p ON p.service_id = s.id
                WHERE s.project_id = :pid) x
            WHERE server IS NOT NULL GROUP BY server ORDER BY n DESC, server LIMIT 1""")
        async with self._sessions() as s:
            row = (await s.execute(sql, {"key": self._compute_key, "pid": project_id})).first()
        return str(row[0]) if row else None

    async def _server_for(self, project_id: uuidlib.UUID | None, ref: dict[str, Any]) -> str:
        servers = await self.client.list_servers()
        by_uuid = {s.uuid: s for s in servers}
        pinned, why = ref.get("server_uuid"), "recorded by an earlier attempt"
        if not pinned:
            pinned, why = await self._project_server(project_id), "where the project's services run"
        if not pinned and self.settings.server:
            wanted = self.settings.server
            named = [s for s in servers if s.uuid == wanted or s.name == wanted]
            if len(named) != 1:
                known = ", ".join(sorted(s.name or s.uuid for s in servers if not s.settings.is_build_server))
                raise ProviderError(f"INKMCP_COOLIFY_DB_SERVER={wanted!r} matches {len(named)} Coolify servers",
                                    argument="INKMCP_COOLIFY_DB_SERVER",
                                    fix=f"set it to the uuid or unique name of a run server ({known or 'none'}), "
                                        "or unset it")
            pinned, why = named[0].uuid, "INKMCP_COOLIFY_DB_SERVER"
        if pinned:
            server = by_uuid.get(str(pinned))
            if server is None:
                raise ProviderError(f"the database's run server {pinned} ({why}) is no longer in Coolify",
                                    fix="an operator must restore the server in Coolify or move the project")
            if server.settings.is_build_server:
                raise ProviderError(f"server {server.name or server.uuid} ({why}) is a build server",
                                    argument="INKMCP_COOLIFY_DB_SERVER", fix="name a run server")
            if not server.usable:
                raise ProviderError(f"the run server {server.name or server.uuid} ({why}) is not reachable or not "
                                    "usable in Coolify, so its database cannot be started there",
                                    fix="retry when the server is back (an operator validates it in Coolify)")
            return server.uuid
        return await self._choose(servers)

    async def _choose(self, servers: list[m.Server]) -> str:
        if self._placement is not None:
            statuses = [st for st in await self._placement.status() if st.not_target is None]
            if statuses:
                best = max(statuses, key=lambda st: (st.node.memory_mb - st.load.memory_mb,
                                                     st.node.millicpus - st.load.millicpus, st.node.uuid))
                return str(best.node.uuid)
            raise ProviderError("no run server can take a database: placement has no target (none is usable, "
                                "has capacity configured and a wildcard domain, or all are draining)",
                                fix="an operator adds or validates a run server (inkmcp nodes list shows why)")
        for server in servers:
            if (server.usable and not server.settings.is_build_server and server.settings.wildcard_domain
                    and server.uuid != self._build_server):
                return server.uuid
        raise ProviderError("no Coolify server can take a database: none is usable, a run server and has a "
                            "wildcard domain", fix="validate a run server in Coolify and set its Wildcard Domain")

    async def _reserve(self, project_id: uuidlib.UUID | None, server: str, tier: Tier, *, check: bool) -> None:
        """The database's memory/CPU counted on its server in placement (module docstring); refused (ProviderError
        with placement's agent-safe reason) when `check` and the server has no room or is draining."""
        if self._placement is None or project_id is None:
            return
        memory_mb, cpus = self.settings.limits_of(tier)
        try:
            await self._placement.reserve_database(str(project_id), server, memory_mb, cpus, check=check)
        except PlacementError as e:
            raise ProviderError(str(e)) from None
        except LookupError:
            raise ProviderError("the project was deleted while its database was being made",
                                fix="deploy the project again") from None

    # -- running ---------------------------------------------------------------------------------------------

    async def _wait_running(self, db_uuid: str, created: bool) -> ListedDatabase:
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + self.settings.start_timeout
        interval = self.settings.poll_interval
        asked_start = False
        last: str | None = None
        while True:
            db = await self._get(db_uuid)
            if db is None:
                raise ProviderError(f"the Coolify database {db_uuid} disappeared while starting",
                                    fix="retry: the next attempt creates it again")
            status = db.status or "unknown"
            elapsed = loop.time() - started
            if status != last:
                await self._say(f"database {db_uuid}: {status} after {elapsed:.0f} s")
                last = status
            if status.startswith("running") and status != "running:unhealthy":
                return db
            if db.server_status is False:
                raise ProviderError(f"the run server of database {db_uuid} is unreachable from Coolify, so it "
                                    "cannot start", fix="retry when the server is back (an operator checks it in "
                                                        "Coolify: Servers → Validate)")
            if not asked_start and status.startswith(("exited", "stopped")) and (
                    not created or elapsed >= self.settings.start_grace):
                asked_start = True
                try:
                    await self.client.request("POST", f"/databases/{db_uuid}/start", idempotent=False)
                    await self._say(f"database {db_uuid}: start requested")
                except CoolifyBadRequest:
                    pass  # "already running": the status lags; the next poll sees it
            if loop.time() >= deadline:
                raise ProviderError(f"the Coolify database {db_uuid} is not running after "
                                    f"{self.settings.start_timeout:.0f} s (status {status})",
                                    argument="INKMCP_COOLIFY_DB_START_TIMEOUT",
                                    fix="retry later (the database is kept and found again), or look at its logs in "
                                        "Coolify; raise INKMCP_COOLIFY_DB_START_TIMEOUT if the server is slow")
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
            interval = min(self.settings.poll_max_interval, interval * 1.5)

    def _credentials(self, db: ListedDatabase) -> DatabaseCredentials:
        if db.postgres_password is None or db.internal_db_url is None:
            raise ProviderError("Coolify did not show the database's password", argument="INKMCP_COOLIFY_TOKEN",
                                fix="give the token the read:sensitive ability (Keys & Tokens → API tokens)")
        parts = urlsplit(db.internal_db_url.get_secret_value())
        if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
            raise ProviderError(f"Coolify's internal URL of database {db.uuid} is not a postgres:// URL with a host")
        return DatabaseCredentials(
            host=parts.hostname, port=parts.port or 5432,
            database=db.postgres_db or unquote(parts.path.lstrip("/")) or "postgres",
            user=db.postgres_user or unquote(parts.username or "postgres"), password=db.postgres_password)

    # -- drop ------------------------------------------------------------------------------------------------

    async def drop(self, external_id: str) -> None:
        """Delete the database (and volumes), wait for Coolify's queued delete, delete its Coolify project."""
        if not _COOLIFY_UUID.fullmatch(external_id):
            raise InvalidArgument(f"{external_id!r} is not a Coolify database uuid", argument="external_id",
                                  fix="pass the external_id returned by provision")
        try:
            await self._drop(external_id)
        except (CoolifyError, SpecError, httpx.HTTPError) as e:
            raise self._fail(e, f"deleting the Coolify database {external_id}") from None

    async def _drop(self, db_uuid: str) -> None:
        owner = await self._owner_of(db_uuid)
        db = await self._get(db_uuid)
        project_name = db.name if db is not None else None
        if db is not None:
            if not (db.name or "").startswith(self.settings.project_prefix):
                raise InvalidArgument(f"Coolify database {db_uuid} ({db.name!r}) was not created by InkMCP",
                                      argument="external_id",
                                      fix=f"only databases named {self.settings.project_prefix}… are deleted here")
            await self.client.delete_database(db_uuid, missing_ok=True)
            await self._wait_gone(db_uuid)
            log.info("deleted Coolify database %s", db_uuid)
        project_uuid = owner[1].get("project_uuid") if owner else None
        if not project_uuid and project_name:
            project_uuid = next((p.uuid for p in await self.client.list_projects() if p.name == project_name), None)
        if project_uuid:
            await self._delete_project(str(project_uuid))
        if owner is not None and self._sessions is not None:
            try:
                await save_ref(self._sessions, "project", owner[0], REF_KEY, {})
            except RefNotStored:
                pass
            if self._placement is not None:  # its room on the server is free again
                await self._placement.release_database(str(owner[0]))

    async def _owner_of(self, db_uuid: str) -> tuple[uuidlib.UUID, dict[str, Any]] | None:
        if self._sessions is None:
            return None
        async with self._sessions() as s:
            row = (await s.execute(select(Project.id, Project.provider_ref).where(
                Project.provider_ref[REF_KEY]["database_uuid"].astext == db_uuid))).first()
        return (row[0], ref_of(row[1], REF_KEY)) if row else None

    async def _wait_gone(self, db_uuid: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.delete_timeout
        interval = self.settings.poll_interval
        while await self._get(db_uuid) is not None:
            if loop.time() >= deadline:
                raise ProviderError(f"Coolify has not finished deleting database {db_uuid} after "
                                    f"{self.settings.delete_timeout:.0f} s", fix="retry later (the delete is queued)")
            await asyncio.sleep(min(interval, max(0.0, deadline - loop.time())))
            interval = min(self.settings.poll_max_interval, interval * 1.5)

    async def _delete_project(self, project_uuid: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.delete_timeout
        interval = self.settings.poll_interval
        while True:
            try:
                await self.client.delete_project(project_uuid)
                return
            except CoolifyNotFound:
                return
            except CoolifyBadRequest as e:  # "has resources": a queued delete not finished yet
                if loop.time() >= deadline:
                    raise ProviderError(f"Coolify refuses to delete the database's project {project_uuid}: {e.message}",
                                        fix="retry later") from None
            await asyncio.sleep(interval)
            interval = min(self.settings.poll_max_interval, interval * 1.5)

    async def close(self) -> None:
        """The client is shared with the compute provider when wired so; closing it twice is harmless."""
        await self.client.aclose()


def build_coolify_database_provider(client: CoolifyClient, *, sessions: async_sessionmaker[AsyncSession] | None,
                                    placement: Any = None, build_server_uuid: str | None = None,
                                    settings: CoolifyDatabaseSettings | None = None) -> CoolifyDatabaseProvider:
    """The provider `inkmcp serve` builds when compute is Coolify (see the module docstring for the wiring)."""
    return CoolifyDatabaseProvider(client, settings or CoolifyDatabaseSettings(), sessions=sessions,
                                   placement=placement, build_server_uuid=build_server_uuid)
