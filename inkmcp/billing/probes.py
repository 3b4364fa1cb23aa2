"""Which on_demand services are awake, for metering, from any compute provider.

The local provider knows it in memory (`awake_services()`: processes running). Other providers (Coolify) report a
service's state through the contract's `runtime()`: this probe asks it for the live on_demand services (at most
`limit` per sample, a few at a time, so a slow remote API bounds the sample instead of stalling it) and counts
`running` and `starting` as awake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.providers.compute.base import RuntimeState, ServiceKey
from inkmcp.store.refs import ref_of

ON_DEMAND_LIVE = text("""
SELECT sv.id, sv.name, sv.provider_ref, p.id, p.name, p.provider_ref, p.account_id
FROM services sv JOIN projects p ON p.id = sv.project_id
WHERE sv.mode = 'on_demand' AND sv.live_deployment_id IS NOT NULL ORDER BY sv.id LIMIT :limit
""")
AWAKE = (RuntimeState.running, RuntimeState.starting)


def awake_probe(compute: Any, sessions: async_sessionmaker[AsyncSession], *, limit: int = 500,
                concurrency: int = 8) -> Callable[[], Awaitable[Iterable[str]]]:
    local = getattr(compute, "awake_services", None)
    if local is not None:
        async def from_memory() -> Iterable[str]:
            return local()

        return from_memory

    async def from_runtime() -> Iterable[str]:
        async with sessions() as s:
            rows = (await s.execute(ON_DEMAND_LIVE, {"limit": limit})).all()
        gate = asyncio.Semaphore(concurrency)

        async def state(row: Any) -> str | None:
            key = ServiceKey(account_id=str(row[6]), project_id=str(row[3]), service_id=str(row[0]),
                             project_name=row[4], service_name=row[1], project_ref=ref_of(row[5], compute.name),
                             service_ref=ref_of(row[2], compute.name))
            async with gate:
                try:
                    runtime = await compute.runtime(key)
                except Exception:
                    return None  # unknown this time: not charged (in the user's favour)
            return str(row[0]) if runtime.state in AWAKE else None

        return [sid for sid in await asyncio.gather(*(state(r) for r in rows)) if sid is not None]

    return from_runtime
