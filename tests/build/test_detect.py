"""Plan derivation: call > inkmcp.yaml > Procfile > other platforms' files > detection, and every error case."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.manifest import load_manifest, parse_manifest
from inkmcp.build.plan import BuildPlan, Mode, ServiceType, Stack
from inkmcp.build.procfile import parse_procfile
from inkmcp.errors import BuildPlanError, InvalidArgument

from .conftest import write_files


def plan_for(root: Path, files: dict[str, str], **kw: Any) -> tuple[BuildPlan, ServiceType]:
    write_files(root, files)
    args: dict[str, Any] = {
        "service_name": "web",
        "service_type": None,
        "build_command": None,
        "start_command": None,
        "port": None,
    }
    args.update(kw)
    return derive_plan(root, **args)


MANIFEST = """
services:
  web:
    start: node server.js
    build: npm run build
    release: node migrate.js
    port: 3000
    mode: persistent
  site:
    type: webapp_static
    path: frontend
    build: npm run build
    static_dir: dist
  jobs:
    type: backend
    start: node jobs.js
"""
PACKAGE = json.dumps({"name": "x", "scripts": {"start": "node server.js", "build": "echo hi"}})


# --- Procfile and manifest parsing -------------------------------------------------------------


def test_procfile_conventions() -> None:
    proc = parse_procfile("# comment\n\nweb: gunicorn app:app\nworker:  python worker.py\nrelease: ./migrate\n")
    assert proc.processes == {"web": "gunicorn app:app", "worker": "python worker.py"}
    assert proc.release == "./migrate"
    specs = proc.specs()
    assert [(s.name, s.routed) for s in specs] == [("web", True), ("worker", False)]
    assert proc.specs(only="worker")[0].routed is False


@pytest.mark.parametrize("text", ["web gunicorn", "web:", "web: a\nweb: b", "# only comments\n"])
def test_bad_procfiles(text: str) -> None:
    with pytest.raises(BuildPlanError) as err:
        parse_procfile(text)
    assert "Procfile" in err.value.message


def test_manifest_schema_errors_name_field_and_file() -> None:
    with pytest.raises(BuildPlanError) as err:
        parse_manifest("services:\n  web:\n    prot: 3000\n    port: 70000\n")
    assert "inkmcp.yaml" in err.value.message
    assert "services.web.prot: unknown key" in err.value.message
    assert "services.web.port" in err.value.message
    for bad in (
        "services: {}\n",
        "services:\n  Bad_Name: {}\n",
        "[1, 2]",
        "services: [",
        "services:\n  w:\n    path: ../x\n",
    ):
        with pytest.raises(BuildPlanError):
            parse_manifest(bad)


def test_manifest_symlink_outside_repo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "inkmcp.yaml").symlink_to("/etc/passwd")
    with pytest.raises(BuildPlanError) as err:
        load_manifest(tmp_path)
    assert "root:" not in str(err.value)


# --- precedence --------------------------------------------------------------------------------


def test_manifest_entry(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"inkmcp.yaml": MANIFEST, "package.json": PACKAGE, "Procfile": "web: x\n"})
    assert kind == ServiceType.webapp
    assert plan.source == "manifest"
    assert plan.stack == Stack.node
    assert plan.processes[0].command == "node server.js" and plan.processes[0].routed
    assert (plan.build_command, plan.release_command, plan.port, plan.mode) == (
        "npm run build",
        "node migrate.js",
        3000,
        Mode.persistent,
    )


def test_call_arguments_override_manifest(tmp_path: Path) -> None:
    plan, _ = plan_for(
        tmp_path,
        {"inkmcp.yaml": MANIFEST, "package.json": PACKAGE},
        start_command="node other.js",
        build_command="make",
        port=8080,
    )
    assert plan.source == "call"
    assert (plan.processes[0].command, plan.build_command, plan.port) == ("node other.js", "make", 8080)
    assert plan.release_command == "node migrate.js"  # not overridden by the call, so still from the manifest


def test_manifest_static_service_in_subdirectory(tmp_path: Path) -> None:
    plan, kind = plan_for(
        tmp_path,
        {"inkmcp.yaml": MANIFEST, "frontend/package.json": json.dumps({"scripts": {"build": "vite build"}})},
        service_name="site",
    )
    assert kind == ServiceType.webapp_static
    assert (plan.app_dir, plan.static_dir, plan.stack, plan.processes) == ("frontend", "dist", Stack.node, ())


def test_manifest_backend_service(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"inkmcp.yaml": MANIFEST}, service_name="jobs")
    assert kind == ServiceType.backend
    assert plan.routed_process is None and plan.processes[0].name == "jobs"


def test_manifest_missing_service_lists_services(tmp_path: Path) -> None:
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"inkmcp.yaml": MANIFEST}, service_name="api")
    assert err.value.argument == "service_name"
    assert "jobs, site, web" in err.value.message


def test_procfile_all_processes_for_web(tmp_path: Path) -> None:
    files = {
        "requirements.txt": "gunicorn\n",
        "Procfile": "web: gunicorn app:app\nworker: python w.py\nrelease: python m.py\n",
    }
    plan, kind = plan_for(tmp_path, files)
    assert plan.source == "procfile" and kind == ServiceType.webapp and plan.stack == Stack.python
    assert [(p.name, p.routed) for p in plan.processes] == [("web", True), ("worker", False)]
    assert plan.release_command == "python m.py"


def test_procfile_single_named_process(tmp_path: Path) -> None:
    files = {"requirements.txt": "", "Procfile": "web: gunicorn app:app\nworker: python w.py\n"}
    plan, kind = plan_for(tmp_path, files, service_name="worker")
    assert kind == ServiceType.backend
    assert [(p.name, p.command, p.routed) for p in plan.processes] == [("worker", "python w.py", False)]


def test_procfile_beats_detection(tmp_path: Path) -> None:
    plan, _ = plan_for(tmp_path, {"package.json": PACKAGE, "Procfile": "web: node custom.js\n"})
    assert plan.processes[0].command == "node custom.js"


# --- detection ---------------------------------------------------------------------------------


def test_detect_node(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"package.json": PACKAGE})
    assert (plan.stack, plan.processes[0].command, plan.build_command, plan.source) == (
        Stack.node,
        "npm start",
        "npm run build",
        "detected",
    )
    assert kind == ServiceType.webapp


def test_detect_node_main_only_when_file_exists(tmp_path: Path) -> None:
    plan, _ = plan_for(tmp_path, {"package.json": json.dumps({"main": "srv.js"}), "srv.js": ""})
    assert plan.processes[0].command == "node srv.js"
    with pytest.raises(BuildPlanError):
        plan_for(tmp_path / "b", {"package.json": json.dumps({"main": "index.js"})})


def test_detect_node_static_build(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"package.json": json.dumps({"scripts": {"build": "vite build"}})})
    assert kind == ServiceType.webapp_static
    assert (plan.stack, plan.static_dir, plan.build_command) == (Stack.node, "dist", "npm run build")


def test_detect_plain_static(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"index.html": "<h1>hi</h1>"})
    assert (kind, plan.stack, plan.static_dir, plan.processes) == (ServiceType.webapp_static, Stack.static, ".", ())


@pytest.mark.parametrize(
    ("files", "command", "django"),
    [
        ({"requirements.txt": "flask\n", "app.py": "if __name__ == '__main__':\n  pass\n"}, "python app.py", False),
        (
            {"requirements.txt": "fastapi\nuvicorn\n", "main.py": "app = FastAPI()\n"},
            "uvicorn main:app --host 0.0.0.0 --port $PORT",
            False,
        ),
        (
            {"requirements.txt": "Flask\ngunicorn==22\n", "app.py": "app = Flask(__name__)\n"},
            "gunicorn app:app --bind 0.0.0.0:$PORT",
            False,
        ),
        (
            {"pyproject.toml": "[project]\nname='x'\ndependencies=['flask']\n", "server.py": "x=1\n"},
            "python server.py",
            False,
        ),
        (
            {
                "requirements.txt": "Django\ngunicorn\n",
                "manage.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n",
            },
            "gunicorn mysite.wsgi --bind 0.0.0.0:$PORT",
            True,
        ),
        (
            {"requirements.txt": "Django\n", "manage.py": ""},
            "python manage.py runserver 0.0.0.0:$PORT --noreload",
            True,
        ),
    ],
)
def test_detect_python(tmp_path: Path, files: dict[str, str], command: str, django: bool) -> None:
    plan, kind = plan_for(tmp_path, files)
    assert (plan.stack, plan.processes[0].command, plan.django, kind) == (
        Stack.python,
        command,
        django,
        ServiceType.webapp,
    )


def test_stack_inferred_even_with_start_command(tmp_path: Path) -> None:
    plan, _ = plan_for(tmp_path, {"requirements.txt": "gunicorn\n"}, start_command="gunicorn app:app")
    assert plan.stack == Stack.python and plan.source == "call"
    plan, _ = plan_for(
        tmp_path / "n", {"package.json": "{}"}, start_command="node x.js", service_type=ServiceType.backend
    )
    assert plan.stack == Stack.node and plan.routed_process is None


# --- errors ------------------------------------------------------------------------------------


def test_nothing_detected(tmp_path: Path) -> None:
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"README.md": "hello"})
    assert err.value.argument == "start_command"
    for looked_for in ("inkmcp.yaml", "Procfile", "scripts.start", "app.py", "main.py"):
        assert looked_for in err.value.message
    assert "$PORT" in (err.value.fix or "")


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_bad_port(tmp_path: Path, port: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_for(tmp_path, {"app.py": ""}, port=port, start_command="python app.py")
    assert err.value.argument == "port"


def test_static_with_start_command_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as err:
        plan_for(tmp_path, {"index.html": ""}, service_type=ServiceType.webapp_static, start_command="x")
    assert err.value.argument == "start_command"


def test_static_without_files(tmp_path: Path) -> None:
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"README.md": ""}, service_type=ServiceType.webapp_static)
    assert err.value.argument == "static_dir"


def test_webapp_without_route(tmp_path: Path) -> None:
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"Procfile": "worker: python w.py\n"}, service_type=ServiceType.webapp)
    assert err.value.argument == "service_type"


def test_app_dir_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"app.py": ""}, app_dir="nope", start_command="python app.py")
    assert err.value.argument == "app_dir"
    with pytest.raises(InvalidArgument):
        plan_for(tmp_path, {"app.py": ""}, app_dir="../etc", start_command="python app.py")


def test_index_html_beside_a_start_command_is_not_a_static_site(tmp_path: Path) -> None:
    """A server that also ships an index.html (found by the red-team tests) must run, not be served as files."""
    write_files(tmp_path, {"index.html": "<h1>hi</h1>", "lab.py": "print('serving')"})
    plan, kind = derive_plan(tmp_path, service_name="web", service_type=ServiceType.webapp,
                             build_command=None, start_command="python3 lab.py", port=None)  # fmt: skip
    assert kind == ServiceType.webapp and plan.stack != Stack.static
    assert [p.command for p in plan.processes] == ["python3 lab.py"]


# --- precedence over five levels: each level overrides the next ---------------------------------

LEVELS: dict[str, str] = {
    "inkmcp.yaml": "services:\n  web:\n    start: node manifest.js\n",
    "Procfile": "web: node procfile.js\n",
    "render.yaml": "services:\n  - type: web\n    name: site\n    runtime: node\n    startCommand: node render.js\n",
    "package.json": json.dumps({"scripts": {"start": "node detected.js"}}),
}


@pytest.mark.parametrize(
    ("present", "source", "command"),
    [
        (("inkmcp.yaml", "Procfile", "render.yaml", "package.json"), "manifest", "node manifest.js"),
        (("Procfile", "render.yaml", "package.json"), "procfile", "node procfile.js"),
        (("render.yaml", "package.json"), "render.yaml", "node render.js"),
        (("package.json",), "detected", "npm start"),
    ],
)
def test_precedence_levels(tmp_path: Path, present: tuple[str, ...], source: str, command: str) -> None:
    plan, _ = plan_for(tmp_path, {name: LEVELS[name] for name in present})
    assert (plan.source, plan.processes[0].command) == (source, command)
    plan, _ = plan_for(tmp_path / "call", {name: LEVELS[name] for name in present}, start_command="node call.js")
    assert (plan.source, plan.processes[0].command) == ("call", "node call.js")


def test_release_build_port_precedence(tmp_path: Path) -> None:
    """Field by field: the manifest's release beats the Procfile's, which beats fly.toml's; the call's build
    and port beat the platform file's."""
    files = {
        "Procfile": "web: node procfile.js\nrelease: node procfile-migrate.js\n",
        "fly.toml": '[processes]\napp = "node fly.js"\n[deploy]\nrelease_command = "node fly-migrate.js"\n'
        "[http_service]\ninternal_port = 8080\nprocesses = ['app']\n",
        "railway.json": json.dumps({"build": {"buildCommand": "npm run railway-build"}}),
        "package.json": "{}",
    }
    plan, _ = plan_for(tmp_path, files)
    assert (plan.processes[0].command, plan.release_command, plan.build_command, plan.port) == (
        "node procfile.js",
        "node procfile-migrate.js",
        "npm run railway-build",
        None,  # fly's port goes with fly's command, which the Procfile overrides
    )
    (tmp_path / "Procfile").unlink()
    plan, _ = plan_for(tmp_path, {}, build_command="make", port=9000)
    assert (plan.processes[0].command, plan.release_command, plan.build_command, plan.port) == (
        "node fly.js",
        "node fly-migrate.js",
        "make",
        9000,
    )
    plan, _ = plan_for(tmp_path, {"inkmcp.yaml": "services:\n  web:\n    release: node manifest-migrate.js\n"})
    assert (plan.processes[0].command, plan.release_command, plan.port) == (
        "node fly.js",
        "node manifest-migrate.js",
        8080,
    )


