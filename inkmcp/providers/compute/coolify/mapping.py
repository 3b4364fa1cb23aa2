"""Service type x mode → the exact Coolify application bodies InkMCP sends (pure functions, no I/O).

Why pure: the bodies are the security boundary towards Coolify (`policy.py` checks them again on the wire) and
the place where InkMCP's model meets Coolify's, so every one is tested as data against the spec
(`tests/coolify/test_mapping.py`), for every type x mode, without a server.

One Coolify application per *process* of the service (a Coolify application runs one start command in one
container): Procfile `web` + `worker` → two applications; only the routed process gets `domains`.

Release command (`release_fields`; contract: once per deployment, in the new release, before it gets traffic, a
failure fails the deployment and the old release keeps serving). Coolify's own `pre_deployment_command` does not
give that: ApplicationDeploymentJob::run_pre_deployment_command runs it with `docker exec` in the *currently
running* container (old code, old env) and skips it when none runs (every first deployment). So it is always
sent empty, and the release runs inside the new container instead, as its start command's first step, on one
process only (the routed one, else the first): `start_command` becomes

    sh -c '<guard script>' '<the process's command>' '<release command>'

(`release_start_command`). The guard runs the release only when `INKMCP_RELEASE` (the InkMCP deployment id, set
in that application's env by each release and *absent* from the env an env change, a rollback or a move sends)
is set and the container has not run it yet (a marker under `${TMPDIR:-/tmp}`, in the container's writable
layer: a restart of the same container by Docker's restart policy or a Sablier wake skips it, a new container
of an env change finds no INKMCP_RELEASE). Then it `exec`s the process's own command, unchanged. A failing
release exits the container (and every restart of that container exits again without rerunning it), so the new
container never passes its health check: Coolify's rolling update removes it, marks the deployment failed and
the old container keeps serving (ApplicationDeploymentJob::rolling_update → health_check →
stop_running_container: "New container is not healthy, rolling back to the old container."). The health check
(below) is also what keeps traffic off until the release finished: Coolify stops the old container only once the
new one is healthy, and the app cannot listen before its command is exec'd. Its output is the container's log
(Coolify copies the last 100 lines into the deployment log when the health check fails, `query_logs`), between
`inkmcp: release command started` and `… finished` / `… failed`, which the provider shows with the build log,
and reads to learn the outcome where no health check gates the container (backend, worker-only services).

Health checks (`health_fields`): Coolify's only documented check is HTTP (`curl -f` then `wget` against
`http://localhost:<health_check_port><health_check_path>` inside the container, generate_healthcheck_commands;
`cmd` checks exist in the controller but not in the published 4.3.11 spec the client validates against), and it
gates the rolling update: after `health_check_start_period` s Coolify polls Docker's health status up to
`health_check_retries` times, `health_check_interval` s apart; "healthy" switches, "unhealthy" or still
"starting" at the end fails the deployment and removes the new container. So the routed process of a `webapp`
or `webapp_static` gets it on `/` at its exposed port (Coolify itself probes port 80 for static packs): a
process that never listens, crashes at start, or whose release fails is caught before it gets traffic. Not for
workers (no port to ask) nor `backend` services: `curl -f` fails on any 4xx, and an API or websocket server has
no reason to answer 2xx on `/` (a websocket server answers 426), so it would fail every deployment of a working
backend; Coolify then counts a new container as healthy once started (health_check(): disabled →
newVersionIsHealthy), and a crash shows in `runtime()`. Disabled is sent explicitly (absolute values).

Type → build (`build_fields`):
  webapp_static  build pack `static` serving `publish_directory` (the plan's static_dir) with nginx:alpine; with a
                 build command, `nixpacks` + `is_static` (Coolify's "build, then serve this directory").
  webapp/backend `nixpacks` with `ports_exposes` = the plan's port (3000 if none; PORT is set to it in the env);
                 `dockerfile` + `dockerfile_location` when the caller says the repo has a Dockerfile.
  All build on the build server (`use_build_server`, review finding 2), from the exact commit InkMCP pinned
  (`git_commit_sha`; Coolify's /deploy builds the application's `git_commit_sha`, `queue_application_deployment`).

Mode → run (`run_fields`):
  persistent  `limits_memory` = `limits_memory_reservation` (reserved, never overcommitted) and `limits_cpus`;
              routed through Coolify's generated Traefik labels for `domains`; never sleeps.
  on_demand   limits without reservation; InkMCP's label set with Sablier's `sablier.enable` / `sablier.group`
              in `custom_labels`, Coolify `domains` left empty (a stopped container leaves Traefik's docker
              provider, so the router must live in the proxy's *file* provider: `sablier_router` renders it).
              No Coolify API writes /data/coolify/proxy/dynamic: routes.py writes it over SSH. Its service URL
              needs a stable name on the coolify network: `is_consistent_container_name_enabled` on the routed
              process names its container (and network alias) after the application uuid.
  static      minimal limits (settings.static_memory_mb / static_cpus) whatever the service asked.

`custom_labels` is sent in its own PATCH after the one carrying `domains`: Coolify regenerates custom_labels
from the domains whenever a request carries `domains` (ApplicationsController.php:3127, label read-only mode is
on by default and not settable through the API), which would drop InkMCP's labels.

Commands must pass Coolify's shell-safe pattern (ValidationPatterns::SHELL_SAFE_COMMAND_PATTERN: no `;`, `|`,
`>`, `$`, backticks outside quotes). A command that does not is sent as `sh -c '<command>'` (single quotes
escaped as `'"'"'`), which the pattern accepts and nixpacks runs the same way; multi-line commands are refused
with the fix (Coolify joins lines with spaces).
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inkmcp.build.plan import BuildPlan, Mode, ServiceType
from inkmcp.providers.compute.base import Resources, ServiceKey
from inkmcp.providers.compute.coolify import policy

DEPLOYMENT_ENV = "INKMCP_DEPLOYMENT"
"""Set on every application before each deployment (and each env change): which InkMCP deployment a container
belongs to. Operators and the reconciler read it; the same name as the fake provider's."""
SHELL_SAFE = re.compile(
    r"""^(?:[ \t]++|&&|\|\||"[^"$`\\\n\r]*+"|'[^'\n\r]*+'|[a-zA-Z0-9._\-/=:@,+\[\]{}#%^~*?!]++)++$"""
)
"""Coolify 4.3.11 ValidationPatterns::SHELL_SAFE_COMMAND_PATTERN (install/build/start commands), with possessive
quantifiers: the alternatives start with disjoint characters, so this accepts exactly the same strings, without
the original's exponential backtracking on a string it refuses (seconds for a 50-character command)."""
DEFAULT_PORT = 3000
RELEASE_ENV = "INKMCP_RELEASE"
"""Env var of the process that runs the release command, set to the InkMCP deployment id by a release only (see
the module docstring): the guard runs the release when it is set and this container has not run it."""
RELEASE_STARTED = "inkmcp: release command started"
RELEASE_FINISHED = "inkmcp: release command finished"
RELEASE_FAILED = "inkmcp: release command failed"
RELEASE_GUARD = (
    'm="${TMPDIR:-/tmp}/.inkmcp-release-$INKMCP_RELEASE"; '
    'if [ -n "$INKMCP_RELEASE" ] && [ ! -e "$m.done" ]; then '
    f'if [ -e "$m.failed" ]; then echo "{RELEASE_FAILED} earlier in this container, not starting" >&2; exit 1; fi; '
    f'echo "{RELEASE_STARTED}"; '
    f'if sh -c "$1"; then : > "$m.done"; echo "{RELEASE_FINISHED}"; '
    f'else s=$?; : > "$m.failed"; echo "{RELEASE_FAILED} with exit code $s" >&2; exit $s; fi; fi; '
    'exec sh -c "$0"'
)
"""The start command's first step on the process carrying the release (module docstring); `$0` is the process's
command, `$1` the release command. No single quote inside, so it is one single-quoted word for Coolify's
shell-safe pattern."""
MAX_COMMAND = 1000
"""Coolify's limit on install/build/start commands (ValidationPatterns::shellSafeCommandRules, max:1000)."""

