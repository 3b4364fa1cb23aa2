"""A project's add-ons: at most one Postgres and one Redis, provisioned once, credentials stored encrypted, injected
into every service as environment variables (`env_for`).

How an agent asks: `database={"type":"postgres"}` (or "byo" with a url) for Postgres, `{"type":"redis"}` for
Redis, and `{"type":["postgres","redis"]}` for both in one deploy_app call. Each kind is idempotent on its own:
asking for Redis later keeps the project's Postgres (and its password), and a deploy that omits `database` keeps
every add-on wired. What the services get:

* Postgres: DATABASE_URL and the libpq variables PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE (plus PGSSLMODE
  and the like when the URL carries those options), for apps that read those rather than DATABASE_URL;
* Redis: REDIS_URL (`redis://<user>:<password>@host:port/0`, an ACL user of the project's own redis-server; see
  providers/database/redis.py), and REDIS_KEY_PREFIX when the operator uses a shared external Redis instead.

A variable the agent sets itself (update_env_vars / env_vars) wins over the injected one (DeployService.effective_env
applies these first). Both kinds count against the account's max_databases; bring-your-own Postgres does not.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.limits import LimitDefaults, lock_account, reached
from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, DatabaseProvider, Tier
from inkmcp.providers.database.redis import EXTERNAL_PROVIDER, key_prefix
from inkmcp.store.crypto import SecretBox
from inkmcp.store.models import Database, Project
from inkmcp.store.statements import statement_pool

log = logging.getLogger(__name__)
_ROW_COLUMNS = ("id", "kind", "provider", "tier", "external_id", "credentials_enc", "project_id")
_ROWS = f"SELECT {', '.join(_ROW_COLUMNS)} FROM databases WHERE project_id = %s"


Requested = Literal["postgres", "byo", "redis"]
TYPE_ALIASES = {"postgresql": "postgres", "pg": "postgres", "psql": "postgres", "postgre": "postgres",
                "valkey": "redis"}  # newuser4
Kind = Literal["postgres", "redis"]
"""The slot a request fills: a project holds at most one add-on of each kind (byo fills the postgres slot)."""

LIBPQ_OPTIONS = {
    "sslmode": "PGSSLMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "channel_binding": "PGCHANNELBINDING",
    "options": "PGOPTIONS",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "application_name": "PGAPPNAME",
}
"""URL query options that have a libpq environment variable, so PG* alone connects as DATABASE_URL does."""


NOT_SECRET = frozenset({"PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGSSLMODE", "PGCONNECT_TIMEOUT",
                        "PGTARGETSESSIONATTRS", "PGAPPNAME", "PGCHANNELBINDING", "REDIS_KEY_PREFIX"})  # fmt: skip
"""Injected variables whose values are not secrets: log redaction skips them, or every `127.0.0.1` and port
number in an app's logs would read [REDACTED] (the passwords and URLs holding them stay redacted)."""


def kind_of(requested: str) -> Kind:
    return "redis" if requested == "redis" else "postgres"


class DatabaseRequest(BaseModel):
    """What an agent asks for in deploy_app(database=...)."""

    model_config = ConfigDict(extra="forbid")

    type: Requested | list[Requested] = Field(
        default="postgres",
        description='postgres (sets DATABASE_URL, PG*), byo (pass url), redis (REDIS_URL), or a list: '
        '["postgres","redis"]',
    )
    tier: Tier = Tier.free
    url: SecretStr | None = Field(default=None, description="for type=byo: postgresql:// connection string")

    @field_validator("type", mode="before")
    @classmethod
    def _aliases(cls, value: Any) -> Any:
        """--- newuser4: `postgresql` (PostgreSQL's own name, the URL scheme), `pg` or `valkey` mean what they say; an
        agent passing database='postgresql' was refused and had to call again."""
        if isinstance(value, list):
            return [TYPE_ALIASES.get(v.lower(), v) if isinstance(v, str) else v for v in value]
        return TYPE_ALIASES.get(value.lower(), value) if isinstance(value, str) else value

    def requested(self) -> tuple[Requested, ...]:
        """The kinds asked for, in order; a clear error for an empty list, a repeat, or postgres with byo."""
        types = tuple(self.type) if isinstance(self.type, list) else (self.type,)
        if not types:
            raise InvalidArgument(
                "names no add-on.", argument="database.type",
                fix='pass "postgres", "redis" or a list such as ["postgres", "redis"], or omit database',
            )
        kinds = [kind_of(t) for t in types]
        if len(set(kinds)) != len(kinds):
            raise InvalidArgument(
                f"asks for {', '.join(types)}: a project holds one Postgres (managed or byo) and one Redis.",
                argument="database.type", fix='name each kind once, e.g. ["postgres", "redis"] or ["byo", "redis"]',
            )
        return types


