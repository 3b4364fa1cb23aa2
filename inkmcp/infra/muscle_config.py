"""Typed configuration of the muscle plane: the dedicated run servers that host tenant containers.

Run servers are existing Hetzner dedicated machines, given by IP. Adding or removing one is an edit of
`runServers` in `Pulumi.<stack>.yaml`; each entry becomes one `RunServer` component (SSH configuration,
Coolify registration, `*.s<index>.apps.<domain>` DNS). Everything checkable is checked before anything is
created: a server listed twice would be configured twice and fight over one DNS name; a private IP outside
the vSwitch subnet would be unreachable from Coolify; a Docker pool inside the platform's networks would
route tenant replies into a bridge.

Reads two stacks: the network stack (contract in `inkmcp.infra.factory_config`, `NetworkStackOutputs`) and
the factory stack (`FactoryStackOutputs` below: what `FactoryPlane` exports).

Host hardening: `host_params()` turns this config plus the network stack's outputs into the renderer's
`HostParams` (`inkmcp.nodes.render`), the same model `inkmcp nodes harden --params` takes, so the stack and
the CLI converge a node to the same files and commands.

gVisor platform entries (`platformContainers`, runbooks/gvisor-decision.md §4.3): the runtime selector runs a
container under runc only when its name matches one of these entries AND the whole profile holds (pinned
image, exact mounts, allowed command, no tenant labels); a container under a reserved name that fails is
refused, everything else runs under runsc. Each entry names a standard profile (`proxy`: Coolify's Traefik,
`sablier`: the Sablier server this stack starts, `helper`: Coolify's deploy helper, optional) and pins its
images by **repo digest** (`traefik:v3.6.23@sha256:…`; keep the old digest listed until every node runs the
new one). The image IDs the selector compares are resolved **on each run server** from those digests
(`inkmcp.nodes.render.resolve_pinned_images`: `docker pull` + `docker image inspect`), never copied from
another host: the ID depends on the node's image store (Docker 29 fresh installs use the containerd store,
review #12). `host_params(..., resolved=...)` takes what the resolver returned; without it the entries are
rendered unresolved and their reserved names are refused (fail closed) until the pin step runs.
Coolify's proxy compose uses the moving tag `traefik:v3.6`; the proxy is pinned to the configured digest through
Coolify's API (§4.5), so a tag move can no longer produce an unknown image. Sentinel gets no entry: it cannot
work on these nodes (review #9), switch it off in Coolify.

Membership (review #11): every run server must be one of the network stack's `dedicated_servers` (attached to
the vSwitch) with `privateIp` equal to its `vswitch_ip`; checked in `check_against` before anything exists.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inkmcp.coolify.client import check_api_url
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
from inkmcp.nodes.render import (
    HETZNER_RESOLVERS,
    SABLIER_PLUGIN_MODULE,
    STANDARD_PROFILES,
    AddressPool,
    EgressEndpoint,
    GvisorParams,
    HostParams,
    PinnedImage,
    PlatformProfile,
    check_repo_digest,
)

VSWITCH_MTU = 1400
"""Hetzner vSwitch VLANs carry at most 1400-byte packets (ROBOT-VSWITCH.md §3)."""

LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")

REQUIRED_PLATFORM = ("proxy", "sablier")
"""Platform entries every run server needs (they run under runc with the Docker socket): without them the
selector refuses the proxy (the node serves nothing) and Sablier (apps never scale to zero)."""

# HostParams fields the stack derives itself; `hardening` may set any other field.
STACK_OWNED = {
    "root": "always / on a run server",
    "firewall": "always applied on a run server",
    "services": "always managed on a run server",
    "private_cidrs": "the network stack's networks (network_cidr, vswitch_subnet_cidr)",
    "address_pools": "dockerAddressPools",
    "mtu": "dockerMtu",
    "runtimes": "the gVisor selector (platformContainers, runscFlags)",
    "default_runtime": "the gVisor selector",
    "gvisor": "platformContainers, runscPath, runscFlags",
    "dns_resolvers": "dnsResolvers",
    "ssh_allow_users": "sshAllowUsers",
    "egress_allow": "egressAllow",
    "host_input_tcp_ports": "hostInputTcpPorts",
}


class PlatformContainerSpec(ConfigModel):
    """One gVisor platform entry: a standard profile (`inkmcp.nodes.render.STANDARD_PROFILES`) and the images
    it admits, pinned by repo digest (see the module docstring for how they become image IDs on the node).

        - profile: proxy
          images: ["traefik:v3.6.23@sha256:<64 hex>"]
    """

    profile: Literal["proxy", "sablier", "helper"]
    images: list[str] = Field(min_length=1, description="repo digests name[:tag]@sha256:<64 hex>")
    home: str = Field(default="/root", description="helper only: $HOME of the user Coolify connects as")
    plugin_modules: list[str] = Field(
        default_factory=lambda: [SABLIER_PLUGIN_MODULE],
        description="proxy only: Traefik plugin modules the proxy may load (the Sablier plugin)")

    @model_validator(mode="after")
    def _pinned(self) -> PlatformContainerSpec:
        for ref in self.images:
            check_repo_digest(ref, f"platformContainers entry {self.profile!r}")
        if len(set(self.images)) != len(self.images):
            raise ValueError(f"platformContainers entry {self.profile!r} lists an image twice: {self.images}")
        if self.profile != "helper" and self.home != "/root":
            raise ValueError(f"platformContainers entry {self.profile!r}: home is only for the helper profile")
        if self.profile != "proxy" and self.plugin_modules != [SABLIER_PLUGIN_MODULE]:
            raise ValueError(f"platformContainers entry {self.profile!r}: pluginModules is only for the proxy profile")
        return self

    def to_render(self, resolved: Mapping[str, PinnedImage] | None = None) -> PlatformProfile:
        """The renderer's profile; each image as resolved on the node, or by its digest only (admits nothing)."""
        images = [(resolved or {}).get(ref) or PinnedImage(ref=ref) for ref in self.images]
        if self.profile == "proxy":
            return STANDARD_PROFILES["proxy"](images, plugin_modules=tuple(self.plugin_modules))
        if self.profile == "helper":
            return STANDARD_PROFILES["helper"](images, home=self.home)
        return STANDARD_PROFILES["sablier"](images)


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
    registry_ca_cert: str | None = None
    """The registry's private CA (PEM); None from a factory stack that predates registry TLS (the muscle stack
    then refuses to configure run servers and says to `pulumi up` the factory stack first)."""

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
    coolify_api_url: str | None = Field(
        default=None,
        description="Coolify's API for registration, as seen from where `pulumi up` runs: https://<instance "
                    "domain>, or http only to a private address (an SSH tunnel's http://127.0.0.1:8000); default "
                    "http://<master_private_ip>:8000 (review #14: never http to a public address)")
    sablier_plugin_version: str = "v1.3.0"
    dns_ttl: int = Field(default=300, ge=60, le=86400)
    platform_containers: list[PlatformContainerSpec] = Field(
        default_factory=list,
        description="gVisor platform entries (profile + images pinned by repo digest): what runs under runc")
    runsc_path: str = Field(
        default=GvisorParams().runsc_path,
        description="where runsc is on the run servers: Debian's package installs /usr/bin/runsc, the gVisor "
                    "release channel /usr/bin/runsc too, a manual install usually /usr/local/bin/runsc (review #18)")
    runsc_flags: list[str] = Field(
        default_factory=lambda: list(GvisorParams().runsc_flags),
        description="runsc global flags for tenant sandboxes (add --platform=kvm on bare metal with /dev/kvm)")
    dns_resolvers: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address(a) for a in HETZNER_RESOLVERS], min_length=1,
        description="resolvers containers may reach on port 53 (DOCKER-USER)")
    ssh_allow_users: list[str] = Field(default_factory=lambda: ["root"],
                                       description="sshd AllowUsers; must keep root (Pulumi and Coolify use it)")
    egress_allow: list[EgressEndpoint] = Field(
        default_factory=list,
        description="private endpoints tenants may reach despite the private-range rejects, one host and one TCP "
                    "port each, e.g. ['10.0.1.13:5432'] (EgressEndpoint: the renderer's own validation)")
    host_input_tcp_ports: list[int] = Field(
        default_factory=lambda: list(HostParams().host_input_tcp_ports),
        description="ports containers may open on the run server itself (INKMCP-INPUT): the proxy's 80/443 for "
                    "hairpin requests; never 22")
    hardening: dict[str, Any] = Field(
        default_factory=dict,
        description="further HostParams fields (inkmcp.nodes.render), e.g. auto_reboot, log_max_size; "
                    "fields the stack derives are refused")

    @field_validator("hardening")
    @classmethod
    def _hardening_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key in v:
            if key in STACK_OWNED:
                raise ValueError(f"hardening.{key} is set by the muscle stack from {STACK_OWNED[key]}")
            if key not in HostParams.model_fields:
                raise ValueError(f"hardening.{key} is not a HostParams field (inkmcp.nodes.render); "
                                 f"known: {', '.join(sorted(set(HostParams.model_fields) - set(STACK_OWNED)))}")
        return v

    @field_validator("host_input_tcp_ports")
    @classmethod
    def _input_ports(cls, v: list[int]) -> list[int]:
        # The renderer's own check, so the stack refuses exactly what `nodes harden` refuses.
        return HostParams._input_ports(v)

    @field_validator("coolify_api_url")
    @classmethod
    def _api_url(cls, v: str | None) -> str | None:
        return None if v is None else check_api_url(v, "coolifyApiUrl")

    @field_validator("ssh_allow_users")
    @classmethod
    def _root_stays(cls, v: list[str]) -> list[str]:
        if "root" not in v:
            raise ValueError("sshAllowUsers must include root: Pulumi and Coolify reach run servers as root")
        return v

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
    def _platform(self) -> MuscleConfig:
        profiles = [p.profile for p in self.platform_containers]
        twice = sorted({p for p in profiles if profiles.count(p) > 1})
        if twice:
            raise ValueError(f"platformContainers lists {', '.join(twice)} twice; put all its images in one entry")
        if self.run_servers:
            missing = [n for n in REQUIRED_PLATFORM if n not in profiles]
            if missing:
                raise ValueError(
                    f"platformContainers lacks {', '.join(missing)}: without a pinned image the gVisor selector "
                    "refuses these platform containers (they mount the Docker socket); add e.g. "
                    "{profile: proxy, images: ['traefik:v3.6.23@sha256:…']} (module docstring of "
                    "inkmcp.infra.muscle_config)")
        return self

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
            self._check_attached(s, net)
            try:
                host_params(self, s, net)
            except ValueError as e:  # pydantic's ValidationError is one
                raise ValueError(f"run server {s.name}: hardening parameters rejected: {e}") from e


    @staticmethod
    def _check_attached(s: RunServer, net: NetworkStackOutputs) -> None:
        """A run server that the network stack did not attach to the vSwitch cannot reach the master: refuse it
        here, naming what the network stack has, instead of a registration that times out (review #11)."""
        if net.dedicated_servers is None:
            raise ValueError("the network stack exports no dedicated_servers: run `pulumi up` in stacks/network "
                             "(current code exports them) so run servers can be checked against the vSwitch")
        attached = {a.vswitch_ip: a for a in net.dedicated_servers if a.vswitch_ip is not None}
        have = ", ".join(f"{a.name or a.number}={a.vswitch_ip}" for a in attached.values()) or "none with a vswitch_ip"
        match = attached.get(s.private_ip)
        if match is None:
            raise ValueError(
                f"run server {s.name}: privateIp {s.private_ip} is no vswitch_ip of the network stack's dedicated "
                f"servers ({have}); add the server (Robot number, vswitch_ip {s.private_ip}) to "
                "network.vswitch.servers or fix privateIp")
        if match.name is not None and match.name != s.name:
            raise ValueError(
                f"run server {s.name}: privateIp {s.private_ip} belongs to dedicated server {match.name!r} "
                f"(Robot #{match.number}) in the network stack; use the same name in both stacks")


