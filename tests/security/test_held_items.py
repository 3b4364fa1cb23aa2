"""The review's held and partial items that had no test yet: 16b, 17, 18, 20, 29-34.

Each test repeats the review's attack and asserts it still fails, with the proof read from the
attacker's side (what mallory's client or mallory's lab got back) and, where "nothing arrived" is the
claim, from the victim's side too (alice's app prints every request it gets; a control request shows
the log is read after it was written).

    16b  a non-routed `backend` service is reachable through no Host the proxy accepts. Tenants share
         the loopback interface, so one tenant can still connect to another's port directly: that
         part is a documented limitation (docs/trust-boundary.md, "Not covered by this boundary").
    17   a fixed `port` that is in use (the MCP port, alice's app port) fails the deployment with an
         error naming the port; alice keeps answering.
    18   /mcp answers 401 without a key, from inside a tenant's app too; /metrics and /healthz hold
         no account, project, service or deployment names or ids.
    20   a static site whose repo links to root-only files, the data dir's secrets, alice's release,
         mirrors, logs and /proc entries serves none of them (the site's server runs as the tenant).
    29   a 60 MB JSON body: 401 without a key, 413 with one (declared and chunked).
    30   2 x 100 concurrent `initialize`: all 200, /healthz keeps answering.
    31   alice's env secret and database password appear in no server log, runtime or build log,
         control-plane row, /metrics answer or any file of the data dir.
    32   Host spoofing on the proxy reaches alice only through alice's own name, never an internal
         port or another tenant.
    33   smuggling (CL+TE, duplicate Host, absolute-form vs Host, obs-fold, pipelining): the bytes of
         one client connection reach exactly one upstream, the one its first request was routed to.
         Keep-alive pinning to that first upstream is the proxy's documented design (proxy.py).
    34   slowloris (200 unfinished heads, 100 stalled bodies on alice's host): alice still answers fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import (
    ALICE_SECRET,
    LAB_START,
    ROOT,
    deploy,
    deploy_live,
    host_of,
    lab_exec,
    lab_live,
    lab_repo,
    session,
    via_proxy,
    whoami,
)
from tests.support import ServerProc, call, git_repo

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server

ALICE = "held-alice"
MALLORY = "held-mallory"
ALICE_TOKEN = f"HELD_ALICE_TOKEN_{secrets.token_hex(8)}"
"""alice's env secret (#31): her app never prints it, so no log or file of InkMCP may hold it."""

# alice's non-routed `backend` service: listens on a port of its own choosing and prints every request.
BACKEND_SOURCE = r'''
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Backend(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        print("BACKEND GOT", self.path, flush=True)
        body = b"alice backend"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Backend)
print("backend listening on", server.server_address[1], flush=True)
server.serve_forever()
'''


@dataclass(frozen=True)
class Reply:
    """One HTTP response as the client received it; `server` tells the proxy ("inkmcp") from an app."""

    status: int
    server: str
    body: str

    @property
    def from_proxy(self) -> bool:
        return self.server == "inkmcp"


def parse_replies(data: bytes) -> list[Reply]:
    """Every complete response in `data`, in order (responses carry Content-Length here)."""
    out: list[Reply] = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", len(rest)))
        out.append(Reply(int(lines[0].split(" ")[1]), headers.get("server", ""), rest[:length].decode("latin-1")))
        data = rest[length:]
    return out


def exchange(port: int, payload: bytes, timeout: float = 15) -> list[Reply]:
    """Send raw bytes to 127.0.0.1:`port` and read until the other side closes (or `timeout`)."""
    deadline = time.monotonic() + timeout
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        with_eof = True
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            with_eof = False
        while with_eof or time.monotonic() < deadline:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
    return parse_replies(data)


def get(host: str, path: str, *, close: bool = True, extra: str = "") -> bytes:
    """A GET head, byte for byte, with the Host given (or none when `host` is empty)."""
    lines = [f"GET {path} HTTP/1.1"]
    if host:
        lines.append(f"Host: {host}")
    if extra:
        lines.append(extra)
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def runtime_lines(s: Any, project: str, service: str) -> list[str]:
    logs = await call(s, "get_logs", project_name=project, service_name=service, scope="runtime", tail=500)
    return list(logs["lines"])


