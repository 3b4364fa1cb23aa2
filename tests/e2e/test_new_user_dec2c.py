"""A new platform operator's agent, second pass (newuser2, 2026-12-02): apps and failures the other suites have not
seen, deployed through a real `inkmcp serve` (local provider) with the official MCP client over streamable HTTP.

Each test is what the agent saw (quoted in its docstring), and that the tool result alone now says what to do: the
call it suggests is made and goes live.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import local_only
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, ToolFailed, call, call_error, git_commit, git_repo, mcp_session

SERVE = '''import os
from http.server import BaseHTTPRequestHandler, HTTPServer
{setup}

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = ({body}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


def serve(body: str, setup: str = "") -> str:
    """A stdlib HTTP app answering `body` (a Python expression) after running `setup` at start."""
    return SERVE.format(body=body, setup=setup)


async def finished(s, dep: dict) -> dict:  # type: ignore[no-untyped-def]
    while not dep["done"]:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    return dep


async def failed_head(s, **args) -> str:  # type: ignore[no-untyped-def]
    """deploy_app to the end; the failure's text above its quoted output."""
    dep = await finished(s, await call(s, "deploy_app", **args))
    assert dep["status"] == "failed", dep
    return dep["error"].partition("\nlast output:\n")[0]


def make_executable(repo: Path, name: str) -> None:
    (repo / name).chmod(0o755)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(repo)]
    subprocess.run([*git, "add", name], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "executable"], check=True)


@local_only("detection and the runtime's own 'could not run' line; one provider shows them")
@pytest.mark.asyncio
async def test_a_go_repo_is_refused_naming_what_is_supported_and_what_runs(server: ServerProc, repos: Path) -> None:
    """A Go repo (go.mod, main.go) was refused with "nothing says how to run this app ... Fix: pass start_command
    (e.g. 'python app.py')"; the agent passed start_command='go run .' and got "exited with code 127" at
    health_check. The refusal now names the language, what InkMCP builds and the way that works (a committed binary
    started by start_command), which goes live; `go run .` fails saying the server has no Go toolchain."""
    repo = git_repo(repos / "go-app", {
        "go.mod": "module example.com/app\n\ngo 1.22\n",
        "main.go": 'package main\n\nfunc main() {}\n',
        # stands in for the committed static binary: the same exec of a file of the commit
        "bin/server": "#!/bin/sh\nexec python3 -m http.server \"$PORT\"\n",
    })  # fmt: skip
    make_executable(repo, "bin/server")
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo))
        assert "this looks like a Go app (go.mod), and InkMCP has no Go builder" in error, error
        assert "Python (requirements.txt" in error and "Node.js (package.json" in error, error
        assert "commit it and pass start_command='./bin/server'" in error, error
        assert "'python app.py'" not in error, error
        head = await failed_head(s, repo_url=str(repo), start_command="go run .")
        assert "`go` is not on this server" in head and "installs no Go toolchain" in head, head
        dep = await deploy_live(s, repo_url=str(repo), start_command="./bin/server")
        assert via_proxy(server, dep["url"]).status_code == 200


