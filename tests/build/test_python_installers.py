"""Python builds as users push them: Poetry, uv, Pipenv and pip locks, a build_command that installs,
the Python version a repo asks for, and a failed Django collectstatic that quotes its real exception.

Real uv installs from PyPI into real venvs. The lock files under python_apps/ were made by the real
tools (see its README): they pin python-dateutil 2.8.1 and six 1.15.0, older than PyPI's newest, while
the manifests beside them allow newer ones; so "exactly the locked version" is asserted by asking the
venv's own interpreter, and an installer that resolved from the manifest would fail.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from inkmcp.build import python_install as pyi
from inkmcp.build.buildpack import RepoFiles, dependency_hash, run_build
from inkmcp.build.plan import BuildPlan
from inkmcp.errors import BuildFailed
from tests.build.test_buildpack import Log, python_plan
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session, traversable_tmpdir

from .conftest import write_files
from .test_build_installers import data_dir, projects  # noqa: F401 (fixtures: real project users)

APPS = Path(__file__).parent / "python_apps"
PROBE = (
    "import json, importlib.metadata as md, sys\n"
    "def v(n):\n"
    "    try: return md.version(n)\n"
    "    except md.PackageNotFoundError: return None\n"
    "print(json.dumps({n: v(n) for n in sys.argv[1:]}))\n"
)


async def build(app: Path, tmp: Path, log: Log | None = None, plan: BuildPlan | None = None, **kw: object):  # type: ignore[no-untyped-def]
    venvs = tmp / "venvs"
    venvs.mkdir(exist_ok=True)
    kw.setdefault("env", {})
    kw.setdefault("python", "/usr/bin/python3")
    return await run_build(plan or python_plan(), app, venv_root=venvs, log=log or Log(), run_as=None,  # type: ignore[arg-type]
                           timeout=300, cache_dir=tmp / "cache", **kw)  # fmt: skip


def versions(venv: str | None, *names: str) -> dict[str, str | None]:
    """Installed distributions, asked from the venv's own interpreter."""
    done = subprocess.run([f"{venv}/bin/python", "-c", PROBE, *names], capture_output=True, text=True, check=True,
                          cwd="/")  # fmt: skip
    return json.loads(done.stdout)


def app_copy(name: str, tmp: Path) -> Path:
    dest = tmp / name
    shutil.copytree(APPS / name, dest)
    return dest


LOCKED = {"python-dateutil": "2.8.1", "six": "1.15.0", "iniconfig": None}


# --- installers ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", ["poetry1", "poetry2"])
async def test_poetry_lock_installs_the_locked_main_dependencies_without_the_project(name: str, tmp_path: Path) -> None:
    """Poetry 1.8 (lock 2.0, no groups) and 2.x (lock 2.1) layouts that `pip install .` cannot install:
    the main dependencies at their locked versions (six only transitively), no dev group, no project."""
    app = app_copy(name, tmp_path)
    log = Log()
    out = await build(app, tmp_path, log)
    assert "-> installing dependencies from poetry.lock (Poetry)" in log.text
    assert versions(out.venv_dir, *LOCKED, "poetry-sample") == {**LOCKED, "poetry-sample": None}


@pytest.mark.slow
async def test_poetry_lock_hash_is_enforced(tmp_path: Path) -> None:
    """A poetry.lock whose hash does not match the file PyPI serves fails the build (a swapped package)."""
    app = app_copy("poetry2", tmp_path)
    lock = (app / "poetry.lock").read_text()
    wheel = "8b74bedcbbbaca38ff6d7491d76f2b06b3592611af620f8426e82dddb04a5ced"  # six-1.15.0's wheel and sdist
    sdist = "30639c035cdb23534cd4aa2dd52c3bf48f06e5f4a941509c8bafd8ce11080259"
    (app / "poetry.lock").write_text(lock.replace(wheel, "0" * 64).replace(sdist, "1" * 64))
    log = Log()
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path, log)
    assert err.value.argument == "repo_url" and "poetry.lock" in err.value.message
    assert re.search(r"hash", log.text, re.I) and ("0" * 64 in log.text or "1" * 64 in log.text)
    assert "build_command" in (err.value.fix or "")


@pytest.mark.slow
async def test_uv_lock_installs_exactly_the_lock(tmp_path: Path) -> None:
    app = app_copy("uvapp", tmp_path)
    log = Log()
    out = await build(app, tmp_path, log)
    assert "-> installing dependencies from uv.lock (uv)" in log.text
    assert "uv export --frozen --no-default-groups --no-emit-project" in log.text
    assert versions(out.venv_dir, *LOCKED, "uv-sample") == {**LOCKED, "uv-sample": None}
    assert not (app / ".venv").exists()


