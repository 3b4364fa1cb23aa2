"""Derive a BuildPlan from call arguments, `inkmcp.yaml`, a Procfile and the repo's files.

Precedence, field by field: call arguments > the inkmcp.yaml entry for the service > Procfile >
detection. The stack (which dependency installer runs) is always inferred from the files, even
when the start command is given, so `start_command="gunicorn app:app"` still gets its
requirements.txt installed.

Detection is deliberately conservative: it only picks a start command when a file says so
unambiguously, and otherwise fails with an error listing what it looked for, because a wrong
guess costs an agent a slow failed deploy, while a precise error costs it one retry.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from inkmcp.build.manifest import Manifest, ServiceEntry, load_manifest, read_repo_text
from inkmcp.build.plan import BuildPlan, ProcessSpec, ServiceType, Stack
from inkmcp.build.procfile import Procfile, load_procfile
from inkmcp.errors import BuildPlanError, InkError, InvalidArgument

PYTHON_ENTRYPOINTS = ("app.py", "main.py", "server.py")
STATIC_DIR_CANDIDATES = ("dist", "build", "out", "public")
_PY_HINTS = ("python", "python3", "gunicorn", "uvicorn", "hypercorn", "daphne", "flask", "django-admin")
_NODE_HINTS = ("node", "npm", "npx", "yarn", "pnpm", "bun")
_NOTHING_FOUND_FIX = (
    "pass start_command (e.g. 'python app.py' — the app must listen on $PORT) or add a Procfile with a `web:` line"
)


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


def _requirement_names(text: str) -> set[str]:
    """Distribution names in requirements-style lines (`Django>=4`, `gunicorn[gevent]==21`)."""
    names = set()
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)", line)
        if match and not line.startswith("-"):
            names.add(re.sub(r"[-_.]+", "-", match[1]).lower())
    return names


def _scan(root: Path, checkout: Path) -> _Files:
    files = _Files(root=root, checkout=checkout)
    requirements = files.text("requirements.txt")
    pyproject = files.text("pyproject.toml")
    files.is_python = requirements is not None or pyproject is not None or files.exists("setup.py")
    if requirements is not None:
        files.python_deps |= _requirement_names(requirements)
    if pyproject is not None:
        try:
            deps = tomllib.loads(pyproject).get("project", {}).get("dependencies", [])
            files.python_deps |= _requirement_names("\n".join(d for d in deps if isinstance(d, str)))
        except tomllib.TOMLDecodeError as exc:
            raise BuildPlanError(
                f"pyproject.toml is not valid TOML: {exc}.",
                argument="repo_url",
                fix="fix pyproject.toml, commit and push, then deploy again",
            ) from None
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


def _django_command(files: _Files) -> str:
    """gunicorn when the app lists it (production server), else Django's own server on $PORT."""
    manage = files.text("manage.py") or ""
    match = re.search(r"""DJANGO_SETTINGS_MODULE['"]\s*,\s*['"]([\w.]+)\.settings['"]""", manage)
    project = match[1] if match else None
    if project is None:
        wsgi = sorted(p.parent.name for p in files.root.glob("*/wsgi.py"))
        project = wsgi[0] if len(wsgi) == 1 else None
    if project and "gunicorn" in files.python_deps:
        return f"gunicorn {project}.wsgi --bind 0.0.0.0:$PORT"
    return "python manage.py runserver 0.0.0.0:$PORT --noreload"


def _python_entry_command(files: _Files, entry: str) -> str:
    """`python app.py` unless the file only defines an ASGI/WSGI `app` that needs a server to run."""
    text = files.text(entry) or ""
    module = entry.removesuffix(".py")
    if re.search(r"""__name__\s*==\s*['"]__main__['"]""", text):
        return f"python {entry}"
    if re.search(r"^app\s*=\s*(fastapi\.)?(FastAPI|Starlette)\(", text, re.M) and "uvicorn" in files.python_deps:
        return f"uvicorn {module}:app --host 0.0.0.0 --port $PORT"
    if re.search(r"^app\s*=\s*(flask\.)?Flask\(", text, re.M):
        if "gunicorn" in files.python_deps:
            return f"gunicorn {module}:app --bind 0.0.0.0:$PORT"
        if "flask" in files.python_deps:
            return f"flask --app {module} run --host 0.0.0.0 --port $PORT"
    return f"python {entry}"


