"""Units of newuser2's advice: the runtime hints read from an app's output, the unsupported-language refusal, the
workspaces listing, and the mount check that keeps uv's hardlink warning out of build logs. The end-to-end
counterparts (real `inkmcp serve`, real processes, MCP client) are in tests/e2e/test_new_user_dec2c.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inkmcp.build.buildpack import same_mount
from inkmcp.build.detect import derive_plan
from inkmcp.build.hints import missing_command_fix, runtime_hint
from inkmcp.errors import BuildPlanError

NODE_PG_CRASH = [
    "web | ./node_modules/pg-pool/index.js:45", "web |     Error.captureStackTrace(err)", "web |           ^",
    "web | ", 'web | error: relation "notes" does not exist', "web |     at ./server.js:6:13 {",
    *[f"web |   field{i}: undefined," for i in range(18)], "web | }", "web | Node.js v20.20.2",
]  # fmt: skip


def test_a_missing_table_names_the_release_line_and_the_error_above_the_tail() -> None:
    hint = runtime_hint(NODE_PG_CRASH, NODE_PG_CRASH[-15:])
    assert hint is not None and "the table 'notes' does not exist yet" in hint
    assert "`release: npm run migrate`" in hint
    assert 'its error, above the lines quoted: error: relation "notes" does not exist' in hint


def test_an_error_line_already_quoted_is_not_repeated() -> None:
    lines = ["web | Traceback (most recent call last):", "web | ValueError: bad config"]
    assert runtime_hint(lines, lines) is None


@pytest.mark.parametrize(("command", "says"), [
    ("gunicorn", "add gunicorn to the app's Python dependencies"),
    ("uvicorn", "add uvicorn to the app's Python dependencies"),
    ("next", "package.json's dependencies"),
    ("go", "installs no Go toolchain"),
    ("bundle", "installs no Ruby toolchain"),
    ("./bin/server", "is not in the commit"),
    ("frobnicate", "neither in the app's dependencies"),
])  # fmt: skip
def test_a_command_not_found_says_what_to_add(command: str, says: str) -> None:
    assert says in missing_command_fix(command)
    line = f"web | inkmcp: could not run {command}: No such file or directory"
    assert says in (runtime_hint([line], [line]) or "")


def test_an_unset_env_var_needs_the_environ_read_above_it() -> None:
    env = ["web |     KEY = os.environ['STRIPE_API_KEY']", "web | KeyError: 'STRIPE_API_KEY'"]
    assert "env_vars={'STRIPE_API_KEY': '...'}" in (runtime_hint(env, env) or "")
    other = ["web |     x = d['STRIPE_API_KEY']", "web | KeyError: 'STRIPE_API_KEY'"]
    assert "env_vars" not in (runtime_hint(other, other) or "")


def _plan_error(root: Path) -> str:
    with pytest.raises(BuildPlanError) as caught:
        derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None, port=None)
    return str(caught.value)


@pytest.mark.parametrize(("marker", "language"), [
    ("go.mod", "Go"), ("Gemfile", "Ruby"), ("composer.json", "PHP"), ("Cargo.toml", "Rust"), ("pom.xml", "Java"),
    ("mix.exs", "Elixir"), ("App.csproj", ".NET"),
])  # fmt: skip
def test_a_repo_in_an_unsupported_language_is_named(tmp_path: Path, marker: str, language: str) -> None:
    (tmp_path / marker).write_text("x\n")
    error = _plan_error(tmp_path)
    assert f"this looks like a {language} app ({marker})" in error, error
    assert "Python (requirements.txt" in error and "Node.js (package.json" in error, error
    assert "'python app.py'" not in error, error


def test_a_foreign_repo_with_an_app_subdirectory_names_it(tmp_path: Path) -> None:
    (tmp_path / "go.mod").write_text("module x\n")
    (tmp_path / "frontend").mkdir()
    (tmp_path / "frontend" / "package.json").write_text('{"scripts": {"build": "vite build"}}')
    assert "pass app_dir as one of frontend (package.json)" in _plan_error(tmp_path)


def test_a_python_repo_with_a_gemfile_is_not_called_ruby(tmp_path: Path) -> None:
    (tmp_path / "Gemfile").write_text("gem 'jekyll'\n")  # docs site tooling beside a Python app
    (tmp_path / "requirements.txt").write_text("flask\ngunicorn\n")
    (tmp_path / "app.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    plan, _ = derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    assert plan.processes[0].command.startswith("gunicorn app:app")


def test_same_mount_reads_mountinfo() -> None:
    assert same_mount(Path("/proc/self"), Path("/proc/1"))
    assert not same_mount(Path("/proc/self"), Path("/"))
    if os.path.ismount("/sys"):
        assert not same_mount(Path("/sys/kernel"), Path("/proc"))


@pytest.mark.parametrize(("line", "addon"), [
    ("Error: connect ECONNREFUSED 127.0.0.1:5432", "postgres"),
    ("Error: connect ECONNREFUSED ::1:6379", "redis"),
    ("redis.exceptions.ConnectionError: Error 111 connecting to localhost:6379. Connection refused.", "redis"),
    ('psycopg.OperationalError: connection failed: connection to server at "127.0.0.1", port 5432 failed', "postgres"),
    ('django.db.utils.OperationalError: connection to server at "localhost" (127.0.0.1), port 5432 failed', "postgres"),
])  # fmt: skip
def test_a_database_expected_on_localhost_names_the_add_on(line: str, addon: str) -> None:
    assert f"pass database={addon!r} to deploy_app" in (runtime_hint([f"web | {line}"], []) or "")


def test_a_remote_database_refusing_is_not_called_local() -> None:
    assert runtime_hint(["web | Error: connect ECONNREFUSED 10.0.0.5:5432"], []) is None or "database=" not in (
        runtime_hint(["web | Error: connect ECONNREFUSED 10.0.0.5:5432"], []) or "")


def test_an_unset_add_on_variable_names_the_add_on_not_env_vars() -> None:
    lines = ["worker |     print(os.environ['REDIS_URL'])", "worker | KeyError: 'REDIS_URL'"]
    hint = runtime_hint(lines, lines) or ""
    assert "pass database='redis' to deploy_app" in hint and "env_vars" not in hint, hint


def test_an_app_dir_that_does_not_exist_names_the_ones_that_do(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"private": true, "workspaces": ["packages/*"]}')
    (tmp_path / "packages" / "api").mkdir(parents=True)
    (tmp_path / "packages" / "api" / "package.json").write_text('{"scripts": {"start": "node s.js"}}')
    (tmp_path / "docs-site").mkdir()
    (tmp_path / "docs-site" / "index.html").write_text("<h1>docs</h1>")
    with pytest.raises(BuildPlanError) as caught:
        derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                    port=None, app_dir="packages/web")  # fmt: skip
    assert "directories holding an app: docs-site (index.html), packages/api." in str(caught.value), caught.value


@pytest.mark.parametrize(("line", "says"), [
    ("web | sh: 1: nodemon: not found", "`nodemon` is not installed: add the package that provides it to package.json"),
    ("web | /bin/sh: 1: gunicorn: not found", "add gunicorn to the app's Python dependencies"),
    ("release | bash: line 1: go: command not found", "installs no Go toolchain"),
])  # fmt: skip
def test_a_shells_command_not_found_gets_the_same_advice(line: str, says: str) -> None:
    assert says in (runtime_hint([line], [line]) or "")


@pytest.mark.parametrize(("line", "says"), [
    ("web | WARNING: This is a development server. Do not use it in a production deployment.", "gunicorn app:app"),
    ("web | Starting development server at http://127.0.0.1:8000/", "gunicorn <project>.wsgi"),
    ("web |   ➜  Network: use --host to expose", "serves what it writes (dist/)"),
])  # fmt: skip
def test_a_development_server_is_named_with_the_production_command(line: str, says: str) -> None:
    assert says in (runtime_hint([line], [line]) or "")


def test_a_pnpm_workspace_root_names_its_apps(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"private": true}')
    (tmp_path / "pnpm-workspace.yaml").write_text("packages:\n  - 'apps/*'\n")
    for name, scripts in (("web", '{"build": "vite build"}'), ("api", '{"start": "node s.js"}'), ("lib", "{}")):
        (tmp_path / "apps" / name).mkdir(parents=True)
        (tmp_path / "apps" / name / "package.json").write_text(f'{{"scripts": {scripts}}}')
    assert "this is a workspaces root: pass app_dir as one of apps/api, apps/web" in _plan_error(tmp_path)
