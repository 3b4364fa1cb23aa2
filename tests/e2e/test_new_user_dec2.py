"""A new user's agent deploying apps the other suites have not seen (newuser, 2026-12-02).

Each test is something that went wrong when an app of a kind the corpus and the other e2e tests do not cover was
deployed through a real `inkmcp serve` (local provider) with the official MCP client: what the agent saw, and that
it now goes live or reads as what to do.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import local_only
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, call_error, git_repo, mcp_session

STDLIB_APP = {
    "app.py": '''import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"stdlib only"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), H).serve_forever()
''',
}
FLASK_WITHOUT_REQUIREMENTS = {
    "app.py": "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef index():\n    return 'hi'\n",
}


@local_only("detection is the provider-independent build plan; one provider shows it")
@pytest.mark.asyncio
async def test_a_dependency_free_app_py_goes_live_without_a_start_command(server: ServerProc, repos: Path) -> None:
    """An agent's first app is often a stdlib `app.py` with no requirements.txt. It was refused with "looked for
    ... app.py ... Found none of them" although app.py was there; it now runs as `python app.py`. A Flask module
    with nothing listing Flask is still refused, but the refusal says app.py was found and what to add."""
    repo = git_repo(repos / "stdlib-app", STDLIB_APP)
    flask = git_repo(repos / "flask-bare", FLASK_WITHOUT_REQUIREMENTS)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo))
        assert via_proxy(server, dep["url"]).text == "stdlib only"
        error = await call_error(s, "deploy_app", repo_url=str(flask))
        assert "Found: app.py." in error and "Found none" not in error, error
        assert "add a requirements.txt listing the packages app.py imports and gunicorn" in error, error


async def finished(s, dep: dict) -> dict:  # type: ignore[no-untyped-def]
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    return dep


@local_only("reads the local build's error text (a Coolify build fails inside Coolify)")
@pytest.mark.asyncio
async def test_a_dependency_that_needs_a_system_library_says_so(server: ServerProc, repos: Path) -> None:
    """mysqlclient (Django's MySQL driver) compiles against libmysqlclient, which the server does not have. The
    agent was told to "pin a version that publishes a wheel", and mysqlclient publishes none for Linux: a loop of
    failed builds. The error now says a system library is missing and names the pure-Python replacement."""
    repo = git_repo(repos / "mysql-app", {"requirements.txt": "mysqlclient==2.2.4\n", **STDLIB_APP})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await finished(s, await call(s, "deploy_app", repo_url=str(repo)))
        assert dep["status"] == "failed", dep
        head = dep["error"].partition("\nlast output:\n")[0]
        assert "Failed to build `mysqlclient==2.2.4`" in head, head
        assert "mysqlclient compiles against a system library this server does not have" in head, head
        assert "PyMySQL" in head and "publishes a wheel" not in head, head


DB_PROBE = {
    "app.py": '''import os
from http.server import BaseHTTPRequestHandler, HTTPServer


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("database " + ("set" if os.environ.get("DATABASE_URL") else "missing")).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
''',
}


@local_only("argument handling is the provider-independent tool surface; one provider shows it")
@pytest.mark.asyncio
async def test_database_as_a_plain_string_is_understood(server: ServerProc, repos: Path) -> None:
    """`database="postgres"` is what an agent passes first; it was refused with pydantic's "Input should be a valid
    dictionary or instance of DatabaseRequest" (our class name). The string (or a list of them) now means
    {"type": ...}; a value of another kind is refused without the class name."""
    repo = git_repo(repos / "db-string", DB_PROBE)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), start_command="python app.py", database="postgres")
        assert via_proxy(server, dep["url"]).text == "database set"
        error = await call_error(s, "deploy_app", repo_url=str(repo), database=5)
        assert "Argument 'database'" in error and "DatabaseRequest" not in error, error
        assert "Fix: pass an object with the keys type, url" in error, error


@local_only("detection is the provider-independent build plan; one provider shows it")
@pytest.mark.asyncio
async def test_a_monorepo_root_refusal_names_the_app_directories(server: ServerProc, repos: Path) -> None:
    """A repo with backend/ and frontend/ and nothing at its root was refused with "Found none of them" and a
    generic "pass app_dir (that directory)": the agent had to guess the directory. The refusal now names each
    subdirectory holding an app, and the call it suggests goes live."""
    repo = git_repo(repos / "two-apps", {"README.md": "# two apps\n", "frontend/index.html": "<h1>front</h1>\n",
                                         **{f"backend/{k}": v for k, v in STDLIB_APP.items()}})  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo))
        assert "pass app_dir as one of backend (app.py), frontend (index.html)" in error, error
        assert "e.g. app_dir='backend', service_name='backend'" in error, error
        dep = await deploy_live(s, repo_url=str(repo), app_dir="backend", service_name="backend")
        assert via_proxy(server, dep["url"]).text == "stdlib only"


DEV_DEPENDENCY_BUILD = {
    "package.json": '{"name": "site", "version": "1.0.0", "private": true, "scripts": {"build": "build-site"}, '
    '"devDependencies": {"builder": "file:builder"}}\n',
    "package-lock.json": '{"name": "site", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {'
    '"": {"name": "site", "version": "1.0.0", "devDependencies": {"builder": "file:builder"}}, '
    '"builder": {"version": "1.0.0", "dev": true, "bin": {"build-site": "cli.js"}}, '
    '"node_modules/builder": {"resolved": "builder", "link": true}}}\n',
    "builder/package.json": '{"name": "builder", "version": "1.0.0", "bin": {"build-site": "cli.js"}}\n',
    "builder/cli.js": "#!/usr/bin/env node\nconst fs = require('fs');\nfs.mkdirSync('dist', {recursive: true});\n"
    "fs.writeFileSync('dist/index.html', '<h1>built by ' + process.env.NODE_ENV + '</h1>');\n",
}


@local_only("runs the local Node build (npm ci, npm run build)")
@pytest.mark.asyncio
async def test_node_env_production_still_installs_the_builds_dev_dependencies(server: ServerProc, repos: Path) -> None:
    """A vite site deployed with env_vars {"NODE_ENV": "production"} (what an agent sets for production) failed:
    `npm ci` skips devDependencies under NODE_ENV=production, the build's tool is one, and the error said "vite:
    not found ... fix the build so that it succeeds locally". The build's install now keeps them (as Heroku and
    Render do); the build still sees NODE_ENV=production."""
    repo = git_repo(repos / "devdep-site", DEV_DEPENDENCY_BUILD)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), env_vars={"NODE_ENV": "production"})
        assert via_proxy(server, dep["url"]).text == "<h1>built by production</h1>"


@local_only("reads the local build's error text (a Coolify build fails inside Coolify)")
@pytest.mark.asyncio
async def test_a_build_tool_that_is_not_installed_is_named(server: ServerProc, repos: Path) -> None:
    """A TypeScript app whose build runs `tsc` without typescript in package.json failed with "build command 'npm run
    build' exited with 127. Fix: fix the build so that it succeeds locally" (it does there: tsc is global on the
    developer's machine). The error now names the missing command and where its package belongs."""
    repo = git_repo(repos / "ts-app", {
        "package.json": '{"name": "ts-app", "version": "1.0.0", '
        '"scripts": {"build": "tsc", "start": "node dist/index.js"}}\n',
        "index.ts": "console.log('hi')\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await finished(s, await call(s, "deploy_app", repo_url=str(repo)))
        assert dep["status"] == "failed", dep
        head = dep["error"].partition("\nlast output:\n")[0]
        assert "build command 'npm run build' exited with 127: `tsc` is not installed in the build" in head, head
        assert "add the npm package that provides it to package.json" in head, head
        assert "succeeds locally" not in head, head


FLASK_APP = "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef index():\n    return 'served'\n"


@local_only("detection is the provider-independent build plan; one provider shows it")
@pytest.mark.asyncio
async def test_requirements_that_include_other_files_are_read_for_the_server(server: ServerProc, repos: Path) -> None:
    """requirements.txt holding `-r requirements/prod.txt` (gunicorn and flask in there): detection read only the top
    file, found no server, ran `python app.py`, which defines the app and exits, and the deploy failed at
    health_check with "exited with code 0" (the agent never saw which command ran). The includes are followed now
    (and `-e .` reads the project's setup.py), so it goes live under gunicorn in one call."""
    repo = git_repo(repos / "nested-reqs", {
        "requirements.txt": "-r requirements/prod.txt\n",
        "requirements/prod.txt": "-r base.txt\ngunicorn\n",
        "requirements/base.txt": "flask>=3\n",
        "app.py": FLASK_APP,
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo))
        assert via_proxy(server, dep["url"]).text == "served"
        # the command detection chose is named in the history (it was named nowhere)
        assert "runs `gunicorn app:app --bind 0.0.0.0:$PORT` (detected; start_command overrides)" in dep["history"][0]
        logs = await call(s, "get_logs", project_name=dep["project"], scope="runtime", tail=50)
        assert any("gunicorn" in line.lower() for line in logs["lines"]), logs


@local_only("reads the local build's failure text")
@pytest.mark.asyncio
async def test_a_failed_builds_quoted_output_hides_the_secrets_get_logs_hides(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "leaky-build", STDLIB_APP)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await finished(s, await call(
            s, "deploy_app", repo_url=str(repo), start_command="python app.py", database={"type": "postgres"},
            env_vars={"API_TOKEN": "tok-3141592653"},
            build_command="echo url=$DATABASE_URL pw=$PGPASSWORD tok=$API_TOKEN; exit 2"))  # fmt: skip
        assert dep["status"] == "failed", dep
        creds = await call(s, "get_database_credentials", project_name=dep["project"])
        logs = await call(s, "get_logs", project_name=dep["project"], scope="build", tail=20)
        assert any("url=[REDACTED] pw=[REDACTED] tok=[REDACTED]" in line for line in logs["lines"]), logs
        shown = dep["error"] + "\n".join(dep["history"])
        for secret in (creds["password"], "tok-3141592653"):
            assert secret not in shown, shown
