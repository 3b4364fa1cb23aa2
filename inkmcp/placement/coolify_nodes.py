"""The run servers from Coolify, joined with InkMCP's capacity configuration: the production `NodeSource`.

One `GET /servers` gives every server with its settings (is_build_server, is_reachable, is_usable,
force_disabled, wildcard_domain), which is all placement needs; the answer is reused for
`PlacementSettings.node_cache_seconds` because every request counts against Coolify's 200 per minute and
placements come in bursts. `draining` is not Coolify's: `records.PlacementService` adds it from
`placement_nodes`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

from inkmcp.coolify.models import Server
from inkmcp.placement.models import Node
from inkmcp.placement.settings import PlacementSettings


class ServerLister(Protocol):
    async def list_servers(self) -> list[Server]: ...


def wildcard_base(wildcard_domain: str | None) -> str | None:
    """Coolify stores the wildcard domain as a URL (`https://s1.apps.example.com`); the provider wants the host
    (the same rule as the Coolify provider's own helper)."""
    if not wildcard_domain:
        return None
    raw = wildcard_domain.strip()
    host = urlsplit(raw if "://" in raw else f"https://{raw}").hostname
    return host.lstrip("*.") if host else None


def node_of(server: Server, settings: PlacementSettings) -> Node:
    cap = settings.capacity_of(server.uuid, server.name)
    base = wildcard_base(server.settings.wildcard_domain)
    return Node(uuid=server.uuid, name=server.name or server.uuid,
                memory_mb=cap.memory_mb if cap else 0, millicpus=cap.millicpus if cap else 0,
                labels=dict(cap.labels) if cap else {}, usable=server.usable,
                is_build_server=server.settings.is_build_server,
                wildcard_base=base,
                unfit=None if base else "no wildcard domain in Coolify (Servers → the server → General → Wildcard "
                "Domain): its services would have no URL")


class CoolifyNodeSource:
    """`await source()` → the current nodes (cached briefly; one listing at a time)."""

    def __init__(self, client: ServerLister, settings: PlacementSettings, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._settings = settings
        self._clock = clock
        self._cached: tuple[float, list[Node]] | None = None
        self._lock = asyncio.Lock()

    def invalidate(self) -> None:
        self._cached = None

    async def __call__(self) -> list[Node]:
        async with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._settings.node_cache_seconds:
                return list(self._cached[1])
            servers = await self._client.list_servers()
            nodes = [node_of(s, self._settings) for s in servers]
            self._cached = (now, nodes)
            return list(nodes)
