"""Configuration, read once at start from INKMCP_* environment variables and CLI flags.

Validated up front so that a typo fails `inkmcp serve` with a message naming the variable, not an
obscure error in the middle of the first deployment.
"""

from __future__ import annotations

import ipaddress  # --- egress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, NamedTuple  # --- egress: NamedTuple

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:  # --- mender6
    from inkmcp.providers.compute.local.logs import AccountRates

from inkmcp.providers.database.base import Tier


def default_data_dir() -> Path:
    # Tenant users must be able to traverse to their files, so never default into /root (0700).
    if os.geteuid() == 0:
        return Path("/var/lib/inkmcp")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "inkmcp"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="state: embedded Postgres, builds, logs")
    database_url: SecretStr | None = Field(
        default=None, description="control-plane Postgres; unset = embedded server in data_dir"
    )
    tenant_database_url: SecretStr | None = Field(
        default=None, description="admin URL of the Postgres server tenant databases are created on"
    )
    tenant_database_public_host: str = "127.0.0.1"
    database_provider: Literal["postgres", "neon", "coolify"] | None = Field(
        default=None,
        description="provider of database={'type':'postgres'}: our own server (postgres), Neon or Coolify-managed "
        "Postgres; unset: neon if INKMCP_NEON_API_KEY is set, else coolify if configured, else our own server",
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=1, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list, description="extra Host headers accepted (DNS-rebinding protection)"
    )

    compute: Literal["local", "coolify"] | None = Field(
        default=None,
        validate_default=True,
        description="where services are built and run: local (this machine) or coolify (production: Coolify's API, "
        "settings INKMCP_COOLIFY_*). Unset: coolify when INKMCP_COOLIFY_URL is set, else local",
    )
    proxy_host: str = "127.0.0.1"
    proxy_port: int = Field(default=8080, ge=1, le=65535)
    apps_domain: str = Field(default="localhost", description="services answer at <service>.<project>.<domain>")
    idle_timeout: float = Field(default=300.0, gt=0, description="seconds before an on_demand service sleeps")
    health_timeout: float = Field(default=60.0, gt=0)
    deployments_kept: int = Field(
        default=100, ge=1, description="finished deployments kept per service, newest first (older ones are pruned "
        "once also older than INKMCP_DEPLOYMENTS_KEPT_DAYS; the live one never)",
    )  # fmt: skip
    deployments_kept_days: float = Field(
        default=30.0, ge=0, description="finished deployments beyond INKMCP_DEPLOYMENTS_KEPT are kept this many days",
    )  # fmt: skip
    build_timeout: float = Field(default=900.0, gt=0)
    tenant_python: str = "/usr/bin/python3"
    pids_max: int = Field(
        default=512, ge=16, le=1_000_000,
        description="processes plus threads one service may run at once, builds included (cgroup pids.max)",
    )  # fmt: skip
    max_file_mb: int = Field(
        default=2048, ge=1, description="largest file a tenant process may write, in MiB (RLIMIT_FSIZE)"
    )
    max_build_mb: int = Field(
        default=4096, ge=1, description="largest release on disk (checkout + build output + venv), in MiB"
    )
    # --- quota: a filesystem of its own per project on the local provider (providers/compute/local/diskquota.py)
    max_disk_mb: int = Field(
        default=4096, ge=0,
        description="disk one project may fill on the local provider, in MiB: everything its services write (releases, "
        "venvs, caches, git mirrors, HOME, /tmp) is on an ext4 image of this size, loop-mounted (root only); a full "
        "one gives its own processes ENOSPC. 0: not limited",
    )  # fmt: skip
    disk_reserve_mb: int = Field(
        default=2048, ge=0,
        description="MiB of the data dir's filesystem that projects' disks are never promised (the control plane's): "
        "a new project's disk is refused when free space minus this cannot hold it and what existing ones may grow",
    )  # fmt: skip
    disk_overcommit: float = Field(
        default=1.0, ge=1.0,
        description="divides what projects' disks are promised: 1 = every project could fill its disk at once and "
        "the host keeps INKMCP_DISK_RESERVE_MB; above 1 more projects fit (thin provisioning, the host then is "
        "protected only while they are not all full; each project's own limit stays hard)",
    )  # fmt: skip
    # --- end
    max_checkout_mb: int = Field(
        default=1024, ge=1, description="largest commit (sum of its files, in MiB) deploy_app checks out"
    )
    allow_local_sources: bool | None = Field(
        default=None,
        validate_default=True,
        description="whether repo_url may be a local path, a file:// URL or a git host on a loopback, private or "
        "link-local (metadata) address. Unset: true when InkMCP runs as a normal user (one person's machine), "
        "false as root (a shared machine, where tenants must not read its disk or its internal network)",
    )

    deploy_answer_within: float = Field(
        default=40.0, gt=0, le=55, description="deploy_app returns by then even if the build goes on"
    )
    max_env_bytes: int = Field(default=64 * 1024, gt=0, description="cap on the env var payload of one call")

    # Per-account limits: defaults for every account; `inkmcp accounts limits NAME ...` overrides them per
    # account (stored in the accounts table). Sized so one account cannot take a shared machine's capacity.
    max_projects_per_account: int = Field(default=20, ge=0, description="projects one account may hold")
    max_services_per_project: int = Field(default=10, ge=0, description="services in one project")
    max_databases_per_account: int = Field(
        default=5, ge=0, description="managed Postgres databases one account may hold (bring-your-own not counted)"
    )
    max_concurrent_builds_per_account: int = Field(
        default=2, ge=0, description="deployments of one account that may be in progress (not yet live/failed) at once"
    )
    database_tiers: Annotated[list[Tier], NoDecode] = Field(
        default_factory=lambda: [Tier.free],
        description="database tiers every account may choose (comma-separated); grant more per account",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @field_validator("database_tiers", mode="before")
    @classmethod
    def _tiers(cls, v: object) -> object:
        """`free,standard` from the environment; a list from code."""
        if isinstance(v, str):
            return [t.strip() for t in v.split(",") if t.strip()]
        return v

    @field_validator("compute")
    @classmethod
    def _compute_default(cls, v: str | None) -> str:
        """Setting INKMCP_COOLIFY_URL (with its token) is the whole switch to production compute."""
        if v is not None:
            return v
        return "coolify" if os.environ.get("INKMCP_COOLIFY_URL", "").strip() else "local"

    @field_validator("allow_local_sources")
    @classmethod
    def _local_sources_default(cls, v: bool | None) -> bool:
        """The effective value is always a bool: unset means "allowed unless running as root"."""
        return os.geteuid() != 0 if v is None else v

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("database_url", "tenant_database_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://", "postgresql+")):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/inkmcp")
        return v

    @property
    def public_port_suffix(self) -> str:
        return "" if self.proxy_port == 80 else f":{self.proxy_port}"


