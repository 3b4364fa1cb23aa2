"""redteam6: one tenant's unfinished logins took every connection slot of the tenant PostgreSQL server.

The attack, as mallory (a free-tier account: one database, CONNECTION LIMIT 5; code in her own app): PostgreSQL gives
a connection one of its max_connections slots (a PGPROC) as soon as its startup packet arrives, before the password
exchange, and keeps it for authentication_timeout (60 s); a role's CONNECTION LIMIT is checked only after the login.
The tenant server's port is open to every tenant (loopback guard). Her app opens 230 connections, sends a startup
packet for her own role and database, reads the server's password request and never answers it.

Before (measured here, on the shared server): 200 connections got the password request and held their slots (the
rest: an error); alice's login got "FATAL: sorry, too many clients already", and so did InkMCP's own (alice's
provision_database: "cannot reach the tenant database server: ... sorry, too many clients already"), for as long as
mallory reopens them every minute.

After (`providers/compute/local/sockguard.py`, `limit_ports`): an account's open connections to the tenant server's
port, logged in or not, are counted by the cgroup BPF connect/release hooks and refused past
INKMCP_TENANT_PG_CONNECTIONS (40) with EPERM; her runtime log says so. Not closed: five accounts' 40 still fill 200
(the cap is per account, not the account's own databases x tier limit, which the provider does not know).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from inkmcp.providers.compute.local import sockguard
from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session
from tests.support import call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys a lab on the shared server

ATTACKER = "mallory-slots"  # an account of this module's own: its connections count against its own share
TRIES = 230  # more than the server's max_connections (200)

# Inside mallory's app: connect to the tenant server, send a startup packet for her own role and database, read the
# server's first answer ('R': it asks for her password) and never answer it. Kept in STATE until RELEASE.
HOLD = r'''
import errno, socket, struct
def startup(user, db):
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0" + db.encode() + b"\0\0"
    return struct.pack("!I", len(body) + 4) + body
held, answers = STATE.setdefault("pg", []), {}
for _ in range(ARGS["n"]):
    s = socket.socket()
    s.settimeout(10)
    try:
        s.connect((ARGS["host"], ARGS["port"]))
        s.sendall(startup(ARGS["user"], ARGS["db"]))
        first = s.recv(1)
    except OSError as e:
        s.close()
        key = errno.errorcode.get(e.errno, str(e.errno)) if e.errno else type(e).__name__
        answers[key] = answers.get(key, 0) + 1
        continue
    key = {b"R": "password asked", b"E": "error"}.get(first, repr(first))
    answers[key] = answers.get(key, 0) + 1
    if first == b"R":
        held.append(s)
    else:
        s.close()
result = {"held": len(held), "answers": answers}
'''

RELEASE = r'''
for s in STATE.pop("pg", []):
    s.close()
result = "released"
'''


def _login(creds: dict[str, Any]) -> str:
    try:
        with psycopg.connect(host=creds["host"], port=creds["port"], user=creds["user"],
                             password=creds["password"], dbname=creds["database"], connect_timeout=10) as conn:
            return str(conn.execute("SELECT 'alice in'").fetchone()[0])  # type: ignore[index]
    except psycopg.OperationalError as exc:
        return f"refused: {exc}"


@pytest.fixture(scope="module")
async def setup(server: Any, repos: Path) -> dict[str, Any]:
    if ATTACKER not in server.keys:
        server.create_key(ATTACKER)
    async with session(server, "alice") as a:
        await call(a, "ensure_project", name="rt6-alice-db")
        await call(a, "provision_database", project_name="rt6-alice-db")
        alice = await call(a, "get_database_credentials", project_name="rt6-alice-db")
    async with session(server, ATTACKER) as m:
        lab = await lab_live(m, lab_repo(repos, "rt6-slots-lab"), "mallory", project_name="rt6-slots")
        await call(m, "provision_database", project_name="rt6-slots")
        mallory = await call(m, "get_database_credentials", project_name="rt6-slots")
    return {"lab": lab, "alice": alice, "mallory": mallory}


async def test_unfinished_logins_cannot_take_the_servers_slots(server: Any, setup: dict[str, Any]) -> None:
    """mallory's 230 unfinished logins: she holds at most her account's 40 (EPERM past them; before: 200, every
    slot); alice logs in and InkMCP provisions her a database meanwhile."""
    creds = setup["mallory"]
    cap = sockguard.database_cap()
    assert _login(setup["alice"]) == "alice in"
    try:
        seen = lab_exec(server, setup["lab"]["url"], HOLD, n=TRIES, host=creds["host"], port=int(creds["port"]),
                        user=creds["user"], db=creds["database"])
        assert seen["held"] <= cap and seen["answers"].get("EPERM", 0) >= TRIES - cap, seen
        assert _login(setup["alice"]) == "alice in"
        async with session(server, "alice") as a:
            await call(a, "ensure_project", name="rt6-alice-db2")
            await call(a, "provision_database", project_name="rt6-alice-db2")  # InkMCP's own login
    finally:
        assert lab_exec(server, setup["lab"]["url"], RELEASE) == "released"
    said = await _log_says(server, ATTACKER, "rt6-slots", "connect() to the database server refused")
    assert said and f"have {cap} connections open" in said[0], said


async def _log_says(server: Any, account: str, project: str, text: str) -> list[str]:
    deadline = time.monotonic() + 20
    async with session(server, account) as s:
        while True:
            logs = await call(s, "get_logs", project_name=project, service_name="web", scope="runtime", tail=100)
            found = [line for line in logs["lines"] if text in line]
            if found or time.monotonic() > deadline:
                return found
            await asyncio.sleep(1)
