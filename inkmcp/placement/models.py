"""What placement decides about: run servers (`Node`), what a service asks for (`Demand`), what it holds
(`Reservation`), the rules (`Policy`) and the refusal (`PlacementError`).

Units are integers inside placement: memory in MiB, CPU in millicores (`cpus * 1000`). Summing floats over
thousands of reservations drifts; a node that is "exactly full" must compare equal to its capacity on every
replica, so charges are rounded up once, when a reservation is made, and stored as integers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from inkmcp.build.plan import Mode


def millicpus(cpus: float) -> int:
    """Cores → millicores, rounded up (a reservation never rounds below what the limit allows)."""
    return math.ceil(round(cpus * 1000, 6))


@dataclass(frozen=True, slots=True)
class Node:
    """A run server as placement sees it: Coolify's view (uuid, name, usable, build server, wildcard domain)
    joined with InkMCP's configuration (capacity and labels are not in Coolify's API) and InkMCP's own record
    (draining).

    `memory_mb`/`millicpus` are what tenants may reserve on the node (the operator leaves room for the OS,
    Docker, the proxy and Sablier when configuring it). A node without configured capacity has 0 and is never
    a target (`why_not_target` says so)."""

    uuid: str
    name: str
    memory_mb: int
    millicpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    usable: bool = True
    draining: bool = False
    is_build_server: bool = False
    wildcard_base: str | None = None
    unfit: str | None = None
    """Another reason the node source has for never placing here (e.g. no wildcard domain in Coolify)."""

    def why_not_target(self) -> str | None:
        """None if new services may be placed here, else the operator-facing reason."""
        if self.is_build_server:
            return "build server"
        if self.unfit:
            return self.unfit
        if self.draining:
            return "draining"
        if not self.usable:
            return "not usable (unreachable or failed validation in Coolify)"
        if self.memory_mb <= 0 or self.millicpus <= 0:
            return "no capacity configured (INKMCP_PLACEMENT_NODES)"
        return None

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Every label the service asks for is on the node with the same value."""
        return all(self.labels.get(k) == v for k, v in labels.items())


@dataclass(frozen=True, slots=True)
class Demand:
    """What one service asks of placement: its limits (for all its processes together), its mode, the node
    labels it requires and whether its project's services should land on different nodes.

    `require_node` pins the service to one node (affinity), e.g. the server of its project's Coolify database,
    which is reachable only on that server's Docker network. Every fit rule still applies there (room, labels,
    draining): a pinned demand that does not fit on its node is refused, never placed elsewhere, and spreading
    yields to it. `require_why` names what is there, agent-safe (no server names), for the refusal's message,
    e.g. "its project's database"."""

    service_id: str
    project_id: str
    mode: Mode
    memory_mb: int
    millicpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    spread: bool = False
    require_node: str | None = None
    require_why: str = ""

    @property
    def cpus(self) -> float:
        return self.millicpus / 1000


@dataclass(frozen=True, slots=True)
class Charge:
    """What a demand takes from a node. `memory_mb`/`millicpus` count against the node's capacity;
    `hard` charges (persistent, static) also count against the room every woken on_demand service needs,
    which is what keeps persistent reservations from ever being overcommitted."""

    memory_mb: int
    millicpus: int
    hard: bool


@dataclass(frozen=True, slots=True)
class Reservation:
    """A service's place: the node and what it takes there (the charge) besides the limits it asked for."""

    service_id: str
    project_id: str
    node_uuid: str
    mode: Mode
    memory_mb: int
    millicpus: int
    charged_memory_mb: int
    charged_millicpus: int
    labels: Mapping[str, str] = field(default_factory=dict)
    spread: bool = False

    @property
    def hard(self) -> bool:
        return self.mode is not Mode.on_demand


class Policy(BaseModel):
    """The rules of a decision (from `PlacementSettings.policy()`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    on_demand_overcommit: float = Field(
        default=4.0, ge=1.0, le=64.0,
        description="on_demand services are charged limits / this ratio: they sleep most of the time (Sablier)")
    static_memory_mb: int = Field(default=64, ge=1, description="fixed reservation of a static site")
    static_millicpus: int = Field(default=100, ge=1, description="fixed CPU reservation of a static site")
    spread: bool = Field(default=False, description="spread every project's services unless a demand says so itself")

    def charge(self, mode: Mode, memory_mb: int, millicpus_: int) -> Charge:
        if mode is Mode.persistent:
            return Charge(memory_mb, millicpus_, hard=True)
        if mode is Mode.static:
            return Charge(self.static_memory_mb, self.static_millicpus, hard=True)
        r = self.on_demand_overcommit
        return Charge(math.ceil(memory_mb / r), math.ceil(millicpus_ / r), hard=False)


@dataclass(frozen=True, slots=True)
class PlacedServer:
    """The answer the Coolify provider needs: which server runs the service and the wildcard base of its URL
    (`<service>-<project>.<wildcard_base>`)."""

    server_uuid: str
    wildcard_base: str | None
    node_name: str = ""
    moved: bool = False
    """True if the service had a placement on another node (gone or draining) and was placed anew."""


class PlacementError(Exception):
    """Nothing fits. `str(e)` is safe to show an agent (no node names, no other tenants' data): what was asked,
    the largest free room and what can be done. `detail` is for operators (logs, `inkmcp doctor`): the
    nodes left out and why. The Coolify provider maps it to ProviderRefused."""

    def __init__(self, message: str, *, detail: str = "", asked: Charge | None = None,
                 largest_free: tuple[int, int] | None = None) -> None:
        self.message = message
        self.detail = detail
        self.asked = asked
        self.largest_free = largest_free
        super().__init__(message)


class PlacementBusy(Exception):
    """Other replicas kept taking the chosen room first (`PlacementSettings.reserve_attempts` decisions in a
    row). Retryable: the Coolify provider maps it to ProviderUnavailable. Safe to show an agent."""


@dataclass(frozen=True, slots=True)
class Move:
    """One step of a drain plan: move `service_id` from the draining node to `to_node`."""

    service_id: str
    project_id: str
    from_node: str
    to_node: str
    reservation: Reservation


@dataclass(frozen=True, slots=True)
class DrainPlan:
    """Moves in the order to run them (largest first, while the room is there), and the services that fit
    nowhere else (each with the agent-safe reason): the node stays draining until they are handled."""

    node_uuid: str
    moves: tuple[Move, ...]
    stuck: tuple[tuple[str, str], ...] = ()

    @property
    def complete(self) -> bool:
        return not self.stuck


class NodeSource(Protocol):
    """Where the current run servers come from (Coolify's list joined with InkMCP's config), as placement
    sees them but without `draining`, which is InkMCP's record (placement_nodes)."""

    async def __call__(self) -> list[Node]: ...