@pytest.mark.slow
async def test_pipfile_lock_installs_the_default_section(tmp_path: Path) -> None:
    app = app_copy("pipenvapp", tmp_path)
    log = Log()
    out = await build(app, tmp_path, log)
    assert "-> installing dependencies from Pipfile.lock (Pipenv)" in log.text
    assert "-> Python 3.11." in log.text and "Pipfile.lock asks for 3.11" in log.text
    assert versions(out.venv_dir, *LOCKED) == LOCKED


@pytest.mark.slow
async def test_requirements_txt_wins_and_the_log_says_what_was_ignored(tmp_path: Path) -> None:
    """requirements.txt next to poetry.lock (an export kept for pip-only platforms): pip, as on Heroku."""
    app = app_copy("poetry2", tmp_path)
    write_files(app, {"requirements.txt": "six==1.16.0\n"})
    log = Log()
    out = await build(app, tmp_path, log)
    assert "installing dependencies from requirements.txt (pip); also found poetry.lock, not used" in log.text
    assert versions(out.venv_dir, "six", "python-dateutil") == {"six": "1.16.0", "python-dateutil": None}


def test_installer_precedence_and_unlocked_projects(tmp_path: Path) -> None:
    def kind(files: dict[str, str]) -> pyi.Installer:
        app = tmp_path / f"a{len(list(tmp_path.iterdir()))}"
        write_files(app, files)
        return pyi.choose_installer(RepoFiles(app))

    everything = {"Pipfile.lock": "{}", "requirements.txt": "", "poetry.lock": "", "uv.lock": "",
                  "pyproject.toml": ""}  # fmt: skip
    assert kind(everything) == pyi.Installer("pipenv", "Pipfile.lock", ("requirements.txt", "poetry.lock", "uv.lock"))
    assert kind({"poetry.lock": "", "uv.lock": ""}).kind == "poetry"
    assert kind({"uv.lock": "", "pyproject.toml": "[project]\nname='x'\ndependencies=[]\n"}).kind == "uv"
    assert kind({"pyproject.toml": "[project]\nname='x'\ndependencies=[]\n"}).kind == "pyproject"
    assert kind({"pyproject.toml": "[tool.poetry]\nname='x'\n"}).kind == "poetry-unlocked"
    assert kind({"setup.py": ""}).kind == "package"
    assert kind({"app.py": ""}).kind == "none"
    note = pyi.unlocked_note(kind({"pyproject.toml": "[tool.poetry]\nname='x'\n"}))
    assert "without poetry.lock" in note and "run `poetry lock` and commit poetry.lock" in note
    assert kind({"Pipfile": ""}).kind == "pipenv-unlocked"


def test_venv_key_covers_the_lock_file_and_the_install_method(tmp_path: Path) -> None:
    app = app_copy("poetry2", tmp_path)
    before = dependency_hash(app, "/usr/bin/python3", "poetry\n")
    (app / "poetry.lock").write_text((app / "poetry.lock").read_text().replace("1.15.0", "1.16.0"))
    assert dependency_hash(app, "/usr/bin/python3", "poetry\n") != before
    assert dependency_hash(app, "/usr/bin/python3", "poetry\npip install x") != dependency_hash(
        app, "/usr/bin/python3", "poetry\n")
    (app / "uv.lock").write_text("x")
    assert dependency_hash(app, "/usr/bin/python3", "poetry\n") != before
    (app / "Pipfile.lock").write_text("{}")
    assert dependency_hash(app, "/usr/bin/python3", "poetry\n") != before


def test_poetry_requirements_from_both_layouts() -> None:
    one = pyi.poetry_install(RepoFiles(APPS / "poetry1"))
    assert one.requirements == ["python-dateutil"]
    assert any(c.startswith("six==1.15.0 --hash=sha256:") for c in one.constraints)
    assert any(c.startswith("iniconfig==1.1.1") for c in one.constraints)  # a constraint only: never installed


# --- build_command replaces the default install -----------------------------------------------------------


