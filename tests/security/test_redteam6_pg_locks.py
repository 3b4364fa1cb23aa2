"""redteam6 (open): one tenant session fills the tenant PostgreSQL server's shared lock table; every login then fails.

The attack, as mallory (a free-tier account, one database, one of the five connections her role may hold; here from
the test process with her credentials, what her app does with its DATABASE_URL): the lock table is the whole
server's (max_locks_per_transaction x (max_connections + prepared transactions) entries, ~13,000 here, plus spare
shared memory), and no role or backend has a share of it. `SELECT pg_advisory_lock(g) FROM generate_series(...)`
in chunks of 2,000 keeps session locks until she disconnects (no statement or idle-in-transaction timeout applies
between statements of an idle session). Advisory locks are not the only way: every subtransaction that writes takes
a lock on its xid (a PL/pgSQL loop with an EXCEPTION block), and every table locked, temporary ones included.

Measured here (the shared server): her session took 24,000 locks, then "out of shared memory"; alice's new
connection got "FATAL: out of shared memory" at login, and InkMCP's provision_database for her failed the same way
("cannot reach the tenant database server: ... out of shared memory"), for as long as mallory's session lives.

Not fixed (strict xfail: it passes once alice can log in while the attack holds): PostgreSQL has no per-role or
per-backend lock cap and no hook to add one. A watchdog ending tenant backends over a share of the table (as
release_notify_queue does for the NOTIFY queue) only shortens the outage to its polling period, which she repeats;
a much larger max_locks_per_transaction only raises the number she takes in about a second. The sound fix is a
PostgreSQL server (cluster) per account, or per tier of trust, so a full table is its own account's.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.security.conftest import ROOT, session
from tests.support import call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: provisions databases on the shared server

ATTACKER, VICTIM = "mallory-locks", "victim-locks"  # accounts of this module's own


def _connect(creds: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(host=creds["host"], port=creds["port"], user=creds["user"], password=creds["password"],
                           dbname=creds["database"], autocommit=True, connect_timeout=10)


@pytest.fixture(scope="module")
async def creds(server: Any) -> dict[str, Any]:
    found = {}
    for account, project in ((ATTACKER, "rt6-locks"), (VICTIM, "rt6-locks-victim")):
        if account not in server.keys:
            server.create_key(account)
        async with session(server, account) as s:
            await call(s, "ensure_project", name=project)
            await call(s, "provision_database", project_name=project)
            found[account] = await call(s, "get_database_credentials", project_name=project)
    return found


@pytest.mark.xfail(strict=True, reason="open: one session fills the tenant server's lock table (module docstring)")
async def test_one_session_cannot_fill_the_servers_lock_table(server: Any, creds: dict[str, Any]) -> None:
    with _connect(creds[VICTIM]) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)  # control: the victim logs in before the attack
    attacker = _connect(creds[ATTACKER])
    try:
        taken, error = 0, ""
        for chunk in range(100):
            try:
                attacker.execute("SELECT count(pg_advisory_lock(g)) FROM generate_series(%s::bigint, %s::bigint) g",
                                 (chunk * 2000, chunk * 2000 + 1999))
                taken += 2000
            except psycopg.Error as exc:
                error = str(exc)
                break
        assert "out of shared memory" in error, (taken, error)  # her side: the table is full
        try:
            with _connect(creds[VICTIM]) as conn:
                victim = str(conn.execute("SELECT 'in'").fetchone()[0])  # type: ignore[index]
        except psycopg.OperationalError as exc:
            victim = str(exc)
        assert victim == "in", f"with {taken} locks of mallory's held, the victim's login got: {victim}"
    finally:
        attacker.close()
