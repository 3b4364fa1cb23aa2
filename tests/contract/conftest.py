"""One compute-provider contract suite, run against every provider through a `Harness`.

A harness gives the suite what it cannot get through the contract itself: a provider instance (and a new one
after a simulated crash, sharing the machine or the remote), a request for the suite's test app, and the
ground truth of what runs (`serve`, `instances`, `census`), read from the processes (local) or the remote's
state (fake), never from the provider's own answers, which are what is under test.

Providers:
  local  the real LocalComputeProvider: real processes behind its real proxy, real builds (slow-ish: each
         release starts Python processes and health-checks them).
  fake   FakeComputeProvider over FakeRemote (inkmcp/providers/compute/fake.py): remote-like, in-process.
  coolify the real CoolifyComputeProvider over the Coolify stand-in (inkmcp/coolify/standin/: a real HTTP
         server validating every request and answer against Coolify's spec), through the real CoolifyClient
         with spec validation and InkMCP's policy on the wire. The stand-in does not run code, so
         `TenantStandin` gives its deployments the suite's test-app behaviour (what the fake does with
         `run_script` / `crash_on_env`): a build command, or the release command the mapping puts first in the
         start command, ending in `exit N` fails the deployment with its echoed output, `CRASH=<process>` makes
         the new container of that process unhealthy.
         Ground truth is the stand-in's state (containers, the env they started with, its deployment rows).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.coolify.budget import BudgetSettings, LocalBudget
from inkmcp.coolify.client import CoolifyClient, RetryPolicy
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.coolify.standin import CoolifyStandin, Token
from inkmcp.coolify.standin.deployments import QUEUE_FULL
from inkmcp.providers.compute.base import (
    ComputeProvider,
    ProgressCallback,
    ProviderRef,
    Record,
    RefScope,
    ReleaseRequest,
    ReleaseResult,
    ServiceKey,
    Step,
)
from inkmcp.providers.compute.coolify import mapping as coolify_mapping
from inkmcp.providers.compute.coolify import policy as coolify_policy
from inkmcp.providers.compute.coolify.provider import CRASH_POINTS as COOLIFY_CRASH_POINTS
from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
from inkmcp.providers.compute.fake import (
    CRASH_POINTS,
    DEPLOYMENT_ENV,
    FakeComputeProvider,
    FakeCrash,
    FakeRemote,
    crash_on_env,
    run_script,
)
from inkmcp.providers.compute.local import LocalComputeProvider
from inkmcp.providers.compute.local.supervisor import Backoff
from tests.cgroup_cleanup import remove_service_cgroups  # --- mender6
from tests.support import remove_tenant_users, traversable_tmpdir
from tests.support import wait_for as wait_for  # one poller for the suite; tests/coolify imports it from here

PROVIDERS = ["local", "fake", "coolify"]
REMOTE_PROVIDERS = ["fake", "coolify"]  # providers whose work is queued at a remote API
SLOW_PROVIDERS: set[str] = set()  # none yet: local's real releases take 0.5-4.5 s per test (measured)


def provider_param(name: str, *values: Any) -> Any:
    """A pytest param for provider `name` (plus extra values), marked slow where releases take seconds."""
    marks = [pytest.mark.slow] if name in SLOW_PROVIDERS else []
    return pytest.param(name, *values, id="-".join([name, *map(str, values)]), marks=marks)

PY = "/usr/bin/python3"

# The suite's test app, for providers that really run it. Its behaviour is the convention FakeRemote simulates
# (fake.crash_on_env): the routed process answers $MESSAGE; a process exits at start when CRASH names it.
WEB = """
import http.server, os, sys
if os.environ.get("CRASH", "") in ("web", "all"):
    sys.exit("web: refusing to start, CRASH=" + os.environ["CRASH"])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("MESSAGE", "").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
WORKER = """
import os, sys, time
if os.environ.get("CRASH", "") in ("worker", "all"):
    sys.exit("worker: refusing to start, CRASH=" + os.environ["CRASH"])
while True:
    print("tick", flush=True)
    time.sleep(0.5)
"""
APP_FILES = {"web.py": WEB, "worker.py": WORKER}
PROCFILE = f"web: exec {PY} web.py\nworker: exec {PY} worker.py\n"


