"""Placement as the Coolify compute provider calls it (`provider.Place`: `await place(key, mode, resources)`).

The provider records the answer in the service's `service_ref` and reuses it on every redeploy; placement's own
row (records.py) is what makes the choice sticky and the reservation exact for every replica. Errors become the
compute contract's: nothing fits → ProviderRefused (an operator must add capacity, or the tenant lower its
limits: the message says both, and names no server), busy → ProviderUnavailable (retry).

Affinity with the project's database: a Coolify-managed Postgres is reachable only on its run server's Docker
network (its host is the database uuid there), so a service of that project placed on another server would get
a DATABASE_URL that does not resolve. Before placing, the adapter asks where the project's Coolify database
lives (`providers.database.coolify.database_server_of`, the server the database provider recorded before it
created the database) and requires that node (`Demand.require_node`): the service goes there or is refused
with the reason (that server is full, draining, lacks a label the service asks for); it is never placed
elsewhere. A project without a Coolify database (none yet, Neon, bring-your-own, self-hosted) is placed freely.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from inkmcp.build.plan import Mode
from inkmcp.placement.models import PlacementBusy, PlacementError
from inkmcp.placement.records import Pin, PlacementService
from inkmcp.providers.compute.base import ProviderRefused, ProviderUnavailable, Resources, ServiceKey
from inkmcp.providers.compute.coolify.mapping import PlacedServer
from inkmcp.providers.database.coolify import REF_KEY as DATABASE_REF_KEY
from inkmcp.store.statements import statement_pool

DATABASE_WHY = "its project's database (reachable only on that server's network)"
"""How a refusal names what the service is pinned to (agent-safe: no server names)."""

_DATABASE_NODE_SQL = "SELECT provider_ref -> %s ->> 'server_uuid' FROM projects WHERE id = %s"
"""`database_server_of` as one prepared statement: the server the project's Coolify database is on, or NULL."""

DatabaseNode = Callable[[str], Awaitable[str | None]]
"""`await database_node(project_id)` → the uuid of the server holding the project's database, or None."""


class CoolifyPlacement:
    """`CoolifyComputeProvider(place=CoolifyPlacement(service))`; `release(key)` belongs in the provider's
    `remove` (the row also goes when core deletes the service: ON DELETE CASCADE)."""

    def __init__(self, service: PlacementService, *, busy_retry_after: float = 1.0,
                 database_node: DatabaseNode | None = None) -> None:
        """`database_node`: where a project's database lives (default: the Coolify database provider's record in
        the same control-plane store, `database_server_of`)."""
        self.service = service
        self.busy_retry_after = busy_retry_after
        self.database_node: DatabaseNode = database_node or self._coolify_database_node

    async def _coolify_database_node(self, project_id: str) -> str | None:
        try:
            pid = uuid.UUID(project_id)
        except ValueError:  # not a project row of this control plane (a contract test's key): nothing recorded
            return None
        # `database_server_of` as one prepared statement on the statement pool (store.statements): it runs before
        # every first placement, where an ORM session costs a millisecond more of this process's CPU
        rows = await statement_pool(self.service.sessions).fetch(_DATABASE_NODE_SQL, (DATABASE_REF_KEY, pid))
        return rows[0][0] if rows and rows[0][0] else None

    @staticmethod
    def _pin(project_id: str) -> Pin | None:
        """--- overhead8: `_coolify_database_node`'s read as a statement of placement's first round trip (records.Pin):
        one round trip fewer before every first placement. None for a key that is no project row of this store."""
        try:
            pid = uuid.UUID(project_id)
        except ValueError:
            return None
        return Pin(_DATABASE_NODE_SQL, (DATABASE_REF_KEY, pid), DATABASE_WHY)

    async def __call__(self, key: ServiceKey, mode: Mode, resources: Resources, *, processes: int = 1) -> PlacedServer:
        """`resources` are one application's limits; pass `processes` (the service's process count, one Coolify
        application each) so the reservation covers all of them."""
        in_reserve = self.database_node == self._coolify_database_node  # --- overhead8: the default read, in reserve's
        pin = self._pin(key.project_id) if in_reserve else None
        node = None if in_reserve else await self.database_node(key.project_id)
        try:
            placed = await self.service.place(key, mode, resources, processes=processes, require_node=node,
                                              require_why=DATABASE_WHY if node else "", pin=pin)
        except PlacementError as e:
            raise ProviderRefused(str(e)) from None
        except PlacementBusy as e:
            raise ProviderUnavailable(str(e), retry_after=self.busy_retry_after) from None
        if not placed.wildcard_base:  # the Coolify node source never offers such a node; a custom source might
            raise ProviderRefused("the chosen run server has no wildcard domain, so the service would have no URL; "
                                  "the operator must set one in Coolify")
        return PlacedServer(uuid=placed.server_uuid, wildcard_base=placed.wildcard_base)

    async def release(self, key: ServiceKey) -> None:
        await self.service.release(key)