def test_build_command_installs_detection(tmp_path: Path) -> None:
    assert pyi.build_command_installs("pip install -r requirements.txt && ./manage.py migrate") == "`pip install`"
    assert pyi.build_command_installs("python3 -m pip install .") == "`python3 -m pip install`"
    assert pyi.build_command_installs("pip install poetry && poetry install --only main") == "`pip install`"
    assert pyi.build_command_installs("uv sync --frozen") == "`uv sync`"
    assert pyi.build_command_installs("pip install pipenv; pipenv   sync") == "`pip install`"
    assert pyi.build_command_installs("python manage.py collectstatic") is None
    assert pyi.build_command_installs("npm install && npm run build") is None
    assert pyi.build_command_installs(None) is None
    # Render's examples: buildCommand "./build.sh", the script installs. Comments do not count.
    write_files(tmp_path, {"build.sh": "#!/bin/sh\n# pip install\npip install poetry==1.8.3\npoetry install\n",
                           "bin/build": "# pip install x\necho hi\n",
                           "scripts/render.sh": "poetry install --no-root\n"})  # fmt: skip
    read = RepoFiles(tmp_path).read
    assert pyi.build_command_installs("./build.sh", read) == "`pip install` (in build.sh)"
    assert pyi.build_command_installs("bash build.sh", read) == "`pip install` (in build.sh)"
    assert pyi.build_command_installs("bin/build", read) is None
    assert pyi.build_command_installs("./missing.sh", read) is None
    # poetry/pipenv are not on this server: their install calls replace nothing unless the command gets the tool
    assert pyi.build_command_installs("scripts/render.sh", read) is None
    assert pyi.build_command_installs("poetry install --only main") is None
    assert pyi.build_command_installs("pipx install poetry && poetry install") == "`poetry install`"
    assert pyi.build_command_installs("pipenv sync") is None


@pytest.mark.slow
async def test_build_command_that_installs_replaces_a_failing_default_install(tmp_path: Path) -> None:
    """A requirements.txt the default step cannot install: without build_command the error says how to
    bypass it; with build_command='pip install six==1.15.0' that command is the install, into the venv."""
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": "./no-such-local-package\n"})
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path)
    assert "build_command" in (err.value.fix or "") and "replaces this step" in (err.value.fix or "")
    log = Log()
    out = await build(app, tmp_path, log, plan=python_plan(build_command="pip install six==1.15.0"))
    assert "-> build_command runs `pip install`: it installs the dependencies itself, so the default install " \
           "from requirements.txt is skipped" in log.text
    assert "no-such-local-package" not in log.text
    assert versions(out.venv_dir, "six") == {"six": "1.15.0"}


@pytest.mark.slow
async def test_build_command_uv_sync_installs_into_the_service_venv(tmp_path: Path) -> None:
    """`uv sync` in a build_command: the pinned uv is on PATH and fills the service's venv, not ./.venv."""
    app = app_copy("uvapp", tmp_path)
    log = Log()
    out = await build(app, tmp_path, log, plan=python_plan(build_command="uv sync --frozen --no-dev"))
    assert "-> build_command runs `uv sync`" in log.text
    assert versions(out.venv_dir, *LOCKED) == LOCKED
    assert not (app / ".venv").exists()


# --- Python version ------------------------------------------------------------------------------------


def test_version_requests_and_choice(tmp_path: Path) -> None:
    def request(files: dict[str, str], env: dict[str, str] | None = None) -> pyi.PythonRequest | None:
        app = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        write_files(app, files)
        return pyi.python_request(RepoFiles(app), env or {})

    assert request({"runtime.txt": "python-3.11.7\n"}) == pyi.PythonRequest("runtime.txt", "python-3.11.7", (3, 11, 7))
    assert request({".python-version": "# pyenv\n3.12\n", "runtime.txt": "python-3.9"}).version == (3, 12)  # type: ignore[union-attr]
    assert request({".python-version": "3.12"}, {"PYTHON_VERSION": "3.11"}).origin == "PYTHON_VERSION"  # type: ignore[union-attr]
    assert request({"app.py": ""}) is None
    notes: list[str] = []
    app = tmp_path / "venvname"
    write_files(app, {".python-version": "my-project-env\n", "runtime.txt": "python-3.10\n"})
    asked = pyi.python_request(RepoFiles(app), {}, None, notes)
    assert asked == pyi.PythonRequest("runtime.txt", "python-3.10", (3, 10))
    assert notes == [".python-version says 'my-project-env', not a CPython version: not used"]
    with pytest.raises(BuildFailed) as err:
        request({"runtime.txt": "python-three"})
    assert err.value.message.startswith("runtime.txt asks for Python 'python-three', which is not a version")
    assert "python-3.11" in (err.value.fix or "")
    ranged = request({"pyproject.toml": "[tool.poetry.dependencies]\npython = '^3.9'\n"})
    assert ranged is not None and ranged.matches((3, 11, 2)) and not ranged.matches((4, 0, 0))
    pep = request({"pyproject.toml": "[project]\nrequires-python = '>= 3.8, !=3.11.*'\n"})
    assert pep is not None and pep.matches((3, 12, 1)) and not pep.matches((3, 11, 2)) and not pep.matches((3, 7, 9))

    have = [pyi.Interpreter("/a/python3", (3, 11, 2)), pyi.Interpreter("/b/python3.12", (3, 12, 3)),
            pyi.Interpreter("/c/python3.11", (3, 11, 9))]  # fmt: skip
    exact = pyi.PythonRequest("runtime.txt", "python-3.11.9", (3, 11, 9))
    assert pyi.choose_interpreter(exact, have) == have[2]  # the exact patch beats the default
    assert pyi.choose_interpreter(pyi.PythonRequest("x", "3.11.7", (3, 11, 7)), have) == have[0]  # same minor: default
    assert pyi.choose_interpreter(pyi.PythonRequest("x", "3.12", (3, 12)), have) == have[1]
    assert pyi.choose_interpreter(pyi.PythonRequest("x", "3.9", (3, 9)), have) is None
    assert pyi.choose_interpreter(pep, have) == have[1]  # type: ignore[arg-type]