async def wait_for_line(s: Any, project: str, service: str, needle: str, timeout: float = 20) -> list[str]:
    """alice's (or mallory's) runtime log once it holds `needle`: the log is read after the line was written."""
    deadline = time.monotonic() + timeout
    while True:
        lines = await runtime_lines(s, project, service)
        if any(needle in line for line in lines):
            return lines
        assert time.monotonic() < deadline, f"{needle!r} never reached {project}/{service}'s log: {lines[-20:]}"
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def held(server: ServerProc, repos: Path) -> dict[str, Any]:
    """alice: a routed lab (env secret, database, a private notes file) and a `backend` service;
    mallory: a lab of her own. Deployed side by side (two builds per account at most)."""
    alice_repo = lab_repo(repos, "held-alice", {"notes.txt": f"alice private notes: {ALICE_SECRET}\n",
                                                "backend.py": BACKEND_SOURCE})
    mallory_repo = lab_repo(repos, "held-mallory")

    async def alice() -> tuple[dict[str, Any], dict[str, Any]]:
        async with session(server, "alice") as a:
            web, worker = await asyncio.gather(
                lab_live(a, alice_repo, "alice", project_name=ALICE, env_vars={"SECRET_TOKEN": ALICE_TOKEN},
                         database={"type": "postgres"}),
                deploy_live(a, repo_url=str(alice_repo), project_name=ALICE, service_name="worker",
                            service_type="backend", start_command="python3 backend.py", mode="persistent"),
            )
            return web, worker

    async def mallory() -> dict[str, Any]:
        async with session(server, "mallory") as m:
            return await lab_live(m, mallory_repo, "mallory", project_name=MALLORY)

    (web, worker), lab = await asyncio.gather(alice(), mallory())
    async with session(server, "alice") as a:
        lines = await wait_for_line(a, ALICE, "worker", "backend listening on")
        creds = await call(a, "get_database_credentials", project_name=ALICE)
    backend_port = int(next(line for line in lines if "backend listening on" in line).split()[-1])
    return {"web": web, "worker": worker, "mallory": lab, "backend_port": backend_port, "db": creds,
            "alice": whoami(server, web["url"]), "mallory_repo": mallory_repo}


async def test_a_backend_service_is_not_reachable_through_the_proxy(server: ServerProc, held: dict[str, Any]) -> None:
    """#16b: the proxy routes no Host to a `backend` service: not its would-be name, not its port.

    The control (root connecting straight to the backend's port) shows the backend is up and logs what
    it gets, so its empty log after the attempts means no attempt reached it. Other tenants can still
    connect to that port over the shared loopback: documented in docs/trust-boundary.md.
    """
    port = held["backend_port"]
    assert held["worker"]["url"] is None, held["worker"]
    token = secrets.token_hex(6)
    hosts = [f"worker.{ALICE}.localhost", f"WORKER.{ALICE}.LOCALHOST.", f"127.0.0.1:{port}", f"localhost:{port}",
             f"[::1]:{port}", f"x@127.0.0.1:{port}", f"worker.{ALICE}.localhost:{port}"]
    for host in hosts:
        replies = exchange(server.proxy_port, get(host, f"/proxied-{token}"))
        assert len(replies) == 1 and replies[0].from_proxy and replies[0].status in (400, 404), (host, replies)
    r = httpx.get(f"http://127.0.0.1:{port}/control-{token}", timeout=10)
    assert r.text == "alice backend"
    async with session(server, "alice") as a:
        lines = await wait_for_line(a, ALICE, "worker", f"/control-{token}")
        services = {s["name"]: s for s in (await call(a, "list_services", project_name=ALICE))["services"]}
    assert not [line for line in lines if f"/proxied-{token}" in line], lines
    assert services["worker"]["url"] is None and services["worker"]["state"] == "running", services["worker"]


