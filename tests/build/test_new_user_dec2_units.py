"""Unit checks behind tests/e2e/test_new_user_dec2.py (newuser, 2026-12-02): the readings of a failed build and
the detection of a new user's first apps, without a server."""

from __future__ import annotations

import pytest

from inkmcp.build import python_install as pyi


@pytest.mark.parametrize(("error", "output", "missing", "instead"), [
    ("Failed to build `mysqlclient==2.2.4`: The build backend returned an error",
     ["         Exception: Can not find valid pkg-config name."], "pkg-config", "PyMySQL"),
    ("Failed to build `psycopg2==2.9.9`: The build backend returned an error",
     ["      Error: pg_config executable not found."], "(pg_config)", "psycopg2-binary"),
    ("Failed to build `lxml==4.6.0`: The build backend returned an error",
     ["src/lxml/etree.c:96:10: fatal error: libxml/xmlversion.h: No such file or directory"],
     "(libxml/xmlversion.h)", "a newer release with a wheel for Python 3.11"),
    ("Failed to build `pyodbc==4.0.30`: The build backend returned an error",
     ["      /usr/bin/ld: cannot find -lodbc: No such file or directory"], "(odbc)", "a -binary variant"),
])  # fmt: skip
def test_a_missing_system_library_is_named(error: str, output: list[str], missing: str, instead: str) -> None:
    fix = pyi.installer_fix(error, "3.11", output) or ""
    assert "compiles against a system library this server does not have" in fix, fix
    assert missing in fix and instead in fix, fix
    assert "InkMCP installs no system packages" in fix


def test_a_compile_error_of_another_kind_keeps_the_pin_advice() -> None:
    error = "Failed to build `oldpkg==0.1`: The build backend returned an error"
    fix = pyi.installer_fix(error, "3.11", ["oldpkg.c:1:1: error: implicit declaration of function 'PyEval_Foo'"])
    assert fix is not None and fix.startswith("a dependency had to be compiled from source here and failed"), fix


def _plan(tmp_path, files: dict[str, str]):  # type: ignore[no-untyped-def]
    from inkmcp.build.detect import derive_plan

    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                       port=None)[0]  # fmt: skip


@pytest.mark.parametrize(("files", "command"), [
    ({"app.py": "import http.server\nhttp.server.test(port=8000)\n"}, "python app.py"),
    ({"main.py": "def main():\n    pass\n\nif __name__ == '__main__':\n    main()\n"}, "python main.py"),
    ({"server.py": "import asyncio\n\nasync def run():\n    pass\n\nasyncio.run(run())\n"}, "python server.py"),
])  # fmt: skip
def test_a_dependency_free_entrypoint_runs(tmp_path, files: dict[str, str], command: str) -> None:  # type: ignore[no-untyped-def]
    plan = _plan(tmp_path, files)
    assert [p.command for p in plan.processes] == [command]
    assert plan.stack.value == "python"


def test_a_module_that_only_defines_names_is_not_started(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inkmcp.errors import BuildPlanError

    with pytest.raises(BuildPlanError) as err:
        _plan(tmp_path, {"app.py": "import os\n\nX = os.environ.get('X')\n\n\ndef helper():\n    return X\n"})
    assert "Found: app.py." in err.value.message
    assert "only defines names" in err.value.message


def test_an_index_html_beside_app_py_stays_a_static_site(tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = _plan(tmp_path, {"index.html": "<h1>x</h1>", "server.py": "import http.server\nhttp.server.test()\n"})
    assert plan.processes == () and plan.static_dir == "."


def test_the_command_a_shell_could_not_find() -> None:
    from inkmcp.build.buildpack import _command_not_found, _not_found_fix

    assert _command_not_found(["> vite build", "sh: 1: vite: not found"]) == "vite"
    assert _command_not_found(["bash: tsc: command not found"]) == "tsc"
    assert _command_not_found(["/bin/sh: 1: webpack-cli: not found", "npm error code 127"]) == "webpack-cli"
    assert _command_not_found(["Error: Cannot find module 'x'", "module not found"]) is None
    assert "package.json" in _not_found_fix("tsc", {"PATH": "/srv/app/node_modules/.bin:/usr/bin"})
    assert "requirements.txt" in _not_found_fix("sass", {"PATH": "/venv/bin:/usr/bin"})


@pytest.mark.parametrize("files", [
    {"requirements.txt": "-r requirements/prod.txt\n", "requirements/prod.txt": "-r base.txt\ngunicorn\n",
     "requirements/base.txt": "flask\n"},
    {"requirements.txt": "--requirement=reqs.txt # pinned\n", "reqs.txt": "Flask\ngunicorn==22\n"},
    {"requirements.txt": "-e .\n", "setup.py": "from setuptools import setup\nsetup(name='x', "
     "install_requires=[\n    'flask>=3',\n    \"gunicorn\",\n])\n"},
    {"requirements.txt": "-e ./lib[extra]\n", "lib/pyproject.toml": "[project]\nname='lib'\n"
     "dependencies=['flask', 'gunicorn']\n"},
    {"setup.py": "from setuptools import setup\nsetup(name='x', install_requires=['flask', 'gunicorn'])\n"},
])  # fmt: skip
def test_dependencies_behind_includes_and_local_projects_count(tmp_path, files: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    plan = _plan(tmp_path, {**files, "app.py": "from flask import Flask\napp = Flask(__name__)\n"})
    assert [p.command for p in plan.processes] == ["gunicorn app:app --bind 0.0.0.0:$PORT"]


def test_an_include_cycle_and_a_missing_include_end(tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = {"requirements.txt": "-r a.txt\n-r missing.txt\n", "a.txt": "-r requirements.txt\ngunicorn\nflask\n",
             "app.py": "from flask import Flask\napp = Flask(__name__)\n"}
    plan = _plan(tmp_path, files)
    assert [p.command for p in plan.processes] == ["gunicorn app:app --bind 0.0.0.0:$PORT"]


def test_an_app_object_nothing_serves_is_refused_with_the_server_to_add(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from inkmcp.errors import BuildPlanError

    with pytest.raises(BuildPlanError) as err:
        _plan(tmp_path, {"requirements.txt": "bottle\n", "app.py": "import bottle\napp = Bottle()\n"
                         "@app.get('/')\ndef i():\n    return 'x'\n"})  # fmt: skip
    assert "app.py defines `app` (WSGI) but does not run it" in err.value.message
    assert (err.value.fix or "").startswith("add gunicorn to the dependencies (InkMCP then runs `gunicorn app:app "
                                            "--bind 0.0.0.0:$PORT`)"), err.value.fix
    # the same module that runs itself at the end is started as before
    plan = _plan(tmp_path, {"app.py": "import bottle\napp = Bottle()\napp.run(port=8000)\n"})
    assert [p.command for p in plan.processes] == ["python app.py"]