HEALTH_INTERVAL = 2
HEALTH_TIMEOUT = 5
HEALTH_RETRIES = 30
HEALTH_RETRIES_RELEASE = 90
HEALTH_START_PERIOD = 5
"""Health check timing (seconds): a first start has start_period + retries x interval = 65 s to answer (185 s
for the process that runs the release command first: a migration takes its time), while a healthy process is
seen about `start_period` s after it started (Coolify sleeps the start period first)."""
RELEASE_TIMEOUT = float(HEALTH_START_PERIOD + HEALTH_RETRIES_RELEASE * HEALTH_INTERVAL)
"""How long the release command may take: the health window of the process carrying it (Coolify removes a new
container not healthy by then); the provider waits as long for the guard's marker where no health check runs."""


class TenantInputError(ValueError):
    """The tenant's plan, env or domains cannot be expressed safely in Coolify: the message says what to change."""


@dataclass(frozen=True)
class PlacedServer:
    """Where placement put a service: the Coolify server uuid and its wildcard base (host part of the server's
    wildcard domain, e.g. `s1.apps.example.com`)."""

    uuid: str
    wildcard_base: str


@dataclass(frozen=True)
class Process:
    name: str
    command: str | None
    routed: bool
    release: bool = False
    """This process's container runs the service's release command (the routed one, else the first)."""


