"""Placement settings (`INKMCP_PLACEMENT_*`): the overcommit rules and each run server's capacity and labels.

Why capacity is configured here: Coolify's API says which servers exist, whether they are usable, whether one
is the build server and its wildcard domain, but not how much memory and CPU a tenant may reserve there
(`GET /servers` has no such field, and the machine's total is not what tenants may take: the OS, Docker, the
proxy and Sablier need their share). So the operator states it per server, by Coolify server name or uuid:

    INKMCP_PLACEMENT_NODES='{"run-1": {"memory_mb": 14336, "cpus": 7, "labels": {"region": "fsn1"}},
                             "run-2": {"memory_mb": 30720, "cpus": 15, "labels": {"region": "nbg1", "tier": "big"}}}'

A server Coolify lists but this map does not name is not a target (placement errors and `inkmcp doctor`
name it) unless `INKMCP_PLACEMENT_DEFAULT_NODE` gives a capacity for all unnamed servers. The same settings
must be given to every replica (they are part of the shared configuration, like the database URL).

Wiring (the coordinator's composition root, inkmcp/app.py, when compute is Coolify):

    settings = PlacementSettings()
    nodes = CoolifyNodeSource(client, settings)            # inkmcp.placement.coolify_nodes
    placer = PlacementService(store.sessionmaker, nodes, settings.policy())  # inkmcp.placement.records
    # the Coolify provider calls `await placer.place(key, mode, resources)` and `await placer.release(key)`
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.placement.models import Policy, millicpus


class NodeCapacity(BaseModel):
    """What tenants may reserve on one run server, and its labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    memory_mb: int = Field(ge=64, description="memory tenants may reserve, in MiB (leave the OS and Docker theirs)")
    cpus: float = Field(gt=0, le=1024, description="CPU cores tenants may reserve")
    labels: dict[str, str] = Field(default_factory=dict, description="e.g. region=fsn1, tier=big")

    @property
    def millicpus(self) -> int:
        return millicpus(self.cpus)


class PlacementSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_PLACEMENT_", extra="ignore")

    on_demand_overcommit: float = Field(
        default=4.0, ge=1.0, le=64.0,
        description="on_demand services reserve limits / this ratio (they sleep most of the time); 1 = no overcommit",
    )  # fmt: skip
    static_memory_mb: int = Field(default=64, ge=1, description="fixed memory reservation of a static site, MiB")
    static_cpus: float = Field(default=0.1, gt=0, le=16, description="fixed CPU reservation of a static site")
    spread: bool = Field(
        default=False,
        description="spread every project's services over different servers; otherwise only services that ask",
    )
    nodes: dict[str, NodeCapacity] = Field(
        default_factory=dict,
        description="capacity and labels per run server, keyed by Coolify server name or uuid (JSON)",
    )
    default_node: NodeCapacity | None = Field(
        default=None, description="capacity and labels of every server `nodes` does not name; unset = not a target")
    node_cache_seconds: float = Field(
        default=15.0, ge=0, le=600,
        description="how long the server list from Coolify is reused (each listing costs one of 200 requests/min)",
    )  # fmt: skip
    reserve_attempts: int = Field(
        default=8, ge=1, le=100,
        description="decisions tried when other replicas take the chosen room first, before giving up as busy",
    )  # fmt: skip

    @field_validator("nodes")
    @classmethod
    def _keys(cls, v: dict[str, NodeCapacity]) -> dict[str, NodeCapacity]:
        for key in v:
            if not key.strip():
                raise ValueError("INKMCP_PLACEMENT_NODES: a key is empty; use the Coolify server's name or uuid")
        return v

    def policy(self) -> Policy:
        return Policy(on_demand_overcommit=self.on_demand_overcommit, static_memory_mb=self.static_memory_mb,
                      static_millicpus=millicpus(self.static_cpus), spread=self.spread)

    def capacity_of(self, uuid: str, name: str | None) -> NodeCapacity | None:
        """The configured capacity of a server: by uuid first (names can change), then by name, then default."""
        got = self.nodes.get(uuid)
        if got is None and name:
            got = self.nodes.get(name)
        return got or self.default_node
