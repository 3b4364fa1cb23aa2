"""provision_database(type='redis') on a server without the Redis add-on (Coolify compute with no INKMCP_REDIS_URL, as
the session's Coolify server runs), through the MCP client (newuser5, 2026-12-02).

The refusal named deploy_app's argument: "Argument 'database.type' ... pass database={"type": "postgres"}": neither
is an argument of provision_database, whose argument is `type`. It now names `type` and what to do with it; deploy_app's
refusal still names database.type.
"""

from __future__ import annotations

import uuid

import pytest

from tests.support import ServerProc, call, call_error, mcp_session


@pytest.mark.asyncio
@pytest.mark.parametrize("server", ["coolify"], indirect=True)  # the local server offers Redis (redis-server)
async def test_redis_refused_by_provision_database_names_its_own_argument(server: ServerProc) -> None:
    project = f"nu5-redis-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys["alice"]) as s:
        await call(s, "ensure_project", name=project)
        said = await call_error(s, "provision_database", project_name=project, type="redis")
        assert "Argument 'type': this InkMCP server does not offer the Redis add-on." in said, said
        assert "Fix: omit type (postgres, the default)" in said and "database=" not in said, said
        said = await call_error(s, "deploy_app", repo_url="https://example.invalid/o/r.git", project_name=project,
                                database={"type": "redis"})  # fmt: skip
        assert "Argument 'database.type': this InkMCP server does not offer the Redis add-on." in said, said
        await call(s, "delete", project_name=project, confirm=project)
