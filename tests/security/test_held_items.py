"""The review's held and partial items that had no test yet: 16b, 17, 18, 20, 29-34.

Each test repeats the review's attack and asserts it still fails, with the proof read from the
attacker's side (what mallory's client or mallory's lab got back) and, where "nothing arrived" is the
claim, from the victim's side too (alice's app prints every request it gets; a control request shows
the log is read after it was written).

    16b  a non-routed `backend` service is reachable through no Host the proxy accepts. Tenants share
         the loopback interface; a direct connect() to another tenant's port is refused by the loopback
         guard where it runs (tests/security/test_loopback_bypass.py).
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
    33   smuggling (CL+TE, duplicate Host, absolute-form vs Host, obs-fold): nothing hidden in a request
         reaches another app; a pipelined request is routed by its own Host (nginx parses each one).
         Found here, beyond the review: a folded line, `Host :`, a second Host line or a Host whose
         port is not a number were routed on instead of refused with 400 (RFC 9112); fixed in
         proxy.parse_host, proved by test_ambiguous_host_lines_are_refused.
    34   slowloris (200 unfinished heads, 100 stalled bodies on alice's host): alice still answers fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from mcp import ClientSession

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


# alice's web lab with the listen backlog a production server has (http.server's default is 5): with
# 5, a burst of connections overflows the app's own accept queue and the kernel resets some of them
# (SYN cookies), which #34 would blame on the proxy.
BIG_BACKLOG_LAB = """
import socketserver
socketserver.TCPServer.request_queue_size = 1024
exec(compile(open("lab.py").read(), "lab.py", "exec"))
"""


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
    """Send raw bytes to 127.0.0.1:`port`, half-close, and read until the other side closes (or `timeout`)."""
    deadline = time.monotonic() + timeout
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)  # the proxy passes the EOF on: the app closes after its replies
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
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


async def runtime_lines(s: ClientSession, project: str, service: str) -> list[str]:
    logs = await call(s, "get_logs", project_name=project, service_name=service, scope="runtime", tail=500)
    return list(logs["lines"])


async def wait_for_line(s: ClientSession, project: str, service: str, needle: str, timeout: float = 20) -> list[str]:
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
                                                "backend.py": BACKEND_SOURCE, "biglab.py": BIG_BACKLOG_LAB})
    mallory_repo = lab_repo(repos, "held-mallory")

    async def alice() -> tuple[dict[str, Any], dict[str, Any]]:
        async with session(server, "alice") as a:
            web, worker = await asyncio.gather(
                deploy_live(a, repo_url=str(alice_repo), project_name=ALICE, start_command="python3 biglab.py",
                            mode="persistent", env_vars={"LAB_OWNER": "alice", "SECRET_TOKEN": ALICE_TOKEN},
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
    it gets, so its empty log after the attempts means no attempt reached it. Other tenants' direct connects to
    that port are refused by the loopback guard (tests/security/test_loopback_bypass.py).
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
    except urllib.error.URLError as e:  # --- loopback: the loopback guard refuses the connect() itself
        return [getattr(e.reason, "errno", None), str(e.reason)]

result = {"mcp": fetch("/mcp", ARGS["initialize"].encode()), "metrics": fetch("/metrics"),
          "healthz": fetch("/healthz")}
'''

INITIALIZE = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "held", "version": "0"}}})


async def test_mcp_needs_a_key_and_metrics_hold_no_tenant_data(server: ServerProc, held: dict[str, Any]) -> None:
    """#18: from mallory's app, /mcp is 401 (or, where the loopback guard runs, the MCP port refuses her connect()
    with EPERM); /metrics and /healthz name no account, project, service, hostname or id, after deployments of both
    accounts (and the metrics do count them)."""
    seen = lab_exec(server, held["mallory"]["url"], FROM_TENANT, port=server.port, initialize=INITIALIZE)
    status, body = seen["mcp"]
    # --- loopback: the guard refuses a tenant's connect() to the MCP port (loopguard.py); what it serves is read here
    if status == errno.EPERM:
        assert {k: v[0] for k, v in seen.items()} == {"mcp": errno.EPERM, "metrics": errno.EPERM,
                                                       "healthz": errno.EPERM}, seen
        seen = {path: [r.status_code, r.text] for path, r in (
            (p, httpx.get(f"http://127.0.0.1:{server.port}/{p}", timeout=20)) for p in ("metrics", "healthz"))}
        status, body = 401, "API key missing"
    # --- end
    assert status == 401 and "API key missing" in body, seen["mcp"]
    assert seen["healthz"][0] == 200 and set(json.loads(seen["healthz"][1])) == {"status", "version"}, seen
    status, metrics = seen["metrics"]
    assert status == 200 and "inkmcp_running_services" in metrics, seen["metrics"]
    running = re.search(r"^inkmcp_running_services (\S+)$", metrics, re.M)
    assert running and float(running.group(1)) >= 3, metrics  # alice's two services and mallory's lab
    names = ["alice", "mallory", ALICE, MALLORY, "worker", host_of(held["web"]["url"]),
             host_of(held["mallory"]["url"]), held["web"]["deployment_id"], held["worker"]["deployment_id"],
             held["mallory"]["deployment_id"], held["alice"]["user"], held["db"]["database"], held["db"]["user"],
             *server.keys.values()]
    compute = server.data_dir / "compute"  # project and service ids, as the data dir names them
    names += [d.name for kind in ("projects", "services") for d in (compute / kind).iterdir()]
    assert len(names) > 15, names
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
    body = b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"pad":"' + b"x" * (60 << 20) + b'"}}'

    def chunks() -> Iterator[bytes]:
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
    # A connection per request: a pooled one could meet the server's keep-alive timeout (a client race).
    limits = httpx.Limits(max_connections=220, max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:

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
    """Every file under `root` (links not followed) whose bytes contain one of `needles`, read in
    1 MiB blocks that overlap by the longest needle (other modules' checkouts can be large)."""
    overlap = max(len(n) for n in needles)
    hits: dict[str, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # --- quota: dirnames pruned below
        # --- quota: a project's disk image (compute/disks/) holds its filesystem, whose files this walk reads
        # through their mount points (homes/, services/); read raw, or again through the bind mounts' sources
        # (projects/<id>/.disk/), it would show the same files twice (and the image GiBs of holes)
        here = Path(dirpath)
        if here.name == "compute":
            dirnames[:] = [d for d in dirnames if d != "disks"]
        elif here.parent.name == "projects":
            dirnames[:] = [d for d in dirnames if d != ".disk"]
        # --- end
        for name in filenames:
            path = Path(dirpath, name)
            found: set[bytes] = set()
            try:
                if path.is_symlink() or not path.is_file():
                    continue
                with path.open("rb") as f:
                    tail = b""
                    while block := f.read(1 << 20):
                        window = tail + block
                        found.update(n for n in needles if n in window)
                        tail = window[-overlap:]
            except OSError:
                continue
            if found:
                hits[str(path)] = sorted(n.decode()[:12] + "..." for n in found)
    return hits


# Run inside alice's app: what it got, also written to its own /tmp (the scan's control).
CONTROL_FILE = r'''
import os
result = [os.environ.get("SECRET_TOKEN"), os.environ.get("DATABASE_URL", "")]
with open("/tmp/held-31-control", "w") as f:
    f.write(" ".join(result))
'''


async def test_secrets_stay_out_of_logs_metrics_and_the_store(server: ServerProc, held: dict[str, Any]) -> None:
    """#31: alice's env secret and database password reach her app, and appear nowhere else: not in
    the server's log, her runtime or build logs (as files and through get_logs), any control-plane
    row, /metrics, or any file of the data dir (pg data and WAL included).

    Control for the data dir scan: alice's app writes both values to its own /tmp (which lives in the
    data dir, services/<id>/tmp); the scan must find exactly that file.
    """
    password = held["db"]["password"]
    seen = lab_exec(server, held["web"]["url"], CONTROL_FILE)
    assert seen[0] == ALICE_TOKEN and password in seen[1], "the secrets never reached alice's app"
    control = Path(held["alice"]["cwd"]).parents[2] / "tmp" / "held-31-control"
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
    }
    in_files = files_holding(server.data_dir, [n.encode() for n in needles])
    assert in_files.pop(str(control), None) is not None, f"the scan missed {control}"
    leaked["data dir"] = list(in_files)
    assert not any(leaked.values()), leaked


def spoofed_hosts(server: ServerProc, held: dict[str, Any]) -> dict[str, str]:
    """Host header -> who must answer: "alice" (her own name, normalised) or "proxy" (400/404)."""
    alice, mallory = (str(urlsplit(held[k]["url"]).hostname) for k in ("web", "mallory"))
    return {
        alice.upper(): "alice",
        f"{alice}.": "alice",
        f"x@{alice}": "proxy",  # userinfo is not part of a Host value (RFC 9112): refused
        f"{alice}:{server.port}": "alice",  # the port is ignored: alice's route decides where bytes go
        f"127.0.0.1:{server.port}": "proxy",
        f"localhost:{server.port}": "proxy",
        "localhost": "proxy",
        "127.0.0.1": "proxy",
        f"[::1]:{server.port}": "proxy",
        f"127.0.0.1:{held['alice']['port']}": "proxy",
        f"127.0.0.1:{held['backend_port']}": "proxy",
        f"{alice}@127.0.0.1:{server.port}": "proxy",
        alice.split(".", 1)[1]: "proxy",  # the project without the service
        f"{alice}.evil.example": "proxy",
        f"{alice}, {mallory}": "proxy",
        "": "proxy",  # no Host at all
    }


async def test_host_spoofing_never_reaches_an_internal_port(server: ServerProc, held: dict[str, Any]) -> None:
    """#32: each spoofed Host, asking for the MCP server's /healthz and /metrics through the proxy,
    is answered by alice's app (her name, normalised) or refused by the proxy; never by the MCP
    server, mallory's app or alice's backend."""
    direct = httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10).text
    assert '"status"' in direct  # what a reply from the MCP server would contain
    wrong: dict[str, Any] = {}
    for host, who in spoofed_hosts(server, held).items():
        for path in ("/healthz", "/metrics"):
            replies = exchange(server.proxy_port, get(host, path))
            ok = len(replies) == 1 and (
                (who == "alice" and not replies[0].from_proxy and replies[0].body == f"alice captured {path}")
                or (who == "proxy" and replies[0].from_proxy and replies[0].status in (400, 404)))
            if not ok or any('"status"' in r.body or "inkmcp_" in r.body for r in replies):
                wrong[f"{host!r} {path}"] = replies
    http10 = exchange(server.proxy_port, b"GET /healthz HTTP/1.0\r\n\r\n")
    if not (len(http10) == 1 and http10[0].from_proxy and http10[0].status == 400):
        wrong["HTTP/1.0 without Host"] = http10
    assert not wrong, "\n".join(f"{k}: {v}" for k, v in wrong.items())


