"""InkMCP benchmarks on this machine: a real `inkmcp serve`, real MCP clients over streamable HTTP.

Prints a markdown table. Every loop is bounded in count and time; all traffic stays on loopback.

    .venv/bin/python benchmarks/run_all.py            # all
    .venv/bin/python benchmarks/run_all.py deploy wake # some
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from mcp import ClientSession

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tests.support import (
    ServerProc,
    call,
    dispose_server,
    git_repo,
    make_server,
    mcp_session,
    product_window,
    traversable_tmpdir,
)


def tiny_app(body: str = "ok") -> dict[str, str]:
    """A stdlib-only web app (no build step) answering 200 with `body`: a new body makes a new version."""
    data = body.encode()
    return {
        "app.py": (
            "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n"
            "class H(BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            f"        self.send_response(200); self.send_header('Content-Length', '{len(data)}'); self.end_headers()\n"
            f"        self.wfile.write({data!r})\n"
            "    def log_message(self, *a): pass\n"
            "HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"
        ),
        "Procfile": "web: python app.py\n",
    }


TINY_APP = tiny_app()


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def first_200(client: httpx.AsyncClient, server: ServerProc, url: str, deadline: float,
                    body: bytes | None = None) -> float:
    """Poll the proxy until `url` answers 200 (with `body`, if given: the new version, not the old one)."""
    host = urlsplit(url).netloc
    while time.monotonic() < deadline:
        try:
            r = await client.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": host})
            if r.status_code == 200 and (body is None or r.content == body):
                return time.monotonic()
        except httpx.HTTPError:
            pass
        await asyncio.sleep(0.01)
    raise TimeoutError(url)


async def until_done(s: ClientSession, dep: dict[str, Any]) -> dict[str, Any]:
    """Follow a deploy_app answer until the deployment is done; it must be live."""
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"], timeout_seconds=5)
    assert dep["status"] == "live", dep
    return dep


async def until_sleeping(s: ClientSession, project_name: str, timeout: float = 30, poll: float = 0.2) -> None:
    """Poll list_services until the project's (only) service reports `sleeping`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        svc = (await call(s, "list_services", project_name=project_name))["services"][0]
        if svc["state"] == "sleeping":
            return
        await asyncio.sleep(poll)
    raise TimeoutError(f"{project_name} never slept")


async def first_byte(client: httpx.AsyncClient, server: ServerProc, host: str) -> float:
    """Seconds from sending a request through the proxy to its first response byte; the answer must be 200."""
    t0 = time.monotonic()
    took = None
    async with client.stream("GET", f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": host}) as r:
        async for _chunk in r.aiter_raw():
            took = time.monotonic() - t0
            break
    assert r.status_code == 200 and took is not None, r
    return took


async def bench_deploy(server: ServerProc, repos: Path, n: int = 9) -> list[tuple[str, str]]:
    times = []
    async with mcp_session(server, server.keys["bench"]) as s, httpx.AsyncClient(timeout=10) as c:
        for i in range(n):
            repo = git_repo(repos / f"tiny-{i}", TINY_APP)
            t0 = time.monotonic()
            dep = await until_done(s, await call(s, "deploy_app", repo_url=str(repo)))
            times.append(await first_200(c, server, dep["url"], t0 + 60) - t0)
    return [("deploy_app → first 200, tiny app, no build step (new service each)",
             f"p50 {statistics.median(times):.2f} s, p90 {pct(times, 90):.2f} s, max {max(times):.2f} s (n={n})")]


async def bench_wake(server: ServerProc, repos: Path, n: int = 8) -> list[tuple[str, str]]:
    repo = git_repo(repos / "sleeper", TINY_APP)
    async with mcp_session(server, server.keys["bench"]) as s, httpx.AsyncClient(timeout=30) as c:
        dep = await until_done(s, await call(s, "deploy_app", repo_url=str(repo), mode="on_demand"))
        host = urlsplit(dep["url"]).netloc
        times = []
        for _ in range(n):
            await until_sleeping(s, "sleeper")
            times.append(await first_byte(c, server, host))
    return [("on_demand wake → first byte", f"p50 {statistics.median(times) * 1000:.0f} ms, "
             f"max {max(times) * 1000:.0f} ms (n={n})")]


async def bench_list_projects(server: ServerProc) -> list[tuple[str, str]]:
    """Real MCP sessions driven by control_plane.py's raw client (the SDK's client would measure its own CPU)."""
    import control_plane

    await control_plane.ensure_projects(server, server.keys["bench"], "bench")
    rows = []
    for clients, per_client in control_plane.LOADS:
        m = await control_plane.measure(server, server.keys["bench"], clients, per_client, total=None)
        rows.append((f"list_projects, {clients} concurrent clients",
                     f"{m['calls_per_s']:.0f} calls/s, p50 {m['p50_ms']:.0f} ms, p99 {m['p99_ms']:.0f} ms, "
                     f"server CPU {m['server_cpu_ms_per_call']:.1f} ms/call ({m['calls']:.0f} calls)"))
    return rows


def peak_rss_mb(pid: int) -> tuple[float, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = {line.split(":")[0]: line.split()[1] for line in status.splitlines() if line.startswith("Vm")}
    return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024


async def bench_memory(server: ServerProc, repos: Path, n: int = 50) -> list[tuple[str, str]]:
    repo = git_repo(repos / "many", TINY_APP)
    async with mcp_session(server, server.keys["bench"]) as s:
        sem = asyncio.Semaphore(4)

        async def one(i: int) -> None:
            async with sem:
                dep = await call(s, "deploy_app", repo_url=str(repo), project_name=f"many-{i}")
                while not dep["done"]:
                    dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
                assert dep["status"] == "live", dep

        t0 = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(n)]), 900)
        took = time.monotonic() - t0
        listed = (await call(s, "list_projects"))["total"]
    assert server.proc is not None
    rss, hwm = peak_rss_mb(server.proc.pid)
    return [(f"inkmcp serve memory with {n} services live ({listed} projects)",
             f"RSS {rss:.0f} MB, peak {hwm:.0f} MB (tenant apps not counted); deployed in {took:.0f} s")]


async def main(which: list[str]) -> None:
    # one account deploys 50 projects, 4 at a time (bench_memory): above the per-account defaults (20 projects, 2
    # concurrent builds), which only pace this benchmark's own load; everything else is as an operator runs it
    server = make_server("inkmcp-bench-", INKMCP_IDLE_TIMEOUT="1", INKMCP_MAX_PROJECTS_PER_ACCOUNT="100",
                         INKMCP_MAX_CONCURRENT_BUILDS_PER_ACCOUNT="4", **product_window())
    repos = traversable_tmpdir("inkmcp-bench-repos-")
    server.create_key("bench")
    server.start()
    rows: list[tuple[str, str]] = []
    try:
        if "deploy" in which:
            rows += await bench_deploy(server, repos)
        if "wake" in which:
            rows += await bench_wake(server, repos)
        if "list" in which:
            rows += await bench_list_projects(server)
        if "memory" in which:
            rows += await bench_memory(server, repos)
    finally:
        dispose_server(server, clean_stop=False)
        shutil.rmtree(repos, ignore_errors=True)
    print("\n| benchmark | result |\n| --- | --- |")
    for name, value in rows:
        print(f"| {name} | {value} |")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or ["deploy", "wake", "list", "memory"]))
