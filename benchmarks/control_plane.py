"""MCP control-plane throughput (issue 12 item 4): `list_projects` at 1, 16 and 64 concurrent clients, measured
on the server, not on the client.

Why a raw client: the MCP SDK's Python client costs 5-8 ms of CPU per call on this 2-core machine (more than the
server itself after issue 12), so a load generator built on it measures its own CPU. Here each client is a
real MCP session (initialize + notifications/initialized through streamable HTTP, with the server's session id
and a Bearer key), opened before the clock starts, then sends `tools/call list_projects` as HTTP/1.1 requests on
a kept-alive socket and reads the answer (one JSON body, or a chunked server-sent-event stream until its end:
the server picks per request), checking that every answer is the JSON-RPC result naming the projects. What the
server does per call is exactly what an agent's call costs it. The client's own CPU per call is reported too, so
a run where the client, not the server, is the limit shows.

Same run, interleaved: the server of this tree ("now") and, with --before REV, a server run from a git worktree
of that revision ("before"), on the same machine and load, so the ratio is meaningful on a noisy box. Figures:
calls/s, p50/p99 latency, and the server's CPU per call (from /proc, the server process alone).

    .venv/bin/python benchmarks/control_plane.py                    # this tree
    .venv/bin/python benchmarks/control_plane.py --before 4e51b8d   # before/after, ratios (4e51b8d: before issue 12)
    .venv/bin/python benchmarks/control_plane.py --save benchmarks/baselines/control_plane.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import ServerProc, dispose_server, make_server  # noqa: E402

PROTOCOL = "2025-06-18"
PROJECTS = 5
LOADS = ((1, 400), (16, 80), (64, 25))
"""(concurrent clients, calls each): ~400 calls per load, 3 rounds."""


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def mcp_headers(key: str, sid: str | None = None) -> dict[str, str]:
    """What every streamable-HTTP POST of a client carries (the session's headers once it has one)."""
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream",
               "Content-Type": "application/json"}
    if sid is not None:
        headers.update({"Mcp-Session-Id": sid, "MCP-Protocol-Version": PROTOCOL})
    return headers


