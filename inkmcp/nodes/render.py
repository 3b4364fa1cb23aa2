"""Render the run-server hardening set from typed parameters.

One renderer for both consumers: the muscle Pulumi stack copies the files and runs the commands with
pulumi-command, `inkmcp nodes harden` does the same over fabric. Keeping a single code path means a
host hardened either way ends in the same state and `check` judges both the same.
"""

from __future__ import annotations

import ipaddress
import json
import posixpath
import re
import shlex
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from inkmcp.infra.netcheck import require_disjoint

HARDENING_DIR = Path(__file__).resolve().parents[2] / "hardening"
TEMPLATES_DIR = HARDENING_DIR / "templates"
SCRIPTS_DIR = HARDENING_DIR / "scripts"
GVISOR_DIR = HARDENING_DIR / "gvisor"

# Where things live on a real host (before the root prefix is added).
HOST_HARDENING_DIR = "/etc/inkmcp/hardening"
HOST_SBIN_DIR = "/usr/local/sbin"
DAEMON_JSON = "/etc/docker/daemon.json"
DOCKER_USER_UNIT = "inkmcp-docker-user.service"

# Hetzner's recursive resolvers (Cloud and Robot): the default DNS we let containers reach.
HETZNER_RESOLVERS = ["185.12.64.1", "185.12.64.2"]

# gVisor runtime selector (hardening/gvisor/, runbooks/gvisor-decision.md): Docker's default runtime.
SELECTOR_RUNTIME = "inkmcp"
SELECTOR_PATH = "/usr/local/lib/inkmcp/inkmcp-runtime"
SELECTOR_CONFIG = "/etc/inkmcp/runtime-selector.json"
# install.sh and the selector source it copies from (it looks next to itself), shipped to the host.
GVISOR_INSTALL_DIR = "/usr/local/lib/inkmcp/gvisor"
IMAGE_ID_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

# Refused for tenant egress on every node, whatever private_cidrs says (issue 7 item 5, review #13/#16):
# RFC 1918, CGNAT (RFC 6598), link-local incl. the metadata service, this-network, loopback,
# IETF protocol assignments, benchmarking, multicast and reserved. Not configurable: a tenant that
# needs one private endpoint gets it through `egress_allow`, never by shrinking this list.
BLOCKED_RANGES = [
    ipaddress.IPv4Network(c)
    for c in (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
    )
]
_LINK_LOCAL = ipaddress.IPv4Network("169.254.0.0/16")