def smuggling(first: str, other: str, tok: str) -> dict[str, bytes]:
    """Connections opened for `first` (a hostname) that try to get bytes to `other`'s app."""
    sneak = get(other, f"/sneak-{tok}")
    chunk = f"{len(sneak):x}\r\n".encode()
    return {
        # CL.TE: a Content-Length parser and a chunked parser both end the body before the smuggled GET
        "cl-te": (f"POST /clte-{tok} HTTP/1.1\r\nHost: {first}\r\nContent-Length: 5\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n").encode() + sneak,
        # TE.CL: the smuggled GET is chunk data; a Content-Length parser reads it as the next request
        "te-cl": (f"POST /tecl-{tok} HTTP/1.1\r\nHost: {first}\r\nContent-Length: {len(chunk)}\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n").encode() + chunk + sneak + b"\r\n0\r\n\r\n",
        "duplicate-host": get(first, f"/dup-{tok}", extra=f"Host: {other}"),
        "absolute-form": (f"GET http://{first}/abs-{tok} HTTP/1.1\r\nHost: {other}\r\n"
                          "Connection: close\r\n\r\n").encode(),
        "obs-fold": get(first, f"/fold-{tok}", extra=f" {other}"),
        "pipelined": get(first, f"/pipe-{tok}", close=False) + sneak,
    }