class DatabaseInfo(BaseModel):
    provider: Literal["postgres", "byo", "redis"] = Field(
        description="what the agent asked for: a managed Postgres (whichever backend serves it: our own server, "
        "Neon or Coolify; agents are not told, so results do not change with the operator's choice), byo, or redis"
    )
    tier: str
    host: str
    port: int
    database: str
    user: str
    password: SecretStr
    url: SecretStr
    created: bool = False


def as_requested(provider: str) -> Literal["postgres", "byo", "redis"]:
    """What agents are shown of a database's provider: what they asked for, never which backend serves it."""
    if provider == "byo":
        return "byo"
    return "redis" if provider.startswith("redis") else "postgres"


def postgres_env(creds: DatabaseCredentials) -> dict[str, SecretStr]:
    """DATABASE_URL and the libpq variables for the same login (apps read one or the other)."""
    env = {
        "DATABASE_URL": creds.url(),
        "PGHOST": SecretStr(creds.host),
        "PGPORT": SecretStr(str(creds.port)),
        "PGUSER": SecretStr(creds.user),
        "PGPASSWORD": creds.password,
        "PGDATABASE": SecretStr(creds.database),
    }
    for option, name in LIBPQ_OPTIONS.items():
        if option in creds.options:
            env[name] = SecretStr(creds.options[option])
    return env


def owner_slug(project_id: uuid.UUID) -> str:
    # ids, not names: two accounts may both have a project called "shop"
    return project_id.hex


