"""One compute-provider contract suite, run against every provider through a `Harness`.

A harness gives the suite what it cannot get through the contract itself: a provider instance (and a new one
after a simulated crash, sharing the machine or the remote), a request for the suite's test app, and the
ground truth of what runs (`serve`, `instances`, `census`), read from the processes (local) or the remote's
state (fake), never from the provider's own answers, which are what is under test.

Providers:
  local  the real LocalComputeProvider: real processes behind its real proxy, real builds (slow-ish: each
         release starts Python processes and health-checks them).
  fake   FakeComputeProvider over FakeRemote (inkmcp/providers/compute/fake.py): remote-like, in-process.
  coolify (hook) the Coolify provider over tests/coolify_standin.py, once it exists (issue 8 item 4): write a
         `CoolifyHarness` (provider() over a CoolifyClient to the stand-in; serve/instances/census from the
         stand-in's applications and deployments; crash_points from the provider's own fault hooks), add it
         to HARNESSES and to PROVIDERS / REMOTE_PROVIDERS below. Every test then runs against it unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from pydantic import SecretStr

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
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
from inkmcp.providers.compute.fake import CRASH_POINTS, DEPLOYMENT_ENV, FakeComputeProvider, FakeRemote
from inkmcp.providers.compute.local import LocalComputeProvider
from inkmcp.providers.compute.local.supervisor import Backoff
from tests.support import remove_tenant_users, traversable_tmpdir

PROVIDERS = ["local", "fake"]  # + "coolify" once its harness exists (module docstring)
REMOTE_PROVIDERS = ["fake"]  # providers whose work is queued at a remote API (+ "coolify")
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


async def wait_for(predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `predicate` until it returns something truthy (no fixed sleeps as synchronisation)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not met within {timeout:g} s (last: {last!r})")


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

        async def watched(step: Step, detail: str) -> None:
            if self.armed and step == self.step and not self.fired:
                self.fired = True
                raise self.error()
            await progress(step, detail)

        return await self.inner.release(request, watched, record)


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


HARNESSES: dict[str, type[Harness]] = {"local": LocalHarness, "fake": FakeHarness}


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


def is_root() -> bool:
    return os.geteuid() == 0