def plan(*, worker: bool = False, build_command: str | None = None, release_command: str | None = None) -> BuildPlan:
    processes = [ProcessSpec(name="web", command=f"exec {PY} web.py", routed=True)]
    if worker:
        processes.append(ProcessSpec(name="worker", command=f"exec {PY} worker.py", routed=False))
    return BuildPlan(stack=Stack.none, source="call", processes=tuple(processes), build_command=build_command,
                     release_command=release_command)  # fmt: skip


def revision(env: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(env, sort_keys=True).encode()).hexdigest()[:16]


class Events:
    """A progress callback that keeps the steps reported."""

    def __init__(self) -> None:
        self.steps: list[Step] = []

    async def __call__(self, step: Step, detail: str) -> None:
        self.steps.append(step)


class RefBook:
    """What core's database does for refs, in memory: store what the provider records and hand it back on the
    next call. Deep copies both ways, as a round trip through JSONB would."""

    def __init__(self) -> None:
        self.refs: dict[tuple[RefScope, str], ProviderRef] = {}

    def recorder(self, key: ServiceKey, deployment_id: str | None) -> Record:
        rows = {RefScope.project: key.project_id, RefScope.service: key.service_id,
                RefScope.deployment: deployment_id}  # fmt: skip

        async def record(scope: RefScope, ref: ProviderRef) -> None:
            row = rows[RefScope(scope)]
            assert row is not None, f"a {scope} ref recorded outside a release"
            self.refs[(RefScope(scope), row)] = json.loads(json.dumps(ref))

        return record

    def key(self, key: ServiceKey) -> ServiceKey:
        return key.model_copy(update={
            "project_ref": copy.deepcopy(self.refs.get((RefScope.project, key.project_id), {})),
            "service_ref": copy.deepcopy(self.refs.get((RefScope.service, key.service_id), {})),
        })  # fmt: skip

    def request(self, request: ReleaseRequest, checkout: Path | None = None) -> ReleaseRequest:
        """`request` as core passes it on this attempt: refs as recorded so far, a checkout if one is needed."""
        return request.model_copy(update={
            "key": self.key(request.key),
            "deployment_ref": copy.deepcopy(self.refs.get((RefScope.deployment, request.deployment_id), {})),
            "checkout_dir": checkout if checkout is not None else request.checkout_dir,
        })  # fmt: skip


class Interrupt(BaseException):
    """The InkMCP process dies here (test-side crash point): not an Exception, so nothing records a failure."""


class Interrupting:
    """Wraps a provider; while `armed`, its next `release` raises `error()` when the provider reports `step` (i.e.
    after the provider did everything before that step), once. Counts release calls. Everything else is
    delegated."""

    def __init__(self, inner: ComputeProvider, step: Step, error: Callable[[], BaseException], *,
                 armed: bool = True) -> None:  # fmt: skip
        self.inner = inner
        self.step = step
        self.error = error
        self.armed = armed
        self.fired = False
        self.releases = 0
        self.name = inner.name
        self.needs_checkout = inner.needs_checkout

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def release(self, request: ReleaseRequest, progress: ProgressCallback, record: Record) -> ReleaseResult:
        self.releases += 1

        def fire(step: Step) -> None:
            if self.armed and step == self.step and not self.fired:
                self.fired = True
                raise self.error()

        async def watched(step: Step, detail: str) -> None:
            fire(step)
            await progress(step, detail)

        return await self.inner.release(request, watched, self._watching(record, fire))

    @staticmethod
    def _watching(record: Record, fire: Callable[[Step], None]) -> Record:
        """`record` with its `many` watched too: where core records refs and steps in one statement, a provider
        may write a step there instead of through `progress` (the Coolify provider's held `building` step of a
        build already finished at its first look), and the interruption must happen at that step all the same
        (before the statement, as a crash before it would)."""
        many = getattr(record, "many", None)
        if many is None:
            return record

        async def watched_record(*args: Any, **kwargs: Any) -> Any:
            return await record(*args, **kwargs)

        for name, value in vars(record).items():
            setattr(watched_record, name, value)

        async def watched_many(refs: Any, step: Any = None) -> None:
            steps = [step] if isinstance(step, tuple) else list(step or [])
            for status, _ in steps:
                fire(Step(status))
            await many(refs, step)

        watched_record.many = watched_many  # type: ignore[attr-defined]
        return watched_record  # type: ignore[return-value]


