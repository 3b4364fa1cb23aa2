"""A Node app whose start script loads its .env with Node's own `--env-file` (newuser6, 2026-12-03).

An Express app (`"start": "node --env-file=.env index.js"`, .env listed in .gitignore, as it holds the secrets) failed
its first deploy at health_check: "process 'web' exited with code 9 ... last output: ... node: .env: not found", and
nothing said where the file's values go on InkMCP or how the script can run without the file. The failure now says
both: env_vars (or update_env_vars), and `--env-file-if-exists`; the app changed so goes live with its value.

A real `inkmcp serve` (the session's local server, an account of this file's own), the official MCP client over
streamable HTTP, the server's own Node (>= 20.6 has --env-file; --env-file-if-exists is in 20.20 and 22.9+), and a
dependency-free app (the npm install has nothing to fetch).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from inkmcp.build.hints import runtime_hint
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser6e-{uuid.uuid4().hex[:8]}"

INDEX = """const http = require('http')
http.createServer((req, res) => res.end(`Hello ${process.env.GREETING}`)).listen(process.env.PORT || 3000)
"""


def package(start: str) -> str:
    return json.dumps({"name": "envfile", "version": "1.0.0", "scripts": {"start": start}}) + "\n"


def test_a_missing_env_file_is_told_where_its_values_go() -> None:
    out = ["web | ", "web | > envfile@1.0.0 start", "web | > node --env-file=.env.local index.js", "web | ",
           "web | node: .env.local: not found", "web | [inkmcp] exited with code 9 after 0.8s"]
    hint = runtime_hint(out, out[-3:]) or ""
    assert hint.startswith("the start command loads .env.local with node's --env-file, and .env.local is not in the "
                           "deployed commit"), hint
    assert "pass its variables as env_vars to deploy_app" in hint and "--env-file-if-exists=.env.local" in hint, hint


def test_other_not_found_lines_are_not_taken_for_it() -> None:
    out = ["web | sh: 1: vite: not found"]
    assert "--env-file" not in (runtime_hint(out, out) or "")


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_failure_says_what_to_do_and_that_goes_live(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "envfile", {"package.json": package("node --env-file=.env index.js"), "index.js": INDEX,
                                        ".gitignore": "node_modules\n.env\n"})  # fmt: skip
    (repo / ".env").write_text("GREETING=from-dotenv\n")  # the developer's own, never committed
    project = f"nu6-envfile-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed", dep
        assert "node: .env: not found" in dep["error"], dep["error"]
        assert "Hint: the start command loads .env with node's --env-file, and .env is not in the deployed commit" \
            in dep["error"], dep["error"]
        git_commit(repo, {"package.json": package("node --env-file-if-exists=.env index.js")})
        dep = await deploy_live(s, repo_url=str(repo), project_name=project, env_vars={"GREETING": "from-env-vars"})
        assert via_proxy(server, dep["url"]).text == "Hello from-env-vars"
