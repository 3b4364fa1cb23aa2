"""Placement: time per decision and packing efficiency, 10,000 services over 500 run servers (issue 8 item 6).

    .venv/bin/python benchmarks/placement.py [--services 10000] [--nodes 500] [--seed 8]

Servers have mixed capacity (4 sizes, as a Hetzner fleet would); demands are seeded random over the three modes
(persistent 30 %, on_demand 50 %, static 20 %) with limits from 256 MiB / 0.25 CPU to 8 GiB / 4 CPUs. Each
strategy places the same demands in arrival order (online, as deploys come) and, for reference, sorted largest
first (what a batch such as a drain plan can do).

* time per decision: `Engine.place` (choose + reserve, including the index update), p50/p99/max wall time in
  µs, and p50/p99 of the thread's CPU time (what the decision costs, without the time another process held the
  core: on a busy 2-core box the wall-time tail is the scheduler's, not the engine's);
* packing efficiency: the sum-of-demands lower bound over nodes used. The lower bound, per resource, is the
  fewest servers whose capacities (largest first) hold the sum of all charges; the bound is the larger of the
  memory and CPU ones. 100 % means no strategy could use fewer servers.

The engine implements best fit by the dominant resource. First fit (servers in a fixed order) and worst fit
(the emptiest server, which is what "spread everything" amounts to) run through the same rules here only to show
why best fit is the default.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inkmcp.build.plan import Mode
from inkmcp.placement.engine import Engine
from inkmcp.placement.models import Demand, Node, PlacementError, Policy

SIZES = [(8192, 4000), (16384, 8000), (32768, 8000), (65536, 16000)]
"""(memory MiB, millicores) a tenant may reserve per server size."""


def make_nodes(n: int, rng: random.Random) -> list[Node]:
    return [Node(uuid=f"node-{i:04d}", name=f"run-{i}", memory_mb=m, millicpus=c,
                 labels={"region": rng.choice(["fsn1", "nbg1", "hel1"])})
            for i, (m, c) in enumerate(rng.choice(SIZES) for _ in range(n))]


def make_demands(n: int, rng: random.Random) -> list[Demand]:
    out = []
    for i in range(n):
        mode = rng.choices([Mode.persistent, Mode.on_demand, Mode.static], [30, 50, 20])[0]
        memory = rng.choices([256, 512, 1024, 2048, 4096, 8192], [30, 35, 20, 10, 4, 1])[0]
        cpus = rng.choices([250, 500, 1000, 2000, 4000], [35, 35, 20, 8, 2])[0]
        out.append(Demand(service_id=f"s{i}", project_id=f"p{i // 3}", mode=mode, memory_mb=memory,
                          millicpus=cpus))
    return out


class FirstFit(Engine):
    """Reference only: the first server (fixed order) where the demand fits."""

    def choose(self, demand: Demand, *, exclude: frozenset[str] = frozenset()) -> Node:
        charge = self.charge(demand)
        for s in self._nodes.values():
            if s.target and s.fits(charge, demand.memory_mb, demand.millicpus):
                return s.node
        raise PlacementError("full")


class WorstFit(Engine):
    """Reference only: the server with the most free room of the dominant resource (used or empty)."""

    def choose(self, demand: Demand, *, exclude: frozenset[str] = frozenset()) -> Node:
        charge = self.charge(demand)
        by_memory = charge.memory_mb * self._total_cpu >= charge.millicpus * self._total_memory
        fitting = [s for s in self._nodes.values() if s.target and s.fits(charge, demand.memory_mb, demand.millicpus)]
        if not fitting:
            raise PlacementError("full")
        return max(fitting, key=lambda s: s.free_memory if by_memory else s.free_cpu).node


def lower_bound(nodes: list[Node], engine: Engine, demands: list[Demand]) -> int:
    charges = [engine.charge(d) for d in demands]
    bound = 0
    for need, caps in ((sum(c.memory_mb for c in charges), sorted((n.memory_mb for n in nodes), reverse=True)),
                       (sum(c.millicpus for c in charges), sorted((n.millicpus for n in nodes), reverse=True))):
        total, k = 0, 0
        while total < need and k < len(caps):
            total += caps[k]
            k += 1
        bound = max(bound, k)
    return bound


def run(cls: type[Engine], nodes: list[Node], demands: list[Demand], policy: Policy) -> dict[str, float]:
    engine = cls(nodes, policy)
    times: list[int] = []
    cpu: list[int] = []
    refused = 0
    for d in demands:
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        try:
            engine.place(d)
        except PlacementError:
            refused += 1
        cpu.append(time.thread_time_ns() - c0)
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    cpu.sort()
    return {"used": engine.nodes_used(), "refused": refused,
            "p50": times[len(times) // 2] / 1000, "p99": times[int(len(times) * 0.99)] / 1000,
            "max": times[-1] / 1000, "mean": statistics.fmean(times) / 1000,
            "cpu50": cpu[len(cpu) // 2] / 1000, "cpu99": cpu[int(len(cpu) * 0.99)] / 1000}


async def db_decisions(nodes: list[Node], demands: list[Demand], policy: Policy) -> dict[str, float]:
    """`PlacementService.reserve` against a real (embedded) PostgreSQL: the whole decision as a replica makes it
    (service lock, one GROUP BY over every placement, in-memory choice, node row lock, fresh re-check, write,
    commit), with the table growing to len(demands) rows."""
    import shutil
    import tempfile
    import uuid

    from inkmcp.placement.records import PlacementService
    from inkmcp.store.db import migrate, open_store
    from inkmcp.store.embedded import EmbeddedPostgres
    from inkmcp.store.models import Account, Project, Service

    base = Path(tempfile.mkdtemp(prefix="inkmcp-placement-bench-"))
    pg = EmbeddedPostgres(base / "pgdata")
    pg.start()
    try:
        url = pg.url().get_secret_value()
        migrate(url)
        store = await open_store(url, pool_size=2, max_overflow=0)
        ids: list[tuple[str, str]] = []
        async with store.session() as session, session.begin():
            account = Account(name="bench")
            session.add(account)
            await session.flush()
            projects = [Project(id=uuid.uuid4(), account_id=account.id, name=f"p{i}")
                        for i in range(len(demands) // 3 + 1)]
            session.add_all(projects)
            await session.flush()
            services = [Service(id=uuid.uuid4(), project_id=projects[i // 3].id, name=f"s{i}", service_type="webapp",
                                mode=d.mode.value, repo_url="https://git.example/a.git", settings={})
                        for i, d in enumerate(demands)]
            session.add_all(services)
            ids = [(str(sv.id), str(sv.project_id)) for sv in services]

        async def source() -> list[Node]:
            return nodes

        placer = PlacementService(store.sessionmaker, source, policy)
        times: list[int] = []
        for d, (sid, pid) in zip(demands, ids, strict=True):
            t0 = time.perf_counter_ns()
            await placer.reserve(Demand(sid, pid, d.mode, d.memory_mb, d.millicpus))
            times.append(time.perf_counter_ns() - t0)
        await store.close()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    times.sort()
    return {"p50": times[len(times) // 2] / 1e6, "p99": times[int(len(times) * 0.99)] / 1e6,
            "max": times[-1] / 1e6, "n": len(times)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=500)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--overcommit", type=float, default=4.0)
    ap.add_argument("--db", type=int, default=0, metavar="N",
                    help="also time N decisions through PostgreSQL (embedded server; PlacementService.reserve)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    nodes = make_nodes(args.nodes, rng)
    demands = make_demands(args.services, rng)
    policy = Policy(on_demand_overcommit=args.overcommit)
    probe = Engine(nodes, policy)
    bound = lower_bound(nodes, probe, demands)

    def dominant(d: Demand) -> float:
        c = probe.charge(d)
        return max(c.memory_mb / probe._total_memory, c.millicpus / probe._total_cpu)

    decreasing = sorted(demands, key=dominant, reverse=True)

    def row(name: str, order: str, r: dict[str, float]) -> None:
        print(f"{name:<28} {order:<11} {r['used']:>5.0f} {bound / r['used']:>6.1%} {r['refused']:>7.0f} "
              f"{r['p50']:>7.1f} {r['p99']:>7.1f} {r['max']:>7.0f} {r['mean']:>7.1f} {r['cpu50']:>7.1f} "
              f"{r['cpu99']:>7.1f}")
    print(f"{args.services} services over {args.nodes} servers (seed {args.seed}, on_demand overcommit "
          f"{args.overcommit:g}x); lower bound: {bound} servers")
    print(f"{'strategy':<28} {'order':<11} {'used':>5} {'eff.':>6} {'refused':>7} {'p50 µs':>7} {'p99 µs':>7} "
          f"{'max µs':>7} {'mean µs':>7} {'cpu p50':>7} {'cpu p99':>7}")
    for name, cls in (("best fit, dominant (engine)", Engine), ("first fit", FirstFit), ("worst fit", WorstFit)):
        for order, seq in (("arrival", demands), ("decreasing", decreasing)):
            row(name, order, run(cls, nodes, seq, policy))

    # spread: every project asks for anti-affinity (3 services per project)
    spread = [Demand(d.service_id, d.project_id, d.mode, d.memory_mb, d.millicpus, spread=True) for d in demands]
    row("best fit + spread", "arrival", run(Engine, nodes, spread, policy))
    # labels: every demand asks for a region
    labelled = [Demand(d.service_id, d.project_id, d.mode, d.memory_mb, d.millicpus,
                       labels={"region": ["fsn1", "nbg1", "hel1"][i % 3]}) for i, d in enumerate(demands)]
    row("best fit + region label", "arrival", run(Engine, nodes, labelled, policy))

    # drain plan of the fullest node, on the engine state after the arrival run
    engine = Engine(nodes, policy)
    for d in demands:
        engine.place(d)
    fullest = max((n.uuid for n in nodes), key=lambda u: engine.load(u).services)
    t0 = time.perf_counter()
    plan = engine.plan_drain(fullest)
    ms = (time.perf_counter() - t0) * 1000
    print(f"drain plan of the fullest server ({engine.load(fullest).services + len(plan.moves)} services): "
          f"{len(plan.moves)} moves, {len(plan.stuck)} stuck, {ms:.1f} ms")
    if args.db:
        import asyncio

        r = asyncio.run(db_decisions(nodes, demands[: args.db], policy))
        print(f"through PostgreSQL ({r['n']:.0f} reserves, table growing to {r['n']:.0f} rows): "
              f"p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, max {r['max']:.1f} ms")


if __name__ == "__main__":
    main()
