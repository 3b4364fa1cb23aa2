"""Two apps that hard-code the same port (newuser3, 2026-12-02): a Node app listening on 3000 went live with
deploy_app(port=3000), as the bind guard's error told; a second project's app on 3000, deployed the same way, failed
with "port 3000 ... is already in use on this machine; omit `port` so the app gets a free one in $PORT, or pick
another". Both ways fail for an app that hard-codes its port (it is refused any port but its own, and listens on 3000
whatever `port` says). The error now says the app must listen on $PORT, how, and to omit `port`; that goes live.

A real `inkmcp serve` (the session's local server, an account of this file's own), the official MCP client over
streamable HTTP; the test holds the port itself, as the other service would."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"


def server_js(listen: str) -> dict[str, str]:
    return {"package.json": '{"name": "fixed", "version": "1.0.0", "scripts": {"start": "node server.js"}}\n',
            "server.js": f"require('http').createServer((q, s) => s.end('up')).listen({listen});\n"}  # fmt: skip


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_taken_fixed_port_says_to_listen_on_port(server: ServerProc, repos: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    project = f"nu3-port-{uuid.uuid4().hex[:6]}"
    try:
        port = holder.getsockname()[1]
        repo = git_repo(repos / "hard-coded", server_js(str(port)))
        async with mcp_session(server, server.keys[ACCOUNT]) as s:
            dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project, port=port)
            while not dep["done"]:
                dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
            assert dep["status"] == "failed", dep
            error = dep["error"]
            assert f"port {port} (the service's fixed `port`" in error and "already in use" in error, error
            assert "omit `port` so the app gets a free one" not in error, error
            assert "make the app listen on the PORT env var InkMCP sets (process.env.PORT in Node" in error, error
            assert "and omit `port`" in error, error
            git_commit(repo, server_js("process.env.PORT"))
            dep = await deploy_live(s, repo_url=str(repo), project_name=project)
            assert via_proxy(server, dep["url"]).text == "up"
    finally:
        holder.close()