async def test_a_fixed_port_in_use_is_refused(server: ServerProc, held: dict[str, Any]) -> None:
    """#17: mallory asks for the MCP server's port, then alice's app port: each deployment fails at
    start with an error naming the port, and neither the MCP server nor alice notices."""
    alice_port = held["alice"]["port"]
    async with session(server, "mallory") as m:
        for port in (server.port, alice_port):
            dep = await deploy(m, repo_url=str(held["mallory_repo"]), project_name=MALLORY, service_name="fixed",
                               start_command=LAB_START, mode="persistent", port=port)
            assert dep["status"] == "failed", dep
            assert f"port {port}" in dep["error"] and "already in use" in dep["error"], dep["error"]
    assert via_proxy(server, held["web"]["url"]).text == "alice says hi"
    assert whoami(server, held["web"]["url"])["pid"] == held["alice"]["pid"]
    assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).json()["status"] == "ok"


# Run inside mallory's lab: the MCP endpoint without a key, and the unauthenticated endpoints.
FROM_TENANT = r'''
import urllib.error, urllib.request

def fetch(path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{ARGS['port']}{path}", data=body, headers={
        "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return [r.status, r.read().decode()]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode()]

result = {"mcp": fetch("/mcp", ARGS["initialize"].encode()), "metrics": fetch("/metrics"),
          "healthz": fetch("/healthz")}
'''

INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "held", "version": "0"}}})


async def test_mcp_needs_a_key_and_metrics_hold_no_tenant_data(server: ServerProc, held: dict[str, Any]) -> None:
    """#18: from mallory's app, /mcp is 401; /metrics and /healthz name no account, project, service,
    hostname or id, after deployments of both accounts (and the metrics do count them)."""
    seen = lab_exec(server, held["mallory"]["url"], FROM_TENANT, port=server.port, initialize=INITIALIZE)
    status, body = seen["mcp"]
    assert status == 401 and "API key missing" in body, seen["mcp"]
    assert seen["healthz"][0] == 200 and set(json.loads(seen["healthz"][1])) == {"status", "version"}, seen
    status, metrics = seen["metrics"]
    assert status == 200 and "inkmcp_running_services" in metrics, seen["metrics"]
    running = re.search(r"^inkmcp_running_services (\S+)$", metrics, re.M)
    assert running and float(running.group(1)) >= 3, metrics  # alice's two services and mallory's lab
    async with session(server, "alice") as a:
        projects = (await call(a, "list_projects"))["projects"]
    names = ["alice", "mallory", ALICE, MALLORY, "worker", host_of(held["web"]["url"]),
             host_of(held["mallory"]["url"]), held["web"]["deployment_id"], held["worker"]["deployment_id"],
             held["mallory"]["deployment_id"], held["alice"]["user"], *server.keys.values()]
    names += [str(v) for p in projects for k, v in p.items() if k in ("id", "project_id") and v]
    names += [Path(held["alice"]["cwd"]).parents[2].name]  # alice's service id (from the data dir layout)
    for text in (metrics, seen["healthz"][1]):
        leaked = [n for n in names if n.lower() in text.lower()]
        assert not leaked, f"{leaked} in:\n{text}"


def data_dir_targets(server: ServerProc, alice: dict[str, Any]) -> dict[str, Path]:
    """Files and dirs mallory must never get, found as root: alice's release, logs, mirrors, home,
    /proc entries, and the data dir's secrets."""
    src = Path(alice["cwd"])
    service_dir = src.parents[2]
    assert service_dir.parent.name == "services" and (src / "notes.txt").is_file(), src
    data = server.data_dir
    targets = {
        "shadow": Path("/etc/shadow"),
        "alice-notes": src / "notes.txt",
        "alice-src": src,
        "alice-release": src.parent,
        "alice-service": service_dir,
        "alice-environ": Path(f"/proc/{alice['pid']}/environ"),
        "alice-home": Path(alice["home"]),
        "secrets-dir": data / "secrets",
        "pg-control": data / "pg" / "control",  # the control-plane pgdata (pg/ itself is listable: #12)
    }
    for log in sorted((service_dir / "logs").iterdir()):
        targets[f"alice-log-{log.name}"] = log
    uid = alice["uid"]
    for project in (data / "compute" / "projects").iterdir():
        mirrors = project / "mirrors"
        if mirrors.is_dir() and mirrors.stat().st_uid == uid:
            targets["alice-mirrors"] = mirrors
            for mirror in mirrors.iterdir():
                targets[f"alice-mirror-config-{mirror.name}"] = mirror / "config"
    for secret in sorted((data / "secrets").rglob("*")):
        if secret.is_file():
            targets[f"secret-{secret.name}"] = secret
    for password in sorted((data / "pg").glob("*password*")):
        targets[f"pg-{password.name}"] = password
    assert "alice-mirrors" in targets and any(k.startswith("secret-") for k in targets), targets
    return targets


