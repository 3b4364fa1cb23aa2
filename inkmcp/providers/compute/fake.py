"""An in-process compute provider that behaves like a remote one: the contract's fake, and its example.

Why it exists: core must be testable against a provider that does what Coolify does (queued deployments that
finish later, ids only the remote knows, answers lost on the way back, a full queue, an unreachable API, a
process that dies between two steps) without a network, and the Coolify provider needs a worked example of
how to meet the contract (`base.py`) against such an API. `tests/contract/` runs the same suite against this
fake, the local provider and, later, the Coolify provider over its stand-in, as httpx ships `MockTransport`.

Two parts:

* `FakeRemote` plays Coolify: projects, one application per process, env vars that apply only on the next
  deployment or restart, deployments moving `queued → in_progress → finished | failed` in the background (a
  bounded number building at once, the rest queued), a failed deployment keeping the old container, queued
  deletes, status strings like Coolify's (`running:healthy`, `exited`). It outlives provider instances, as
  Coolify outlives an InkMCP restart. Faults are injected through `FakeRemote.faults`: an operation refused
  before it takes effect (`unavailable`, a 503), one that takes effect but whose answer is lost (`lost_answer`,
  a timeout after the request was sent), a permanent refusal (`refused`, a 403/422), a full deployment queue
  (`queue_full`, 429 with Retry-After), and crash points (`crash_at`) where the InkMCP process "dies".
  `hold()` pauses the remote's progress so a test can look at an in-between state without racing it.
* `FakeComputeProvider` meets the contract against it and keeps no state of its own: everything it must find
  again goes through `record` into core's database, so a new instance (a restarted InkMCP) re-attaches.

What the remote runs is simulated, not executed: `build_command` and `release_command` are read by a tiny
interpreter (`echo TEXT` logs TEXT, `exit N` stops with status N, anything else is logged as run), and whether
a process starts is `FakeRemote.app_behaviour(process, env)`; the default, `crash_on_env`, makes a process exit
at start when its env has `CRASH=<process name>` (or `CRASH=all`), the same convention as the contract suite's
real test app for the local provider.

Known difference from real Coolify (flagged for the Coolify provider): `rollback` here restores the image *and
the env* a deployment ran with; Coolify's rollback keeps the application's current env, so a Coolify provider
rolling back one process of a multi-process release must put the previous env back itself, which the contract
does not give it today (core keeps no per-deployment env).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import re
import secrets
import string
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from inkmcp.build.plan import BuildPlan, ServiceType, Stack
from inkmcp.build.source import SourceWorkspace
from inkmcp.providers.compute.base import (
    EnvChange,
    EnvOutcome,
    LogScope,
    ProcessRuntime,
    ProgressCallback,
    ProviderRefused,
    ProviderUnavailable,
    Record,
    RefScope,
    ReleaseFailed,
    ReleaseRequest,
    ReleaseResult,
    ReleaseSpec,
    RuntimeState,
    ServiceKey,
    ServiceRuntime,
    Step,
)

DEPLOYMENT_ENV = "INKMCP_DEPLOYMENT"
"""Set on every application before each deployment: which InkMCP deployment a container belongs to (an app may
read it too). It is how the fake, and an operator looking at Coolify, tells releases apart."""

CRASH_POINTS = (
    "after_create_project",
    "after_create_app",
    "after_deploy_call",
    "after_record_deployment",
    "after_remote_finished",
    "after_restart_call",
)
"""Where `Faults.crash_at` can make the InkMCP process die: right after a remote call took effect but before its
answer was recorded, or right after a record. Every one must be survivable."""

OPERATIONS = (
    "create_project", "find_project", "delete_project", "create_app", "find_app", "update_app", "set_envs",
    "deploy", "restart", "rollback", "stop", "list_deployments", "get_deployment", "get_app", "app_logs",
    "delete_app",
)  # fmt: skip


class FakeCrash(BaseException):
    """The InkMCP process dies here (an injected crash point). A BaseException, like the SystemExit of a killed
    process, so no `except Exception` on the way turns it into a recorded failure."""


class RemoteError(Exception):
    """An error answer of the fake remote, shaped like Coolify's: an HTTP status and its message."""

    def __init__(self, status: int, message: str, *, retry_after: float | None = None) -> None:
        self.status = status
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{status} {message}")


