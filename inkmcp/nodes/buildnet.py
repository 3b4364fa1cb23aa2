"""The build server's build namespace: where the build dockerd and containerd live, and what they may reach.

Why (runbooks/gvisor-decision.md §4.4, review finding 4 and what it missed): Coolify builds every tenant
image with `docker build --network host`, and dockerd grants that entitlement by default, so a tenant's
RUN step shares the network namespace of the daemon that builds it. Filtering container traffic
(DOCKER-USER, FORWARD from a bridge) therefore cannot confine builds. Instead the daemon itself runs in a
dedicated namespace with one veth to the host, and the host filters that veth:

    root namespace (sshd: Coolify reaches the host here)          build namespace (dockerd, containerd,
      {host_if} host_addr  <----- veth ----->  {ns_if} ns_addr     every RUN step, the build helper)
      INKMCP-BUILD / INKMCP-BUILD-IN / INKMCP-BUILD-NAT

Allowed out of the namespace: the public internet (base images, package mirrors) and, of the private
ranges, only the registry's TLS port (and DNS when the resolver is private). Refused: the platform's
private networks (control-plane Postgres, Coolify's API, run-server SSH), the metadata service, every
RFC 1918 / CGNAT / link-local / special range, the platform hosts' public addresses, this host itself, all
IPv6. The registry enforces the rest: RUN steps hold no credentials, so what they reach there answers 401.

`render_buildnet(params)` gives the files; `inkmcp-build-netns up` (the rendered script) converges the host;
the systemd unit runs it at boot and the drop-ins put containerd and dockerd into the namespace.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
import shlex

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inkmcp.infra.netcheck import require_disjoint
from inkmcp.nodes.registry import HostFile
from inkmcp.nodes.render import BLOCKED_RANGES, HETZNER_RESOLVERS, EgressEndpoint, template_env

IFNAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,14}$")

HOST_PATHS: dict[str, str] = {
    "script": "/usr/local/sbin/inkmcp-build-netns",
    "rules": "/etc/inkmcp/build/egress.rules",
    "rules6": "/etc/inkmcp/build/egress.rules6",
    "service": "/etc/systemd/system/inkmcp-build-netns.service",
    "containerd_dropin": "/etc/systemd/system/containerd.service.d/50-inkmcp-build-netns.conf",
    "docker_dropin": "/etc/systemd/system/docker.service.d/50-inkmcp-build-netns.conf",
}


class BuildNetParams(BaseModel):
    """Everything that varies for the build namespace; validated before a host is touched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    root: str = "/"
    """Prefix for every file path: "/" on the host, a throw-away directory in tests."""
    netns: str = "inkmcp-build"
    host_if: str = "inkbuild0"
    ns_if: str = "uplink0"
    link_cidr: ipaddress.IPv4Network = ipaddress.IPv4Network("192.168.254.0/30")
    """The veth's own /30: host end .1, namespace end .2. Must not overlap any network builds talk to."""
    registry: list[EgressEndpoint] = Field(min_length=1)
    """The registry's private address and TLS port, e.g. `10.0.1.12:443`: the one private endpoint open."""
    allow: list[EgressEndpoint] = Field(default_factory=list)
    """Other private endpoints builds need (e.g. a private git server Coolify clones from). The build helper and
    every RUN step share the namespace, so whatever is listed here is reachable by tenant build code too."""
    dns_resolvers: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address(a) for a in HETZNER_RESOLVERS])
    private_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=lambda: [ipaddress.IPv4Network("10.0.0.0/8")], min_length=1)
    """The platform's private networks (the Cloud Network); refused like every other private range."""
    blocked_hosts: list[ipaddress.IPv4Address] = Field(default_factory=list)
    """Public addresses of platform hosts builds must not reach, e.g. the Coolify master's public IPv4."""
    smtp_ports: list[int] = Field(default_factory=lambda: [25, 465, 587], min_length=1, max_length=15)
    resolv_conf: str = "/etc/resolv.conf"

    @field_validator("netns", "host_if", "ns_if")
    @classmethod
    def _ifname(cls, v: str) -> str:
        if not IFNAME_RE.match(v):
            raise ValueError(f"{v!r}: a lowercase name of at most 15 characters (letters, digits, '-'), "
                             "the kernel's interface-name limit")
        return v

    @model_validator(mode="after")
    def _plan(self) -> BuildNetParams:
        if not self.root.startswith("/"):
            raise ValueError(f"root {self.root!r}: an absolute directory ('/' on the host)")
        if self.link_cidr.prefixlen > 30:
            raise ValueError(f"link_cidr {self.link_cidr}: needs two host addresses, use a /30")
        if self.host_if == self.ns_if:
            raise ValueError("host_if and ns_if must differ (both ends exist in the root namespace while created)")
        require_disjoint([("link_cidr", self.link_cidr),
                          *((f"private_cidrs[{i}]", c) for i, c in enumerate(self.private_cidrs))])
        for ep in [*self.registry, *self.allow]:
            if ep.ip in self.link_cidr:
                raise ValueError(f"endpoint {ep.ip}:{ep.port} lies inside link_cidr {self.link_cidr}")
            if ep.ip in self.blocked_hosts:
                raise ValueError(f"endpoint {ep.ip} is also in blocked_hosts: it would be refused")
        for port in self.smtp_ports:
            if not 1 <= port <= 65535:
                raise ValueError(f"smtp_ports: {port} is not a TCP port")
        return self

    @property
    def blocked_ranges(self) -> list[ipaddress.IPv4Network]:
        return BLOCKED_RANGES

    @property
    def host_addr(self) -> str:
        return f"{self.link_cidr.network_address + 1}/{self.link_cidr.prefixlen}"

    @property
    def ns_addr(self) -> str:
        return f"{self.link_cidr.network_address + 2}/{self.link_cidr.prefixlen}"

    @property
    def gateway(self) -> str:
        return str(self.link_cidr.network_address + 1)

    @property
    def host_script(self) -> str:
        """The script's path on the host (systemd units name it without the root prefix)."""
        return HOST_PATHS["script"]

    def path(self, key: str) -> str:
        rel = HOST_PATHS[key]
        return rel if self.root == "/" else posixpath.join(self.root, rel.lstrip("/"))


