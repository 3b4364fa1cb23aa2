"""A deploy whose app binds a fixed port that another service on the machine holds: the error says so.

Seen by driving a real `inkmcp serve` as an agent: a Node app (`npm start`, no Procfile) that listens on 3000
while another tenant's service ran on 3000 failed with a quoted tail of npm's update notice ("npm notice New
minor version of npm available! ..."), which pushed the app's own "Error: listen EADDRINUSE" out of the quote;
the agent had to guess. The quoted tail now skips npm's notice lines, and the error says the port is taken and
to listen on $PORT. The test holds the port itself (what another service would), on a real server. As root the
bind guard refuses the port before the app could find it taken (EPERM: not its own), and the error says so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tests.e2e.conftest import local_only
from tests.support import ServerProc, call, git_repo, mcp_session


def node_app(port: int) -> dict[str, str]:
    # what `npm start` prints when the app dies: the app's error, then npm's five-line update notice
    notice = "".join(f"console.error('npm notice {line}');" for line in
                     ("", "New minor version of npm available! 11.19.1 -> 11.21.2",
                      "Changelog: https://github.com/npm/cli/releases", "To update run: npm install -g npm", ""))
    return {
        "package.json": '{"name": "fixed-port", "version": "1.0.0", "scripts": {"start": "node server.js"}}\n',
        "server.js": "const s = require('http').createServer((q, r) => r.end('hi'));\n"
        f"s.on('error', (e) => {{ console.error('Error: listen ' + e.code + ' :::{port}');"
        f" {notice} process.exit(1); }});\n"
        f"s.listen({port});\n",
    }


@local_only("the local provider's health check quotes the output")
@pytest.mark.asyncio
async def test_a_taken_fixed_port_is_named(server: ServerProc, repos: Path) -> None:
    holder = socket.socket(socket.AF_INET6)
    holder.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    holder.bind(("::", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        repo = git_repo(repos / "fixed", node_app(port))
        async with mcp_session(server, server.keys["alice"]) as s:
            dep = await call(s, "deploy_app", repo_url=str(repo), project_name="porttaken")
            for _ in range(20):
                if dep["done"]:
                    break
                dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"], timeout_seconds=30)
    finally:
        holder.close()
    assert dep["status"] == "failed", dep
    error = dep["error"]
    quoted = error.partition("\nlast output:\n")[2]
    assert "npm notice" not in quoted, error
    if os.geteuid() == 0:  # the bind guard (bindguard.py): a port not its own is refused before it could be taken
        assert f"it tried to listen on port {port}, which is not its own" in error, error
        # --- newuser6 (02e293b): the port is held (here by the test, as by another service), so port= cannot help
        assert f"port {port} is held by another service on this machine, so port={port} cannot work" in error, error
        assert "listen on the PORT env var" in error and f"pass port={port}" not in error, error
        assert f"Error: listen EPERM :::{port}" in quoted, error
    else:
        assert "already in use on this server" in error and "listen on the PORT env var" in error, error
        assert f"Error: listen EADDRINUSE :::{port}" in quoted, error