# --- pglimits: limits of the tenant PostgreSQL server (red team 2026-12-01: one free-tier role took the CPU, and
# work_mem/temp files were unbounded). Read by PostgresDatabaseProvider (per-role limits, per tier) and by
# inkmcp.store.tenant_server.confine_tenant_server (the embedded server's cgroup); both construct it themselves, so
# no wiring in app.py is needed. Per-tier maps are JSON in the environment, e.g.
# INKMCP_TENANT_PG_TEMP_FILE_LIMIT_MB='{"free": 512, "standard": 4096}'; a tier left out keeps its default.
class TenantPostgresSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_TENANT_PG_", extra="ignore")

    temp_file_limit_mb: dict[Tier, int] = Field(
        default_factory=lambda: {Tier.free: 1024, Tier.standard: 8192},
        description="temp_file_limit per backend (MiB of temporary files one session may hold; -1 = none). "
        "Superuser-only, so a tenant cannot lift it",
    )
    statement_timeout_s: dict[Tier, float] = Field(
        default_factory=lambda: {Tier.free: 60.0, Tier.standard: 300.0},
        description="default statement_timeout per role, in seconds (0 = none); a tenant can still SET it",
    )
    idle_in_transaction_timeout_s: dict[Tier, float] = Field(
        default_factory=lambda: {Tier.free: 300.0, Tier.standard: 900.0},
        description="default idle_in_transaction_session_timeout per role, in seconds (0 = none)",
    )
    cpus: float | None = Field(
        default=None, gt=0, le=1024,
        description="CPU quota of the embedded tenant server, all its backends together (cgroup cpu.max), in cores. "
        "Unset: all cores but one (half a core on a one-core machine)",
    )  # fmt: skip
    cpu_weight: int = Field(
        default=50, ge=1, le=10000,
        description="its CPU weight beside other groups when the machine is busy (cgroup v2 cpu.weight, 100 = "
        "an ordinary group; cpu.shares on v1)",
    )  # fmt: skip
    memory_mb: int | None = Field(
        default=None, ge=256,
        description="memory cap of the embedded tenant server, shared buffers and page cache included (cgroup "
        "memory.max). Unset: half the machine's RAM",
    )  # fmt: skip
    # --- pgmemory (store/tenant_memory.py): one backend's own memory, so one tenant's query fails alone
    backend_memory_mb: int | None = Field(
        default=None, ge=0,
        description="memory one backend of the embedded tenant server may allocate beyond shared memory "
        "(RLIMIT_AS; past it the query fails with 'out of memory' instead of the kernel killing it, which "
        "restarts every tenant's sessions). 0 = no limit. Unset: the server's memory cap / 8",
    )  # fmt: skip