def render_buildnet(p: BuildNetParams) -> list[HostFile]:
    """The build namespace's files (paths under `p.root`), rules before the script that loads them."""
    env = template_env()
    dropin = env.get_template("build-netns.service.j2").render(p=p, unit="dropin")
    return [
        HostFile(p.path("rules"), env.get_template("build-netns.rules.j2").render(p=p), 0o644),
        HostFile(p.path("rules6"), env.get_template("build-netns.rules6.j2").render(p=p), 0o644),
        HostFile(p.path("script"), env.get_template("build-netns.sh.j2").render(p=p), 0o755),
        HostFile(p.path("service"), env.get_template("build-netns.service.j2").render(p=p, unit="service"), 0o644),
        HostFile(p.path("containerd_dropin"), dropin, 0o644),
        HostFile(p.path("docker_dropin"), dropin, 0o644),
    ]


def build_host_script(p: BuildNetParams) -> str:
    """Idempotent bash for the build server (run by the factory stack over SSH, before Docker is installed):
    install the files, bring the namespace up, and make sure dockerd/containerd run inside it — a daemon
    already running in the root namespace (installed earlier by hand or by Coolify) is restarted into it."""
    if p.root != "/":
        raise ValueError("build_host_script is for the host itself (root '/'); tests run the rendered files")
    q = shlex.quote
    marker = "INKMCP_EOF"
    lines = ["set -euo pipefail", "units=0",
             "# Runs before Docker is installed: the namespace script needs iproute2 and iptables (Debian's cloud",
             "# image ships nftables only).",
             "if ! command -v iptables-restore >/dev/null || ! command -v ip6tables-restore >/dev/null; then",
             "  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -yq iptables iproute2",
             "fi"]
    for f in render_buildnet(p):
        if marker in f.content:
            raise ValueError(f"{f.path}: content contains the heredoc marker")
        lines += [
            f"install -d -m 755 {q(posixpath.dirname(f.path))}",
            "tmp=$(mktemp)",
            f"cat > \"$tmp\" <<'{marker}'",
            f.content.rstrip("\n"),
            marker,
            f"if ! cmp -s \"$tmp\" {q(f.path)}; then install -m {f.mode:o} \"$tmp\" {q(f.path)}; "
            f"echo \"changed: {f.path}\"; units=1; fi",
            'rm -f "$tmp"',
        ]
    lines += [
        '[ "$units" = 1 ] && systemctl daemon-reload',
        "systemctl enable --quiet inkmcp-build-netns.service",
        # The unit is a oneshot that stays "active": run the script itself so a rules change applies now.
        f"{q(p.host_script)} up",
        "systemctl start inkmcp-build-netns.service",
        "# A daemon started before the drop-ins existed still runs in the root namespace: move it.",
        "for unit in containerd docker; do",
        '  pid=$(systemctl show -p MainPID --value "$unit" 2>/dev/null || echo 0)',
        '  [ -n "$pid" ] && [ "$pid" != 0 ] || continue',
        f'  if [ "$(ip netns identify "$pid")" != {q(p.netns)} ]; then',
        '    systemctl restart "$unit"; echo "changed: $unit restarted into the build namespace"',
        "  fi",
        "done",
    ]
    return "\n".join(lines) + "\n"
