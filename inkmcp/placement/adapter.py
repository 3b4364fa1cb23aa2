"""Placement as the Coolify compute provider calls it (`provider.Place`: `await place(key, mode, resources)`).

The provider records the answer in the service's `service_ref` and reuses it on every redeploy; placement's own
row (records.py) is what makes the choice sticky and the reservation exact for every replica. Errors become the
compute contract's: nothing fits → ProviderRefused (an operator must add capacity, or the tenant lower its
limits: the message says both, and names no server), busy → ProviderUnavailable (retry).
"""

from __future__ import annotations

from inkmcp.build.plan import Mode
from inkmcp.placement.models import PlacementBusy, PlacementError
from inkmcp.placement.records import PlacementService
from inkmcp.providers.compute.base import ProviderRefused, ProviderUnavailable, Resources, ServiceKey
from inkmcp.providers.compute.coolify.mapping import PlacedServer


class CoolifyPlacement:
    """`CoolifyComputeProvider(place=CoolifyPlacement(service))`; `release(key)` belongs in the provider's
    `remove` (the row also goes when core deletes the service: ON DELETE CASCADE)."""

    def __init__(self, service: PlacementService, *, busy_retry_after: float = 1.0) -> None:
        self.service = service
        self.busy_retry_after = busy_retry_after

    async def __call__(self, key: ServiceKey, mode: Mode, resources: Resources, *, processes: int = 1) -> PlacedServer:
        """`resources` are one application's limits; pass `processes` (the service's process count, one Coolify
        application each) so the reservation covers all of them."""
        try:
            placed = await self.service.place(key, mode, resources, processes=processes)
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