def test_env_defaults_come_only_from_platform_files(tmp_path: Path) -> None:
    files = {
        "Procfile": "web: gunicorn app:app\n",
        "requirements.txt": "gunicorn\n",
        "render.yaml": "services:\n  - type: web\n    name: web\n    envVars:\n"
        "      - key: MODE\n        value: demo\n",
    }
    plan, _ = plan_for(tmp_path, files, start_command="gunicorn other:app")
    assert plan.source == "call" and plan.env_defaults == {"MODE": "demo"}


# --- production servers ------------------------------------------------------------------------

FLASK_MAIN = """from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "hi"


if __name__ == "__main__":
    app.run(debug=True)
"""


@pytest.mark.parametrize(
    ("files", "command"),
    [
        # the case: gunicorn listed, `python main.py` would be Flask's debug server
        ({"requirements.txt": "Flask==3.0\ngunicorn==22.0\n", "main.py": FLASK_MAIN},
         "gunicorn main:app --bind 0.0.0.0:$PORT"),
        # newuser5: `python main.py` served on 127.0.0.1:5000 (app.run(debug=True)) and failed the deploy
        ({"requirements.txt": "Flask\n", "main.py": FLASK_MAIN},
         "flask --app main:app run --host 0.0.0.0 --port $PORT"),
        ({"requirements.txt": "flask\nflask-socketio\ngunicorn\n", "main.py": FLASK_MAIN}, "python main.py"),
        ({"requirements.txt": "flask\ngunicorn\n",
          "wsgi.py": "from myapp import create_app\n\napp = create_app()\n", "main.py": FLASK_MAIN},
         "gunicorn wsgi:app --bind 0.0.0.0:$PORT"),
        ({"requirements.txt": "flask\ngunicorn\n", "wsgi.py": "from hello import app\n"},
         "gunicorn wsgi:app --bind 0.0.0.0:$PORT"),
        ({"requirements.txt": "flask\ngunicorn\n",
          "app/__init__.py": "from flask import Flask\n\ndef create_app():\n    return Flask(__name__)\n"},
         "gunicorn 'app:create_app()' --bind 0.0.0.0:$PORT"),
        ({"requirements.txt": "flask\n", "server.py": "application = Flask(__name__)\n"},
         "flask --app server:application run --host 0.0.0.0 --port $PORT"),
        ({"requirements.txt": "flask\nwaitress\n", "app.py": "app = Flask(__name__)\n"},
         "waitress-serve --listen=0.0.0.0:$PORT app:app"),
        ({"requirements.txt": "fastapi[standard]\n", "app/main.py": "from fastapi import FastAPI\napp = FastAPI()\n"},
         "uvicorn app.main:app --host 0.0.0.0 --port $PORT"),
        ({"requirements.txt": "fastapi\nuvicorn\n",
          "main.py": "import uvicorn\napi: FastAPI = FastAPI()\nif __name__ == '__main__':\n    uvicorn.run(api)\n"},
         "uvicorn main:api --host 0.0.0.0 --port $PORT"),
        ({"requirements.txt": "starlette\nhypercorn\n", "app.py": "app = Starlette(routes=[])\n"},
         "hypercorn 'app:app' --bind 0.0.0.0:$PORT"),
        ({"pyproject.toml": "[tool.poetry]\nname='x'\n[tool.poetry.dependencies]\npython='^3.11'\n"
                            "flask='^3'\ngunicorn='*'\n", "app.py": FLASK_MAIN},
         "gunicorn app:app --bind 0.0.0.0:$PORT"),
        ({"pyproject.toml": "[tool.poetry.dependencies]\nfastapi={version='*', extras=['standard']}\n",
          "main.py": "app = FastAPI()\n"}, "uvicorn main:app --host 0.0.0.0 --port $PORT"),
        ({"Pipfile": '[packages]\nflask = "*"\ngunicorn = "*"\n\n[dev-packages]\npytest = "*"\n', "app.py": FLASK_MAIN},
         "gunicorn app:app --bind 0.0.0.0:$PORT"),
        ({"requirements.txt": "django\nuvicorn\n", "manage.py": "",
          "proj/wsgi.py": "", "proj/asgi.py": "application = get_asgi_application()\n"},
         "uvicorn proj.asgi:application --host 0.0.0.0 --port $PORT"),
    ],
)  # fmt: skip
def test_production_server_preferred(tmp_path: Path, files: dict[str, str], command: str) -> None:
    plan, kind = plan_for(tmp_path, files)
    assert (plan.stack, plan.processes[0].command, kind) == (Stack.python, command, ServiceType.webapp)


