"""For tests that run placement over the Coolify stand-in: its servers' capacity facts as PlacementSettings.

Real Coolify has no capacity field, so production reads INKMCP_PLACEMENT_NODES; the stand-in keeps the facts on
each server object (`NodeServer.capacity`: cpus, memory_mb, labels), and this turns them into the same settings
an operator would write, keyed by server name.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from inkmcp.placement.settings import NodeCapacity, PlacementSettings


def placement_settings_for(servers: Iterable[Any], **settings: Any) -> PlacementSettings:
    """`servers`: stand-in NodeServer objects (`.name`, `.capacity`); servers without memory_mb/cpus facts are
    left out (not targets, as an unconfigured server in production). Extra keyword arguments go to
    PlacementSettings (e.g. on_demand_overcommit)."""
    nodes: dict[str, NodeCapacity] = {}
    for server in servers:
        facts = dict(getattr(server, "capacity", None) or {})
        if "memory_mb" in facts and "cpus" in facts:
            nodes[server.name] = NodeCapacity(memory_mb=int(facts["memory_mb"]), cpus=float(facts["cpus"]),
                                              labels=dict(facts.get("labels") or {}))
    return PlacementSettings(nodes=nodes, **settings)