@local_only("reads the local runtime's failure text")
@pytest.mark.asyncio
async def test_a_server_missing_from_the_dependencies_is_named(server: ServerProc, repos: Path) -> None:
    """A Procfile `web: gunicorn app:app` with only flask in requirements.txt failed with "exited with code 127 ...
    could not run gunicorn: No such file or directory": true, not what to do. The failure now says to add gunicorn to
    the dependencies; with it added the app goes live. Its build log has no uv "Failed to hardlink" warning (as root
    the project's cache and the service's virtualenvs are separate mounts: uv copied anyway, after a warning)."""
    repo = git_repo(repos / "no-gunicorn", {
        "requirements.txt": "flask\n",
        "app.py": "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef i():\n    return 'ok'\n",
        "Procfile": "web: gunicorn app:app\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo))
        assert "Hint: `gunicorn` is not installed: add gunicorn to the app's Python dependencies" in head, head
        logs = await call(s, "get_logs", project_name="no-gunicorn", scope="build", tail=200)
        assert any("uv pip install" in line for line in logs["lines"]), logs
        assert not any("Failed to hardlink" in line for line in logs["lines"]), logs
        git_commit(repo, {"requirements.txt": "flask\ngunicorn\n"})
        dep = await deploy_live(s, repo_url=str(repo))
        assert via_proxy(server, dep["url"]).text == "ok"


MIGRATE = "import sqlite3\nsqlite3.connect('/tmp/app.db').execute('CREATE TABLE IF NOT EXISTS notes (body text)')\n"


@local_only("reads the local runtime's failure text")
@pytest.mark.asyncio
async def test_a_missing_table_names_the_release_command(server: ServerProc, repos: Path) -> None:
    """An app that reads its table at start, deployed before anything created it, failed at health_check quoting
    its traceback; nothing the agent could read said that InkMCP runs migrations (deploy_app has no such argument).
    The failure now names the table and the Procfile `release:` line; with that line the app goes live."""
    app = serve("str(len(rows))", setup="import sqlite3\nrows = sqlite3.connect('/tmp/app.db')"
                                          ".execute('SELECT * FROM notes').fetchall()\n")
    repo = git_repo(repos / "needs-migrate", {"requirements.txt": "", "app.py": app, "migrate.py": MIGRATE})
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo), start_command="python app.py")
        assert "Hint: the table 'notes' does not exist yet" in head, head
        assert "`release: python manage.py migrate`" in head and "Procfile" in head, head
        git_commit(repo, {"Procfile": "release: python migrate.py\nweb: python app.py\n"})
        dep = await deploy_live(s, repo_url=str(repo))
        assert via_proxy(server, dep["url"]).text == "0"


@local_only("reads the local runtime's failure text")
@pytest.mark.asyncio
async def test_an_unset_env_var_names_the_argument(server: ServerProc, repos: Path) -> None:
    """`os.environ["STRIPE_API_KEY"]` at import: the agent saw a KeyError in a gunicorn traceback. The failure now
    says the env var is unset and which argument sets it; passing it makes the app go live."""
    app = serve("'key ends ' + KEY[-2:]", setup="KEY = os.environ['STRIPE_API_KEY']\n")
    repo = git_repo(repos / "needs-env", {"requirements.txt": "", "app.py": app})
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo), start_command="python app.py")
        assert "the app reads the env var STRIPE_API_KEY, which is not set" in head, head
        assert "env_vars={'STRIPE_API_KEY': '...'}" in head, head
        dep = await deploy_live(s, repo_url=str(repo), start_command="python app.py",
                                env_vars={"STRIPE_API_KEY": "sk_test_42"})  # fmt: skip
        assert via_proxy(server, dep["url"]).text == "key ends 42"


NODE_DUMP = """const e = new Error('could not load config: missing section [server]');
Object.assign(e, Object.fromEntries(Array.from({length: 12}, (_, i) => ['field' + i, undefined])));
throw e;
"""


@local_only("reads the local runtime's failure text")
@pytest.mark.asyncio
async def test_a_node_errors_own_line_is_quoted_above_its_object_dump(server: ServerProc, repos: Path) -> None:
    """A Node app dying on an error with many properties (pg's have ~20): the quoted last lines were the
    object's `field: undefined` dump, and the error's message (above them) was only in get_logs. It is quoted now."""
    repo = git_repo(repos / "node-dump", {
        "package.json": '{"name": "node-dump", "version": "1.0.0", "scripts": {"start": "node index.js"}}\n',
        "index.js": NODE_DUMP,
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo))
        assert "Error: could not load config: missing section [server]" in head, head