@dataclass(frozen=True)
class MappingSettings:
    """The slice of CoolifySettings the mapping needs (kept apart so tests build it without env vars)."""

    environment: str = "production"
    default_branch: str = "main"
    use_build_server: bool = True
    static_memory_mb: int = 64
    static_cpus: float = 0.25
    sablier_session: str = "10m"
    reserved_domains: tuple[str, ...] = ()
    """Parent domains no custom domain may be at or under (the platform's app domains)."""


@dataclass(frozen=True)
class AppSpec:
    """Everything that decides one application's bodies."""

    key: ServiceKey
    process: Process
    service_type: ServiceType
    mode: Mode
    plan: BuildPlan
    commit: str
    resources: Resources
    server: PlacedServer
    repo_url: str
    domains: tuple[str, ...] = ()
    dockerfile_location: str | None = None


def processes(service_type: ServiceType, plan: BuildPlan) -> list[Process]:
    """The applications a service needs: one per process; a static site is one routed `web`."""
    if service_type == ServiceType.webapp_static:
        return [Process("web", None, True)]
    carrier = next((p.name for p in plan.processes if p.routed), plan.processes[0].name if plan.processes else None)
    release = bool((plan.release_command or "").strip())
    return [Process(p.name, p.command, p.routed, release and p.name == carrier) for p in plan.processes]


def app_name(key: ServiceKey, process: str) -> str:
    """Deterministic, so an application created by an attempt whose answer was lost is found again by name."""
    return f"{key.service_id}-{process}"


def hostname(key: ServiceKey, server: PlacedServer) -> str:
    """`<service>-<project>.<wildcard base>`; a label over 63 characters is shortened with a stable hash."""
    label = f"{key.service_name}-{key.project_name}".lower()
    label = re.sub(r"[^a-z0-9-]+", "-", label).strip("-")
    if len(label) > 63:
        label = f"{label[:54].rstrip('-')}-{hashlib.sha256(label.encode()).hexdigest()[:8]}"
    return f"{label}.{server.wildcard_base.lower().strip('.')}"


def url_of(key: ServiceKey, server: PlacedServer) -> str:
    return f"https://{hostname(key, server)}"