class EgressEndpoint(BaseModel):
    """One private endpoint tenants may reach (TCP), e.g. their database host. Written as
    `"10.0.1.13:5432"` or `"10.0.1.13/32:5432"`, or as `{ip, port}`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ip: ipaddress.IPv4Address
    port: int = Field(ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, v: Any) -> Any:
        if isinstance(v, str):
            m = re.fullmatch(r"([0-9.]+)(?:/32)?:([0-9]{1,5})", v.strip())
            if not m:
                raise ValueError(
                    f"egress_allow entry {v!r}: write one host and one TCP port, e.g. '10.0.1.13:5432' "
                    "(a whole range cannot be allow-listed)"
                )
            return {"ip": m.group(1), "port": int(m.group(2))}
        return v

    @model_validator(mode="after")
    def _private(self) -> EgressEndpoint:
        if self.ip in _LINK_LOCAL:
            raise ValueError(
                f"egress_allow {self.ip}:{self.port}: link-local (metadata service) is never allow-listed"
            )
        if not any(self.ip in r for r in BLOCKED_RANGES):
            raise ValueError(
                f"egress_allow {self.ip}:{self.port}: not a private address, it is reachable already; "
                "list only private endpoints"
            )
        return self


def selector_runtimes() -> dict[str, dict[str, Any]]:
    """The only runtime entry daemon.json may carry with gVisor on (a plain `runsc` entry would let a
    tenant that asks for it skip the selector's checks)."""
    return {SELECTOR_RUNTIME: {"path": SELECTOR_PATH, "runtimeArgs": [f"--inkmcp-config={SELECTOR_CONFIG}"]}}


def check_image_id(value: str, what: str) -> str:
    """A Docker image ID as the selector compares it: `sha256:` + 64 hex digits (`docker image inspect
    --format '{{.Id}}' IMAGE`). Not a repo digest (`image@sha256:...`), which is a different hash."""
    if not IMAGE_ID_RE.fullmatch(value):
        raise ValueError(
            f"{what}: {value!r} is not an image ID (sha256:<64 hex>, from docker image inspect "
            "--format '{{.Id}}' IMAGE)"
        )
    if set(value.removeprefix("sha256:")) == {"0"}:
        raise ValueError(f"{what}: {value} is a placeholder; put the pinned image's real ID")
    return value


class PlatformContainer(BaseModel):
    """One allow-list entry of the selector: runc only when the Docker name matches `name` (a regex,
    matched in full) AND the image ID is one of `image_ids`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    image_ids: list[str]

    @field_validator("name")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"platform container name {v!r} is not a valid regex: {e}") from None
        return v

    @model_validator(mode="after")
    def _ids(self) -> PlatformContainer:
        if not self.image_ids:
            # The template would accept it (an entry without IDs admits nothing), but then the container
            # is sandboxed or refused: say so now rather than at `docker start` on the node.
            raise ValueError(
                f"platform container {self.name!r} has no image ID: it would never be admitted "
                "to runc; pin its image ID (docker image inspect --format '{{.Id}}' IMAGE)"
            )
        for v in self.image_ids:
            check_image_id(v, f"platform container {self.name!r}")
        return self


class GvisorParams(BaseModel):
    """Inputs of hardening/gvisor/runtime-selector.json.j2 (its defaults unless given)."""

    model_config = ConfigDict(extra="forbid")
    platform: list[PlatformContainer] = Field(default_factory=list)
    runc_path: str = "/usr/bin/runc"
    runsc_path: str = "/usr/bin/runsc"
    runsc_flags: list[str] = Field(default_factory=lambda: ["--network=host", "--host-uds=none"])

    @field_validator("runc_path", "runsc_path")
    @classmethod
    def _abs(cls, v: str) -> str:
        if not v.startswith("/") or v in (SELECTOR_PATH, "/usr/local/sbin/runc"):
            raise ValueError(f"{v!r}: must be the absolute path of the real runtime, not the selector")
        return v

    @field_validator("runsc_flags")
    @classmethod
    def _flags(cls, v: list[str]) -> list[str]:
        for flag in v:
            if not re.fullmatch(r"--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:/=-]*)?", flag):
                raise ValueError(f"not a runsc global flag: {flag!r}")
        return v

    def render_config(self) -> str:
        """runtime-selector.json, rendered by the gVisor design's own template."""
        text = (
            _gvisor_env()
            .get_template("runtime-selector.json.j2")
            .render(
                runc_path=self.runc_path,
                runsc_path=self.runsc_path,
                runsc_flags=self.runsc_flags,
                platform=[{"name": p.name, "image_ids": p.image_ids} for p in self.platform],
            )
        )
        json.loads(text)  # fail at render time: on the host an unparsable config refuses every container
        return text


class AddressPool(BaseModel):
    """One entry of Docker's default-address-pools: networks of /size are cut from base."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    base: ipaddress.IPv4Network
    size: int = Field(ge=8, le=30)

    @model_validator(mode="after")
    def _size_fits(self) -> AddressPool:
        if self.size < self.base.prefixlen:
            raise ValueError(f"pool size /{self.size} is larger than its base {self.base}")
        return self


class HostParams(BaseModel):
    """Everything that varies between run servers. Validated here so a bad value fails before any host
    is touched; the stacks validate the address plan across servers on top of this."""

    model_config = ConfigDict(extra="forbid")

    # Prefix for every host path. "/" on a real host; a throw-away directory in tests or for staging.
    root: str = "/"
    # Kernel-side steps. None = only when root is "/": a staged copy must never change this machine's
    # firewall or services. Tests set firewall=True inside a network namespace.
    firewall: bool | None = None
    services: bool | None = None

    # --- egress (DOCKER-USER) ---
    dns_resolvers: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address(a) for a in HETZNER_RESOLVERS], min_length=1
    )
    private_cidrs: list[ipaddress.IPv4Network] = Field(
        default_factory=lambda: [ipaddress.IPv4Network("10.0.0.0/8")], min_length=1
    )
    metadata_ips: list[ipaddress.IPv4Address] = Field(
        default_factory=lambda: [ipaddress.IPv4Address("169.254.169.254")], min_length=1
    )
    smtp_ports: list[int] = Field(default_factory=lambda: [25, 465, 587], min_length=1)
    # Private endpoints tenants may reach despite the private-range rejects (rendered before them).
    egress_allow: list[EgressEndpoint] = Field(default_factory=list)
    # Host ports containers may reach on the host itself (INPUT): the node's own proxy for hairpin
    # requests to an app's public name (docker-proxy listens on the host with userland-proxy on).
    host_input_tcp_ports: list[int] = Field(default_factory=lambda: [80, 443])
    # docker0 = the default bridge; br-+ = every user-defined network (Coolify's), iptables wildcard.
    container_interfaces: list[str] = Field(default_factory=lambda: ["docker0", "br-+"], min_length=1)

    # --- daemon.json ---
    address_pools: list[AddressPool] = Field(
        default_factory=lambda: [AddressPool(base=ipaddress.IPv4Network("172.30.0.0/16"), size=24)], min_length=1
    )
    mtu: int = Field(default=1400, ge=1280, le=9000)
    runtimes: dict[str, dict[str, Any]] = Field(default_factory=dict)
    default_runtime: str | None = None
    log_max_size: str = Field(default="10m", pattern=r"^[1-9][0-9]*[kmg]$")
    log_max_file: int = Field(default=3, ge=1, le=20)

    # --- sshd ---
    ssh_allow_users: list[str] = Field(default_factory=lambda: ["root"], min_length=1)
    ssh_max_auth_tries: int = Field(default=3, ge=1, le=6)

    # --- updates and kernel ---
    auto_reboot: bool = False
    auto_reboot_time: str = Field(default="04:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    rp_filter: Literal[1, 2] = 1

    # --- gVisor runtime selector (hardening/gvisor/) ---
    # None = not managed. Set = the selector program, its config and install.sh are part of the plan, and
    # runtimes/default_runtime must be the selector's (filled in when both are left empty).
    gvisor: GvisorParams | None = None

    @field_validator("root")
    @classmethod
    def _root_absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError(f"root must be an absolute path without '..', got {v!r}")
        return posixpath.normpath(v) if v != "/" else "/"

    @field_validator("container_interfaces")
    @classmethod
    def _iface_names(cls, v: list[str]) -> list[str]:
        import re

        for name in v:
            # Linux interface names are at most 15 bytes; '+' is iptables' prefix wildcard.
            if not re.fullmatch(r"[A-Za-z0-9_.-]{1,14}\+?|[A-Za-z0-9_.-]{15}", name):
                raise ValueError(f"not an interface name or iptables wildcard: {name!r}")
        return v

    @field_validator("smtp_ports")
    @classmethod
    def _ports(cls, v: list[int]) -> list[int]:
        if any(not 0 < p < 65536 for p in v) or len(v) > 15:
            raise ValueError("smtp_ports: 1-15 TCP ports in 1..65535 (iptables multiport limit)")
        return v

    @field_validator("host_input_tcp_ports")
    @classmethod
    def _input_ports(cls, v: list[int]) -> list[int]:
        if any(not 0 < p < 65536 for p in v) or 22 in v:
            raise ValueError(
                "host_input_tcp_ports: TCP ports in 1..65535 containers may open on the host itself; "
                "never 22 (sshd): pass e.g. [80, 443]"
            )
        return v

    @field_validator("ssh_allow_users")
    @classmethod
    def _users(cls, v: list[str]) -> list[str]:
        import re

        for u in v:
            if not re.fullmatch(r"[a-z_][a-z0-9_-]{0,31}", u):
                raise ValueError(f"not a valid user name for AllowUsers: {u!r}")
        return v

    @field_validator("runtimes")
    @classmethod
    def _runtimes(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, spec in v.items():
            if not name or ("path" not in spec and "runtimeType" not in spec):
                raise ValueError(f"runtime {name!r} needs a 'path' (or 'runtimeType' for a containerd shim)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> HostParams:
        if self.gvisor is not None:
            if not self.runtimes and self.default_runtime is None:
                self.runtimes, self.default_runtime = selector_runtimes(), SELECTOR_RUNTIME
            if self.runtimes != selector_runtimes() or self.default_runtime != SELECTOR_RUNTIME:
                raise ValueError(
                    f"with gvisor set, runtimes must be exactly {selector_runtimes()} and default_runtime "
                    f"{SELECTOR_RUNTIME!r}: any other registered runtime (e.g. runsc) lets a tenant skip the selector"
                )
        if self.default_runtime and self.default_runtime not in {*self.runtimes, "runc"}:
            raise ValueError(f"default_runtime {self.default_runtime!r} is neither 'runc' nor one of the runtimes")
        # A Docker pool inside a blocked private range would make the reject rules hit container traffic
        # and the routes clash; the stacks check the full plan, this is the last line of defence.
        require_disjoint(
            [(f"address pool {i + 1}", p.base) for i, p in enumerate(self.address_pools)]
            + [(f"private cidr {i + 1}", c) for i, c in enumerate(self.private_cidrs)]
        )
        return self

    # Derived values used by templates and apply/check.
    @property
    def live(self) -> bool:
        return self.root == "/"

    @property
    def apply_firewall(self) -> bool:
        return self.live if self.firewall is None else self.firewall

    @property
    def manage_services(self) -> bool:
        return self.live if self.services is None else self.services

    @property
    def blocked_ranges(self) -> list[ipaddress.IPv4Network]:
        return BLOCKED_RANGES

    @property
    def hardening_dir(self) -> str:
        return HOST_HARDENING_DIR

    @property
    def sbin_dir(self) -> str:
        return HOST_SBIN_DIR

    def host_path(self, path: str) -> str:
        """A real-host absolute path moved under the root prefix."""
        return path if self.root == "/" else self.root + path

    def daemon_address_pools(self) -> list[dict[str, Any]]:
        return [{"base": str(p.base), "size": p.size} for p in self.address_pools]


class HostPlan(BaseModel):
    """What converging a host means: files with their modes, then idempotent commands in order.
    Each command prints `changed: WHAT` lines for what it changed and nothing when there was nothing to do."""

    files: dict[str, str]
    modes: dict[str, int]
    commands: list[str]
    daemon_json: str
    managed_daemon_json: str
    rules_file: str


# (template or script, host path, mode)
_TEMPLATES: list[tuple[str, str, int]] = [
    ("docker-user.rules.j2", f"{HOST_HARDENING_DIR}/docker-user.rules", 0o644),
    # IPv6 side: the apply script loads RULES_FILE + "6" when it exists.
    ("docker-user.rules6.j2", f"{HOST_HARDENING_DIR}/docker-user.rules6", 0o644),
    ("daemon.managed.json.j2", f"{HOST_HARDENING_DIR}/daemon.managed.json", 0o644),
    ("inkmcp-docker-user.service.j2", f"/etc/systemd/system/{DOCKER_USER_UNIT}", 0o644),
    ("sshd-hardening.conf.j2", "/etc/ssh/sshd_config.d/50-inkmcp-hardening.conf", 0o644),
    ("20auto-upgrades.j2", "/etc/apt/apt.conf.d/20auto-upgrades", 0o644),
    ("52inkmcp-unattended-upgrades.j2", "/etc/apt/apt.conf.d/52inkmcp-unattended-upgrades", 0o644),
    ("sysctl-hardening.conf.j2", "/etc/sysctl.d/60-inkmcp-hardening.conf", 0o644),
]
_SCRIPTS: list[tuple[str, str, int]] = [
    ("inkmcp-docker-user-apply", f"{HOST_SBIN_DIR}/inkmcp-docker-user-apply", 0o755),
    ("inkmcp-daemon-json", f"{HOST_SBIN_DIR}/inkmcp-daemon-json", 0o755),
]


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,  # a missing parameter is an error, never an empty line in sshd_config
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - config files and shell, not HTML
    )


@cache
def _gvisor_env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(GVISOR_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - JSON, every value goes through `tojson`
    )


def _gvisor_files(params: HostParams) -> list[tuple[str, str, int]]:
    """(host path, content, mode) of the selector set; empty when gVisor is not managed."""
    if params.gvisor is None:
        return []
    selector = (GVISOR_DIR / "runtime_selector.py").read_text()
    return [
        (SELECTOR_PATH, selector, 0o755),
        (SELECTOR_CONFIG, params.gvisor.render_config(), 0o644),
        (f"{GVISOR_INSTALL_DIR}/install.sh", (GVISOR_DIR / "install.sh").read_text(), 0o755),
        (f"{GVISOR_INSTALL_DIR}/runtime_selector.py", selector, 0o644),
    ]


def render_host_files(params: HostParams) -> dict[str, str]:
    """Absolute host path (under params.root) -> file content, for every file the hardening owns."""
    files: dict[str, str] = {}
    for template, path, _mode in _TEMPLATES:
        files[params.host_path(path)] = _env().get_template(template).render(p=params)
    for script, path, _mode in _SCRIPTS:
        files[params.host_path(path)] = (SCRIPTS_DIR / script).read_text()
    for path, content, _mode in _gvisor_files(params):
        files[params.host_path(path)] = content
    managed = files[params.host_path(f"{HOST_HARDENING_DIR}/daemon.managed.json")]
    json.loads(managed)  # fail at render time, never on the host
    return files


def render_plan(params: HostParams) -> HostPlan:
    """Files, modes and the ordered converge commands for one host."""
    files = render_host_files(params)
    modes = {params.host_path(path): mode for _src, path, mode in [*_TEMPLATES, *_SCRIPTS]}
    modes.update({params.host_path(path): mode for path, _content, mode in _gvisor_files(params)})
    q = shlex.quote
    sbin = params.host_path(HOST_SBIN_DIR)
    managed = params.host_path(f"{HOST_HARDENING_DIR}/daemon.managed.json")
    rules = params.host_path(f"{HOST_HARDENING_DIR}/docker-user.rules")
    daemon_json = params.host_path(DAEMON_JSON)
    commands = [f"python3 {q(sbin + '/inkmcp-daemon-json')} merge {q(managed)} {q(daemon_json)}"]
    if params.gvisor is not None:
        # Selector first (daemon.json is about to name it), foreign runtimes out after the merge.
        commands = [*_gvisor_commands(params), *commands, _drop_foreign_runtimes(daemon_json)]
    if params.apply_firewall:
        commands.append(f"{q(sbin + '/inkmcp-docker-user-apply')} {q(rules)}")
    if params.manage_services:
        commands += _service_commands()
    return HostPlan(
        files=files,
        modes=modes,
        commands=commands,
        daemon_json=daemon_json,
        managed_daemon_json=managed,
        rules_file=rules,
    )


def _gvisor_commands(params: HostParams) -> list[str]:
    """Install the selector with the gVisor design's own install.sh (root-owned files, python3, the
    /usr/local/sbin/runc shadow). Its "unchanged" is swallowed so a converged host stays silent."""
    assert params.gvisor is not None
    q = shlex.quote
    install = params.host_path(f"{GVISOR_INSTALL_DIR}/install.sh")
    run = f"out=$(bash {q(install)} {q(params.host_path(SELECTOR_CONFIG))} {q(params.root)})"
    commands = [f'{run} && {{ [ "$out" = unchanged ] || printf \'%s\\n\' "$out"; }}']
    if params.manage_services:
        # Without runsc every tenant container fails closed at create: stop here, loudly, instead.
        runsc = params.gvisor.runsc_path
        commands.insert(
            0,
            f"[ -x {q(runsc)} ] || {{ echo 'runsc not found at {runsc}: install gVisor on this"
            " host first (runbooks/gvisor-decision.md)' >&2; exit 1; }",
        )
    return commands


# Runtimes in daemon.json other than the selector's (e.g. left by `runsc install`) survive the deep merge;
# each one would let a tenant that asks for it by name bypass the selector's checks.
_DROP_RUNTIMES = """\
import json, os, sys
path, keep = sys.argv[1], sys.argv[2]
with open(path, encoding="utf-8") as f:
    data = json.load(f)
