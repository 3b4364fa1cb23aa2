"""Typed configuration of the network plane (stack ``stacks/network``), validated before anything exists.

Why so strict: every mistake caught here would otherwise surface halfway through ``pulumi up`` — or
worse, not at all (a vSwitch subnet that overlaps the cloud subnet routes packets to the wrong side).
Messages name the field, the value and what was expected.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from inkmcp.infra import netcheck
from inkmcp.infra.robot import DEFAULT_BASE_URL, VLAN_MAX, VLAN_MIN

#: The only network zone whose networks can be coupled to a Robot vSwitch (docs.hetzner.com/cloud/networks/faq).
VSWITCH_ZONE = "eu-central"
#: Hetzner Cloud networks must use RFC 1918 space.
RFC1918 = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"))
#: Gateway of every Cloud server's public interface; Hetzner refuses it as a route gateway.
PUBLIC_GATEWAY = ipaddress.ip_address("172.31.1.1")

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
#: Run-server wildcards (`*.sN.<appsSubdomain>`) are RRSets of the muscle stack, one per run server. Hetzner
#: identifies an RRSet by zone+name+type, so the same name here would make one of the two creates fail.
_RUN_SERVER_WILDCARD = re.compile(r"^\*\.s[0-9]+\.")
RecordType = Literal["A", "AAAA", "CAA", "CNAME", "DS", "HINFO", "HTTPS", "MX", "NS", "PTR", "RP", "SRV", "SVCB",
                     "TLSA", "TXT"]


class NetworkConfigError(ValueError):
    """The network stack's configuration is invalid; the message lists every problem, one per line."""


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DedicatedServer(_Strict):
    """A dedicated (Robot) server to attach to the vSwitch."""

    number: int = Field(gt=0, description="Robot server number (the numeric id in Robot, not the IP)")
    name: str | None = Field(None, description="free-form label, e.g. the host name used by the muscle stack")
    vswitch_ip: ipaddress.IPv4Address | None = Field(
        None, description="address the server takes on its VLAN interface, inside the vswitch subnet")


class VSwitchConfig(_Strict):
    name: str = Field("inkmcp", min_length=1, max_length=100)
    vlan: int = Field(4000, description="802.1Q VLAN ID of the vSwitch")
    servers: list[DedicatedServer] = Field(default_factory=list, max_length=100)

    @field_validator("vlan")
    @classmethod
    def _vlan_range(cls, v: int) -> int:
        if not VLAN_MIN <= v <= VLAN_MAX:
            raise ValueError(f"VLAN must be {VLAN_MIN}-{VLAN_MAX} (Hetzner's vSwitch range), got {v}")
        return v

    @field_validator("servers")
    @classmethod
    def _unique(cls, servers: list[DedicatedServer]) -> list[DedicatedServer]:
        twice = sorted(n for n, c in Counter(s.number for s in servers).items() if c > 1)
        if twice:
            raise ValueError(f"server {', '.join(map(str, twice))} listed more than once; list each server once")
        ips = [str(s.vswitch_ip) for s in servers if s.vswitch_ip]
        clash = sorted(ip for ip, c in Counter(ips).items() if c > 1)
        if clash:
            raise ValueError(f"vswitch_ip {', '.join(clash)} given to more than one server")
        return servers


class RouteConfig(_Strict):
    destination: str
    gateway: ipaddress.IPv4Address


class DnsRecord(_Strict):
    name: str = Field(description="relative name inside the zone; '@' for the apex, '*.s1.apps' for a wildcard")
    type: RecordType
    values: list[str] = Field(min_length=1)
    ttl: int | None = Field(None, ge=60)

    @field_validator("name")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v != "@" and (v.endswith(".") or not all(p == "*" or _LABEL.match(p) for p in v.lower().split("."))):
            raise ValueError(f"{v!r} is not a relative record name (labels a-z0-9-, '*' or '@'; no trailing dot)")
        if _RUN_SERVER_WILDCARD.match(v.lower()):
            raise ValueError(f"{v!r} is a run-server wildcard: the muscle stack owns it (one A record per entry of "
                             "runServers, pointing at that server's publicIp); remove it from the network stack")
        return v.lower()


class DnsConfig(_Strict):
    zone: str = Field(description="the platform's DNS zone, e.g. example.com")
    ttl: int = Field(3600, ge=60)
    records: list[DnsRecord] = Field(default_factory=list)

    @field_validator("zone")
    @classmethod
    def _domain(cls, v: str) -> str:
        v = v.lower().rstrip(".")
        labels = v.split(".")
        if len(labels) < 2 or not all(_LABEL.match(p) for p in labels):
            raise ValueError(f"{v!r} is not a domain name such as example.com")
        return v

    @field_validator("records")
    @classmethod
    def _one_rrset_each(cls, records: list[DnsRecord]) -> list[DnsRecord]:
        twice = [f"{n} {t}" for (n, t), c in Counter((r.name, r.type) for r in records).items() if c > 1]
        if twice:
            raise ValueError(f"{', '.join(twice)} given more than once; put all values of one name+type in one "
                             "record (it is one RRSet)")
        return records