async def test_static_site_symlinks_never_publish_protected_files(
    server: ServerProc, repos: Path, held: dict[str, Any]
) -> None:
    """#20: mallory's static site links to everything in `data_dir_targets`, by name and through a
    `rootfs -> /` link: every one is 404 and no reply carries their content.

    Controls: the site serves its own files and a link inside the repo; a link to a world-readable
    file outside the repo is served too (documented: world-readable host files stay readable to
    tenants), so the links are followed and the 404s come from the tenant's rights, not from links
    being dropped on the way.
    """
    targets = data_dir_targets(server, held["alice"])
    public = repos / "public.txt"
    public.write_text("world readable\n")
    public.chmod(0o644)
    files = {"index.html": "<h1>mallory static</h1>\n"}
    links = {"alias": "index.html", "rootfs": "/", "public": str(public), **{k: str(v) for k, v in targets.items()}}
    site = repos / "held-static"
    site.mkdir()
    for name, target in links.items():
        (site / name).symlink_to(target)  # committed as links by git_repo (chmod -R skips links)
    git_repo(site, files)
    async with session(server, "mallory") as m:
        dep = await deploy_live(m, repo_url=str(site), project_name=MALLORY, service_name="site",
                                service_type="webapp_static")
    url = dep["url"]
    assert via_proxy(server, url, "/index.html").text == files["index.html"]
    assert via_proxy(server, url, "/alias").text == files["index.html"]
    assert via_proxy(server, url, "/public").text == "world readable\n"

    protected = [b for b in (read_as_root(p) for p in targets.values()) if len(b) >= 8]
    needles = [ALICE_SECRET, ALICE_TOKEN, *{p.decode("latin-1").strip() for p in protected if p.strip()}]
    paths = [f"/{name}" for name in targets] + [f"/{name}/" for name, p in targets.items() if p.is_dir()]
    paths += [f"/rootfs{p}" for p in targets.values()] + [f"/rootfs{p}/" for p in targets.values() if p.is_dir()]
    served = {}
    for path in paths:
        r = via_proxy(server, url, path)
        leaked = [n[:40] for n in needles if n and n in r.text]
        # http.server redirects a directory named without its slash (stat needs no read right); the
        # slashed path, requested too, is what would list it
        redirect = r.status_code == 301 and r.headers.get("location") == f"{path}/" and not r.content
        if (r.status_code != 404 and not redirect) or leaked:
            served[path] = (r.status_code, leaked, r.text[:200])
    assert not served, "\n".join(f"{k}: {v}" for k, v in served.items())


def read_as_root(path: Path) -> bytes:
    """A protected file's first bytes (the test runs as root), to look for them in mallory's replies."""
    try:
        return path.read_bytes()[:4096] if path.is_file() else b""
    except OSError:
        return b""


def mcp_post(server: ServerProc, content: Any, key: str | None) -> httpx.Response:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(server.mcp_url, content=content, headers=headers, timeout=60)


async def test_oversized_bodies_are_refused(server: ServerProc, held: dict[str, Any]) -> None:
    """#29: a 60 MB JSON-RPC body is 401 without a key and 413 with one, declared (Content-Length) or
    streamed (chunked, no length); the server stays healthy."""
    pad = b"x" * (60 << 20)
    body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"pad":"' + pad + b'"}}'

    def chunks() -> Any:
        for start in range(0, len(body), 1 << 20):
            yield body[start:start + (1 << 20)]

    r = await asyncio.to_thread(mcp_post, server, body, None)
    assert r.status_code == 401, r.text[:300]
    r = await asyncio.to_thread(mcp_post, server, body, server.keys["mallory"])
    assert r.status_code == 413 and "too large" in r.text, (r.status_code, r.text[:300])
    r = await asyncio.to_thread(mcp_post, server, chunks(), server.keys["mallory"])
    assert r.status_code == 413 and "too large" in r.text, (r.status_code, r.text[:300])
    assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).json()["status"] == "ok"