# --- end pglimits


# --- mender6: the per-account output budget's rates (logs.OutputBudget.for_account), once module constants.
# All of one account's processes and builds together write at most this much to their logs per second; past it
# InkMCP reads their pipes more slowly (nothing is dropped), so one account's floods cannot take the server's
# event loop from the others (red team 2026-12-01). Read and applied by app.py (local compute only). The defaults are
# logs.ACCOUNT_* (tests/local/test_account_output_settings.py checks they agree).
class AccountOutputSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_ACCOUNT_OUTPUT_", extra="ignore")

    lines_per_second: float = Field(
        default=8000.0, gt=0, allow_inf_nan=False,
        description="a positive number of log lines per second for all of one account's processes and builds "
        "together (default 8000, ~7% of a core of InkMCP's time)",
    )  # fmt: skip
    burst_lines: float = Field(
        default=40000.0, gt=0, allow_inf_nan=False,
        description="a positive number of lines an account may write at once above its rate (default 40000)",
    )  # fmt: skip
    mib_per_second: float = Field(
        default=8.0, gt=0, allow_inf_nan=False,
        description="a positive number of MiB of log output per second for one account (default 8)",
    )  # fmt: skip
    burst_mib: float = Field(
        default=16.0, gt=0, allow_inf_nan=False,
        description="a positive number of MiB an account may write at once above its rate (default 16)",
    )  # fmt: skip

    def rates(self) -> AccountRates:
        """As the local provider's budgets take them (imported here: the provider package is heavy to import)."""
        from inkmcp.providers.compute.local.logs import AccountRates

        return AccountRates(lines_per_second=self.lines_per_second, burst_lines=self.burst_lines,
                                 bytes_per_second=self.mib_per_second * 2**20, burst_bytes=self.burst_mib * 2**20)


# --- end mender6


# --- gitjail: limits of the git processes InkMCP runs to read tenants' repositories (build/source.py, gitjail.py).
# A tenant chooses the repository a deploy fetches (any URL, its own git server included): a crafted pack (a delta
# that expands to GiBs, a chain of thousands of deltas), a huge tree object or many fetches at once ran in InkMCP's
# own cgroup with no limit. Read once, at the first git process (`git_settings()`); no wiring in app.py.
class GitSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    git_jail: bool = Field(
        default=True,
        description="start every git process through the jail (a small starter process in a cgroup of its own, "
        "whose limits they inherit); false: directly from the server, unlimited (only to compare or as an escape "
        "hatch)",
    )  # fmt: skip
    git_timeout: float = Field(
        default=120.0, gt=0, le=3600,
        description="seconds one fetch (with resolving the ref) or one checkout of a repository may take; each git "
        "process's CPU time is capped at twice this (RLIMIT_CPU)",
    )  # fmt: skip
    git_memory_mb: int = Field(
        default=2048, ge=64,
        description="memory all git processes together may use, in MiB (their cgroup's limit: past it the kernel "
        "kills the largest of them, never InkMCP)",
    )  # fmt: skip
    git_process_memory_mb: int = Field(
        default=1024, ge=64,
        description="memory one git process may allocate, in MiB (RLIMIT_DATA): an object that needs more to unpack "
        "fails its fetch, naming this setting",
    )  # fmt: skip
    git_pids_max: int = Field(
        default=256, ge=16,
        description="processes plus threads of all git processes together (their cgroup's pids.max)",
    )  # fmt: skip
    git_cpu_weight: int = Field(
        default=100, ge=1, le=10000,
        description="CPU weight of all git processes together beside InkMCP and tenants when the machine is busy "
        "(cgroup v2 scale, 100 = an ordinary group)",
    )  # fmt: skip
    git_max_file_mb: int = Field(
        default=4096, ge=1,
        description="largest file one git process may write, in MiB (RLIMIT_FSIZE: a pack in a repository cache, "
        "a file of a checkout)",
    )  # fmt: skip
    max_checkout_entries: int = Field(
        default=100_000, ge=1,
        description="files and directories one deployed commit may hold (counted while its trees are listed)",
    )  # fmt: skip
    git_max_trees_mb: int = Field(
        default=16, ge=1,
        description="bytes of a commit's git tree objects (its directory listings) read into InkMCP's memory to "
        "count and plan its files, in MiB",
    )  # fmt: skip


_git_settings: GitSettings | None = None


def git_settings() -> GitSettings:
    """The environment's GitSettings, read once (tests replace them with `set_git_settings`)."""
    global _git_settings
    if _git_settings is None:
        _git_settings = GitSettings()
    return _git_settings


def set_git_settings(settings: GitSettings | None) -> None:
    global _git_settings
    _git_settings = settings


# --- end gitjail


