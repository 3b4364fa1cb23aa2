"""The health check's path and the address an app listens on (newuser4, 2026-12-02).

Seen by driving a real `inkmcp serve` as a new user's agent:
- An app whose `/` answers 503 (a login wall) and whose health endpoint is `/healthz` failed every deploy with
  "answered GET / with HTTP 503", and nothing could name another path: render.yaml's `healthCheckPath` was ignored,
  and inkmcp.yaml had no key for it. Now inkmcp.yaml `health_path`, render.yaml `healthCheckPath`, railway
  `deploy.healthcheckPath` and fly.toml's HTTP checks name the path (the queued event says which), the local
  provider and Coolify's health check ask it, and the 5xx failure says where to name it.
- A Node app listening on `::1` only (`listen(process.env.PORT, '::1')`; the test's app does it in Python) waited
  out the whole health timeout (60 s) and was then told "never listened on $PORT ... make sure it binds 0.0.0.0",
  though it listened on $PORT within a second. Now it fails after a few seconds naming the address it bound and
  what to bind instead.

The end-to-end tests use the session's local server (an account of this file's own) and the official MCP client over
streamable HTTP; the rest read the repo files as deploy_app does (`derive_plan`).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import BuildPlan, Mode, ServiceType, Stack
from inkmcp.errors import BuildPlanError
from inkmcp.providers.compute.coolify import mapping
from tests.coolify.test_mapping import WEB, spec_of
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser4-{uuid.uuid4().hex[:8]}"

LOGIN_WALL = """\
import os
from http.server import HTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == '/healthz'
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b'ok' if ok else b'needs login')
HTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()
"""


V6_ONLY = """\
import os, socket
from http.server import HTTPServer, BaseHTTPRequestHandler
class V6(HTTPServer):
    address_family = socket.AF_INET6
print('listening on [::1]', flush=True)
V6(('::1', int(os.environ['PORT'])), BaseHTTPRequestHandler).serve_forever()
"""
"""What a Node app's server.listen(process.env.PORT, '::1') does, in Python (starts in a tenth of the time)."""


def _plan(root: Path, files: dict[str, str]) -> BuildPlan:
    for name, text in files.items():
        (root / name).write_text(text)
    plan, _ = derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    return plan


@pytest.mark.parametrize(("files", "said"), [
    ({"inkmcp.yaml": "services:\n  web:\n    health_path: /healthz\n"}, "inkmcp.yaml health_path"),
    ({"render.yaml": "services:\n  - type: web\n    name: web\n    runtime: python\n    startCommand: python app.py\n"
                     "    healthCheckPath: /healthz\n"}, "render.yaml healthCheckPath"),
    ({"railway.json": '{"deploy": {"startCommand": "python app.py", "healthcheckPath": "/healthz"}}'},
     "railway.json healthcheckPath"),
    ({"fly.toml": '[processes]\napp = "python app.py"\n[http_service]\ninternal_port = 8080\n'
                  '[[http_service.checks]]\npath = "/healthz"\n'}, "fly.toml [[http_service.checks]] path"),
])  # fmt: skip
def test_the_repo_names_the_health_path(tmp_path: Path, files: dict[str, str], said: str) -> None:
    plan = _plan(tmp_path, {"app.py": LOGIN_WALL, **files})
    assert plan.health_path == "/healthz"
    assert f"health check: GET /healthz ({said})" in plan.notes, plan.notes


def test_no_path_named_and_a_workers_path_is_none(tmp_path: Path) -> None:
    assert _plan(tmp_path, {"app.py": LOGIN_WALL}).health_path is None
    worker = _plan(tmp_path, {"Procfile": "worker: python app.py\n",
                              "inkmcp.yaml": "services:\n  web:\n    health_path: /healthz\n"})  # fmt: skip
    assert worker.health_path is None  # nothing routed: nothing is asked


def test_a_health_path_that_is_not_a_plain_path_is_refused_or_noted(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(LOGIN_WALL)
    (tmp_path / "inkmcp.yaml").write_text("services:\n  web:\n    health_path: healthz?full=1\n")
    with pytest.raises(BuildPlanError) as caught:
        _plan(tmp_path, {})
    assert "inkmcp.yaml is invalid: services.web.health_path" in str(caught.value)
    assert "must be a plain URL path starting with '/'" in str(caught.value)
    (tmp_path / "inkmcp.yaml").unlink()
    plan = _plan(tmp_path, {"railway.json": '{"deploy": {"startCommand": "python app.py", '
                                            '"healthcheckPath": "http://x/h"}}'})  # fmt: skip
    assert plan.health_path is None
    assert any("railway.json healthcheckPath 'http://x/h' must be a plain URL path" in n for n in plan.notes)


def test_coolify_asks_the_plans_health_path() -> None:
    named = BuildPlan(stack=Stack.python, processes=(), source="manifest", health_path="/healthz")
    assert mapping.health_fields(spec_of(ServiceType.webapp, Mode.persistent, WEB, named))["health_check_path"] == \
        "/healthz"
    assert mapping.health_fields(spec_of(ServiceType.webapp, Mode.persistent, WEB))["health_check_path"] == "/"


@pytest.mark.asyncio
async def test_a_5xx_root_names_health_path_and_the_named_path_goes_live(server: ServerProc, repos: Path) -> None:
    project = f"nu4-health-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / "login-wall", {"app.py": LOGIN_WALL})
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed", dep
        assert "answered GET / with HTTP 503" in dep["error"], dep["error"]
        assert "inkmcp.yaml `services: {web: {health_path: /healthz}}`" in dep["error"], dep["error"]
        git_commit(repo, {"inkmcp.yaml": "services:\n  web:\n    health_path: /healthz\n"})
        dep = await deploy_live(s, repo_url=str(repo), project_name=project)
        assert any("health check: GET /healthz (inkmcp.yaml health_path)" in line for line in dep["history"]), dep
        assert via_proxy(server, dep["url"], "/healthz").text == "ok"


@pytest.mark.asyncio
async def test_an_app_on_ipv6_loopback_only_is_told_so_without_the_whole_timeout(server: ServerProc,
                                                                                  repos: Path) -> None:
    project = f"nu4-v6-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / "v6-only", {"app.py": V6_ONLY})
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        started = time.monotonic()
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        took = time.monotonic() - started
        assert dep["status"] == "failed", dep
        assert "only on [::1], which the proxy cannot reach" in dep["error"], dep["error"]
        assert "never listened" not in dep["error"], dep["error"]
        assert took < 14, took  # the shared servers' health timeout is 15 s (tests.support.make_server)
