"""Red team 2026-12-01: attacks an outsider tries that the first review (redteam-local-2026-11-30) did not.

Each test performs the attack as mallory (her agent's MCP calls, or code running inside her own app) and
asserts from her side that it failed; for a DoS, from alice's side that she was still served.

Found broken and fixed here:
    proxy files   The proxy's runtime dir (`compute/proxy`) was 0711 and nginx wrote its files with the
                  server's umask: from her app mallory read error.log, which holds every failed request of
                  every account with its query string ("GET /callback?code=<alice's OAuth code>"), and
                  nginx.conf (every routed hostname with its app's loopback port), and spoke to ctl.sock.
                  Fix: layout.prepare_proxy_dir (root:nogroup 0710, made before nginx starts).
    log flood     `yes ""` in mallory's app: InkMCP split, decoded and wrote every empty line on its one
                  event loop (94 % of a core); /healthz and every account's MCP calls timed out (5 s). A
                  build's output (`yes x | head -n 2000000` as build_command) slowed /healthz to 1.5-2.6 s.
                  Fix: logs.OutputBudget paces each process's and build's output (2,000 lines/s, 2 MiB/s,
                  bursts of 20,000 lines / 8 MiB): past it InkMCP reads later and the flooder's writes block.
    names         `re.match` with `$` accepts a trailing newline: "shop\\n" was a valid project or service
                  name (stored, given a Unix user and a hostname "web.shop\\n.localhost") and "PATH\\n" a
                  valid env var name next to the reserved PATH. Fix: fullmatch in core/names.py. A NUL in a
                  refused name broke the audit INSERT (bare "Error executing tool", no audit row): audit.storable.
    squatting     A double-forked setsid daemon outlived InkMCP's graceful stop, bound the MCP server's port
                  and read the next agent's Bearer key; the restarted server could not bind its port. Fix:
                  the provider kills every service's cgroups whole at close (before the proxy gives up its
                  port) and at start (_kill_leftovers); serve holds a dup of the MCP listening socket until
                  the provider's close returns (the second or two after uvicorn stops listening).
    pids          One account may hold 102,400 tasks (20 x 10 x 512), over this host's pid_max (32,768).
                  Fix: the parent group's pids.max is 3/4 of the machine's task limit (not exhausted here:
                  it would stop the shared box; the test reads the caps from mallory's app).

Held (no test covered them): a WebSocket upgrade or an absolute-form request naming alice's `backend`
service or the MCP server's own port through the proxy; unicode look-alike, NUL and path-part names;
writes to cgroup files (own limits, the parent's, freezing or joining alice's group).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import (
    LAB_START,
    ROOT,
    SHARED_ENV,
    deploy_live,
    lab_exec,
    lab_live,
    lab_repo,
    refused,
    security_server,
    session,
    via_proxy,
)
from tests.security.test_held_items import BACKEND_SOURCE, exchange, wait_for_line
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: shares the real root server

ALICE = "dec1-alice"
MALLORY = "dec1-mallory"
OAUTH_CODE = f"ALICE_OAUTH_CODE_{secrets.token_hex(8)}"
"""In the query string of a request alice's users send to her `auth` service, which fails upstream."""

# alice's `auth` service: answers / (the health check) and drops every other request without an answer,
# as a crashing handler does; nginx then logs the request line ("upstream prematurely closed connection").
DROPPER_SOURCE = r'''
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Dropper(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/":
            body = b"alice auth"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        print("DROPPED", self.path.split("?")[0], flush=True)
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Dropper).serve_forever()
'''