async def test_many_concurrent_sessions_are_served(server: ServerProc, held: dict[str, Any]) -> None:
    """#30: two rounds of 100 concurrent `initialize`: every one 200 with its own session, and /healthz,
    polled throughout, answers every time within 5 s."""
    headers = {"Authorization": f"Bearer {server.keys['mallory']}", "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream"}
    health: list[float] = []
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=220), timeout=60) as client:

        async def healthz_until(done: asyncio.Event) -> None:
            while not done.is_set():
                start = time.monotonic()
                r = await client.get(f"http://127.0.0.1:{server.port}/healthz", timeout=30)
                assert r.status_code == 200 and r.json()["status"] == "ok", r.text
                health.append(time.monotonic() - start)
                await asyncio.sleep(0.05)

        for _ in range(2):
            done = asyncio.Event()
            prober = asyncio.create_task(healthz_until(done))
            replies = await asyncio.gather(*(client.post(server.mcp_url, content=INITIALIZE, headers=headers)
                                             for _ in range(100)))
            done.set()
            await prober
            failed = [(r.status_code, r.text[:200]) for r in replies if r.status_code != 200]
            assert not failed, failed
            assert all("serverInfo" in r.text for r in replies)
            ids = {r.headers["mcp-session-id"] for r in replies}
            assert len(ids) == 100
            closed = await asyncio.gather(*(client.delete(server.mcp_url, headers={**headers, "mcp-session-id": i})
                                            for i in ids))
            assert {r.status_code for r in closed} <= {200, 204}, {r.status_code for r in closed}
    assert health and max(health) < 5, health


def control_rows(server: ServerProc) -> list[str]:
    """Every row of every table of the control-plane database, as text (root over its unix socket)."""
    import psycopg

    from inkmcp.store.embedded import EmbeddedPostgres

    url = EmbeddedPostgres(server.data_dir / "pg" / "control").socket_url(driver=None).get_secret_value()
    rows: list[str] = []
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")]
        for table in tables:
            rows += [f"{table}: {r[0]}" for r in conn.execute(f"SELECT t::text FROM {table} t")]
    return rows


def files_holding(root: Path, needles: list[bytes]) -> dict[str, list[str]]:
    """Every file under `root` (links not followed) whose bytes contain one of `needles`."""
    hits: dict[str, list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath, name)
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            found = [n.decode()[:12] + "..." for n in needles if n in data]
            if found:
                hits[str(path)] = found
    return hits


async def test_secrets_stay_out_of_logs_metrics_and_the_store(server: ServerProc, held: dict[str, Any]) -> None:
    """#31: alice's env secret and database password reach her app (control), and appear nowhere
    else: not in the server's log, her runtime or build logs (as files and through get_logs), any
    control-plane row, /metrics, or any file of the data dir (pg data and WAL included)."""
    password = held["db"]["password"]
    seen = lab_exec(server, held["web"]["url"], "import os\nresult = [os.environ.get('SECRET_TOKEN'), "
                                                "os.environ.get('DATABASE_URL', '')]")
    assert seen[0] == ALICE_TOKEN and password in seen[1], "the secrets never reached alice's app"
    needles = [ALICE_TOKEN, password]

    async with session(server, "alice") as a:
        logs = [await call(a, "get_logs", project_name=ALICE, service_name=svc, scope=scope, tail=500)
                for svc in ("web", "worker") for scope in ("runtime", "build")]
    assert any(line for log in logs for line in log["lines"]), logs
    leaked = {
        "server log": [n for n in needles if server.log_path and n in server.log_path.read_text(errors="replace")],
        "get_logs": [n for n in needles if n in json.dumps(logs)],
        "control rows": [row[:200] for row in control_rows(server) if any(n in row for n in needles)],
        "metrics": [n for n in needles if n in httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=10).text],
        "data dir": files_holding(server.data_dir, [n.encode() for n in needles]),
    }
    assert not any(leaked.values()), leaked
