"""A tenant's app connecting to another tenant's app port directly on this machine, bypassing the proxy (loopback).

Before (the review's #16b, "PARTIAL"; docs/trust-boundary.md "what loopback still shares"): tenants share the host's
network namespace, so mallory's app connected to alice's app port on 127.0.0.1 or [::1] (every listener and its uid
are in /proc/net/tcp) and sent `X-Forwarded-For: 203.0.113.66` and `X-Real-IP` of her choosing: alice's app, which
trusts its one proxy hop (the proxy sets those headers and drops a client's own), took them as the visitor's address.
The same connect() reached InkMCP's MCP port, the proxy's slow path (which passes forwarded headers through and
routes by any Host) and other projects' Redis instances.

Now (providers/compute/local/loopguard.py): cgroup BPF hooks stamp each listener a project user binds, and refuse a
project user's connect() to a listener another project stamped, or to InkMCP's own ports, with EPERM before any
packet. This performs the attack from inside mallory's app (her project's uid, in the sandbox) and asserts, from her
side, the errno of each connect(), and from alice's, that her app saw none of it; while mallory's own traffic (her web
process to her worker's port-0 listener, to her other service's port, her Redis, the tenant PostgreSQL server, the
proxy) still works, and through the proxy alice still gets the real client address.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.security.conftest import (
    LAB_FILES,
    ROOT,
    deploy_live,
    lab_exec,
    session,
    via_proxy,
)
from tests.support import ServerProc, call, git_repo

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]

ALICE = "lb-alice"
MALLORY = "lb-mallory"
VICTIM_ACCOUNT, ATTACKER = "lb-alice", "lb-mallory"
FORGED = "203.0.113.66"

# alice's app: listens on [::] (dual stack: 127.0.0.1, ::1 and the host's addresses all reach it) and keeps every
# request's path and forwarded headers; /seen returns them. It trusts the proxy's X-Forwarded-For, as apps do.
VICTIM = r'''
import json, os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SEEN = []


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/seen":
            body = json.dumps(SEEN).encode()
        elif self.path == "/port":  # where the attacker aims (alice's own answer, through the proxy: not recorded)
            body = os.environ["PORT"].encode()
        else:
            SEEN.append({"path": self.path, "xff": self.headers.get("X-Forwarded-For"),
                         "real": self.headers.get("X-Real-IP"), "peer": self.client_address[0]})
            body = f"alice serves {self.headers.get('X-Forwarded-For')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Dual(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


Dual(("::", int(os.environ["PORT"])), H).serve_forever()
'''

# mallory's worker: a port-0 listener (its number written to the project's HOME, shared by its processes)
WORKER = r'''
import os, socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(16)
tmp = os.path.join(os.environ["HOME"], "worker.port.tmp")
open(tmp, "w").write(str(s.getsockname()[1]))
os.replace(tmp, os.path.join(os.environ["HOME"], "worker.port"))
print("worker listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(b"worker says hi")
    c.close()
'''

# Inside mallory's web process: the attack, and her own traffic.
ATTACK = r'''
import errno, os, socket, time


def talk(host, port, path, host_header="x"):
    """connect(); on success an HTTP request with forged forwarded headers; the errno name or the answer's body."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(10)
    try:
        s.connect((host, port))
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    try:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nX-Forwarded-For: {ARGS['forged']}\r\n"
                  f"X-Real-IP: {ARGS['forged']}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return "answered: " + data.decode(errors="replace").split("\r\n\r\n", 1)[-1]
    except OSError as e:
        return "after connect: " + errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def reach(port, host="127.0.0.1"):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(10)
    try:
        s.connect((host, port))
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


for _ in range(100):  # the worker starts beside the web process
    if os.path.exists(os.path.join(os.environ["HOME"], "worker.port")):
        break
    time.sleep(0.1)
worker = int(open(os.path.join(os.environ["HOME"], "worker.port")).read())
with socket.create_connection(("127.0.0.1", worker), 10) as w:
    said = w.recv(64).decode()
