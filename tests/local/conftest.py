"""Fixtures for the local provider tests: real processes, real sockets, real proxy.

Every provider, data dir and system user a test creates is torn down by the fixture that made it.
"""

from __future__ import annotations

import pwd
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.providers.compute.base import ProviderRef, RefScope, ReleaseRequest, ServiceKey, Step
from inkmcp.providers.compute.local import LocalComputeProvider
from inkmcp.providers.compute.local.supervisor import Backoff
from inkmcp.providers.compute.local.users import project_user_name
from tests.cgroup_cleanup import remove_service_cgroups
from tests.support import traversable_tmpdir

PY = "/usr/bin/python3"

WEB_APP = """
import os, sys, time, http.server, json
time.sleep(float(os.environ.get("START_DELAY", "0")))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/env":
            body = json.dumps(sorted(os.environ)).encode()
        else:
            body = (os.environ.get("MESSAGE", "hello") + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)
print("listening on", os.environ["PORT"], flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


class Events:
    """Collects progress callbacks so tests can assert the step order."""

    def __init__(self) -> None:
        self.steps: list[Step] = []
        self.details: list[str] = []

    async def __call__(self, step: Step, detail: str) -> None:
        self.steps.append(step)
        self.details.append(f"{step.value}: {detail}")


async def no_record(scope: RefScope, ref: ProviderRef) -> None:
    """The `record` callback for local releases: the local provider keeps its state in its data dir and must
    never ask core to store refs (core would, but a call here means the provider changed its contract)."""
    raise AssertionError(f"the local provider recorded a {scope} ref: {ref}")


@pytest.fixture
def run_dir() -> Iterator[Path]:
    """A traversable scratch dir for a proxy's runtime files and the test's own (config, logs, sockets)."""
    path = traversable_tmpdir("inkmcp-nginx-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Not tmp_path: pytest makes its parents 0700, and tenant users must traverse to their files. Not
    # under /tmp as root either: tenant processes get their service's private /tmp mounted there.
    path = traversable_tmpdir("inkmcp-local-")
    yield path
    remove_service_cgroups(path)  # after make_provider closed its providers; exact paths of this dir's services
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def checkouts() -> Iterator[Callable[[dict[str, str]], Path]]:
    """Factory writing a fake checkout (files by relative path) into a temp dir."""
    root = traversable_tmpdir("inkmcp-checkouts-")  # next to data_dir: checkouts are renamed into it

    def make(files: dict[str, str]) -> Path:
        d = root / uuid.uuid4().hex
        for rel, text in files.items():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        d.mkdir(parents=True, exist_ok=True)
        return d

    yield make
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def make_provider(data_dir: Path, project_ids: Callable[[], str]) -> AsyncIterator[Callable[..., Any]]:
    """Factory for started providers on an ephemeral proxy port; closes each before users are deleted."""
    providers: list[LocalComputeProvider] = []

    async def make(**kwargs: Any) -> LocalComputeProvider:
        options: dict[str, Any] = {
            "proxy_port": 0, "health_timeout": 5.0, "idle_timeout": 300.0, "stop_grace": 2.0,
            "backoff": Backoff(initial=0.2, maximum=2.0, reset_after=60.0),
            "stability_window": 0.3,  # default 3 s; test_live_means_live passes its own
        }  # fmt: skip
        options.update(kwargs)
        provider = LocalComputeProvider(kwargs.pop("data_dir", data_dir), **options)
        await provider.start()
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.close()


@pytest.fixture
def project_ids() -> Iterator[Callable[[], str]]:
    """Fresh project ids; their system users (if any were created) are deleted afterwards."""
    made: list[str] = []

    def new() -> str:
        pid = uuid.uuid4().hex
        made.append(pid)
        return pid

    yield new
    failures = []
    for pid in made:
        name = project_user_name(pid)
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        done = subprocess.run(["/usr/sbin/userdel", name], check=False, capture_output=True, text=True)
        if done.returncode != 0:  # usually: a tenant process of this test is still running
            failures.append(f"{name}: {done.stderr.strip()}")
    assert not failures, failures


def key_for(project_id: str, service: str = "web", project: str = "demo") -> ServiceKey:
    return ServiceKey(
        account_id="acct", project_id=project_id, service_id=f"svc-{project_id[:8]}-{service}",
        project_name=project, service_name=service,
    )  # fmt: skip


def web_plan(*, release_command: str | None = None, extra: tuple[ProcessSpec, ...] = ()) -> BuildPlan:
    return BuildPlan(
        stack=Stack.none, source="call", release_command=release_command,
        processes=(ProcessSpec(name="web", command=f"exec {PY} app.py", routed=True), *extra),
    )  # fmt: skip


def request_for(
    key: ServiceKey,
    checkout: Path,
    plan: BuildPlan,
    *,
    mode: Mode = Mode.persistent,
    service_type: ServiceType = ServiceType.webapp,
    env: dict[str, str] | None = None,
    deployment_id: str | None = None,
) -> ReleaseRequest:
    from pydantic import SecretStr

    return ReleaseRequest(
        deployment_id=deployment_id or uuid.uuid4().hex[:12], key=key, service_type=service_type, mode=mode,
        plan=plan, checkout_dir=checkout, repo_url="https://example.invalid/repo.git", commit="0" * 40,
        env={k: SecretStr(v) for k, v in (env or {}).items()},
    )  # fmt: skip


async def get(
    provider: LocalComputeProvider, key: ServiceKey, path: str = "/", headers: dict[str, str] | None = None
) -> httpx.Response:
    """One request through the proxy on a fresh connection, with the service's Host header."""
    async with httpx.AsyncClient(timeout=15.0) as client:
        return await client.get(
            f"http://127.0.0.1:{provider.proxy.port}{path}", headers={"Host": provider.host_for(key), **(headers or {})}
        )