@dataclass
class Faults:
    """Faults the remote injects, per operation name (`OPERATIONS`); counters go down as they fire."""

    unavailable: dict[str, int] = field(default_factory=dict)
    """Next N calls answer 503 before taking effect."""
    lost_answer: dict[str, int] = field(default_factory=dict)
    """Next N calls take effect, then the answer is lost (the caller sees a timeout)."""
    refused: dict[str, str] = field(default_factory=dict)
    """Every call answers 403 with this message (a token without the ability): permanent."""
    queue_full: int = 0
    """Next N `deploy` calls answer 429 "deployment queue full" with Retry-After."""
    retry_after: float = 0.05
    crash_at: set[str] = field(default_factory=set)
    """`CRASH_POINTS` where the provider raises FakeCrash once (the point is removed when it fires)."""


@dataclass
class Server:
    uuid: str
    name: str
    wildcard_domain: str


@dataclass
class Container:
    image: str  # uuid of the deployment that built the image
    commit: str
    env: dict[str, str]
    deployment: str  # uuid of the deployment that started this container


@dataclass
class RemoteApp:
    uuid: str
    name: str
    project_uuid: str
    server_uuid: str
    process: str
    routed: bool
    domain: str | None
    settings: dict[str, Any]
    envs: dict[str, str] = field(default_factory=dict)
    container: Container | None = None
    runtime_logs: list[str] = field(default_factory=list)
    deleting: bool = False

    @property
    def status(self) -> str:
        """Coolify's status string (NOTES.md §d)."""
        return "running:healthy" if self.container is not None else "exited"


@dataclass
class RemoteDeployment:
    uuid: str
    app_uuid: str
    seq: int
    commit: str
    kind: str  # deploy | restart | rollback
    env: dict[str, str]
    settings: dict[str, Any]
    image_of: str | None = None  # restart/rollback: the image to run; deploy: None (builds its own)
    status: str = "queued"  # queued | in_progress | finished | failed
    logs: list[str] = field(default_factory=list)
    ticks_left: int = 0

    @property
    def done(self) -> bool:
        return self.status in ("finished", "failed", "cancelled-by-user")


def crash_on_env(process: str, env: Mapping[str, str]) -> str | None:
    """Default app behaviour: `CRASH=<process>` or `CRASH=all` makes that process exit at start."""
    crash = env.get("CRASH", "")
    if crash in (process, "all"):
        return f"process '{process}' exited with code 1 (CRASH={crash})"
    return None


def run_script(script: str | None, logs: list[str]) -> int:
    """The fake's shell: `echo TEXT` logs TEXT, `exit N` stops with N, anything else is logged as run."""
    for part in (script or "").split(";"):
        command = re.sub(r"\s*[12]?>&[12]\s*", " ", part).strip()
        if not command:
            continue
        if command.startswith("echo"):
            logs.append(command[4:].strip().strip("'\""))
        elif m := re.fullmatch(r"exit\s+(\d+)", command):
            return int(m.group(1))
        else:
            logs.append(f"$ {command}")
    return 0