@pytest.fixture(scope="module")
async def world(server: ServerProc, repos: Path) -> dict[str, Any]:
    """alice: a routed lab, the `auth` dropper and a `backend` service; mallory: her lab. Side by side."""
    alice_repo = lab_repo(repos, "dec1-alice", {"dropper.py": DROPPER_SOURCE, "backend.py": BACKEND_SOURCE})
    mallory_repo = lab_repo(repos, "dec1-mallory")

    async def alice() -> list[dict[str, Any]]:
        async with session(server, "alice") as a:  # two builds at once per account at most
            web, auth = await asyncio.gather(
                lab_live(a, alice_repo, "alice", project_name=ALICE),
                deploy_live(a, repo_url=str(alice_repo), project_name=ALICE, service_name="auth",
                            start_command="python3 dropper.py", mode="persistent"),
            )
            worker = await deploy_live(a, repo_url=str(alice_repo), project_name=ALICE, service_name="worker",
                                       service_type="backend", start_command="python3 backend.py",
                                       mode="persistent")
            return [web, auth, worker]

    async def mallory() -> dict[str, Any]:
        async with session(server, "mallory") as m:
            return await lab_live(m, mallory_repo, "mallory", project_name=MALLORY)

    (web, auth, worker), lab = await asyncio.gather(alice(), mallory())
    async with session(server, "alice") as a:
        lines = await wait_for_line(a, ALICE, "worker", "backend listening on")
    backend_port = int(next(line for line in lines if "backend listening on" in line).split()[-1])
    return {"web": web, "auth": auth, "worker": worker, "mallory": lab, "backend_port": backend_port,
            "mallory_repo": mallory_repo}


# Inside mallory's app: the proxy's files, found from her own HOME (<data>/compute/homes/<user>).
READ_PROXY_FILES = r'''
import os, socket

proxy = os.path.join(os.path.dirname(os.path.dirname(os.environ["HOME"])), "proxy")


def read(name):
    with open(os.path.join(proxy, name), "rb") as f:
        return f.read().decode(errors="replace")


def control():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    s.connect(os.path.join(proxy, "ctl.sock"))
    s.sendall(b"GET /generation HTTP/1.0\r\n\r\n")
    return s.recv(200).decode(errors="replace")


result = {"dir": proxy, "list": attempt(os.listdir, proxy), "error.log": attempt(read, "error.log"),
          "nginx.conf": attempt(read, "nginx.conf"), "ctl.sock": attempt(control)}
'''


async def test_proxy_error_log_and_config_are_unreadable_to_tenants(server: ServerProc, world: dict[str, Any]) -> None:
    """A request of alice's users fails upstream (nginx used to log its request line with alice's OAuth code);
    mallory's app then tries the proxy's error.log, nginx.conf, its listing and ctl.sock: EACCES each."""
    r = via_proxy(server, world["auth"]["url"], f"/callback?code={OAUTH_CODE}", timeout=30)
    assert r.status_code >= 500, (r.status_code, r.text[:200])
    proxy_dir = server.data_dir / "compute" / "proxy"
    error_log = proxy_dir / "error.log"
    # --- redteam3: nginx no longer logs an app's failed requests at all (error_log crit: test_redteam3_proxy_log),
    # so the secret is not even written; the rights on what it does write are checked below
    assert OAUTH_CODE not in (error_log.read_text(errors="replace") if error_log.exists() else "")
    # --- end
    seen = lab_exec(server, world["mallory"]["url"], READ_PROXY_FILES)
    assert seen["dir"] == str(proxy_dir), seen["dir"]
    for what in ("list", "error.log", "nginx.conf", "ctl.sock"):
        assert seen[what][0] == "EACCES", f"mallory's {what}: {seen[what]}"
    assert OAUTH_CODE not in repr(seen)
    mode = proxy_dir.stat()
    assert mode.st_uid == 0 and mode.st_mode & 0o007 == 0, oct(mode.st_mode)


async def test_absolute_form_and_upgrade_never_reach_a_backend_or_the_mcp_port(
    server: ServerProc, world: dict[str, Any]
) -> None:
    """Requests whose absolute-form target (which nginx routes on, over Host) names alice's `backend`
    service, its port or the MCP server, with and without a WebSocket upgrade: all answered by the proxy
    (400/404), and alice's backend logs none of them (a control request shows its log is read after)."""
    token = secrets.token_hex(6)
    port, mcp = world["backend_port"], server.port
    mallory_host = world["mallory"]["url"].split("//", 1)[1]
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " \
              "dGhlIHNhbXBsZSBub25jZQ=="
    targets = [f"http://worker.{ALICE}.localhost/p-{token}", f"http://worker.{ALICE}.localhost:{server.proxy_port}"
               f"/p-{token}", f"http://127.0.0.1:{port}/p-{token}", f"http://localhost:{port}/p-{token}",
               f"http://127.0.0.1:{mcp}/mcp", f"http://127.0.0.1:{mcp}/healthz"]
    for target in targets:
        for extra in ("Connection: close", upgrade):
            for host in (mallory_host, f"127.0.0.1:{port}"):
                head = f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n\r\n".encode()
                replies = exchange(server.proxy_port, head, timeout=10)
                assert len(replies) == 1, (target, host, extra, replies)
                reply = replies[0]
                assert reply.from_proxy and reply.status in (400, 404), (target, host, extra, reply)
                assert "alice backend" not in reply.body and '"status"' not in reply.body, reply
    r = httpx.get(f"http://127.0.0.1:{port}/control-{token}", timeout=10)
    assert r.text == "alice backend"
    async with session(server, "alice") as a:
        lines = await wait_for_line(a, ALICE, "worker", f"/control-{token}")
    assert not [line for line in lines if f"/p-{token}" in line], lines


