"""get_logs after update_env_vars (newuser3, 2026-12-02): a FastAPI app's runtime log showed the new process's
"Started server process" lines, then the old process's "Shutting down ... Finished server process", with nothing
saying which lines were the new version's, nor where the restart (or a redeploy) began. The log now marks where each
version starts and where traffic switched. A real `inkmcp serve` (the session's local server, an account of this
file's own) and the official MCP client over streamable HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_repo, mcp_session

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"

APP = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer

print("booting with GREETING=" + os.environ.get("GREETING", "-"), flush=True)


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ.get("GREETING", "-").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_runtime_log_says_where_each_version_starts(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "greeter", {"requirements.txt": "", "app.py": APP})
    project = f"nu3-markers-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await deploy_live(s, repo_url=str(repo), project_name=project, start_command="python app.py",
                                env_vars={"GREETING": "one"})  # fmt: skip
        changed = await call(s, "update_env_vars", project_name=project, env_vars={"GREETING": "two"})
        assert changed["restarted"] == ["web"], changed
        assert via_proxy(server, dep["url"]).text == "two"
        lines = (await call(s, "get_logs", project_name=project, tail=50))["lines"]

    def at(text: str) -> int:
        found = [i for i, line in enumerate(lines) if text in line]
        assert len(found) == 1, (text, lines)
        return found[0]

    first = at(f"web | [inkmcp] starting deployment {dep['deployment_id']}")
    assert lines[first] == f"web | [inkmcp] starting deployment {dep['deployment_id']}", lines  # nothing served yet
    restart = at("web | [inkmcp] restarting with the new env vars (update_env_vars); the previous processes serve "
                 "until these pass the health check")
    switched = at("web | [inkmcp] switched to the new processes; the previous ones stop")
    assert first < at("booting with GREETING=one") < restart < at("booting with GREETING=two") < switched, lines