def custom_domains(domains: tuple[str, ...] | list[str], server: PlacedServer,
                   settings: MappingSettings) -> list[str]:  # fmt: skip
    """The tenant's custom domains as hosts; refused when malformed or inside the platform's own domains (a
    tenant naming `other-project.s1.apps…` would take another service's host)."""
    hosts: list[str] = []
    reserved = [server.wildcard_base.lower().strip("."), *(d.lower().strip(".") for d in settings.reserved_domains)]
    for domain in domains:
        raw = domain.strip().lower()
        url = raw if raw.startswith("https://") else f"https://{raw}"
        try:
            host = policy.check_domain(url, "domains")
        except policy.PolicyViolation:
            raise TenantInputError(f"domains: {domain!r} is not a host name; pass e.g. 'www.example.com' (no scheme "
                                   "other than https, no port or path)") from None
        for parent in reserved:
            if host == parent or host.endswith("." + parent):
                raise TenantInputError(f"domains: {domain!r} is inside the platform's domain {parent!r}; pass a "
                                       "domain you own (InkMCP gives every service its own host there already)")
        if host not in hosts:
            hosts.append(host)
    return hosts


def dns_records(key: ServiceKey, server: PlacedServer, hosts: list[str]) -> list[dict[str, str]]:
    """What the user must create at their DNS provider for each custom domain: a CNAME to the service's own host
    (which the server's wildcard record resolves). An apex domain needs the provider's ALIAS/ANAME instead."""
    target = hostname(key, server)
    return [{"name": host, "type": "CNAME", "value": target} for host in hosts]


def shell_safe(command: str, field: str) -> str:
    """`command` as Coolify's shell-safe pattern accepts it (see the module docstring)."""
    if "\n" in command.strip() or "\r" in command:
        raise TenantInputError(f"{field}: multi-line commands cannot be sent to Coolify (it joins lines); put the "
                               "steps in a script in the repo and call it, e.g. './bin/build.sh'")
    command = command.strip()
    if SHELL_SAFE.match(command):
        return command
    return "sh -c '" + command.replace("'", "'\"'\"'") + "'"


def _dir(path: str | None, field: str) -> str:
    value = "/" + (path or ".").strip().strip("/")
    value = value.replace("/./", "/")
    if value in ("/.", ""):
        value = "/"
    if value.endswith("/."):
        value = value[:-2] or "/"
    if ".." in value.split("/") or not re.match(r"^/([A-Za-z0-9._\-/~@+]*)?\Z", value):
        raise TenantInputError(f"{field}: {path!r} is not a directory inside the repository; pass a relative path "
                               "such as 'app' or 'dist'")
    return value


def port_of(plan: BuildPlan, env: Mapping[str, str] | None = None) -> int:
    if plan.port:
        return plan.port
    raw = (env or {}).get("PORT", "")
    return int(raw) if raw.isdigit() and 0 < int(raw) < 65536 else DEFAULT_PORT


def build_fields(spec: AppSpec, settings: MappingSettings) -> dict[str, Any]:
    """Build pack, source and commands of one application (type-dependent)."""
    plan = spec.plan
    out: dict[str, Any] = {
        "git_repository": spec.repo_url,
        "git_branch": settings.default_branch,
        "git_commit_sha": spec.commit,
        "use_build_server": settings.use_build_server,
        "base_directory": _dir(plan.app_dir, "app_dir"),
    }
    if spec.service_type == ServiceType.webapp_static:
        out["publish_directory"] = _dir(plan.static_dir, "static_dir")
        out["static_image"] = "nginx:alpine"
        out["ports_exposes"] = "80"
        if plan.build_command:
            out.update(build_pack="nixpacks", is_static=True,
                       build_command=shell_safe(plan.build_command, "build_command"))
        else:
            out.update(build_pack="static", is_static=True)
        return out
    if spec.dockerfile_location:
        out.update(build_pack="dockerfile", dockerfile_location=_dir(spec.dockerfile_location, "dockerfile"))
    else:
        out["build_pack"] = "nixpacks"
        if plan.build_command:
            out["build_command"] = shell_safe(plan.build_command, "build_command")
        if spec.process.release and spec.process.command:
            out["start_command"] = release_start_command(plan.release_command or "", spec.process)
        elif spec.process.command:
            out["start_command"] = shell_safe(spec.process.command, f"command of process {spec.process.name}")
    # Every application exposes the port (Coolify stores ports_exposes non-null); only the routed one gets domains.
    out["ports_exposes"] = str(port_of(plan))
    # Never Coolify's pre-deployment command (old container, skipped on a first deploy): always cleared.
    out["pre_deployment_command"] = ""
    return out


