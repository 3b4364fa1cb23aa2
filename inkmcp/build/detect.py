"""Derive a BuildPlan from call arguments, `inkmcp.yaml`, a Procfile, other platforms' files and the repo.

Precedence, field by field (start command, build, release, port, static dir, app dir):

    call arguments > inkmcp.yaml entry for the service > Procfile
        > other platforms' files (render.yaml, railway.json/railway.toml, fly.toml, app.json;
          see inkmcp/build/platform_files.py for what each gives and in which order)
        > framework detection

Env defaults come only from platform files and rank below everything else: the plan carries them in
`env_defaults` and the pipeline applies them under the agent's env vars and the add-ons' injected env.

The stack (which dependency installer runs) is always inferred from the files, even when the start
command is given, so `start_command="gunicorn app:app"` still gets its requirements.txt installed.

Framework detection prefers the production server the app lists in its dependencies
(requirements.txt, PEP 621 `[project]`, `[tool.poetry.dependencies]`, Pipfile `[packages]`) over a
dev server: gunicorn (WSGI: Flask, Django `<project>.wsgi`), uvicorn/hypercorn (ASGI: FastAPI,
Starlette, Django `<project>.asgi`), `next start` after `next build`. The app object is found by
reading (never importing) wsgi.py, asgi.py, app.py, main.py, server.py, application.py, run.py and
the `app` package: `app = Flask(...)`, `app = create_app()`, a bare `def create_app()` factory, or
`from x import app` in wsgi.py. `python main.py` is chosen only when no production server is listed.
A package.json whose `start` is a dev server (vite, react-scripts start, ...) with a `build` script is
a static site built by `npm run build`.

Detection is deliberately conservative: it only picks a start command when a file says so
unambiguously, and otherwise fails with an error listing what it looked for and what it found,
because a wrong guess costs an agent a slow failed deploy, while a precise error costs it one retry.
"""

from __future__ import annotations

import ast
import json
import platform as _platform
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from inkmcp.build.manifest import MANIFEST, Manifest, ServiceEntry, load_manifest, read_repo_text
from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack, check_mode
from inkmcp.build.platform_files import PlatformService, load_platform_files
from inkmcp.build.procfile import Procfile, load_procfile
from inkmcp.build.static_output import is_dev_server
from inkmcp.errors import BuildPlanError, InkError, InvalidArgument
from inkmcp.safefs import read_beneath

PYTHON_ENTRYPOINTS = ("app.py", "main.py", "server.py")
# Where an app object may live, most explicit first (wsgi.py exists only to expose it).
PYTHON_APP_FILES = (
    "wsgi.py", "asgi.py", "app.py", "main.py", "server.py", "application.py", "run.py",
    "app/__init__.py", "app/main.py",
)  # fmt: skip
STATIC_DIR_CANDIDATES = ("dist", "build", "out", "public")
MAX_NOTES = 20  # plan.notes reach agents: bounded however many env entries a platform file has
_PY_HINTS = (
    "python", "python3", "gunicorn", "uvicorn", "hypercorn", "daphne", "flask", "django-admin", "waitress-serve",
)  # fmt: skip
_NODE_HINTS = ("node", "npm", "npx", "yarn", "pnpm", "bun")
_NOTHING_FOUND_FIX = (
    "pass start_command (e.g. 'python app.py' — the app must listen on $PORT) or add a Procfile with a `web:` line"
)
_SHOWN_FILES = (
    "package.json", "requirements.txt", "pyproject.toml", "Pipfile", "manage.py", "Dockerfile", "index.html",
)  # fmt: skip
_WSGI_CLASSES = frozenset({"Flask", "Bottle", "Django"})
_ASGI_CLASSES = frozenset({"FastAPI", "Starlette", "Litestar", "Quart"})
_FACTORIES = frozenset({"create_app", "make_app", "get_app", "build_app", "get_application", "create_application"})
_ASSIGN = re.compile(r"^(?P<var>[A-Za-z_]\w*)\s*(?::\s*[\w.\[\], ]+)?=\s*(?P<call>[A-Za-z_][\w.]*)\(", re.M)
_FACTORY_DEF = re.compile(r"^(?:async\s+)?def\s+(?P<name>" + "|".join(sorted(_FACTORIES)) + r")\s*\(", re.M)
_REEXPORT = re.compile(r"^from\s+[\w.]+\s+import\s+(?:\(?[\w\s,]*?\b)?(?P<var>app|application)\b", re.M)
_MAIN_GUARD = re.compile(r"""__name__\s*==\s*['"]__main__['"]""")