class Harness:
    """What the suite needs beyond the contract; one subclass per provider."""

    name: str
    remote: bool
    crash_points: tuple[str, ...] = ()
    provider: Any

    async def setup(self) -> None: ...
    async def teardown(self) -> None: ...

    async def restart(self) -> Any:
        """A new provider instance after a crash of the old one: same machine (files) or same remote."""
        raise NotImplementedError

    def key(self, service: str = "web") -> ServiceKey:
        pid = uuid.uuid4().hex
        return ServiceKey(account_id="acct", project_id=pid, service_id=f"svc-{pid[:12]}-{service}",
                          project_name=f"c{pid[:8]}", service_name=service)  # fmt: skip

    def checkout(self) -> Path | None:
        return None

    def request(self, key: ServiceKey, *, message: str = "one", worker: bool = False, crash: str | None = None,
                build_command: str | None = None, release_command: str | None = None,
                deployment_id: str | None = None, commit: str | None = None) -> ReleaseRequest:  # fmt: skip
        env = {"MESSAGE": message} | ({"CRASH": crash} if crash else {})
        return ReleaseRequest(
            deployment_id=deployment_id or uuid.uuid4().hex, key=key, service_type=ServiceType.webapp,
            mode=Mode.persistent, plan=plan(worker=worker, build_command=build_command,
                                            release_command=release_command),
            commit=commit or uuid.uuid4().hex + uuid.uuid4().hex[:8], env={k: SecretStr(v) for k, v in env.items()},
            env_revision=revision(env), repo_url=SecretStr("https://git.example/app.git"), checkout_dir=None,
        )  # fmt: skip

    def hold(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Pause asynchronous progress where the provider has any (a remote's queue)."""
        return contextlib.nullcontext()

    async def settle(self) -> None:
        """Wait until asynchronous work the provider queued has finished (nothing to wait for locally)."""

    async def serve(self, key: ServiceKey) -> str | None:
        """What the routed process answers now (the app answers its $MESSAGE), None if nothing answers."""
        raise NotImplementedError

    async def instances(self, key: ServiceKey) -> list[tuple[str, str, str]]:
        """What runs for the service: sorted (process, InkMCP deployment id, instance id: pid or container)."""
        raise NotImplementedError

    def census(self, key: ServiceKey) -> dict[str, Any] | None:
        """Remote objects made for the service: {"projects": n, "apps": {process: n},
        "deployments": {deployment id: {process: n}}}; None where nothing is remote."""
        return None

    def arm_crash(self, point: str) -> None:
        """Make the process die once at one of `crash_points` (the provider's own steps)."""
        raise AssertionError(f"{self.name} has no crash point {point!r}")

    def fault_scenarios(self) -> list[str]:
        """Remote faults `arm_fault` can inject, each one retryable (an answer the provider must survive)."""
        return []

    def arm_fault(self, scenario: str) -> None:
        raise AssertionError(f"{self.name} has no fault {scenario!r}")

    def refuse(self, operation: str, message: str) -> None:
        """Make the remote refuse an operation for good (a token without an ability)."""
        raise AssertionError(f"{self.name} cannot refuse {operation!r}")


class LocalHarness(Harness):
    name = "local"
    remote = False

    async def setup(self) -> None:
        # Not pytest's tmp_path: tenant users must traverse to their files (tests/local/conftest.py).
        self.root = traversable_tmpdir("inkmcp-contract-")
        self.data_dir = self.root / "data"
        self.providers: list[LocalComputeProvider] = []
        self.provider = await self._new()

    async def _new(self) -> LocalComputeProvider:
        provider = LocalComputeProvider(
            self.data_dir, proxy_port=0, health_timeout=10.0, stop_grace=2.0,
            backoff=Backoff(initial=0.2, maximum=2.0, reset_after=60.0),
        )  # fmt: skip
        await provider.start()
        self.providers.append(provider)
        return provider

    async def restart(self) -> LocalComputeProvider:
        # A crashed InkMCP's processes are reaped by the next start (reap_stale); closing does the same here.
        await self.provider.close()
        self.provider = await self._new()
        return self.provider

    async def teardown(self) -> None:
        for provider in self.providers:
            await provider.close()
        remove_tenant_users(self.data_dir)
        remove_service_cgroups(self.data_dir)  # --- mender6: its services' cgroups, by exact path
        shutil.rmtree(self.root, ignore_errors=True)

    def checkout(self) -> Path:
        d = self.root / "checkouts" / uuid.uuid4().hex
        d.mkdir(parents=True)
        for name, text in APP_FILES.items():
            (d / name).write_text(text)
        return d

    async def serve(self, key: ServiceKey) -> str | None:
        async with httpx.AsyncClient(timeout=10.0) as client:
            r = await client.get(f"http://127.0.0.1:{self.provider.proxy.port}/",
                                 headers={"Host": self.provider.host_for(key)})  # fmt: skip
        return r.text if r.status_code == 200 else None

    async def instances(self, key: ServiceKey) -> list[tuple[str, str, str]]:
        releases = self.data_dir / "services" / key.service_id / "releases"
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                cwd = Path(proc.cwd())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if releases not in cwd.parents:
                continue
            script = next((a for a in proc.info["cmdline"] or [] if a in APP_FILES), None)
            if script is not None:
                found.append((script.removesuffix(".py"), cwd.relative_to(releases).parts[0], str(proc.pid)))
        return sorted(found)


class FakeHarness(Harness):
    name = "fake"
    remote = True
    crash_points = CRASH_POINTS

    async def setup(self) -> None:
        self.root = Path(traversable_tmpdir("inkmcp-contract-fake-"))
        self.remote_side = FakeRemote(tick=0.002)
        self.provider = FakeComputeProvider(self.remote_side, self.root)

    async def restart(self) -> FakeComputeProvider:
        self.provider = FakeComputeProvider(self.remote_side, self.root)
        return self.provider

    async def teardown(self) -> None:
        await self.remote_side.close()
        shutil.rmtree(self.root, ignore_errors=True)

    def hold(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.remote_side.hold()

    async def settle(self) -> None:
        await self.remote_side.settle()

    def arm_crash(self, point: str) -> None:
        assert point in CRASH_POINTS, point
        self.remote_side.faults.crash_at.add(point)

    def fault_scenarios(self) -> list[str]:
        return ["unavailable:create_project", "lost_answer:create_project", "lost_answer:create_app",
                "unavailable:set_envs", "lost_answer:set_envs", "unavailable:deploy", "lost_answer:deploy",
                "queue_full", "unavailable:get_deployment", "unavailable:list_deployments"]  # fmt: skip

    def arm_fault(self, scenario: str) -> None:
        faults = self.remote_side.faults
        if scenario == "queue_full":
            faults.queue_full = 1
            return
        kind, op = scenario.split(":")
        counters = {"unavailable": faults.unavailable, "lost_answer": faults.lost_answer}[kind]
        counters[op] = counters.get(op, 0) + 1

    def refuse(self, operation: str, message: str) -> None:
        self.remote_side.faults.refused[operation] = message

    def _apps(self, key: ServiceKey) -> list[Any]:
        return [a for a in self.remote_side.apps_named(f"{key.service_id}-") if not a.deleting]

    async def serve(self, key: ServiceKey) -> str | None:
        routed = [a for a in self._apps(key) if a.routed and a.container is not None]
        return routed[0].container.env.get("MESSAGE") if routed else None

    async def instances(self, key: ServiceKey) -> list[tuple[str, str, str]]:
        return sorted((a.process, a.container.env.get(DEPLOYMENT_ENV, ""), a.container.deployment)
                      for a in self._apps(key) if a.container is not None)  # fmt: skip

    def census(self, key: ServiceKey) -> dict[str, Any]:
        remote = self.remote_side
        apps = self._apps(key)
        deployments: dict[str, dict[str, int]] = {}
        for app in apps:
            for dep in remote.deployments_of(app.uuid, "deploy"):
                per = deployments.setdefault(dep.env.get(DEPLOYMENT_ENV, "?"), {})
                per[app.process] = per.get(app.process, 0) + 1
        counts: dict[str, int] = {}
        for app in apps:
            counts[app.process] = counts.get(app.process, 0) + 1
        return {"projects": sum(n == f"inkmcp-{key.project_id}" for n in remote.projects.values()),
                "apps": counts, "deployments": deployments}  # fmt: skip


def _unwrap(command: str | None) -> str | None:
    """The tenant's command inside the provider's `sh -c '…'` wrapper (mapping.shell_safe), for run_script."""
    if command and command.startswith("sh -c '") and command.endswith("'"):
        return command[len("sh -c '"):-1].replace("'\"'\"'", "'")
    return command


class TenantStandin(CoolifyStandin):
    """The stand-in, plus what the suite's test app does when Coolify builds and starts it (module docstring).
    Also notes, for the census, which InkMCP deployment (the INKMCP_DEPLOYMENT env of the application when the
    deployment was queued) each Coolify deployment belongs to."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.queued_for: dict[str, str] = {}
        self.queue_full_next = 0
        """The next N queueings find the server's deployment queue full (Coolify's condition, on demand)."""

    def _queue_deployment(self, app: Any, **kw: Any) -> dict[str, Any]:
        if self.queue_full_next > 0:
            self.queue_full_next -= 1
            return {"status": "queue_full", "message": QUEUE_FULL, "deployment_uuid": None}
        answer = super()._queue_deployment(app, **kw)
        if answer.get("status") == "queued":
            env = {e.key: e.value or "" for e in app.envs if not e.is_preview}
            self.queued_for[answer["deployment_uuid"]] = env.get(DEPLOYMENT_ENV, "?")
        return answer

    def _take_build_fault(self, app_uuid: str) -> str | None:
        line = super()._take_build_fault(app_uuid)
        app = self.applications.get(app_uuid)
        if line is not None or app is None:
            return line
        output: list[str] = []
        code = run_script(_unwrap(app.fields.get("build_command")), output)
        if code:
            return f"Building docker image failed: build command exited with code {code}: {' '.join(output)}"
        output = []
        env = {e.key: e.value or "" for e in app.envs if not e.is_preview}
        wrapped = coolify_mapping.release_of(app.fields.get("start_command"))  # the release, first in the container
        code = run_script(wrapped[1], output) if wrapped and env.get(coolify_mapping.RELEASE_ENV) else 0
        if code:
            return (f"New container is not healthy, rolling back to the old container. Container logs: "
                    f"{coolify_mapping.RELEASE_FAILED} with exit code {code}: {' '.join(output)}")
        failure = crash_on_env(str(app.fields.get("name", "")).rsplit("-", 1)[-1], env)
        if failure:
            return f"New container is not healthy, rolling back to the old container: {failure}"
        return None


class CoolifyHarness(Harness):
    name = "coolify"
    remote = True
    crash_points = COOLIFY_CRASH_POINTS
    RETRY = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, max_total_wait=0.5)
    BUILD = 0.05  # seconds a stand-in build takes outside `hold()`

    async def setup(self) -> None:
        self.root = Path(traversable_tmpdir("inkmcp-contract-coolify-"))
        self.spec = CoolifySpec.load()
        # Coolify's 200 requests/minute is the client's budget's subject (tests/coolify): here both sides allow
        # more, so the suite's many releases per minute measure the provider, not the throttle.
        self.standin = TenantStandin(self.root / "nodes", spec=self.spec, build_seconds=self.BUILD,
                                     restart_seconds=0.02, status_delay=0.01, delete_delay=0.02, stop_delay=0.01,
                                     rate_limit=100_000)  # fmt: skip
        self.budget = LocalBudget(BudgetSettings(limit=100_000))
        self.standin.start()
        self.standin.add_servers(1)
        self.token = self.standin.add_token("read", "read:sensitive", "write", "deploy")
        self.providers: list[CoolifyComputeProvider] = []
        self.provider = self._new()

    def _new(self) -> CoolifyComputeProvider:
        limits = coolify_policy.Limits()
        client = CoolifyClient(self.standin.url, self.token, validate_with=self.spec, retry=self.RETRY,
                               transport=coolify_policy.PolicyTransport(limits=limits), budget=self.budget)  # fmt: skip
        # core's contract tests deploy a local git repo; the stand-in does not fetch, so it gets an https name
        provider = CoolifyComputeProvider(
            client, self.root / "work", poll_interval=0.01, poll_max_interval=0.05, wait_timeout=30.0, limits=limits,
            queue_full_retry_after=0.05, env_wait_timeout=2.0, local_repo_url=lambda path: f"https://git.standin.test/{hashlib.sha256(path.encode()).hexdigest()[:16]}.git")
        provider.crash_error = FakeCrash
        self.providers.append(provider)
        return provider

    async def restart(self) -> CoolifyComputeProvider:
        self.provider = self._new()
        return self.provider

    async def teardown(self) -> None:
        for provider in self.providers:
            await provider.close()
        self.standin.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        assert self.standin.request_violations == [], self.standin.request_violations
        assert self.standin.response_violations == [], self.standin.response_violations

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Builds begun inside the block last until it ends (the stand-in's clock, not a pause)."""
        self.standin.slow_builds(3600.0)
        try:
            yield
        finally:
            with self.standin._lock:
                self.standin.build_seconds = self.BUILD
                for dep in self.standin.deployments.values():
                    dep.duration = min(dep.duration, self.BUILD)

    def _busy(self) -> bool:
        with self.standin._lock:
            self.standin._advance()
            return any(d.status in ("queued", "in_progress") for d in self.standin.deployments.values()) or any(
                a.delete_at is not None or a.stop_at is not None for a in self.standin.applications.values())

    async def settle(self) -> None:
        await wait_for(lambda: _async(not self._busy()), what="the stand-in settled")

    def arm_crash(self, point: str) -> None:
        assert point in COOLIFY_CRASH_POINTS, point
        self.provider.crash_at.add(point)

    def fault_scenarios(self) -> list[str]:
        return ["unavailable:create_project", "lost_answer:create_project", "lost_answer:create_app",
                "unavailable:set_envs", "lost_answer:set_envs", "unavailable:deploy", "lost_answer:deploy",
                "queue_full", "unavailable:get_deployment", "unavailable:list_deployments"]  # fmt: skip

    ROUTES = {  # operation -> (method, path regex) in the stand-in
        "create_project": ("POST", r"/projects"), "create_app": ("POST", r"/applications/public"),
        "set_envs": ("PATCH", r"/applications/[^/]+/envs/bulk"), "deploy": ("POST", r"/deploy"),
        "get_deployment": ("GET", r"/deployments/[^/]+"),
        "list_deployments": ("GET", r"/deployments/applications/[^/]+"),
        "get_app": ("GET", r"/applications/[^/]+"), "app_logs": ("GET", r"/applications/[^/]+/logs"),
        "delete_app": ("DELETE", r"/applications/[^/]+"),
    }  # fmt: skip

    def arm_fault(self, scenario: str) -> None:
        if scenario == "queue_full":  # Coolify's 429 when the server's queue of 25 is full
            with self.standin._lock:
                self.standin.queue_full_next += 1
            return
        kind, op = scenario.split(":")
        method, path = self.ROUTES[op]
        # --- overhead: a first release no longer lists the deployments of applications it just created (nothing
        # can be in them); the list is read when an attempt is retried after its /deploy, so fail one /deploy too
        if scenario == "unavailable:list_deployments":
            self.standin.fail_next(*self.ROUTES["deploy"], status=500)
        # --- end overhead
        if kind == "unavailable":  # a 500: not retried by the client even for idempotent calls
            self.standin.fail_next(method, path, status=500)
        else:  # the call takes effect, the answer is lost; enough times to outlast the client's own retries
            idempotent = method in ("GET", "DELETE") or op == "set_envs"  # what the client repeats by itself
            # --- overhead: the processes' env updates go side by side, so the lost answers must outlast the
            # retries of both (web + worker), else the two share them and each gets through
            times = self.RETRY.attempts * (2 if op == "set_envs" else 1) if idempotent else 1
            # --- end overhead
            self.standin.drop_next(method, path, times=times, after=True)

    ABILITY = {"deploy": "deploy"}

    def refuse(self, operation: str, message: str) -> None:
        """A token without the ability: the stand-in answers Coolify's own 403 for it from now on."""
        ability = self.ABILITY[operation]
        assert message == f"Missing required permissions: {ability}", message
        with self.standin._lock:
            old = self.standin.tokens[self.token]
            self.standin.tokens[self.token] = Token(old.plain, old.user_id, old.team_id,
                                                    old.abilities - {ability}, old.admin)  # fmt: skip

    def _apps(self, key: ServiceKey) -> list[Any]:
        with self.standin._lock:
            self.standin._advance()
            return [a for a in self.standin.applications.values()
                    if str(a.fields.get("name", "")).startswith(f"{key.service_id}-") and a.delete_at is None]

    @staticmethod
    def _process(app: Any) -> str:
        return str(app.fields.get("name", "")).rsplit("-", 1)[-1]

    async def serve(self, key: ServiceKey) -> str | None:
        routed = [a for a in self._apps(key) if a.fields.get("fqdn") and a.container is not None]
        return routed[0].container.env.get("MESSAGE") if routed else None

    async def instances(self, key: ServiceKey) -> list[tuple[str, str, str]]:
        return sorted((self._process(a), a.container.env.get(DEPLOYMENT_ENV, ""), a.container.deployment_uuid)
                      for a in self._apps(key) if a.container is not None)  # fmt: skip

    def census(self, key: ServiceKey) -> dict[str, Any]:
        apps = self._apps(key)
        deployments: dict[str, dict[str, int]] = {}
        counts: dict[str, int] = {}
        for app in apps:
            process = self._process(app)
            counts[process] = counts.get(process, 0) + 1
            for dep in self.standin.deployments_of(app.uuid):
                if dep.restart_only or dep.deployment_uuid not in self.standin.queued_for:
                    continue
                per = deployments.setdefault(self.standin.queued_for[dep.deployment_uuid], {})
                per[process] = per.get(process, 0) + 1
        projects = sum(p.name == f"inkmcp-{key.project_id}" for p in self.standin.projects.values())
        return {"projects": projects, "apps": counts, "deployments": deployments}


async def _async(value: Any) -> Any:
    return value


HARNESSES: dict[str, type[Harness]] = {"local": LocalHarness, "fake": FakeHarness, "coolify": CoolifyHarness}


@pytest.fixture(params=[provider_param(name) for name in PROVIDERS])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    h = HARNESSES[request.param]()
    await h.setup()
    try:
        yield h
    finally:
        await h.teardown()


@pytest.fixture
def book() -> Iterator[RefBook]:
    yield RefBook()


async def release(h: Harness, book: RefBook, request: ReleaseRequest, events: Events | None = None,
                  provider: Any = None) -> ReleaseResult:  # fmt: skip
    """One release the way core makes it: refs from the book, a fresh checkout when the provider needs one."""
    provider = provider or h.provider
    checkout = h.checkout() if provider.needs_checkout else None
    return await provider.release(book.request(request, checkout), events or Events(),  # type: ignore[no-any-return]
                                  book.recorder(request.key, request.deployment_id))
