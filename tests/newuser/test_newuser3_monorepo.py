"""A monorepo whose apps are two levels down (newuser3, 2026-12-02): `services/api` (Flask) and `services/web` (a
site), nothing at the root but a README. deploy_app at the root was refused with "Found none of them. Fix: pass
start_command (e.g. 'python app.py') ...": no directory named, although a first-level layout (backend/, frontend/)
gets them. The refusal now names the second level's apps beneath a first-level directory that is no app itself; the
call it suggests goes live. Real `inkmcp serve` (the session's local server, an account of this file's own) and the
official MCP client over streamable HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.errors import BuildPlanError
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call_error, git_repo, mcp_session

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"

MONOREPO = {
    "README.md": "# two apps\n",
    "services/api/requirements.txt": "flask\ngunicorn\n",
    "services/api/app.py": "from flask import Flask\n\napp = Flask(__name__)\n",
    "services/site/index.html": "<h1>the site</h1>\n",
    "docs/guide/index.html": "<h1>docs</h1>\n",  # docs/ is never an app's directory
}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_apps_two_levels_down_are_named_and_the_suggested_call_goes_live(server: ServerProc,
                                                                              repos: Path) -> None:  # fmt: skip
    repo = git_repo(repos / "two-levels", MONOREPO)
    project = f"nu3-mono-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name=project)
        assert "pass app_dir as one of services/api (requirements.txt), services/site (index.html)," in error, error
        assert "e.g. app_dir='services/api', service_name='api'" in error, error
        assert "docs" not in error, error
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name=project, app_dir="services/sit")
        assert "directories holding an app: services/api (requirements.txt), services/site (index.html)." in error
        dep = await deploy_live(s, repo_url=str(repo), project_name=project, app_dir="services/site",
                                service_name="site")  # fmt: skip
        assert via_proxy(server, dep["url"]).text == "<h1>the site</h1>\n"


def _refusal(root: Path) -> str:
    with pytest.raises(BuildPlanError) as caught:
        derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None, port=None)
    return str(caught.value)


def test_an_apps_own_page_directories_are_not_offered_as_apps(tmp_path: Path) -> None:
    """A package's templates/index.html (or static/, public/) is a page of an app, not an app of a monorepo."""
    for name in ("pkg/templates/index.html", "pkg/static/index.html", "pkg/public/index.html", "apps/web/index.html"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("<h1>x</h1>\n")
    error = _refusal(tmp_path)
    assert "pass app_dir as one of apps/web (index.html), with" in error, error
    assert "pkg/" not in error, error