class DatabaseService:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        box: SecretBox,
        postgres: DatabaseProvider,
        byo,  # BringYourOwnDatabase: register(url) -> DatabaseHandle
        limits: LimitDefaults | None = None,
        *,
        providers: Mapping[str, DatabaseProvider] | None = None,
        redis: DatabaseProvider | None = None,
    ) -> None:
        """`postgres` is the configured default that `database={"type":"postgres"}` provisions with (our own
        server, Neon, or Coolify-managed Postgres). `providers` adds every other managed provider by name, so a
        database made by one that is no longer the default is still dropped by the provider that made it.
        `redis` serves `database={"type":"redis"}` (providers/database/redis.py); None: Redis is not offered."""
        self._sessions = sessions
        self._box = box
        self._postgres = postgres
        self._byo = byo
        self._redis = redis
        self.limits = limits or LimitDefaults()
        self._providers: dict[str, DatabaseProvider] = {**(providers or {}), postgres.name: postgres}
        if redis is not None:
            self._providers[redis.name] = redis

    def _creds(self, row: Database) -> DatabaseCredentials:
        return DatabaseCredentials.model_validate_json(self._box.decrypt(row.credentials_enc))

    def login_of(self, row: Database) -> tuple[str, SecretStr]:
        """(role, password) the tenant's own connections use: how a restore logs in (dbbackup: never as the
        superuser with SET ROLE, which tenant code undoes with RESET ROLE; red team dec2)."""
        creds = self._creds(row)
        return creds.user, creds.password

    def _info(self, row: Database, created: bool = False) -> DatabaseInfo:
        creds = self._creds(row)
        return DatabaseInfo(
            provider=as_requested(row.provider),
            tier=row.tier,
            host=creds.host,
            port=creds.port,
            database=creds.database,
            user=creds.user,
            password=creds.password,
            url=creds.url(),
            created=created,
        )

    async def _rows(self, project_id: uuid.UUID) -> dict[str, Database]:
        """The project's add-on rows (detached): one prepared statement on the statement pool (store.statements),
        since every deploy and release reads them."""
        return self._by_kind(await statement_pool(self._sessions).fetch(_ROWS, (project_id,)))

    @staticmethod
    def _by_kind(rows: list[tuple[Any, ...]]) -> dict[str, Database]:
        return {row[1]: Database(**dict(zip(_ROW_COLUMNS, row, strict=True))) for row in rows}

    @staticmethod
    def env_statement(project_id: uuid.UUID) -> tuple[str, tuple[Any, ...]]:
        """--- overhead8: the statement and parameters whose rows `env_from` turns into `env_for`'s answer (deploy_app
        reads them in the transaction that creates the deployment)."""
        return _ROWS, (project_id,)

    async def get(self, project_id: uuid.UUID, kind: Kind = "postgres") -> DatabaseInfo | None:
        """The project's Postgres (managed or byo), or with kind="redis" its Redis; None when it has none."""
        row = (await self._rows(project_id)).get(kind)
        return self._info(row) if row else None

    async def addons(self, project_id: uuid.UUID) -> dict[str, DatabaseInfo]:
        """Every add-on of the project by kind ("postgres", "redis"), one query."""
        return {kind: self._info(row) for kind, row in (await self._rows(project_id)).items()}

    async def env_for(self, project_id: uuid.UUID) -> dict[str, SecretStr]:
        """The variables the project's add-ons give every service: DATABASE_URL and PG* for its Postgres,
        REDIS_URL for its Redis (see the module docstring)."""
        return self._env_of(await self._rows(project_id))

    def env_from(self, rows: list[tuple[Any, ...]]) -> dict[str, SecretStr]:
        """--- overhead8: `env_for`'s answer from the rows of `env_statement`."""
        return self._env_of(self._by_kind(rows))

    def _env_of(self, by_kind: dict[str, Database]) -> dict[str, SecretStr]:
        env: dict[str, SecretStr] = {}
        for kind, row in sorted(by_kind.items()):
            creds = self._creds(row)
            if kind == "postgres":
                env.update(postgres_env(creds))
            elif kind == "redis":
                env["REDIS_URL"] = creds.url()
                if row.provider == EXTERNAL_PROVIDER:  # a shared server: keys must carry the project's prefix
                    env["REDIS_KEY_PREFIX"] = SecretStr(key_prefix(creds.user))
        return env

    def check_request(self, req: DatabaseRequest) -> None:
        """What can be refused without a project: an add-on this server does not offer, byo without a URL. deploy_app
        asks before it creates anything, so a refused request leaves no project or service behind."""
        for requested in req.requested():
            self._check_offered(requested, req)

    def _check_offered(self, requested: Requested, req: DatabaseRequest) -> None:
        if requested == "redis" and self._redis is None:
            raise InvalidArgument(
                "this InkMCP server does not offer the Redis add-on.",
                argument="database.type",
                fix='omit "redis" (pass database={"type": "postgres"} or none), or ask the operator to enable Redis '
                "(INKMCP_REDIS_URL)",
            )
        if requested == "byo" and req.url is None:
            raise InvalidArgument(
                "type 'byo' needs a connection string.",
                argument="database.url",
                fix="pass database={'type': 'byo', 'url': 'postgresql://user:pass@host:5432/db'}",
            )

    async def ensure(self, project_id: uuid.UUID, req: DatabaseRequest) -> DatabaseInfo:
        """Every add-on `req` names, each idempotent (a project that has one keeps it, and its password).
        Returns the first one named (its `created` says whether this call made it)."""
        infos = [await self._ensure_one(project_id, requested, req) for requested in req.requested()]
        return infos[0]

    async def _ensure_one(self, project_id: uuid.UUID, requested: Requested, req: DatabaseRequest) -> DatabaseInfo:
        kind = kind_of(requested)
        existing = await self.get(project_id, kind)
        if existing:
            if requested == "byo" and existing.provider != "byo":
                raise InvalidArgument(
                    "this project already has a managed postgres database.",
                    argument="database.type",
                    fix="omit database (the existing one stays wired) or delete the project's database first",
                )
            return existing
        self._check_offered(requested, req)
        async with self._sessions.begin() as s:
            # Serialise provisioning per project across concurrent calls and processes.
            await s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"db:{project_id}"})
            row = (
                await s.execute(select(Database).where(Database.project_id == project_id, Database.kind == kind))
            ).scalar_one_or_none()
            if row is not None:
                return self._info(row)
            if requested != "byo":
                await self._check_quota(s, project_id, Tier(req.tier))
            handle: DatabaseHandle
            if requested == "byo":
                assert req.url is not None
                handle = await self._byo.register(req.url)
            elif requested == "redis":
                assert self._redis is not None
                handle = await self._redis.provision(owner_slug=owner_slug(project_id), tier=req.tier)
            else:
                handle = await self._postgres.provision(owner_slug=owner_slug(project_id), tier=req.tier)
            row = Database(
                project_id=project_id,
                kind=kind,
                provider=handle.provider,
                tier=handle.tier.value,
                external_id=handle.external_id,
                credentials_enc=self._box.encrypt(_creds_json(handle.credentials)),
            )
            s.add(row)
            await s.flush()
            return self._info(row, created=True)

    async def _check_quota(self, s: AsyncSession, project_id: uuid.UUID, tier: Tier) -> None:
        """Tier allowed for the account, and one more managed add-on (Postgres or Redis) within max_databases.

        Runs under the account row lock (core.limits), held until the database row is committed,
        so concurrent provisions in one account cannot overshoot. Bring-your-own databases cost
        this machine nothing and are not counted.
        """
        account_id = (await s.execute(select(Project.account_id).where(Project.id == project_id))).scalar_one()
        limits = await lock_account(s, account_id, self.limits)
        if tier not in limits.database_tiers:
            allowed = ", ".join(t.value for t in limits.database_tiers) or "none"
            raise InvalidArgument(
                f"database tier {tier.value!r} is not available to this account; allowed tiers: {allowed}.",
                argument="tier",
                fix=(f"pass tier={limits.database_tiers[0].value!r}" if limits.database_tiers else "omit the database")
                + " or ask the operator to grant the tier (inkmcp accounts limits <account> --db-tiers ...)",
            )
        count = (
            await s.execute(
                select(func.count())
                .select_from(Database)
                .join(Project, Database.project_id == Project.id)
                .where(Project.account_id == account_id, Database.provider != "byo")
            )
        ).scalar_one()
        if count >= limits.max_databases:
            raise reached(
                "databases", limits.max_databases, "max_databases",
                "delete a project's database (delete with delete_database=true)",
            )

    async def reconcile_connection_limits(self) -> int:
        """Make every managed role's CONNECTION LIMIT match its tier (e.g. after the limits changed).

        Idempotent; returns how many roles were changed. A failure is logged, not raised: start-up
        goes on with the old limit rather than not at all.
        """
        ensure = getattr(self._providers.get("postgres"), "ensure_connection_limit", None)
        if ensure is None:
            return 0
        async with self._sessions() as s:
            rows = (
                await s.execute(select(Database.external_id, Database.tier).where(Database.provider == "postgres"))
            ).all()
        changed = 0
        for external_id, tier in rows:
            try:
                changed += bool(await ensure(external_id, Tier(tier)))
            except Exception:
                log.exception("could not set the connection and role limits of %s", external_id)
        if changed:
            log.info("set the connection and role limits (temp files, timeouts) of %d tenant database roles", changed)
        return changed

    async def drop(self, project_id: uuid.UUID, kind: Kind | None = None) -> bool:
        """Drop the project's add-ons (every kind, or only `kind`) with their data; False when there was none.
        Each goes in its own transaction, after its provider dropped it, so a failure keeps the row to retry."""
        dropped = False
        for row_kind in sorted(await self._rows(project_id)):
            if kind is not None and row_kind != kind:
                continue
            async with self._sessions.begin() as s:
                row = (
                    await s.execute(
                        select(Database).where(Database.project_id == project_id, Database.kind == row_kind)
                    )
                ).scalar_one_or_none()
                if row is None:
                    continue
                if row.provider != "byo":
                    await self._provider_for(row.provider).drop(row.external_id)
                await s.delete(row)
                dropped = True
        return dropped

    def _provider_for(self, name: str) -> DatabaseProvider:
        """The provider that made a stored database (its row's `provider`), whichever is the default now."""
        provider = self._providers.get(name)
        if provider is None:
            raise ProviderError(
                f"this project's database was made by the {name!r} provider, which is not configured here.",
                fix=f"configure the {name} provider again (e.g. INKMCP_NEON_API_KEY for neon), then retry",
            )
        return provider


def _creds_json(c: DatabaseCredentials) -> bytes:
    """Serialise with the password revealed: this is the plaintext that gets encrypted."""
    return json.dumps({**c.model_dump(exclude={"password"}), "password": c.password.get_secret_value()}).encode()