@pytest.mark.parametrize("first", ["mallory", "alice"])
async def test_smuggled_requests_stay_on_the_first_upstream(
    server: ServerProc, held: dict[str, Any], first: str
) -> None:
    """#33: on a connection the proxy routed to `first`'s app, every request the attacker hides in it
    (CL+TE both ways, a second Host header, an absolute-form target naming the other app, a folded
    Host) is answered by `first`'s app or refused, and the other app's log never shows it (a control
    request proves the log is read after it was written).

    A pipelined request with the other Host is not hidden: the proxy (nginx) parses every request on
    a connection and routes each by its own Host, so it is answered by the other app, as if sent on a
    connection of its own, and never by `first`'s (its bytes never join `first`'s request). It carries
    its own token, so the smuggling attempts above are still proven never to reach the other app.
    """
    owners = {"alice": (ALICE, held["web"]["url"]), "mallory": (MALLORY, held["mallory"]["url"])}
    second = "alice" if first == "mallory" else "mallory"
    names = {who: str(urlsplit(url).hostname) for who, (_, url) in owners.items()}
    tok, pipe_tok = secrets.token_hex(6), secrets.token_hex(6)
    wrong: dict[str, Any] = {}
    attacks = smuggling(names[first], names[second], tok)
    attacks["pipelined"] = smuggling(names[first], names[second], pipe_tok)["pipelined"]
    for attack, payload in attacks.items():
        replies = exchange(server.proxy_port, payload)
        if attack == "pipelined":
            if [(r.from_proxy, r.body.split(" ", 1)[0]) for r in replies] != [(False, first), (False, second)]:
                wrong[attack] = replies
            continue
        from_apps = [r for r in replies if not r.from_proxy]
        refused = [r for r in replies if r.from_proxy and r.status != 400]
        if not replies or refused or any(not r.body.startswith(f"{first} ") for r in from_apps):
            wrong[attack] = replies
        if attack == "cl-te":
            clte_refused = [(r.from_proxy, r.status) for r in replies] == [(True, 400)]  # nginx refuses CL+TE
    control = f"/control-{tok}"
    assert via_proxy(server, owners[second][1], control).text == f"{second} captured {control}"
    async with session(server, second) as s:
        lines = await wait_for_line(s, owners[second][0], "web", control)
    reached = [line for line in lines if tok in line and control not in line]
    assert not wrong and not reached, f"replies: {wrong}\n{second} got: {reached}"
    async with session(server, first) as s:  # the attempts did arrive, at the app they were routed to
        lines = await wait_for_line(s, owners[first][0], "web", f"/pipe-{pipe_tok}")
    assert clte_refused or any(f"/clte-{tok}" in line for line in lines), lines[-20:]


