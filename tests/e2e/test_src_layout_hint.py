"""A FastAPI app in a src layout with no Procfile: the refusal names the command that runs it.

Seen by driving a real `inkmcp serve` as an agent: pyproject.toml (fastapi, uvicorn), the app in
src/api/main.py, no Procfile. deploy_app was refused with "pass start_command (e.g. 'python app.py' ...)",
which does not run an ASGI app. The refusal now says start_command='uvicorn api.main:app --app-dir src ...'
(found `app = FastAPI(` in src/api/main.py), and the agent's one more call, with exactly that, goes live.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.e2e.conftest import local_only
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call_error, git_repo, mcp_session

SRC_LAYOUT = {
    "pyproject.toml": '[project]\nname = "api"\nversion = "0.1.0"\nrequires-python = ">=3.11"\n'
    'dependencies = ["fastapi>=0.110", "uvicorn>=0.29"]\n',
    "src/api/__init__.py": "",
    "src/api/main.py": "from fastapi import FastAPI\n\napp = FastAPI()\n\n\n@app.get('/')\n"
    "def root():\n    return {'layout': 'src'}\n",
}


@local_only("detection is the provider-independent build plan; one provider shows it")
@pytest.mark.asyncio
async def test_src_layout_refusal_names_the_command_that_goes_live(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "api", SRC_LAYOUT)
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name="srclayout")
        assert "found `app = FastAPI(` in src/api/main.py" in error, error
        command = re.search(r"pass start_command='([^']+)'", error)
        assert command and command[1] == "uvicorn api.main:app --app-dir src --host 0.0.0.0 --port $PORT", error
        dep = await deploy_live(s, repo_url=str(repo), project_name="srclayout", start_command=command[1])
        assert via_proxy(server, dep["url"]).json() == {"layout": "src"}
