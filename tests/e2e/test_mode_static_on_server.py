"""`mode="static"` on a server app is refused with what to pass instead, over a real MCP session.

It was accepted: the app ran as a server and list_services said `mode: static` (newuser2). A call whose own
arguments say a process runs (start_command, service_type webapp/backend) is refused by the tool layer before any
work; nothing is made. An app the repo makes a server (a Procfile `web:` line) is refused once planned: that check
is `plan.resolve_mode`, which core's deploy calls when it plans the service.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import local_only
from tests.support import ServerProc, call, call_error, git_repo, mcp_session

pytestmark = local_only("the mode is checked before any provider is asked")

APP = ("import os, http.server\n"
       "http.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
       "http.server.SimpleHTTPRequestHandler).serve_forever()\n")  # fmt: skip
PREFIX = "Error executing tool deploy_app: "  # the MCP SDK's, for an error raised inside a tool
FIX = "Fix: omit mode (a server then runs persistent), or pass 'persistent' to keep it running or 'on_demand'"


@pytest.mark.asyncio
async def test_static_mode_with_a_start_command_is_refused_and_makes_nothing(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "server", {"app.py": APP})
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name="mode-static-cmd", mode="static",
                                 start_command="python3 app.py")  # fmt: skip
        error = error.removeprefix(PREFIX)
        assert error.startswith("Argument 'mode': mode static serves files and runs no process, but this service "
                                "runs one (`python3 app.py`)."), error
        assert FIX in error, error
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name="mode-static-type", mode="static",
                                 service_type="backend")  # fmt: skip
        error = error.removeprefix(PREFIX)
        assert error.startswith("Argument 'mode': mode static serves files and runs no process"), error
        projects = [p["name"] for p in (await call(s, "list_projects"))["projects"]]
        assert "mode-static-cmd" not in projects and "mode-static-type" not in projects, projects


@pytest.mark.asyncio
async def test_static_mode_on_a_detected_server_is_refused(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "procfile-server", {"app.py": APP, "Procfile": "web: python3 app.py\n"})
    project = "mode-static-detected"
    async with mcp_session(server, server.keys["alice"]) as s:
        try:
            error = await call_error(s, "deploy_app", repo_url=str(repo), project_name=project, mode="static")
            error = error.removeprefix(PREFIX)
            assert error.startswith("Argument 'mode': mode static serves files and runs no process, but this service "
                                    "runs one (`python3 app.py`)."), error
            assert FIX in error, error
        finally:
            if project in [p["name"] for p in (await call(s, "list_projects"))["projects"]]:
                await call(s, "delete", project_name=project, confirm=project)