@pytest.mark.parametrize("ambiguity", ["folded-line", "space-before-colon", "duplicate", "port-not-a-number"])
async def test_ambiguous_host_lines_are_refused(server: ServerProc, held: dict[str, Any], ambiguity: str) -> None:
    """#33, beyond the review: heads whose Host an RFC 9112 parser reads differently from the proxy.

    RFC 9112 makes a server answer 400 to a second Host line (3.2), to whitespace between a field
    name and its colon (5.1), and to a Host with an invalid value (3.2); an obs-fold line belongs to
    the field above it (5.2). The proxy used to route to alice on each of these heads, while a front
    proxy or WAF that follows the RFC sees `Host: web.held-mallory...` (or nothing valid): one that
    applies per-host rules (auth, allow lists) would apply mallory's rules to a request that reaches
    alice. Bytes still go to one upstream only (test_smuggled_requests_stay_on_the_first_upstream).
    Found by this suite; the proxy now answers 400 to all of them (proxy.parse_host).
    """
    alice, mallory = (str(urlsplit(held[k]["url"]).hostname) for k in ("web", "mallory"))
    head = {
        "folded-line": f"X-Pad: x\r\n Host: {alice}\r\nHost: {mallory}",
        "space-before-colon": f"Host : {alice}\r\nHost: {mallory}",
        "duplicate": f"Host: {alice}\r\nHost: {mallory}",
        "port-not-a-number": f"Host: {alice}:80.{mallory}",
    }[ambiguity]
    replies = exchange(server.proxy_port, f"GET /ambiguous HTTP/1.1\r\n{head}\r\nConnection: close\r\n\r\n".encode())
    assert len(replies) == 1 and replies[0].from_proxy and replies[0].status == 400, replies


async def test_slowloris_leaves_alice_answering(server: ServerProc, held: dict[str, Any]) -> None:
    """#34: 200 heads that never end and 100 bodies that stall, all for alice's host: while every one
    of them is still held open, alice answers through the proxy within 10 s (the proxy's head timeout
    is 30 s, so a proxy that waited on them would miss that bound) and /healthz answers too."""
    host = str(urlsplit(held["web"]["url"]).hostname)
    held_open: list[socket.socket] = []
    timings: list[float] = []
    try:
        for i in range(300):
            sock = socket.create_connection(("127.0.0.1", server.proxy_port), timeout=10)
            held_open.append(sock)
            if i < 200:
                sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Slow-{i}: ".encode())
            else:
                sock.sendall(f"POST /stalled-{i} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1000000\r\n\r\n"
                             "{\"partial\": ".encode())
        for _ in range(3):
            start = time.monotonic()
            r = await asyncio.to_thread(via_proxy, server, held["web"]["url"], "/", timeout=30)
            timings.append(time.monotonic() - start)
            assert r.text == "alice says hi", r.text
        start = time.monotonic()
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=30).status_code == 200
        timings.append(time.monotonic() - start)
        closed = {}
        for i, sock in enumerate(held_open):  # the attack was in force the whole time: none was closed
            sock.setblocking(False)
            try:
                got = sock.recv(65536)
            except BlockingIOError:
                continue
            closed[i] = got[:300]
        assert not closed, f"{len(closed)} of the slow connections were answered or closed: {closed}"
    finally:
        for sock in held_open:
            sock.close()
    assert max(timings) < 10, timings
