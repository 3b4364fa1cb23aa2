"""Typed configuration of the muscle plane: the dedicated run servers that host tenant containers.

Run servers are existing Hetzner dedicated machines, given by IP. Adding or removing one is an edit of
`runServers` in `Pulumi.<stack>.yaml`; each entry becomes one `RunServer` component (SSH configuration,
Coolify registration, `*.s<index>.apps.<domain>` DNS). Everything checkable is checked before anything is
created: a server listed twice would be configured twice and fight over one DNS name; a private IP outside
the vSwitch subnet would be unreachable from Coolify; a Docker pool inside the platform's networks would
route tenant replies into a bridge.

Reads two stacks: the network stack (contract in `inkmcp.infra.factory_config`, `NetworkStackOutputs`) and
the factory stack (`FactoryStackOutputs` below: what `FactoryPlane` exports).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import pulumi
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inkmcp.infra.factory_config import (
    NAME_RE,
    ConfigModel,
    DockerPool,
    NetworkStackOutputs,
    check_openssh_key,
    named_pools,
    read_model,
    secret,
)
from inkmcp.infra.netcheck import require_disjoint

VSWITCH_MTU = 1400
"""Hetzner vSwitch VLANs carry at most 1400-byte packets (ROBOT-VSWITCH.md §3)."""

LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


class RunServer(ConfigModel):
    """One dedicated run server. `index` N gives it the wildcard `*.sN.apps.<domain>`."""

    name: str
    public_ip: ipaddress.IPv4Address
    private_ip: ipaddress.IPv4Address = Field(description="its address on the vSwitch VLAN")
    index: int = Field(ge=1, le=999)
    interface: str = Field(pattern=r"^[a-z0-9]{1,15}$", description="physical NIC carrying the VLAN, e.g. enp0s31f6")
    labels: dict[str, str] = Field(default_factory=dict)
    ssh_port: int = Field(default=22, ge=1, le=65535)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError(f"run server name {v!r} must be a lowercase DNS label")
        return v

    @field_validator("labels")
    @classmethod
    def _labels(cls, v: dict[str, str]) -> dict[str, str]:
        for key, value in v.items():
            if not LABEL_RE.match(key) or (value and not LABEL_RE.match(value)):
                raise ValueError(f"label {key}={value}: keys and values are lowercase [a-z0-9._-], at most 63 chars")
        return v

    def wildcard(self, apps_subdomain: str) -> str:
        """Record name relative to the zone, e.g. `*.s1.apps`."""
        return f"*.s{self.index}.{apps_subdomain}"


class FactoryStackOutputs(BaseModel):
    """What the factory stack exports and the muscle stack needs."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    master_ipv4: str
    master_private_ip: str
    registry_endpoint: str

    @classmethod
    def parse(cls, raw: Any) -> FactoryStackOutputs:
        try:
            return cls.model_validate(dict(raw))
        except (TypeError, ValueError) as e:
            raise ValueError(f"factory stack outputs lack what the muscle stack needs: {e}") from e


class MuscleConfig(ConfigModel):
    """The muscle plane's configuration (`Pulumi.<stack>.yaml`, project `inkmcp-muscle`)."""

    network_stack: str
    factory_stack: str
    apps_subdomain: str = "apps"
    run_servers: list[RunServer] = Field(default_factory=list)
    docker_address_pools: list[DockerPool] = [DockerPool(base="172.30.0.0/16", size=24)]
    docker_mtu: int = Field(default=VSWITCH_MTU, ge=1280, le=VSWITCH_MTU,
                            description="MTU of Docker networks; must fit inside the vSwitch's 1400")
    coolify_private_key_uuid: str = Field(description="Coolify key (Keys & Tokens) used to reach run servers")
    coolify_public_key: str = Field(description="its public half, installed in root's authorized_keys")
    sablier_image: str = "sablierapp/sablier:1.16.2"
    sablier_plugin_version: str = "v1.3.0"
    dns_ttl: int = Field(default=300, ge=60, le=86400)
    hardening_apply: str = Field(default="bash /usr/local/lib/inkmcp/harden.sh apply",
                                 description="command that applies the uploaded hardening/ files on the node")
    hardening: dict[str, Any] = Field(default_factory=dict, description="extra parameters for the renderer")

    @field_validator("coolify_public_key")
    @classmethod
    def _key(cls, v: str) -> str:
        return check_openssh_key(v)

    @field_validator("apps_subdomain")
    @classmethod
    def _sub(cls, v: str) -> str:
        if not all(NAME_RE.match(part) for part in v.split(".")):
            raise ValueError("apps_subdomain must be dot-separated lowercase DNS labels, e.g. 'apps'")
        return v

    @field_validator("run_servers")
    @classmethod
    def _once_each(cls, servers: list[RunServer]) -> list[RunServer]:
        for attr in ("name", "public_ip", "private_ip", "index"):
            seen: dict[object, int] = {}
            for i, s in enumerate(servers):
                key = getattr(s, attr)
                if key in seen:
                    raise ValueError(
                        f"run server listed twice: run_servers[{seen[key]}] and run_servers[{i}] share {attr} {key}")
                seen[key] = i
        return servers

    @model_validator(mode="after")
    def _pools(self) -> MuscleConfig:
        pools = named_pools(self.docker_address_pools)
        require_disjoint(pools)
        for s in self.run_servers:
            for ip_name in ("public_ip", "private_ip"):
                ip = ipaddress.ip_network(getattr(s, ip_name))
                for pool in pools:
                    require_disjoint([pool, (f"{s.name}.{ip_name}", ip)])
        return self

    def check_against(self, net: NetworkStackOutputs) -> None:
        """Cross-stack checks, run inside the gate before any resource is registered."""
        for pool in named_pools(self.docker_address_pools):
            for platform in [*net.platform_networks(), ("vswitch_subnet_cidr", net.vswitch_subnet)]:
                require_disjoint([pool, platform])
        if self.run_servers and not net.zone_name:
            raise ValueError("the network stack exports no zone_name: run servers need a DNS zone for *.sN.apps")
        subnet = net.vswitch_subnet
        gateway = net.vswitch_gateway_ip
        for s in self.run_servers:
            if s.private_ip not in subnet or s.private_ip in (subnet.network_address, subnet.broadcast_address):
                raise ValueError(f"run server {s.name}: private_ip {s.private_ip} lies outside "
                                 f"vswitch_subnet_cidr ({subnet}) or is its network/broadcast address")
            if s.private_ip == gateway:
                raise ValueError(f"run server {s.name}: private_ip {s.private_ip} is the vSwitch subnet's gateway")


@dataclass(frozen=True)
class MuscleSecrets:
    ssh_private_key: pulumi.Output[str]
    """Operator key: SSH into run servers and into the Coolify master (registration runs there)."""
    coolify_api_token: pulumi.Output[str]


def load_muscle(cfg: pulumi.Config) -> tuple[MuscleConfig, MuscleSecrets]:
    conf = read_model(cfg, MuscleConfig)
    key = secret(cfg, "sshPrivateKey", "INKMCP_SSH_PRIVATE_KEY")
    token = secret(cfg, "coolifyApiToken", "INKMCP_COOLIFY_API_TOKEN")
    assert key is not None and token is not None
    return conf, MuscleSecrets(ssh_private_key=key, coolify_api_token=token)
