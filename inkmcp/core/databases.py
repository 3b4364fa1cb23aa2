"""One database per project: provisioned once, credentials stored encrypted, injected as DATABASE_URL."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.core.limits import LimitDefaults, lock_account, reached
from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, DatabaseProvider, Tier
from inkmcp.store.crypto import SecretBox
from inkmcp.store.models import Database, Project

log = logging.getLogger(__name__)


class DatabaseRequest(BaseModel):
    """What an agent asks for in deploy_app(database=...)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["postgres", "byo"] = "postgres"
    tier: Tier = Tier.free
    url: SecretStr | None = Field(default=None, description="for type=byo: postgresql:// connection string")


class DatabaseInfo(BaseModel):
    provider: Literal["postgres", "byo"] = Field(
        description="what the agent asked for: a managed Postgres (whichever backend serves it: our own server, "
        "Neon or Coolify; agents are not told, so results do not change with the operator's choice) or byo"
    )
    tier: str
    host: str
    port: int
    database: str
    user: str
    password: SecretStr
    url: SecretStr
    created: bool = False


def as_requested(provider: str) -> Literal["postgres", "byo"]:
    """What agents are shown of a database's provider: what they asked for, never which backend serves it."""
    return "byo" if provider == "byo" else "postgres"


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
    ) -> None:
        """`postgres` is the configured default that `database={"type":"postgres"}` provisions with (our own
        server, Neon, or Coolify-managed Postgres). `providers` adds every other managed provider by name, so a
        database made by one that is no longer the default is still dropped by the provider that made it."""
        self._sessions = sessions
        self._box = box
        self._postgres = postgres
        self._byo = byo
        self.limits = limits or LimitDefaults()
        self._providers: dict[str, DatabaseProvider] = {**(providers or {}), postgres.name: postgres}

    def _info(self, row: Database, created: bool = False) -> DatabaseInfo:
        creds = DatabaseCredentials.model_validate_json(self._box.decrypt(row.credentials_enc))
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

    async def get(self, project_id: uuid.UUID) -> DatabaseInfo | None:
        async with self._sessions() as s:
            row = (await s.execute(select(Database).where(Database.project_id == project_id))).scalar_one_or_none()
        return self._info(row) if row else None

    async def env_for(self, project_id: uuid.UUID) -> dict[str, SecretStr]:
        """The variables the project's add-ons give every service (DATABASE_URL today)."""
        db = await self.get(project_id)
        return {"DATABASE_URL": db.url} if db else {}

    async def ensure(self, project_id: uuid.UUID, req: DatabaseRequest) -> DatabaseInfo:
        """Idempotent: a project that has a database keeps it (and its password)."""
        existing = await self.get(project_id)
        if existing:
            if req.type == "byo" and existing.provider != "byo":
                raise InvalidArgument(
                    "this project already has a managed postgres database.",
                    argument="database.type",
                    fix="omit database (the existing one stays wired) or delete the project's database first",
                )
            return existing
        if req.type == "byo" and req.url is None:
            raise InvalidArgument(
                "type 'byo' needs a connection string.",
                argument="database.url",
                fix="pass database={'type': 'byo', 'url': 'postgresql://user:pass@host:5432/db'}",
            )
        async with self._sessions.begin() as s:
            # Serialise provisioning per project across concurrent calls and processes.
            await s.execute(text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": f"db:{project_id}"})
            row = (await s.execute(select(Database).where(Database.project_id == project_id))).scalar_one_or_none()
            if row is not None:
                return self._info(row)
            if req.type == "postgres":
                await self._check_quota(s, project_id, Tier(req.tier))
            handle: DatabaseHandle
            if req.type == "byo":
                assert req.url is not None
                handle = await self._byo.register(req.url)
            else:
                handle = await self._postgres.provision(owner_slug=owner_slug(project_id), tier=req.tier)
            row = Database(
                project_id=project_id,
                provider=handle.provider,
                tier=handle.tier.value,
                external_id=handle.external_id,
                credentials_enc=self._box.encrypt(_creds_json(handle.credentials)),
            )
            s.add(row)
            await s.flush()
            return self._info(row, created=True)

    async def _check_quota(self, s: AsyncSession, project_id: uuid.UUID, tier: Tier) -> None:
        """Tier allowed for the account, and one more managed database within max_databases.

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
                log.exception("could not set the connection limit of %s", external_id)
        if changed:
            log.info("set the connection limit of %d tenant database roles", changed)
        return changed

    async def drop(self, project_id: uuid.UUID) -> bool:
        async with self._sessions.begin() as s:
            row = (await s.execute(select(Database).where(Database.project_id == project_id))).scalar_one_or_none()
            if row is None:
                return False
            if row.provider != "byo":
                await self._provider_for(row.provider).drop(row.external_id)
            await s.delete(row)
        return True

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
