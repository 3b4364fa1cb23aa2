"""update_env_vars on a static site whose build reads an env var (newuser6, 2026-12-03).

A Vite site (`import.meta.env.VITE_API_URL`) deployed with env_vars={"VITE_API_URL": ...} had the value built into its
JavaScript. The agent pointed it at another API with update_env_vars and read `restarted: ["web"]`, "restarted web
with the new values", and list_services `env: applied`, while the site kept serving the files built with the old
value: a restart serves the same files, which change only with a build. The answer now says so and
names the call that rebuilds (deploy_app again, which update_env_vars makes a real deploy, not a no-op); that call
serves the new value.

On Coolify a deploy of the same commit reuses the image built for it (its /deploy without force skips the build), so
there the note says to commit a change and deploy; locally every deployment builds, and deploy_app again does it.

A real `inkmcp serve` on each provider (the session's local server and Coolify stand-in, tests/e2e/conftest.py), the
official MCP client over streamable HTTP; a build_command stands in for Vite's (it writes the variable into the page,
as Vite inlines it). Lives in tests/e2e to run on both providers.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

AGAIN = {"local": "call deploy_app again (the same arguments) to rebuild with the new values",
         "coolify": "a deploy of the same commit reuses the image built for it, so commit a change (and push it), then "
                    "call deploy_app to rebuild with the new values"}


def rebuild_as_told(server: ServerProc, repo: Path, note: str) -> None:
    """What the note says before the next deploy_app: nothing locally, a new commit on Coolify."""
    assert note.endswith(AGAIN[server.compute]), note
    if server.compute == "coolify":
        git_commit(repo, {"CHANGES.md": "rebuild with the new API\n"})
BUILD = "mkdir -p dist && printf 'API at %s' \"$VITE_API_URL\" > dist/index.html"


@pytest.mark.asyncio
async def test_a_static_sites_new_env_is_told_to_rebuild_and_the_rebuild_serves_it(server: ServerProc,
                                                                                    repos: Path) -> None:
    repo = git_repo(repos / "site", {"README.md": "a site\n"})
    project = f"nu6-static-env-{uuid.uuid4().hex[:6]}"
    args = {"repo_url": str(repo), "project_name": project, "service_type": "webapp_static", "build_command": BUILD,
            "static_dir": "dist"}  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, **args, env_vars={"VITE_API_URL": "http://api-1.example.test"})
        assert via_proxy(server, dep["url"]).text == "API at http://api-1.example.test"
        update = await call(s, "update_env_vars", project_name=project,
                            env_vars={"VITE_API_URL": "http://api-2.example.test"})
        assert update["set"] == ["VITE_API_URL"] and update["restarted"] == [] and update["pending"] == [], update
        assert update["note"].startswith(
            "web is a static site: its files were built with the previous values (a build reads env vars, e.g. Vite's "
            "VITE_*), and a restart serves the same files: "), update
        assert via_proxy(server, dep["url"]).text == "API at http://api-1.example.test"  # what the note says
        rebuild_as_told(server, repo, update["note"])
        again = await deploy_live(s, **args)
        assert again["reused"] is False and again["deployment_id"] != dep["deployment_id"], again
        assert via_proxy(server, again["url"]).text == "API at http://api-2.example.test"


SERVER = """import os
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


@pytest.mark.asyncio
async def test_a_frontend_variable_of_a_built_server_app_is_told_to_rebuild(server: ServerProc, repos: Path) -> None:
    """A Next app inlines NEXT_PUBLIC_* into what `next build` writes and serves it with `next start`: a restart keeps
    the built files. A server app whose build writes the variable into the file it serves stands in for it."""
    repo = git_repo(repos / "next-like", {"app.py": SERVER})
    project = f"nu6-built-env-{uuid.uuid4().hex[:6]}"
    args = {"repo_url": str(repo), "project_name": project, "start_command": "python app.py",
            "build_command": "printf '%s' \"$NEXT_PUBLIC_API_URL\" > built.txt"}  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, **args, env_vars={"NEXT_PUBLIC_API_URL": "http://api-1.example.test"})
        assert via_proxy(server, dep["url"]).text == "http://api-1.example.test"
        update = await call(s, "update_env_vars", project_name=project, env_vars={"LOG_LEVEL": "debug"})
        assert update["restarted"] == ["web"] and "inlined" not in update["note"], update  # a runtime variable
        update = await call(s, "update_env_vars", project_name=project,
                            env_vars={"NEXT_PUBLIC_API_URL": "http://api-2.example.test"})
        assert update["restarted"] == ["web"], update
        assert "NEXT_PUBLIC_API_URL is read by the build of web and inlined in the files it writes, which a restart " \
               f"keeps: {AGAIN[server.compute]}" in update["note"], update
        assert via_proxy(server, dep["url"]).text == "http://api-1.example.test"  # what the note says
        rebuild_as_told(server, repo, update["note"])
        again = await deploy_live(s, **args)
        assert via_proxy(server, again["url"]).text == "http://api-2.example.test"
