"""The BuildPlan: what to build and what to run, independent of where it runs.

Both compute providers consume it: the local provider executes it; the Coolify provider maps it to
`build_command`/`start_command`/`ports_exposes`. Keeping it pure data keeps that mapping honest.
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from inkmcp.errors import InvalidArgument  # --- mender6 (item 1): check_mode


class ServiceType(StrEnum):
    webapp_static = "webapp_static"
    webapp = "webapp"
    backend = "backend"


class Mode(StrEnum):
    static = "static"
    on_demand = "on_demand"
    persistent = "persistent"


class Stack(StrEnum):
    """Which buildpack-like steps the build needs."""

    python = "python"
    node = "node"
    static = "static"
    none = "none"


# --- newuser4: the path the health check GETs (inkmcp.yaml `health_path`, render.yaml `healthCheckPath`, railway
# `healthcheckPath`, fly.toml `[[http_service.checks]] path`). An app whose `/` answers 5xx (a login wall behind its
# own proxy, a page needing data) but serves /healthz failed every deploy with no way to say so.
HEALTH_PATH = re.compile(r"^/[a-zA-Z0-9/\-_.~%,;]*\Z")
"""A plain URL path: what Coolify's API accepts for `health_check_path` (policy._HEALTH_PATH), so a plan valid here is
valid on both providers; no query string, host or scheme."""


def check_health_path(value: str | None, where: str) -> str | None:
    """`value` stripped, or ValueError naming `where` and the form it must have."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if not HEALTH_PATH.match(value):
        raise ValueError(f"{where} {value[:80]!r} must be a plain URL path starting with '/' (letters, digits and "
                         "/-_.~%,; only: no query string, host or spaces), e.g. '/healthz'")
    return value
# --- end


class ProcessSpec(BaseModel):
    """One long-running process of a service (Procfile conventions: `web` gets the route)."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="process type, e.g. web, worker")
    command: str = Field(description="shell command run from the app directory")
    routed: bool = Field(description="true for the process that receives HTTP traffic (Procfile `web`)")


class BuildPlan(BaseModel):
    """Everything needed to turn a checkout into running processes."""

    model_config = ConfigDict(frozen=True)

    stack: Stack
    app_dir: str = Field(default=".", description="path inside the repo where the service lives")
    build_command: str | None = Field(default=None, description="extra build command after dependency install")
    processes: tuple[ProcessSpec, ...] = Field(default=(), description="what runs; empty for static sites")
    release_command: str | None = Field(default=None, description="runs once per deployment before traffic")
    static_dir: str | None = Field(default=None, description="served directory for static sites")
    port: int | None = Field(default=None, description="port the routed process listens on, if fixed")
    health_path: str | None = Field(
        default=None, description="path the health check GETs on the routed process (None: /); newuser4"
    )
    django: bool = Field(default=False, description="run collectstatic after install")
    source: str = Field(description="where the plan came from: call, manifest, procfile, detected")
    mode: Mode | None = Field(
        default=None, description="mode requested by inkmcp.yaml, if any; the caller's mode argument wins"
    )
    static_dir_given: bool = Field(
        default=False,
        description="static_dir came from the call, inkmcp.yaml or a platform file (render.yaml staticPublishPath): "
        "served as is; otherwise the build's output decides (static_output.resolve)",
    )
    env_defaults: dict[str, str] = Field(
        default_factory=dict,
        description="non-secret env defaults from other platforms' files (render.yaml, fly.toml, app.json); the "
        "lowest-precedence env: any variable the agent or an add-on sets wins",
    )
    env_links: dict[str, str] = Field(
        default_factory=dict,
        description="app env name -> the injected add-on variable it copies (CELERY_BROKER_URL -> REDIS_URL), from "
        "render.yaml fromDatabase/fromService; applied only when that variable is injected and the agent did not "
        "set the name",
    )
    wants: tuple[str, ...] = Field(
        default=(), description="add-ons the repo's platform files expect (postgres, redis); a hint, never provisioned"
    )
    notes: tuple[str, ...] = Field(
        default=(), description="what platform files said that was not used, and why (secrets to pass, ...)"
    )

    @property
    def routed_process(self) -> ProcessSpec | None:
        return next((p for p in self.processes if p.routed), None)


class RunAs(BaseModel):
    """The unprivileged Unix identity tenant code runs as (None when InkMCP itself is not root)."""

    model_config = ConfigDict(frozen=True)

    user: str
    uid: int
    gid: int
    home: str


# --- mender6 (item 1): which mode a service runs in, and the modes that cannot describe it.
# `mode="static"` on a server app was accepted and ignored: the app ran as a server while list_services said
# `mode: static` (newuser2); the reverse (on_demand on a static site) was already refused. Both directions are
# checked here, for the call's mode and for inkmcp.yaml's, so the reported mode is always what runs.


def default_mode(service_type: ServiceType) -> Mode:
    """A static site is served from files; anything that runs a process stays up (persistent)."""
    return Mode.static if service_type == ServiceType.webapp_static else Mode.persistent


def check_mode(requested: Mode | None, *, static_site: bool | None, runs: str | None = None,
               routed: bool = True) -> None:
    """Refuse a mode that contradicts what the service is: `static_site` True (files only), False (a process
    runs: `runs` is its command, if known), None (not known yet: nothing to check); `routed` False: no process
    receives HTTP (a worker), so nothing could wake it from on_demand's sleep."""
    if requested is None or static_site is None:
        return
    if requested == Mode.on_demand and not static_site and not routed:  # --- newuser4
        # a worker deployed with mode='on_demand' was accepted and never slept (the idle loop skips services
        # without a route) while list_services said on_demand; slept, nothing could have woken it
        shown = f" (`{runs[:80]}`)" if runs else ""
        raise InvalidArgument(
            f"mode on_demand sleeps a service when no HTTP request comes and wakes it at the next one, but no "
            f"process of this service receives HTTP{shown}: nothing would wake it.",
            argument="mode",
            fix="omit mode or pass 'persistent' for a worker (it keeps running); on_demand is for a web app "
            "(a Procfile `web:` line, or a start_command listening on $PORT)",
        )
    if static_site and requested != Mode.static:
        # A static site has nothing to sleep or keep warm; say so rather than ignore it.
        raise InvalidArgument(
            f"mode {requested} does not apply to a static site.",
            argument="mode",
            fix="omit mode or pass 'static' for webapp_static services",
        )
    if not static_site and requested == Mode.static:
        shown = f" (`{runs[:80]}`)" if runs else ""
        raise InvalidArgument(
            f"mode static serves files and runs no process, but this service runs one{shown}.",
            argument="mode",
            fix="omit mode (a server then runs persistent), or pass 'persistent' to keep it running or 'on_demand' "
            "to let it sleep when idle; to serve files instead, pass service_type='webapp_static' (and static_dir)",
        )


def resolve_mode(service_type: ServiceType, requested: Mode | None, plan: BuildPlan) -> Mode:
    """The mode a deployment runs in: the call's, else inkmcp.yaml's (`plan.mode`), else the type's default.

    Raises InvalidArgument (argument `mode`) when the call's mode contradicts the service; inkmcp.yaml's was
    checked when the plan was made (`detect.derive_plan`)."""
    command = (plan.routed_process or (plan.processes[0] if plan.processes else None))
    check_mode(requested, static_site=service_type == ServiceType.webapp_static,
               runs=command.command if command else None,
               routed=plan.routed_process is not None or not plan.processes)  # fmt: skip
    return requested or plan.mode or default_mode(service_type)


# --- end mender6
