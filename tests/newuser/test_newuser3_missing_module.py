"""An import the app's dependencies do not provide (newuser3, 2026-12-02): a Flask app with `import yaml` and only
flask and gunicorn in requirements.txt, and an Express app with no "dependencies", failed at health_check quoting
`ModuleNotFoundError: No module named 'yaml'` / `Error: Cannot find module 'express'` and nothing else: which file to
change, and that `yaml` is installed as PyYAML, the agent had to know. The failure now says both; the Python one's fix
goes live (a real `inkmcp serve`, the session's local server with an account of this file's own, and the official
MCP client over streamable HTTP). The Node wording is checked on the hint (units below).

And a Flask-SQLAlchemy app with psycopg2-binary, as SQLAlchemy 2.0 apps have it, given database='postgres': SQLAlchemy
2.1 (what `flask-sqlalchemy` installs today) opens DATABASE_URL's postgresql:// with psycopg 3, so the app died on
"No module named 'psycopg'" inside SQLAlchemy, which it never imports itself. The failure now says why and both ways
out; adding psycopg[binary] goes live."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from inkmcp.build.hints import runtime_hint
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"

APP = """import os
from http.server import BaseHTTPRequestHandler, HTTPServer

import yaml


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = yaml.safe_dump({"up": True}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


@pytest.mark.slow
@pytest.mark.asyncio
async def test_an_unlisted_import_names_the_package_to_add(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "imports-yaml", {"requirements.txt": "", "app.py": APP})
    project = f"nu3-module-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project, start_command="python app.py")
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed", dep
        head = dep["error"].partition("\nlast output:\n")[0]
        assert "Hint: the app imports `yaml`, which is not installed: add PyYAML (the package that provides `yaml`) " \
               "to the app's Python dependencies (requirements.txt or pyproject.toml)" in head, head
        git_commit(repo, {"requirements.txt": "PyYAML\n"})
        dep = await deploy_live(s, repo_url=str(repo), project_name=project, start_command="python app.py")
        assert via_proxy(server, dep["url"]).text == "up: true\n"


NODE_MISSING = [
    "web | node:internal/modules/cjs/loader:1228", "web |   throw err;", "web |   ^", "web | ",
    "web | Error: Cannot find module '{name}'", "web | Require stack:", "web | - ./index.js",
    "web |     at Module._resolveFilename (node:internal/modules/cjs/loader:1225:15)",
    "web |     at Object.<anonymous> (./index.js:1:17) {", "web |   code: 'MODULE_NOT_FOUND',",
    "web |   requireStack: [ './index.js' ]", "web | }", "web | ", "web | Node.js v20.20.2",
]  # fmt: skip


def _hint(name: str) -> str:
    lines = [line.replace("{name}", name) for line in NODE_MISSING]
    return runtime_hint(lines, lines[-6:]) or ""


def test_a_required_package_names_package_json() -> None:
    hint = _hint("express")
    assert "the app requires `express`, which is not installed: add express to package.json's \"dependencies\"" \
        in hint, hint
    assert "its error, above the lines quoted: Error: Cannot find module 'express'" in hint, hint
    assert "add @fastify/cors to package.json" in _hint("@fastify/cors/plugin")
    assert "add lodash to package.json" in _hint("lodash/fp")


def test_a_missing_file_is_the_build_or_the_commit() -> None:
    hint = _hint("./dist/server.js")
    assert "`./dist/server.js` is not in the deployed files" in hint and "scripts.build" in hint, hint
    assert "package.json's" not in hint, hint


@pytest.mark.parametrize(("module", "package"), [
    ("yaml", "PyYAML"), ("PIL.Image", "Pillow"), ("sklearn.linear_model", "scikit-learn"), ("requests", "requests"),
])  # fmt: skip
def test_a_python_import_names_its_package(module: str, package: str) -> None:
    lines = [f"web | ModuleNotFoundError: No module named '{module}'"]
    hint = runtime_hint(lines, lines) or ""
    assert f"the app imports `{module}`, which is not installed: add {package}" in hint, hint


ENGINE = "import sqlalchemy\n\nENGINE = sqlalchemy.create_engine(os.environ['DATABASE_URL'])\n"
QUERY = 'str(ENGINE.connect().execute(sqlalchemy.text("SELECT 40 + 2")).scalar())'
SQLA_APP = APP.replace("import yaml\n", ENGINE).replace('yaml.safe_dump({"up": True})', QUERY)


@pytest.mark.slow
@pytest.mark.asyncio
async def test_sqlalchemy_on_psycopg2_only_says_why_it_wants_psycopg(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "sqla-psycopg2", {"requirements.txt": "sqlalchemy\npsycopg2-binary\n", "app.py": SQLA_APP})
    project = f"nu3-sqla-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project, start_command="python app.py",
                         database="postgres")  # fmt: skip
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed", dep
        head = dep["error"].partition("\nlast output:\n")[0]
        assert "Hint: SQLAlchemy 2.1+ connects a postgresql:// URL (DATABASE_URL is one) with psycopg 3, which is " \
               "not installed: add psycopg[binary] to the app's Python dependencies" in head, head
        assert "the app imports `psycopg`" not in head, head
        git_commit(repo, {"requirements.txt": "sqlalchemy\npsycopg2-binary\npsycopg[binary]\n"})
        dep = await deploy_live(s, repo_url=str(repo), project_name=project, start_command="python app.py")
        assert via_proxy(server, dep["url"]).text == "42"