@local_only("detection is the provider-independent build plan; one provider shows it")
@pytest.mark.asyncio
async def test_a_workspaces_root_names_its_apps(server: ServerProc, repos: Path) -> None:
    """An npm workspaces monorepo (root package.json `workspaces: ["packages/*"]`, app in packages/api using a
    sibling workspace) was refused at its root with "package.json has no scripts.start ... if the app is in a
    subdirectory, pass app_dir": which one was the agent's guess. The refusal now names packages/api; that call goes
    live, with the sibling package installed from the root."""
    repo = git_repo(repos / "workspaces", {
        "package.json": '{"name": "mono", "private": true, "workspaces": ["packages/*"]}\n',
        "package-lock.json": '{"name": "mono", "lockfileVersion": 3, "requires": true, "packages": {'
        '"": {"name": "mono", "workspaces": ["packages/*"]}, '
        '"node_modules/@mono/api": {"resolved": "packages/api", "link": true}, '
        '"node_modules/@mono/shared": {"resolved": "packages/shared", "link": true}, '
        '"packages/api": {"name": "@mono/api", "version": "1.0.0", "dependencies": {"@mono/shared": "1.0.0"}}, '
        '"packages/shared": {"name": "@mono/shared", "version": "1.0.0"}}}\n',
        "packages/shared/package.json": '{"name": "@mono/shared", "version": "1.0.0", "main": "index.js"}\n',
        "packages/shared/index.js": "module.exports = (n) => 'hello ' + n;\n",
        "packages/api/package.json": '{"name": "@mono/api", "version": "1.0.0", "scripts": {"start": '
        '"node server.js"}, "dependencies": {"@mono/shared": "1.0.0"}}\n',
        "packages/api/server.js": "const greet = require('@mono/shared');\n"
        "require('http').createServer((q, s) => s.end(greet('mono'))).listen(process.env.PORT);\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo))
        assert "this is a workspaces root: pass app_dir as one of packages/api" in error, error
        assert "e.g. app_dir='packages/api', service_name='api'" in error, error
        dep = await deploy_live(s, repo_url=str(repo), app_dir="packages/api", service_name="api")
        assert via_proxy(server, dep["url"]).text == "hello mono"


FAKE_MANAGE = """import os, sys
if sys.argv[1] == "collectstatic":
    os.makedirs("staticfiles", exist_ok=True)
    print("1 static file copied to './staticfiles'.")
else:
""" + "\n".join("    " + line for line in serve("'django-ish'").splitlines()) + "\n"


@local_only("reads the local build's log")
@pytest.mark.asyncio
async def test_collected_static_files_nobody_serves_are_explained(server: ServerProc, repos: Path) -> None:
    """A Django app with DEBUG off: collectstatic ran in the build, and /static/... answered 404 with nothing in any
    log saying why (gunicorn serves no files, nor Django without DEBUG, nor InkMCP). The build log says so now, and
    names WhiteNoise; a project whose settings use WhiteNoise gets no such note. (A manage.py of the stdlib stands in
    for Django: what is tested is InkMCP's build step around it, not Django.)"""
    files = {"requirements.txt": "", "manage.py": FAKE_MANAGE, "site1/settings.py": "DEBUG = False\n",
             "Procfile": "web: python manage.py serve\n"}  # fmt: skip
    repo = git_repo(repos / "static-404", files)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo))
        assert via_proxy(server, dep["url"]).text == "django-ish"
        logs = await call(s, "get_logs", project_name="static-404", scope="build", tail=200)
        note = [line for line in logs["lines"] if "nothing serves it" in line]
        assert note and "whitenoise.middleware.WhiteNoiseMiddleware" in note[0], logs
        git_commit(repo, {"site1/settings.py": "DEBUG = False\nMIDDLEWARE = ['whitenoise.middleware."
                                               "WhiteNoiseMiddleware']\n"})  # fmt: skip
        await deploy_live(s, repo_url=str(repo))
        logs = await call(s, "get_logs", project_name="static-404", scope="build", tail=200)
        assert any("static file copied" in line for line in logs["lines"]), logs
        assert not any("nothing serves it" in line for line in logs["lines"]), logs