def _uuid() -> str:
    """24 lowercase alphanumerics, like Coolify's `new_public_id()`."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(24))


class FakeRemote:
    """The remote side: state that survives provider instances, moving on by itself in the background."""

    def __init__(
        self,
        *,
        tick: float = 0.005,
        build_ticks: int = 3,
        concurrent_builds: int = 2,
        queue_limit: int = 25,
        servers: list[Server] | None = None,
        app_behaviour: Callable[[str, Mapping[str, str]], str | None] = crash_on_env,
    ) -> None:
        self.tick = tick
        self.build_ticks = build_ticks
        self.concurrent_builds = concurrent_builds
        self.queue_limit = queue_limit
        self.servers = servers or [Server(uuid=_uuid(), name="s1", wildcard_domain="s1.apps.fake.test")]
        self.app_behaviour = app_behaviour
        self.faults = Faults()
        self.projects: dict[str, str] = {}  # uuid -> name
        self.apps: dict[str, RemoteApp] = {}
        self.deployments: dict[str, RemoteDeployment] = {}
        self.calls: list[str] = []
        self._seq = 0
        self._gate = asyncio.Event()
        self._gate.set()
        self._worker: asyncio.Task[None] | None = None

    # -- test controls ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Pause the remote's progress (nothing queued starts, nothing running finishes) inside the block."""
        self._gate.clear()
        try:
            yield
        finally:
            self._gate.set()

    async def settle(self, timeout: float = 10.0) -> None:
        """Wait until no deployment is queued or running and no delete is pending."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._busy():
            if loop.time() > deadline:
                raise TimeoutError("the fake remote did not settle")
            await asyncio.sleep(self.tick)

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def deployments_of(self, app_uuid: str, kind: str | None = None) -> list[RemoteDeployment]:
        return sorted((d for d in self.deployments.values() if d.app_uuid == app_uuid and kind in (None, d.kind)),
                      key=lambda d: d.seq)  # fmt: skip

    def apps_named(self, prefix: str) -> list[RemoteApp]:
        return [a for a in self.apps.values() if a.name.startswith(prefix)]

    # -- the API -------------------------------------------------------------------------------------------

    async def _enter(self, op: str) -> None:
        self.calls.append(op)
        await asyncio.sleep(0)
        if op in self.faults.refused:
            raise RemoteError(403, self.faults.refused[op])
        if self.faults.unavailable.get(op, 0) > 0:
            self.faults.unavailable[op] -= 1
            raise RemoteError(503, "Service Unavailable")

    def _answer_lost(self, op: str) -> None:
        if self.faults.lost_answer.get(op, 0) > 0:
            self.faults.lost_answer[op] -= 1
            raise RemoteError(504, "no answer (timed out after the request was sent)")

    def _app(self, uuid: str) -> RemoteApp:
        app = self.apps.get(uuid)
        if app is None or app.deleting:
            raise RemoteError(404, "Application not found.")
        return app

    async def find_project(self, name: str) -> str | None:
        await self._enter("find_project")
        return next((u for u, n in self.projects.items() if n == name), None)

    async def create_project(self, name: str) -> str:
        await self._enter("create_project")
        uuid = _uuid()
        self.projects[uuid] = name
        self._answer_lost("create_project")
        return uuid

    async def delete_project(self, uuid: str) -> None:
        await self._enter("delete_project")
        if uuid not in self.projects:
            raise RemoteError(404, "Project not found.")
        if any(a.project_uuid == uuid for a in self.apps.values()):
            raise RemoteError(400, "Project has resources, so it cannot be deleted.")
        del self.projects[uuid]

    async def find_app(self, project_uuid: str, name: str) -> str | None:
        await self._enter("find_app")
        return next((a.uuid for a in self.apps.values()
                     if a.project_uuid == project_uuid and a.name == name and not a.deleting), None)  # fmt: skip

    async def create_app(self, project_uuid: str, server_uuid: str, name: str, *, process: str, routed: bool,
                         domain_label: str, settings: dict[str, Any]) -> str:  # fmt: skip
        await self._enter("create_app")
        if project_uuid not in self.projects:
            raise RemoteError(422, "project_uuid: Project not found.")
        server = next((s for s in self.servers if s.uuid == server_uuid), None)
        if server is None:
            raise RemoteError(422, "server_uuid: Server not found.")
        uuid = _uuid()
        domain = f"https://{domain_label}.{server.wildcard_domain}" if routed else None
        self.apps[uuid] = RemoteApp(uuid=uuid, name=name, project_uuid=project_uuid, server_uuid=server_uuid,
                                    process=process, routed=routed, domain=domain, settings=dict(settings))  # fmt: skip
        self._answer_lost("create_app")
        return uuid

    async def update_app(self, uuid: str, settings: dict[str, Any]) -> None:
        await self._enter("update_app")
        self._app(uuid).settings.update(settings)
        self._answer_lost("update_app")

    async def set_envs(self, uuid: str, envs: dict[str, str]) -> None:
        """Replace the app's env (Coolify: bulk upsert + delete of the rest). Applies at the next deployment."""
        await self._enter("set_envs")
        self._app(uuid).envs = dict(envs)
        self._answer_lost("set_envs")

    async def deploy(self, uuid: str, commit: str) -> str | None:
        """Queue a build + start of `commit`. None, like Coolify's "Deployment already queued for this commit.",
        when one for that commit is queued or running."""
        await self._enter("deploy")
        app = self._app(uuid)
        if self.faults.queue_full > 0 or sum(not d.done for d in self.deployments.values()) >= self.queue_limit:
            self.faults.queue_full = max(0, self.faults.queue_full - 1)
            raise RemoteError(429, "Deployment queue full.", retry_after=self.faults.retry_after)
        if any(not d.done and d.kind == "deploy" and d.commit == commit for d in self.deployments_of(uuid)):
            return None
        dep = self._queue(app, "deploy", commit, image_of=None)
        self._answer_lost("deploy")
        return dep.uuid

    async def restart(self, uuid: str) -> str:
        """Re-create the container from its image with the app's current env (Coolify's restart)."""
        await self._enter("restart")
        app = self._app(uuid)
        if app.container is None:
            raise RemoteError(400, "Application is not running.")
        dep = self._queue(app, "restart", app.container.commit, image_of=app.container.image)
        self._answer_lost("restart")
        return dep.uuid

    async def rollback(self, uuid: str, to: str) -> str:
        """Run the image (and, unlike Coolify, the env) deployment `to` ran with (see the module docstring)."""
        await self._enter("rollback")
        app = self._app(uuid)
        old = self.deployments.get(to)
        if old is None or old.app_uuid != uuid:
            raise RemoteError(404, "Deployment not found.")
        dep = self._queue(app, "rollback", old.commit, image_of=old.image_of or old.uuid, env=old.env)
        self._answer_lost("rollback")
        return dep.uuid

    async def stop(self, uuid: str) -> None:
        await self._enter("stop")
        app = self._app(uuid)
        if app.container is not None:
            app.runtime_logs.append("[fake] stopped")
        app.container = None

    async def list_deployments(self, uuid: str) -> list[RemoteDeployment]:
        await self._enter("list_deployments")
        self._app(uuid)
        return [copy.deepcopy(d) for d in self.deployments_of(uuid)]

    async def get_deployment(self, uuid: str) -> RemoteDeployment:
        await self._enter("get_deployment")
        dep = self.deployments.get(uuid)
        if dep is None:
            raise RemoteError(404, "Deployment not found.")
        return copy.deepcopy(dep)

    async def get_app(self, uuid: str) -> RemoteApp:
        await self._enter("get_app")
        return copy.deepcopy(self._app(uuid))

    async def app_logs(self, uuid: str, lines: int) -> list[str]:
        await self._enter("app_logs")
        return list(self._app(uuid).runtime_logs[-lines:])

    async def delete_app(self, uuid: str) -> None:
        """Queued, like Coolify's: the app disappears a moment later. 404 once it is gone."""
        await self._enter("delete_app")
        app = self.apps.get(uuid)
        if app is None:
            raise RemoteError(404, "Application not found.")
        app.deleting = True
        self._kick()
        self._answer_lost("delete_app")

    # -- the background ------------------------------------------------------------------------------------

    def _queue(self, app: RemoteApp, kind: str, commit: str, *, image_of: str | None,
               env: dict[str, str] | None = None) -> RemoteDeployment:  # fmt: skip
        self._seq += 1
        dep = RemoteDeployment(uuid=_uuid(), app_uuid=app.uuid, seq=self._seq, commit=commit, kind=kind,
                               env=dict(app.envs if env is None else env), settings=dict(app.settings),
                               image_of=image_of)  # fmt: skip
        dep.logs.append(f"[fake] {kind} of commit {commit[:12]} queued")
        self.deployments[dep.uuid] = dep
        self._kick()
        return dep

    def _busy(self) -> bool:
        return any(not d.done for d in self.deployments.values()) or any(a.deleting for a in self.apps.values())

    def _kick(self) -> None:
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="fake-remote")

    async def _run(self) -> None:
        while self._busy():
            await self._gate.wait()
            await asyncio.sleep(self.tick)
            await self._gate.wait()
            self._advance()

    def _advance(self) -> None:
        for app in [a for a in self.apps.values() if a.deleting]:
            del self.apps[app.uuid]
        running = [d for d in self.deployments.values() if d.status == "in_progress"]
        for dep in running:
            dep.ticks_left -= 1
            if dep.ticks_left <= 0:
                self._finish(dep)
        slots = self.concurrent_builds - sum(d.status == "in_progress" for d in self.deployments.values())
        for dep in sorted((d for d in self.deployments.values() if d.status == "queued"), key=lambda d: d.seq):
            if slots <= 0:
                break
            dep.status = "in_progress"
            dep.ticks_left = self.build_ticks if dep.kind == "deploy" else 1
            dep.logs.append("[fake] started")
            slots -= 1

    def _finish(self, dep: RemoteDeployment) -> None:
        app = self.apps.get(dep.app_uuid)
        if app is None or app.deleting:
            dep.status = "failed"
            dep.logs.append("[fake] the application was deleted")
            return
        if dep.kind == "deploy":
            code = run_script(dep.settings.get("build_command"), dep.logs)
            if code != 0:
                dep.status = "failed"
                dep.logs.append(f"[fake] build command exited with code {code}")
                return
            code = run_script(dep.settings.get("pre_deployment_command"), dep.logs)
            if code != 0:
                dep.status = "failed"
                dep.logs.append(f"[fake] pre-deployment command exited with code {code}")
                return
            dep.logs.append("[fake] image built")
        failure = self.app_behaviour(app.process, dep.env)
        if failure is not None:
            dep.status = "failed"  # the new container never got healthy: the old one keeps running
            dep.logs.append(f"[fake] new container failed: {failure}")
            app.runtime_logs.append(failure)
            return
        app.container = Container(image=dep.image_of or dep.uuid, commit=dep.commit, env=dict(dep.env),
                                  deployment=dep.uuid)  # fmt: skip
        app.runtime_logs.append(f"started ({dep.kind} {dep.uuid}, commit {dep.commit[:12]})")
        if not app.routed:
            app.runtime_logs.append("tick")
        dep.status = "finished"
        dep.logs.append("[fake] container healthy, old container removed")


