"""Typed configuration of the factory plane (Coolify master, build server, registry, control-plane Postgres).

Everything an operator can get wrong is checked here, before a single resource is registered: a missing
operator CIDR would lock everyone out of SSH, a Docker address pool inside the Cloud Network would
blackhole private traffic, an IP offset outside the cloud subnet would fail half-way through `pulumi up`.

Contract with the network stack (`stacks/network`, read through a StackReference). The factory and muscle
stacks rely on exactly these outputs, and `NetworkStackOutputs` validates them when they arrive:

- ``network_id`` (int): Hetzner Cloud Network id; servers attach to it
- ``network_cidr`` (str): the Cloud Network's ip_range, e.g. ``10.0.0.0/16``
- ``cloud_subnet_cidr`` (str): subnet of type ``cloud`` for Cloud servers, e.g. ``10.0.1.0/24``
- ``vswitch_subnet_cidr`` (str): subnet of type ``vswitch`` bridged to the Robot vSwitch
- ``vswitch_id`` (int): Robot vSwitch id
- ``vlan_id`` (int): the vSwitch VLAN, 4000-4091
- ``vswitch_gateway`` (str, optional): the vSwitch subnet's gateway; default its first host address
- ``zone_name`` (str or None): the platform's DNS zone, e.g. ``example.com``; the muscle stack needs it
- ``zone_id`` (str, int or None): the zone's id
- ``dedicated_servers`` (list): the Robot servers attached to the vSwitch, each ``{number, name, vswitch_ip}``;
  the muscle stack checks that every run server is one of them, at the same address

Secrets never live in these models: they are read as `pulumi.Output` secrets (see `FactorySecrets`),
from Pulumi config secrets or, failing that, environment variables.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pulumi
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from inkmcp.coolify.client import check_api_url
from inkmcp.infra.netcheck import Network, parse_cidr, require_disjoint, require_within
from inkmcp.nodes.registry import RegistryError, check_server_cert
from inkmcp.nodes.render import EgressEndpoint, GvisorParams, check_repo_digest

VLAN_MIN, VLAN_MAX = 4000, 4091
SSH_KEY_RE = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/=]+"
)
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

M = TypeVar("M", bound=BaseModel)


class ConfigModel(BaseModel):
    """camelCase in Pulumi.<stack>.yaml, snake_case in Python; unknown keys are typos, so they fail."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True)


class AttachedServer(BaseModel):
    """One dedicated server the network stack attached to the vSwitch (its ``dedicated_servers`` output)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    number: int
    name: str | None = None
    vswitch_ip: ipaddress.IPv4Address | None = None


class NetworkStackOutputs(BaseModel):
    """What the network stack exports (see the module docstring); validated on arrival."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    network_id: int
    network_cidr: str
    cloud_subnet_cidr: str
    vswitch_subnet_cidr: str
    vswitch_id: int
    vlan_id: int = Field(ge=VLAN_MIN, le=VLAN_MAX)
    vswitch_gateway: str | None = None
    """Gateway of the vSwitch subnet; Hetzner's first host address when the network stack does not say."""
    zone_name: str | None = None
    """None when the network stack manages no DNS zone; the factory does not need one, the muscle does."""
    zone_id: str | None = None
    dedicated_servers: list[AttachedServer] | None = None
    """None only from a network stack older than this field; the muscle stack then cannot check membership."""

    @field_validator("zone_id", mode="before")
    @classmethod
    def _zone_id_as_text(cls, v: Any) -> str | None:
        if v is None:
            return None
        # Integers arrive as floats through the engine; 123.0 must become "123", not "123.0".
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    @model_validator(mode="after")
    def _plan_is_consistent(self) -> NetworkStackOutputs:
        net = parse_cidr(self.network_cidr, "network_cidr")
        cloud = parse_cidr(self.cloud_subnet_cidr, "cloud_subnet_cidr")
        vswitch = parse_cidr(self.vswitch_subnet_cidr, "vswitch_subnet_cidr")
        require_within(cloud, net, "cloud_subnet_cidr", "network_cidr")
        require_within(vswitch, net, "vswitch_subnet_cidr", "network_cidr")
        require_disjoint([("cloud_subnet_cidr", cloud), ("vswitch_subnet_cidr", vswitch)])
        return self

    @property
    def network(self) -> Network:
        return ipaddress.ip_network(self.network_cidr)

    @property
    def vswitch_gateway_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if self.vswitch_gateway:
            return ipaddress.ip_address(self.vswitch_gateway)
        return self.vswitch_subnet.network_address + 1

    @property
    def cloud_subnet(self) -> Network:
        return ipaddress.ip_network(self.cloud_subnet_cidr)

    @property
    def vswitch_subnet(self) -> Network:
        return ipaddress.ip_network(self.vswitch_subnet_cidr)

    def platform_networks(self) -> list[tuple[str, Network]]:
        """Ranges no Docker address pool may touch: traffic to them must leave through the host's NICs."""
        return [("network_cidr", self.network)]

    @classmethod
    def parse(cls, raw: Any) -> NetworkStackOutputs:
        """Validate a StackReference's outputs, naming the network stack in the error so the fix is obvious."""
        if not isinstance(raw, dict):
            raise ValueError(f"network stack outputs: expected a mapping, got {type(raw).__name__}")
        try:
            return cls.model_validate(raw)
        except ValueError as e:
            raise ValueError(f"network stack outputs break the contract in inkmcp.infra.factory_config: {e}") from e