extra = sorted(set(data.get("runtimes") or {}) - {keep})
if extra:
    data["runtimes"] = {k: v for k, v in data["runtimes"].items() if k == keep}
    with open(path + ".inkmcp-new", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\\n")
    os.chmod(path + ".inkmcp-new", 0o644)
    os.replace(path + ".inkmcp-new", path)
    names = ", ".join(extra)
    print(f"changed: {path}: removed runtimes {names} (they would bypass the gVisor selector)")
"""


def _drop_foreign_runtimes(daemon_json: str) -> str:
    return f"python3 -c {shlex.quote(_DROP_RUNTIMES)} {shlex.quote(daemon_json)} {SELECTOR_RUNTIME}"


def _service_commands() -> list[str]:
    """Live-host steps. Each is idempotent and reports only real changes, so a second apply is silent."""
    return [
        # The egress rules must come back after every reboot and Docker restart.
        f"systemctl daemon-reload; systemctl is-enabled --quiet {DOCKER_USER_UNIT}"
        f" || {{ systemctl enable --quiet {DOCKER_USER_UNIT} && echo 'changed: enabled {DOCKER_USER_UNIT}'; }}",
        # Kernel settings take effect now, not at the next reboot (-e: a key this kernel lacks is not fatal).
        "sysctl -e --quiet --load=/etc/sysctl.d/60-inkmcp-hardening.conf >/dev/null",
        # Never reload sshd with a config it rejects: that is how a server becomes unreachable.
        "sshd -t && systemctl reload ssh",
        # Security updates need the package; install it once.
        "dpkg-query -W -f='${Status}' unattended-upgrades 2>/dev/null | grep -q 'install ok installed'"
        " || { DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=120 install -y"
        " unattended-upgrades >/dev/null && echo 'changed: installed unattended-upgrades'; }",
        # Runtimes, log options and no-new-privileges are reloadable; pools and MTU need a restart
        # (live-restore keeps containers running), which stays an operator decision.
        "systemctl is-active --quiet docker && systemctl reload docker || true",
    ]
