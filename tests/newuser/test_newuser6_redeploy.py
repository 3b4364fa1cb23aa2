"""deploy_app again after editing a local repository's files without committing them (newuser6, 2026-12-03).

An agent deployed an Express app from a local repository (live), changed index.js's greeting, and called deploy_app
again with the same arguments. The answer was the live deployment itself, `status: live`, `reused: true` and
`next_step: null`, with its old history ending in "live: <url>"; the URL kept serving the old greeting, and nothing
said that no change had been deployed, nor why. The answer now says nothing new was deployed and that deploy_app
deploys commits, not uncommitted files; once committed, the same call deploys the change.

A real `inkmcp serve` (the session's local server, an account of this file's own), the official MCP client over
streamable HTTP, a dependency-free app (no install).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser6r-{uuid.uuid4().hex[:8]}"

APP = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"GREETING"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_redeploy_of_uncommitted_edits_says_nothing_new_was_deployed(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "greeter", {"app.py": APP.replace("GREETING", "Hello")})
    project = f"nu6-greeter-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        first = await deploy_live(s, repo_url=str(repo), project_name=project)
        assert first["next_step"] is None, first
        (repo / "app.py").write_text(APP.replace("GREETING", "Howdy"))  # edited, not committed
        again = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        assert again["reused"] is True and again["deployment_id"] == first["deployment_id"], again
        step = again["next_step"] or ""
        assert step.startswith(f"nothing new was deployed: this live deployment already runs commit "
                               f"{first['commit'][:12]} with these settings and env vars"), again
        assert "never uncommitted files: commit the change" in step, step
        assert via_proxy(server, first["url"]).text == "Hello"
        git_commit(repo, {}, "howdy")  # what the step says: commit, then the same call
        new = await deploy_live(s, repo_url=str(repo), project_name=project)
        assert new["reused"] is False and new["commit"] != first["commit"] and new["next_step"] is None, new
        assert via_proxy(server, new["url"]).text == "Howdy"
