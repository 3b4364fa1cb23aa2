"""What a new user's agent read that sent it the wrong way (newuser4, 2026-12-02):

- After provision_database (or deploy_app(database=...)), list_env_vars answered `env: {}`: the variables every service
  gets from the add-ons (DATABASE_URL, PG*, REDIS_URL) were not listed, so "is DATABASE_URL set?" read as no. They
  are now under `add_ons`, masked like the rest.
- A bad app_dir was told "pass app_dir relative to the app directory without '..', e.g. 'dist'" (static_dir's
  example; app_dir is relative to the repository root).
- A Node app whose `start` runs nodemon (or `nest start`, ts-node) beside a `start:prod` script went live under
  nodemon, watching its files; the production script now runs.
- A worker deployed with mode='on_demand' was accepted, shown as on_demand and never slept; it is refused now.
- A SQLite app lost its data file at every deploy (a fresh checkout) with nothing said; the queued event says so.

list_env_vars through the official MCP client on the session's local server (an account of this file's own); the
rest read the repo as deploy_app does (`derive_plan`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.core.databases import DatabaseRequest
from inkmcp.errors import BuildPlanError, InvalidArgument
from inkmcp.mcp.tools import database_shorthand
from tests.support import ServerProc, call, call_error, git_repo, mcp_session

ACCOUNT = f"newuser4v-{uuid.uuid4().hex[:8]}"


@pytest.mark.asyncio
async def test_list_env_vars_shows_what_the_database_sets(server: ServerProc) -> None:
    project = f"nu4-env-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        await call(s, "ensure_project", name=project)
        assert (await call(s, "list_env_vars", project_name=project))["add_ons"] == {}
        await call(s, "provision_database", project_name=project)
        listed = await call(s, "list_env_vars", project_name=project)
        assert {"DATABASE_URL", "PGHOST", "PGPASSWORD"} <= set(listed["add_ons"]), listed
        assert listed["env"] == {} and listed["masked"] is True
        creds = await call(s, "get_database_credentials", project_name=project)
        password = creds["password"]
        assert password not in json.dumps(listed)  # masked unless reveal
        revealed = await call(s, "list_env_vars", project_name=project, reveal=True)
        assert revealed["add_ons"]["PGPASSWORD"] == password
        await call(s, "delete", project_name=project, confirm=project, delete_database=True)


def _start(root: Path, scripts: dict[str, str]) -> str:
    (root / "package.json").write_text(json.dumps({"name": "x", "version": "1.0.0", "scripts": scripts}))
    (root / "server.js").write_text("require('http').createServer((q, s) => s.end('up')).listen(process.env.PORT)\n")
    plan, _ = derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    assert plan.routed_process is not None
    return plan.routed_process.command


@pytest.mark.parametrize(("scripts", "runs"), [
    ({"start": "nodemon server.js", "start:prod": "node server.js"}, "npm run start:prod"),
    ({"start": "nest start", "start:dev": "nest start --watch", "start:prod": "node dist/main"}, "npm run start:prod"),
    ({"start": "ts-node src/main.ts", "prod": "node dist/main.js"}, "npm run prod"),
    ({"start": "node --watch server.js", "start:production": "node server.js"}, "npm run start:production"),
    ({"start": "node server.js", "start:prod": "NODE_ENV=production node server.js"}, "npm start"),
    ({"start": "nodemon server.js"}, "npm start"),  # nothing else to run
])  # fmt: skip
def test_a_watcher_start_script_gives_way_to_the_production_one(tmp_path: Path, scripts: dict[str, str],
                                                                runs: str) -> None:
    assert _start(tmp_path, scripts) == runs


def test_a_bad_app_dir_is_told_app_dirs_own_example(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                    port=None, app_dir="../etc")  # fmt: skip
    assert caught.value.argument == "app_dir"
    assert "relative to the repository root" in str(caught.value) and "'dist'" not in str(caught.value)
    with pytest.raises(InvalidArgument) as caught:
        derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                    port=None, static_dir="/abs")  # fmt: skip
    assert "e.g. 'dist'" in str(caught.value)


DJANGO_SETTINGS = "DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': BASE_DIR / 'db.sqlite3'}}\n"


@pytest.mark.parametrize(("files", "where"), [
    ({"requirements.txt": "django\ngunicorn\n", "manage.py": "", "shop/__init__.py": "", "shop/wsgi.py": "app = 1\n",
      "shop/settings.py": DJANGO_SETTINGS}, "shop/settings.py"),
    ({"requirements.txt": "flask\n", "app.py": "import flask\napp = flask.Flask(__name__)\n",
      "db.py": "import sqlite3\nconn = sqlite3.connect('data.db')\n"}, "db.py"),
    ({"package.json": '{"name": "x", "scripts": {"start": "node server.js"}, "dependencies": {"better-sqlite3": "*"}}',
      "server.js": ""}, "package.json better-sqlite3"),
])  # fmt: skip
def test_a_sqlite_app_is_told_its_file_goes_with_each_deploy(tmp_path: Path, files: dict[str, str],
                                                             where: str) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    plan, _ = derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    said = [n for n in plan.notes if "SQLite" in n]
    assert said and f"keeps data in a SQLite file ({where})" in said[0], plan.notes
    assert "keep the file under $HOME" in said[0] and "database={'type': 'postgres'}" in said[0]


def test_no_sqlite_note_without_sqlite(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("flask\n")
    (tmp_path / "app.py").write_text("import flask\napp = flask.Flask(__name__)\n")
    plan, _ = derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    assert not [n for n in plan.notes if "SQLite" in n], plan.notes


@pytest.mark.asyncio
async def test_on_demand_for_a_worker_is_refused_with_what_to_pass(server: ServerProc, repos: Path) -> None:
    """A worker-only Procfile deployed with mode='on_demand' went live, list_services said `on_demand`, and it never
    slept (the idle loop skips services without a route); had it slept, no request could have woken it."""
    repo = git_repo(repos / "worker-only", {"Procfile": "worker: python3 worker.py\n",
                                            "worker.py": "import time\nwhile True:\n    time.sleep(60)\n"})  # fmt: skip
    project = f"nu4-worker-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        said = await call_error(s, "deploy_app", repo_url=str(repo), project_name=project, mode="on_demand")
        assert "Argument 'mode': mode on_demand sleeps a service" in said, said
        assert "(`python3 worker.py`)" in said and "pass 'persistent' for a worker" in said, said
        assert project not in json.dumps(await call(s, "list_projects"))  # refused before anything was made
    (repo / "inkmcp.yaml").write_text("services:\n  web:\n    mode: on_demand\n")
    with pytest.raises(BuildPlanError) as caught:
        derive_plan(repo, service_name="web", service_type=None, build_command=None, start_command=None, port=None)
    assert "inkmcp.yaml service 'web' has `mode: on_demand`" in str(caught.value), caught.value


@pytest.mark.parametrize(("given", "kinds"), [
    ("postgresql", ("postgres",)), ("PostgreSQL", ("postgres",)), ("pg", ("postgres",)),
    (["postgresql", "redis"], ("postgres", "redis")), ("postgres", ("postgres",)),
])  # fmt: skip
def test_postgresql_is_postgres(given: str | list[str], kinds: tuple[str, ...]) -> None:
    """deploy_app(database='postgresql') was refused ("Input should be 'postgres', 'byo' or 'redis'")."""
    assert DatabaseRequest.model_validate(database_shorthand(given)).requested() == kinds
