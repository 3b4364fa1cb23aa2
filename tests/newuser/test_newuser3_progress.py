"""A new user's agent following deploy_app's progress through a long build (newuser3, 2026-12-02): a real
`inkmcp serve` (the session's local server, an account of this file's own) and the official MCP client over
streamable HTTP.

An Express + TypeScript app's first deploy_app showed "queued", "building: building", then nothing for 55 s (npm
install 23 s, tsc, then the answer at 40 s saying "building"); a Vite site's, nothing for 23 s. The progress now names
each build step still running after STEP_PROGRESS_AFTER seconds (`npm install`, the build command), and only those;
and the download of the Node that package.json's engines.node asks for (17 s, silent, for `"node": ">=22"`).
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest

from inkmcp.build.buildpack import BASE_PATH, STEP_PROGRESS_AFTER, run_build
from inkmcp.build.node_install import host_node_version
from inkmcp.build.plan import BuildPlan, Stack
from tests.build.test_buildpack import Log
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.requirements import requires
from tests.support import ServerProc, git_repo, mcp_session

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"

APP = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = open("built.txt").read().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_long_build_step_is_named_in_the_progress(server: ServerProc, repos: Path) -> None:
    build = f"sleep {STEP_PROGRESS_AFTER + 1.5:g} && echo built > built.txt"
    repo = git_repo(repos / "slow-build", {"app.py": APP})  # no dependencies: no virtualenv steps
    project = f"nu3-progress-{uuid.uuid4().hex[:6]}"
    progress: list[str] = []
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await deploy_live(s, progress, repo_url=str(repo), project_name=project, build_command=build,
                                start_command="python app.py")  # fmt: skip
        assert via_proxy(server, dep["url"]).text == "built\n"
    step = f"building: build command {build!r}"
    assert step in progress, progress
    assert step in dep["history"], dep["history"]
    # in its place: after "building: building", before the processes start
    assert progress.index("building: building") < progress.index(step) < next(
        i for i, line in enumerate(progress) if line.startswith("starting:")), progress
    # a step that took less (none else here: no dependencies to install) is not announced
    assert [line for line in progress if line.startswith("building:")] == ["building: building", step], progress


@pytest.mark.slow
@requires("npm", shutil.which("npm", path=BASE_PATH) is not None, "no node/npm on PATH (Debian's npm package)")
async def test_the_download_of_the_node_engines_asks_for_is_a_step(tmp_path: Path) -> None:
    host = host_node_version()
    assert host is not None
    major = 22 if host[0] != 22 else 24  # a major the server's node is not: InkMCP installs one from PyPI
    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "e", "version": "1.0.0", "engines": {"node": f"{major}.x"}}))
    steps: list[str] = []

    async def on_step(what: str) -> None:
        steps.append(what)

    await run_build(BuildPlan(stack=Stack.node, source="call"), app, venv_root=tmp_path / "venvs", env={}, log=Log(),
                    run_as=None, timeout=600, cache_dir=tmp_path / "cache", shim_dir=tmp_path / "shims" / "bin",
                    on_step=on_step)  # fmt: skip
    assert steps and steps[0].startswith(f"installing Node {major}."), steps