@local_only("the account's build limit is provider-independent; one provider shows it")
@pytest.mark.asyncio
async def test_the_concurrent_builds_refusal_names_the_deployments_in_progress(server: ServerProc, repos: Path) -> None:
    """A third deploy_app while two of the account's deployments were in progress was refused with "wait for a
    deployment to finish (wait_for_deployment)", and wait_for_deployment needs an id the agent may not have (another
    session started them, or its own call was cut off). The refusal now lists them; following one works."""
    slow = serve("'warm'", setup="import time\ntime.sleep(8)\n")
    repos_ = [git_repo(repos / f"slow-{i}", {"requirements.txt": "", "app.py": slow}) for i in range(3)]

    async def deploy(repo: Path) -> dict:
        async with mcp_session(server, server.keys["alice"]) as s:
            return await finished(s, await call(s, "deploy_app", repo_url=str(repo), start_command="python app.py"))

    first = [asyncio.create_task(deploy(r)) for r in repos_[:2]]
    try:
        async with mcp_session(server, server.keys["alice"]) as s:
            services: list[dict] = []
            for _ in range(150):
                try:
                    services = [await call(s, "list_services", project_name=f"slow-{i}") for i in range(2)]
                except ToolFailed:  # a project deploy_app has not made yet
                    services = []
                if services and all(v["services"] and v["services"][0]["deployment_id"]
                                    and v["services"][0]["deployment_status"] not in ("live", "failed")
                                    for v in services):  # fmt: skip
                    break
                await asyncio.sleep(0.2)
            error = await call_error(s, "deploy_app", repo_url=str(repos_[2]), start_command="python app.py")
            assert "account limit reached: 2 concurrent builds" in error, error
            ids = [v["services"][0]["deployment_id"] for v in services]
            for i, dep_id in enumerate(ids):
                assert f"slow-{i}/web {dep_id} (" in error, error
            followed = await call(s, "wait_for_deployment", deployment_id=ids[0])
            assert followed["status"] == "live", followed
    finally:
        done = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(d, dict) and d["status"] == "live" for d in done), done


@local_only("reads the local release step's failure text")
@pytest.mark.asyncio
async def test_a_first_deploys_failed_release_says_nothing_went_live(server: ServerProc, repos: Path) -> None:
    """A Procfile `release:` failing on a first deploy read "the release command exited with code 1; the previous
    version keeps serving" (there was none), named no command, and quoted the dependency install's last lines
    (` + package==version`) above the release's own output. Now: the command, "nothing went live", its output."""
    repo = git_repo(repos / "release-fails", {
        "requirements.txt": "",
        "migrate.py": "import sys\nprint('applying 0002')\nsys.exit('0002 failed: column \"title\" missing')\n",
        "app.py": serve("'up'"),
        "Procfile": "release: python migrate.py\nweb: python app.py\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await finished(s, await call(s, "deploy_app", repo_url=str(repo)))
        assert dep["status"] == "failed", dep
        head, _, quoted = dep["error"].partition("\nlast output:\n")
        assert "the release command `python migrate.py` exited with code 1" in head, head
        assert "nothing went live" in head and "previous version" not in head, head
        assert 'release | 0002 failed: column "title" missing' in quoted, quoted
        assert all(line.startswith(("release | ", "[inkmcp] releasing")) for line in quoted.splitlines()), quoted


BUILT_SITE = {
    "package.json": '{"name": "built-site", "version": "1.0.0", "scripts": {"build": "node build.js"}}\n',
    "build.js": "const fs = require('fs');\nfs.mkdirSync('dist', {recursive: true});\n"
    "fs.writeFileSync('dist/index.html', '<h1>built</h1>');\n",
}


@local_only("reads the local build's failure text")
@pytest.mark.asyncio
async def test_a_wrong_static_dir_names_where_the_build_wrote(server: ServerProc, repos: Path) -> None:
    """A site whose `npm run build` writes dist/, deployed with static_dir='public' (the agent's guess, from
    create-react-app habits): "static_dir 'public' does not exist after the build", and nothing said where the
    build's output was. The failure names dist now; that call goes live."""
    repo = git_repo(repos / "built-site", BUILT_SITE)
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo), static_dir="public")
        assert "static_dir 'public' does not exist after the build" in head, head
        assert "the build's index.html is in 'dist': pass static_dir='dist', or omit static_dir" in head, head
        dep = await deploy_live(s, repo_url=str(repo), static_dir="dist")
        assert via_proxy(server, dep["url"]).text == "<h1>built</h1>"


