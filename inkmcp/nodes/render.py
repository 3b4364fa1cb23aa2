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
import subprocess
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator

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
# The selector's rules, imported by the entry point above from bytecode install.sh compiles.
SELECTOR_MODULE = "/usr/local/lib/inkmcp/inkmcp_selector.py"
SELECTOR_CONFIG = "/etc/inkmcp/runtime-selector.json"
# install.sh and the selector source it copies from (it looks next to itself), shipped to the host.
GVISOR_INSTALL_DIR = "/usr/local/lib/inkmcp/gvisor"
# Diverts every containerd shim but runc's (review #1), from the plan and after every apt run.
SHIM_GUARD = f"{HOST_SBIN_DIR}/inkmcp-shim-guard"
SHIM_GUARD_APT_HOOK = "/etc/apt/apt.conf.d/53inkmcp-shim-guard"
# Resolves the platform images of the selector config on the node (§4.1, §4.5 (3)); run after Docker is up.
PIN_PLATFORM = f"{HOST_SBIN_DIR}/inkmcp-pin-platform"
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


REPO_DIGEST_RE = re.compile(
    r"^(?P<name>[a-z0-9][a-z0-9._-]*(?::[0-9]{1,5})?(?:/[a-z0-9][a-z0-9._-]*)*)"
    r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?@(?P<digest>sha256:[0-9a-f]{64})$"
)
SABLIER_PLUGIN_MODULE = "github.com/sablierapp/sablier-traefik-plugin"
DOCKER_SOCKET = "/var/run/docker.sock"
# Names Coolify v4.3.11 gives tenant containers (uuid = 24 x [a-z0-9], new_public_id()): a platform name
# regex that reserves one of them would refuse that tenant outright (runbooks/gvisor-decision.md §4.2).
TENANT_NAME_EXAMPLES = (
    "k0c4s8w4kcs0oc8gw0o4gss8",  # database / app with a consistent name: <uuid>
    "k0c4s8w4kcs0oc8gw0o4gss8-101512345678",  # app: <uuid>-<His + microseconds>
    "k0c4s8w4kcs0oc8gw0o4gss8-pr-12",  # preview
    "web-k0c4s8w4kcs0oc8gw0o4gss8",  # compose app / service: <service>-<uuid>
    "backup-of-k0c4s8w4kcs0oc8gw0o4gss8",  # S3 upload helper
    "volume-upload-k0c4s8w4kcs0oc8gw0o4gss8",
)


def check_repo_digest(value: str, what: str) -> str:
    """A platform image as configured: `name[:tag]@sha256:<64 hex>` (a repo digest: the node pulls exactly this
    content). The image ID the selector compares is resolved from it on the node (`resolve_pinned_images`)."""
    if not REPO_DIGEST_RE.fullmatch(value):
        raise ValueError(
            f"{what}: {value!r} is not a repo digest; pin the image as name[:tag]@sha256:<64 hex>, e.g. "
            "traefik:v3.6.23@sha256:… (docker buildx imagetools inspect traefik:v3.6.23 prints the digest)"
        )
    if set(value.rsplit("@sha256:", 1)[1]) == {"0"}:
        raise ValueError(f"{what}: {value} is a placeholder; put the pinned image's real digest")
    return value