async def open_session(srv: ServerProc, key: str, http: httpx.AsyncClient | None = None) -> str:
    """A real MCP session over streamable HTTP; returns its Mcp-Session-Id."""
    async with contextlib.AsyncExitStack() as stack:
        client = http if http is not None else await stack.enter_async_context(httpx.AsyncClient(timeout=30))
        r = await client.post(srv.mcp_url, headers=mcp_headers(key), json={
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": PROTOCOL, "capabilities": {},
                       "clientInfo": {"name": "bench", "version": "1"}}})
        r.raise_for_status()
        sid = r.headers["mcp-session-id"]
        r = await client.post(srv.mcp_url, headers=mcp_headers(key, sid),
                              json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        assert r.status_code == 202, r.text
    return sid


def call_bytes(srv: ServerProc, key: str, sid: str, call_id: int) -> bytes:
    body = json.dumps({"jsonrpc": "2.0", "id": call_id, "method": "tools/call",
                       "params": {"name": "list_projects", "arguments": {}}}).encode()
    lines = "".join(f"{k}: {v}\r\n" for k, v in mcp_headers(key, sid).items())
    head = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response: headers, then a chunked or sized body."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = bytearray()
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return bytes(body)
            body += chunk[:-2]
    length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def client(srv: ServerProc, key: str, sid: str, calls: int, go: asyncio.Event, latencies: list[float],
                 total: int | None = PROJECTS) -> None:
    """One agent: its session is open and its connection made before `go`; then `calls` calls, one at a time."""
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    try:
        await go.wait()
        for i in range(calls):
            request = call_bytes(srv, key, sid, i + 1)
            t0 = time.perf_counter()
            writer.write(request)
            body = await read_answer(reader)
            latencies.append(time.perf_counter() - t0)
            assert b'"result"' in body and b'"isError":false' in body.replace(b" ", b""), body[:300]
            if total is not None:
                assert b'"total":' + str(total).encode() in body.replace(b" ", b""), body[:300]
    finally:
        writer.close()


def cpu_seconds(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def measure(srv: ServerProc, key: str, clients: int, per: int, total: int | None = PROJECTS) -> dict[str, float]:
    """`clients` agents, each with its own MCP session and kept-alive connection, `per` calls each. The sessions are
    opened before the clock starts: an agent opens one per conversation and then calls many times, and opening 64
    of them (initialize, notifications/initialized, 64 httpx clients) inside the window cost the client more CPU
    than the calls did at 25 calls each. The figures are the calls' alone."""
    latencies: list[float] = []
    assert srv.proc is not None
    async with httpx.AsyncClient(timeout=30) as http:
        sids = await asyncio.gather(*[open_session(srv, key, http) for _ in range(clients)])
    go = asyncio.Event()
    tasks = [asyncio.create_task(client(srv, key, sid, per, go, latencies, total)) for sid in sids]
    await asyncio.sleep(0.2)  # every connection made (a connect is not a call)
    c0, t0, own0 = cpu_seconds(srv.proc.pid), time.perf_counter(), time.process_time()
    go.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    wall, cpu = time.perf_counter() - t0, cpu_seconds(srv.proc.pid) - c0
    own = time.process_time() - own0
    n = len(latencies)
    return {"calls_per_s": n / wall, "p50_ms": statistics.median(latencies) * 1000,
            "p99_ms": pct(latencies, 99) * 1000, "server_cpu_ms_per_call": cpu / n * 1000,
            "client_cpu_ms_per_call": own / n * 1000, "calls": n}


def start(name: str, src: Path | None) -> tuple[ServerProc, str]:
    env: dict[str, str] = {}
    if src is not None:  # the other tree's package first on the path: the same venv, that revision's code
        env["PYTHONPATH"] = str(src)
    srv = make_server(f"inkmcp-cp-{name}-", **env)
    key = srv.create_key("bench")
    srv.start(timeout=120)
    return srv, key


async def ensure_projects(srv: ServerProc, key: str, name: str) -> None:
    """PROJECTS projects through MCP (ensure_project), so every answer has the same size on both servers."""
    headers = mcp_headers(key, await open_session(srv, key))
    async with httpx.AsyncClient(timeout=60) as c:
        for i in range(PROJECTS):
            r = await c.post(srv.mcp_url, headers=headers, json={
                "jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                "params": {"name": "ensure_project", "arguments": {"name": f"cp-{name}-{i}"}}})
            assert r.status_code == 200 and '"isError":false' in r.text.replace(" ", ""), r.text[:300]


def git_head() -> str:
    out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def worktree(rev: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix="inkmcp-cp-before-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    return path


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="git revision to compare against (run from a temporary worktree)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--save", type=Path, help="write the figures as JSON")
    args = ap.parse_args()

    trees: dict[str, Path | None] = {"now": None}
    before_tree = worktree(args.before) if args.before else None
    if before_tree is not None:
        trees = {"before": before_tree, "now": None}
    servers: dict[str, tuple[ServerProc, str]] = {}
    results: dict[str, dict[str, list[dict[str, float]]]] = {name: {} for name in trees}
    try:
        for name, src in trees.items():
            servers[name] = start(name, src)
            await ensure_projects(*servers[name], name)
        for r in range(args.rounds):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for clients, per in LOADS:
                for name in order:
                    srv, key = servers[name]
                    results[name].setdefault(str(clients), []).append(await measure(srv, key, clients, per))
    finally:
        for srv, _ in servers.values():
            dispose_server(srv, clean_stop=False)
        if before_tree is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_tree)],  # noqa: ASYNC221
                           check=False)

    summary: dict[str, dict[str, dict[str, float]]] = {}
    for name, per_load in results.items():
        summary[name] = {c: {k: statistics.median(m[k] for m in runs) for k in runs[0]} for c, runs in per_load.items()}
    print(f"\nlist_projects over MCP (streamable HTTP), medians of {args.rounds} rounds, load {os.getloadavg()[0]:.1f}")
    print("| clients | tree | calls/s | p50 ms | p99 ms | server CPU ms/call | client CPU ms/call |")
    print("|--:|---|--:|--:|--:|--:|--:|")
    for clients, _ in LOADS:
        for name in trees:
            m = summary[name][str(clients)]
            print(f"| {clients} | {name} | {m['calls_per_s']:.0f} | {m['p50_ms']:.1f} | {m['p99_ms']:.1f} | "
                  f"{m['server_cpu_ms_per_call']:.2f} | {m['client_cpu_ms_per_call']:.2f} |")
    if "before" in summary:
        print("\n| clients | calls/s now ÷ before | p99 now ÷ before |\n|--:|--:|--:|")
        for clients, _ in LOADS:
            b, n = summary["before"][str(clients)], summary["now"][str(clients)]
            print(f"| {clients} | {n['calls_per_s'] / b['calls_per_s']:.2f} | {n['p99_ms'] / b['p99_ms']:.2f} |")
    if args.save:
        before = f", before = {args.before} (a git worktree of it, run with this venv)" if args.before else ""
        label = {"label": f"benchmarks/control_plane.py {' '.join(sys.argv[1:])}: now = {git_head()}{before}; "
                          f"medians of {args.rounds} interleaved rounds, sessions opened before the clock",
                 "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "load_average_1min": round(os.getloadavg()[0], 1)}
        args.save.write_text(json.dumps({**label, **summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
