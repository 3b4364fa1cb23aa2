"""Databases on Neon (serverless Postgres), through Neon's API v2 (`inkmcp.neon.client`).

Layout: **one Neon project per InkMCP database** (core asks for one database per InkMCP project, so this is one
Neon project per InkMCP project), named `<INKMCP_NEON_PROJECT_PREFIX><owner slug>`, whose default branch holds
one role and one database, both named like the self-hosted provider's (`ink_<slug>`, `database_name_for`).
Why not one Neon project per account with a role + database per InkMCP project inside it:

* isolation: a Neon project is its own Postgres cluster (compute, storage, history). Inside one project every
  role can CONNECT to every database (Neon's API creates databases with PUBLIC's default CONNECT and offers no
  REVOKE), so two InkMCP projects sharing a Neon project could read each other's data; one tenant's load, a
  runaway query or a restore would also hit the others;
* lifecycle: deleting the InkMCP database deletes the Neon project, with its branches, history and computes;
  nothing of a tenant is left behind, and nothing of another tenant is touched;
* the contract: `provision(owner_slug=...)` knows the project, not the account.
The cost is Neon's per-plan project quota (the plan decides how many projects an organization may have):
InkMCP's own `max_databases` per account bounds the number, and the operator sizes the Neon plan (or sets
`INKMCP_NEON_ORG_ID` to an organization with room). Hitting Neon's quota surfaces as Neon's 4xx message.

Crash safety and idempotency (no state kept here; the deterministic name is the record):
* `provision` finds the project by its exact name before creating one; a create whose answer was lost
  (timeout, 5xx) is followed by a lookup, never by a blind second create; if duplicates exist (two replicas
  raced without core's lock), the oldest is kept and the others are deleted;
* every later step is find-then-create (role, database), so a repeat after a crash at any step converges;
* the password: a fresh project's role password comes in the create answer; any other path resets the role's
  password (`reset_password`), as the contract says, because nobody holds the old one;
* one `asyncio.Lock` per slug serialises concurrent calls in this process; core's advisory lock per project
  serialises replicas;
* every step that returns operations waits for them (polling with backoff) before the next, and the client
  retries `423 Locked` / `429` with backoff, so steps never race Neon's own operations.

`drop` deletes the Neon project; it refuses an id whose project does not carry the prefix (never deletes what
InkMCP did not create) and treats 404 as done. The API key never appears in logs or errors (see the client).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import defaultdict
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import SecretStr

from inkmcp.errors import InkError, InvalidArgument, ProviderError
from inkmcp.neon.client import NeonClient, NeonError, NeonNotFound, NeonUnavailable, RetryPolicy
from inkmcp.neon.models import (
    BranchSpec,
    DatabaseCreate,
    DatabaseSpec,
    DefaultEndpointSettings,
    Operation,
    Project,
    ProjectCreate,
    ProjectSpec,
    RoleCreate,
    RoleSpec,
)
from inkmcp.neon.settings import NeonSettings
from inkmcp.neon.spec import NeonSpec
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, Tier
from inkmcp.providers.database.postgres import database_name_for

log = logging.getLogger(__name__)

_PROJECT_ID = re.compile(r"^[a-z0-9-]{1,60}$")


class NeonDatabaseProvider:
    """DatabaseProvider over one Neon account (API key), one Neon project per database."""

    name = "neon"

    def __init__(self, client: NeonClient, settings: NeonSettings) -> None:
        self._client = client
        self.settings = settings
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)

    def __repr__(self) -> str:
        return f"NeonDatabaseProvider(api_url={self._client.api_url!r}, prefix={self.settings.project_prefix!r})"

    def project_name(self, owner_slug: str) -> str:
        return self.settings.project_prefix + database_name_for(owner_slug).removeprefix("ink_").replace("_", "-")

    def _max_cu(self, tier: Tier) -> float:
        return self.settings.standard_max_cu if tier == Tier.standard else self.settings.free_max_cu

    async def _wait(self, operations: list[Operation]) -> None:
        await self._client.wait_operations(operations, timeout=self.settings.operation_timeout)

    # -- provision -------------------------------------------------------------------------------------------

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        tier = Tier(tier)
        ident = database_name_for(owner_slug)
        async with self._locks[owner_slug]:
            try:
                return await self._provision(owner_slug, ident, tier)
            except NeonError as e:
                raise ProviderError(f"provisioning the Neon database {ident} failed: {e}",
                                    fix="retry later (the next attempt resumes where this one stopped)"
                                    if e.retryable else None) from None

    async def _find(self, name: str) -> Project | None:
        found = await self._client.find_projects(name, org_id=self.settings.org_id)
        if not found:
            return None
        found.sort(key=lambda p: (p.created_at, p.id))
        keep, extra = found[0], found[1:]
        for dup in extra:  # a create raced without core's lock: keep the oldest, remove the rest
            log.warning("deleting duplicate Neon project %s (%s); keeping %s", dup.id, name, keep.id)
            try:
                await self._client.delete_project(dup.id)
            except NeonNotFound:
                pass
        return keep

    async def _provision(self, owner_slug: str, ident: str, tier: Tier) -> DatabaseHandle:
        name = self.project_name(owner_slug)
        password: SecretStr | None = None
        branch_id: str | None = None
        project = await self._find(name)
        if project is None:
            body = ProjectCreate(project=ProjectSpec(
                name=name, region_id=self.settings.region, pg_version=self.settings.pg_version,
                org_id=self.settings.org_id, store_passwords=True,
                branch=BranchSpec(role_name=ident, database_name=ident),
                default_endpoint_settings=DefaultEndpointSettings(autoscaling_limit_min_cu=0.25,
                                                                  autoscaling_limit_max_cu=self._max_cu(tier))))
            try:
                created = await self._client.create_project(body)
            except NeonUnavailable:
                # The answer was lost; the project may exist. Look before anything else (never create twice).
                project = await self._find(name)
                if project is None:
                    raise
                log.info("Neon project %s found after an ambiguous create", project.id)
            else:
                project, branch_id = created.project, created.branch.id
                role = next((r for r in created.roles if r.name == ident), None)
                password = role.password if role is not None else None
                log.info("created Neon project %s for %s", project.id, ident)
                await self._wait(created.operations)
        if branch_id is None:
            branches = await self._client.list_branches(project.id)
            default = next((b for b in branches if b.default), None)
            if default is None:
                raise ProviderError(f"Neon project {project.id} has no default branch",
                                    fix="restore or set a default branch in the Neon console, then retry")
            branch_id = default.id
        try:
            await self._client.get_role(project.id, branch_id, ident)
        except NeonNotFound:
            made = await self._client.create_role(project.id, branch_id, RoleCreate(role=RoleSpec(name=ident)))
            password = made.role.password
            await self._wait(made.operations)
        if await self._client.get_database(project.id, branch_id, ident) is None:
            made_db = await self._client.create_database(
                project.id, branch_id, DatabaseCreate(database=DatabaseSpec(name=ident, owner_name=ident)))
            await self._wait(made_db.operations)
        if password is None:
            reset = await self._client.reset_password(project.id, branch_id, ident)
            password = reset.role.password
            await self._wait(reset.operations)
        if password is None:
            raise ProviderError(f"Neon returned no password for role {ident} of project {project.id}")
        uri = await self._client.connection_uri(project.id, branch_id=branch_id, database=ident, role=ident)
        return DatabaseHandle(provider=self.name, tier=tier, external_id=project.id,
                              credentials=_credentials(uri, ident, password))

    # -- drop ------------------------------------------------------------------------------------------------

    async def drop(self, external_id: str) -> None:
        """Delete the Neon project `external_id` (Neon project id). Idempotent; refuses projects not ours."""
        if not _PROJECT_ID.fullmatch(external_id):
            raise InvalidArgument(f"{external_id!r} is not a Neon project id", argument="external_id",
                                  fix="pass the external_id returned by provision (a Neon project id)")
        try:
            project = await self._client.get_project(external_id)
            if not project.name.startswith(self.settings.project_prefix):
                raise InvalidArgument(
                    f"Neon project {external_id} ({project.name!r}) was not created by InkMCP",
                    argument="external_id",
                    fix=f"only projects named {self.settings.project_prefix}… are deleted; delete others in Neon")
            await self._client.delete_project(external_id)
            log.info("deleted Neon project %s", external_id)
        except NeonNotFound:
            return
        except NeonError as e:
            raise ProviderError(f"deleting the Neon project {external_id} failed: {e}",
                                fix="retry later" if e.retryable else None) from None

    async def check(self) -> str:
        """For `inkmcp doctor`: the key is accepted and the projects are listable (org included). Returns a one-line
        summary; raises InkError naming the setting to fix."""
        try:
            found = await self._client.list_projects(self.settings.project_prefix, org_id=self.settings.org_id)
        except NeonError as e:
            setting = "INKMCP_NEON_API_KEY" if e.status in (401, 403) else (
                "INKMCP_NEON_ORG_ID" if e.status in (400, 404) else "INKMCP_NEON_API_URL")
            raise InkError(f"Neon does not answer as expected: {e}", argument=setting,
                           fix=f"check {setting}" + (" and Neon's status" if e.retryable else "")) from None
        mine = sum(1 for p in found if p.name.startswith(self.settings.project_prefix))
        return f"Neon API at {self._client.api_url} accepts the key; {mine} InkMCP project(s)"

    async def close(self) -> None:
        await self._client.aclose()


def _credentials(uri: SecretStr, ident: str, password: SecretStr) -> DatabaseCredentials:
    """Host, port and options (sslmode=require, channel_binding=…) from Neon's connection URI; user, database
    and password are ours (the URI's password may be an older one when passwords are not stored)."""
    parts = urlsplit(uri.get_secret_value())
    if parts.scheme not in ("postgres", "postgresql") or not parts.hostname:
        raise ProviderError("Neon's connection URI is not a postgresql:// URL with a host")
    database = unquote(parts.path.lstrip("/")) or ident
    return DatabaseCredentials(host=parts.hostname, port=parts.port or 5432, database=database,
                               user=unquote(parts.username or ident), password=password,
                               options=dict(parse_qsl(parts.query)))


def build_neon_provider(settings: NeonSettings, *, validate: bool = False,
                        retry: RetryPolicy | None = None) -> NeonDatabaseProvider:
    """The provider for `settings` (from `NeonSettings.from_env()`); an InkError naming the variable when the
    key is missing. `validate=True` checks every request against the vendored spec (tests, `inkmcp doctor`)."""
    if settings.api_key is None:
        raise InkError("the Neon provider needs an API key", argument="INKMCP_NEON_API_KEY",
                       fix="create one in the Neon Console (Account or Organization settings → API keys) and set "
                           "INKMCP_NEON_API_KEY, or unset the Neon default")
    client = NeonClient(settings.api_url, settings.api_key, timeout=settings.request_timeout,
                        retry=retry or RetryPolicy(max_total_wait=settings.max_retry_wait),
                        validate_with=NeonSpec.load() if validate else None)
    return NeonDatabaseProvider(client, settings)