class NetworkConfig(_Strict):
    """Everything ``stacks/network`` creates, with defaults for a single-region platform."""

    name: str = Field("inkmcp", min_length=1, max_length=63)
    network_zone: str = VSWITCH_ZONE
    ip_range: str = "10.0.0.0/16"
    cloud_subnet: str = "10.0.1.0/24"
    vswitch_subnet: str = "10.0.2.0/24"
    expose_routes_to_vswitch: bool = True
    protect: bool = Field(True, description="Pulumi protect + Hetzner delete protection on network, vSwitch, zone")
    labels: dict[str, str] = Field(default_factory=lambda: {"platform": "inkmcp", "plane": "network"})
    vswitch: VSwitchConfig = Field(default_factory=VSwitchConfig)
    routes: list[RouteConfig] = Field(default_factory=list)
    dns: DnsConfig | None = None
    robot_base_url: str = DEFAULT_BASE_URL

    @field_validator("network_zone")
    @classmethod
    def _zone(cls, v: str) -> str:
        if v != VSWITCH_ZONE:
            raise ValueError(f"network zone must be {VSWITCH_ZONE!r}, the only zone that couples to a Robot vSwitch; "
                             f"got {v!r}")
        return v

    @model_validator(mode="after")
    def _address_plan(self) -> NetworkConfig:
        net = netcheck.parse_cidr(self.ip_range, "ip_range")
        cloud = netcheck.parse_cidr(self.cloud_subnet, "cloud_subnet")
        vsw = netcheck.parse_cidr(self.vswitch_subnet, "vswitch_subnet")
        if net.version != 4 or not any(net.subnet_of(r) for r in RFC1918):  # type: ignore[arg-type]
            raise ValueError(f"ip_range ({net}) must be private IPv4 space (10/8, 172.16/12 or 192.168/16)")
        for field, subnet in (("cloud_subnet", cloud), ("vswitch_subnet", vsw)):
            netcheck.require_within(subnet, net, field, "ip_range")
            if subnet.prefixlen > 30:
                raise ValueError(f"{field} ({subnet}) is smaller than Hetzner's minimum /30")
        named: list[tuple[str, netcheck.Network]] = [("cloud_subnet", cloud), ("vswitch_subnet", vsw)]
        for i, route in enumerate(self.routes):
            dest = netcheck.parse_cidr(route.destination, f"routes[{i}].destination")
            netcheck.require_within(dest, net, f"routes[{i}].destination", "ip_range")
            named.append((f"routes[{i}].destination", dest))
            gw = route.gateway
            if gw not in net or gw == net.network_address + 1 or gw == PUBLIC_GATEWAY:
                raise ValueError(f"routes[{i}].gateway ({gw}) must be an address inside ip_range ({net}) other than "
                                 f"its first IP ({net.network_address + 1}) and {PUBLIC_GATEWAY}")
        netcheck.require_disjoint(named)
        gateway = vsw.network_address + 1
        for server in self.vswitch.servers:
            ip = server.vswitch_ip
            if ip is None:
                continue
            if ip not in vsw or ip in (vsw.network_address, vsw.broadcast_address, gateway):
                raise ValueError(f"server {server.number}: vswitch_ip {ip} must be a host address inside "
                                 f"vswitch_subnet ({vsw}) other than its gateway {gateway}")
        return self

    # Derived values the stack exports.
    @property
    def vswitch_gateway(self) -> str:
        """The vSwitch gateway the dedicated servers route the Cloud Network through (first IP of the subnet)."""
        return str(ipaddress.ip_network(self.vswitch_subnet).network_address + 1)

    @property
    def cloud_gateway(self) -> str:
        return str(ipaddress.ip_network(self.ip_range).network_address + 1)

    @classmethod
    def parse(cls, raw: Any) -> NetworkConfig:
        """Validate raw config (e.g. ``pulumi.Config().require_object("network")``) or raise one readable error."""
        try:
            return cls.model_validate(raw if raw is not None else {})
        except ValidationError as e:
            raise NetworkConfigError(format_errors(e)) from None


def format_errors(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        where = ".".join(["network", *(str(p) for p in err["loc"])])
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {msg}")
    return "invalid network stack config:\n" + "\n".join(lines)


def txt_value(text: str) -> str:
    """Quote a TXT value the way Hetzner's Zone API wants: one or more quoted strings of at most 255 chars."""
    if text.startswith('"'):
        return text
    chunks = [text[i : i + 255] for i in range(0, len(text), 255)] or [""]
    return " ".join('"' + c.replace("\\", "\\\\").replace('"', '\\"') + '"' for c in chunks)
