"""The Coolify client's own cost per call, over the stand-in, with and without the shared request budget.

Targets, one `GET /applications/{uuid}` each, interleaved in rounds (A B C D E, E D C B A, ...) so drift on a busy
2-core machine hits all alike:

    raw             httpx.AsyncClient, same headers: the stand-in's own time + HTTP (the floor)
    client          CoolifyClient with an in-process LocalBudget (the CLI), no spec check
    client+spec     ... plus `validate_with` (every request checked against the OpenAPI spec before it leaves)
    client+db       CoolifyClient with a DbBudget on an embedded PostgreSQL (what replicas use)
    client+db+spec  both

The client's overhead is its p50/p99 minus raw's. The budget alone is measured too: LocalBudget reserve+settle,
DbBudget reserve without prefetch (one round trip to the function each), and 16 concurrent reserves of one
process (coalesced into shared round trips); and how many round trips the client+db targets paid per call.

    .venv/bin/python benchmarks/coolify_client.py            # table on stdout
    .venv/bin/python benchmarks/coolify_client.py --calls 500

`--transports`: instead, the CPU time of this process per request for each httpx transport the Coolify client
could run on (issue 8): `httpx` (httpx's own, httpcore), `lean` (inkmcp/coolify/transport.py), and `aiohttp`
(httpx-aiohttp's AiohttpTransport, when importable: it is not in the lock file), each under a plain
httpx.AsyncClient, alternating GET /applications/{uuid} and PATCH /applications/{uuid} with a small JSON body,
against the stand-in in a process of its own (benchmarks/standin_process.py), so only the client's side is timed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import psycopg
from sqlalchemy import text

from benchmarks.standin_process import StandinProcess
from inkmcp.coolify.budget import BudgetSettings, DbBudget, LocalBudget
from inkmcp.coolify.client import CoolifyClient
from inkmcp.coolify.models import ProjectCreate, PublicApplicationCreate
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.coolify.standin import CoolifyStandin
from inkmcp.store.db import migrate
from inkmcp.store.embedded import EmbeddedPostgres

UNLIMITED = BudgetSettings(limit=10_000_000, window=60.0)


def pct(samples: list[float], p: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] * 1000


async def timed(fn: Callable[[], Awaitable[object]], n: int, out: list[float]) -> None:
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)


async def run(calls: int, rounds: int, db_url: str, standin: CoolifyStandin) -> None:
    spec = CoolifySpec.load()
    token = standin.add_token("read", "read:sensitive", "write", "deploy")
    server = standin.add_servers(1)[0]
    async with CoolifyClient(standin.url, token) as setup:
        project = await setup.create_project(ProjectCreate(name="bench"))
        env = (await setup.get_project(project)).environments[0]
        assert env.uuid
        app = (await setup.create_public_application(PublicApplicationCreate(
            project_uuid=project, server_uuid=server.uuid, environment_name="production", environment_uuid=env.uuid,
            git_repository="https://github.com/inkmcp/hello", git_branch="main", build_pack="nixpacks",
            ports_exposes="3000"))).uuid

    raw = httpx.AsyncClient(base_url=standin.url + "/api/v1", headers={
        "Accept": "application/json", "Authorization": f"Bearer {token}"})
    db1 = DbBudget.from_url(db_url, "bench:1", UNLIMITED)
    db2 = DbBudget.from_url(db_url, "bench:2", UNLIMITED)
    clients = {
        "client": CoolifyClient(standin.url, token, budget=LocalBudget(UNLIMITED)),
        "client+spec": CoolifyClient(standin.url, token, budget=LocalBudget(UNLIMITED), validate_with=spec),
        "client+db": CoolifyClient(standin.url, token, budget=db1),
        "client+db+spec": CoolifyClient(standin.url, token, budget=db2, validate_with=spec),
    }

    async def raw_get() -> None:
        r = await raw.get(f"/applications/{app}")
        r.raise_for_status()

    targets: dict[str, Callable[[], Awaitable[object]]] = {"raw": raw_get}
    for name, c in clients.items():
        targets[name] = (lambda c=c: c.get_application(app))
    samples: dict[str, list[float]] = {name: [] for name in targets}
    for fn in targets.values():  # warm up: connections, validators, prepared statements
        await timed(fn, 20, [])
    order = list(targets)
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            await timed(targets[name], calls // rounds, samples[name])

    trips_per_call = {name: b.round_trips / (calls // rounds * rounds + 20) for name, b in
                      (("client+db", db1), ("client+db+spec", db2))}
    budget_samples: dict[str, list[float]] = {"LocalBudget reserve+settle": [], "DbBudget reserve (1 round trip)": []}
    local = LocalBudget(UNLIMITED)
    db3 = DbBudget.from_url(db_url, "bench:3", UNLIMITED.model_copy(update={"prefetch": 0}))

    async def local_take() -> None:
        await local.settle(await local.reserve())

    async def db_take() -> None:
        await db3.settle(await db3.reserve())

    engine = db3._engine
    budget_samples["SELECT 1 on the same engine"] = []

    async def select_one() -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    await timed(db_take, 20, [])
    await timed(select_one, 20, [])
    for _ in range(rounds):
        await timed(local_take, calls // rounds, budget_samples["LocalBudget reserve+settle"])
        await timed(db_take, calls // rounds, budget_samples["DbBudget reserve (1 round trip)"])
        await timed(select_one, calls // rounds, budget_samples["SELECT 1 on the same engine"])
    trips_before = db3.round_trips
    burst: list[float] = []
    for _ in range(20):
        t = time.perf_counter()
        await asyncio.gather(*[db3.reserve() for _ in range(16)])
        burst.append(time.perf_counter() - t)
    coalesced = (db3.round_trips - trips_before) / 20

    floor50, floor99 = pct(samples["raw"], 50), pct(samples["raw"], 99)
    print(f"GET /applications/{{uuid}} over the stand-in, {calls} calls per target in {rounds} interleaved rounds")
    print(f"{'target':<16}{'p50 ms':>9}{'p99 ms':>9}{'overhead p50':>14}{'overhead p99':>14}")
    for name, s in samples.items():
        p50, p99 = pct(s, 50), pct(s, 99)
        over50 = "" if name == "raw" else f"{p50 - floor50:+.2f}"
        over99 = "" if name == "raw" else f"{p99 - floor99:+.2f}"
        print(f"{name:<16}{p50:>9.2f}{p99:>9.2f}{over50:>14}{over99:>14}")
    print("DbBudget round trips per call (sequential calls, prefetch while under half the limit): "
          + ", ".join(f"{k} {v:.2f}" for k, v in trips_per_call.items()))
    print()
    print(f"{'budget alone':<34}{'p50 ms':>9}{'p99 ms':>9}")
    for name, s in budget_samples.items():
        print(f"{name:<34}{pct(s, 50):>9.3f}{pct(s, 99):>9.3f}")
    print(f"{'16 concurrent DbBudget reserves':<34}{statistics.median(burst) * 1000:>9.3f}"
          f"{max(burst) * 1000:>9.3f}   ({coalesced:.1f} round trips per 16)")
    await raw.aclose()
    for c in clients.values():
        await c.aclose()
    for b in (db1, db2, db3):
        await b.aclose()


def _transports() -> dict[str, Callable[[], httpx.AsyncBaseTransport]]:
    from inkmcp.coolify.transport import LeanTransport

    made: dict[str, Callable[[], httpx.AsyncBaseTransport]] = {
        "httpx": lambda: httpx.AsyncHTTPTransport(trust_env=False), "lean": lambda: LeanTransport(trust_env=False)}
    try:
        from httpx_aiohttp import AiohttpTransport
    except ImportError:
        print("httpx-aiohttp is not installed here: its row is left out (a scratch venv: uv pip install httpx-aiohttp)")
    else:
        made["aiohttp"] = AiohttpTransport
    return made


async def run_transports(calls: int, rounds: int, root: Path) -> None:
    """CPU time of this process per request, per transport (module docstring, `--transports`)."""
    standin = StandinProcess(root / "nodes", servers=1)
    try:
        async with CoolifyClient(standin.url, standin.token) as setup:
            server = (await setup.list_servers())[0]
            project = await setup.create_project(ProjectCreate(name="bench"))
            env = (await setup.get_project(project)).environments[0]
            assert env.uuid
            app = (await setup.create_public_application(PublicApplicationCreate(
                project_uuid=project, server_uuid=server.uuid, environment_name="production",
                environment_uuid=env.uuid, git_repository="https://github.com/inkmcp/hello", git_branch="main",
                build_pack="nixpacks", ports_exposes="3000"))).uuid
        clients = {name: httpx.AsyncClient(base_url=standin.url + "/api/v1", transport=make(), headers={
            "Accept": "application/json", "Authorization": f"Bearer {standin.token}"})
            for name, make in _transports().items()}  # fmt: skip
        cpu: dict[str, list[float]] = {name: [] for name in clients}
        wall: dict[str, list[float]] = {name: [] for name in clients}

        async def batch(name: str, n: int, keep: bool) -> None:
            c = clients[name]
            for i in range(n):
                t, w = time.process_time(), time.perf_counter()
                if i % 2:
                    r = await c.patch(f"/applications/{app}", json={"description": f"bench {i}"})
                else:
                    r = await c.get(f"/applications/{app}")
                r.raise_for_status()
                r.json()
                if keep:
                    cpu[name].append(time.process_time() - t)
                    wall[name].append(time.perf_counter() - w)

        for name in clients:  # warm up: connections, imports
            await batch(name, 20, keep=False)
        order = list(clients)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                await batch(name, calls // rounds, keep=True)
        print(f"GET + PATCH /applications/{{uuid}} over the stand-in process, {calls} calls per transport in "
              f"{rounds} interleaved rounds; CPU of this process only")
        print(f"{'transport':<10}{'CPU p50 ms':>12}{'CPU mean ms':>13}{'wall p50 ms':>13}")
        for name in clients:
            print(f"{name:<10}{pct(cpu[name], 50):>12.3f}{statistics.mean(cpu[name]) * 1000:>13.3f}"
                  f"{pct(wall[name], 50):>13.3f}")
        for c in clients.values():
            await c.aclose()
    finally:
        standin.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=600, help="calls per target (default 600)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--transports", action="store_true", help="CPU per request of each httpx transport")
    args = parser.parse_args()
    if args.transports:
        base = Path(tempfile.mkdtemp(prefix="inkmcp-bench-coolify-"))
        try:
            asyncio.run(run_transports(args.calls, args.rounds, base))
        finally:
            shutil.rmtree(base, ignore_errors=True)
        return
    base = Path(tempfile.mkdtemp(prefix="inkmcp-bench-coolify-"))
    pg = EmbeddedPostgres(base / "pg")
    pg.start()
    try:
        with psycopg.connect(pg.url(driver=None).get_secret_value(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = pg.url("bench").get_secret_value()
        migrate(url)
        with CoolifyStandin(base / "nodes", rate_limit=10_000_000) as standin:
            asyncio.run(run(args.calls, args.rounds, url, standin))
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
