"""get_logs() during a first deploy, after the agent's own deploy_app call timed out (newuser5, 2026-12-02).

An agent whose client gave up on deploy_app (the build went on: the deployment is not the call's) asked get_logs() and
read `lines: []` (runtime, the default scope: nothing has run yet) as "the deploy produced no output"; the build's
lines were one scope away. The empty answer now says so and names the call that shows them, on both providers; once
the deployment is live an empty runtime log carries no note.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import anyio
import pytest

from tests.e2e.probes import Gate
from tests.support import ServerProc, call, git_repo, mcp_session

APP = """import http.server, os
Handler = http.server.SimpleHTTPRequestHandler
http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), Handler).serve_forever()
"""


@pytest.mark.asyncio
async def test_empty_runtime_logs_during_a_first_build_point_to_the_build(server: ServerProc, repos: Path) -> None:
    project = f"nu5-logs-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / project, {"app.py": APP})
    gate = Gate(server.data_dir)
    try:
        async with mcp_session(server, server.keys["alice"]) as s:
            with anyio.move_on_after(1.5):  # the agent's client gives up: the deployment goes on
                await s.call_tool("deploy_app", {"repo_url": str(repo), "project_name": project,
                                                 "start_command": "python app.py",
                                                 "build_command": gate.build_command("echo compiling-now")})
        async with mcp_session(server, server.keys["alice"]) as s:  # reconnected
            await anyio.to_thread.run_sync(gate.wait_closed)
            logs = await call(s, "get_logs", project_name=project)
            assert logs["scope"] == "runtime" and logs["lines"] == [], logs
            note = logs["note"]
            assert note and "has not run anything that printed" in note, logs
            assert f"get_logs(project_name='{project}', service_name='web', scope='build')" in note, logs
            build = await call(s, "get_logs", project_name=project, scope="build")
            assert build["lines"], build  # the build's own lines: on Coolify, its steps (a command's output once done)
            if server.compute == "local":
                assert any("compiling-now" in line for line in build["lines"]), build
            assert build["note"] is None, build
            deployment_id = build["deployment_id"]
            assert gate.open_once() == 1
            dep = await call(s, "wait_for_deployment", deployment_id=deployment_id)
            while not dep["done"]:
                dep = await call(s, "wait_for_deployment", deployment_id=deployment_id)
            assert dep["status"] == "live", dep
            assert (await call(s, "get_logs", project_name=project))["note"] is None
            await call(s, "delete", project_name=project, confirm=project)
    finally:
        gate.open_once()
