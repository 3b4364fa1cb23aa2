"""Other platforms' files: what `render.yaml`, `railway.json`/`railway.toml`, `fly.toml` and Heroku's
`app.json` say about how to build and run an app, so a sample app made for those platforms deploys here
from one call.

They rank below call arguments, `inkmcp.yaml` and the Procfile and above framework detection (see
inkmcp/build/detect.py). Among themselves the first file that says something wins, field by field, in
this order: render.yaml, railway.json, railway.toml, fly.toml, app.json. Env defaults merge the same way
(an earlier file's value wins) and are the lowest-precedence env of all: anything the agent or an add-on
sets wins over them.

Safety: the files are read with safe parsers only (`yaml.safe_load`, `tomllib`, `json`), through
`read_repo_text` (no symlink out of the checkout, size-capped), and validated by pydantic models that
ignore the many keys we do not use but check the type of every key we do. Nothing in them is executed
here; their commands become plan commands that run later exactly like Procfile commands (as the
project's tenant). Secret-bearing env entries are never taken: Render's `sync: false`,
`generateValue`, `fromDatabase`, `fromService`, `fromGroup`, Heroku's `generator`, and values holding
`${...}` placeholders are skipped and reported in `notes` (with `wants` saying which add-on the app
expects, e.g. `fromDatabase` → "postgres").

What is taken from each file:
- render.yaml: for the matched service, `startCommand`, `buildCommand`, `preDeployCommand` (the release
  command), `rootDir` (the app directory), `type: static` / `runtime: static` + `staticPublishPath`
  (a static site), `type: worker` (a backend), `envVars[].value`; `databases:` and `fromDatabase` say the
  app wants Postgres, a `redis`/`keyvalue` service or `fromService` of that type says it wants Redis.
  Docker/image services (`runtime: docker|image`) give no command: we do not build images.
  `fromDatabase` (property connectionString/host/port/user/password/database) and `fromService` of a Redis
  become `env_links` (`CELERY_BROKER_URL` → `REDIS_URL`): the pipeline copies the add-on's injected value.
  Which service matches `service_name`: the one with that `name`; else the only web service, or among
  several the only one named web/app/api/server/backend/main (then its
  workers with the same rootDir join it as unrouted processes, like a Procfile's `worker:`); else the
  only static site; else the only worker (a backend). Several candidates (with commands) and no name
  match is an error naming them (argument service_name).
- railway.json / railway.toml: `build.buildCommand`, `deploy.startCommand`, `deploy.preDeployCommand`
  (a string, or a list: one command per item joined with `&&`; a list of single words is one argv).
- fly.toml: `[processes]` (the process named in `[http_service].processes` / `[[services]].processes`,
  default `app`, becomes the routed `web` process; the others run unrouted), `[deploy].release_command`,
  `[env]`, and `internal_port` as the fixed port when the start command comes from fly.toml and does not
  read `$PORT` (fly commands usually hard-code `--bind :8080`). Commands starting with an absolute path
  point into the app's Docker image and are skipped. `[build]` is not used (Dockerfile/buildpacks).
- app.json: `env` values (`"KEY": "v"` or `{"value": "v"}`), `addons` (heroku-postgresql → postgres,
  *redis* → redis), `formation` (a Procfile process type with `quantity: 0` is not started).
  `scripts.postdeploy` runs once at app creation on Heroku, not per deploy: it is reported in notes,
  not run. Its process types come from the Procfile; `buildpacks` are not used (the stack is detected).

Commands lose an environment wrapper (`uv run`, `poetry run`, `pipenv run`, `rye run`, `pdm run`): the
build installed the locked dependencies into the virtualenv on the process's PATH already.
Build commands lose their dependency-install steps (`pip install -r ...`, `npm install`, `npm ci`,
`yarn`, `poetry install`, ...): InkMCP's installer does that step from the lock file before the build
command runs, and a second unpinned install would be slower and could differ.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from inkmcp.build.manifest import read_repo_text
from inkmcp.build.plan import check_health_path
from inkmcp.core.names import ENV_KEY, RESERVED_ENV
from inkmcp.errors import BuildPlanError

RENDER = "render.yaml"
RAILWAY_JSON = "railway.json"
RAILWAY_TOML = "railway.toml"
FLY = "fly.toml"
HEROKU = "app.json"
PLATFORM_FILES = (RENDER, RAILWAY_JSON, RAILWAY_TOML, FLY, HEROKU)

MAX_ENV_DEFAULTS = 200
MAX_ENV_VALUE_BYTES = 32 * 1024
# The same rules as an agent's env_vars (inkmcp.core.names): a platform file's PORT = "8080" is about that
# platform's container, and PATH/HOME/... are InkMCP's own.
_ENV_KEY = ENV_KEY
_RESERVED_ENV = RESERVED_ENV
_INSTALL_STEP = re.compile(
    r"""^(
        (pip3?|python3?\s+-m\s+pip|uv\s+pip)\s+install\b.*
      | uv\s+sync\b.*
      | poetry\s+install\b.*
      | pipenv\s+install\b.*
      | npm\s+(install|i|ci)(\s+--?[\w-]+(=\S+)?)*
      | yarn(\s+install)?(\s+--?[\w-]+(=\S+)?)*
      | pnpm\s+(install|i)(\s+--?[\w-]+(=\S+)?)*
      | bun\s+(install|i)(\s+--?[\w-]+(=\S+)?)*
    )$""",
    re.X,
)

Kind = Literal["web", "worker", "static"]
# With several render.yaml web services and no name match, one named like the app itself is the app.
_MAIN_NAMES = frozenset({"web", "app", "api", "server", "backend", "main"})


@dataclass
class PlatformService:
    """What the platform files say about the service being deployed, merged across files."""

    files: list[str] = field(default_factory=list)
    """Platform files present (read or not), for error messages."""
    source: str | None = None
    """The file that gave the start command (or said it is a static site)."""
    kind: Kind | None = None
    start: str | None = None
    workers: dict[str, str] = field(default_factory=dict)
    """Extra unrouted processes that belong with `start` (render workers, fly non-http processes)."""
    build: str | None = None
    release: str | None = None
    port: int | None = None
    static_dir: str | None = None
    root_dir: str | None = None
    health_path: str | None = None
    """The path the file's health check asks (render healthCheckPath, railway healthcheckPath, fly checks); newuser4"""
    health_from: str | None = None
    """The file and key `health_path` came from, for the queued event."""
    env_defaults: dict[str, str] = field(default_factory=dict)
    env_links: dict[str, str] = field(default_factory=dict)
    """App env name → the add-on variable it is a copy of (`CELERY_BROKER_URL` → `REDIS_URL`), from Render's
    fromDatabase/fromService: set by the pipeline from the injected add-on env when the add-on exists."""
    wants: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[BuildPlanError] = field(default_factory=list)
    """Files that could not be parsed or validated: skipped (as if absent) with a note; detect quotes them in
    its error when nothing else says how to run the app."""
    scaled_to_zero: set[str] = field(default_factory=set)
    """Process types app.json's `formation` runs with quantity 0: the Procfile's line is not started."""
    candidates: list[str] = field(default_factory=list)
    """Service names a file offers when none matched (for the error message)."""

    def want(self, addon: str) -> None:
        if addon not in self.wants:
            self.wants.append(addon)