class PinnedImage(BaseModel):
    """One image a platform entry admits. `ref` is how it is pinned (repo digest); `id`, `entrypoint` and
    `cmd` are what `docker image inspect` says about it ON THE NODE (the ID depends on the node's image
    store, review #12): filled by `resolve_pinned_images`. Without an `id` the entry admits nothing."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    ref: str | None = None
    id: str | None = None
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None

    @model_validator(mode="after")
    def _valid(self) -> PinnedImage:
        if self.ref is None and self.id is None:
            raise ValueError("a pinned image needs its repo digest (ref) or its image ID on the node (id)")
        if self.ref is not None:
            check_repo_digest(self.ref, "pinned image")
        if self.id is not None:
            check_image_id(self.id, f"pinned image {self.ref or ''}".strip())
        return self

    @property
    def resolved(self) -> bool:
        return self.id is not None and self.entrypoint is not None and self.cmd is not None


class ProfileMount(BaseModel):
    """One host bind a platform container has exactly: source -> destination, read-only or writable.
    `optional`: may be absent (e.g. the helper's ~/.docker/config.json, bound only when it exists)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    source: str
    destination: str
    read_only: bool
    optional: bool = False

    @field_validator("source", "destination")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError(f"mount path {v!r}: give an absolute path without '..'")
        return posixpath.normpath(v)


class ArgsRule(BaseModel):
    """What the container may run (the OCI process args) after the image's own entrypoint, which is never
    overridable: `image` = exactly the image's default command; `exact` = exactly `value`; `flags` = the
    image default or only `--flag[=value]` arguments (Traefik's command line), none starting with one of
    `forbid_prefixes` (case-insensitive, as Traefik reads flags), plugin modules only from `plugin_modules`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["image", "exact", "flags"]
    value: list[str] = Field(default_factory=list)
    forbid_prefixes: list[str] = Field(default_factory=list)
    plugin_modules: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _fields_fit_kind(self) -> ArgsRule:
        if self.value and self.kind != "exact":
            raise ValueError(f"args.value is only for kind 'exact' (kind is {self.kind!r})")
        if (self.forbid_prefixes or self.plugin_modules) and self.kind != "flags":
            raise ValueError(f"args.forbid_prefixes/plugin_modules are only for kind 'flags' (kind is {self.kind!r})")
        return self


class PlatformProfile(BaseModel):
    """One platform entry of the selector (runbooks/gvisor-decision.md §4.3): a container runs under runc
    only when its Docker name matches `name` (a regex, matched in full) AND every profile check passes;
    otherwise it is a tenant, or REFUSED when the name is reserved: `reserve: name` reserves every matching
    name (fixed names such as coolify-proxy, so a look-alike never holds the proxy's name);
    `reserve: name_and_image` only a matching name that runs one of the entry's images (the helper's name is a
    random 24-char uuid, the same shape as a tenant database's name). Build these with `proxy_profile`,
    `sablier_profile` and `helper_profile` rather than by hand."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    entry: str = Field(pattern=r"^[a-z][a-z0-9-]{0,31}$")
    name: str = Field(min_length=1)
    reserve: Literal["name", "name_and_image"] = "name"
    images: list[PinnedImage] = Field(min_length=1)
    mounts: list[ProfileMount] = Field(default_factory=list)
    args: ArgsRule
    auto_remove: bool | None = None
    forbid_label_prefixes: list[str] = Field(default_factory=list)

    @field_validator("name")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"platform entry name {v!r} is not a valid regex: {e}") from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PlatformProfile:
        if self.reserve == "name":
            hit = next((n for n in TENANT_NAME_EXAMPLES if re.fullmatch(self.name, n)), None)
            if hit is not None:
                raise ValueError(
                    f"platform entry {self.entry!r}: name regex {self.name!r} matches tenant container names such "
                    f"as {hit!r}, which would all be refused; match only the platform container's own name, or "
                    "use reserve: name_and_image"
                )
        dests = [m.destination for m in self.mounts]
        if len(set(dests)) != len(dests):
            raise ValueError(f"platform entry {self.entry!r}: a mount destination is listed twice ({dests})")
        return self

    def selector_entry(self) -> dict[str, Any]:
        """This entry as runtime_selector.py reads it (runtime-selector.json `platform`)."""
        return self.model_dump(mode="json")


def proxy_profile(
    images: list[PinnedImage], proxy_dir: str = "/data/coolify/proxy",
    plugin_modules: tuple[str, ...] = (SABLIER_PLUGIN_MODULE,), socket: str = DOCKER_SOCKET,
) -> PlatformProfile:
    """Coolify's Traefik proxy as Coolify v4.3.11 starts it (bootstrap/helpers/proxy.php:268-360): socket
    read-only, the proxy dir at /traefik, Traefik flags only; no local plugins, plugins only from the list.
    `socket`: the node's Docker socket path (another one only for a test daemon)."""
    return PlatformProfile(
        entry="proxy", name="coolify-proxy", images=images,
        mounts=[ProfileMount(source=socket, destination="/var/run/docker.sock", read_only=True),
                ProfileMount(source=proxy_dir, destination="/traefik", read_only=False)],
        args=ArgsRule(kind="flags", forbid_prefixes=["--experimental.localplugins"],
                      plugin_modules=list(plugin_modules)),
    )


def sablier_profile(images: list[PinnedImage], socket: str = DOCKER_SOCKET) -> PlatformProfile:
    """The Sablier server the muscle stack runs (`start --provider.name=docker`, the socket read-write)."""
    return PlatformProfile(
        entry="sablier", name="sablier", images=images,
        mounts=[ProfileMount(source=socket, destination="/var/run/docker.sock", read_only=False)],
        args=ArgsRule(kind="exact", value=["start", "--provider.name=docker"]),
    )


def helper_profile(images: list[PinnedImage], home: str = "/root", socket: str = DOCKER_SOCKET) -> PlatformProfile:
    """Coolify's deploy helper on a run server (ApplicationDeploymentJob.php:2155-2200): name = the deployment
    uuid, --rm, the image's own command, socket + ~/.docker/buildx read-write, ~/.docker/config.json read-only
    when the node has one, and no coolify.* label at all (Coolify labels only what it makes for tenants)."""
    return PlatformProfile(
        entry="helper", name="[a-z][a-z0-9]{23}", reserve="name_and_image", images=images,
        mounts=[ProfileMount(source=socket, destination="/var/run/docker.sock", read_only=False),
                ProfileMount(source=f"{home}/.docker/buildx", destination="/root/.docker/buildx", read_only=False),
                ProfileMount(source=f"{home}/.docker/config.json", destination="/root/.docker/config.json",
                             read_only=True, optional=True)],
        args=ArgsRule(kind="image"), auto_remove=True, forbid_label_prefixes=["coolify."],
    )


STANDARD_PROFILES = {"proxy": proxy_profile, "sablier": sablier_profile, "helper": helper_profile}
"""The §4.3 entries by name; `muscle_config.PlatformContainerSpec.profile` picks one."""


class DockerCommandError(RuntimeError):
    """A docker command on the node failed; the message carries its stderr."""


DockerRunner = Callable[[Sequence[str]], str]
"""Runs `docker ARGS` on the node and returns stdout; raises DockerCommandError on a non-zero exit."""


def local_docker(docker_bin: str = "docker", host: str | None = None, timeout: float = 300) -> DockerRunner:
    """A DockerRunner for a daemon reachable from here (a box: host = its DOCKER_HOST, tests)."""

    def run(args: Sequence[str]) -> str:
        argv = [docker_bin, *(["-H", host] if host else []), *args]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if proc.returncode != 0:
            raise DockerCommandError(f"docker {' '.join(args)} failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout

    return run


def image_facts(docker: DockerRunner, image: str) -> PinnedImage:
    """ID, entrypoint and cmd of an image as the node's daemon has it, WITHOUT a digest check: for images
    built or loaded on the node that have no repo digest (test stand-ins). Production pins go through
    `resolve_pinned_images`, which checks the digest."""
    data = json.loads(docker(["image", "inspect", image]))[0]
    config = data.get("Config") or {}
    return PinnedImage(id=data["Id"], entrypoint=list(config.get("Entrypoint") or []),
                       cmd=list(config.get("Cmd") or []))


def resolve_pinned_images(docker: DockerRunner, refs: Sequence[str], *, pull: bool = True) -> dict[str, PinnedImage]:
    """The node's own facts about each pinned image: `docker pull REF` (unless `pull` is False, e.g. images
    loaded into a box), then `docker image inspect REF` -> image ID, entrypoint and cmd, after checking that
    the local image really carries the pinned digest. Run it ON THE NODE, never copy IDs from another host
    (the ID is the config digest on the classic store, the manifest/index digest on the containerd store).

    Who calls it: `inkmcp nodes sandbox` and the runtime tests, with `local_docker(host=...)` for their stand-in
    images. On run servers the same digest check runs in hardening/scripts/inkmcp-pin-platform (stdlib, on the node):
    the plan's pin command (`pin_platform_command`) and the muscle's Sablier step fill the installed selector
    config in place (runbooks/gvisor-decision.md §4.5 (3))."""
    out: dict[str, PinnedImage] = {}
    for ref in refs:
        check_repo_digest(ref, "platform image")
        pull_error = ""
        if pull:
            try:
                docker(["pull", "--quiet", ref])
            except DockerCommandError as e:
                pull_error = f" (pull failed: {e})"
        try:
            data = json.loads(docker(["image", "inspect", ref]))[0]
        except DockerCommandError as e:
            raise DockerCommandError(f"platform image {ref} is not on the node{pull_error}: {e}") from None
        digest = ref.rsplit("@", 1)[1]
        carried = [d for d in data.get("RepoDigests") or [] if d.endswith("@" + digest)]
        if not carried and data.get("Id") != digest:
            raise DockerCommandError(
                f"platform image {ref}: the node's image {data.get('Id')} does not carry digest {digest} "
                f"(RepoDigests {data.get('RepoDigests')}); pull it by digest on the node"
            )
        config = data.get("Config") or {}
        out[ref] = PinnedImage(ref=ref, id=data["Id"], entrypoint=list(config.get("Entrypoint") or []),
                               cmd=list(config.get("Cmd") or []))
    return out


class GvisorParams(BaseModel):
    """Inputs of hardening/gvisor/runtime-selector.json.j2 (its defaults unless given). `platform` holds the
    §4.3 profiles with their images resolved on the node (`resolve_pinned_images`); an image given only by
    its repo digest is rendered too, but admits nothing until resolved (its reserved name is refused)."""

    model_config = ConfigDict(extra="forbid")
    platform: list[PlatformProfile] = Field(default_factory=list)
    coolify_dir: str = "/data/coolify"
    runc_path: str = "/usr/bin/runc"
    runsc_path: str = "/usr/bin/runsc"
    runsc_flags: list[str] = Field(default_factory=lambda: ["--network=host", "--host-uds=none"])
    build_mode: StrictBool = False
    """The build server only (runbooks/gvisor-decision.md §4.4): BuildKit's RUN steps go to runsc, and one built
    with `docker build --network host` (how Coolify builds) is admitted only while dockerd runs in the dedicated
    build namespace (the selector checks that its network namespace is not the host's: PID 1's, the kernel's).
    Off, every BuildKit step is refused: a run server never builds (Coolify's fallback build there fails closed)."""

    @field_validator("coolify_dir")
    @classmethod
    def _coolify_dir(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/") or v.rstrip("/") == "":
            raise ValueError(f"coolify_dir {v!r}: give Coolify's absolute data dir, e.g. /data/coolify")
        return posixpath.normpath(v)

    @field_validator("platform")
    @classmethod
    def _unique_entries(cls, v: list[PlatformProfile]) -> list[PlatformProfile]:
        names = [p.entry for p in v]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"platform entries {twice} are listed twice; give each entry all its images in one")
        return v

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
                coolify_dir=self.coolify_dir,
                build_mode=self.build_mode,
                platform=[p.selector_entry() for p in self.platform],
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
    # --- mender5: with cron or at on the host, any local uid could schedule jobs that run from the daemon, outside
    # every sandbox and cgroup; their allow files admit root alone (harmless without the tools, binding if installed)
    ("cron.allow.j2", "/etc/cron.allow", 0o644),
    ("at.allow.j2", "/etc/at.allow", 0o644),
    # --- end mender5
]
_SCRIPTS: list[tuple[str, str, int]] = [
    ("inkmcp-docker-user-apply", f"{HOST_SBIN_DIR}/inkmcp-docker-user-apply", 0o755),
    ("inkmcp-daemon-json", f"{HOST_SBIN_DIR}/inkmcp-daemon-json", 0o755),
]


@cache
def template_env() -> jinja2.Environment:
    """The hardening/templates environment, shared by every renderer of host files (this module, the
    registry's and the build namespace's)."""
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
    module = (GVISOR_DIR / "inkmcp_selector.py").read_text()
    return [
        (SELECTOR_PATH, selector, 0o755),
        (SELECTOR_MODULE, module, 0o644),
        (SELECTOR_CONFIG, params.gvisor.render_config(), 0o644),
        (f"{GVISOR_INSTALL_DIR}/install.sh", (GVISOR_DIR / "install.sh").read_text(), 0o755),
        (f"{GVISOR_INSTALL_DIR}/runtime_selector.py", selector, 0o644),
        (f"{GVISOR_INSTALL_DIR}/inkmcp_selector.py", module, 0o644),
        (SHIM_GUARD, (SCRIPTS_DIR / "inkmcp-shim-guard").read_text(), 0o755),
        (SHIM_GUARD_APT_HOOK, template_env().get_template("53inkmcp-shim-guard.j2").render(p=params), 0o644),
        (PIN_PLATFORM, (SCRIPTS_DIR / "inkmcp-pin-platform").read_text(), 0o755),
    ]


def render_host_files(params: HostParams) -> dict[str, str]:
    """Absolute host path (under params.root) -> file content, for every file the hardening owns."""
    files: dict[str, str] = {}
    for template, path, _mode in _TEMPLATES:
        files[params.host_path(path)] = template_env().get_template(template).render(p=params)
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
    commands = [f'{run} && {{ [ "$out" = unchanged ] || printf \'%s\\n\' "$out"; }}', shim_guard_command(params)]
    if params.manage_services:
        # Without runsc every tenant container fails closed at create: stop here, loudly, instead.
        runsc = params.gvisor.runsc_path
        commands.insert(
            0,
            f"[ -x {q(runsc)} ] || {{ echo 'runsc not found at {runsc}: install gVisor on this"
            " host first (runbooks/gvisor-decision.md)' >&2; exit 1; }",
        )
        # The platform images' IDs on THIS node's Docker (§4.1, §4.5 (3)), right after the selector is installed:
        # the rendered config pins by repo digest only, and an unresolved image admits nothing.
        commands.append(pin_platform_command(params))
    return commands


def pin_platform_command(params: HostParams, *, check: bool = False,
                         require: Sequence[tuple[str, str]] = ()) -> str:
    """hardening/scripts/inkmcp-pin-platform as the plan, `check` and the muscle's Sablier step run it: it pulls
    every platform image of the selector config by its repo digest (only when the node lacks it), fills in the
    node's image ID, entrypoint and cmd, and rewrites the config only when they changed (`--check`: reports,
    changes nothing). `require`: (entry, repo digest) pairs that must be pinned and resolved afterwards.

    Why on the node and part of the plan: the ID depends on the node's image store (review #12), so it cannot be
    rendered here; the plan re-runs whenever the rendered config changes (re-uploaded by digest only), so the
    pin must run in the same converge, after Docker is up. The plan carries it only where it manages services
    (a live node, whose Docker it talks to); a staged root (tests, `inkmcp nodes sandbox`) has no Docker of its
    own when the plan runs, and is pinned by whoever runs its daemon (the box: `sandbox.pin_platform`)."""
    q = shlex.quote
    args = ["--check"] if check else []
    if not params.live:
        args += ["--config", params.host_path(SELECTOR_CONFIG)]
    for entry, ref in require:
        args += ["--require", f"{entry}={ref}"]
    return " ".join([f"python3 -I {q(params.host_path(PIN_PLATFORM))}", *(q(a) for a in args)])


def shim_guard_command(params: HostParams, *, check: bool = False) -> str:
    """The shim guard as the plan (or `check`) runs it: on a live host it also scans the running containerd;
    a staged root (tests, the box) is looked at under the root only and records diversions there."""
    q = shlex.quote
    args = ["--check"] if check else []
    if not params.live:
        args += ["--root", params.root]
    return " ".join([f"bash {q(params.host_path(SHIM_GUARD))}", *(q(a) for a in args)])


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