def _quoted(text: str) -> str:
    """One single-quoted shell word (a quote inside as `'"'"'`, which Coolify's shell-safe pattern accepts)."""
    return "'" + text.replace("'", "'\"'\"'") + "'"


def release_start_command(release: str, process: Process) -> str:
    """The start command of the process carrying the release (module docstring)."""
    for value, field in ((release, "release_command"), (process.command or "", f"command of process {process.name}")):
        if "\n" in value.strip() or "\r" in value:
            raise TenantInputError(f"{field}: multi-line commands cannot be sent to Coolify (it joins lines); put the "
                                   "steps in a script in the repo and call it, e.g. './bin/release.sh'")
    command = f"sh -c {_quoted(RELEASE_GUARD)} {_quoted((process.command or '').strip())} {_quoted(release.strip())}"
    if len(command) > MAX_COMMAND:
        raise TenantInputError(
            f"release_command: with the command of process {process.name} it makes a start command of "
            f"{len(command)} characters, over Coolify's {MAX_COMMAND}; put the release steps in a script in the repo "
            "and call it, e.g. './bin/release.sh'")
    if not SHELL_SAFE.match(command):  # cannot happen (three quoted words), but Coolify would refuse it
        raise TenantInputError("release_command: cannot be passed to Coolify as a shell-safe start command")
    return command


def release_of(start_command: str | None) -> tuple[str, str] | None:
    """(process command, release command) of a `release_start_command`, None for any other start command (for
    the reconciler, operators and the stand-in's models of a container)."""
    if not start_command:
        return None
    try:
        words = shlex.split(start_command)
    except ValueError:
        return None
    if len(words) == 5 and words[:3] == ["sh", "-c", RELEASE_GUARD]:
        return words[3], words[4]
    return None


def health_fields(spec: AppSpec) -> dict[str, Any]:
    """Coolify's HTTP health check on the routed process of a webapp / static site; off otherwise (module
    docstring says why). Absolute values, so a PATCH also turns off one an earlier body turned on."""
    if not spec.process.routed or spec.service_type == ServiceType.backend:
        return {"health_check_enabled": False}
    port = "80" if spec.service_type == ServiceType.webapp_static else str(port_of(spec.plan))
    path = (spec.plan.health_path or "/") if spec.service_type != ServiceType.webapp_static else "/"  # --- newuser4
    return {"health_check_enabled": True, "health_check_path": path, "health_check_port": port,
            "health_check_interval": HEALTH_INTERVAL, "health_check_timeout": HEALTH_TIMEOUT,
            "health_check_retries": HEALTH_RETRIES_RELEASE if spec.process.release else HEALTH_RETRIES,
            "health_check_start_period": HEALTH_START_PERIOD}


def health_window(fields: Mapping[str, Any]) -> float:
    """How long Coolify gives a new container to become healthy, for these fields (0 when disabled)."""
    if not fields.get("health_check_enabled"):
        return 0.0
    return float(fields.get("health_check_start_period") or 0) + \
        float(fields.get("health_check_retries") or 0) * float(fields.get("health_check_interval") or 0)


def run_fields(spec: AppSpec, settings: MappingSettings) -> dict[str, Any]:
    """Limits of one application (mode-dependent)."""
    if spec.mode == Mode.static:
        memory, cpus = settings.static_memory_mb, settings.static_cpus
    else:
        memory, cpus = spec.resources.memory_mb, spec.resources.cpus
    out: dict[str, Any] = {"limits_memory": f"{memory}m", "limits_memory_swap": f"{memory}m",
                           "limits_cpus": f"{cpus:g}"}  # fmt: skip
    if spec.mode == Mode.persistent:
        out["limits_memory_reservation"] = f"{memory}m"
    return out