async def test_version_the_server_lacks_fails_naming_file_versions_and_fix(tmp_path: Path) -> None:
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": "", ".python-version": "3.7\n"})
    log = Log()
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path, log)
    e = err.value
    assert e.argument == "repo_url"
    assert e.message.startswith(".python-version asks for Python 3.7, which this server does not have (available: ")
    assert re.search(r"available: [^)]*3\.11", e.message)
    assert "change .python-version to 3." in (e.fix or "") and "PYTHON_VERSION" in (e.fix or "")
    assert "/" not in e.message and str(tmp_path) not in (e.fix or "")  # no server paths
    assert not list((tmp_path / "venvs").iterdir())  # failed before anything was installed

    # The one-more-call fix the error offers: env_vars PYTHON_VERSION, no commit needed.
    out = await build(app, tmp_path, env={"PYTHON_VERSION": "3.11"})
    assert versions(out.venv_dir) == {}


async def test_version_the_server_has_is_used_for_the_venv(tmp_path: Path) -> None:
    """runtime.txt names the Debian interpreter's exact version while the operator's default is this test's
    interpreter: the venv is built on the asked one (the same one when both are equal)."""
    debian = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": "", "runtime.txt": f"python-{debian}\n"})
    log = Log()
    out = await build(app, tmp_path, log, python=sys.executable)
    got = subprocess.run([f"{out.venv_dir}/bin/python", "-c", "import sys; print(*sys.version_info[:3], sep='.')"],
                         capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert got == debian
    assert f"-> Python {debian}: runtime.txt asks for python-{debian}" in log.text


async def test_dependency_free_app_gets_the_asked_interpreter_on_path(tmp_path: Path) -> None:
    """No dependencies (no venv): the `python` on PATH is the asked interpreter (its own shim dir), while the
    operator's default is this test's interpreter."""
    debian = subprocess.run(["/usr/bin/python3", "-c", "import platform; print(platform.python_version())"],
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    app = tmp_path / "app"
    write_files(app, {"app.py": "", ".python-version": debian})
    command = "python -c 'import platform; print(platform.python_version())' > version.txt"
    out = await build(app, tmp_path, plan=python_plan(build_command=command), python=sys.executable)
    assert (app / "version.txt").read_text().strip() == debian
    mine = ".".join(map(str, sys.version_info[:3]))  # the default's version: another one needs its own shim dir
    shim = out.env["PATH"].split(":")[0].rsplit("/", 1)[-1]
    assert out.venv_dir is None and shim.startswith("py-") == (mine != debian)


@pytest.mark.slow
async def test_poetry_build_as_the_project_user(projects: Any, data_dir: Path) -> None:  # noqa: F811
    """As the local provider runs it: the tenant writes the lock-derived files into its own venv and installs
    the locked versions from the project's cache."""
    p = await projects("")
    (p.app / "requirements.txt").unlink()
    for f in (APPS / "poetry1").iterdir():
        shutil.copy(f, p.app / f.name)
    subprocess.run(["chown", "-R", f"{p.run_as.uid}:{p.run_as.gid}", str(p.app)], check=True)
    log = Log()
    out = await run_build(python_plan(), p.app, venv_root=p.service.venvs, env={}, log=log, run_as=p.run_as,
                          timeout=300, cache_dir=p.layout.cache, state_dir=p.service.run_dir,
                          shim_dir=data_dir / "bin", anchor=p.app)  # fmt: skip
    assert versions(out.venv_dir, *LOCKED) == LOCKED
    owner = Path(out.venv_dir or "", "inkmcp-constraints.txt").stat().st_uid
    assert owner == p.run_as.uid  # written by the tenant, not by root


# --- Django collectstatic -------------------------------------------------------------------------------

DJANGO_SETTINGS = """
import os
from pathlib import Path
BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["django.contrib.staticfiles"]
ROOT_URLCONF = "site_cfg.urls"
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
if 'RENDER' in os.environ:
    STATIC_ROOT = os.path.join(BASE_DIR, 'staticfiles')
"""
MANAGE = """#!/usr/bin/env python
import os, sys
if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "site_cfg.settings")
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
"""


@pytest.mark.slow
async def test_collectstatic_failure_quotes_the_exception_and_answers_it(tmp_path: Path) -> None:
    """Real Django, STATIC_ROOT set only under Render's env var: the error quotes ImproperlyConfigured and says
    to set STATIC_ROOT unconditionally or pass RENDER; passing RENDER then builds."""
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": "Django==4.2.16\n", "manage.py": MANAGE, "site_cfg/__init__.py": "",
                      "site_cfg/settings.py": DJANGO_SETTINGS, "site_cfg/urls.py": "urlpatterns = []\n",
                      "static/site.css": "body { color: teal }\n"})  # fmt: skip
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path, plan=python_plan(django=True))
    e = err.value
    assert e.message.startswith("python manage.py collectstatic --noinput exited with 1: django.core.exceptions."
                                "ImproperlyConfigured: You're using the staticfiles app without having set the "
                                "STATIC_ROOT setting to a filesystem path.")
    assert "only when the env var RENDER is set" in (e.fix or "") and "set STATIC_ROOT unconditionally" in (e.fix or "")
    assert "{'RENDER': 'true'}" in (e.fix or "")
    assert str(tmp_path) not in e.render()

    log = Log()
    await build(app, tmp_path, log, plan=python_plan(django=True), env={"RENDER": "true"})
    assert (app / "staticfiles" / "site.css").read_text() == "body { color: teal }\n"
    assert "1 static file copied" in log.text

    # An API-only app (no django.contrib.staticfiles): nothing to collect, the build goes on.
    settings = (app / "site_cfg" / "settings.py").read_text()
    (app / "site_cfg" / "settings.py").write_text(settings.replace('["django.contrib.staticfiles"]', "[]"))
    log = Log()
    await build(app, tmp_path, log, plan=python_plan(django=True))
    assert "-> collectstatic is not available (django.contrib.staticfiles is not in INSTALLED_APPS)" in log.text


