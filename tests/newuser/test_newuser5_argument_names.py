"""Argument names an agent brings from other platforms, through the official MCP client (newuser5, 2026-12-02).

`get_logs(lines=20)`, `deploy_app(branch='main')`, `deploy_app(env={...})`, `deploy_app(domains=[...])`,
`deploy_app(health_path='/healthz')`, `ensure_project(project_name=...)` were refused with "is not accepted. Fix: use
only <every argument>": the agent guessed again (or dropped what it wanted). The refusal now says which argument
means that, or that the thing is not an argument (custom domains; the health path lives in inkmcp.yaml). Refused
before any work, on the session's local server (an account of this file's own).
"""

from __future__ import annotations

import uuid

import pytest

from tests.support import ServerProc, call_error, mcp_session

ACCOUNT = f"newuser5a-{uuid.uuid4().hex[:8]}"


@pytest.mark.asyncio
async def test_a_familiar_wrong_argument_name_is_told_the_right_one(server: ServerProc) -> None:
    repo = "https://example.invalid/owner/app.git"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        said = await call_error(s, "get_logs", project_name="x", lines=20)
        assert "Argument 'lines' is not accepted: the argument for that is tail. Fix: use only" in said, said
        said = await call_error(s, "deploy_app", repo_url=repo, branch="main")
        assert "Argument 'branch' is not accepted: the argument for that is ref." in said, said
        said = await call_error(s, "deploy_app", repo_url=repo, env={"A": "1"})
        assert "Argument 'env' is not accepted: the argument for that is env_vars." in said, said
        said = await call_error(s, "deploy_app", repo_url=repo, domains=["app.example.com"])
        assert "Argument 'domains' is not accepted: custom domains are not supported" in said, said
        said = await call_error(s, "deploy_app", repo_url=repo, health_path="/healthz")
        assert "inkmcp.yaml `services: {web: {health_path: /healthz}}`" in said, said
        said = await call_error(s, "ensure_project", project_name="nu5-x")
        assert "Argument 'project_name' is not accepted: the argument for that is name." in said, said
        said = await call_error(s, "wait_for_deployment", id=str(uuid.uuid4()))
        assert "the argument for that is deployment_id" in said, said
        # a name nothing maps stays as it was: the list of valid arguments only
        said = await call_error(s, "get_logs", project_name="x", colour="red")
        assert "Argument 'colour' is not accepted. Fix: use only project_name, scope, service_name, tail." in said
