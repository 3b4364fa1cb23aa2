"""The hot read paths on psycopg's pool (inkmcp/store/statements.py): the same answers as before, revocation still at
once, a server that dropped the pool's connections costs no failed request, and what agents see of a database
never names the backend."""

from __future__ import annotations

import uuid

import psycopg
from cryptography.fernet import Fernet
from sqlalchemy import insert

from inkmcp.core.accounts import AccountService
from inkmcp.core.limits import LimitDefaults
from inkmcp.core.principal import Principal
from inkmcp.core.projects import ProjectService
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.models import Database, Project, Service
from inkmcp.store.statements import statement_pool


async def test_a_revoked_key_fails_on_the_very_next_request(store: Store) -> None:
    accounts = AccountService(store.sessionmaker, LimitDefaults())
    issued = await accounts.create_key(f"reads-{uuid.uuid4().hex[:8]}")
    principal = await accounts.authenticate(issued.key)
    assert principal is not None and principal.account_name == issued.account and principal.actor == issued.prefix
    assert await accounts.authenticate(issued.key + "x") is None
    assert await accounts.authenticate("not-a-key") is None
    assert await accounts.revoke_key(issued.key) == 1
    assert await accounts.authenticate(issued.key) is None


async def test_the_pool_survives_the_server_closing_its_connections(store: Store) -> None:
    """What an embedded server restart does to pooled connections: every one is closed under the pool. The next
    read retries on a fresh connection instead of failing an agent's request."""
    accounts = AccountService(store.sessionmaker, LimitDefaults())
    issued = await accounts.create_key(f"reads-{uuid.uuid4().hex[:8]}")
    assert await accounts.authenticate(issued.key) is not None  # the pool holds a connection now
    url = store.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as admin:
        cur = await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE application_name = 'inkmcp-statements' AND pid <> pg_backend_pid()")
        assert any(row[0] for row in await cur.fetchall())
    for _ in range(3):
        assert await accounts.authenticate(issued.key) is not None


async def test_list_projects_counts_services_and_never_names_the_database_backend(store: Store) -> None:
    accounts = AccountService(store.sessionmaker, LimitDefaults())
    name = f"reads-{uuid.uuid4().hex[:8]}"
    account_id = await accounts.ensure_account(name)
    p = Principal(account_id=account_id, account_name=name, actor="test")
    projects = ProjectService(store.sessionmaker, SecretBox([Fernet.generate_key()]), LimitDefaults())
    async with store.sessionmaker.begin() as s:
        ids = {}
        for pname in ("b-neon", "a-byo", "c-none", "d-coolify"):
            ids[pname] = (await s.execute(insert(Project).values(account_id=account_id, name=f"{pname}-{name}")
                                          .returning(Project.id))).scalar_one()
        for backend, pname in (("neon", "b-neon"), ("byo", "a-byo"), ("coolify", "d-coolify")):
            await s.execute(insert(Database).values(project_id=ids[pname], provider=backend, tier="free",
                                                    external_id="x", credentials_enc=b"x"))
        for sname in ("web", "worker"):
            await s.execute(insert(Service).values(project_id=ids["b-neon"], name=sname, service_type="webapp",
                                                   mode="persistent", repo_url="https://x.example/r.git"))
    listed, total = await projects.list(p)
    assert total == 4
    assert [(v.name.split("-")[0], v.services, v.database) for v in listed] == [
        ("a", 0, "byo"), ("b", 2, "postgres"), ("c", 0, None), ("d", 0, "postgres")]
    assert statement_pool(store.sessionmaker) is statement_pool(store.sessionmaker)