result = {
    "victim": {h: talk(h, ARGS["victim"], f"/forged-{ARGS['token']}") for h in ARGS["hosts"]},
    "ports": {str(p): reach(p) for p in ARGS["ports"]},
    "worker": said,
    "api": talk("127.0.0.1", ARGS["api"], "/"),
    "via_proxy": talk("127.0.0.1", ARGS["proxy"], f"/via-proxy-{ARGS['token']}", ARGS["alice_host"]),
}
'''


def _host_address() -> str | None:
    """One of this host's own non-loopback IPv4 addresses."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=False)
    for link in json.loads(out.stdout or "[]"):
        for a in link.get("addr_info", []):
            if not a["local"].startswith("127."):
                return str(a["local"])
    return None


def _slow_path_port(srv: ServerProc) -> int:
    """The proxy's slow path (InkMCP's own proxy behind nginx), from the nginx config InkMCP wrote."""
    conf = (srv.data_dir / "compute" / "proxy" / "nginx.conf").read_text()
    found = re.search(r"upstream inkmcp_slow \{ server 127\.0\.0\.1:(\d+); \}", conf)
    assert found, conf[:2000]
    return int(found.group(1))


@pytest.fixture(scope="module")
async def world(server: ServerProc, repos: Path) -> dict[str, Any]:
    if ATTACKER not in server.keys:  # accounts of this module's own: the shared ones' database limits are others'
        server.create_keys((VICTIM_ACCOUNT, ATTACKER))
    async with session(server, VICTIM_ACCOUNT) as a:
        victim = await deploy_live(a, repo_url=str(git_repo(repos / "lb-victim", {"app.py": VICTIM})),
                                   project_name=ALICE, start_command="python3 app.py", mode="persistent",
                                   database={"type": "redis"})
        alice_db = await call(a, "get_database_credentials", project_name=ALICE)
    files = {**LAB_FILES, "worker.py": WORKER, "Procfile": "web: python3 lab.py\nworker: python3 worker.py\n"}
    lab = git_repo(repos / "lb-mallory", files)
    async with session(server, ATTACKER) as m:
        web = await deploy_live(m, repo_url=str(lab), project_name=MALLORY, service_name="web", mode="persistent",
                                env_vars={"LAB_OWNER": "mallory"}, database={"type": "redis"})
        api = await deploy_live(m, repo_url=str(lab), project_name=MALLORY, service_name="api", mode="persistent",
                                env_vars={"LAB_OWNER": "mallory-api"}, start_command="python3 lab.py")
        mallory_db = await call(m, "get_database_credentials", project_name=MALLORY)
    return {"victim": victim, "web": web, "api": api, "alice_redis": _redis_port(alice_db),
            "mallory_redis": _redis_port(mallory_db)}


def _redis_port(creds: Any) -> int:
    text = json.dumps(creds)
    url = re.search(r"redis://[^\"\s]+", text)
    assert url, creds
    port = urlsplit(url.group(0)).port
    assert port
    return port


def _port_of(srv: ServerProc, url: str) -> int:
    """A lab's $PORT, as it says itself."""
    r = via_proxy(srv, url, "/whoami")
    assert r.status_code == 200, r.text
    return int(r.json()["port"])


def _victim_port(srv: ServerProc, world: dict[str, Any]) -> int:
    """alice's app port, as her app says through the proxy (mallory reads it in /proc/net/tcp; a scan of every
    listener from here missed it once when another module's servers ran beside this one)."""
    r = via_proxy(srv, world["victim"]["url"], "/port")
    assert r.status_code == 200, r.text
    return int(r.text)


async def test_another_tenants_app_port_is_refused_and_its_own_traffic_still_flows(
    server: ServerProc, world: dict[str, Any]
) -> None:
    token = secrets.token_hex(6)
    victim_port = _victim_port(server, world)
    hosts = ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0"]
    host_address = _host_address()
    if host_address is not None:
        hosts.append(host_address)
    mcp, slow = server.port, _slow_path_port(server)
    pg = int((server.data_dir / "pg" / "tenants.port").read_text())
    ports = [mcp, slow, world["alice_redis"], world["mallory_redis"], pg, server.proxy_port]
    got = lab_exec(server, world["web"]["url"], ATTACK, victim=victim_port, hosts=hosts, ports=ports,
                   api=_port_of(server, world["api"]["url"]), proxy=server.proxy_port, token=token, forged=FORGED,
                   alice_host=urlsplit(world["victim"]["url"]).netloc)

    # mallory's side: every direct connect() to alice's app is refused before a byte is sent
    for host in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "0.0.0.0"):
        assert got["victim"][host] == "EPERM", (host, got["victim"])
    if host_address is not None:  # alice listens on all addresses: this host's own is judged as loopback is
        assert got["victim"][host_address] == "EPERM", got["victim"]
    # ... and InkMCP's own ports and alice's Redis; her own Redis, the tenant PostgreSQL server and the proxy open
    assert got["ports"] == {str(mcp): "EPERM", str(slow): "EPERM", str(world["alice_redis"]): "EPERM",
                            str(world["mallory_redis"]): "ok", str(pg): "ok", str(server.proxy_port): "ok"}, got
    # her own traffic: web -> worker (a port-0 listener of another process), web -> her other service's port
    assert got["worker"] == "worker says hi", got
    assert got["api"] == "answered: mallory-api says hi", got
    # through the proxy alice answers, with the connection's address, not the forged one
    assert got["via_proxy"] == "answered: alice serves 127.0.0.1", got

    # alice's side: her app saw the proxied request and nothing else of mallory's
    seen = json.loads(via_proxy(server, world["victim"]["url"], "/seen").text)
    mine = [(r["path"], r["xff"], r["real"]) for r in seen if token in r["path"]]
    assert mine == [(f"/via-proxy-{token}", "127.0.0.1", "127.0.0.1")], seen  # from the proxy, on loopback
    assert not [r for r in seen if FORGED in (r["xff"] or "") + (r["real"] or "")], seen

    # the refusal is named in mallory's runtime log (the kernel only said EPERM)
    deadline = time.monotonic() + 30
    async with session(server, ATTACKER) as m:
        while True:
            logs = await call(m, "get_logs", project_name=MALLORY, service_name="web", scope="runtime", tail=200)
            said = [line for line in logs["lines"] if "[inkmcp] connect() to port" in line]
            if said:
                break
            assert time.monotonic() < deadline, f"no line about the refused connects: {logs['lines'][-20:]}"
            await asyncio.sleep(1)
    assert "refused: a tenant's process may connect here only to its own project's listeners" in said[0], said


async def test_the_proxy_still_gives_alice_the_real_client_address(server: ServerProc, world: dict[str, Any]) -> None:
    """A client's forged forwarded headers, through the proxy, never reach alice's app (the proxy's own work)."""
    token = secrets.token_hex(6)
    r = via_proxy(server, world["victim"]["url"], f"/client-{token}",
                  headers={"X-Forwarded-For": FORGED, "X-Real-IP": FORGED})
    assert r.text == "alice serves 127.0.0.1", r.text
    seen = json.loads(via_proxy(server, world["victim"]["url"], "/seen").text)
    assert [s["xff"] for s in seen if token in s["path"]] == ["127.0.0.1"], seen
