"""on_demand wake → first byte, against a bare start of the same app, interleaved in one run (issue 12 item 2).

For each app (a stdlib http.server app; a Flask app under gunicorn with `--flask`, whose build
downloads from PyPI) and each of N rounds, in this order:

1. wait until InkMCP reports the service `sleeping` (idle timeout 1 s);
2. **bare**: start the app directly (`python app.py` / the built venv's gunicorn, as root, with
   PORT set), then one client connects every 0.5 ms until it is accepted and sends a GET: first
   byte of the answer, from the moment before the start;
3. **wake**: one GET through InkMCP's proxy, as an agent's request would arrive: first byte of the
   answer, from the moment before the connect.

Both measurements are made the same way, from raw sockets in this process, so the ratio wake/bare
is what InkMCP adds to a process start (spawn, confinement, readiness detection, proxying). It also
prints the cost of one confined spawn alone from a process holding a server-sized heap (old path: fork
with a preexec_fn; new path: vfork + the exec wrapper), and the server's RSS.

    .venv/bin/python benchmarks/wake_speed.py [--runs 20] [--flask] [--compare] [--before REV] [--save-baseline]

`--before REV` also wakes a server running the code of git revision REV (exported with `git archive`
to a temporary directory, imported through PYTHONPATH with this venv) in the same rounds: before and
after of a change, measured side by side on the same machine and load.

`--save-baseline` writes the figures to benchmarks/baselines/wake_speed.json (today's numbers for
the before/after table); every run prints them next to the stored baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import (
    ServerProc,
    call,
    dispose_server,
    free_port,
    git_repo,
    make_server,
    mcp_session,
    traversable_tmpdir,
)

BASELINE = Path(__file__).with_name("baselines") / "wake_speed.json"
LOAD_AT_START = Path("/proc/loadavg").read_text().split()[0] if Path("/proc/loadavg").exists() else "?"
SETTLE = 0.2  # s of quiet before each measurement
REQUEST = "GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"

TINY_APP = {
    "app.py": (
        "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n"
        "class H(BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.send_header('Content-Length', '2'); self.end_headers()\n"
        "        self.wfile.write(b'ok')\n"
        "    def log_message(self, *a): pass\n"
        "HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
    ),
    "Procfile": "web: python app.py\n",
}

FLASK_APP = {
    "app.py": "from flask import Flask\napp = Flask(__name__)\n\n@app.get('/')\ndef index():\n    return 'ok'\n",
    "requirements.txt": "flask==3.0.3\ngunicorn==23.0.0\n",
    "Procfile": "web: gunicorn --bind 127.0.0.1:$PORT --workers 1 app:app\n",
}


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def first_byte_after_connect(port: int, host: str, deadline: float, retry: float = 0.0005) -> None:
    """Connect (retrying every `retry` s while refused), send a GET, return once the first byte arrived."""
    while True:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            sock.close()
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listened on {port}") from None
            time.sleep(retry)
            continue
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.sendall(REQUEST.format(host=host).encode())
            data = sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            data = b""  # accepted by the backlog but reset: the app was not ready after all
        finally:
            sock.close()
        if data.startswith(b"HTTP/1.") and b" 200 " in data[:16]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"no 200 from {port}: {data[:80]!r}")
        time.sleep(retry)


def bare(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    """Seconds from starting `argv` directly to the first byte of its answer (`{port}` in argv: the port)."""
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in argv]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env={**env, "PORT": str(port)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        first_byte_after_connect(port, "localhost", t0 + 30)
        return time.monotonic() - t0
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()


def wake(proxy_port: int, host: str) -> float:
    """Seconds from one request to the sleeping service (through the proxy) to its first answer byte."""
    t0 = time.monotonic()
    first_byte_after_connect(proxy_port, host, t0 + 60)
    return time.monotonic() - t0


async def until_state(s: Any, project: str, state: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        svc = (await call(s, "list_services", project_name=project))["services"][0]
        if svc["state"] == state:
            return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{project} never became {state}")


async def deploy(s: Any, repo: Path, project: str) -> str:
    dep = await call(s, "deploy_app", repo_url=str(repo), mode="on_demand", project_name=project)
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"], timeout_seconds=10)
    if dep["status"] != "live":
        raise RuntimeError(f"{project} did not deploy: {dep}")
    return urlsplit(dep["url"]).netloc


def built_venv(server: ServerProc) -> Path:
    """The venv InkMCP built for the Flask service (its gunicorn is the bare baseline's too)."""
    found = sorted(server.data_dir.glob("**/bin/gunicorn"))
    if not found:
        listing = subprocess.run(["find", str(server.data_dir), "-maxdepth", "5"], capture_output=True, text=True)
        raise RuntimeError(f"the Flask service has no gunicorn in its venv:\n{listing.stdout[-3000:]}")
    return found[0].parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def spawn_cost(rounds: int = 30, ballast_mb: int = 130) -> dict[str, dict[str, float]]:
    """ms for one confined spawn of /bin/true (to its exit) from a process holding `ballast_mb` of heap,
    through the old path (fork + preexec_fn) and the new one (vfork + exec wrapper), interleaved; then,
    joining a cgroup (what every tenant process does), a direct start against one prepared ahead (the
    kernel's RCU wait for a cgroup migration is in the first, not in the second)."""
    code = (
        "import asyncio, json, sys, time, tempfile\n"
        "from pathlib import Path\n"
        "from inkmcp.build.process import TenantSandbox, spawn\n"
        f"ballast = bytearray({ballast_mb} * 2**20)\n"
        "for i in range(0, len(ballast), 4096): ballast[i] = 1\n"
        "try:\n"
        "    from inkmcp.providers.compute.local import spawn as fast\n"
        "except ImportError:\n"
        "    fast = None\n"
        "async def one(fn):\n"
        "    t0 = time.perf_counter()\n"
        "    proc, tr = await fn(('/bin/true',), cwd=Path('/'), env={'PATH': '/usr/bin:/bin'},\n"
        "                        sandbox=TenantSandbox(run_as=None))\n"
        "    await proc.wait(); tr.close()\n"
        "    return (time.perf_counter() - t0) * 1000\n"
        "async def in_group(sandbox, prepared):\n"
        "    if prepared: assert await fast.prepare_start(sandbox)\n"
        "    await asyncio.sleep(0.15)  # the kernel's cgroup-migration state back to idle, as before a wake\n"
        "    t0 = time.perf_counter()\n"
        "    proc, tr = await fast.spawn(('/bin/true',), cwd=Path('/'), env={'PATH': '/usr/bin:/bin'},\n"
        "                                sandbox=sandbox)\n"
        "    await proc.wait(); tr.close()\n"
        "    return (time.perf_counter() - t0) * 1000\n"
        "async def main():\n"
        "    out = {'fork+preexec_fn': []}\n"
        "    if fast is not None and fast.available(): out['vfork+wrapper'] = []\n"
        f"    for _ in range({rounds}):\n"
        "        out['fork+preexec_fn'].append(await one(spawn))\n"
        "        if 'vfork+wrapper' in out: out['vfork+wrapper'].append(await one(fast.spawn))\n"
        "    if 'vfork+wrapper' in out and hasattr(fast, 'prepare_start'):\n"
        "        import os\n"
        "        from inkmcp.providers.compute.base import Resources\n"
        "        from inkmcp.providers.compute.local.limits import Cgroups\n"
        "        cg, group = Cgroups(), f'wake-bench-{os.getpid()}'\n"
        "        if cg.available:\n"
        "            cg.ensure(group, Resources())\n"
        "            sandbox = TenantSandbox(run_as=None, cgroup_procs=cg.procs_files(group))\n"
        "            direct, ahead = 'vfork+wrapper, joining a cgroup', 'prepared start, joining a cgroup'\n"
        "            out[direct], out[ahead] = [], []\n"
        "            try:\n"
        f"                for _ in range({rounds}):\n"
        "                    out[direct].append(await in_group(sandbox, False))\n"
        "                    out[ahead].append(await in_group(sandbox, True))\n"
        "            finally:\n"
        "                await fast.discard_prepared()\n"
        "                cg.kill_all(group); cg.remove(group)\n"
        "    print(json.dumps(out))\n"
        "asyncio.run(main())\n"
    )
    raw = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    result = json.loads(raw.strip().splitlines()[-1])
    return {k: {"p50": statistics.median(v), "p99": pct(v, 99)} for k, v in result.items()}


OLD_PATHS = {"INKMCP_TENANT_SPAWN": "preexec", "INKMCP_TENANT_READINESS": "connect"}


async def deploy_apps(server: ServerProc, repos: Path, with_flask: bool) -> list[tuple[str, str, str, list[str]]]:
    """Deploy the apps on_demand on `server`: (label, project, host, bare argv) each."""
    apps = []
    async with mcp_session(server, server.keys["bench"]) as s:
        host = await deploy(s, git_repo(repos / "tiny", TINY_APP), "wake-tiny")
        apps.append(("http.server", "wake-tiny", host, ["/usr/bin/python3", "app.py"]))
        if with_flask:
            host = await deploy(s, git_repo(repos / "flask", FLASK_APP), "wake-flask")
            gunicorn = str(built_venv(server) / "bin/gunicorn")
            apps.append(("flask+gunicorn", "wake-flask", host,
                         [gunicorn, "--bind", "127.0.0.1:{port}", "--workers", "1", "app:app"]))
    return apps


def exported(rev: str) -> Path:
    """The tree of git revision `rev` in a temporary directory (no worktree: nothing added to .git)."""
    root = Path(__file__).resolve().parent.parent
    dest = Path(tempfile.mkdtemp(prefix="inkmcp-wake-before-src-"))
    archive = subprocess.run(["git", "-C", str(root), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


async def measure(runs: int, with_flask: bool, compare: bool, before: Path | None = None) -> dict[str, Any]:
    """`compare`: a second server on the previous paths (fork + preexec_fn, connect polling), woken in
    the same rounds, so before and after come from one run. `before`: a server running that source tree."""
    servers = {"wake": make_server("inkmcp-wake-", INKMCP_IDLE_TIMEOUT="1")}
    if compare:
        servers["wake_old"] = make_server("inkmcp-wake-old-", INKMCP_IDLE_TIMEOUT="1", **OLD_PATHS)
    if before is not None:
        servers["wake_before"] = make_server("inkmcp-wake-before-", INKMCP_IDLE_TIMEOUT="1", PYTHONPATH=str(before))
    repos = {k: traversable_tmpdir(f"inkmcp-{k}-repos-") for k in servers}
    for srv in servers.values():
        srv.create_key("bench")
        srv.start()
    figures: dict[str, Any] = {"runs": runs, "apps": {}}
    try:
        apps = {k: await deploy_apps(srv, repos[k], with_flask) for k, srv in servers.items()}
        base_env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
        venv_of = {a[0]: Path(a[3][0]).parent.parent for a in apps["wake"] if a[0] != "http.server"}
        samples = {a[0]: {"bare": [], **{k: [] for k in servers}} for a in apps["wake"]}
        async with contextlib.AsyncExitStack() as stack:
            opened = {k: await stack.enter_async_context(mcp_session(srv, srv.keys["bench"]))
                      for k, srv in servers.items()}
            for round_no in range(runs):
                for i, (name, project, _host, argv) in enumerate(apps["wake"]):
                    env = base_env
                    if name in venv_of:
                        venv = venv_of[name]
                        env = {**base_env, "VIRTUAL_ENV": str(venv), "PATH": f"{venv}/bin:{base_env['PATH']}"}
                    for k in servers:
                        await until_state(opened[k], project, "sleeping")
                    cwd = repos["wake"] / project.removeprefix("wake-")  # the app's files, as deployed
                    # A pause before each measurement lets the previous one's aftermath (an app answering, a proxy
                    # reloading its routes) settle; the servers take turns going first.
                    await asyncio.sleep(SETTLE)
                    samples[name]["bare"].append(await asyncio.to_thread(bare, argv, cwd, env))
                    order = list(servers.items())
                    for k, srv in order if round_no % 2 == 0 else reversed(order):
                        await asyncio.sleep(SETTLE)
                        host = apps[k][i][2]
                        samples[name][k].append(await asyncio.to_thread(wake, srv.proxy_port, host))
        proc = servers["wake"].proc
        assert proc is not None
        figures["server_rss_mb"] = round(rss_mb(proc.pid), 1)
        for name, got in samples.items():
            row: dict[str, Any] = {k: {"p50": statistics.median(v) * 1000, "p99": pct(v, 99) * 1000}
                                   for k, v in got.items()}
            for k in servers:
                suffix = k.removeprefix("wake")
                row[f"ratio_p50{suffix}"] = row[k]["p50"] / row["bare"]["p50"]
                row[f"ratio_p99{suffix}"] = row[k]["p99"] / row["bare"]["p99"]
            figures["apps"][name] = row
    finally:
        for k, srv in servers.items():
            dispose_server(srv, clean_stop=False)
            shutil.rmtree(repos[k], ignore_errors=True)
    figures["spawn_ms"] = spawn_cost()
    figures["readiness_ms"] = await readiness_lateness()
    return figures


LISTENER = (
    "import os, random, socket, time\n"
    "time.sleep(random.uniform(0.02, 0.12))\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen()\n"
    "print('LISTEN', time.monotonic(), flush=True)\n"
    "while True:\n"
    "    c, _ = s.accept(); c.close()\n"
)


async def readiness_lateness(rounds: int = 30) -> dict[str, dict[str, float]]:
    """ms from the app's listen() to the health check noticing, for the kernel probe and the old connect
    poller, interleaved; the app listens after a random 20-120 ms, as a real app would after its imports."""
    from inkmcp.build.plan import BuildPlan, ProcessSpec, ServiceType, Stack
    from inkmcp.providers.compute.local import release
    from inkmcp.providers.compute.local.spawn import StartSettings
    from inkmcp.providers.compute.local.supervisor import Backoff

    work = traversable_tmpdir("inkmcp-readiness-")
    (work / "app.py").write_text(LISTENER)
    plan = BuildPlan(stack=Stack.none, source="call",
                     processes=(ProcessSpec(name="web", command="/usr/bin/python3 app.py", routed=True),))
    meta = release.ReleaseMeta(deployment_id="bench", service_type=ServiceType.webapp, plan=plan)
    out: dict[str, list[float]] = {"sock_diag": [], "connect": []}
    original = release.start_settings
    try:
        for _ in range(rounds):
            for mode in out:
                settings = StartSettings(tenant_readiness=mode)  # type: ignore[arg-type]
                release.start_settings = lambda settings=settings: settings  # type: ignore[assignment]
                lines: list[str] = []
                printed = asyncio.Event()

                def sink(line: str, lines: list[str] = lines, printed: asyncio.Event = printed) -> None:
                    lines.append(line)
                    if "LISTEN" in line:
                        printed.set()

                run = release.ReleaseRun(meta, app_dir=work, service_env={}, run_as=None, home=str(work),
                                         port=free_port(), sink=sink, run_dir=work,
                                         tenant_python="/usr/bin/python3", backoff=Backoff())
                await run.start()
                try:
                    await run.wait_healthy(10)
                    noticed = time.monotonic()
                    await asyncio.wait_for(printed.wait(), 5)
                    listened = float(next(x for x in lines if "LISTEN" in x).split()[-1])
                    out[mode].append((noticed - listened) * 1000)
                finally:
                    await run.stop(1.0)
    finally:
        release.start_settings = original
        shutil.rmtree(work, ignore_errors=True)
    return {k: {"p50": statistics.median(v), "p99": pct(v, 99)} for k, v in out.items()}


def table(now: dict[str, Any], before: dict[str, Any] | None) -> str:
    lines = ["| app | bare p50 / p99 ms | wake p50 / p99 ms | ratio p50 / p99 | baseline ratio p50 / p99 |",
             "| --- | --- | --- | --- | --- |"]
    for name, row in now["apps"].items():
        old = (before or {}).get("apps", {}).get(name)
        was = f"{old['ratio_p50']:.2f} / {old['ratio_p99']:.2f}" if old else "-"
        lines.append(f"| {name} | {row['bare']['p50']:.0f} / {row['bare']['p99']:.0f} | "
                     f"{row['wake']['p50']:.0f} / {row['wake']['p99']:.0f} | "
                     f"{row['ratio_p50']:.2f} / {row['ratio_p99']:.2f} | {was} |")
        for key, label in (("_old", "previous paths"), ("_before", f"revision {now.get('before', '?')}")):
            if f"wake{key}" in row:
                lines.append(f"| {name}, {label} in this run | | {row[f'wake{key}']['p50']:.0f} / "
                             f"{row[f'wake{key}']['p99']:.0f} | {row[f'ratio_p50{key}']:.2f} / "
                             f"{row[f'ratio_p99{key}']:.2f} | |")
    lines.append("")
    lines.append("| confined spawn of /bin/true, to its exit, from a 130 MB process | p50 ms | p99 ms | baseline p50 |")
    lines.append("| --- | --- | --- | --- |")
    for path, v in now["spawn_ms"].items():
        old = (before or {}).get("spawn_ms", {}).get(path)
        lines.append(f"| {path} | {v['p50']:.2f} | {v['p99']:.2f} | {old['p50']:.2f} |" if old
                     else f"| {path} | {v['p50']:.2f} | {v['p99']:.2f} | - |")
    lines.append("")
    lines.append("| listen() → health check notices | p50 ms | p99 ms | baseline p50 ms |")
    lines.append("| --- | --- | --- | --- |")
    for mode, v in now.get("readiness_ms", {}).items():
        old = (before or {}).get("readiness_ms", {}).get(mode)
        lines.append(f"| {mode} | {v['p50']:.2f} | {v['p99']:.2f} | {old['p50']:.2f} |" if old
                     else f"| {mode} | {v['p50']:.2f} | {v['p99']:.2f} | - |")
    lines.append(f"\ninkmcp serve RSS: {now['server_rss_mb']} MB")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="interleaved rounds per app (>= 20 for p99)")
    parser.add_argument("--flask", action="store_true", help="also a Flask + gunicorn app (needs PyPI)")
    parser.add_argument("--compare", action="store_true",
                        help="also wake a server on the previous paths (preexec fork, connect polling) in the same run")
    parser.add_argument("--before", metavar="REV",
                        help="also wake a server running git revision REV in the same rounds (before/after)")
    parser.add_argument("--save-baseline", action="store_true", help=f"write the figures to {BASELINE}")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1 (20 or more for a meaningful p99)")
    before = exported(args.before) if args.before else None
    try:
        figures = asyncio.run(measure(args.runs, args.flask, args.compare, before))
    finally:
        if before is not None:
            shutil.rmtree(before, ignore_errors=True)
    figures["load_at_start"] = LOAD_AT_START
    if args.before:
        figures["before"] = args.before
    stored = json.loads(BASELINE.read_text()) if BASELINE.exists() else None
    print(f"load average at the start: {LOAD_AT_START}")
    print(table(figures, stored))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    if args.save_baseline:
        BASELINE.parent.mkdir(exist_ok=True)
        BASELINE.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"baseline written to {BASELINE}")


if __name__ == "__main__":
    main()