def test_dev_dependencies_do_not_count(tmp_path: Path) -> None:
    files = {"Pipfile": '[packages]\nflask = "*"\n\n[dev-packages]\ngunicorn = "*"\n', "app.py": FLASK_MAIN}
    plan, _ = plan_for(tmp_path, files)
    assert plan.processes[0].command == "flask --app app:app run --host 0.0.0.0 --port $PORT"  # newuser5: not gunicorn


@pytest.mark.parametrize(
    ("package", "command", "build"),
    [
        ({"dependencies": {"next": "14"}, "scripts": {"dev": "next dev", "build": "next build", "start": "next start"}},
         "npm start", "npm run build"),
        ({"dependencies": {"next": "14"}, "scripts": {"start": "next dev", "build": "next build"}},
         "npx next start", "npm run build"),
        ({"dependencies": {"next": "14"}, "scripts": {"build": "next build"}}, "npx next start", "npm run build"),
    ],
)  # fmt: skip
def test_next_runs_its_production_server(tmp_path: Path, package: dict[str, Any], command: str, build: str) -> None:
    plan, kind = plan_for(tmp_path, {"package.json": json.dumps(package)})
    assert (plan.processes[0].command, plan.build_command, kind) == (command, build, ServiceType.webapp)


@pytest.mark.parametrize(
    "scripts",
    [
        {"start": "react-scripts start", "build": "react-scripts build"},
        {"start": "vite", "build": "vite build", "preview": "vite preview"},
        {"start": "vue-cli-service serve", "build": "vue-cli-service build"},
    ],
)
def test_dev_server_start_with_a_build_is_a_static_site(tmp_path: Path, scripts: dict[str, str]) -> None:
    plan, kind = plan_for(tmp_path, {"package.json": json.dumps({"scripts": scripts})})
    assert (kind, plan.processes, plan.build_command, plan.stack) == (
        ServiceType.webapp_static,
        (),
        "npm run build",
        Stack.node,
    )
    assert plan.static_dir_given is False  # the build's real output decides (H2's static_output)
    assert any("dev server" in n for n in plan.notes)


