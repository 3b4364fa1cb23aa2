"""What an agent reads when the app's build fails: the app's dependencies, not "Argument 'repo_url'".

A new user's agent read "Argument 'repo_url': uv pip install … exited with 1" as "your repo_url is wrong" and
changed the URL. Over a real MCP session against a real `inkmcp serve` (local provider, real uv): a dependency
that cannot install reads as that, with the installer's error, the fix and the build output's last lines; errors
that really are about an argument (a wrong repo_url, a failing build_command) still name it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.errors import BuildFailed, InvalidArgument
from tests.e2e.conftest import local_only
from tests.support import ServerProc, call, call_error, git_repo, mcp_session


async def finished(s, dep: dict) -> dict:  # type: ignore[no-untyped-def]
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    return dep


@pytest.mark.asyncio
@local_only("reads the local build's error text (a Coolify build fails inside Coolify)")
async def test_dependency_failure_reads_as_the_apps_dependencies(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "deps-broken", {"app.py": "print('hi')\n",
                                            "requirements.txt": "./vendored-package-that-is-missing\n"})  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await finished(s, await call(s, "deploy_app", repo_url=str(repo), start_command="python app.py"))
        error = dep["error"]
        assert dep["status"] == "failed", dep
        assert "Argument 'repo_url'" not in error, error
        head, _, output = error.partition("\nlast output:\n")
        assert head.startswith("building: the app's dependencies (from requirements.txt) did not install: "
                               "uv pip install -r requirements.txt exited with 1"), error
        assert "Fix: fix the dependency list in the repo" in head, error
        assert "vendored-package-that-is-missing" in output, error  # uv's own error line, in the tail
        assert str(repos) not in error  # the server's paths never reach the agent

        failing = git_repo(repos / "cmd-broken", {"app.py": "print('hi')\n"})
        dep = await finished(s, await call(s, "deploy_app", repo_url=str(failing), start_command="python app.py",
                                           build_command="echo about to fail; exit 3"))  # fmt: skip
        assert dep["status"] == "failed", dep
        assert dep["error"].startswith("building: Argument 'build_command': build command"), dep["error"]
        assert "exited with 3" in dep["error"] and "about to fail" in dep["error"], dep["error"]

        wrong_url = await call_error(s, "deploy_app", repo_url=str(repos / "no-such-repo"))
        assert "Argument 'repo_url'" in wrong_url, wrong_url


def test_only_a_build_failure_drops_the_repo_url_prefix() -> None:
    assert BuildFailed("x did not install.", argument="repo_url", fix="f").render() == "x did not install. Fix: f"
    failed = BuildFailed("y exited with 3.", argument="build_command")
    assert failed.render() == "Argument 'build_command': y exited with 3."
    assert InvalidArgument("not a git URL.", argument="repo_url").render() == "Argument 'repo_url': not a git URL."