def check_openssh_key(v: str) -> str:
    v = v.strip()
    if "\n" in v or "\r" in v:
        raise ValueError("an OpenSSH public key is one line; this value has a line break (paste one key per entry)")
    if not SSH_KEY_RE.match(v):
        raise ValueError("expected an OpenSSH public key line such as 'ssh-ed25519 AAAA... comment'")
    return v


class SshKeySpec(ConfigModel):
    """An operator's public key; Hetzner installs it for root on every factory host."""

    name: str
    public_key: str

    @field_validator("public_key")
    @classmethod
    def _openssh(cls, v: str) -> str:
        return check_openssh_key(v)


class HostSpec(ConfigModel):
    """One Cloud server of the plane. `ip_offset` picks its fixed private address inside the cloud subnet,
    so other planes (run servers pulling from the registry, InkMCP reaching Postgres) can rely on it."""

    server_type: str
    ip_offset: int = Field(ge=2, description="host number inside the cloud subnet; .1 is Hetzner's gateway")
    image: str = "debian-12"


class VolumeHostSpec(HostSpec):
    """A host whose data lives on an attached Hetzner Volume (block storage, never a network mount)."""

    volume_size_gb: int = Field(ge=10, le=10240)


class DockerPool(ConfigModel):
    """One entry of Docker's `default-address-pools`."""

    base: str
    size: int = Field(default=24, ge=16, le=28)

    @field_validator("base")
    @classmethod
    def _cidr(cls, v: str) -> str:
        parse_cidr(v, "dockerAddressPool.base")
        return v

    @model_validator(mode="after")
    def _size_fits(self) -> DockerPool:
        if self.size < ipaddress.ip_network(self.base).prefixlen:
            raise ValueError(f"docker pool {self.base}: size /{self.size} is larger than the pool itself")
        return self


def named_pools(pools: list[DockerPool]) -> list[tuple[str, Network]]:
    return [(f"docker_address_pools[{i}]", parse_cidr(p.base, "docker pool")) for i, p in enumerate(pools)]


class S3BackupSpec(ConfigModel):
    """S3-compatible bucket for Coolify's own database backups (e.g. Hetzner Object Storage).
    Key and secret are secrets: `s3AccessKey` / `s3SecretKey` in config or INKMCP_S3_* in the environment."""

    name: str = "inkmcp-coolify-backups"
    endpoint: str
    bucket: str
    region: str

    @field_validator("endpoint")
    @classmethod
    def _https(cls, v: str) -> str:
        if not v.startswith("https://"):
            raise ValueError("S3 endpoint must be an https:// URL (credentials travel with every request)")
        return v


