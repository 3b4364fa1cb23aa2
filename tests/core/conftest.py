"""Core services over the real store and the real tenant PostgreSQL (embedded servers, as tests/store does).

The store is shared by the whole session and project names are global, so every test makes its own
accounts and names (`Core.name()`), never fixed ones.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.build.source import SourcePolicy
from inkmcp.core.accounts import AccountService
from inkmcp.core.audit import AuditLog
from inkmcp.core.databases import DatabaseService
from inkmcp.core.deployments import DeployRequest, DeployService
from inkmcp.core.envvars import EnvService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.platform import Platform
from inkmcp.core.principal import Principal
from inkmcp.core.projects import ProjectService
from inkmcp.metrics import Metrics
from inkmcp.providers.compute.local.provider import LocalComputeProvider
from inkmcp.providers.database.base import DatabaseProvider
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.embedded import EmbeddedPostgres
from tests.cgroup_cleanup import remove_service_cgroups  # --- mender6
from tests.store import conftest as _store_fixtures

# The embedded servers and the migrated store of tests/store, as fixtures of tests/core too.
embedded_pg_factory = _store_fixtures.embedded_pg_factory
control_pg = _store_fixtures.control_pg
tenant_pg = _store_fixtures.tenant_pg
store_url = _store_fixtures.store_url
store = _store_fixtures.store

PLAN = BuildPlan(stack=Stack.none, source="call",
                 processes=(ProcessSpec(name="web", command="exec true", routed=True),))


@dataclass
class Core:
    """One wiring of core over the shared store, with its own limits and encryption key."""

    store: Store
    box: SecretBox
    limits: LimitDefaults
    accounts: AccountService
    projects: ProjectService
    databases: DatabaseService
    deploys: DeployService
    platform: Platform
    tenant_pg: EmbeddedPostgres
    tag: str

    def name(self, label: str = "p") -> str:
        """A project name no other test uses (names are unique across the whole store)."""
        return f"{label}-{self.tag}-{uuid.uuid4().hex[:6]}"

    async def account(self, label: str = "acct") -> Principal:
        return await self.accounts.principal_for(f"{label}-{uuid.uuid4().hex[:8]}", "test")

    async def service(self, p: Principal, project_name: str, service: str = "web",
                      repo_url: str = "https://git.example/app.git") -> uuid.UUID:
        """Project + service rows as deploy_app makes them (without fetching or building)."""
        project, _ = await self.projects.ensure(p, project_name, repo_url=repo_url)
        return await self.deploys._ensure_service(project.id, DeployRequest(repo_url=repo_url, service_name=service))

    async def deployment(self, service_id: uuid.UUID) -> uuid.UUID:
        return await self.deploys._create_deployment(
            service_id, "0" * 40, uuid.uuid4().hex, PLAN, ServiceType.webapp, Mode.persistent
        )


@pytest.fixture
async def make_core(store: Store, tenant_pg: EmbeddedPostgres) -> AsyncIterator[Callable[..., Core]]:
    """`make_core(**limit_defaults) -> Core`; compute is a LocalComputeProvider that is never started."""
    work = Path(tempfile.mkdtemp(prefix="inkmcp-core-"))
    providers: list[PostgresDatabaseProvider] = []

    def make(redis: DatabaseProvider | None = None, **limits: object) -> Core:
        """`redis`: the Redis add-on's provider (tests/core/test_addons.py), none by default."""
        defaults = LimitDefaults(**limits)  # type: ignore[arg-type]
        box = SecretBox([Fernet.generate_key()])
        sessions = store.sessionmaker
        postgres = PostgresDatabaseProvider(tenant_pg.url(), public_host="127.0.0.1", public_port=tenant_pg.port)
        providers.append(postgres)
        accounts = AccountService(sessions, defaults)
        projects = ProjectService(sessions, box, defaults)
        envs = EnvService(sessions, box)
        databases = DatabaseService(sessions, box, postgres, None, defaults, redis=redis)
        compute = LocalComputeProvider(work / "compute")
        deploys = DeployService(
            sessions, projects=projects, envs=envs, databases=databases, compute=compute, work_dir=work / "work",
            sources=SourcePolicy(allow_local=False), mac_key=b"k" * 32, metrics=Metrics(), max_env_bytes=65536,
        )
        platform = Platform(
            sessions, accounts=accounts, audit=AuditLog(sessions), projects=projects, envs=envs,
            databases=databases, deploys=deploys, compute=compute, max_env_bytes=65536,
        )
        return Core(store=store, box=box, limits=defaults, accounts=accounts, projects=projects,
                    databases=databases, deploys=deploys, platform=platform, tenant_pg=tenant_pg,
                    tag=uuid.uuid4().hex[:4])

    yield make
    for p in providers:
        await p.close()
    remove_service_cgroups(work / "compute")  # --- mender6: the local compute's service cgroups, by exact path
    shutil.rmtree(work, ignore_errors=True)