# -----------------------------------------------------------------------------------------------------------
# The provider
# -----------------------------------------------------------------------------------------------------------


def _remote_call_error(e: RemoteError, what: str) -> Exception:
    """Coolify-shaped answers to contract errors: 429/5xx/no answer retryable, other refusals permanent."""
    if e.status == 429 or e.status >= 500:
        return ProviderUnavailable(f"{what}: {e.status} {e.message}", retry_after=e.retry_after)
    return ProviderRefused(f"{what}: {e.status} {e.message}")


@dataclass(frozen=True)
class _Process:
    name: str
    command: str | None
    routed: bool


class FakeComputeProvider:
    """The contract met against `FakeRemote` the way a Coolify provider would meet it against Coolify.

    Refs it records (all ids, never a secret):
      project:    {"project_uuid"}
      service:    {"server_uuid", "apps": {process: app uuid}, "live", "live_deployments": {process: uuid}, "url",
                   "env_revision", "env_restart": {"revision", "after": {process: uuid|None},
                   "deployments": {process: uuid}}}
      deployment: {"intent": {process: uuid|None}, "deployments": {process: uuid}, "rollbacks": {process: uuid}}
    `intent` is the write-ahead: the newest remote deployment of the app *before* this one was asked for, so an
    attempt whose answer was lost finds its deployment among the newer ones instead of starting another.
    """

    name = "fake"
    needs_checkout = False  # the remote fetches `repo_url` at `commit` itself
    rebuilds_same_commit = True  # nothing is built: as the local provider says it (newuser6)

    def __init__(self, remote: FakeRemote, work_dir: Path, *, poll_interval: float = 0.005,
                 wait_timeout: float = 60.0) -> None:  # fmt: skip
        self.remote = remote
        self.work_dir = Path(work_dir)
        self.poll_interval = poll_interval
        self.wait_timeout = wait_timeout

    async def start(self) -> None:
        """Nothing to start: the remote runs by itself."""

    async def close(self) -> None:
        """Nothing to stop: services keep running remotely, and the provider holds no state."""

    def _crash(self, point: str) -> None:
        if point in self.remote.faults.crash_at:
            self.remote.faults.crash_at.discard(point)
            raise FakeCrash(point)

    async def _call(self, what: str, coro: Any) -> Any:
        try:
            return await coro
        except RemoteError as e:
            raise _remote_call_error(e, what) from None

    # -- sources -------------------------------------------------------------------------------------------

    async def source_workspace(self, project_id: str) -> SourceWorkspace:
        """Core still reads the repo (plan, commit): in a directory of this provider, with InkMCP's rights."""
        mirrors = self.work_dir / "mirrors" / project_id
        locks = self.work_dir / "locks" / project_id
        for d in (mirrors, locks):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=None)

    # -- release -------------------------------------------------------------------------------------------

    @staticmethod
    def _processes(spec: ReleaseSpec) -> list[_Process]:
        if spec.service_type == ServiceType.webapp_static or spec.plan.stack == Stack.static:
            return [_Process("web", None, True)]
        return [_Process(p.name, p.command, p.routed) for p in spec.plan.processes]

    @staticmethod
    def _settings(plan: BuildPlan, process: _Process, spec: ReleaseSpec) -> dict[str, Any]:
        """What a Coolify provider would PATCH: absolute values, so a repeat changes nothing."""
        return {
            "build_command": plan.build_command, "start_command": process.command,
            "pre_deployment_command": plan.release_command if process.routed or len(spec.plan.processes) == 1
            else None,  # the release command runs once per release: with the routed process
            "limits_memory": f"{spec.resources.memory_mb}m", "limits_cpus": f"{spec.resources.cpus:g}",
            "ports_exposes": str(plan.port or 3000) if process.routed else None,
            "base_directory": "/" + plan.app_dir.strip("./"), "publish_directory": plan.static_dir,
        }  # fmt: skip

    async def release(self, request: ReleaseRequest, progress: ProgressCallback, record: Record) -> ReleaseResult:
        key = request.key
        service_ref = copy.deepcopy(key.service_ref)
        dep_ref = copy.deepcopy(request.deployment_ref)
        if service_ref.get("live") == request.deployment_id:
            return ReleaseResult(url=service_ref.get("url"))
        processes = self._processes(request)
        if not processes:
            raise ReleaseFailed(Step.building, "the build plan has no process to run")

        project_uuid = await self._ensure_project(key, record)
        apps = await self._ensure_apps(key, project_uuid, processes, service_ref, record)
        for p in processes:  # configure: absolute values, safe to repeat on every attempt
            env = {k: v.get_secret_value() for k, v in request.env.items()} | {DEPLOYMENT_ENV: request.deployment_id}
            await self._call(f"configuring {p.name}", self.remote.update_app(
                apps[p.name], self._settings(request.plan, p, request)))
            await self._call(f"setting env of {p.name}", self.remote.set_envs(apps[p.name], env))

        started = dep_ref.setdefault("deployments", {})
        for p in processes:
            if p.name not in started:
                started[p.name] = await self._start_deployment(apps[p.name], p.name, request.commit, dep_ref, record)
                await record(RefScope.deployment, dep_ref)
                self._crash("after_record_deployment")

        final = await self._wait(started, progress)
        self._crash("after_remote_finished")
        failed = {name: dep for name, dep in final.items() if dep.status != "finished"}
        if failed:
            await self._roll_back(apps, final, service_ref, dep_ref, record)
            name, dep = next(iter(failed.items()))
            step = _failed_step(dep.logs)
            tail = "\n".join(dep.logs[-5:])
            raise ReleaseFailed(step, f"process '{name}' failed ({dep.status}); the previous version keeps serving\n"
                                      f"last output:\n{tail}")  # fmt: skip

        await progress(Step.switching, "all processes finished; the remote switched traffic")
        routed = next((p for p in processes if p.routed), None)
        url = None
        if routed is not None:
            url = (await self._call("reading the routed app", self.remote.get_app(apps[routed.name]))).domain
        gone = {name: uuid for name, uuid in apps.items() if name not in {p.name for p in processes}}
        service_ref.update(live=request.deployment_id, url=url, env_revision=request.env_revision,
                           live_deployments={name: dep.uuid for name, dep in final.items()},
                           apps={n: u for n, u in apps.items() if n not in gone})  # fmt: skip
        service_ref.pop("env_restart", None)
        await record(RefScope.service, service_ref)
        for name, uuid in gone.items():  # a process the new release no longer has (e.g. worker removed)
            await self._delete_app(uuid, f"deleting the app of process {name}")
        return ReleaseResult(url=url)

    async def _ensure_project(self, key: ServiceKey, record: Record) -> str:
        project_ref = dict(key.project_ref)
        uuid = project_ref.get("project_uuid")
        if uuid:
            return str(uuid)
        name = f"inkmcp-{key.project_id}"
        uuid = await self._call("finding the project", self.remote.find_project(name))
        if uuid is None:
            uuid = await self._call("creating the project", self.remote.create_project(name))
            self._crash("after_create_project")
        await record(RefScope.project, {**project_ref, "project_uuid": uuid})
        return str(uuid)

    async def _ensure_apps(self, key: ServiceKey, project_uuid: str, processes: list[_Process],
                           service_ref: dict[str, Any], record: Record) -> dict[str, str]:  # fmt: skip
        """One application per process. Names are deterministic, so an app created by an attempt whose answer
        was lost (or that crashed before recording it) is found, not created twice."""
        apps: dict[str, str] = dict(service_ref.get("apps") or {})
        server = service_ref.get("server_uuid") or self.remote.servers[0].uuid  # placement is issue 8 item 6
        for p in processes:
            if p.name in apps:
                continue
            name = f"{key.service_id}-{p.name}"
            uuid = await self._call(f"finding the app of {p.name}", self.remote.find_app(project_uuid, name))
            if uuid is None:
                uuid = await self._call(f"creating the app of {p.name}", self.remote.create_app(
                    project_uuid, server, name, process=p.name, routed=p.routed,
                    domain_label=f"{key.service_name}-{key.project_name}".lower(), settings={}))
                self._crash("after_create_app")
            apps[p.name] = uuid
            service_ref.update(apps=apps, server_uuid=server)
            await record(RefScope.service, service_ref)
        return apps

    async def _start_deployment(self, app: str, process: str, commit: str, dep_ref: dict[str, Any],
                                record: Record) -> str:  # fmt: skip
        intent = dep_ref.setdefault("intent", {})
        if process not in intent:  # write-ahead: what existed before we asked
            known = await self._call(f"listing deployments of {process}", self.remote.list_deployments(app))
            intent[process] = known[-1].uuid if known else None
            await record(RefScope.deployment, dep_ref)
        found = await self._newer(app, process, intent[process], "deploy", commit)
        if found is not None:
            return found
        uuid = await self._call(f"deploying {process}", self.remote.deploy(app, commit))
        self._crash("after_deploy_call")
        if uuid is None:  # "already queued for this commit": ours, from an attempt whose answer was lost
            uuid = await self._newer(app, process, intent[process], "deploy", commit)
            if uuid is None:
                raise ProviderUnavailable(f"deploying {process}: the remote says a deployment is queued but lists none")
        return str(uuid)

    async def _newer(
        self, app: str, process: str, after: str | None, kind: str, commit: str | None = None
    ) -> str | None:
        """The newest `kind` deployment of `app` (of `commit`, if given) asked for after the anchor `after`."""
        deps = await self._call(f"listing deployments of {process}", self.remote.list_deployments(app))
        floor = next((d.seq for d in deps if d.uuid == after), 0) if after else 0
        mine = [d for d in deps if d.seq > floor and d.kind == kind and commit in (None, d.commit)]
        return mine[-1].uuid if mine else None

    async def _wait(self, deployments: Mapping[str, str], progress: ProgressCallback) -> dict[str, RemoteDeployment]:
        """Poll until every deployment is done; report `building` once the first one runs."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        reported = False
        while True:
            final = {name: await self._call(f"reading the deployment of {name}", self.remote.get_deployment(uuid))
                     for name, uuid in deployments.items()}  # fmt: skip
            if not reported and any(d.status != "queued" for d in final.values()):
                reported = True
                await progress(Step.building, "the remote is building")
            if all(d.done for d in final.values()):
                return final
            if loop.time() > deadline:
                raise ProviderUnavailable(f"the remote deployments did not finish within {self.wait_timeout:g} s")
            await asyncio.sleep(self.poll_interval)

    async def _roll_back(self, apps: dict[str, str], final: dict[str, RemoteDeployment], service_ref: dict[str, Any],
                         dep_ref: dict[str, Any], record: Record) -> None:  # fmt: skip
        """All or nothing: processes whose new deployment finished go back to the live release (or stop, if
        they did not exist before). Rollbacks are recorded, so a repeat waits for them instead of starting more."""
        previous = service_ref.get("live_deployments") or {}
        rollbacks = dep_ref.setdefault("rollbacks", {})
        for name, dep in final.items():
            if dep.status != "finished" or name in rollbacks:
                continue
            if name in previous:
                rollbacks[name] = await self._call(f"rolling back {name}", self.remote.rollback(apps[name],
                                                                                               previous[name]))
            else:
                await self._call(f"stopping {name}", self.remote.stop(apps[name]))
                rollbacks[name] = None
            await record(RefScope.deployment, dep_ref)
        pending = {n: u for n, u in rollbacks.items() if u}
        if pending:
            await self._wait(pending, _no_progress)

    async def _delete_app(self, uuid: str, what: str) -> None:
        try:
            await self.remote.delete_app(uuid)
        except RemoteError as e:
            if e.status != 404:  # gone already: what a repeat finds
                raise _remote_call_error(e, what) from None

    async def restore(self, spec: ReleaseSpec) -> None:
        """Remote applications outlive InkMCP: nothing to bring back."""

    # -- env -----------------------------------------------------------------------------------------------

    async def update_env(self, key: ServiceKey, env: dict[str, SecretStr], revision: str, record: Record) -> EnvChange:
        """Like Coolify: new env applies only at the next deployment or restart, and a restart is a queued job.
        So: set the env, queue a restart per process, record it, and say `pending`."""
        service_ref = copy.deepcopy(key.service_ref)
        apps: dict[str, str] = service_ref.get("apps") or {}
        live = service_ref.get("live")
        if not apps or not live:
            return EnvChange(outcome=EnvOutcome.next_start, detail="nothing deployed yet")
        values = {k: v.get_secret_value() for k, v in env.items()} | {DEPLOYMENT_ENV: str(live)}
        # A previous env change that has applied everywhere becomes the base; one still pending is replaced.
        service_ref["env_revision"] = await self._env_revision(service_ref)
        restart: dict[str, Any] = {"revision": revision, "after": {}, "deployments": {}}
        for name, uuid in apps.items():
            known = await self._call(f"listing deployments of {name}", self.remote.list_deployments(uuid))
            restart["after"][name] = known[-1].uuid if known else None
        service_ref["env_restart"] = restart
        await record(RefScope.service, service_ref)  # write-ahead, before anything changes remotely
        for name, uuid in apps.items():
            await self._call(f"setting env of {name}", self.remote.set_envs(uuid, values))
            try:
                restart["deployments"][name] = await self.remote.restart(uuid)
            except RemoteError as e:
                if e.status == 400:  # not running (stopped): it starts with the new env
                    continue
                raise _remote_call_error(e, f"restarting {name}") from None
            self._crash("after_restart_call")
            await record(RefScope.service, service_ref)
        return EnvChange(outcome=EnvOutcome.pending, detail="restart queued at the remote")

    # -- queries -------------------------------------------------------------------------------------------

    async def runtime(self, key: ServiceKey) -> ServiceRuntime:
        ref = key.service_ref
        apps: dict[str, str] = ref.get("apps") or {}
        if not apps or not ref.get("live"):
            return ServiceRuntime(state=RuntimeState.stopped, detail="not deployed")
        processes = []
        statuses = []
        for name, uuid in apps.items():
            try:
                app = await self.remote.get_app(uuid)
            except RemoteError as e:
                if e.status == 404:
                    processes.append(ProcessRuntime(name=name, state=RuntimeState.stopped))
                    continue
                raise _remote_call_error(e, f"reading the status of {name}") from None
            statuses.append(f"{name}: {app.status}")
            state = RuntimeState.running if app.status.startswith("running") else RuntimeState.stopped
            processes.append(ProcessRuntime(name=name, state=state, routed=app.routed))
        order = [RuntimeState.crashed, RuntimeState.stopped, RuntimeState.unknown, RuntimeState.starting,
                 RuntimeState.sleeping, RuntimeState.running]  # fmt: skip
        state = min((p.state for p in processes), key=order.index)
        return ServiceRuntime(state=state, deployment_id=str(ref["live"]), env_revision=await self._env_revision(ref),
                              processes=processes, detail="; ".join(statuses))  # fmt: skip

    async def _env_revision(self, ref: Mapping[str, Any]) -> str | None:
        """The release's env revision, or a queued restart's once every process has finished it."""
        restart = ref.get("env_restart")
        if not restart:
            return ref.get("env_revision")
        for name, uuid in (ref.get("apps") or {}).items():
            dep = restart["deployments"].get(name)
            if dep is None:  # crashed before recording it: look for it after the write-ahead anchor
                try:
                    dep = await self._newer(uuid, name, restart["after"].get(name), "restart")
                except ProviderRefused:  # the app is gone (404): nothing of it runs the old env either
                    continue
                if dep is None:
                    return ref.get("env_revision")
            found = await self._call(f"reading the restart of {name}", self.remote.get_deployment(dep))
            if found.status != "finished":
                return ref.get("env_revision")
        return str(restart["revision"])

    async def logs(self, key: ServiceKey, scope: LogScope, *, deployment_id: str | None,
                   deployment_ref: Mapping[str, Any] | None = None, tail: int) -> list[str]:  # fmt: skip
        apps: dict[str, str] = key.service_ref.get("apps") or {}
        lines: list[str] = []
        if scope == LogScope.runtime:
            for name, uuid in apps.items():
                try:
                    lines += [f"{name} | {line}" for line in await self.remote.app_logs(uuid, tail)]
                except RemoteError as e:
                    if e.status != 404:
                        raise _remote_call_error(e, f"reading the logs of {name}") from None
            return lines[-tail:]
        deployments = (deployment_ref or {}).get("deployments") or key.service_ref.get("live_deployments") or {}
        for name, uuid in deployments.items():
            try:
                dep = await self.remote.get_deployment(uuid)
            except RemoteError as e:
                if e.status != 404:
                    raise _remote_call_error(e, f"reading the build log of {name}") from None
                continue
            lines += [f"{name} | {line}" for line in dep.logs]
        return lines[-tail:]

    # -- removal -------------------------------------------------------------------------------------------

    async def remove(self, key: ServiceKey) -> None:
        """Delete every app of the service: the recorded ones, and any an interrupted attempt created without
        recording it (found by name). Deletes are queued remotely; a repeat finds them gone (404)."""
        uuids = set((key.service_ref.get("apps") or {}).values())
        uuids |= {a.uuid for a in self.remote.apps_named(f"{key.service_id}-")}
        for uuid in sorted(uuids):
            await self._delete_app(uuid, "deleting an app of the service")

    async def remove_project(self, project_id: str, project_ref: Mapping[str, Any]) -> None:
        uuid = project_ref.get("project_uuid") or await self._call(
            "finding the project", self.remote.find_project(f"inkmcp-{project_id}"))
        if not uuid:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_timeout
        while True:  # app deletes are queued: the remote refuses (400) until they are done
            try:
                await self.remote.delete_project(str(uuid))
                return
            except RemoteError as e:
                if e.status == 404:
                    return
                if e.status != 400 or loop.time() > deadline:
                    raise _remote_call_error(e, "deleting the project") from None
            await asyncio.sleep(self.poll_interval)


def _failed_step(logs: list[str]) -> Step:
    """Where a remote deployment failed, read from its log (Coolify's deployment has no phase field)."""
    text = "\n".join(logs)
    if "pre-deployment command exited" in text:
        return Step.releasing
    if "build command exited" in text:
        return Step.building
    return Step.health_check


async def _no_progress(step: Step, detail: str) -> None:
    """Rollbacks are not steps of the release an agent follows."""