@local_only("reads the local runtime's failure text")
@pytest.mark.asyncio
async def test_a_start_script_whose_command_is_missing_names_it(server: ServerProc, repos: Path) -> None:
    """`npm start` running `nodemon server.js` (a dev tool the app never listed): npm's shell said "sh: 1: nodemon:
    not found" and the deploy failed "exited with code 127"; the failure now says where the package belongs."""
    repo = git_repo(repos / "nodemon-start", {
        "package.json": '{"name": "nodemon-start", "version": "1.0.0", "scripts": {"start": "nodemon server.js"}}\n',
        "server.js": "require('http').createServer((q, s) => s.end('up')).listen(process.env.PORT);\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo))
        assert "Hint: `nodemon` is not installed: add the package that provides it to package.json's dependencies" \
            in head, head
        assert "or start with `node <file>`" in head, head
        git_commit(repo, {"package.json": '{"name": "nodemon-start", "version": "1.0.0", '
                                          '"scripts": {"start": "node server.js"}}\n'})  # fmt: skip
        dep = await deploy_live(s, repo_url=str(repo))
        assert via_proxy(server, dep["url"]).text == "up"


@local_only("reads the local runtime's failure text")
@pytest.mark.asyncio
async def test_flasks_development_server_is_answered_with_the_production_command(
        server: ServerProc, repos: Path) -> None:  # fmt: skip
    """start_command='flask run' listens on 127.0.0.1:5000: the failure said "pass port=5000 to deploy_app", which
    works only until another service of the machine takes 5000, and runs the development server. The failure now
    names the production command, which goes live."""
    repo = git_repo(repos / "flask-run", {
        "requirements.txt": "flask\ngunicorn\n",
        "app.py": "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef i():\n    return 'prod'\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        head = await failed_head(s, repo_url=str(repo), start_command="flask run")
        assert "this is Flask's development server" in head, head
        command = "gunicorn app:app --bind 0.0.0.0:$PORT"
        assert f"start_command='{command}'" in head, head
        dep = await deploy_live(s, repo_url=str(repo), start_command=command)
        assert via_proxy(server, dep["url"]).text == "prod"


@local_only("detection is the provider-independent build plan; one provider shows it")
@pytest.mark.asyncio
async def test_root_dependencies_with_the_app_in_a_subdirectory(server: ServerProc, repos: Path) -> None:
    """requirements.txt (flask, gunicorn) at the root, the Flask app in backend/app.py: at the root the refusal said
    "Found: requirements.txt ... if the app is in a subdirectory, pass app_dir"; with app_dir='backend' it said
    "there is no requirements.txt" (the root's is not read there). Either way the agent had no call that works.
    Both refusals now give the command that runs the app from the root, which goes live."""
    repo = git_repo(repos / "py-backend-dir", {
        "requirements.txt": "flask\ngunicorn\n",
        "backend/app.py": "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef i():\n"
                          "    return 'from backend'\n",
    })  # fmt: skip
    command = "gunicorn --chdir backend app:app --bind 0.0.0.0:$PORT"
    async with mcp_session(server, server.keys["alice"]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo))
        assert f"the dependencies are at the root and the app in backend/: pass start_command={command!r}" in error
        assert "pass app_dir (that directory)" not in error, error
        error = await call_error(s, "deploy_app", repo_url=str(repo), app_dir="backend")
        assert "the repo root's requirements.txt is not read for app_dir 'backend'" in error, error
        assert command in error, error
        dep = await deploy_live(s, repo_url=str(repo), start_command=command)
        assert via_proxy(server, dep["url"]).text == "from backend"


@local_only("reads the local build's log")
@pytest.mark.asyncio
async def test_a_build_commands_own_uv_install_prints_no_hardlink_warning(server: ServerProc, repos: Path) -> None:
    """build_command='uv pip install -r requirements.txt' (replacing InkMCP's install): as root every such build
    logged uv's three-line "Failed to hardlink files; falling back to full copy" (the project's cache and the
    service's virtualenvs are separate mounts). UV_LINK_MODE=copy is set for it there now; the app goes live."""
    repo = git_repo(repos / "own-uv", {
        "requirements.txt": "flask\ngunicorn\n",
        "app.py": "from flask import Flask\n\napp = Flask(__name__)\n\n\n@app.get('/')\ndef i():\n    return 'uv'\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), build_command="uv pip install -r requirements.txt")
        assert via_proxy(server, dep["url"]).text == "uv"
        logs = await call(s, "get_logs", project_name="own-uv", scope="build", tail=200)
        assert any("uv pip install -r requirements.txt" in line for line in logs["lines"]), logs
        assert not any("Failed to hardlink" in line for line in logs["lines"]), logs
