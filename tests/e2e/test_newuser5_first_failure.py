"""A first deploy whose app exits at start, as an agent reads it on each provider (newuser5, 2026-12-02).

On Coolify it read "process 'web' failed (failed); the previous version keeps serving; its health check failed: ...
Make the app listen on 0.0.0.0 at the PORT env var": there was no previous version (the local provider said
"nothing went live"), and the agent was sent to change its bind address while the container's logs showed the app
exiting on a missing setting. Both providers now say nothing went live, and Coolify's hint puts the logs first.

An app with no route for `/` (an API; Flask's tutorial answers only /hello) went live on the local provider (any
answer below 500) and failed on Coolify (`curl -f`) with the same "make the app listen on 0.0.0.0" advice; Coolify's
failure now says what the app answered and that inkmcp.yaml's health_path fixes it, which then works on both.

A dependency that compiles against a missing system library (mysqlclient) was told, on the local provider, which
library and that PyMySQL installs instead; on Coolify: "process 'web' failed; nothing went live" and a traceback.
Coolify's build failure now says it the same way (pip's and uv's words for a failed build are read).

Flask's quickstart (`app.run(debug=True)` under the main guard, no gunicorn) ran as `python app.py` and failed its
first deploy on both (Flask's server on 127.0.0.1:5000); it goes live with one call now.
Lives in tests/e2e (not tests/newuser) to reuse the session's two servers (`server` is parametrized over both).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.probes import service_host
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

CRASH = "import sys\nprint('boom: SECRET_KEY is not set', file=sys.stderr, flush=True)\nsys.exit(3)\n"


@pytest.mark.asyncio
async def test_a_first_deploy_that_crashes_says_nothing_went_live(server: ServerProc, repos: Path) -> None:
    project = f"nu5-crash-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / project, {"app.py": CRASH})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        error = dep["error"]
        assert dep["status"] == "failed" and dep["url"] is None, dep
        head, _, output = error.partition("\nlast output:\n")
        assert head.startswith("health_check: process 'web' "), error
        assert "nothing went live" in head and "previous version" not in head, error
        assert "failed (failed)" not in head, error
        assert "boom: SECRET_KEY is not set" in output, error  # the app's own words, on both
        if server.compute == "coolify":
            assert head.index("logs below show an error or the app exiting") < head.index("listen on 0.0.0.0"), error
        service = (await call(s, "list_services", project_name=project))["services"][0]
        assert service["state"] == "not_deployed" and service["url"] is None, service
        await call(s, "delete", project_name=project, confirm=project)


HELLO_ONLY = """import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == '/hello' else 404
        self.send_response(code); self.end_headers(); self.wfile.write(b'Hello' if code == 200 else b'no route')
http.server.ThreadingHTTPServer(('0.0.0.0', int(os.environ['PORT'])), H).serve_forever()
"""


@pytest.mark.asyncio
async def test_an_app_without_a_route_for_slash_is_told_what_it_answered(server: ServerProc, repos: Path) -> None:
    project = f"nu5-hello-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / project, {"app.py": HELLO_ONLY})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        if server.compute == "local":
            assert dep["status"] == "live", dep  # GET / answered 404: below 500
        else:
            assert dep["status"] == "failed", dep
            head = dep["error"].partition("\nlast output:\n")[0]
            assert "the app answered GET / with 404" in head and "health_path in inkmcp.yaml" in head, head
            assert "make the app listen" not in head, head
        git_commit(repo, {"inkmcp.yaml": "services:\n  web: {health_path: /hello}\n"})
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "live", dep  # what the error said works, on both
        await call(s, "delete", project_name=project, confirm=project)


@pytest.mark.asyncio
async def test_a_dependency_needing_a_system_library_reads_the_same_on_both(server: ServerProc, repos: Path) -> None:
    project = f"nu5-mysql-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / project, {"requirements.txt": "mysqlclient==2.2.4\n", "app.py": HELLO_ONLY})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed", dep
        head = dep["error"].partition("\nlast output:\n")[0]
        assert head.startswith("building: "), head
        assert "mysqlclient compiles against a system library" in head and "PyMySQL" in head, head
        await call(s, "delete", project_name=project, confirm=project)


QUICKSTART = ("from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.route('/')\ndef index():\n"
              "    return 'flask quickstart'\n\n\nif __name__ == '__main__':\n    app.run(debug=True)\n")


@pytest.mark.asyncio
async def test_flasks_quickstart_goes_live_with_one_call(server: ServerProc, repos: Path) -> None:
    project = f"nu5-flask-{uuid.uuid4().hex[:6]}"
    repo = git_repo(repos / project, {"requirements.txt": "flask\n", "app.py": QUICKSTART})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project)
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "live", dep
        assert "runs `flask --app app:app run --host 0.0.0.0 --port $PORT`" in dep["history"][0], dep["history"]
        answer = httpx.get(f"http://127.0.0.1:{server.proxy_port}/", timeout=10,
                           headers={"Host": service_host(server, "web", project)})  # fmt: skip
        assert answer.text == "flask quickstart", answer.text
        await call(s, "delete", project_name=project, confirm=project)