# Inside mallory's app: print empty lines as fast as a process can (stdout is the app's, read by InkMCP).
FLOOD = r'''
import subprocess
STATE["flood"] = subprocess.Popen(["yes", ""])
result = STATE["flood"].pid
'''
STOP_FLOOD = r'''
p = STATE.pop("flood")
p.kill()
result = p.wait()
'''


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (not its children), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def test_a_log_flood_leaves_the_server_answering_every_account(server: ServerProc, world: dict[str, Any]) -> None:
    """mallory's app runs `yes ""` for 8 s. Before the fix InkMCP spent ~94 % of a core writing empty lines
    and /healthz timed out; now: InkMCP uses a small share of a core, /healthz and alice's MCP calls and site
    answer throughout, and mallory's log says her output is being paced."""
    assert server.proc is not None
    lab = world["mallory"]["url"]
    lab_exec(server, lab, FLOOD)
    try:
        await asyncio.sleep(1)  # past the burst: the pacing is what is measured
        cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
        health: list[float] = []
        calls: list[float] = []
        async with session(server, "alice") as a:
            async with httpx.AsyncClient(timeout=10) as client:
                while time.monotonic() - t0 < 8:
                    t = time.monotonic()
                    r = await client.get(f"http://127.0.0.1:{server.port}/healthz")
                    assert r.status_code == 200, r.text
                    health.append(time.monotonic() - t)
                    t = time.monotonic()
                    await call(a, "list_services", project_name=ALICE)
                    calls.append(time.monotonic() - t)
                    assert via_proxy(server, world["web"]["url"], timeout=10).text == "alice says hi"
                    await asyncio.sleep(0.2)
        share = (cpu_seconds(server.proc.pid) - cpu0) / (time.monotonic() - t0)
    finally:
        lab_exec(server, lab, STOP_FLOOD)
    assert share < 0.5, f"InkMCP used {share:.0%} of a core during the flood"
    assert max(health) < 2.5 and sorted(health)[len(health) // 2] < 0.5, health
    assert max(calls) < 5 and sorted(calls)[len(calls) // 2] < 1.0, calls
    logs = (server.data_dir / "compute" / "services").glob("*/logs/runtime.log*")  # the note is 20,000+ lines up
    notes = [line for log in logs for line in log.read_text(errors="replace").splitlines()
             if line.startswith("web | [inkmcp] output over") and "nothing is dropped" in line]
    assert len(notes) == 1, notes  # once a minute, not a flood of its own


async def test_a_build_output_flood_is_paced_and_kept_whole(server: ServerProc, world: dict[str, Any]) -> None:
    """mallory's build_command prints 40,000 lines at once: the build goes live, every line is in its log
    (none dropped), and meanwhile InkMCP spends a small share of a core and /healthz answers."""
    assert server.proc is not None
    lines = 40000
    health: list[float] = []

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            while True:
                t = time.monotonic()
                r = await client.get(f"http://127.0.0.1:{server.port}/healthz")
                assert r.status_code == 200
                health.append(time.monotonic() - t)
                await asyncio.sleep(0.2)

    cpu0, t0 = cpu_seconds(server.proc.pid), time.monotonic()
    prober = asyncio.create_task(probe())
    try:
        async with session(server, "mallory") as m:
            dep = await deploy_live(m, repo_url=str(world["mallory_repo"]), project_name=MALLORY,
                                    service_name="chatty", build_command=f"seq 1 {lines}",
                                    start_command=LAB_START, mode="persistent")
    finally:
        prober.cancel()
    elapsed = time.monotonic() - t0
    share = (cpu_seconds(server.proc.pid) - cpu0) / elapsed
    assert elapsed > 5, f"40,000 lines over the burst took only {elapsed:.1f}s: not paced"
    assert share < 0.5, f"InkMCP used {share:.0%} of a core during the build"
    assert health and max(health) < 2.5, health
    build_logs = list((server.data_dir / "compute" / "services").glob(f"*/logs/builds/{dep['deployment_id']}.log"))
    assert len(build_logs) == 1, build_logs
    written = set(build_logs[0].read_text().splitlines())
    assert {str(n) for n in range(1, lines + 1)} <= written, "lines of the build's output were dropped"


async def test_names_with_a_trailing_newline_or_lookalikes_are_refused(server: ServerProc,
                                                                       world: dict[str, Any]) -> None:
    """Project, service and env var names that `re.match(...$)` let through (a trailing newline), and
    unicode look-alikes, NUL and path parts: refused with the naming rule; nothing of them is created."""
    repo = str(world["mallory_repo"])
    bad_names = ["dec1-evil\n", f"{ALICE}\n", "dec1-\u0435vil", "dec1-evil\x00", "dec1-evil/..", "\uff44ec1-evil"]
    async with session(server, "mallory") as m:
        for name in bad_names:
            text = await refused(m, "ensure_project", name=name)
            assert "is not a valid name" in text, (name, text)
            text = await refused(m, "deploy_app", repo_url=repo, project_name=name, start_command=LAB_START)
            assert "is not a valid name" in text, (name, text)
            text = await refused(m, "deploy_app", repo_url=repo, project_name=MALLORY, service_name=name,
                                 start_command=LAB_START)
            assert "is not a valid name" in text, (name, text)
        for key in ("PATH\n", "PORT\n", "API_TOKEN\n", "LD_PRELOAD\n"):
            text = await refused(m, "update_env_vars", project_name=MALLORY, env_vars={key: "/tmp/evil"})
            assert "is not a valid environment variable name" in text, (key, text)
        projects = await call(m, "list_projects")
        env = await call(m, "list_env_vars", project_name=MALLORY)
    names = [p["name"] for p in projects["projects"]]
    assert not [n for n in names if "evil" in n or "\n" in n or "\x00" in n], names
    assert "\\n" not in json.dumps(env) and "/tmp/evil" not in json.dumps(env), env


# Inside mallory's app: a double-forked setsid daemon (out of every supervised process family) that tries
# to bind the MCP server's port and the proxy's every 50 ms for 120 s, and logs what it gets in $HOME/squat.log.
SQUATTER = r'''
import os, select, socket, time
log_path = os.path.join(os.environ["HOME"], "squat.log")
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    devnull = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    with open(log_path, "a", buffering=1) as log:
        log.write(f"PID {os.getpid()}\n")
        bound, errors = {}, {}
        deadline = time.time() + 120
        while time.time() < deadline:
            for port, reuse in ((p, r) for p in ARGS["ports"] for r in (socket.SO_REUSEADDR, socket.SO_REUSEPORT)):
                if port in bound:
                    continue
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, reuse, 1)
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError as e:
                    sock.close()
                    if errors.get((port, reuse)) != e.errno:  # each new outcome once: the attempts are seen
                        errors[(port, reuse)] = e.errno
                        log.write(f"REFUSED {port} {reuse} {e.errno}\n")
                    continue
                sock.listen(5)
                bound[port] = sock
                log.write(f"BOUND {port}\n")
            ready = select.select(list(bound.values()), [], [], 0.05)[0] if bound else time.sleep(0.05) or []
            for sock in ready:
                conn, _ = sock.accept()
                log.write(f"GOT {sock.getsockname()[1]} {conn.recv(4096)!r}\n")
                conn.close()
    os._exit(0)
os.waitpid(pid, 0)
for _ in range(100):
    if os.path.exists(log_path) and open(log_path).read().startswith("PID "):
        break
    time.sleep(0.05)
result = int(open(log_path).read().split()[1])
'''


async def test_daemons_die_with_the_server_and_never_squat_its_port(repos: Path) -> None:
    """mallory plants a double-forked daemon that waits for the MCP server's port and the proxy's. Before
    the fix it outlived the graceful stop, held the ports and read the next agent's Bearer key (and the
    restarted server could not bind them); now it dies with its service's cgroup before the proxy or the
    MCP server gives up its port (serve holds its listening socket until the provider's close returns), the
    restarted server gets both ports back and answers, and the daemon bound and read nothing."""
    with security_server("inkmcp-sec-squat-", ("mallory",), **SHARED_ENV) as srv:
        async with session(srv, "mallory") as m:
            lab = await lab_live(m, lab_repo(repos, "dec1-squat"), "mallory", project_name="dec1-squat")
        ports = (srv.port, srv.proxy_port)
        daemon = lab_exec(srv, lab["url"], SQUATTER, ports=list(ports))
        assert Path(f"/proc/{daemon}").exists(), "the daemon did not start"
        homes = srv.data_dir / "compute" / "homes"  # mallory's HOME: the one user dir (beside .users.lock)
        (home,) = [h for h in homes.iterdir() if h.is_dir() and not h.name.startswith(".")]
        assert srv.stop() == 0, srv.log()
        await asyncio.sleep(1)  # time for a survivor to bind (it retries every 50 ms)
        assert not Path(f"/proc/{daemon}").exists() or "zombie" in Path(f"/proc/{daemon}/status").read_text(), \
            f"mallory's daemon {daemon} outlived the server"
        # --- quota: HOME is on the project's own filesystem, unmounted while InkMCP is stopped; the daemon is
        # dead (above), so its log is read once the restarted server has mounted it again
        srv.start()
        squat = (home / "squat.log").read_text()
        # --- end
        # From the daemon's side: it kept trying both ports (with SO_REUSEADDR and with SO_REUSEPORT) until it
        # died, and every bind was refused: with EPERM by the bind guard (bindguard.py: a port that is not one of
        # her runs'), where it runs, else with EADDRINUSE. The MCP port too: uvicorn closes its listening socket
        # before the provider's close kills the cgroups, and for that second or two serve keeps a duplicate of
        # the socket open (released after the provider's close), so the port is never free.
        for port in ports:
            assert f"REFUSED {port} " in squat, squat
            assert f"BOUND {port}" not in squat, squat
        refusals = {line.split()[3] for line in squat.splitlines() if line.startswith("REFUSED")}
        assert refusals in ({"1"}, {"98"}), squat
        assert (srv.port, srv.proxy_port) == ports, f"the restarted server lost its ports {ports}"
        r = httpx.post(f"http://127.0.0.1:{srv.port}/mcp", json={}, headers={"Authorization": "Bearer dk_live_probe"},
                       timeout=10)
        assert r.status_code == 401, (r.status_code, r.text[:200])  # InkMCP's own answer, not a squatter's
        r = httpx.get(f"http://127.0.0.1:{srv.proxy_port}/", headers={"Host": "nobody.localhost"}, timeout=10)
        assert r.status_code == 404 and r.headers.get("server") == "inkmcp", (r.status_code, r.headers)
        assert "GOT" not in (home / "squat.log").read_text()


# Inside mallory's app: the task limits above her service's group, as the kernel enforces them on her forks.
TASK_LIMITS = r'''
import os
lines = open("/proc/self/cgroup").read().splitlines()
path = next((l.split(":", 2)[2] for l in lines if l.split(":")[1] == "pids"), None)
base = "/sys/fs/cgroup/pids" if path is not None else "/sys/fs/cgroup"
path = path if path is not None else next(l.split(":", 2)[2] for l in lines if l.startswith("0::"))
caps = {}
while path not in ("", "/"):
    with open(f"{base}{path}/pids.max") as f:
        caps[path] = f.read().strip()
    path = os.path.dirname(path)
result = {"caps": caps, "pid_max": int(open("/proc/sys/kernel/pid_max").read()),
          "threads_max": int(open("/proc/sys/kernel/threads-max").read())}
'''


async def test_all_tenants_together_cannot_take_every_pid(server: ServerProc, world: dict[str, Any]) -> None:
    """One account may run 20 projects x 10 services x INKMCP_PIDS_MAX (512) = 102,400 tasks, more than this
    machine's pid_max (32,768 here): forking that many would stop every process on the host from forking,
    InkMCP and PostgreSQL included. Exhausting the shared test box is not an option, so mallory's app reads
    the limits the kernel applies to her forks: her service's 512, and above it a cap on all tenants
    together that leaves a quarter of the machine's tasks to the host."""
    seen = lab_exec(server, world["mallory"]["url"], TASK_LIMITS)
    caps = {path: int(v) for path, v in seen["caps"].items() if v != "max"}
    machine = min(seen["pid_max"], seen["threads_max"])
    own = [v for path, v in caps.items() if path.count("/") == 2]
    parent = [v for path, v in caps.items() if path.count("/") == 1]
    assert own == [512], seen
    assert parent and parent[0] <= machine * 3 // 4, f"no cap on all tenants together below {machine}: {seen}"


# Inside mallory's app: write the cgroup files that would lift her limits or stop alice (found from her own
# /proc/self/cgroup; alice's service id is handed over, as a listing of the parent group would show it).
CGROUP_WRITES = r'''
import os
lines = open("/proc/self/cgroup").read().splitlines()
v1 = {l.split(":")[1]: l.split(":", 2)[2] for l in lines if l.split(":")[1]}
def path(controller, group):
    own = v1.get(controller)
    if own is None:  # v2: one tree
        own = next(l.split(":", 2)[2] for l in lines if l.startswith("0::"))
        return "/sys/fs/cgroup" + os.path.join(os.path.dirname(own), group)
    return f"/sys/fs/cgroup/{controller}" + os.path.join(os.path.dirname(own), group)
own = os.path.basename(v1.get("pids") or next(l.split(":", 2)[2] for l in lines if l.startswith("0::")))
alice = ARGS["alice"]
v2 = "pids" not in v1
def write(p, text):
    with open(p, "w") as f:
        f.write(text)
tries = {
    "own pids.max": (path("pids", own) + "/pids.max", "max"),
    "parent pids.max": (os.path.dirname(path("pids", own)) + "/pids.max", "max"),
    "own memory limit": (path("memory", own) + "/memory.max", "max") if v2
    else (path("memory", own) + "/memory.limit_in_bytes", "-1"),
    "freeze alice": (path("memory", alice) + "/cgroup.freeze", "1") if v2
    else (path("freezer", alice) + "/freezer.state", "FROZEN"),
    "join alice": (path("pids", alice) + "/cgroup.procs", str(os.getpid())),
    "leave own group": (os.path.dirname(path("pids", own)) + "/cgroup.procs", str(os.getpid())),
}
result = {name: attempt(write, p, text) for name, (p, text) in tries.items()}
result["remove alice"] = attempt(os.rmdir, path("pids", alice))
result["own"] = own
'''


async def test_tenant_cannot_rewrite_cgroup_limits_or_freeze_another(server: ServerProc, world: dict[str, Any]) -> None:
    """From her app mallory raises her own and the parent's pids.max and her memory limit, freezes alice's
    service, moves herself into alice's group or out of her own, removes alice's group: each refused."""
    services = await _service_ids(server)
    seen = lab_exec(server, world["mallory"]["url"], CGROUP_WRITES, alice=services["alice-web"])
    assert seen.pop("own") == services["mallory-web"], seen
    for name, outcome in seen.items():
        assert outcome[0] in ("EACCES", "EPERM"), f"{name}: {outcome}"
    assert via_proxy(server, world["web"]["url"], timeout=10).text == "alice says hi"


async def _service_ids(server: ServerProc) -> dict[str, str]:
    """alice's web and mallory's web service ids, from their processes' cgroups (as root)."""
    out = {}
    for name, account, project in (("alice-web", "alice", ALICE), ("mallory-web", "mallory", MALLORY)):
        async with session(server, account) as s:
            services = await call(s, "list_services", project_name=project)
        assert any(svc["name"] == "web" and svc["state"] == "running" for svc in services["services"]), services
        who = via_proxy(server, f"http://web.{project}.localhost:{server.proxy_port}", "/whoami").json()
        line = next(x for x in who["cgroup"].splitlines() if ":pids:" in x or x.startswith("0::"))
        out[name] = line.rsplit("/", 1)[1]
    return out