def test_last_exception_reading() -> None:
    chained = [
        "Traceback (most recent call last):", '  File "x.py", line 1, in <module>', "KeyError: 'A'", "",
        "During handling of the above exception, another exception occurred:", "",
        "Traceback (most recent call last):", '  File "settings.py", line 3', "    SECRET = os.environ['SECRET_KEY']",
        "KeyError: 'SECRET_KEY'",
    ]  # fmt: skip
    assert pyi.last_exception(chained) == "KeyError: 'SECRET_KEY'"
    assert "pass env_vars {'SECRET_KEY'" in pyi.collectstatic_fix("KeyError: 'SECRET_KEY'", "")
    assert pyi.last_exception(["noise", "CommandError: no such app", "exit"]) == "CommandError: no such app"
    assert "not installed" in pyi.collectstatic_fix("ModuleNotFoundError: No module named 'whitenoise'", "")
    guarded = "import os\nif os.environ.get('RENDER'):\n    DEBUG = False\n    STATIC_ROOT = 'x'\n"
    assert "{'RENDER': 'true'}" in pyi.collectstatic_fix("ImproperlyConfigured: ... STATIC_ROOT setting ...", guarded)


async def test_build_command_failure_quotes_the_exception_and_says_what_is_missing(tmp_path: Path) -> None:
    """A build_command (a repo script, as Render's examples have) dies in Python: the error quotes the
    exception, without this server's paths, and answers it (a database the build needs)."""
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": "", "build.sh": (
        "set -e\npython -c \"import os, sys; sys.path.insert(0, os.getcwd()); import migrate\"\n"),
        "migrate.py": "import os\nraise ConnectionRefusedError(\n"
                      "    f'OperationalError: connection to {os.getcwd()}/db refused')\n",
    })  # fmt: skip
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path, plan=python_plan(build_command="sh build.sh"))
    e = err.value
    assert e.argument == "build_command"
    assert e.message == ("build command 'sh build.sh' exited with 1: ConnectionRefusedError: OperationalError: "
                         "connection to ./db refused")  # fmt: skip
    assert "database={'type': 'postgres'}" in (e.fix or "")
    assert str(tmp_path) not in e.render()