def labels(spec: AppSpec) -> dict[str, str]:
    """InkMCP's label set for an application (only on_demand applications carry custom labels)."""
    group = f"inkmcp-{spec.key.service_id}"
    return {
        "inkmcp.managed": "true",
        "inkmcp.project": spec.key.project_id,
        "inkmcp.service": spec.key.service_id,
        "inkmcp.process": spec.process.name,
        "sablier.enable": "true",
        "sablier.group": re.sub(r"[^A-Za-z0-9._-]", "-", group)[:128],
    }


def routing_fields(spec: AppSpec, settings: MappingSettings) -> dict[str, Any]:
    """`domains` of one application: the service's host and custom domains on the routed process of a
    persistent/static service; empty otherwise (on_demand is routed by the file provider)."""
    if spec.process.routed and spec.mode == Mode.on_demand:  # the stable address sablier_router's service uses
        return {"domains": "", "is_consistent_container_name_enabled": True}
    if not spec.process.routed or spec.mode == Mode.on_demand:
        return {"domains": ""}
    hosts = [hostname(spec.key, spec.server), *custom_domains(spec.domains, spec.server, settings)]
    return {"domains": ",".join(f"https://{h}" for h in hosts)}


def create_body(spec: AppSpec, project_uuid: str, environment_uuid: str, settings: MappingSettings) -> dict[str, Any]:
    """`POST /applications/public`. Created without domains or labels: `update_body` sets them on every release,
    so a created-but-never-configured application (a crash between the two) is configured by the next attempt."""
    body: dict[str, Any] = {
        "project_uuid": project_uuid,
        "server_uuid": spec.server.uuid,
        "environment_name": settings.environment,
        "environment_uuid": environment_uuid,
        "name": app_name(spec.key, spec.process.name),
        "description": f"InkMCP {spec.key.slug} process {spec.process.name}",
        "autogenerate_domain": False,
        "instant_deploy": False,
        "is_auto_deploy_enabled": False,
        "is_preview_deployments_enabled": False,
        **build_fields(spec, settings),
        **run_fields(spec, settings),
        **health_fields(spec),
    }
    if not body.get("pre_deployment_command"):
        body.pop("pre_deployment_command", None)
    return body


def release_create_body(spec: AppSpec, project_uuid: str, environment_uuid: str,
                        settings: MappingSettings) -> dict[str, Any]:
    """The create a release sends: `create_body` plus `routing_fields` (issue 8), so it carries every field of
    the release's `update_body` and an application the release created (Coolify answered the create) needs no
    settings PATCH (one request fewer per process of a first deploy). Crash safety is `create_body`'s: an
    application whose create answer was lost is found by name by the next attempt, which PATCHes it as any
    existing one. Not for `move`: there the old application still holds the custom domains when the copy is
    created (Coolify refuses a domain two applications have)."""
    return {**create_body(spec, project_uuid, environment_uuid, settings), **routing_fields(spec, settings)}


def covers(created_with: Mapping[str, Any], update: Mapping[str, Any]) -> bool:
    """Whether an application just created with `created_with` has every setting of `update` already: each field
    sent with the same value, or left out of the create where the PATCH sends `""` (Coolify stores both as null:
    `create_body` drops an empty `pre_deployment_command`)."""
    return all(created_with[k] == v if k in created_with else v == "" for k, v in update.items())


def update_body(spec: AppSpec, settings: MappingSettings) -> dict[str, Any]:
    """`PATCH /applications/{uuid}` of a release: absolute values (a repeat changes nothing), incl. `domains`.
    Without `static_image`: the PATCH schema lacks it (it is set at create, nginx:alpine, and never changes)."""
    body = {**build_fields(spec, settings), **run_fields(spec, settings), **routing_fields(spec, settings),
            **health_fields(spec)}
    body.pop("static_image", None)
    return body