def platform_cidrs(net: NetworkStackOutputs) -> list[ipaddress.IPv4Network]:
    """What a tenant container must never reach: the Cloud Network and the vSwitch subnet, collapsed (the
    vSwitch subnet normally lies inside the Cloud Network; overlapping entries would be redundant rules)."""
    nets = [n for _, n in net.platform_networks()] + [net.vswitch_subnet]
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    return list(ipaddress.collapse_addresses(v4))


def host_params(conf: MuscleConfig, node: RunServer, net: NetworkStackOutputs, root: str = "/",
                resolved: Mapping[str, PinnedImage] | None = None) -> HostParams:
    """The renderer's parameters for one run server (validated by HostParams; no secrets). `root` other
    than / stages the same files under a directory (tests).

    Platform images: the stack renders them by repo digest only (no `resolved`), and the node completes them
    itself: the plan's pin command (hardening/scripts/inkmcp-pin-platform, run by the harden step right after the
    selector's install, and again with `--require` by the Sablier step) pulls each digest on the node, resolves
    its image ID, entrypoint and cmd from the node's own daemon and writes them into the installed selector
    config (runbooks/gvisor-decision.md §4.1, §4.5 (3)). Resolving here instead would need the node's daemon at
    preview time and would bake one node's IDs into every node's plan (review #12). `nodes check` does not count
    those node-filled fields as drift, and reports an image the node does not admit as pinned.
    `resolved` (`inkmcp.nodes.render.resolve_pinned_images` output) is for callers that hold the node's daemon
    themselves (a box, tests): the rendered config then carries those IDs already and the pin only verifies them."""
    del node  # nothing node-specific yet; kept so per-node parameters need no signature change
    return HostParams(
        **conf.hardening,
        root=root,
        private_cidrs=platform_cidrs(net),
        address_pools=[AddressPool(base=ipaddress.IPv4Network(p.base), size=p.size)
                       for p in conf.docker_address_pools],
        mtu=conf.docker_mtu,
        dns_resolvers=list(conf.dns_resolvers),
        ssh_allow_users=list(conf.ssh_allow_users),
        egress_allow=list(conf.egress_allow),
        host_input_tcp_ports=list(conf.host_input_tcp_ports),
        gvisor=GvisorParams(platform=[p.to_render(resolved) for p in conf.platform_containers],
                            runsc_path=conf.runsc_path, runsc_flags=list(conf.runsc_flags)),
    )


@dataclass(frozen=True)
class MuscleSecrets:
    ssh_private_key: pulumi.Output[str]
    """Operator key: SSH into run servers and into the Coolify master (registration runs there)."""
    coolify_api_token: pulumi.Output[str]
    registry_pull_password: pulumi.Output[str] | None = None
    """The registry's read-only `pull` user (the factory stack's registryPullPassword): root's config.json on
    every run server, which Coolify's `docker compose up --pull always` uses. Required by `load_muscle`."""


def load_muscle(cfg: pulumi.Config) -> tuple[MuscleConfig, MuscleSecrets]:
    conf = read_model(cfg, MuscleConfig)
    key = secret(cfg, "sshPrivateKey", "INKMCP_SSH_PRIVATE_KEY")
    token = secret(cfg, "coolifyApiToken", "INKMCP_COOLIFY_API_TOKEN")
    pull = secret(cfg, "registryPullPassword", "INKMCP_REGISTRY_PULL_PASSWORD")
    assert key is not None and token is not None
    return conf, MuscleSecrets(ssh_private_key=key, coolify_api_token=token, registry_pull_password=pull)