def test_static_root_guard_behind_a_setting() -> None:
    """Render's Django example: `DEBUG = 'RENDER' not in os.environ` ... `if not DEBUG: STATIC_ROOT = ...`."""
    settings = ("import os\nDEBUG = 'RENDER' not in os.environ\nHOST = os.environ.get('RENDER_EXTERNAL_HOSTNAME')\n"
                "if not DEBUG:\n    STATIC_ROOT = os.path.join(BASE_DIR, 'staticfiles')\n")  # fmt: skip
    fix = pyi.collectstatic_fix("django.core.exceptions.ImproperlyConfigured: ... STATIC_ROOT setting ...", settings,
                                in_build_command=True)  # fmt: skip
    assert "only when the env var RENDER is set" in fix and "{'RENDER': 'true'}" in fix
    assert "RENDER_EXTERNAL_HOSTNAME" in fix and fix.endswith("or pass a build_command without collectstatic")
    assert "database={'type': 'postgres'}" in pyi.collectstatic_fix("KeyError: 'PGDATABASE'", "")


@pytest.mark.slow
async def test_uv_project_for_a_newer_python_goes_live_with_the_two_arguments_the_error_names(tmp_path: Path) -> None:
    """requires-python >= 3.99 on a uv project: the error names PYTHON_VERSION and a re-resolving build_command;
    passing exactly those builds (a lock made for a newer Python may carry no wheels for this one)."""
    app = app_copy("uvapp", tmp_path)
    (app / "pyproject.toml").write_text((app / "pyproject.toml").read_text().replace(">=3.9", ">=3.99"))
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path)
    fix = err.value.fix or ""
    assert err.value.message.startswith("requires-python in pyproject.toml asks for Python >=3.99, which this server")
    env = re.search(r"env_vars (\{'PYTHON_VERSION': '3\.\d+'\})", fix)
    command = re.search(r"build_command '([^']+)'", fix)
    assert env and command, fix
    out = await build(app, tmp_path, env=ast.literal_eval(env[1]), plan=python_plan(build_command=command[1]))
    assert versions(out.venv_dir, "python-dateutil")["python-dateutil"] is not None


@pytest.mark.slow
async def test_poetry_calls_in_build_and_start_commands_work_without_poetry(tmp_path: Path) -> None:
    """Render-style: build.sh runs `poetry install`, the start command `poetry run ...`. Poetry is not on this
    server: the lock is installed by InkMCP, the venv's `poetry` shim says so for install and runs `run`."""
    app = app_copy("poetry1", tmp_path)
    write_files(app, {"build.sh": "#!/bin/sh\nset -e\npoetry install --no-root\n"})
    (app / "build.sh").chmod(0o755)
    log = Log()
    out = await build(app, tmp_path, log, plan=python_plan(build_command="./build.sh"))
    assert "-> installing dependencies from poetry.lock (Poetry)" in log.text
    assert "poetry install --no-root: nothing to do, InkMCP installed the dependencies from poetry.lock" in log.text
    env = {"PATH": out.env["PATH"]}
    ran = subprocess.run(["sh", "-c", "poetry run python -c 'import dateutil; print(dateutil.__version__)'"],
                         capture_output=True, text=True, env=env, cwd=app)  # fmt: skip
    assert ran.returncode == 0 and ran.stdout.strip() == "2.8.1", ran.stderr
    other = subprocess.run(["sh", "-c", "poetry add requests"], capture_output=True, text=True, env=env, cwd=app)
    assert other.returncode == 127 and "poetry is not installed on this server" in other.stderr


# --- over MCP: one deploy_app call, as an agent makes it ------------------------------------------------

POETRY_WEB = '''import http.server, os
import dateutil, six


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"dateutil {dateutil.__version__} six {six.__version__}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
'''