class StorageBoxSpec(ConfigModel):
    """Hetzner Storage Box receiving the control-plane Postgres dumps over SSH (port 23)."""

    storage_box_type: str = "bx11"
    location: str = "fsn1"
    backup_public_key: str
    keep_snapshots: int = Field(default=14, ge=1, le=100)
    host_keys: tuple[str, ...] = Field(
        default=(), description="the box's SSH host keys (port 23), one 'type base64' line each, as "
        "`ssh-keyscan -p 23 <box>` prints them after their fingerprints were compared with Hetzner's published "
        "ones; set: the backup job trusts only these; unset: it trusts the key it sees first (accept-new)",
    )

    @field_validator("backup_public_key")
    @classmethod
    def _openssh(cls, v: str) -> str:
        return check_openssh_key(v)

    @field_validator("host_keys")
    @classmethod
    def _host_keys(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        """Only the key type and its base64 are kept: a host name or comment in the line would be written into
        known_hosts as a second field."""
        kept = []
        for key in keys:
            try:
                kept.append(" ".join(check_openssh_key(key).split()[:2]))
            except ValueError:
                raise ValueError("a host key line is its type and base64 ('ssh-ed25519 AAAA...'): drop the host name "
                                 "`ssh-keyscan` prints before it") from None
        return tuple(kept)


RUNSC_MIN_BUILD = 20240729
"""The oldest runsc fit for builds (runbooks/gvisor-decision.md §4.4 as built): 20221219 (Debian 12) leaves
O_NONBLOCK set on host-network sockets, so TLS clients in RUN steps fail with EAGAIN; 20240729 (trixie) is fine."""
DISTRO_RUNSC = {"debian-12": 20221219, "debian-13": 20240729}
"""The runsc snapshot each Hetzner image's own archive ships (`runsc` package; Ubuntu's images ship none)."""


class BuildRuntimeSpec(ConfigModel):
    """Docker and gVisor on the build server (`buildRuntime`), installed by its `docker-runsc` step.

        runscSource: gvisor-release     # or distro: the image's own runsc (debian-13 only, see RUNSC_MIN_BUILD)
        runscPath: /usr/bin/runsc       # both sources install it there
        helperImages: ["ghcr.io/coollabsio/coolify-helper:1.0.12@sha256:<64 hex>"]

    `runscPath`/`runscFlags` are validated exactly as the muscle's (`GvisorParams`). `helperImages`: Coolify's deploy
    helper runs on the build server (ADJ:2173), so the selector admits it under runc only by these digests; empty,
    every helper is a tenant to the selector (refused: a tenant may not mount the Docker socket) and Coolify cannot
    build here."""

    runsc_source: Literal["gvisor-release", "distro"] = Field(
        default="gvisor-release",
        description="gvisor-release: gVisor's apt channel (https://gvisor.dev/docs/user_guide/install/); distro: "
                    "the image's archive, which must ship runsc >= 20240729 (debian-13)")
    runsc_path: str = Field(default=GvisorParams().runsc_path, description="where runsc is on the build server")
    runsc_flags: list[str] = Field(default_factory=lambda: list(GvisorParams().runsc_flags),
                                   description="runsc global flags for RUN steps and containers on the build server")
    helper_images: list[str] = Field(default_factory=list,
                                     description="Coolify's helper image(s), repo digests name[:tag]@sha256:<64 hex>")

    @model_validator(mode="after")
    def _gvisor(self) -> BuildRuntimeSpec:
        try:
            GvisorParams(runsc_path=self.runsc_path, runsc_flags=list(self.runsc_flags))
        except ValueError as e:
            problem = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
            raise ValueError(f"buildRuntime.runscPath/runscFlags: {problem}") from None
        for ref in self.helper_images:
            check_repo_digest(ref, "buildRuntime.helperImages")
        if len(set(self.helper_images)) != len(self.helper_images):
            raise ValueError(f"buildRuntime.helperImages lists an image twice: {self.helper_images}")
        return self


class FactoryConfig(ConfigModel):
    """The factory plane's whole configuration (`Pulumi.<stack>.yaml`, project `inkmcp-factory`)."""

    network_stack: str = Field(description="fully qualified network stack, e.g. acme/inkmcp-network/prod")
    name_prefix: str = "inkmcp"
    location: str = Field(default="fsn1", pattern=r"^(fsn1|nbg1|hel1)$",
                          description="eu-central only: the one network zone that couples to a vSwitch")
    operator_cidrs: list[str] = Field(description="who may SSH and reach Coolify's UI; at least one")
    control_plane_cidrs: list[str] = Field(default_factory=list,
                                           description="public addresses of InkMCP servers calling Coolify's API")
    ssh_keys: list[SshKeySpec]
    master: HostSpec = HostSpec(server_type="cpx31", ip_offset=10)
    build: HostSpec = HostSpec(server_type="cpx41", ip_offset=11)
    registry: VolumeHostSpec = VolumeHostSpec(server_type="cpx21", ip_offset=12, volume_size_gb=100)
    postgres: VolumeHostSpec = VolumeHostSpec(server_type="cpx31", ip_offset=13, volume_size_gb=50)
    docker_address_pools: list[DockerPool] = [DockerPool(base="172.30.0.0/16", size=24)]
    coolify_root_username: str = "admin"
    coolify_root_email: str
    coolify_version: str | None = Field(default=None, description="pin install.sh to a version; None = latest")
    coolify_api_url: str | None = Field(
        default=None,
        description="Coolify's API for registering the build server, as seen from where `pulumi up` runs (the "
                    "muscle stack's setting of the same name): https://<instance domain>, or http only to a private "
                    "address (an SSH tunnel's http://127.0.0.1:8000); default http://<master private IP>:8000 "
                    "(review #14: never http to a public address). Also the `coolify_url` output")
    coolify_private_key_uuid: str | None = Field(
        default=None,
        description="Coolify key (Keys & Tokens) Coolify uses to reach the build server over SSH. With "
                    "coolifyPublicKey and the coolifyApiToken secret, the build server is registered in Coolify as "
                    "a build server; the muscle stack's coolifyPrivateKeyUuid may be the same key")
    coolify_public_key: str | None = Field(
        default=None, description="its public half, installed in the build server's root authorized_keys")
    registry_ca_cert: str = Field(description="PEM of the registry's private CA (python -m inkmcp.nodes.registry pki)")
    registry_server_cert: str = Field(description="PEM of the registry's TLS certificate, signed by registryCaCert, "
                                                  "for the registry's private address")
    build_link_cidr: str = Field(default="192.168.254.0/30",
                                 description="the build namespace's veth /30 (inkmcp.nodes.buildnet)")
    build_runtime: BuildRuntimeSpec = Field(
        default_factory=BuildRuntimeSpec,
        description="Docker + runsc source and the helper pin of the build server (BuildRuntimeSpec)")
    build_egress_allow: list[str] = Field(
        default_factory=list,
        description="private ip:port builds may reach besides the registry, e.g. a private git server; RUN steps too")
    postgres_version: int = Field(default=15, ge=13, le=18)
    postgres_database: str = Field(default="inkmcp", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    postgres_user: str = Field(default="inkmcp", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    storage_box: StorageBoxSpec
    s3_backup: S3BackupSpec | None = None
    protect: bool = Field(default=True, description="Pulumi protect + Hetzner delete/rebuild protection")
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("name_prefix")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not NAME_RE.match(v):
            raise ValueError("name_prefix must be a lowercase DNS label (letters, digits, '-')")
        return v

    @field_validator("operator_cidrs")
    @classmethod
    def _operators(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("operator_cidrs is empty: list at least one operator CIDR, or nobody can SSH in")
        for c in v:
            parse_cidr(c, "operator_cidrs")
        return v

    @field_validator("control_plane_cidrs")
    @classmethod
    def _control_plane(cls, v: list[str]) -> list[str]:
        for c in v:
            parse_cidr(c, "control_plane_cidrs")
        return v

    @field_validator("coolify_api_url")
    @classmethod
    def _api_url(cls, v: str | None) -> str | None:
        return None if v is None else check_api_url(v, "coolifyApiUrl")

    @field_validator("coolify_public_key")
    @classmethod
    def _coolify_key(cls, v: str | None) -> str | None:
        return None if v is None else check_openssh_key(v)

    @model_validator(mode="after")
    def _coolify_key_pair(self) -> FactoryConfig:
        if (self.coolify_private_key_uuid is None) != (self.coolify_public_key is None):
            have, lack = (("coolifyPrivateKeyUuid", "coolifyPublicKey") if self.coolify_public_key is None
                          else ("coolifyPublicKey", "coolifyPrivateKeyUuid"))
            raise ValueError(f"{have} is set but {lack} is not: registering the build server in Coolify needs "
                             "both halves of the key Coolify reaches it with (Keys & Tokens > Private keys: its "
                             "uuid and its public key), or neither to leave the build server unregistered")
        return self

    def coolify_api_base(self, net: NetworkStackOutputs) -> str:
        """`coolifyApiUrl`, else the master's private address (the Cloud Network; review #14)."""
        return self.coolify_api_url or f"http://{self.private_ip('master', net)}:8000"

    @field_validator("ssh_keys")
    @classmethod
    def _keys(cls, v: list[SshKeySpec]) -> list[SshKeySpec]:
        if not v:
            raise ValueError("ssh_keys is empty: the servers would have no way in")
        names = [k.name for k in v]
        if len(set(names)) != len(names):
            raise ValueError(f"ssh_keys: duplicate names in {names}")
        return v

    @model_validator(mode="after")
    def _registry_tls(self) -> FactoryConfig:
        # Signed by the CA and valid now; the address it must cover is checked against the network (check_against).
        try:
            check_server_cert(self.registry_server_cert, self.registry_ca_cert, host=None)
        except RegistryError as e:
            raise ValueError(f"registryServerCert/registryCaCert: {e}") from None
        link = parse_cidr(self.build_link_cidr, "build_link_cidr")
        if link.prefixlen > 30:
            raise ValueError(f"build_link_cidr {self.build_link_cidr}: a /30 (two addresses: host and namespace)")
        require_disjoint([("build_link_cidr", link), *named_pools(self.docker_address_pools)])
        for i, entry in enumerate(self.build_egress_allow):
            try:
                EgressEndpoint.model_validate(entry)
            except ValueError as e:
                problem = e.errors()[0]["msg"] if hasattr(e, "errors") else str(e)
                raise ValueError(f"buildEgressAllow[{i}]: {problem}") from None
        return self

    @model_validator(mode="after")
    def _postgres_installable(self) -> FactoryConfig:
        image = self.postgres.image
        shipped = DISTRO_POSTGRES.get(image)
        if shipped is not None and shipped != self.postgres_version:
            others = ", ".join(f"{i} ({v})" for i, v in DISTRO_POSTGRES.items())
            want = self.postgres_version
            raise ValueError(
                f"postgresVersion {want} is not in {image}'s archive, which ships postgresql-{shipped}: "
                f"set postgresVersion: {shipped}, or postgres.image to one that ships {want} ({others})")
        return self

    @model_validator(mode="after")
    def _own_plan(self) -> FactoryConfig:
        offsets = {h: getattr(self, h).ip_offset for h in HOSTS}
        if len(set(offsets.values())) != len(offsets):
            raise ValueError(f"hosts share a private ip_offset: {offsets}")
        pools = named_pools(self.docker_address_pools)
        require_disjoint(pools)
        # Operators and control plane reach hosts from outside: if a pool covered them, replies would go
        # into a Docker bridge instead of out of the NIC.
        outside = [(f"operator_cidrs[{i}]", parse_cidr(c, "operator_cidrs")) for i, c in enumerate(self.operator_cidrs)]
        outside += [(f"control_plane_cidrs[{i}]", parse_cidr(c, "cp")) for i, c in enumerate(self.control_plane_cidrs)]
        for pool in pools:
            for other in outside:
                require_disjoint([pool, other])
        return self

    @model_validator(mode="after")
    def _build_runsc_fit(self) -> FactoryConfig:
        shipped = DISTRO_RUNSC.get(self.build.image)
        if self.build_runtime.runsc_source == "distro" and (shipped is None or shipped < RUNSC_MIN_BUILD):
            have = f"ships runsc {shipped}" if shipped else "ships no runsc this stack knows"
            raise ValueError(
                f"buildRuntime.runscSource distro: build.image {self.build.image} {have}; builds need runsc >= "
                f"{RUNSC_MIN_BUILD} (older snapshots break TLS in RUN steps, runbooks/gvisor-decision.md §4.4). "
                "Set buildRuntime.runscSource: gvisor-release, or build.image: debian-13 (new hosts only)")
        return self

    def check_against(self, net: NetworkStackOutputs) -> None:
        """Cross-stack checks; raise before anything is created (the component gates every resource on it)."""
        pools = named_pools(self.docker_address_pools)
        for pool in pools:
            for platform in net.platform_networks():
                require_disjoint([pool, platform])
        for host in HOSTS:
            self.private_ip(host, net)
        require_disjoint([("build_link_cidr", parse_cidr(self.build_link_cidr, "build_link_cidr")),
                          *net.platform_networks()])
        registry_ip = self.private_ip("registry", net)
        try:
            check_server_cert(self.registry_server_cert, self.registry_ca_cert, host=registry_ip)
        except RegistryError as e:
            raise ValueError(f"registryServerCert: {e}") from None

    def private_ip(self, host: str, net: NetworkStackOutputs) -> str:
        spec: HostSpec = getattr(self, host)
        subnet = net.cloud_subnet
        if spec.ip_offset >= subnet.num_addresses - 1:
            raise ValueError(f"{host}.ip_offset {spec.ip_offset} lies outside cloud_subnet_cidr ({subnet})")
        return str(subnet.network_address + spec.ip_offset)


HOSTS = ("master", "build", "registry", "postgres")

DISTRO_POSTGRES = {"debian-12": 15, "debian-13": 17, "ubuntu-22.04": 14, "ubuntu-24.04": 16}
"""The PostgreSQL major each Hetzner image's own archive ships (`postgresql-<v>`); the factory installs from the
distribution only (no PGDG repository), so another version is not installable there (review #20)."""


@dataclass(frozen=True)
class FactorySecrets:
    """Secrets of the factory plane, each a secret Output so it never reaches state or logs in clear."""

    ssh_private_key: pulumi.Output[str]
    coolify_root_password: pulumi.Output[str]
    postgres_password: pulumi.Output[str]
    storage_box_password: pulumi.Output[str]
    backup_private_key: pulumi.Output[str]
    coolify_api_token: pulumi.Output[str] | None = None
    s3_access_key: pulumi.Output[str] | None = None
    s3_secret_key: pulumi.Output[str] | None = None
    registry_server_key: pulumi.Output[str] | None = None
    """The registry's TLS key (server.key of `pki`); required, checked by `RegistryHost`."""
    registry_push_password: pulumi.Output[str] | None = None
    """The `push` user's password: nginx's htpasswd on the registry, config.json on the build server."""
    registry_pull_password: pulumi.Output[str] | None = None
    """The read-only `pull` user's password: htpasswd here; the muscle stack sets the same value on run servers."""


def read_model(cfg: pulumi.Config, model: type[M]) -> M:
    """Build `model` from top-level config keys named by its camelCase aliases; pydantic does the rest."""
    raw: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        # Pulumi stores strings as they are and everything else as JSON: read each the way its type says.
        value = cfg.get(key) if field.annotation in (str, str | None) else cfg.get_object(key)
        if value is not None:
            raw[key] = value
    return model.model_validate(raw)


def secret(cfg: pulumi.Config, key: str, env: str, *, required: bool = True) -> pulumi.Output[str] | None:
    """A config secret, else the environment variable `env`; either way marked secret."""
    value = cfg.get_secret(key)
    if value is not None:
        return value
    if env in os.environ:
        return pulumi.Output.secret(os.environ[env])
    if required:
        raise ValueError(f"missing secret: `pulumi config set --secret {key} ...` or export {env}")
    return None


def load_factory(cfg: pulumi.Config) -> tuple[FactoryConfig, FactorySecrets]:
    conf = read_model(cfg, FactoryConfig)

    def req(key: str, env: str) -> pulumi.Output[str]:
        out = secret(cfg, key, env)
        assert out is not None
        return out

    secrets = FactorySecrets(
        ssh_private_key=req("sshPrivateKey", "INKMCP_SSH_PRIVATE_KEY"),
        coolify_root_password=req("coolifyRootPassword", "INKMCP_COOLIFY_ROOT_PASSWORD"),
        postgres_password=req("postgresPassword", "INKMCP_POSTGRES_PASSWORD"),
        storage_box_password=req("storageBoxPassword", "INKMCP_STORAGE_BOX_PASSWORD"),
        backup_private_key=req("backupPrivateKey", "INKMCP_BACKUP_PRIVATE_KEY"),
        coolify_api_token=secret(cfg, "coolifyApiToken", "INKMCP_COOLIFY_API_TOKEN", required=False),
        s3_access_key=secret(cfg, "s3AccessKey", "INKMCP_S3_ACCESS_KEY", required=conf.s3_backup is not None),
        s3_secret_key=secret(cfg, "s3SecretKey", "INKMCP_S3_SECRET_KEY", required=conf.s3_backup is not None),
        registry_server_key=req("registryServerKey", "INKMCP_REGISTRY_SERVER_KEY"),
        registry_push_password=req("registryPushPassword", "INKMCP_REGISTRY_PUSH_PASSWORD"),
        registry_pull_password=req("registryPullPassword", "INKMCP_REGISTRY_PULL_PASSWORD"),
    )
    return conf, secrets