@dataclass
class _Files:
    """What the app directory contains, read once."""

    root: Path
    checkout: Path
    package_json: dict[str, Any] | None = None
    python_deps: set[str] = field(default_factory=set)
    is_python: bool = False
    is_node: bool = False
    has_index_html: bool = False

    def text(self, name: str) -> str | None:
        return read_repo_text(self.root, name, root=self.checkout)

    def exists(self, name: str) -> bool:
        return (self.root / name).is_file()

    @property
    def node_deps(self) -> dict[str, Any]:
        package = self.package_json or {}
        deps: dict[str, Any] = {}
        for key in ("devDependencies", "dependencies"):
            if isinstance(package.get(key), dict):
                deps.update(package[key])
        return deps

    @property
    def scripts(self) -> dict[str, str]:
        scripts = (self.package_json or {}).get("scripts")
        if not isinstance(scripts, dict):
            return {}
        return {k: v for k, v in scripts.items() if isinstance(v, str) and v.strip()}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- newuser4: an app keeping its data in a SQLite file (Django's default settings, sqlite:/// URLs, sqlite3 in
# package.json) writes it in its release directory, which the next deploy replaces: its data went with every deploy,
# and nothing said so. Said in the queued event; hidden once the project has a Postgres (plan hints skip a note naming
# "'type': 'postgres'" when DATABASE_URL is set).
_SQLITE_IN_CODE = re.compile(rb"backends\.sqlite3|sqlite(?:\+\w+)?:///|sqlite3\.connect\(")
_SQLITE_NODE = ("sqlite3", "better-sqlite3", "sqlite")
_SQLITE_NOTE = ("the app looks like it keeps data in a SQLite file ({where}): files it writes in its own directory "
                "are replaced at each deploy (every deploy runs a fresh checkout); keep the file under $HOME, which is "
                "kept across deploys, or pass database={{'type': 'postgres'}} and read DATABASE_URL")
_SQLITE_SCAN_FILES = 80
_SQLITE_SCAN_BYTES = 256 * 1024


def _sqlite_use(files: _Files) -> str | None:
    """Where the app shows it uses SQLite ('settings.py', 'package.json better-sqlite3'), or None. Reads at most
    _SQLITE_SCAN_FILES Python files of the app directory, two levels down, each up to _SQLITE_SCAN_BYTES (larger ones
    are skipped), through safefs.read_beneath: no symlink followed, no FIFO opened (the tenant wrote this tree)."""
    deps = files.node_deps
    if found := next((name for name in _SQLITE_NODE if name in deps), None):
        return f"package.json {found}"
    if not files.is_python:
        return None
    checkout = files.checkout.resolve()
    scanned = 0
    for pattern in ("*.py", "*/*.py", "*/*/*.py"):
        for path in sorted(files.root.glob(pattern)):
            if scanned >= _SQLITE_SCAN_FILES:
                return None
            rel = path.relative_to(files.root)
            if any(part.startswith(".") for part in rel.parts):
                continue  # .venv, .git
            scanned += 1
            head = read_beneath(checkout, str(path.relative_to(checkout)), max_bytes=_SQLITE_SCAN_BYTES)
            if head is not None and _SQLITE_IN_CODE.search(head):
                return str(rel)
    return None
# --- end


def _requirement_names(text: str) -> set[str]:
    """Distribution names in requirements-style lines (`Django>=4`, `gunicorn[gevent]==21`).

    `fastapi[standard]` / `fastapi[all]` bring uvicorn with them, so they count as uvicorn too; so do
    `litestar[standard]` (also `[full]`, `[cli]`), and `quart` counts as hypercorn, which it requires (newuser6).
    """
    names = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?", line)
        if match and not line.startswith("-"):
            name = _normalise(match[1])
            names.add(name)
            if name == "fastapi" and match[2] and re.search(r"\b(standard|all)\b", match[2]):
                names.add("uvicorn")
            # --- newuser6: Litestar's quickstart (`pip install 'litestar[standard]'`) was refused with "add uvicorn to
            # the dependencies", which that extra installs; Quart's (`app.run()` under the main guard) ran as
            # `python app.py`, its development server on 127.0.0.1:5000, while hypercorn, which Quart requires, was
            # installed: both are served by the server their install brings
            if name == "litestar" and match[2] and re.search(r"\b(standard|full|cli)\b", match[2]):
                names.add("uvicorn")
            if name == "quart":
                names.add("hypercorn")
            # --- end
    return names


_INCLUDE = re.compile(r"^(?:-r|--requirement)(?:\s+|=)(?P<file>\S+)")
_LOCAL_PROJECT = re.compile(
    r"^(?:(?:-e|--editable)(?:\s+|=))?(?:file:)?(?P<dir>\.{1,2}(?:/[\w.-]*)*)/?(?:\[[^\]]*\])?$")
_SETUP_REQUIRES = re.compile(r"install_requires\s*=\s*\[(?P<list>[^\]]*)\]", re.S)
MAX_REQUIREMENT_FILES = 10


def _requirements_deps(files: _Files, name: str, seen: set[str]) -> set[str]:
    """Distribution names a requirements file installs, following `-r other.txt` (a new user's requirements.txt
    was `-r requirements/prod.txt`, whose gunicorn detection did not see: the app ran as `python app.py` and
    exited) and a local project line (`-e .`: its setup.py install_requires / pyproject dependencies)."""
    key = str(PurePosixPath(name))
    if key in seen or len(seen) >= MAX_REQUIREMENT_FILES:
        return set()
    seen.add(key)
    text = files.text(name)
    if text is None:
        return set()
    names = _requirement_names(text)
    base = PurePosixPath(name).parent
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if m := _INCLUDE.match(line):
            names |= _requirements_deps(files, _joined(base, m["file"]), seen)
        elif m := _LOCAL_PROJECT.match(line):
            names |= _local_project_deps(files, _joined(base, m["dir"]))
    return names


def _joined(base: PurePosixPath, relative: str) -> str:
    """`relative` (from a requirements line) against the including file's directory, normalised (`a/../b` -> `b`;
    reads stay inside the checkout: read_repo_text refuses a path that leaves it)."""
    parts: list[str] = []
    for part in (base / relative).parts:
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            else:
                parts.append(part)
        elif part != ".":
            parts.append(part)
    return "/".join(parts) or "."


def _local_project_deps(files: _Files, directory: str) -> set[str]:
    """The dependencies a local project line installs: setup.py `install_requires=[...]` (read, never run) and
    pyproject.toml `[project] dependencies`."""
    prefix = "" if directory == "." else f"{directory}/"
    names: set[str] = set()
    names |= _setup_py_deps(files.text(f"{prefix}setup.py"))
    if prefix and (pyproject := files.text(f"{prefix}pyproject.toml")):  # the root's is read by _scan
        try:
            project = tomllib.loads(pyproject).get("project")
        except tomllib.TOMLDecodeError:
            project = None
        deps = project.get("dependencies") if isinstance(project, dict) else None
        if isinstance(deps, list):
            names |= _requirement_names("\n".join(d for d in deps if isinstance(d, str)))
    return names


def _setup_py_deps(text: str | None) -> set[str]:
    """setup.py's `install_requires=[...]` string literals (read as text, never run)."""
    m = _SETUP_REQUIRES.search(text or "")
    return _requirement_names("\n".join(re.findall(r"""['"]([^'"]+)['"]""", m["list"]))) if m else set()


def _toml(files: _Files, name: str, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BuildPlanError(
            f"{name} is not valid TOML: {exc}.",
            argument="repo_url",
            fix=f"fix {name}, commit and push, then deploy again",
        ) from None


def _scan(root: Path, checkout: Path) -> _Files:
    files = _Files(root=root, checkout=checkout)
    requirements = files.text("requirements.txt")
    pyproject = files.text("pyproject.toml")
    pipfile = files.text("Pipfile")
    files.is_python = any(t is not None for t in (requirements, pyproject, pipfile)) or files.exists("setup.py")
    if requirements is not None:
        files.python_deps |= _requirements_deps(files, "requirements.txt", set())
    elif pyproject is None and pipfile is None:
        files.python_deps |= _setup_py_deps(files.text("setup.py")) if files.exists("setup.py") else set()
    if pyproject is not None:
        data = _toml(files, "pyproject.toml", pyproject)
        project = data.get("project") if isinstance(data.get("project"), dict) else {}
        deps = project.get("dependencies") if isinstance(project.get("dependencies"), list) else []
        files.python_deps |= _requirement_names("\n".join(d for d in deps if isinstance(d, str)))
        tool = data.get("tool") if isinstance(data.get("tool"), dict) else {}
        poetry = tool.get("poetry") if isinstance(tool.get("poetry"), dict) else {}
        poetry_deps = poetry.get("dependencies") if isinstance(poetry.get("dependencies"), dict) else {}
        files.python_deps |= _requirement_names(
            "\n".join(f"{k}{_poetry_extras(v)}" for k, v in poetry_deps.items() if k.lower() != "python")
        )
    if pipfile is not None:
        packages = _toml(files, "Pipfile", pipfile).get("packages")
        if isinstance(packages, dict):
            files.python_deps |= _requirement_names("\n".join(f"{k}{_poetry_extras(v)}" for k, v in packages.items()))
    package = files.text("package.json")
    if package is not None:
        try:
            data = json.loads(package)
        except json.JSONDecodeError as exc:
            raise BuildPlanError(
                f"package.json is not valid JSON ({exc.msg} at line {exc.lineno}).",
                argument="repo_url",
                fix="fix package.json, commit and push, then deploy again",
            ) from None
        files.package_json = data if isinstance(data, dict) else {}
        files.is_node = True
    files.has_index_html = files.exists("index.html")
    return files


def _poetry_extras(spec: Any) -> str:
    """`{version = "*", extras = ["standard"]}` → `[standard]` (so fastapi[standard] counts as uvicorn)."""
    if isinstance(spec, dict) and isinstance(spec.get("extras"), list):
        return "[" + ",".join(str(e) for e in spec["extras"]) + "]"
    return ""


# --- Python ------------------------------------------------------------------------------------


def _django_command(files: _Files) -> str:
    """gunicorn (WSGI) or uvicorn/daphne (ASGI) when the app lists one, else Django's own server on $PORT."""
    manage = files.text("manage.py") or ""
    match = re.search(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)\.settings['"]""", manage)
    project = match[1] if match else None
    if project is None:
        wsgi = sorted(p.parent.name for p in files.root.glob("*/wsgi.py"))
        project = wsgi[0] if len(wsgi) == 1 else None
    deps = files.python_deps
    if project and "gunicorn" in deps:
        if "uvicorn" in deps and "uvicorn-worker" in deps and files.exists(f"{project}/asgi.py"):
            return f"gunicorn {project}.asgi:application -k uvicorn_worker.UvicornWorker --bind 0.0.0.0:$PORT"
        return f"gunicorn {project}.wsgi --bind 0.0.0.0:$PORT"
    if project and files.exists(f"{project}/asgi.py"):
        if "uvicorn" in deps:
            return f"uvicorn {project}.asgi:application --host 0.0.0.0 --port $PORT"
        if "daphne" in deps:
            return f"daphne -b 0.0.0.0 -p $PORT {project}.asgi:application"
    return "python manage.py runserver 0.0.0.0:$PORT --noreload"


# --- newuser5: Django's ALLOWED_HOSTS as startproject writes it (`[]`) answers every request for another host with 400
# (DisallowedHost; DEBUG allows only localhost names): on Coolify (https://web-x.<domain>) the deploy went live and its
# URL answered 400, while the same app answered on the local provider's *.localhost URL
_ALLOWED_HOSTS = re.compile(r"^ALLOWED_HOSTS\s*(?::[^=\n]*)?=\s*(?P<value>\[[^\]]*\]|\([^)]*\))", re.M)
_LITERAL_HOSTS = re.compile(r"""^[\[(]\s*(?:(?:'[^'\n]*'|"[^"\n]*")\s*,?\s*)*[\])]$""")
_ALLOWED_HOSTS_NOTE = (
    "Django's `ALLOWED_HOSTS` in {where} is {value}, not read from the environment: a request for a host it does not "
    "list gets 400 (DisallowedHost; in debug mode an empty list allows only localhost names), so the service's URL "
    "may answer 400. Read it from the environment (ALLOWED_HOSTS = os.environ.get('ALLOWED_HOSTS', "
    "'localhost').split(',')), commit, and pass env_vars={{'ALLOWED_HOSTS': '<the host of the URL deploy_app "
    "answers>'}}")


def _django_allowed_hosts_note(files: _Files) -> str | None:
    """The note above when the Django settings module manage.py names holds a literal ALLOWED_HOSTS without '*'."""
    manage = files.text("manage.py") or ""
    match = re.search(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)['"]""", manage)
    if match is None:
        return None
    where = match[1].replace(".", "/") + ".py"
    text = files.text(where) if files.exists(where) else None
    if text is None or "ALLOWED_HOSTS" in text.replace("ALLOWED_HOSTS =", "", 1).replace("ALLOWED_HOSTS=", "", 1):
        return None  # not this file, or ALLOWED_HOSTS set more than once (appended to, read from env below)
    found = _ALLOWED_HOSTS.search(text)
    if found is None or not _LITERAL_HOSTS.match(found["value"].strip()) or "'*'" in found["value"] or \
            '"*"' in found["value"]:
        return None
    value = " ".join(found["value"].split())
    return _ALLOWED_HOSTS_NOTE.format(where=where, value=value if len(value) <= 80 else value[:80] + " …")
# --- end


@dataclass(frozen=True)
class _AppObject:
    """Where the app object is: `module:attr` (attr may be a factory call) and which interface it speaks."""

    file: str
    module: str
    attr: str
    interface: str  # "wsgi" | "asgi"
    factory: bool = False


def _interface_of(files: _Files, called: str) -> str | None:
    last = called.rsplit(".", 1)[-1]
    if last in _WSGI_CLASSES:
        return "wsgi"
    if last in _ASGI_CLASSES:
        return "asgi"
    if last in _FACTORIES:
        return _framework_interface(files)
    return None


def _framework_interface(files: _Files) -> str | None:
    deps = files.python_deps
    if deps & {"fastapi", "starlette", "litestar", "quart"}:
        return "asgi"
    if deps & {"flask", "bottle"}:
        return "wsgi"
    return None


def _find_app_object(files: _Files) -> _AppObject | None:
    """Read (never import) the usual files for a module-level app object; first hit wins."""
    for name in PYTHON_APP_FILES:
        if not files.exists(name):
            continue
        text = files.text(name) or ""
        module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for match in _ASSIGN.finditer(text):
            interface = _interface_of(files, match["call"])
            if interface:
                return _AppObject(name, module, match["var"], interface)
        if name in ("wsgi.py", "asgi.py"):
            reexport = _REEXPORT.search(text)
            interface = "asgi" if name == "asgi.py" else "wsgi"
            if reexport and (_framework_interface(files) or interface) == interface:
                return _AppObject(name, module, reexport["var"], interface)
        factory = _FACTORY_DEF.search(text)
        interface = _framework_interface(files)
        if factory and interface:
            return _AppObject(name, module, factory["name"], interface, factory=True)
    return _lone_app_module(files)


def _lone_app_module(files: _Files) -> _AppObject | None:
    """`hello_world.py` holding `app = Flask(__name__)` (hexlet-components/python-flask): any top-level
    module, but only when exactly one of them defines an app object (two would be a guess)."""
    found: list[_AppObject] = []
    for path in sorted(files.root.glob("*.py"))[:50]:
        if path.name in PYTHON_APP_FILES or path.is_symlink() or not path.is_file():
            continue
        text = files.text(path.name) or ""
        for match in _ASSIGN.finditer(text):
            if (interface := _interface_of(files, match["call"])) and match["call"].rsplit(".", 1)[
                -1
            ] not in _FACTORIES:
                found.append(_AppObject(path.name, path.stem, match["var"], interface))
                break
    return found[0] if len(found) == 1 else None


def _server_command(files: _Files, app: _AppObject) -> str | None:
    """The production server the dependencies list for this app object, or None."""
    deps = files.python_deps
    target = f"{app.module}:{app.attr}"
    if app.interface == "asgi":
        if "uvicorn" in deps:
            factory = " --factory" if app.factory else ""
            return f"uvicorn {target}{factory} --host 0.0.0.0 --port $PORT"
        if "hypercorn" in deps:
            return f"hypercorn '{target}{'()' if app.factory else ''}' --bind 0.0.0.0:$PORT"
        return None
    if "gunicorn" in deps:
        spec = f"'{target}()'" if app.factory else target  # gunicorn calls `module:factory()` itself
        return f"gunicorn {spec} --bind 0.0.0.0:$PORT"
    if "waitress" in deps:  # newuser5: a factory is called with --call (Flask's own deployment docs)
        return f"waitress-serve --listen=0.0.0.0:$PORT {'--call ' if app.factory else ''}{target}"
    return None


# --- newuser3: the Dockerfile's command, for the refusal to name (it said "pass its CMD as start_command", and the
# agent had to read and translate the exec form itself)
_DOCKER_INSTRUCTION = re.compile(r"^\s*(CMD|ENTRYPOINT)\s+(.+?)\s*$", re.IGNORECASE)


def dockerfile_command(text: str) -> str | None:
    """The command the Dockerfile's image runs (its last ENTRYPOINT and CMD, exec or shell form), as a shell command
    line; None when it has none or one this cannot read (a continued line, an ENTRYPOINT script of the image)."""
    found: dict[str, list[str] | None] = {}
    for line in text.splitlines():
        if (m := _DOCKER_INSTRUCTION.match(line)) is None:
            continue
        value = m.group(2)
        if value.endswith("\\"):
            found[m.group(1).upper()] = None
            continue
        if value.startswith("["):
            try:
                argv = json.loads(value)
            except ValueError:
                argv = None
            found[m.group(1).upper()] = argv if isinstance(argv, list) and all(isinstance(a, str) for a in argv) \
                else None  # fmt: skip
        else:
            found[m.group(1).upper()] = ["/bin/sh", "-c", value]
    entry, cmd = found.get("ENTRYPOINT", []), found.get("CMD", [])
    if entry is None or cmd is None or not (entry or cmd):
        return None
    argv = [*entry, *cmd] if entry and entry[:2] != ["/bin/sh", "-c"] else (entry or cmd)
    line = argv[2] if argv[:2] == ["/bin/sh", "-c"] and len(argv) == 3 else shlex.join(argv)
    return _ON_PORT.sub(r"\g<flag>$PORT", line)  # the image's fixed port: here the service's own


_ON_PORT = re.compile(r"(?P<flag>(?:--port[= ]|(?:--bind|-b)[= ](?:[\w.]*|\[[^\]]*\]):))\d+\b")


# --- newuser3: a Streamlit app (streamlit in the dependencies, a script importing it) was refused with "Found:
# requirements.txt" (streamlit_app.py is no entry point), or run as `python app.py`, which only prints "run it with:
# streamlit run app.py" and exits
_STREAMLIT_IMPORT = re.compile(r"^\s*(?:import streamlit\b|from streamlit\b)", re.MULTILINE)
STREAMLIT_COMMAND = "streamlit run {script} --server.port $PORT --server.address 0.0.0.0 --server.headless true"


# --- newuser5: a Gradio app (`demo.launch()`) serves on 127.0.0.1:7860 unless told otherwise (`python app.py`: its
# first deploy failed); launch() reads these two variables for the arguments it is not given
GRADIO_COMMAND = "GRADIO_SERVER_NAME=0.0.0.0 GRADIO_SERVER_PORT=$PORT python {script}"
_GRADIO_LAUNCH = re.compile(r"^(?:import gradio|from gradio\b)[\s\S]*\.launch\(", re.M)


def _gradio_script(files: _Files) -> str | None:
    """The entry point (app.py, main.py, server.py) importing gradio and calling `.launch(` without its own
    server_name/server_port; None when gradio is not a dependency."""
    if "gradio" not in files.python_deps:
        return None
    for entry in PYTHON_ENTRYPOINTS:
        text = files.text(entry) if files.exists(entry) else None
        if text and _GRADIO_LAUNCH.search(text) and "server_name" not in text and "server_port" not in text:
            return entry
    return None
# --- end


def _streamlit_script(files: _Files) -> str | None:
    """The script `streamlit run` serves: streamlit_app.py (Streamlit's own default), an entry point, or the one
    top-level .py file importing streamlit; None when streamlit is not a dependency or no one script is clear."""
    if "streamlit" not in files.python_deps:
        return None
    try:
        names = sorted(p.name for p in files.root.glob("*.py") if p.is_file() and not p.is_symlink())[:50]
    except OSError:
        return None
    importing = [n for n in names if _STREAMLIT_IMPORT.search(files.text(n) or "")]
    for preferred in ("streamlit_app.py", *PYTHON_ENTRYPOINTS):
        if preferred in importing:
            return preferred
    return importing[0] if len(importing) == 1 else None
# --- end


def _detect_python_start(files: _Files) -> str | None:
    if not files.is_python:
        return None
    if files.exists("manage.py"):
        return _django_command(files)
    if (script := _streamlit_script(files)) is not None:  # --- newuser3
        return STREAMLIT_COMMAND.format(script=script)
    if (script := _gradio_script(files)) is not None:  # --- newuser5
        return GRADIO_COMMAND.format(script=script)
    app = _find_app_object(files)
    if app is not None:
        text = files.text(app.file) or ""
        # flask-socketio needs its own runner (websockets); gunicorn's default worker would break it.
        own_runner = _MAIN_GUARD.search(text) and "flask-socketio" in files.python_deps
        server = None if own_runner else _server_command(files, app)
        if server:
            return server
        # --- newuser5: Flask's quickstart ends in `if __name__ == '__main__': app.run(debug=True)`, which serves on
        # 127.0.0.1:5000: `python app.py` failed its first deploy on both providers; the main guard holding only that
        # call, Flask's own server runs the same app on $PORT
        if app.interface == "wsgi" and "flask" in files.python_deps and "/" not in app.file and \
                "flask-socketio" not in files.python_deps and _only_runs_locally(text, app.attr):
            return f"flask --app {app.module}:{app.attr} run --host 0.0.0.0 --port $PORT"
        # --- end
        if _MAIN_GUARD.search(text) and "/" not in app.file:
            return f"python {app.file}"
        if app.interface == "wsgi" and "flask" in files.python_deps and "/" not in app.file:
            return f"flask --app {app.module}:{app.attr} run --host 0.0.0.0 --port $PORT"
    for entry in PYTHON_ENTRYPOINTS:
        # a module holding an app object nothing serves exits at once under `python`: the deploy failed at
        # health_check with "exited with code 0"; refused instead (_nothing_found says what would serve it)
        idle = app is not None and app.file == entry and not _runs_when_executed(files.text(entry) or "")
        if files.exists(entry) and not idle:
            return f"python {entry}"
    return None


# --- newuser6: `uvicorn main:app` without --host/--port (a Procfile line copied from FastAPI's `uvicorn main:app
# --reload`) listens on 127.0.0.1:8000: the bind guard refused it, and "pass port=8000" then went live on the local
# provider listening on loopback only (a port of the whole machine; on Coolify the container's loopback answers no
# one). The uvicorn CLI takes what its command line does not say from UVICORN_HOST / UVICORN_PORT; hypercorn (which
# reads no env) gets --bind 0.0.0.0:$PORT.
_SHELL_OPERATORS = re.compile(r"[;&|\n`]|\$\(")


def _uvicorn_told(process: ProcessSpec, notes: list[str]) -> ProcessSpec:
    """A routed process that is one `uvicorn ...` command naming no address: UVICORN_HOST=0.0.0.0 and UVICORN_PORT=$PORT
    in front of it for what it does not name (its own flags would win anyway), said in `notes`."""
    command = process.command
    if not process.routed or _SHELL_OPERATORS.search(command):
        return process
    try:
        argv = shlex.split(command)
    except ValueError:
        return process
    if argv and argv[0] == "hypercorn":  # Quart's deployment docs: `hypercorn module:app`; it reads no env
        if any(a in ("-b", "--bind", "--insecure-bind", "-c", "--config") or a.startswith(("--bind=", "-b", "-c",
               "--config=", "--insecure-bind=")) for a in argv[1:]):  # fmt: skip
            return process
        notes.append(f"`{command if len(command) <= 200 else command[:200] + ' …'}` names no address, where "
                     "hypercorn's default is 127.0.0.1:8000: it runs with --bind 0.0.0.0:$PORT added")
        return process.model_copy(update={"command": f"{command} --bind 0.0.0.0:$PORT"})
    if not argv or argv[0] != "uvicorn":
        return process
    given = {arg.split("=", 1)[0] for arg in argv if arg.startswith("--")}
    add = [env for env, flags in (("UVICORN_HOST=0.0.0.0", {"--host", "--uds", "--fd"}),
                                  ("UVICORN_PORT=$PORT", {"--port", "--uds", "--fd"})) if not given & flags]
    if not add:
        return process
    default = "127.0.0.1:8000" if len(add) == 2 else "host 127.0.0.1" if "HOST" in add[0] else "port 8000"
    notes.append(f"`{command if len(command) <= 200 else command[:200] + ' …'}` names no "
                 f"{'address' if len(add) == 2 else 'host' if 'HOST' in add[0] else 'port'}, where uvicorn's default "
                 f"is {default}: it runs with {' '.join(add)} (what uvicorn reads for a flag it is not given)")
    return process.model_copy(update={"command": " ".join([*add, command])})
# --- end


def _only_runs_locally(text: str, attr: str) -> bool:
    """The module's `if __name__ == '__main__':` block does nothing but `<attr>.run(...)` without `host=` (Flask's
    development server on 127.0.0.1, unreachable from outside whatever port it is given). Parsed, never run."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return False
    for node in tree.body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__"):
            continue
        calls = [s.value for s in node.body if isinstance(s, ast.Expr)]
        return bool(calls) and len(calls) == len(node.body) and not node.orelse and all(
            isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "run"
            and isinstance(c.func.value, ast.Name) and c.func.value.id == attr and not c.args
            and all(k.arg not in ("host", None) for k in c.keywords) for c in calls)
    return False


def _detect_bare_python_start(files: _Files) -> str | None:
    """`python app.py` for a dependency-free app: an app.py/main.py/server.py and no requirements file,
    package.json or index.html (a new user's agent wrote a stdlib http.server app.py and was told "looked for
    ... app.py ... Found none of them"). Only a file that runs something when executed (a `__main__` guard or
    top-level code that is not only definitions) counts, so a lone helper module is not started."""
    if files.is_python or files.is_node or files.has_index_html:
        return None
    for entry in PYTHON_ENTRYPOINTS:
        if files.exists(entry) and _runs_when_executed(files.text(entry) or ""):
            return f"python {entry}"
    return None


_TOP_LEVEL_DEFINITION = re.compile(r"^(?:import\s|from\s|def\s|async\s+def\s|class\s|@|#|[A-Za-z_]\w*\s*(?::[^=]*)?=)")


def _runs_when_executed(text: str) -> bool:
    """Whether executing the module does something beyond defining names (a call, a loop, a main guard)."""
    if _MAIN_GUARD.search(text):
        return True
    for line in text.splitlines():
        if not line or line[0].isspace() or line.startswith((")", "]", "}", '"', "'")):
            continue
        if not _TOP_LEVEL_DEFINITION.match(line):
            return True
    return False


# --- Node --------------------------------------------------------------------------------------


_PROD_SCRIPTS = ("start:prod", "start:production", "prod", "production")
_WATCHER = re.compile(r"(?:^|[\s;&|(])(?:npx\s+)?(?:nodemon|ts-node-dev|tsnd|nest\s+start|ts-node|tsx\s+watch"
                      r"|node\s+(?:[^;&|]*\s)?--watch)(?=\s|$)")
"""A start script that watches files or compiles TypeScript at each start: a development command (newuser4)."""


# --- newuser5: frameworks whose build writes a server and whose package.json has no `start` (Nuxt 3's and SvelteKit's
# templates: build, dev, preview): they were planned as static sites from 'dist' and failed after the build with
# "static_dir 'dist' does not exist after the build". A Next app exported to files (`output: 'export'`) went the other
# way: `next start` refuses that config and exits, so the deploy failed at health_check.
_NUXT_BUILD = re.compile(r"(?:^|[\s;&|(])(?:npx\s+)?nux[ti]\s+build(?=\s|$)")
_SVELTE_NODE_OUT = re.compile(r"""adapter\s*\(\s*\{[^}]*?\bout\s*:\s*['"`]([\w./-]+)['"`]""", re.S)
_NEXT_EXPORT = re.compile(r"""\boutput\s*:\s*['"`]export['"`]""")
NEXT_CONFIGS = ("next.config.js", "next.config.mjs", "next.config.ts", "next.config.cjs", "next.config.mts")


def next_exports_files(files: _Files) -> bool:
    """next.config sets `output: 'export'`: `next build` writes a static site to out/, `next start` refuses to run."""
    return "next" in files.node_deps and any(
        _NEXT_EXPORT.search(files.text(name) or "") for name in NEXT_CONFIGS if files.exists(name))


def _framework_server(files: _Files) -> str | None:
    """`node <the server the build writes>` for a framework whose template has no start script, else None."""
    scripts = files.scripts
    deps = files.node_deps
    if deps.keys() & {"nuxt", "nuxt3"} and _NUXT_BUILD.search(scripts.get("build", "")):
        return "node .output/server/index.mjs"  # Nitro's node-server preset: reads PORT, listens on every address
    if "@sveltejs/kit" in deps and "@sveltejs/adapter-node" in deps and "build" in scripts:
        config = next((files.text(n) or "" for n in ("svelte.config.js", "svelte.config.mjs", "svelte.config.ts")
                       if files.exists(n)), "")
        out = _SVELTE_NODE_OUT.search(config)
        out_dir = out[1].strip("/") if out and ".." not in out[1].split("/") and not out[1].startswith("/") else "build"
        return f"node {out_dir}"  # adapter-node's server: reads PORT, HOST defaults to 0.0.0.0
    return None
# --- end


def _detect_node_start(files: _Files) -> str | None:
    """The command that runs the Node app in production, "" for a static site built by its build script,
    or None when package.json says nothing runnable."""
    package = files.package_json
    if package is None:
        return None
    scripts = files.scripts
    is_next = "next" in files.node_deps
    start = scripts.get("start")
    # --- newuser5
    if is_next and "build" in scripts and (start is None or is_dev_server(start, package) or re.search(
            r"\bnext\s+start\b", start)) and next_exports_files(files):
        return ""  # the site `next build` exports to out/
    if start is None and (server := _framework_server(files)):
        return server
    # --- end
    if start is not None and is_dev_server(start, package):
        if is_next:
            return "npx next start"  # built by `npm run build` (or `next build`) first; reads $PORT
        if "build" in scripts:
            return ""  # a dev server in front of a production build: serve the build instead
    # --- newuser4: `start` runs a file watcher or compiles at each start (nodemon, nest start, ts-node) and the repo
    # has a production script beside it (NestJS's start:prod, the Express templates'): nodemon went live watching files
    prod = next((name for name in _PROD_SCRIPTS if isinstance(scripts.get(name), str)), None)
    if start is not None and prod is not None and _WATCHER.search(start):
        return f"npm run {prod}"
    # --- end
    if start is not None:
        return "npm start"
    if is_next and "build" in scripts:
        return "npx next start"
    main = package.get("main")
    # `npm init` writes "main": "index.js" into every package.json, frontends included: only trust
    # it when the file exists.
    if isinstance(main, str) and main.strip() and files.exists(main):
        return f"node {main}"
    if files.exists("server.js"):
        return "node server.js"
    return None


def _node_build_script(files: _Files) -> str | None:
    if "build" in files.scripts:
        return "npm run build"
    if "next" in files.node_deps and files.package_json is not None:
        return "npx next build"
    return None


def _guess_static_dir(files: _Files) -> str | None:
    """Where a static site's files are (or will be, after the build)."""
    if files.package_json is not None and _node_build_script(files):
        deps = files.node_deps
        if "react-scripts" in deps:
            return "build"
        if "next" in deps:
            return "out"
        if "gatsby" in deps:
            return "public"
        for candidate in STATIC_DIR_CANDIDATES:
            if (files.root / candidate / "index.html").is_file():
                return candidate
        return "dist"
    for candidate in STATIC_DIR_CANDIDATES:
        if (files.root / candidate / "index.html").is_file():
            return candidate
    if files.has_index_html:
        return "."
    return None


def _pick_stack(files: _Files, command: str | None, static_only: bool) -> Stack:
    """One installer per service; when both ecosystems are present, the start command decides."""
    first = (command or "").strip().split(" ", 1)[0].rsplit("/", 1)[-1]
    if files.is_python and files.is_node:
        if first in _NODE_HINTS:
            return Stack.node
        if first in _PY_HINTS:
            return Stack.python
        if static_only and _node_build_script(files):
            return Stack.node
        return Stack.python if _detect_python_start(files) or not _detect_node_start(files) else Stack.node
    if files.is_python:
        return Stack.python
    if files.is_node:
        return Stack.node
    if static_only or (files.has_index_html and command is None):
        return Stack.static  # an index.html next to a process to run is a page that app serves, not the app
    if first in _PY_HINTS:
        # A dependency-free Python app still needs `python` on PATH (Debian ships only python3):
        # the Python buildpack gives it a virtualenv.
        return Stack.python
    return Stack.none


def _check_port(port: int | None, *, argument: str) -> None:
    if port is not None and not 1 <= port <= 65535:
        raise InvalidArgument(
            f"port {port} is out of range.",
            argument=argument,
            fix="pass a TCP port between 1 and 65535 (e.g. 8000), or omit it to use $PORT",
        )


def _check_relative(value: str | None, argument: str) -> str | None:
    if value is None:
        return None
    posix = PurePosixPath(value.strip() or ".")
    if posix.is_absolute() or ".." in posix.parts:
        raise InvalidArgument(
            f"{value!r} is not a relative path inside the repository.",
            argument=argument,
            # --- newuser4: app_dir was told "relative to the app directory ..., e.g. 'dist'" (static_dir's example)
            fix=f"pass {argument} relative to the repository root without '..', e.g. 'backend' or 'apps/web'"
            if argument == "app_dir" else f"pass {argument} relative to the app directory without '..', e.g. 'dist'",
        )
    return str(posix)


def _manifest_entry(manifest: Manifest | None, service_name: str, *, required: bool) -> ServiceEntry | None:
    if manifest is None:
        return None
    entry = manifest.services.get(service_name)
    if entry is None and required:
        names = ", ".join(sorted(manifest.services))
        raise BuildPlanError(
            f"inkmcp.yaml defines the services {names} but not {service_name!r}.",
            argument="service_name",
            fix=f"pass service_name as one of: {names}; or add `{service_name}:` under `services:` in "
            "inkmcp.yaml; or pass start_command",
        )
    return entry


def _platform_processes(
    platform: PlatformService, *, service_name: str, single_name: str, routed_single: bool, kind: ServiceType | None
) -> tuple[ProcessSpec, ...]:
    assert platform.start is not None
    if platform.kind == "worker":
        return (ProcessSpec(name=service_name, command=platform.start, routed=kind == ServiceType.webapp),)
    main = ProcessSpec(name=single_name, command=platform.start, routed=routed_single)
    if not routed_single:
        return (main,)
    extra = tuple(
        ProcessSpec(name=name, command=command, routed=False)
        for name, command in platform.workers.items()
        if name != single_name
    )
    return (main, *extra)


_PACKAGE_APP_FILES = ("main.py", "app.py", "asgi.py", "wsgi.py", "server.py", "api.py")


def _packaged_app_command(files: _Files) -> tuple[str, str] | None:
    """(start command, where its app object is) for an app object in a package, `src/<pkg>/main.py` or
    `<pkg>/main.py`, served by the production server the dependencies list; None when there is not exactly one.
    Only a hint in the refusal: a FastAPI app in a src layout (no Procfile) was refused with "e.g. 'python
    app.py'", which does not run an ASGI app; the agent now gets the command to pass."""
    found: list[tuple[str, str]] = []
    for base in ("src/", ""):
        if base and not (files.root / "src").is_dir():
            continue
        packages = sorted(p for p in (files.root / base).iterdir() if p.is_dir() and not p.is_symlink())[:30]
        for package in packages:
            if not (package / "__init__.py").is_file() or package.name in ("src", "tests", "test"):
                continue
            for name in (*_PACKAGE_APP_FILES, "__init__.py"):  # newuser5: the package itself (Flask's tutorial)
                rel = f"{base}{package.name}/{name}"
                text = files.text(rel) if files.exists(rel) else None
                module = package.name if name == "__init__.py" else f"{package.name}.{name.removesuffix('.py')}"
                match = next((m for m in _ASSIGN.finditer(text or "")
                              if m["call"].rsplit(".", 1)[-1] not in _FACTORIES and _interface_of(files, m["call"])),
                             None)
                # --- newuser5: `def create_app():` in flaskr/__init__.py (the Flask tutorial's layout) was refused
                # with "e.g. 'python app.py'" (there is no app.py); its command is named now
                factory = _FACTORY_DEF.search(text or "") if match is None else None
                if factory is not None and (interface := _framework_interface(files)):
                    app = _AppObject(rel, module, factory["name"], interface, factory=True)
                    server = _server_command(files, app) or (
                        f"flask --app {module}:{app.attr} run --host 0.0.0.0 --port $PORT"
                        if "flask" in files.python_deps and not base else None)
                    if server is not None:
                        found.append((server, f"`def {app.attr}(` in {rel}"))
                        break
                # --- end
                if match is None:
                    continue
                server = _server_command(files, _AppObject(rel, module, match["var"],
                                                           _interface_of(files, match["call"]) or ""))
                if server is None and "flask" in files.python_deps and not base and \
                        _interface_of(files, match["call"]) == "wsgi":  # newuser5
                    server = f"flask --app {module}:{match['var']} run --host 0.0.0.0 --port $PORT"
                if server is None:
                    continue
                if base:  # the project itself is not installed: the server imports from src/
                    server = server.replace(" --host ", " --app-dir src --host ", 1) if server.startswith(
                        "uvicorn ") else server.replace(" --bind ", " --chdir src --bind ", 1) if server.startswith(
                        "gunicorn ") else ""
                if server:
                    found.append((server, f"`{match['var']} = {match['call']}(` in {rel}"))
                break
    return found[0] if len(found) == 1 else None


_APP_MARKERS = ("package.json", "requirements.txt", "pyproject.toml", "Pipfile", "manage.py", "Procfile",
                "index.html", *PYTHON_ENTRYPOINTS)
_NOT_APPS = frozenset({"node_modules", "docs", "doc", "tests", "test", "scripts", "examples", ".github", ".git"})


def _app_subdirectories(root: Path) -> list[tuple[str, str]]:
    """(directory, the file that marks it as an app) for the repo's first-level subdirectories, sorted, bounded;
    --- newuser3: and for the second level beneath a first-level directory that is no app itself (`services/api`,
    `apps/web`: a monorepo's usual layouts, whose root refusal named no directory at all)."""
    found: list[tuple[str, str]] = []
    containers = 0
    for child in _subdirectories(root, 100):
        marker = _app_marker(child)
        if marker is not None:
            found.append((child.name, marker))
        elif containers < _CONTAINERS_SCANNED:
            containers += 1
            # a Python package (src/api/__init__.py) is imported through its parent (the src layout's own
            # detection names `uvicorn api.main:app --app-dir src`), not run as an app directory of a monorepo
            inner = [d for d in _subdirectories(child, 30)
                     if d.name.lower() not in _NOT_APPS_BELOW and not (d / "__init__.py").is_file()]
            found += [(f"{child.name}/{d.name}", m) for d in inner if (m := _app_marker(d)) is not None]
    return sorted(found)


# an app's own page directories (a package's templates/index.html), not apps of a monorepo
_NOT_APPS_BELOW = frozenset({"templates", "static", "public", "assets", "dist", "build"})
_CONTAINERS_SCANNED = 20  # --- newuser3: first-level directories without an app whose own subdirectories are read


def _subdirectories(directory: Path, limit: int) -> list[Path]:
    """The subdirectories that may hold an app (not hidden, docs, tests, node_modules, ...), sorted, at most `limit`."""
    try:
        children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())[:limit * 2]
    except OSError:
        return []
    return [c for c in children if not c.name.startswith(".") and c.name.lower() not in _NOT_APPS][:limit]


def _app_marker(directory: Path) -> str | None:
    return next((m for m in _APP_MARKERS if (directory / m).is_file() and not (directory / m).is_symlink()), None)


def _service_name_for(directory: str) -> str:
    """A DNS-label service name for an app directory ("Backend_API" -> "backend-api")."""
    name = re.sub(r"[^a-z0-9]+", "-", directory.lower()).strip("-")[:63].strip("-")
    return name or "web"


def _with_dep(files: _Files, name: str) -> _Files:
    """The same files as if the dependencies also listed `name` (for the command the refusal suggests)."""
    return _Files(root=files.root, checkout=files.checkout, package_json=files.package_json,
                  python_deps=files.python_deps | {name}, is_python=files.is_python, is_node=files.is_node,
                  has_index_html=files.has_index_html)  # fmt: skip


# --- newuser2: a repo in a language InkMCP does not build (its marker file, the language, whether a committed
# static binary is a way out). The error said only "pass start_command (e.g. 'python app.py')", and an agent
# then passed `go run .` and got "could not run go" at health_check.
_FOREIGN = (
    ("go.mod", "Go", "go", "CGO_ENABLED=0 GOOS=linux GOARCH={arch} go build -o bin/server ."),
    ("Cargo.toml", "Rust", "cargo", "cargo build --release --target {arch}-unknown-linux-musl, copied to bin/server"),
    ("Gemfile", "Ruby", "ruby/bundle", None),
    ("composer.json", "PHP", "php", None),
    ("index.php", "PHP", "php", None),
    ("pom.xml", "Java", "java/mvn", None),
    ("build.gradle", "Java/Kotlin", "java/gradle", None),
    ("build.gradle.kts", "Kotlin", "java/gradle", None),
    ("mix.exs", "Elixir", "mix", None),
    ("deno.json", "Deno", "deno", None),
    ("deno.jsonc", "Deno", "deno", None),
    ("pubspec.yaml", "Dart", "dart", None),
)
SUPPORTED = ("Python (requirements.txt, pyproject.toml, Pipfile, poetry.lock, uv.lock or setup.py), "
             "Node.js (package.json with a start script, or a build script for a static site) and static sites "
             "(index.html)")


def _foreign_language(files: _Files) -> tuple[str, str, str, str | None] | None:
    """(marker file, language, its commands, how to build a static binary) of a language InkMCP cannot build."""
    for marker, language, tools, binary in _FOREIGN:
        if files.exists(marker):
            return marker, language, tools, binary
    try:
        dotnet = next((p.name for p in files.root.iterdir() if p.suffix in (".csproj", ".fsproj", ".sln")), None)
    except OSError:
        dotnet = None
    return (dotnet, ".NET", "dotnet", None) if dotnet else None


def _unsupported_language(files: _Files, foreign: tuple[str, str, str, str | None]) -> BuildPlanError:
    """The refusal for a Go/Ruby/PHP/... repo: what it is, what InkMCP builds, and the ways to deploy it anyway."""
    marker, language, tools, binary = foreign
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(_platform.machine(), _platform.machine())
    ways = []
    if binary is not None:
        target = "x86_64" if arch == "amd64" else "aarch64"
        ways.append("build a static Linux binary yourself (" + binary.format(arch=arch if "go" in binary else target)
                    + "), commit it and pass start_command='./bin/server' (it must listen on $PORT)")
    apps = _app_subdirectories(files.root) if files.root == files.checkout else []
    if apps:
        shown = ", ".join(f"{name} ({m})" for name, m in apps[:6])
        ways.append(f"deploy the repo's Python/Node part: pass app_dir as one of {shown}")
    else:
        ways.append("put a Python or Node.js app in the repo (e.g. a requirements.txt or package.json with its "
                    "code; in a subdirectory: pass app_dir)")
    return BuildPlanError(
        f"this looks like a {language} app ({marker}), and InkMCP has no {language} builder: it builds "
        f"{SUPPORTED}. It installs no {language} toolchain: a start_command or build_command running "
        f"{' or '.join(f'`{t}`' for t in tools.split('/'))} works only if the operator installed it on the server "
        "(else: 'could not run ...: No such file or directory').",
        argument="repo_url",
        fix="; or ".join(ways),
    )


def _workspace_apps(files: _Files) -> list[str]:
    """npm/yarn/pnpm workspace directories (package.json `workspaces`) whose package.json has a start script."""
    spec = (files.package_json or {}).get("workspaces")
    patterns = spec.get("packages") if isinstance(spec, dict) else spec
    if not isinstance(patterns, list) and (pnpm := files.text("pnpm-workspace.yaml")) is not None:
        try:  # pnpm keeps its workspaces in pnpm-workspace.yaml, not package.json
            loaded = yaml.safe_load(pnpm)
        except yaml.YAMLError:
            loaded = None
        patterns = loaded.get("packages") if isinstance(loaded, dict) else None
    if not isinstance(patterns, list):
        return []
    found: list[str] = []
    for pattern in patterns[:20]:
        if not isinstance(pattern, str) or pattern.startswith(("/", "!")) or ".." in pattern:
            continue
        try:
            dirs = sorted(files.root.glob(pattern.rstrip("/")))[:50]
        except (ValueError, OSError):
            continue
        for d in dirs:
            package = d / "package.json"
            if d.is_symlink() or not package.is_file() or package.is_symlink():
                continue
            rel = d.relative_to(files.root).as_posix()
            text = read_repo_text(files.root, f"{rel}/package.json", root=files.checkout)
            try:
                scripts = json.loads(text or "{}").get("scripts") or {}
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(scripts, dict) and (scripts.get("start") or scripts.get("build")) and rel not in found:
                found.append(rel)
    return found[:8]
# --- end newuser2


def _code_in_subdirectory(files: _Files) -> tuple[str, str] | None:
    """--- newuser2: (directory, start command) when the root lists the dependencies (requirements.txt with gunicorn)
    and the app object is in a first-level subdirectory (backend/app.py): app_dir there would lose the root's
    requirements, so the command runs from the root with the server's own directory switch."""
    if files.root != files.checkout or not files.is_python:
        return None
    for directory, _marker in _app_subdirectories(files.root)[:10]:
        sub = _Files(root=files.root / directory, checkout=files.checkout, python_deps=files.python_deps,
                     is_python=True)  # fmt: skip
        app = _find_app_object(sub)
        command = _server_command(sub, app) if app is not None else None
        if command is None:
            continue
        if command.startswith("gunicorn "):
            return directory, command.replace("gunicorn ", f"gunicorn --chdir {directory} ", 1)
        if command.startswith("uvicorn "):
            return directory, command.replace("uvicorn ", f"uvicorn --app-dir {directory} ", 1)
    return None


def _root_dependencies(files: _Files) -> str | None:
    """--- newuser2: the dependency file of the repo root when app_dir points below it and has none of its own."""
    if files.root == files.checkout or files.is_python:
        return None
    return next((name for name in ("requirements.txt", "pyproject.toml", "Pipfile")
                 if (files.checkout / name).is_file()), None)  # fmt: skip


def _nothing_found(files: _Files, platform: PlatformService, service_name: str) -> BuildPlanError:
    """The error when nothing says how to run the app: what was looked for, what was found, what to pass."""
    foreign = _foreign_language(files)
    if foreign is not None and not files.is_python and not _workspace_apps(files) and not (
            files.package_json and (files.scripts.get("build") or files.scripts.get("start"))):
        return _unsupported_language(files, foreign)
    present = [name for name in _SHOWN_FILES if files.exists(name)]
    present += [name for name in platform.files if name not in present]
    entries = [name for name in PYTHON_ENTRYPOINTS if files.exists(name)]
    present += [name for name in entries if name not in present]
    found = f" Found: {', '.join(present)}." if present else " Found none of them."
    why = [e.message for e in platform.errors][:2]
    why += [n for n in platform.notes if "Docker" in n or "[processes]" in n][:2]
    if files.package_json is not None:
        why.append("package.json has no scripts.start, no existing `main` file and there is no server.js")
    bare_app = _find_app_object(files) if entries else None
    if entries and not files.is_python:
        why.append(f"{entries[0]} only defines names (no `if __name__ == '__main__':` and no top-level call) and "
                   "there is no requirements.txt or pyproject.toml naming the packages it needs")
    elif bare_app is not None:
        why.append(f"{bare_app.file} defines `{bare_app.attr}` ({bare_app.interface.upper()}) but does not run it, "
                   "and the dependencies list no server for it (gunicorn, uvicorn, hypercorn, waitress)")
    fix = _NOTHING_FOUND_FIX
    if bare_app is not None and not files.is_python:
        server = "uvicorn" if bare_app.interface == "asgi" else "gunicorn"
        fix = (f"add a requirements.txt listing the packages {bare_app.file} imports and {server} (InkMCP installs it "
               f"and runs the app with {server}), or {fix}")
    elif bare_app is not None:
        server = "uvicorn" if bare_app.interface == "asgi" else "gunicorn"
        command = _server_command(_with_dep(files, server), bare_app)
        fix = (f"add {server} to the dependencies (InkMCP then runs `{command}`), or pass start_command={command!r} "
               f"with {server} in the dependencies")
    packaged = _packaged_app_command(files) if files.is_python else None
    if packaged is not None:
        fix = f"pass start_command={packaged[0]!r} (found {packaged[1]}), or add a Procfile with that `web:` line"
    if (below := _code_in_subdirectory(files)) is not None and not entries:  # --- newuser2
        fix = (f"the dependencies are at the root and the app in {below[0]}/: pass start_command={below[1]!r} and no "
               f"app_dir (so the root's {', '.join(n for n in _SHOWN_FILES if files.exists(n))} is installed), or "
               f"{fix}")
    elif (deps := _root_dependencies(files)) is not None and bare_app is not None:  # --- newuser2
        fix = (f"the repo root's {deps} is not read for app_dir {files.root.relative_to(files.checkout).as_posix()!r}:"
               f" omit app_dir and pass start_command naming the directory, e.g. "
               f"'gunicorn --chdir {files.root.relative_to(files.checkout).as_posix()} {bare_app.module}:"
               f"{bare_app.attr} --bind 0.0.0.0:$PORT' (or uvicorn's --app-dir), or {fix}")
    if files.exists("Dockerfile"):
        fix += "; InkMCP builds from source and does not run the Dockerfile: pass its CMD as start_command"
        if (cmd := dockerfile_command(files.text("Dockerfile") or "")) is not None:  # --- newuser3: which CMD
            fix += f" (start_command={cmd!r}; the app must listen on $PORT, not the port the Dockerfile EXPOSEs)"
    # --- mcpbudget (issue 13): deploy_app's app_dir has no description in tools/list (budget); the hint is here
    if files.root == files.checkout:
        apps = _app_subdirectories(files.root)
        if apps and not present:
            # a monorepo's root (backend/ + frontend/): name the directories, one deploy_app call each
            shown = ", ".join(f"{name} ({marker})" for name, marker in apps[:6])
            first = apps[0][0]
            fix = (f"the apps are in subdirectories: pass app_dir as one of {shown}, with a service_name per app "
                   f"(e.g. app_dir={first!r}, service_name={_service_name_for(PurePosixPath(first).name)!r}); "
                   f"or {fix}")
        elif workspaces := _workspace_apps(files):
            # --- newuser2: an npm workspaces root (apps in packages/*): name them, as for a plain monorepo
            fix = (f"this is a workspaces root: pass app_dir as one of {', '.join(workspaces)} (the install runs "
                   f"from this root's lock file), with a service_name per app (e.g. app_dir={workspaces[0]!r}, "
                   f"service_name={_service_name_for(PurePosixPath(workspaces[0]).name)!r}); or {fix}")
        elif below is None:
            fix += "; if the app is in a subdirectory (a monorepo), pass app_dir (that directory)"
    # --- end
    return BuildPlanError(
        "nothing says how to run this app: looked for a start command in the call, an inkmcp.yaml entry for "
        f"{service_name!r}, a Procfile, render.yaml, railway.json/railway.toml, fly.toml [processes], "
        f"package.json scripts.start or main, server.js, {', '.join(PYTHON_ENTRYPOINTS)}, wsgi.py, manage.py, "
        f"and for index.html (a static site).{found}" + (f" ({'; '.join(why)})" if why else ""),
        argument="start_command",
        fix=fix,
    )


def derive_plan(
    checkout: Path,
    *,
    service_name: str,
    service_type: ServiceType | None,
    build_command: str | None,
    start_command: str | None,
    port: int | None,
    static_dir: str | None = None,
    app_dir: str | None = None,
) -> tuple[BuildPlan, ServiceType]:
    """Decide what to build and run for `service_name` in `checkout`; return (plan, service type).

    Raises BuildPlanError / InvalidArgument naming the argument to change when the inputs
    contradict each other or nothing says how to run the app.
    """
    _check_port(port, argument="port")
    static_dir = _check_relative(static_dir, "static_dir")
    app_dir = _check_relative(app_dir, "app_dir")
    start_command = start_command.strip() if start_command and start_command.strip() else None
    build_command = build_command.strip() if build_command and build_command.strip() else None
    if service_type == ServiceType.webapp_static and start_command:
        raise InvalidArgument(
            "a webapp_static service serves files and runs no process, but start_command was given.",
            argument="start_command",
            fix="omit start_command for webapp_static, or pass service_type='webapp' to run a server",
        )

    manifest = load_manifest(checkout)
    explicit = start_command is not None or service_type == ServiceType.webapp_static
    entry = _manifest_entry(manifest, service_name, required=not explicit)

    chosen_dir = app_dir or (entry.path if entry else None)
    platform = load_platform_files(checkout, service_name=service_name, app_dir=chosen_dir)
    rel_dir = chosen_dir or platform.root_dir or "."
    root = (checkout / rel_dir).resolve()
    if not root.is_relative_to(checkout.resolve()) or not root.is_dir():
        # --- newuser2: name the directories that do hold an app (first level, and workspaces)
        try:
            workspaces = _workspace_apps(_scan(checkout, checkout))
        except InkError:  # a root package.json that is not JSON: no workspaces to name
            workspaces = []
        # --- newuser3: a workspace the second level names too (packages/api) is named once, as a workspace
        apps = [f"{name} ({marker})" for name, marker in _app_subdirectories(checkout) if name not in workspaces]
        apps += workspaces
        raise BuildPlanError(
            f"app directory {rel_dir!r} does not exist in the repository"
            + (f"; directories holding an app: {', '.join(apps[:8])}." if apps else "."),
            argument="app_dir" if app_dir else "repo_url",
            fix="pass the directory that holds the app (relative to the repo root), or fix `path:` in inkmcp.yaml "
            "(or `rootDir:` in render.yaml)",
        )
    files = _scan(root, checkout)

    procfile: Procfile | None = None
    procfile_error: InkError | None = None
    try:
        procfile = load_procfile(root, checkout=checkout)
    except InkError as exc:
        procfile_error = exc

    kind = service_type or (entry.type if entry else None)
    build = build_command or (entry.build if entry else None) or platform.build
    release = (entry.release if entry else None) or (procfile.release if procfile else None) or platform.release
    the_port = port if port is not None else (entry.port if entry else None)
    wanted_static = static_dir or (entry.static_dir if entry else None)
    if entry and entry.type == ServiceType.webapp_static and entry.start and service_type is None:
        raise BuildPlanError(
            f"inkmcp.yaml service {service_name!r} is webapp_static but has `start:`.",
            argument="repo_url",
            fix="remove `start:` from that service in inkmcp.yaml or change its type to webapp",
        )

    processes: tuple[ProcessSpec, ...] = ()
    source: str | None = None
    routed_single = kind != ServiceType.backend
    single_name = "web" if routed_single else service_name
    notes = list(platform.notes)
    if kind == ServiceType.webapp_static:
        source = "call" if service_type else "manifest"
    elif start_command:
        processes, source = (ProcessSpec(name=single_name, command=start_command, routed=routed_single),), "call"
    elif entry and entry.start:
        processes = (ProcessSpec(name=single_name, command=entry.start, routed=routed_single),)
        source = "manifest"
    elif procfile_error is not None:
        raise procfile_error
    elif procfile is not None and procfile.processes:
        if service_name in procfile.processes and service_name != "web":
            spec = procfile.specs(only=service_name)[0]
            processes = (spec.model_copy(update={"routed": kind == ServiceType.webapp}),)
        else:
            processes = tuple(p for p in procfile.specs() if p.name not in platform.scaled_to_zero)
            notes += [
                f"app.json formation runs {n!r} with quantity 0: not started"
                for n in sorted(platform.scaled_to_zero & set(procfile.processes))
            ]
        source = "procfile"
        # --- newuser3: named in the queued event as a detected command is (it said only "queued: commit ...")
        shown = [(p.name, p.command) for p in processes] + ([("release", release)] if release else [])
        notes.insert(0, "runs the Procfile's " + ", ".join(
            f"{name}: `{command if len(command) <= 200 else command[:200] + ' …'}`" for name, command in shown))
    elif platform.source is not None:
        source = platform.source
        if platform.kind == "static":
            kind = kind or ServiceType.webapp_static
            wanted_static = wanted_static or platform.static_dir
        else:
            if kind is None and platform.kind == "worker":
                kind = ServiceType.backend
                routed_single, single_name = False, service_name
            processes = _platform_processes(
                platform, service_name=service_name, single_name=single_name, routed_single=routed_single, kind=kind
            )
            if the_port is None:
                the_port = platform.port
    else:
        if platform.candidates:
            names = ", ".join(platform.candidates)
            raise BuildPlanError(
                f"render.yaml defines several services ({names}) and none is named {service_name!r}.",
                argument="service_name",
                fix="pass service_name as the name of the render.yaml service to deploy (one deploy_app call "
                "per service), or pass start_command",
            )
        detected = _detect_python_start(files) if files.is_python else _detect_bare_python_start(files)
        if not detected:
            node = _detect_node_start(files)
            if node == "" and kind in (None, ServiceType.webapp_static):
                kind = ServiceType.webapp_static
                notes.append("next.config sets output: 'export': serving the files `npm run build` writes (out/)"
                             if next_exports_files(files) else  # newuser5
                             "package.json `start` runs a dev server: serving the output of `npm run build` instead")
            elif node == "":  # service_type says a process must run: the agent's choice, run its start script
                node = "npm start"
            detected = node or None
        if detected:
            processes = (ProcessSpec(name=single_name, command=detected, routed=routed_single),)
            source = "detected"
            # shown in the deployment's queued event: a detected command that fails ("exited with code 0") was
            # otherwise never named to the agent, who could not tell what ran
            notes.insert(0, f"runs `{detected}` (detected; start_command overrides)")
    notes += [f"{e.message} (file skipped)" for e in platform.errors]

    if processes:  # --- newuser6
        processes = tuple(_uvicorn_told(p, notes) for p in processes)
    if processes and (sqlite := _sqlite_use(files)):  # --- newuser4
        notes.append(_SQLITE_NOTE.format(where=sqlite))
    if processes and files.exists("manage.py") and (hosts := _django_allowed_hosts_note(files)):  # newuser5
        notes.append(hosts)
    is_static = not processes
    command_hint = processes[0].command if processes else None
    stack = _pick_stack(files, command_hint, static_only=is_static)
    if stack == Stack.node and build is None:
        build = _node_build_script(files)

    if is_static:
        the_static_dir = wanted_static or _guess_static_dir(files)
        if the_static_dir is None:
            if kind == ServiceType.webapp_static:
                raise BuildPlanError(
                    "webapp_static needs a directory of files to serve, and none was found "
                    f"(looked for index.html in ., {', '.join(STATIC_DIR_CANDIDATES)}).",
                    argument="static_dir",
                    fix="pass static_dir (the directory holding index.html after the build, e.g. 'dist')",
                )
            raise _nothing_found(files, platform, service_name)
        if stack == Stack.static and not (root / the_static_dir / "index.html").is_file() and not build:
            raise BuildPlanError(
                f"static_dir {the_static_dir!r} has no index.html and there is no build command to make one.",
                argument="static_dir",
                fix="pass the directory that holds index.html, or a build_command that creates it",
            )
        source = source or ("call" if static_dir else "manifest" if wanted_static else "detected")
        if kind is None:
            kind = ServiceType.webapp_static
    else:
        the_static_dir = wanted_static

    has_route = any(p.routed for p in processes)
    if kind == ServiceType.webapp and not has_route and processes:
        raise BuildPlanError(
            f"service_type is webapp but no process receives HTTP traffic (processes: "
            f"{', '.join(p.name for p in processes)}).",
            argument="service_type",
            fix="add a `web:` line to the Procfile, pass start_command for the web server, or pass "
            "service_type='backend' for a worker",
        )
    if kind is None:
        kind = ServiceType.webapp if has_route else ServiceType.backend

    # --- newuser4: the health check's path, from inkmcp.yaml, else the platform file that names one; said in the queued
    # event (only a routed process is asked: a static site's own server and a worker are not)
    health_path = None
    if has_route:
        health_path = (entry.health_path if entry else None) or platform.health_path
        if health_path:
            given = f"{MANIFEST} health_path" if entry and entry.health_path else platform.health_from
            notes.append(f"health check: GET {health_path} ({given})")
    # --- end
    plan = BuildPlan(
        stack=stack,
        app_dir=str(PurePosixPath(root.relative_to(checkout.resolve()))) or ".",
        build_command=build,
        processes=processes,
        release_command=release,
        static_dir=the_static_dir,
        port=the_port,
        health_path=health_path,  # newuser4
        django=stack == Stack.python and files.exists("manage.py"),
        source=source or "detected",
        mode=entry.mode if entry else None,
        static_dir_given=the_static_dir is not None and the_static_dir == wanted_static,
        env_defaults=platform.env_defaults,
        env_links=platform.env_links,
        wants=tuple(platform.wants),
        notes=tuple(notes[:MAX_NOTES])
        + ((f"... and {len(notes) - MAX_NOTES} more",) if len(notes) > MAX_NOTES else ()),
    )
    # --- mender6 (item 1): inkmcp.yaml's mode must describe what runs (the call's is checked by plan.resolve_mode)
    if entry is not None and entry.mode is not None:
        _check_manifest_mode(entry.mode, service_name, kind, processes)
    # --- end mender6
    return plan, kind


def _check_manifest_mode(mode: Mode, service_name: str, kind: ServiceType, processes: tuple[ProcessSpec, ...]) -> None:
    """inkmcp.yaml's `mode:` for the service contradicts what it is: the repo's file is wrong, not the call."""
    try:
        check_mode(mode, static_site=kind == ServiceType.webapp_static,
                   runs=processes[0].command if processes else None,
                   routed=any(p.routed for p in processes) or not processes)  # fmt: skip  (newuser4)
    except InvalidArgument as e:
        what = "it serves files" if kind == ServiceType.webapp_static else "it runs a process"
        raise BuildPlanError(
            f"inkmcp.yaml service {service_name!r} has `mode: {mode}`, but {what}: {e.message}",
            argument="repo_url",
            fix=f"change or remove `mode:` of {service_name!r} in inkmcp.yaml (static for a site of files; "
            "persistent or on_demand for a server), commit and push",
        ) from None