@pytest.mark.slow
async def test_poetry_app_goes_live_over_mcp_and_a_version_error_is_fixed_in_one_more_call(
        local_server: ServerProc) -> None:
    """A Poetry app (poetry.lock, `poetry run` in its Procfile, no Poetry on the server) goes live from one
    deploy_app call and serves the locked versions; the same app asking for Python 3.7 fails with the
    error naming the file and the fix, and the call with the env var the fix names goes live.

    On the session's local server (tests/conftest.py), as an account of its own (suitetime: it started a server of
    its own with no setting of its own)."""
    repos = traversable_tmpdir("inkmcp-pyinst-")
    try:
        files = {p.name: p.read_text() for p in (APPS / "poetry1").iterdir()}
        procfile = "web: poetry run python app.py\n"
        repo = git_repo(repos / "poetry-web", {**files, "app.py": POETRY_WEB, "Procfile": procfile})
        server = local_server
        async with mcp_session(server, server.create_key(f"pyinst-{uuid.uuid4().hex[:8]}")) as s:

            async def deploy(**args: object) -> dict[str, Any]:
                dep = await call(s, "deploy_app", repo_url=str(repo), **args)
                while not dep["done"]:
                    dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
                return dep

            def get(url: str) -> str:
                host = httpx.URL(url).netloc.decode()
                return httpx.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": host}, timeout=30).text

            dep = await deploy()
            assert dep["status"] == "live", dep
            assert get(dep["url"]) == "dateutil 2.8.1 six 1.15.0"

            git_commit(repo, {".python-version": "3.7\n"})
            failed = await deploy()
            assert failed["status"] == "failed", failed
            text = json.dumps(failed)
            assert ".python-version asks for Python 3.7, which this server does not have" in text
            assert str(repos) not in text and "/usr/" not in text
            fix = re.search(r"env_vars (\{'PYTHON_VERSION': '3\.\d+'\})", text)
            assert fix, text
            again = await deploy(env_vars=ast.literal_eval(fix[1]))
            assert again["status"] == "live", again
            assert get(again["url"]) == "dateutil 2.8.1 six 1.15.0"
    finally:
        shutil.rmtree(repos, ignore_errors=True)


async def test_install_failure_quotes_the_installers_error_and_answers_it(tmp_path: Path) -> None:
    """A dependency that needs a newer Python than the build's: the error quotes uv's resolution failure
    (not "see the log") and says to pin an older version."""
    app = tmp_path / "app"
    write_files(app, {"requirements.txt": "django==6.0\n"})  # Django 6 requires Python >= 3.12
    with pytest.raises(BuildFailed) as err:
        await build(app, tmp_path)
    e = err.value
    assert e.message.startswith("the app's dependencies (from requirements.txt) did not install: "
                                "uv pip install -r requirements.txt exited with 1: No solution found when resolving")
    assert "does not satisfy Python>=3.12" in e.message
    assert (e.fix or "").startswith("a dependency needs Python >=3.12, which this build's Python 3.11 is not: pin")


def test_installer_error_reading() -> None:
    compile_output = ["error: Failed to build `psycopg2==2.8.3`", "  cause: The build backend returned an error",
                      "      error: command 'gcc' failed", "hint: Build failures usually indicate..."]  # fmt: skip
    said = pyi.installer_error(compile_output)
    assert said == "Failed to build `psycopg2==2.8.3`: The build backend returned an error"
    assert "psycopg2-binary" in (pyi.installer_fix(said, "3.11") or "")
    assert pyi.installer_error(["Resolved 3 packages", "      error: indented, from a build"]) is None


LOCAL_BACKEND = """
import base64, hashlib, os, zipfile
FILES = {"localpkg/__init__.py": b"VALUE = 'local'\\n",
         "localpkg-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\\nName: localpkg\\nVersion: 0.1\\n",
         "localpkg-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"}
def _line(n, d):
    return n + ",sha256=" + base64.urlsafe_b64encode(hashlib.sha256(d).digest()).rstrip(b"=").decode() + "," + str(len(d))
def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "localpkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as zf:
        for n, d in FILES.items():
            zf.writestr(n, d)
        zf.writestr("localpkg-0.1.dist-info/RECORD", "\\n".join([_line(n, d) for n, d in FILES.items()] + ["localpkg-0.1.dist-info/RECORD,,"]))
    return name
build_editable = build_wheel
"""  # noqa: E501
POETRY_EDGE_PYPROJECT = """
[tool.poetry]
name = "edge"
version = "0.1.0"
description = ""
authors = ["x <x@example.com>"]

[tool.poetry.dependencies]
python = ">=3.9"
six = {version = "1.15.0", python = "<3.0 || >=3.99"}
iniconfig = {version = "1.1.1", markers = "sys_platform == 'win32'"}
localpkg = {path = "libs/localpkg", develop = true}
python-dateutil = {version = "^2.8", optional = true}
"""
POETRY_EDGE_LOCK = """
[[package]]
name = "six"
version = "1.15.0"
description = ""
optional = false
python-versions = "*"
files = []

[[package]]
name = "iniconfig"
version = "1.1.1"
description = ""
optional = false
python-versions = "*"
files = []

[[package]]
name = "localpkg"
version = "0.1"
description = ""
optional = false
python-versions = "*"
files = []
develop = true

[package.source]
type = "directory"
url = "libs/localpkg"

[metadata]
lock-version = "2.0"
python-versions = ">=3.9"
content-hash = "0"
"""