def test_dev_server_without_a_build_still_runs(tmp_path: Path) -> None:
    plan, _ = plan_for(tmp_path, {"package.json": json.dumps({"scripts": {"start": "vite"}})})
    assert plan.processes[0].command == "npm start"


def test_nothing_detected_lists_what_was_found(tmp_path: Path) -> None:
    files = {
        "Dockerfile": "FROM python:3.12\nCMD python serve.py\n",
        "package.json": json.dumps({"name": "x", "main": "index.js"}),
        "fly.toml": FLY_DOCKER_ONLY,
    }
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, files)
    message, fix = err.value.message, err.value.fix or ""
    assert err.value.argument == "start_command"
    assert "Found: package.json, Dockerfile, fly.toml" in message
    assert "render.yaml" in message and "fly.toml [processes]" in message  # what it looked for
    assert "no [processes]" in message and "no scripts.start" in message  # why those gave nothing
    assert "start_command" in fix and "Dockerfile" in fix


FLY_DOCKER_ONLY = """app = 'mario-class'
primary_region = 'nrt'

[build]
  dockerfile = "Dockerfile"

[http_service]
  internal_port = 80
  force_https = true
  processes = ["app"]
"""


def test_python_app_reads_are_bounded_by_the_checkout(tmp_path: Path) -> None:
    """wsgi.py -> /etc/passwd must not be read into a start command or an error."""
    write_files(tmp_path, {"requirements.txt": "flask\ngunicorn\n"})
    (tmp_path / "wsgi.py").symlink_to("/etc/passwd")
    with pytest.raises(BuildPlanError) as err:
        derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                    port=None)  # fmt: skip
    assert "symlink" in err.value.message and "root:" not in str(err.value)


def test_dev_server_runs_when_the_agent_asks_for_a_process(tmp_path: Path) -> None:
    package = json.dumps({"scripts": {"start": "vite", "build": "vite build"}})
    plan, kind = plan_for(tmp_path, {"package.json": package}, service_type=ServiceType.webapp)
    assert kind == ServiceType.webapp and plan.processes[0].command == "npm start"


def test_lone_app_module(tmp_path: Path) -> None:
    """hexlet-components/python-flask: the app is in hello_world.py; two such modules would be a guess."""
    files = {
        "pyproject.toml": "[tool.poetry.dependencies]\npython='^3.10'\nFlask='^2.1.3'\ngunicorn='^20.1.0'\n",
        "hello_world.py": "from flask import Flask\n\napp = Flask(__name__)\n",
        "__init__.py": "",
    }
    plan, _ = plan_for(tmp_path, files)
    assert plan.processes[0].command == "gunicorn hello_world:app --bind 0.0.0.0:$PORT"
    with pytest.raises(BuildPlanError):
        plan_for(tmp_path, {"other.py": "app = Flask(__name__)\n"})
