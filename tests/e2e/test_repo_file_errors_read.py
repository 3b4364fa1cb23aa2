"""What an agent reads when a file in the repo is invalid: that file, not "Argument 'repo_url'".

The same class as the build failures of tests/e2e/test_build_failure_reads.py: an invalid inkmcp.yaml or
package.json was refused with "Argument 'repo_url': inkmcp.yaml is not valid YAML ...", which reads as "pass
another repo_url". Over a real MCP session against a real `inkmcp serve`: the refusal names the file and
what to change in it, without the argument prefix; a repo_url that really is wrong still names the argument.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.errors import BuildFailed, BuildPlanError, InvalidArgument, SourceError
from tests.support import ServerProc, call_error, git_repo, mcp_session


@pytest.mark.asyncio
async def test_an_invalid_repo_file_reads_as_that_file(server: ServerProc, repos: Path) -> None:
    cases = {
        "yaml": ({"app.py": "print('hi')\n", "inkmcp.yaml": "services: [unclosed\n"},
                 "inkmcp.yaml is not valid YAML at line 2."),
        "json": ({"index.js": "console.log('hi')\n", "package.json": "{\"name\": \"x\",\n"},
                 "package.json is not valid JSON ("),
    }  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        for name, (files, start) in cases.items():
            repo = git_repo(repos / name, files)
            error = await call_error(s, "deploy_app", repo_url=str(repo), project_name=f"repofile-{name}")
            error = error.removeprefix("Error executing tool deploy_app: ")  # the MCP SDK's, not InkMCP's
            assert error.startswith(start), error
            assert "Argument 'repo_url'" not in error, error
            fix = error.partition(" Fix: ")[2]
            assert start.split()[0] in fix and "commit and push" in fix, error
            assert str(repos) not in error  # the server's paths never reach the agent
        wrong_url = await call_error(s, "deploy_app", repo_url=str(repos / "no-such-repo"))
        assert "Argument 'repo_url'" in wrong_url, wrong_url


def test_repo_file_errors_drop_the_prefix_and_other_arguments_keep_it() -> None:
    for cls in (BuildPlanError, BuildFailed):
        assert cls("inkmcp.yaml is invalid.", argument="repo_url", fix="f").render() == "inkmcp.yaml is invalid. Fix: f"
    assert BuildPlanError("no start.", argument="start_command").render() == "Argument 'start_command': no start."
    assert SourceError("not found.", argument="repo_url").render() == "Argument 'repo_url': not found."
    assert InvalidArgument("not a git URL.", argument="repo_url").render() == "Argument 'repo_url': not a git URL."