@pytest.mark.slow
async def test_poetry_markers_python_constraints_and_path_dependencies(tmp_path: Path) -> None:
    """What the lock reader writes is what uv reads: a `python` constraint and a marker that exclude a
    dependency on this Python/platform, a develop path dependency (editable), an optional one skipped."""
    app = tmp_path / "app"
    write_files(app, {"pyproject.toml": POETRY_EDGE_PYPROJECT, "poetry.lock": POETRY_EDGE_LOCK,
                      "libs/localpkg/backend.py": LOCAL_BACKEND,
                      "libs/localpkg/pyproject.toml": '[build-system]\nrequires = []\nbuild-backend = "backend"\n'
                                                      'backend-path = ["."]\n[project]\nname = "localpkg"\n'
                                                      'version = "0.1"\n'})  # fmt: skip
    locked = pyi.poetry_install(RepoFiles(app))
    assert "-e ./libs/localpkg" in locked.requirements and not any("dateutil" in r for r in locked.requirements)
    out = await build(app, tmp_path)
    assert versions(out.venv_dir, "six", "iniconfig", "localpkg", "python-dateutil") == {
        "six": None, "iniconfig": None, "localpkg": "0.1", "python-dateutil": None}


async def test_src_layout_is_importable_without_installing_the_project(tmp_path: Path) -> None:
    """`uv init --package` style (src/<pkg>): the project is importable in the build and at run time through
    PYTHONPATH of this release, never installed into the shared venv."""
    app = app_copy("uvapp", tmp_path)
    write_files(app, {"src/uv_sample/__init__.py": "WHERE = 'release one'\n"})
    command = "python -c 'import uv_sample; print(uv_sample.WHERE)' > where.txt"
    out = await build(app, tmp_path, plan=python_plan(build_command=command))
    assert (app / "where.txt").read_text().strip() == "release one"
    assert out.env["PYTHONPATH"] == str(app / "src")
    assert versions(out.venv_dir, "uv-sample") == {"uv-sample": None}


@pytest.mark.slow
@pytest.mark.parametrize("lockless", ["poetry", "pipenv"])
async def test_poetry_or_pipfile_without_a_lock_resolves_the_manifest(lockless: str, tmp_path: Path) -> None:
    """No lock file committed: the manifest's constraints (Poetry's caret, Pipfile's ==) are resolved anew,
    and the log says the versions are not pinned and how to pin them."""
    app = tmp_path / "app"
    if lockless == "poetry":
        write_files(app, {"pyproject.toml": "[tool.poetry]\nname = 'x'\nversion = '0'\n[tool.poetry.dependencies]\n"
                                            "python = '^3.9'\nsix = '~1.15'\npython-dateutil = {version = '2.8.1'}\n"})
    else:
        write_files(app, {"Pipfile": "[packages]\nsix = '==1.15.0'\npython-dateutil = {version = '==2.8.1'}\n"
                                     "[dev-packages]\niniconfig = '*'\n"})  # fmt: skip
    log = Log()
    out = await build(app, tmp_path, log)
    assert "resolved anew (versions are not pinned: run" in log.text
    assert versions(out.venv_dir, *LOCKED) == LOCKED


def test_manifest_constraints_as_pep440() -> None:
    assert pyi._unlocked_line("six", "", "^1.15") == "six>=1.15,<2"
    assert pyi._unlocked_line("six", "", "~1.15.0") == "six>=1.15.0,<1.16"
    assert pyi._unlocked_line("six", "[x]", {"version": ">=1.2, <2"}) == "six[x]>=1.2,<2"
    assert pyi._unlocked_line("six", "", "*") == "six"
    assert pyi._unlocked_line("lib", "", {"git": "https://h/r.git", "rev": "abc"}) == "lib @ git+https://h/r.git@abc"
    assert pyi._unlocked_line("lib", "", {"path": "libs/lib", "develop": True}) == "-e ./libs/lib"
