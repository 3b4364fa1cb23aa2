"""One "replica" for the concurrency test: its own process, its own connection pool and engine, placing a list
of services (three at a time) against the shared database, started together with the others on a barrier."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from inkmcp.build.plan import Mode
from inkmcp.placement.models import Demand, Node, PlacementBusy, PlacementError, Policy
from inkmcp.placement.records import PlacementService
from inkmcp.store.db import open_store


def run(url: str, node_specs: list[dict[str, Any]], services: list[tuple[str, str]], memory_mb: int, seed: int,
        barrier: Any, out: Any) -> None:
    out.put(asyncio.run(_run(url, node_specs, services, memory_mb, seed, barrier)))


async def _run(url: str, node_specs: list[dict[str, Any]], services: list[tuple[str, str]], memory_mb: int,
               seed: int, barrier: Any) -> tuple[dict[str, str | None], int]:
    store = await open_store(url, pool_size=3, max_overflow=0)
    nodes = [Node(**spec) for spec in node_specs]

    async def source() -> list[Node]:
        return list(nodes)

    placer = PlacementService(store.sessionmaker, source, Policy(), attempts=100)
    order = list(services)
    random.Random(seed).shuffle(order)
    results: dict[str, str | None] = {}

    async def worker(chunk: list[tuple[str, str]]) -> None:
        for sid, pid in chunk:
            try:
                placed = await placer.reserve(Demand(sid, pid, Mode.persistent, memory_mb, 250))
                results[sid] = placed.server_uuid
            except PlacementError:
                results[sid] = None
            except PlacementBusy:
                results[sid] = "busy"

    await asyncio.to_thread(barrier.wait, 60)
    await asyncio.gather(*(worker(order[i::3]) for i in range(3)))
    await store.close()
    return results, placer.retries
