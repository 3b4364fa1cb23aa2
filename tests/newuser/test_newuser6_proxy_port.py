"""An app that binds InkMCP's own proxy port (newuser6, 2026-12-03).

aiohttp's quickstart ends in `web.run_app(app)`, which listens on 8080: the proxy's port on the defaults
(INKMCP_PROXY_PORT). As root the bind guard refused it, and the failure said "it tried to listen on port 8080, which is
not its own ...: pass port=8080 to deploy_app, or make it bind the PORT env var". The agent passed port=8080 and the
next deploy failed at starting: "port 8080 ... is already in use on this machine (another service listens there)".
The first failure now says whose the port is and that port= cannot work, and only the PORT env var does; an app that
binds a port nobody holds is still told `port=`.

A real `inkmcp serve` (the session's local server, an account of this file's own; its proxy port stands for 8080),
the official MCP client over streamable HTTP, and a dependency-free app that binds the port aiohttp's would.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.requirements import require_root
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser6p-{uuid.uuid4().hex[:8]}"

APP = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"up")


HTTPServer(("0.0.0.0", PORT), H).serve_forever()
"""


async def _failed(s, **args) -> str:
    dep = await call(s, "deploy_app", **args)
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    assert dep["status"] == "failed", dep
    return dep["error"]


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_proxys_port_is_not_offered_as_the_apps(server: ServerProc, repos: Path) -> None:
    require_root("the bind guard (cgroup BPF) refuses a port that is not the service's")
    repo = git_repo(repos / "on-proxy-port", {"app.py": APP.replace("PORT", str(server.proxy_port))})
    project = f"nu6-proxyport-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        error = await _failed(s, repo_url=str(repo), project_name=project)
        assert f"it tried to listen on port {server.proxy_port}, which is not its own" in error, error
        assert f"port {server.proxy_port} is held by InkMCP's proxy on this machine, so port={server.proxy_port} " \
               "cannot work either: make the app listen on the PORT env var" in error, error
        assert f"pass port={server.proxy_port}" not in error, error
        # what the old advice led to: refused again, now at starting
        error = await _failed(s, repo_url=str(repo), project_name=project, port=server.proxy_port)
        assert "already in use on this machine" in error, error
        git_commit(repo, {"app.py": APP.replace("PORT", "int(os.environ['PORT'])")})
        dep = await deploy_live(s, repo_url=str(repo), project_name=project)
        assert via_proxy(server, dep["url"]).text == "up"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_free_port_is_still_offered(server: ServerProc, repos: Path) -> None:
    """A port nobody holds can be the service's fixed port: `port=` is still the first way out named."""
    require_root("the bind guard (cgroup BPF) refuses a port that is not the service's")
    from tests.support import free_port

    port = free_port()
    repo = git_repo(repos / "on-free-port", {"app.py": APP.replace("PORT", str(port))})
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        error = await _failed(s, repo_url=str(repo), project_name=f"nu6-freeport-{uuid.uuid4().hex[:6]}")
        assert f"pass port={port} to deploy_app, or make it bind the PORT env var" in error, error