CLEARABLE = ("install_command", "build_command", "start_command", "publish_directory", "dockerfile_location")
"""Optional fields a body omits when the plan has no value: a value an earlier body set must then be cleared."""


def clearing(body: Mapping[str, Any], earlier: set[str] | frozenset[str] | list[str]) -> dict[str, Any]:
    """`body` plus `""` for each optional field an earlier body set and this one does not: Coolify keeps a field
    a PATCH does not mention, and an empty string is how its API clears one (Laravel's global
    ConvertEmptyStringsToNull turns it into null before the `nullable` rules run)."""
    return {**body, **{k: "" for k in CLEARABLE if k in earlier and not body.get(k)}}


def labels_plain(spec: AppSpec) -> str | None:
    """`custom_labels` as plain `key=value` lines (the client's model encodes it); None unless on_demand."""
    if spec.mode != Mode.on_demand:
        return None
    return "\n".join(f"{k}={v}" for k, v in labels(spec).items())


def labels_body(spec: AppSpec) -> dict[str, Any] | None:
    """The second PATCH, after `update_body` (see the module docstring): on_demand applications only."""
    if spec.mode != Mode.on_demand:
        return None
    return {"custom_labels": policy.labels_text(labels(spec))}


def env_body(env: Mapping[str, str], *, internal: Mapping[str, str]) -> dict[str, Any]:
    """`PATCH /applications/{uuid}/envs/bulk`: the tenant's variables (checked) plus InkMCP's own (`internal`),
    literal (Coolify must not interpolate `$OTHER` in a tenant value), runtime and build time."""
    items = []
    for key, value in env.items():
        try:
            policy.check_env_key(key)
        except policy.PolicyViolation as e:
            raise TenantInputError(f"env var {key!r}: {e.reason}") from None
        items.append((key, value))
    for key, value in internal.items():
        policy.check_env_key(key, internal=True)
        items.append((key, value))
    return {"data": [{"key": k, "value": v, "is_preview": False, "is_literal": True, "is_multiline": "\n" in v}
                     for k, v in items]}  # fmt: skip


def sablier_router(spec: AppSpec, app_uuid: str, settings: MappingSettings) -> dict[str, Any]:
    """The proxy file-provider document (`/data/coolify/proxy/dynamic/inkmcp-<app uuid>.yml`) that routes an
    on_demand service's host through Sablier, so a request wakes the sleeping container (NOTES.md §g). The
    service URL points at the application's container on the coolify network: Coolify names a container
    `<app uuid>-<timestamp>` (a new name per deployment) unless `is_consistent_container_name_enabled`, which
    `routing_fields` sets, makes the name and network alias the app uuid (docker.php
    generateApplicationContainerName). Sablier's *blocking* strategy: the request waits for the container to be
    ready (at most 1 m) and is then answered by the app, as an API client expects; the dynamic strategy would
    answer a browser waiting page (HTML, 200) instead."""
    name = f"inkmcp-{app_uuid}"
    hosts = [hostname(spec.key, spec.server), *custom_domains(spec.domains, spec.server, settings)]
    rule = " || ".join(f"Host(`{h}`)" for h in hosts)
    return {"http": {
        "routers": {name: {"rule": rule, "entryPoints": ["https"], "service": name,
                           "middlewares": [f"{name}-sablier"], "tls": {"certResolver": "letsencrypt"}}},
        "middlewares": {f"{name}-sablier": {"plugin": {"sablier": {
            "sablierUrl": "http://sablier:10000", "group": labels(spec)["sablier.group"],
            "sessionDuration": settings.sablier_session, "blocking": {"timeout": "1m"}}}}},
        "services": {name: {"loadBalancer": {"servers": [{"url": f"http://{app_uuid}:{port_of(spec.plan)}"}]}}},
    }}  # fmt: skip
