"""Every refused argument says what to pass instead, as InkMCP's own errors do ("Fix: ...").

pydantic's checks of a tool's arguments (types, enums, bounds) came back as "Argument 'port': Input should be less
than or equal to 65535 (got 70000)." with no Fix line, while every error of InkMCP's own has one. Over a real MCP
session against a real `inkmcp serve`: each bad argument below is refused with one line naming it, what was wrong,
and a Fix naming the values that would have been accepted. Argument validation happens in the tool layer before
any provider is called, so the local server is enough (`local_only`).

Also a Procfile that is not `type: command`, read as the agent reads it: the repo's file, its line and the line to
write, not "Argument 'start_command'" (an argument the agent never passed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import local_only
from tests.support import ServerProc, call_error, git_repo, mcp_session

pytestmark = local_only("argument validation is the tool layer's, before any provider")

URL = "https://example.invalid/x.git"
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # tool, arguments, the argument named, its Fix
    ("deploy_app", {"repo_url": URL, "mode": "fast"}, "mode",
     "pass one of 'static', 'on_demand' or 'persistent', or leave it out."),
    ("deploy_app", {"repo_url": URL, "port": 70000}, "port", "pass a whole number from 1 to 65535, or leave it out."),
    ("deploy_app", {"repo_url": URL, "port": "eighty"}, "port",
     "pass a whole number from 1 to 65535, or leave it out."),
    ("deploy_app", {"repo_url": URL, "resources": {"memory_mb": 10}}, "resources.memory_mb",
     "pass a whole number from 64 to 16384."),
    ("deploy_app", {"repo_url": URL, "resources": {"cpus": 0}}, "resources.cpus",
     "pass a number above 0 and at most 16."),
    ("deploy_app", {"repo_url": URL, "resources": "big"}, "resources",
     "pass an object with the keys memory_mb, cpus, or leave it out."),
    ("deploy_app", {"repo_url": URL, "database": {"type": "mysql"}}, "database.type",
     "pass one of 'postgres', 'byo' or 'redis', or a list of them."),
    ("deploy_app", {"repo_url": URL, "env_vars": ["A=1"]}, "env_vars",
     'pass an object of names to string values, e.g. {"NAME": "value"}, or leave it out.'),
    ("deploy_app", {"repo_url": URL, "auto_deploy": "sometimes"}, "auto_deploy",
     "pass true or false, or leave it out."),
    ("deploy_app", {"repo_url": 5}, "repo_url", "pass a string."),
    ("get_logs", {"project_name": "x", "tail": 10_000}, "tail", "pass a whole number from 1 to 500, or leave it out."),
    ("get_logs", {"project_name": "x", "scope": "all"}, "scope", "pass one of 'build' or 'runtime', or leave it out."),
    ("wait_for_deployment", {"deployment_id": "x", "timeout_seconds": 99}, "timeout_seconds",
     "pass a number from 0 to 50, or leave it out."),
    ("update_env_vars", {"project_name": "x", "unset": "A"}, "unset", "pass a list of strings, or leave it out."),
    ("update_env_vars", {"project_name": "x", "env_vars": {"A": 1}}, "env_vars.A", "pass a string."),
    ("delete", {"project_name": "x", "confirm": "y", "delete_database": "maybe"}, "delete_database",
     "pass true or false, or leave it out."),
]  # fmt: skip


def lines(error: str) -> list[str]:
    """The error split into its per-argument lines ("Argument 'x' ..." up to the next one)."""
    return [part.strip() for part in re.split(r"(?=Argument ')", error) if part.strip()]


@pytest.mark.asyncio
async def test_every_refused_argument_says_what_to_pass(server: ServerProc) -> None:
    async with mcp_session(server, server.keys["alice"]) as s:
        for tool, args, argument, fix in CASES:
            error = (await call_error(s, tool, **args)).removeprefix(f"Error executing tool {tool}: ")
            assert lines(error) == [error], (tool, args, error)  # one line, for the one bad argument
            assert error.startswith(f"Argument '{argument}': "), (tool, args, error)
            assert error.endswith(f" Fix: {fix}"), (tool, args, error)
        # several bad arguments at once: one line each, and each line has its own Fix
        error = await call_error(s, "deploy_app", repo_url=URL, mode="fast", port=0, colour="blue")
        said = lines(error.removeprefix("Error executing tool deploy_app: "))
        assert sorted(line.split("'")[1] for line in said) == ["colour", "mode", "port"], error
        assert all(" Fix: " in line for line in said), error
        # a key an object argument does not take: the fix lists that object's keys, not the tool's arguments
        error = await call_error(s, "deploy_app", repo_url=URL, resources={"memory_mb": 128, "gpu": 1})
        said = "Argument 'resources.gpu' is not accepted. Fix: use only memory_mb, cpus in resources."
        assert error.endswith(said), error
        # a missing argument names what it takes
        error = await call_error(s, "get_logs")
        assert error.endswith("Argument 'project_name' is required. Fix: pass project_name (a string)."), error
        # a list with bad items: one line for the argument, each bad item named, the Fix for the items
        error = await call_error(s, "deploy_app", repo_url=URL, database={"type": ["postgres", "x", 3]})
        assert error.endswith("Argument 'database.type': item 1 ('x'), item 2 (3): input should be 'postgres', "
                              "'byo' or 'redis'. Fix: make each item one of 'postgres', 'byo' or 'redis'."), error


@pytest.mark.asyncio
async def test_a_broken_procfile_reads_as_the_repo_file(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "procfile", {"app.py": "print('hi')\n", "Procfile": "# web\nweb python3 app.py\n"})
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name="procfile-read")
    error = error.removeprefix("Error executing tool deploy_app: ")
    assert error.startswith("Procfile line 2 ('web python3 app.py') has no `:` after the process type 'web'"), error
    assert "Argument '" not in error, error
    assert "Fix: change line 2 of Procfile to `web: python3 app.py`, commit and push" in error, error
    assert str(repos) not in error


@pytest.mark.asyncio
async def test_an_unknown_tool_names_the_likely_one_and_lists_the_rest(server: ServerProc) -> None:
    """The SDK said only "Unknown tool: deploy"; the agent had to list the tools to find deploy_app."""
    async with mcp_session(server, server.keys["alice"]) as s:
        listed = sorted(tool.name for tool in (await s.list_tools()).tools)
        error = await call_error(s, "deploy", repo_url=URL)
        assert error.startswith("Unknown tool 'deploy'. Did you mean deploy_app"), error
        assert error.endswith(f"Fix: call one of: {', '.join(listed)} (tools/list describes them)."), error
        error = await call_error(s, "getLogs")
        assert "Did you mean get_logs" in error, error
        error = await call_error(s, "x" * 500)  # nothing close: only the list, and the name is not echoed whole
        assert "Did you mean" not in error and "x" * 81 not in error and "Fix: call one of: " in error, error