def _error(file: str, problem: str) -> BuildPlanError:
    return BuildPlanError(
        f"{file} is invalid: {problem}.",
        argument="repo_url",
        fix=f"fix {file} (commit and push, then deploy again), or delete it, or pass start_command "
        "(and build_command) so the file is not needed",
    )


def _describe(file: str, exc: ValidationError) -> BuildPlanError:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()[:5])
    return _error(file, problems)


def _relative(file: str, key: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    posix = PurePosixPath(value.strip())
    if posix.is_absolute() or ".." in posix.parts:
        raise _error(file, f"{key} {value!r} must be a relative path inside the repository without '..'")
    return str(posix)


def strip_install_steps(command: str | None) -> tuple[str | None, list[str]]:
    """Drop dependency-install steps from an `a && b; c` build command; return (rest joined by `&&`, dropped)."""
    if command is None or not command.strip():
        return None, []
    kept, dropped = [], []
    for part in re.split(r"&&|;", command):  # `yarn; yarn build` (render-examples/nextjs-hello-world)
        step = part.strip()
        if not step:
            continue
        (dropped if _INSTALL_STEP.match(step) else kept).append(step)
    return (" && ".join(kept) or None), dropped


def _env_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    return None


def _add_env(out: PlatformService, file: str, key: str, value: Any) -> None:
    text = _env_value(value)
    if text is None:
        return
    if not _ENV_KEY.match(key) or key in _RESERVED_ENV:
        if key != "PORT":  # PORT is expected in platform files and is always InkMCP's own
            out.notes.append(f"{file}: env {key[:60]!r} not used (not a name InkMCP lets an app set)")
        return
    if "${" in text:
        out.notes.append(f"{file}: env {key[:60]} is a placeholder ({text[:40]!r}), not a default: pass it in env_vars")
        return
    if "\x00" in text or len(text.encode()) > MAX_ENV_VALUE_BYTES or len(out.env_defaults) >= MAX_ENV_DEFAULTS:
        out.notes.append(f"{file}: env {key[:60]} not used (too large, or too many variables)")
        return
    out.env_defaults.setdefault(key, text)


# --- render.yaml -------------------------------------------------------------------------------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _RenderEnvVar(_Loose):
    key: str | None = None
    value: str | int | float | bool | None = None
    sync: bool | None = None
    generate_value: bool | None = Field(default=None, alias="generateValue")
    from_database: dict[str, Any] | None = Field(default=None, alias="fromDatabase")
    from_service: dict[str, Any] | None = Field(default=None, alias="fromService")
    from_group: str | None = Field(default=None, alias="fromGroup")


class _RenderService(_Loose):
    type: str
    name: str
    runtime: str | None = None
    env: str | None = None  # the older name of `runtime`
    build_command: str | None = Field(default=None, alias="buildCommand")
    start_command: str | None = Field(default=None, alias="startCommand")
    pre_deploy_command: str | None = Field(default=None, alias="preDeployCommand")
    root_dir: str | None = Field(default=None, alias="rootDir")
    static_publish_path: str | None = Field(default=None, alias="staticPublishPath")
    health_check_path: str | None = Field(default=None, alias="healthCheckPath")  # newuser4
    env_vars: list[_RenderEnvVar] = Field(default_factory=list, alias="envVars")

    @property
    def the_runtime(self) -> str:
        return (self.runtime or self.env or "").lower()

    @property
    def kind(self) -> Kind | None:
        if self.type == "static" or (self.type == "web" and self.the_runtime == "static"):
            return "static"
        if self.type == "web":
            return "web"
        if self.type in ("worker", "pserv", "background_worker"):
            return "worker"
        return None  # redis, keyvalue, cron: not something deploy_app runs as a service


class _RenderEnvironment(_Loose):
    services: list[_RenderService] = Field(default_factory=list)
    databases: list[Any] = Field(default_factory=list)


class _RenderProject(_Loose):
    environments: list[_RenderEnvironment] = Field(default_factory=list)


class _RenderBlueprint(_Loose):
    services: list[_RenderService] = Field(default_factory=list)
    databases: list[Any] = Field(default_factory=list)
    projects: list[_RenderProject] = Field(default_factory=list)  # newer blueprints: projects[].environments[]

    def all_services(self) -> list[_RenderService]:
        """Top-level and per-environment services, each name once (the first environment's wins)."""
        seen: dict[str, _RenderService] = {}
        nested = [s for p in self.projects for e in p.environments for s in e.services]
        for svc in [*self.services, *nested]:
            seen.setdefault(svc.name, svc)
        return list(seen.values())

    @property
    def has_databases(self) -> bool:
        return bool(self.databases) or any(e.databases for p in self.projects for e in p.environments)


# Render's `fromDatabase.property` → the variable InkMCP's Postgres add-on injects (core/databases.py).
_POSTGRES_PROPERTY = {
    "connectionString": "DATABASE_URL", "host": "PGHOST", "port": "PGPORT", "user": "PGUSER",
    "password": "PGPASSWORD", "database": "PGDATABASE",
}  # fmt: skip


def _link(out: PlatformService, key: str, injected: str) -> None:
    if _ENV_KEY.match(key) and key not in _RESERVED_ENV and key != injected:
        out.env_links.setdefault(key, injected)


def _render_env(out: PlatformService, svc: _RenderService, by_name: dict[str, _RenderService]) -> None:
    for var in svc.env_vars:
        if not var.key:
            continue
        key = var.key[:60]  # notes reach agents: bounded
        if var.from_database is not None:
            out.want("postgres")
            injected = _POSTGRES_PROPERTY.get(str(var.from_database.get("property") or "connectionString"))
            if injected:
                _link(out, var.key, injected)
            out.notes.append(f"{RENDER}: {key} comes from a Render database: pass database={{'type': 'postgres'}}")
        elif var.from_service is not None:
            other = by_name.get(str(var.from_service.get("name")))
            kind = str(var.from_service.get("type") or (other.type if other else "")).lower()
            if kind in ("redis", "keyvalue"):
                out.want("redis")
                if str(var.from_service.get("property") or "connectionString") == "connectionString":
                    _link(out, var.key, "REDIS_URL")
                out.notes.append(f"{RENDER}: {key} comes from a Render Redis: pass database={{'type': 'redis'}}")
            else:
                out.notes.append(f"{RENDER}: {key} comes from another Render service: pass it in env_vars")
        elif var.generate_value or var.sync is False or var.from_group is not None:
            out.notes.append(f"{RENDER}: {key} is a secret the platform generates or asks for: pass it in env_vars")
        elif var.value is not None:
            _add_env(out, RENDER, var.key, var.value)


def _read_render(out: PlatformService, text: str, *, service_name: str, app_dir: str | None) -> None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise _error(RENDER, "not valid YAML" + (f" (line {mark.line + 1})" if mark is not None else "")) from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise _error(RENDER, "the top level must be a mapping with `services:`")
    try:
        blueprint = _RenderBlueprint.model_validate(data)
    except ValidationError as exc:
        raise _describe(RENDER, exc) from None
    services = blueprint.all_services()
    if blueprint.has_databases:
        out.want("postgres")
    if any(s.type in ("redis", "keyvalue") for s in services):
        out.want("redis")
    runnable = [s for s in services if s.kind is not None]
    if app_dir not in (None, "."):
        runnable = [s for s in runnable if _relative(RENDER, "rootDir", s.root_dir) == app_dir]
    by_name = {s.name: s for s in services}
    chosen = next((s for s in runnable if s.name == service_name), None)
    workers: list[_RenderService] = []
    if chosen is None:
        webs = [s for s in runnable if s.kind == "web"]
        statics = [s for s in runnable if s.kind == "static"]
        main = [s for s in webs if s.name.lower() in _MAIN_NAMES]
        if len(webs) > 1 and len(main) == 1:  # render-examples/celery: `app` (gunicorn) beside `flower`
            out.notes.append(
                f"{RENDER}: deploying service {main[0].name!r}; "
                + ", ".join(
                    f"deploy {s.name[:60]!r} with service_name={s.name[:60]!r}" for s in webs if s is not main[0]
                )
            )
            webs = main
        if len(webs) == 1:
            chosen = webs[0]
            workers = [s for s in runnable if s.kind == "worker" and s.root_dir == chosen.root_dir]
        elif not webs and len(statics) == 1:
            chosen = statics[0]
        elif not webs and not statics and len(runnable) == 1:  # a lone worker (render-examples/ioredis)
            chosen = runnable[0]
        elif any(s.start_command or s.static_publish_path for s in runnable):
            out.candidates = [f"{s.name[:60]} ({s.kind})" for s in runnable[:10]]
            return
        else:  # nothing to choose between: these services leave the commands to Render's dashboard
            return
    if chosen.the_runtime in ("docker", "image"):
        out.notes.append(
            f"{RENDER}: service {chosen.name[:60]!r} runs a Docker image; InkMCP builds from source instead"
        )
        return
    _render_env(out, chosen, by_name)
    out.root_dir = _relative(RENDER, "rootDir", chosen.root_dir)
    out.build = _take_build(out, RENDER, chosen.build_command)
    out.release = chosen.pre_deploy_command.strip() if chosen.pre_deploy_command else None
    out.kind = chosen.kind
    if chosen.kind == "web":  # newuser4: the web's check, whichever file gives its command
        _take_health(out, RENDER, "healthCheckPath", chosen.health_check_path)
    if chosen.kind == "static":
        out.static_dir = _relative(RENDER, "staticPublishPath", chosen.static_publish_path)
        out.source = RENDER
        return
    if chosen.start_command and chosen.start_command.strip():
        out.start, out.source = chosen.start_command.strip(), RENDER
        for worker in workers:
            if worker.start_command and worker.start_command.strip() and worker.the_runtime not in ("docker", "image"):
                out.workers[worker.name] = worker.start_command.strip()
                _render_env(out, worker, by_name)


def _take_health(out: PlatformService, file: str, key: str, value: str | None) -> None:
    """The first platform file naming a health check path gives it; one InkMCP cannot use is a note (newuser4)."""
    if out.health_path is not None or value is None:
        return
    try:
        out.health_path = check_health_path(value, f"{file} {key}")
    except ValueError as exc:
        out.notes.append(f"{exc}; the health check asks / instead")
        return
    if out.health_path is not None:
        out.health_from = f"{file} {key}"


def _take_build(out: PlatformService, file: str, command: str | None) -> str | None:
    rest, dropped = strip_install_steps(command)
    if dropped:
        out.notes.append(f"{file}: build step(s) {', '.join(repr(d[:80]) for d in dropped)} left to InkMCP's installer")
    return rest


# --- railway.json / railway.toml ---------------------------------------------------------------


class _RailwayBuild(_Loose):
    build_command: str | None = Field(default=None, alias="buildCommand")


class _RailwayDeploy(_Loose):
    start_command: str | None = Field(default=None, alias="startCommand")
    pre_deploy_command: str | list[str] | None = Field(default=None, alias="preDeployCommand")
    healthcheck_path: str | None = Field(default=None, alias="healthcheckPath")  # newuser4


class _Railway(_Loose):
    build: _RailwayBuild | None = None
    deploy: _RailwayDeploy | None = None


def _railway_release(value: str | list[str] | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip() or None
    items = [v.strip() for v in value if v.strip()]
    if not items:
        return None
    if len(items) > 1 and all(" " not in v for v in items):
        return shlex.join(items)  # ["alembic", "upgrade", "head"]: one argv
    return " && ".join(items)


def _read_railway(out: PlatformService, file: str, text: str) -> dict[str, Any]:
    try:
        data: Any = json.loads(text) if file.endswith(".json") else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(file, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except tomllib.TOMLDecodeError as exc:
        raise _error(file, f"not valid TOML ({exc})") from None
    if not isinstance(data, dict):
        raise _error(file, "the top level must be an object with `build` and `deploy`")
    try:
        railway = _Railway.model_validate(data)
    except ValidationError as exc:
        raise _describe(file, exc) from None
    found: dict[str, Any] = {}
    if railway.deploy and railway.deploy.start_command and railway.deploy.start_command.strip():
        found["start"] = railway.deploy.start_command.strip()
    if railway.build and railway.build.build_command:
        found["build"] = _take_build(out, file, railway.build.build_command)
    if railway.deploy:
        found["release"] = _railway_release(railway.deploy.pre_deploy_command)
        found["health"] = ("healthcheckPath", railway.deploy.healthcheck_path)  # newuser4
    return found


# --- fly.toml ----------------------------------------------------------------------------------


class _FlyCheck(_Loose):
    path: str | None = None  # an HTTP check's path (a TCP check has none)


class _FlyHttp(_Loose):
    internal_port: int | None = Field(default=None, ge=1, le=65535)
    processes: list[str] = Field(default_factory=list)
    checks: list[_FlyCheck] = Field(default_factory=list)  # [[http_service.checks]]; newuser4
    http_checks: list[_FlyCheck] = Field(default_factory=list)  # [[services.http_checks]]; newuser4


class _FlyDeploy(_Loose):
    release_command: str | None = None


class _Fly(_Loose):
    processes: dict[str, str] | list[Any] = Field(default_factory=dict)  # old files: `processes = []`
    env: dict[str, str | int | float | bool] = Field(default_factory=dict)
    deploy: _FlyDeploy | None = None
    http_service: _FlyHttp | None = None
    services: list[_FlyHttp] = Field(default_factory=list)


def _image_path(command: str) -> bool:
    """`/app/bin/migrate`: a path inside the app's Docker image, meaningless in a source checkout."""
    return command.lstrip().startswith("/")


def _read_fly(out: PlatformService, text: str, service_name: str) -> dict[str, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _error(FLY, f"not valid TOML ({exc})") from None
    try:
        fly = _Fly.model_validate(data)
    except ValidationError as exc:
        raise _describe(FLY, exc) from None
    for key, value in fly.env.items():
        _add_env(out, FLY, key, value)
    found: dict[str, Any] = {}
    release = fly.deploy.release_command.strip() if fly.deploy and fly.deploy.release_command else None
    if release and _image_path(release):
        out.notes.append(f"{FLY}: release_command {release[:80]!r} is a path inside the Docker image; not run")
    elif release:
        found["release"] = release
    http = fly.http_service if fly.http_service and fly.http_service.internal_port else None
    http = http or next((s for s in fly.services if s.internal_port), None)
    processes = fly.processes if isinstance(fly.processes, dict) else {}
    if not processes:
        if http is not None or fly.services:
            out.notes.append(f"{FLY}: no [processes]; the command is its Dockerfile's CMD, which InkMCP does not read")
        return found
    routed_name = (http.processes[0] if http and http.processes else None) or "app"
    if routed_name not in processes and len(processes) == 1:
        routed_name = next(iter(processes))
    skipped = [n for n, c in processes.items() if _image_path(c)]
    for name in skipped:
        out.notes.append(f"{FLY}: process {name[:60]!r} runs a path inside the Docker image; not used")
    usable = {n: c.strip() for n, c in processes.items() if n not in skipped and c.strip()}
    if service_name in usable and service_name != routed_name:  # like a Procfile's `worker:` deployed alone
        found["start"], found["kind"] = usable[service_name], "worker"
    elif routed_name in usable:
        found["start"] = usable.pop(routed_name)
        found["workers"] = usable
        if http is not None:  # newuser4
            path = next((c.path for c in [*http.checks, *http.http_checks] if c.path), None)
            key = "[[http_service.checks]] path" if http is fly.http_service else "[[services.http_checks]] path"
            found["health"] = (key, path)
        if http is not None and "PORT" not in found["start"]:
            found["port"] = http.internal_port
    return found


# --- app.json (Heroku) -------------------------------------------------------------------------


class _HerokuEnv(_Loose):
    value: str | int | float | bool | None = None
    generator: str | None = None
    required: bool | None = None


class _Heroku(_Loose):
    env: dict[str, Any] = Field(default_factory=dict)
    addons: list[Any] = Field(default_factory=list)
    scripts: dict[str, Any] = Field(default_factory=dict)
    formation: dict[str, Any] = Field(default_factory=dict)


def _read_heroku(out: PlatformService, text: str) -> None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _error(HEROKU, f"not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise _error(HEROKU, "the top level must be an object")
    try:
        app = _Heroku.model_validate(data)
    except ValidationError as exc:
        raise _describe(HEROKU, exc) from None
    for key, raw in app.env.items():
        if isinstance(raw, str | int | float | bool):
            _add_env(out, HEROKU, key, raw)
            continue
        if not isinstance(raw, dict):
            continue
        entry = _HerokuEnv.model_validate(raw)
        if entry.generator:
            out.notes.append(f"{HEROKU}: {key[:60]} is a generated secret on Heroku: pass it in env_vars")
        elif entry.value is not None:
            _add_env(out, HEROKU, key, entry.value)
        elif entry.required is not False and "description" in raw:
            out.notes.append(f"{HEROKU}: {key[:60]} has no default: pass it in env_vars if the app needs it")
    for process, scale in app.formation.items():
        if isinstance(scale, dict) and scale.get("quantity") == 0 and process != "web":
            out.scaled_to_zero.add(process)
    for addon in app.addons:
        plan = str(addon.get("plan", "") if isinstance(addon, dict) else addon).lower()
        if "postgres" in plan:
            out.want("postgres")
        elif "redis" in plan:
            out.want("redis")
    postdeploy = app.scripts.get("postdeploy")
    if isinstance(postdeploy, str) and postdeploy.strip():
        out.notes.append(
            f"{HEROKU}: scripts.postdeploy ({postdeploy.strip()[:80]!r}) runs once at app creation on Heroku and "
            "is not run here; put a per-deploy step in inkmcp.yaml `release:` if the app needs it"
        )


# --- all of them -------------------------------------------------------------------------------


def _read(base: Path, name: str, checkout: Path) -> tuple[str, str] | None:
    """The file's text from the app directory, else from the repo root; (shown name, text)."""
    text = read_repo_text(base, name, root=checkout)
    if text is not None:
        return name, text
    if base.resolve() != checkout.resolve():
        text = read_repo_text(checkout, name, root=checkout)
        if text is not None:
            return name, text
    return None


def load_platform_files(checkout: Path, *, service_name: str, app_dir: str | None) -> PlatformService:
    """Read every platform file for `service_name`; never raises for a broken file (see `errors`).

    `app_dir` is the app directory when the call or inkmcp.yaml chose one (None: let render.yaml's
    rootDir choose it). A file that cannot be parsed is kept in `errors` and otherwise treated as absent:
    a broken render.yaml (a real one in render-examples/create-react-app does not parse) must not block an
    app that detection or a Procfile can run; detect quotes it when nothing says how to run the app.
    """
    out = PlatformService()
    base = checkout / app_dir if app_dir else checkout
    try:
        found = _read(checkout, RENDER, checkout)
        if found is not None:
            out.files.append(RENDER)
            _read_render(out, found[1], service_name=service_name, app_dir=app_dir)
    except BuildPlanError as exc:
        out.errors.append(exc)
    if app_dir is None and out.root_dir:
        base = checkout / out.root_dir
    for name in (RAILWAY_JSON, RAILWAY_TOML, FLY):
        try:
            found = _read(base, name, checkout)
            if found is None:
                continue
            out.files.append(name)
            values = _read_railway(out, name, found[1]) if name != FLY else _read_fly(out, found[1], service_name)
        except BuildPlanError as exc:
            out.errors.append(exc)
            continue
        if out.source is None and values.get("start"):
            out.start, out.source, out.kind = values["start"], name, values.get("kind", "web")
            out.workers = dict(values.get("workers") or {})
            if values.get("port") is not None:
                out.port = values["port"]
        if values.get("health"):  # newuser4
            _take_health(out, name, *values["health"])
        if out.build is None and values.get("build"):
            out.build = values["build"]
        if out.release is None and values.get("release"):
            out.release = values["release"]
    try:
        found = _read(base, HEROKU, checkout)
        if found is not None:
            out.files.append(HEROKU)
            _read_heroku(out, found[1])
    except BuildPlanError as exc:
        out.errors.append(exc)
    out.start, out.build, out.release = (unwrap_runner(c) for c in (out.start, out.build, out.release))
    out.workers = {name: unwrap_runner(c) or c for name, c in out.workers.items()}
    return out


_RUNNER = re.compile(r"^(uv\s+run|poetry\s+run|pipenv\s+run|rye\s+run|pdm\s+run)\s+(?=[^-\s])")


def unwrap_runner(command: str | None) -> str | None:
    """`uv run uvicorn app:app` → `uvicorn app:app`: the wrapper would make (and fill, over the network) an
    environment of its own at start time; InkMCP's build already installed the locked dependencies into the
    virtualenv whose bin/ is on the process's PATH. Wrappers with options (`uv run --with x`) are kept."""
    if command is None:
        return None
    return " && ".join(_RUNNER.sub("", part.strip()) for part in command.split("&&"))
