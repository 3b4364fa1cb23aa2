"""The shared tenant PostgreSQL: finding 8 (one account exhausts its connections) and held item 14.

#8: mallory chose tier "standard" (50 connections per role) for four projects and held 197 of the
server's 200 connections; alice's app got "remaining connection slots are reserved". Fix: a tier an
account was not granted is refused, and databases per account are capped, so everything one account's
roles may hold together leaves room for everyone else. #14 (held): mallory's login reaches no other
database, no superuser, no server files.

The attacker here is an account of this module's own (`mallory-db`): the databases it creates count
against its per-account limit, which no other module should see exhausted.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psycopg
import pytest

from tests.security.conftest import ROOT, refused, session
from tests.support import ServerProc, ToolFailed, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server

ATTACKER = "mallory-db"
MAX_ATTEMPTS = 25  # 25 x 10 connections of the free tier would be more than the server's 200


@pytest.fixture(scope="module")
async def dbs(server: ServerProc) -> dict[str, Any]:
    if ATTACKER not in server.keys:
        server.create_key(ATTACKER)
    async with session(server, "alice") as a:
        await call(a, "ensure_project", name="alice-data")
        await call(a, "provision_database", project_name="alice-data")
        alice = await call(a, "get_database_credentials", project_name="alice-data")
    async with session(server, ATTACKER) as m:
        await call(m, "ensure_project", name="mdb-0")
        await call(m, "provision_database", project_name="mdb-0")
        mallory = await call(m, "get_database_credentials", project_name="mdb-0")
    return {"alice": alice, "mallory": mallory}


def connect(creds: dict[str, Any], **override: Any) -> psycopg.Connection[Any]:
    args = {"host": creds["host"], "port": creds["port"], "user": creds["user"], "password": creds["password"],
            "dbname": creds["database"], "connect_timeout": 5, **override}
    return psycopg.connect(**args)


async def test_a_tier_not_granted_is_refused(server: ServerProc, dbs: dict[str, Any]) -> None:
    """#8: mallory may not pick tier "standard" (50 connections per role); the error names what she may use."""
    async with session(server, ATTACKER) as m:
        await call(m, "ensure_project", name="mdb-standard")
        text = await refused(m, "provision_database", project_name="mdb-standard", tier="standard")
    assert "tier" in text and "standard" in text and "free" in text, text


async def test_one_account_cannot_exhaust_tenant_postgres(server: ServerProc, dbs: dict[str, Any]) -> None:
    """#8: mallory provisions databases until refused and opens every connection her roles allow;
    alice still connects."""
    urls, refusal = [dbs["mallory"]], None
    async with session(server, ATTACKER) as m:
        for i in range(1, MAX_ATTEMPTS):
            project = f"mdb-{i}"
            await call(m, "ensure_project", name=project)
            try:
                await call(m, "provision_database", project_name=project)
            except ToolFailed as e:
                refusal = str(e)
                break
            urls.append(await call(m, "get_database_credentials", project_name=project))
    held: list[psycopg.Connection[Any]] = []
    errors: set[str] = set()
    try:
        for creds in urls:
            while len(held) < 300:
                try:
                    held.append(connect(creds))
                except psycopg.OperationalError as e:
                    errors.add(str(e).strip().splitlines()[-1])
                    break
        with connect(dbs["alice"]) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError as e:
        pytest.fail(f"alice cannot connect while mallory holds {len(held)} connections: {e}")
    finally:
        for conn in held:
            with contextlib.suppress(psycopg.Error):
                conn.close()
    assert refusal is not None, f"mallory provisioned {len(urls)} databases without reaching a limit"
    assert "INKMCP_MAX_DATABASES_PER_ACCOUNT" in refusal or "databases" in refusal, refusal
    assert errors, "mallory's roles have no connection limit"


async def test_tenant_login_reaches_nothing_else(server: ServerProc, dbs: dict[str, Any]) -> None:
    """#14 (held): mallory's login on alice's database, as alice, as the superuser; server files."""
    alice, mallory = dbs["alice"], dbs["mallory"]
    with pytest.raises(psycopg.OperationalError, match=r"permission denied|not permitted|no pg_hba"):
        connect(mallory, dbname=alice["database"]).close()
    for user in (alice["user"], "postgres"):
        with pytest.raises(psycopg.OperationalError, match=r"password authentication failed|no pg_hba"):
            connect(mallory, user=user).close()
    for db in ("postgres", "template1"):
        with pytest.raises(psycopg.OperationalError, match=r"permission denied|not permitted"):
            connect(mallory, dbname=db).close()
    with connect(mallory) as conn, pytest.raises(psycopg.errors.InsufficientPrivilege):
        conn.execute("SELECT pg_read_file('/etc/passwd')")