def _detect_python_start(files: _Files) -> str | None:
    if not files.is_python:
        return None
    if files.exists("manage.py"):
        return _django_command(files)
    for entry in PYTHON_ENTRYPOINTS:
        if files.exists(entry):
            return _python_entry_command(files, entry)
    return None


def _detect_node_start(files: _Files) -> str | None:
    package = files.package_json
    if package is None:
        return None
    scripts = package.get("scripts") if isinstance(package.get("scripts"), dict) else {}
    if isinstance(scripts.get("start"), str) and scripts["start"].strip():
        return "npm start"
    main = package.get("main")
    # `npm init` writes "main": "index.js" into every package.json, frontends included: only trust
    # it when the file exists.
    if isinstance(main, str) and main.strip() and files.exists(main):
        return f"node {main}"
    if files.exists("server.js"):
        return "node server.js"
    return None


def _node_build_script(files: _Files) -> str | None:
    scripts = (files.package_json or {}).get("scripts")
    if isinstance(scripts, dict) and isinstance(scripts.get("build"), str) and scripts["build"].strip():
        return "npm run build"
    return None


def _guess_static_dir(files: _Files) -> str | None:
    """Where a static site's files are (or will be, after the build)."""
    for candidate in STATIC_DIR_CANDIDATES:
        if (files.root / candidate / "index.html").is_file():
            return candidate
    if files.has_index_html:
        return "."
    if files.package_json is not None and _node_build_script(files):
        deps = {
            **(files.package_json.get("dependencies") or {}),
            **(files.package_json.get("devDependencies") or {}),
        }
        if "react-scripts" in deps:
            return "build"
        if "next" in deps:
            return "out"
        return "dist"
    return None


def _pick_stack(files: _Files, command: str | None, static_only: bool) -> Stack:
    """One installer per service; when both ecosystems are present, the start command decides."""
    if files.is_python and files.is_node:
        first = (command or "").strip().split(" ", 1)[0].rsplit("/", 1)[-1]
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
    first = (command or "").strip().split(" ", 1)[0].rsplit("/", 1)[-1]
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
            fix=f"pass {argument} relative to the app directory without '..', e.g. 'dist'",
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

    kind = service_type or (entry.type if entry else None)
    rel_dir = app_dir or (entry.path if entry else ".")
    root = (checkout / rel_dir).resolve()
    if not root.is_relative_to(checkout.resolve()) or not root.is_dir():
        raise BuildPlanError(
            f"app directory {rel_dir!r} does not exist in the repository.",
            argument="app_dir" if app_dir else "repo_url",
            fix="pass the directory that holds the app (relative to the repo root), or fix `path:` in inkmcp.yaml",
        )
    files = _scan(root, checkout)

    procfile: Procfile | None = None
    procfile_error: InkError | None = None
    try:
        procfile = load_procfile(root, checkout=checkout)
    except InkError as exc:
        procfile_error = exc

    build = build_command or (entry.build if entry else None)
    release = (entry.release if entry else None) or (procfile.release if procfile else None)
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
            processes = procfile.specs()
        source = "procfile"
    else:
        detected = _detect_python_start(files) if files.is_python else None
        detected = detected or _detect_node_start(files)
        if detected:
            processes = (ProcessSpec(name=single_name, command=detected, routed=routed_single),)
            source = "detected"

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
            raise BuildPlanError(
                "nothing says how to run this app: looked for a start command in the call, an "
                f"inkmcp.yaml entry for {service_name!r}, a Procfile, package.json scripts.start or "
                f"main, server.js, {', '.join(PYTHON_ENTRYPOINTS)}, manage.py, and for index.html "
                "(a static site).",
                argument="start_command",
                fix=_NOTHING_FOUND_FIX,
            )
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

    plan = BuildPlan(
        stack=stack,
        app_dir=str(PurePosixPath(root.relative_to(checkout.resolve()))) or ".",
        build_command=build,
        processes=processes,
        release_command=release,
        static_dir=the_static_dir,
        port=the_port,
        django=stack == Stack.python and files.exists("manage.py"),
        source=source or "detected",
        mode=entry.mode if entry else None,
    )
    return plan, kind
