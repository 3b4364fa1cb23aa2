"""update_env_vars on a static site whose build reads an env var (newuser6, 2026-12-03).

A Vite site (`import.meta.env.VITE_API_URL`) deployed with env_vars={"VITE_API_URL": ...} had the value built into its
JavaScript. The agent pointed it at another API with update_env_vars and read `restarted: ["web"]`, "restarted web
with the new values", and list_services `env: applied`, while the site kept serving the files built with the old
value: a static site runs nothing to restart, and its files change only with a build. The answer now says so and
names the call that rebuilds (deploy_app again, which update_env_vars makes a real deploy, not a no-op); that call
serves the new value.

A real `inkmcp serve` (the session's local server, an account of this file's own), the official MCP client over
streamable HTTP; a build_command stands in for Vite's (it writes the variable into the page, as Vite inlines it).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_repo, mcp_session

ACCOUNT = f"newuser6s-{uuid.uuid4().hex[:8]}"
BUILD = "mkdir -p dist && printf 'API at %s' \"$VITE_API_URL\" > dist/index.html"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_static_sites_new_env_is_told_to_rebuild_and_the_rebuild_serves_it(server: ServerProc,
                                                                                    repos: Path) -> None:
    repo = git_repo(repos / "site", {"README.md": "a site\n"})
    project = f"nu6-static-env-{uuid.uuid4().hex[:6]}"
    args = {"repo_url": str(repo), "project_name": project, "service_type": "webapp_static", "build_command": BUILD,
            "static_dir": "dist"}  # fmt: skip
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await deploy_live(s, **args, env_vars={"VITE_API_URL": "http://api-1.example.test"})
        assert via_proxy(server, dep["url"]).text == "API at http://api-1.example.test"
        update = await call(s, "update_env_vars", project_name=project,
                            env_vars={"VITE_API_URL": "http://api-2.example.test"})
        assert update["set"] == ["VITE_API_URL"] and update["restarted"] == [] and update["pending"] == [], update
        assert update["note"] == (
            "web is a static site: nothing runs to restart, and its files were built with the previous values (a build "
            "reads env vars, e.g. Vite's VITE_*): call deploy_app again (the same arguments) to rebuild with the new "
            "ones"), update
        assert via_proxy(server, dep["url"]).text == "API at http://api-1.example.test"  # what the note says
        again = await deploy_live(s, **args)
        assert again["reused"] is False and again["deployment_id"] != dep["deployment_id"], again
        assert via_proxy(server, again["url"]).text == "API at http://api-2.example.test"