# --- egress: what local tenants' processes may connect to (providers/compute/local/egress.py). Without it every app,
# worker, release command and build reached the cloud metadata service (the VM's credentials), the host's private
# networks and its non-loopback listeners; the Coolify run servers refuse these through hardening/ (docker-user.rules).
# Read by the local provider at start (as root), which converges the kernel's rules to it.
class TenantEgressSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    tenant_egress: Literal["block-private", "off"] = Field(
        default="block-private",
        description="block-private (tenants' processes may not open connections to the cloud metadata service, "
        "RFC 1918 / CGNAT / link-local / IPv6 ULA and link-local ranges, this host's non-loopback addresses or "
        "SMTP; loopback, DNS to this host's resolvers and INKMCP_TENANT_EGRESS_ALLOW stay open) or off (no "
        "rules: the next start removes them)",
    )  # fmt: skip
    tenant_egress_allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated destinations tenants may reach although private: a CIDR or address, "
        "optionally with a port (TCP and UDP), e.g. 10.0.1.13:5432,10.0.2.0/24,[fd00:1::5]:6379",
    )  # fmt: skip
    tenant_egress_smtp_ports: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [25, 465, 587],
        description="comma-separated TCP ports tenants may not reach anywhere (outbound mail: spam from one tenant "
        "gets this host's addresses blocklisted for all); empty allows mail",
    )  # fmt: skip

    @field_validator("tenant_egress_allow", mode="before")
    @classmethod
    def _allow_list(cls, v: object) -> object:
        if isinstance(v, str):
            v = [e.strip() for e in v.split(",") if e.strip()]
        if isinstance(v, list):
            return [str(parse_egress_allow(str(e))) for e in v]
        return v

    @field_validator("tenant_egress_smtp_ports", mode="before")
    @classmethod
    def _ports(cls, v: object) -> object:
        if isinstance(v, str):
            return [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("tenant_egress_smtp_ports")
    @classmethod
    def _port_range(cls, v: list[int]) -> list[int]:
        bad = [p for p in v if not 1 <= p <= 65535]
        if bad:
            raise ValueError(f"{bad[0]} is not a TCP port (1..65535)")
        return v

    def allow_entries(self) -> list[EgressAllow]:
        return [parse_egress_allow(e) for e in self.tenant_egress_allow]


_METADATA_NETS = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"),
                  ipaddress.ip_network("fd00:ec2::254/128"), ipaddress.ip_network("fd20:ce::254/128"))


class EgressAllow(NamedTuple):
    """One allow-list entry: a network and, optionally, one port (TCP and UDP)."""

    network: ipaddress.IPv4Network | ipaddress.IPv6Network
    port: int | None

    def __str__(self) -> str:
        net = str(self.network)
        if self.port is None:
            return net
        return f"[{net}]:{self.port}" if self.network.version == 6 else f"{net}:{self.port}"


def parse_egress_allow(text: str) -> EgressAllow:
    """`10.0.1.13`, `10.0.1.13:5432`, `10.0.2.0/24`, `10.0.2.0/24:5432`, `fd00:1::5`, `[fd00:1::/64]:5432`.

    Link-local ranges (the metadata service lives there) are never opened, as on the run servers (nodes/render.py)."""
    raw = text.strip()
    port: int | None = None
    addr = raw
    if raw.startswith("["):
        close = raw.find("]")
        if close < 0 or (raw[close + 1:] and not raw[close + 1:].startswith(":")):
            raise ValueError(f"tenant egress allow entry {raw!r}: write [IPv6 address or CIDR]:PORT, "
                             "e.g. [fd00:1::5]:5432")
        addr, rest = raw[1:close], raw[close + 2:]
        port = int(rest) if rest.isdigit() else None
        if rest and port is None:
            raise ValueError(f"tenant egress allow entry {raw!r}: {rest!r} is not a port")
    elif raw.count(":") == 1:
        addr, rest = raw.split(":")
        if not rest.isdigit():
            raise ValueError(f"tenant egress allow entry {raw!r}: {rest!r} is not a port")
        port = int(rest)
    try:
        network = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise ValueError(f"tenant egress allow entry {raw!r}: {addr!r} is not an IP address or CIDR (host names "
                         "are not resolved: write the address, e.g. 10.0.1.13:5432)") from None
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"tenant egress allow entry {raw!r}: port {port} is outside 1..65535")
    if network.prefixlen == 0:
        raise ValueError(f"tenant egress allow entry {raw!r}: opens everything; set INKMCP_TENANT_EGRESS=off instead")
    if any(network.version == m.version and network.overlaps(m) for m in _METADATA_NETS):  # type: ignore[arg-type]
        raise ValueError(f"tenant egress allow entry {raw!r}: link-local and cloud metadata addresses are never "
                         "opened to tenants (the metadata service hands out this machine's credentials)")
    return EgressAllow(network, port)


# --- end egress
