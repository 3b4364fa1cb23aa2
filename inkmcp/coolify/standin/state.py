"""The stand-in's database: plain dataclasses for the rows Coolify keeps (servers, projects, environments,
applications, environment variables, deployment queue, standalone databases), and the request log.

Why dataclasses and not pydantic: these are the stand-in's internal rows, mutated in place under one lock by
the controllers; what crosses the HTTP boundary is validated against Coolify's OpenAPI spec instead
(`inkmcp.coolify.spec`), which is the contract under test.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

ABILITIES = {"root", "read", "read:sensitive", "write", "write:sensitive", "deploy"}

DEPLOYMENT_STATUSES = ("queued", "in_progress", "finished", "failed", "cancelled-by-user")
"""app/Enums/ApplicationDeploymentStatus.php at 379abb2."""


def now_iso() -> str:
    """Laravel's JSON timestamp format (Carbon::toJSON)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


def new_uuid() -> str:
    """Coolify's new_public_id() (bootstrap/helpers/shared.php): 24 lowercase alphanumerics."""
    return "".join(secrets.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(24))


@dataclass
class Token:
    plain: str
    user_id: int
    team_id: int
    abilities: frozenset[str]
    admin: bool = True

    @property
    def token_id(self) -> str:
        """Sanctum's `<id>|<secret>`: the id part names the token in counters without revealing it."""
        return self.plain.split("|", 1)[0]


@dataclass
class Seen:
    """One request as the stand-in received it, and its answer."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    status: int
    operation: str = ""
    user_id: int | None = None
    at: float = 0.0
    token_id: str | None = None
    fault: str | None = None
    """The injected fault that shaped this answer (`500`, `429`, `delay`, `drop`), if any."""

    @property
    def write(self) -> bool:
        return self.method != "GET"


@dataclass
class NodeServer:
    uuid: str
    team_id: int
    name: str
    description: str | None
    ip: str
    port: int
    user: str
    private_key_uuid: str
    settings: dict[str, Any]
    proxy: dict[str, Any]
    validation_logs: str | None = None
    validating_until: float | None = None
    running_proxy: dict[str, Any] | None = None
    id: int = 0
    resources: int = 0
    """Applications, databases and services on the server (`Server::isEmpty` when 0)."""
    destination_uuid: str = ""
    """The server's one StandaloneDocker destination (network `coolify`), created with the server."""
    destination_id: int = 0
    capacity: dict[str, Any] = field(default_factory=dict)
    """Facts a test gives a server (cpus, memory_mb, disk_gb, labels): not part of Coolify's API, read by tests
    and placement fixtures through the stand-in object."""
    unreachable: bool = False
    """SSH to the node fails: deployments on it fail, GetContainersStatus marks it unreachable."""
    container_kernel: str = "4.4.0"
    """`uname -r` inside a container on this node: gVisor's 4.4.0 on a hardened run server (the default, as
    InkMCP's run servers are); a host kernel such as 6.1.0-28-amd64 models a node whose Docker runs tenants
    under runc. Only our probe image reports it (`PROBE_IMAGE`, see inkmcp/doctor.py)."""


@dataclass
class Throttle:
    hits: int = 0
    resets_at: float = 0.0


@dataclass
class Environment:
    id: int
    uuid: str
    name: str
    project_id: int
    description: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


@dataclass
class Project:
    id: int
    uuid: str
    team_id: int
    name: str
    description: str | None
    environments: list[Environment] = field(default_factory=list)


@dataclass
class EnvVar:
    id: int
    uuid: str
    key: str
    value: str | None
    is_preview: bool = False
    is_literal: bool = False
    is_multiline: bool = False
    is_shown_once: bool = False
    is_runtime: bool = True
    is_buildtime: bool = True
    comment: str | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


@dataclass
class Container:
    """What runs for an application after a deployment finished: the env it started with (env changes apply
    only on the next deploy/restart, NOTES.md §b Env vars), and the deployment that started it."""

    deployment_uuid: str
    commit: str
    env_revision: int
    env: dict[str, str]
    started_at: float
    logs: list[str] = field(default_factory=list)


@dataclass
class Application:
    id: int
    uuid: str
    team_id: int
    environment_id: int
    server_uuid: str
    destination_id: int
    fields: dict[str, Any]
    """The columns of `applications` the API reads and writes (name, build_pack, fqdn, limits_*, …)."""
    settings: dict[str, Any]
    """`application_settings` (is_static, is_build_server_enabled, …)."""
    tags: list[str] = field(default_factory=list)
    envs: list[EnvVar] = field(default_factory=list)
    env_revision: int = 0
    """Bumped on every env create/update/delete; a container records the revision it started with."""
    status: str = "exited"
    status_plan: list[tuple[float, str]] = field(default_factory=list)
    """Statuses GetContainersStatus will write, each at its time (refreshed asynchronously, NOTES.md §d)."""
    container: Container | None = None
    delete_at: float | None = None
    delete_flags: dict[str, bool] = field(default_factory=dict)
    stop_at: float | None = None
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)


@dataclass
class Deployment:
    id: int
    deployment_uuid: str
    application_id: int
    application_uuid: str
    application_name: str
    server_id: int
    server_uuid: str
    server_name: str
    destination_id: int
    commit: str
    force_rebuild: bool
    restart_only: bool
    is_api: bool = True
    is_webhook: bool = False
    pull_request_id: int = 0
    status: str = "queued"
    log_entries: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    duration: float = 0.0
    fail_with: str | None = None
    """Set when the build is made to fail (fault injection or an unreachable server): the log line it ends with."""
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
    finished_at: float | None = None


@dataclass
class Database:
    id: int
    uuid: str
    team_id: int
    environment_id: int
    server_uuid: str
    destination_id: int
    fields: dict[str, Any]
    tags: list[str] = field(default_factory=list)
    status: str = "exited"
    status_at: float | None = None
    pending_status: str | None = None
    delete_at: float | None = None
    delete_flags: dict[str, bool] = field(default_factory=dict)
    created_at: str = field(default_factory=now_iso)
    updated_at: str = field(default_factory=now_iso)
