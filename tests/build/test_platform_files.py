"""Other platforms' files (render.yaml, railway.json/toml, fly.toml, app.json) → the BuildPlan.

The file contents are copied from public sample repositories and blueprints (named above each one) so the
parser meets what those platforms' users actually commit, including files that do not parse.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import BuildPlan, ServiceType, Stack
from inkmcp.build.platform_files import load_platform_files, strip_install_steps, unwrap_runner
from inkmcp.errors import BuildPlanError

from .conftest import write_files

# render-examples/django @1e6f0753 render.yaml
RENDER_DJANGO = """databases:
  - name: mysite
    databaseName: mysite
    user: mysite

services:
  - type: web
    name: mysite
    env: python
    buildCommand: "./build.sh"
    startCommand: "gunicorn mysite.wsgi:application"
    autoDeploy: false
    envVars:
      - key: DATABASE_URL
        fromDatabase:
          name: mysite
          property: connectionString
      - key: SECRET_KEY
        generateValue: true
      - key: WEB_CONCURRENCY
        value: 4
"""
# render-examples/celery @0718994d render.yaml
RENDER_CELERY = """services:
  - type: worker
    name: queue
    region: ohio
    runtime: python
    buildCommand: "pip install -r requirements.txt"
    startCommand: "celery --app tasks worker --loglevel info --concurrency 4"
    autoDeploy: false
    envVars:
      - key: CELERY_BROKER_URL
        fromService:
          name: celery-redis
          type: redis
          property: connectionString
  - type: web
    name: app
    region: ohio
    runtime: python
    buildCommand: "pip install -r requirements.txt"
    startCommand: "gunicorn app:app"
    autoDeploy: false
    envVars:
      - key: CELERY_BROKER_URL
        fromService:
          name: celery-redis
          type: redis
          property: connectionString
  - type: web
    name: flower
    region: ohio
    plan: free
    runtime: python
    buildCommand: "pip install -r requirements.txt"
    startCommand: "celery flower --app tasks --loglevel info"
    autoDeploy: false
    envVars:
      - key: CELERY_BROKER_URL
        fromService:
          type: redis
          name: celery-redis
          property: connectionString
  - type: redis
    name: celery-redis
    region: ohio
    plan: starter # we choose a plan with persistence to ensure tasks are not lost upon restart
    maxmemoryPolicy: noeviction # recommended policy for queues
    ipAllowList: [] # only allow internal connections
"""
# render-examples/flask-hello-world @05ccc5b3 render.yaml: two web services, commands left to the dashboard
RENDER_FLASK_TWO = """previewsEnabled: true
services:
  - type: web
    name: flask-hello-world
    env: python
    envVars:
      - key: FLASK_ENV_VAR
        fromService:
          type: web
          name: flask2
          envVarKey: SERVICE_ENV_VAR
  - type: web
    name: flask2
    env: python
    repo: https://github.com/schugs/flask-hello-world
    envVars:
    - key: SERVICE_ENV_VAR
      value: hello world!
"""
# render-examples/create-react-app @8020f3c4 render.yaml, verbatim: it does not parse
RENDER_CRA_BROKEN = "previewsEnabled: trueservices:\n- type: web"
# a Render blueprint published in a project's deploy guide: Hugo static site + Python API in one repo
RENDER_STATIC_AND_API = """services:
  # Frontend: Hugo Static Site
  - type: web
    name: hugo-frontend
    runtime: static
    buildCommand: hugo --gc --minify
    staticPublishPath: public
    routes:
      - type: rewrite
        source: /api/*
        destination: http://python-api:10000/api/*

  # Backend: Python API
  - type: web
    name: python-api
    runtime: python
    plan: free
    buildCommand: pip install -r api/requirements.txt
    startCommand: uvicorn api.main:app --host 0.0.0.0 --port 10000
    healthCheckPath: /api/health
"""
# railwayapp-templates/django @2d870553 railway.json (its start command really has `&& &&`)
RAILWAY_DJANGO = """{
    "$schema": "https://railway.app/railway.schema.json",
    "build": {
        "builder": "NIXPACKS"
    },
    "deploy": {
        "startCommand": "python manage.py migrate && && python manage.py loaddata fixtures/* && python manage.py collectstatic --noinput && gunicorn fhma.wsgi"
    }
}"""  # noqa: E501
# Railway's config-as-code reference (docs.railway.com) railway.json fallback example
RAILWAY_DOCS = """{
  "$schema": "https://railway.com/railway.schema.json",
  "build": {
    "builder": "RAILPACK",
    "buildCommand": "npm run build"
  },
  "deploy": {
    "preDeployCommand": ["npm run db:migrate"],
    "startCommand": "npm start",
    "healthcheckPath": "/health",
    "healthcheckTimeout": 300,
    "restartPolicyType": "ON_FAILURE",
    "restartPolicyMaxRetries": 5
  }
}"""
# a railway.toml from a Next.js + Prisma app's merge script
RAILWAY_TOML = """# Railway deployment configuration for ClaimAgent

[build]
builder = "nixpacks"
buildCommand = "npm run build"

[deploy]
startCommand = "npx prisma migrate deploy && npm run start"
healthcheckPath = "/api/health"
healthcheckTimeout = 100
restartPolicyType = "on_failure"
restartPolicyMaxRetries = 3
"""
# fly.toml of spokanetech-py (Django + Celery on Fly)
FLY_DJANGO_CELERY = """# fly.toml app configuration file generated for spokanetech-py on 2024-01-31T20:22:30-08:00
#
# See https://fly.io/docs/reference/configuration/ for information about how to use this file.
#

app = 'spokanetech-py'
primary_region = 'sea'
console_command = '/code/src/manage.py shell'

[build]

[env]
  PORT = '8000'

[processes]
  app = 'gunicorn --chdir ./src --bind :8000 --workers 2 spokanetech.wsgi'
  worker = 'python -m celery --workdir ./src -A spokanetech.celery worker -B -l INFO'

[http_service]
  internal_port = 8000
  force_https = true
  auto_stop_machines = true
  auto_start_machines = true
  min_machines_running = 0
  processes = ['app']
"""
# fly.toml of qsowhat (Flask on Fly, release command, port hard-coded in the command)
FLY_QSOWHAT = """app = 'qsowhat'
primary_region = 'sjc'

[build]

[deploy]
  release_command = "python -c 'print(\\"QSOWhat deployment starting...\\")'"

[processes]
  app = 'gunicorn --bind 0.0.0.0:5000 --workers 1 --timeout 30 --max-requests 1000 --max-requests-jitter 50 main:app'

[http_service]
  internal_port = 5000
  force_https = true
  auto_stop_machines = 'stop'
  auto_start_machines = true
  min_machines_running = 1
  processes = ['app']
"""
# fly.toml of condenser (Phoenix release in a Docker image; old `processes = []` form)
FLY_CONDENSER = """# fly.toml file generated for condenser on 2023-01-02T11:26:04-07:00
app = "condenser"
kill_signal = "SIGTERM"
kill_timeout = 5
processes = []
[deploy]
release_command = "/app/bin/migrate"
[env]
PHX_HOST = "condense.sh"
PORT = "8080"
[experimental]
allowed_public_ports = []
auto_rollback = true
[[services]]
http_checks = []
internal_port = 8080
processes = ["app"]
protocol = "tcp"
script_checks = []
"""
# fly.toml of netshare: ${...} placeholders in [env], the routed process named `web`
FLY_NETSHARE = """app = 'netshare'
primary_region = 'jnb'

[build]
  dockerfile = "Dockerfile"


[env]
  DATABASE_URL = '${DATABASE_URL}'
  FLASK_ENV = 'production'
  FLY_API_KEY = '${FLY_API_KEY}'
  SECRET_KEY = '${SECRET_KEY}'

[processes]
  tunnel-manager = 'python tunnel_manager.py'
  web = 'gunicorn -w 4 app:app --bind 0.0.0.0:8080'

[[services]]
  protocol = 'tcp'
  internal_port = 8080
  processes = ['web']
"""
# heroku/python-getting-started @b4636cff app.json
HEROKU_PYTHON = """{
  "name": "Python on Heroku example",
  "description": "A barebones Python app, which can easily be deployed to Heroku.",
  "image": "heroku/python",
  "repository": "https://github.com/heroku/python-getting-started",
  "keywords": ["python", "django" ],
  "addons": [ "heroku-postgresql" ]
}"""
# heroku/python-getting-started @180cbfb1 app.json, verbatim: `env` is never closed, so it does not parse
HEROKU_PYTHON_BROKEN = """{
  "name": "Start on Heroku: Python",
  "description": "A barebones Python app, which can easily be deployed to Heroku.",
  "image": "heroku/python",
  "repository": "https://github.com/heroku/python-getting-started",
  "keywords": ["python", "django" ],
  "addons": [ "heroku-postgresql" ],
  "env": {
    "SECRET_KEY": {
      "description": "The secret key for the Django application.",
      "generator": "secret"
    },
  "environments": {
    "test": {
      "scripts": {
        "test-setup": "python manage.py collectstatic --noinput",
        "test": "python manage.py test"
      }
    }
  }
}"""
# Heroku Dev Center's app.json schema example
HEROKU_SCHEMA_EXAMPLE = """{
  "name": "Small Sharp Tool",
  "description": "This app does one little thing, and does it well.",
  "scripts": {"postdeploy": "bundle exec rake bootstrap"},
  "env": {
    "SECRET_TOKEN": {"description": "A secret key for verifying the integrity of signed cookies.", "generator": "secret"},
    "WEB_CONCURRENCY": {"description": "The number of processes to run.", "value": "5"},
    "BUILDPACK_URL": "https://github.com/stomita/heroku-buildpack-phantomjs"
  },
  "formation": {"web": {"quantity": 1, "size": "standard-1x"}},
  "addons": ["openredis", {"plan": "heroku-postgresql", "options": {"version": "9.5"}}],
  "buildpacks": [{"url": "https://github.com/stomita/heroku-buildpack-phantomjs"}]
}"""  # noqa: E501
DJANGO_MANAGE = "import os\nos.environ.setdefault('DJANGO_SETTINGS_MODULE', 'mysite.settings')\n"
POETRY_DJANGO = """[tool.poetry]
name = "mysite"
version = "0.1.0"

[tool.poetry.dependencies]
python = "^3.11"
Django = "^4.0"
gunicorn = "^20.1.0"
"""


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


# --- render.yaml -------------------------------------------------------------------------------


def test_render_django_single_web_service(tmp_path: Path) -> None:
    plan, kind = plan_for(
        tmp_path,
        {"render.yaml": RENDER_DJANGO, "pyproject.toml": POETRY_DJANGO, "manage.py": DJANGO_MANAGE,
         "build.sh": "poetry install\npython manage.py migrate\n"},
    )  # fmt: skip
    assert kind == ServiceType.webapp and plan.source == "render.yaml" and plan.stack == Stack.python
    assert [(p.name, p.command, p.routed) for p in plan.processes] == [
        ("web", "gunicorn mysite.wsgi:application", True)
    ]
    assert plan.build_command == "./build.sh" and plan.django
    assert plan.env_defaults == {"WEB_CONCURRENCY": "4"}  # DATABASE_URL and SECRET_KEY are never defaults
    assert plan.wants == ("postgres",)
    notes = " ".join(plan.notes)
    assert "SECRET_KEY" in notes and "DATABASE_URL" in notes and "database={'type': 'postgres'}" in notes


def test_render_service_chosen_by_name(tmp_path: Path) -> None:
    files = {"render.yaml": RENDER_CELERY, "requirements.txt": "flask\ncelery\ngunicorn\nredis\n"}
    plan, kind = plan_for(tmp_path, files, service_name="app")
    assert kind == ServiceType.webapp
    assert [(p.name, p.command, p.routed) for p in plan.processes] == [("web", "gunicorn app:app", True)]
    assert plan.build_command is None  # `pip install -r requirements.txt` is the installer's job
    assert plan.wants == ("redis",)
    assert any("CELERY_BROKER_URL" in n and "redis" in n for n in plan.notes)
    assert plan.env_defaults == {}


def test_render_worker_chosen_by_name_is_a_backend(tmp_path: Path) -> None:
    files = {"render.yaml": RENDER_CELERY, "requirements.txt": "celery\n"}
    plan, kind = plan_for(tmp_path, files, service_name="queue")
    assert kind == ServiceType.backend and plan.routed_process is None
    assert [(p.name, p.command) for p in plan.processes] == [
        ("queue", "celery --app tasks worker --loglevel info --concurrency 4")
    ]


def test_render_main_web_service_and_its_worker_in_one_call(tmp_path: Path) -> None:
    """render-examples/celery: `app` (not `flower`) is the app; the worker joins it; the broker URL the app
    reads is linked to the Redis add-on's REDIS_URL."""
    plan, kind = plan_for(tmp_path, {"render.yaml": RENDER_CELERY, "requirements.txt": "celery\ngunicorn\n"})
    assert kind == ServiceType.webapp
    assert [(p.name, p.command, p.routed) for p in plan.processes] == [
        ("web", "gunicorn app:app", True),
        ("queue", "celery --app tasks worker --loglevel info --concurrency 4", False),
    ]
    assert plan.env_links == {"CELERY_BROKER_URL": "REDIS_URL"} and plan.wants == ("redis",)
    assert any("service_name='flower'" in n for n in plan.notes)


def test_render_several_web_services_need_a_name(tmp_path: Path) -> None:
    blueprint = RENDER_CELERY.replace("name: app\n", "name: shop\n")
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"render.yaml": blueprint, "requirements.txt": "celery\n"})
    assert err.value.argument == "service_name"
    for name in ("queue (worker)", "shop (web)", "flower (web)"):
        assert name in err.value.message


def test_render_database_properties_are_linked(tmp_path: Path) -> None:
    blueprint = """services:
  - type: web
    name: api
    runtime: node
    startCommand: node server.js
    envVars:
      - key: DB_URL
        fromDatabase: {name: db, property: connectionString}
      - key: DB_HOST
        fromDatabase: {name: db, property: host}
      - key: DATABASE_URL
        fromDatabase: {name: db, property: connectionString}
      - key: PORT
        fromDatabase: {name: db, property: port}
databases:
  - name: db
"""
    plan, _ = plan_for(tmp_path, {"render.yaml": blueprint, "package.json": "{}"})
    assert plan.env_links == {"DB_URL": "DATABASE_URL", "DB_HOST": "PGHOST"}  # PORT is InkMCP's own


def test_render_web_service_takes_its_workers(tmp_path: Path) -> None:
    """One web service + a worker with the same rootDir: one call deploys both, like a Procfile."""
    blueprint = RENDER_CELERY.replace("  - type: web\n    name: flower", "  - type: cron\n    name: flower")
    plan, kind = plan_for(tmp_path, {"render.yaml": blueprint, "requirements.txt": "celery\ngunicorn\n"})
    assert kind == ServiceType.webapp and plan.source == "render.yaml"
    assert [(p.name, p.routed) for p in plan.processes] == [("web", True), ("queue", False)]


def test_render_without_commands_leaves_it_to_detection(tmp_path: Path) -> None:
    """Two web services and no startCommand (render-examples/flask-hello-world): nothing to choose, detect."""
    files = {
        "render.yaml": RENDER_FLASK_TWO,
        "requirements.txt": "Flask\ngunicorn\n",
        "app.py": "from flask import Flask\napp = Flask(__name__)\n\n@app.route('/')\ndef hello_world():\n"
        "    return 'Hello, World!'\n",
    }
    plan, _ = plan_for(tmp_path, files)
    assert plan.source == "detected"
    assert plan.processes[0].command == "gunicorn app:app --bind 0.0.0.0:$PORT"
    assert plan.env_defaults == {}  # flask2's value belongs to flask2


def test_render_static_site_and_api(tmp_path: Path) -> None:
    files = {"render.yaml": RENDER_STATIC_AND_API, "api/requirements.txt": "fastapi\nuvicorn\n"}
    plan, kind = plan_for(tmp_path, files, service_name="hugo-frontend")
    assert kind == ServiceType.webapp_static and plan.processes == ()
    assert (plan.static_dir, plan.static_dir_given, plan.build_command) == ("public", True, "hugo --gc --minify")
    plan, kind = plan_for(tmp_path, {})  # default name: the only non-static web service
    assert kind == ServiceType.webapp
    assert plan.processes[0].command == "uvicorn api.main:app --host 0.0.0.0 --port 10000"
    assert any("pip install -r api/requirements.txt" in n for n in plan.notes)


def test_render_root_dir_is_the_app_dir(tmp_path: Path) -> None:
    blueprint = """services:
  - type: web
    name: api
    runtime: node
    rootDir: backend
    buildCommand: npm ci && npm run build
    startCommand: node dist/server.js
    preDeployCommand: npm run migrate
    envVars:
      - key: NODE_ENV
        value: production
      - key: JWT_SECRET
        sync: false
"""
    files = {"render.yaml": blueprint, "backend/package.json": json.dumps({"scripts": {"build": "tsc"}})}
    plan, _ = plan_for(tmp_path, files)
    assert (plan.app_dir, plan.stack, plan.build_command, plan.release_command) == (
        "backend",
        Stack.node,
        "npm run build",
        "npm run migrate",
    )
    assert plan.env_defaults == {"NODE_ENV": "production"}
    assert any("JWT_SECRET" in n for n in plan.notes)


def test_broken_render_yaml_is_skipped_with_a_note(tmp_path: Path) -> None:
    """render-examples/create-react-app's render.yaml does not parse; the CRA app still deploys (built)."""
    package = {
        "dependencies": {"react": "^18", "react-scripts": "5.0.1"},
        "scripts": {"start": "react-scripts start", "build": "react-scripts build"},
    }
    plan, kind = plan_for(tmp_path, {"render.yaml": RENDER_CRA_BROKEN, "package.json": json.dumps(package)})
    assert kind == ServiceType.webapp_static and plan.processes == ()
    assert (plan.build_command, plan.static_dir, plan.static_dir_given) == ("npm run build", "build", False)
    assert any("render.yaml is invalid" in n and "line 1" in n for n in plan.notes)


def test_broken_render_yaml_is_quoted_when_nothing_runs(tmp_path: Path) -> None:
    with pytest.raises(BuildPlanError) as err:
        plan_for(tmp_path, {"render.yaml": RENDER_CRA_BROKEN})
    assert err.value.argument == "start_command"
    assert "render.yaml is invalid: not valid YAML (line 1)" in err.value.message


def test_render_bad_types_name_the_file_and_field(tmp_path: Path) -> None:
    write_files(tmp_path, {"render.yaml": "services:\n  - type: web\n    startCommand: [1, 2]\n"})
    out = load_platform_files(tmp_path, service_name="web", app_dir=None)
    (error,) = out.errors
    assert "render.yaml is invalid" in error.message
    assert "services.0.name" in error.message and "services.0.startCommand" in error.message
    write_files(tmp_path, {"render.yaml": "services:\n  - type: static\n    name: s\n    staticPublishPath: ../x\n"})
    (error,) = load_platform_files(tmp_path, service_name="web", app_dir=None).errors
    assert "staticPublishPath" in error.message


# --- railway -----------------------------------------------------------------------------------


def test_railway_json_start_command(tmp_path: Path) -> None:
    files = {"railway.json": RAILWAY_DJANGO, "requirements.txt": "django\ngunicorn\n", "manage.py": ""}
    plan, _ = plan_for(tmp_path, files)
    assert plan.source == "railway.json"
    assert plan.processes[0].command.endswith("gunicorn fhma.wsgi")


def test_railway_json_release_and_build(tmp_path: Path) -> None:
    package = json.dumps({"scripts": {"start": "node server.js", "build": "tsc", "db:migrate": "knex migrate"}})
    plan, _ = plan_for(tmp_path, {"railway.json": RAILWAY_DOCS, "package.json": package})
    assert (plan.processes[0].command, plan.build_command, plan.release_command, plan.source) == (
        "npm start",
        "npm run build",
        "npm run db:migrate",
        "railway.json",
    )


def test_railway_toml(tmp_path: Path) -> None:
    package = json.dumps({"dependencies": {"next": "14"}, "scripts": {"build": "next build", "start": "next start"}})
    plan, _ = plan_for(tmp_path, {"railway.toml": RAILWAY_TOML, "package.json": package})
    assert (plan.processes[0].command, plan.build_command, plan.source) == (
        "npx prisma migrate deploy && npm run start",
        "npm run build",
        "railway.toml",
    )


@pytest.mark.parametrize(
    ("value", "release"),
    [
        (["alembic", "upgrade", "head"], "alembic upgrade head"),
        (["npm run db:migrate", "npm run seed"], "npm run db:migrate && npm run seed"),
        ("python manage.py migrate", "python manage.py migrate"),
    ],
)
def test_railway_pre_deploy_forms(tmp_path: Path, value: Any, release: str) -> None:
    write_files(tmp_path, {"railway.json": json.dumps({"deploy": {"startCommand": "x", "preDeployCommand": value}})})
    assert load_platform_files(tmp_path, service_name="web", app_dir=None).release == release


# --- fly.toml ----------------------------------------------------------------------------------


def test_fly_processes_release_and_port(tmp_path: Path) -> None:
    files = {"fly.toml": FLY_QSOWHAT, "requirements.txt": "flask\ngunicorn\n", "main.py": "app = Flask(__name__)\n"}
    plan, kind = plan_for(tmp_path, files)
    assert kind == ServiceType.webapp and plan.source == "fly.toml"
    assert plan.processes[0].command.startswith("gunicorn --bind 0.0.0.0:5000")
    assert plan.port == 5000  # the command hard-codes it
    assert plan.release_command == "python -c 'print(\"QSOWhat deployment starting...\")'"


def test_fly_web_and_worker(tmp_path: Path) -> None:
    files = {"fly.toml": FLY_DJANGO_CELERY, "requirements.txt": "django\ngunicorn\ncelery\n"}
    plan, _ = plan_for(tmp_path, files)
    assert [(p.name, p.routed) for p in plan.processes] == [("web", True), ("worker", False)]
    assert plan.processes[0].command == "gunicorn --chdir ./src --bind :8000 --workers 2 spokanetech.wsgi"
    assert plan.port == 8000 and plan.env_defaults == {}  # PORT is InkMCP's own
    plan, kind = plan_for(tmp_path, {}, service_name="worker")
    assert kind == ServiceType.backend
    assert [(p.name, p.routed) for p in plan.processes] == [("worker", False)]


def test_fly_docker_image_paths_are_not_used(tmp_path: Path) -> None:
    out = load_platform_files(tmp_path, service_name="web", app_dir=None)
    assert out.files == []
    write_files(tmp_path, {"fly.toml": FLY_CONDENSER})
    out = load_platform_files(tmp_path, service_name="web", app_dir=None)
    assert (out.start, out.release, out.env_defaults) == (None, None, {"PHX_HOST": "condense.sh"})
    notes = " ".join(out.notes)
    assert "/app/bin/migrate" in notes and "Dockerfile" in notes


def test_fly_placeholders_are_not_defaults(tmp_path: Path) -> None:
    files = {"fly.toml": FLY_NETSHARE, "requirements.txt": "flask\ngunicorn\n"}
    plan, _ = plan_for(tmp_path, files)
    assert plan.env_defaults == {"FLASK_ENV": "production"}
    assert {"DATABASE_URL", "FLY_API_KEY", "SECRET_KEY"} <= {n.split()[2] for n in plan.notes if "placeholder" in n}
    assert [(p.name, p.routed) for p in plan.processes] == [("web", True), ("tunnel-manager", False)]
    assert plan.port == 8080


# --- app.json ----------------------------------------------------------------------------------


def test_heroku_app_json_with_procfile(tmp_path: Path) -> None:
    files = {
        "app.json": HEROKU_PYTHON,
        "Procfile": "web: gunicorn gettingstarted.wsgi\n",
        "requirements.txt": "django\ngunicorn\n",
    }
    plan, _ = plan_for(tmp_path, files)
    assert plan.source == "procfile" and plan.wants == ("postgres",)


def test_heroku_schema_example(tmp_path: Path) -> None:
    write_files(tmp_path, {"app.json": HEROKU_SCHEMA_EXAMPLE})
    out = load_platform_files(tmp_path, service_name="web", app_dir=None)
    assert out.env_defaults == {
        "WEB_CONCURRENCY": "5",
        "BUILDPACK_URL": "https://github.com/stomita/heroku-buildpack-phantomjs",
    }
    assert out.wants == ["redis", "postgres"]
    notes = " ".join(out.notes)
    assert "SECRET_TOKEN" in notes and "postdeploy" in notes and out.release is None


def test_broken_app_json_does_not_block_the_procfile(tmp_path: Path) -> None:
    files = {"app.json": HEROKU_PYTHON_BROKEN, "Procfile": "web: gunicorn x.wsgi\n", "requirements.txt": ""}
    plan, _ = plan_for(tmp_path, files)
    assert plan.processes[0].command == "gunicorn x.wsgi"
    assert any(n.startswith("app.json is invalid: not valid JSON") for n in plan.notes)


# --- merging, safety ---------------------------------------------------------------------------


def test_first_file_wins_field_by_field(tmp_path: Path) -> None:
    files = {
        "railway.json": json.dumps({"deploy": {"startCommand": "node railway.js"}}),
        "fly.toml": '[processes]\napp = "node fly.js"\n[deploy]\nrelease_command = "node migrate.js"\n'
        '[env]\nA = "fly"\nB = "fly"\n',
        "app.json": json.dumps({"env": {"B": "heroku", "C": {"value": 3}}}),
        "package.json": "{}",
    }
    plan, _ = plan_for(tmp_path, files)
    assert (plan.processes[0].command, plan.release_command, plan.source) == (
        "node railway.js",
        "node migrate.js",
        "railway.json",
    )
    assert plan.env_defaults == {"A": "fly", "B": "fly", "C": "3"}


def test_env_defaults_are_filtered(tmp_path: Path) -> None:
    big = "x" * (33 * 1024)
    write_files(tmp_path, {"fly.toml": f'[env]\nPORT = "1"\nPATH = "/evil"\nOK = true\nBIG = "{big}"\n'})
    out = load_platform_files(tmp_path, service_name="web", app_dir=None)
    assert out.env_defaults == {"OK": "true"}


def test_platform_file_symlink_out_of_repo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "fly.toml").symlink_to("/etc/passwd")
    out = load_platform_files(tmp_path, service_name="web", app_dir=None)
    (error,) = out.errors
    assert "symlink" in error.message and "root:" not in str(error)


def test_commands_are_not_run_while_parsing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    write_files(tmp_path, {"railway.json": json.dumps({"build": {"buildCommand": f"touch {marker}"},
                                                       "deploy": {"startCommand": f"touch {marker}"}})})  # fmt: skip
    plan, _ = plan_for(tmp_path, {})
    assert plan.build_command == f"touch {marker}" and not marker.exists()


@pytest.mark.parametrize(
    ("command", "kept"),
    [
        ("pip install -r requirements.txt", None),
        ("npm install && npm run build", "npm run build"),
        ("npm ci --include=dev && npm run build", "npm run build"),
        ("yarn && yarn build", "yarn build"),
        ("yarn install --frozen-lockfile", None),
        ("poetry install && python manage.py collectstatic --noinput", "python manage.py collectstatic --noinput"),
        ("./build.sh", "./build.sh"),
        ("hugo --gc --minify", "hugo --gc --minify"),
    ],
)
def test_install_steps_are_left_to_the_installer(command: str, kept: str | None) -> None:
    assert strip_install_steps(command)[0] == kept


def test_notes_are_bounded(tmp_path: Path) -> None:
    """Notes reach agents: a blueprint with hundreds of generated secrets yields a bounded list."""
    entries = "".join(f"      - key: SECRET_{i}\n        generateValue: true\n" for i in range(300))
    blueprint = f"services:\n  - type: web\n    name: web\n    startCommand: node s.js\n    envVars:\n{entries}"
    plan, _ = plan_for(tmp_path, {"render.yaml": blueprint, "package.json": "{}"})
    assert len(plan.notes) == 21 and plan.notes[-1] == "... and 280 more"


def test_heroku_formation_scaled_to_zero(tmp_path: Path) -> None:
    app = {"formation": {"web": {"quantity": 1}, "worker": {"quantity": 0}, "clock": {"quantity": 1}}}
    files = {
        "app.json": json.dumps(app),
        "Procfile": "web: gunicorn app:app\nworker: python worker.py\nclock: python clock.py\n",
        "requirements.txt": "gunicorn\n",
    }
    plan, _ = plan_for(tmp_path, files)
    assert [p.name for p in plan.processes] == ["web", "clock"]
    assert any("'worker' with quantity 0" in n for n in plan.notes)


# render-examples/ioredis render.yaml: a Redis and one background worker, no web service
RENDER_IOREDIS = """services:
  # Create Redis service
  - type: redis
    name: ioredis-redis
    ipAllowList: []

  # Create background worker service
  - type: worker
    name: ioredis-worker
    env: node
    buildCommand: "yarn"
    startCommand: "yarn run redis-url"
    envVars:
      # Set REDIS_URL environment variable
      - key: REDIS_URL
        fromService:
          name: ioredis-redis
          type: redis
          # Use connectionString available from Redis service above
          property: connectionString
"""
# render-examples/nextjs-hello-world render.yaml (HEAD of the fetched snapshot): `;` between install and build
RENDER_NEXT = """services:
- type: web
  name: next-js
  runtime: node
  plan: starter
  buildCommand: yarn; yarn build
  startCommand: yarn start
  autoDeploy: false
  envVars:
  - key: NODE_ENV
    value: production
# Uncomment the following to deploy this app as a static site on render
# - type: web
#   name: nextjs-static
#   runtime: static
#   buildCommand: yarn; yarn build
#   staticPublishPath: out
#   pullRequestPreviewsEnabled: true     # optional
#   envVars:
#   - key: NODE_ENV
#     value: production

"""


def test_render_lone_worker(tmp_path: Path) -> None:
    plan, kind = plan_for(tmp_path, {"render.yaml": RENDER_IOREDIS, "package.json": "{}"})
    assert kind == ServiceType.backend and plan.wants == ("redis",)
    assert [(p.name, p.command, p.routed) for p in plan.processes] == [("web", "yarn run redis-url", False)]
    assert plan.build_command is None


def test_render_next_build_after_semicolon(tmp_path: Path) -> None:
    package = json.dumps({"dependencies": {"next": "14"}, "scripts": {"build": "next build", "start": "next start"}})
    plan, _ = plan_for(tmp_path, {"render.yaml": RENDER_NEXT, "package.json": package})
    assert (plan.processes[0].command, plan.build_command, plan.env_defaults) == (
        "yarn start",
        "yarn build",
        {"NODE_ENV": "production"},
    )


# render-examples/logfire-pydantic render.yaml (HEAD of the fetched snapshot): the projects/environments form
RENDER_LOGFIRE = """projects:
  - name: logfire-render-demo
    environments:
      - name: production
        # PostgreSQL database with pgvector extension
        databases:
          - name: logfire-render-db
            databaseName: render_qa_db
            user: render_qa_user
            plan: basic-1gb
            region: oregon
            postgresMajorVersion: "17"

        # Services in the production environment
        services:
          # Backend API (FastAPI + Pydantic AI + Logfire)
          - type: web
            name: logfire-render-api
            runtime: python
            plan: starter
            region: oregon
            buildCommand: uv sync --no-dev --frozen
            startCommand: uv run uvicorn backend.main:app --host 0.0.0.0 --port $PORT
            healthCheckPath: /health
            envVars:
              # API Keys (will prompt for values on first deploy)
              - key: OPENAI_API_KEY
                sync: false
              - key: ANTHROPIC_API_KEY
                sync: false
              - key: LOGFIRE_TOKEN
                sync: false
              - key: LOGFIRE_READ_TOKEN
                sync: false
              # Database connection (auto-injected from database)
              - key: DATABASE_URL
                fromDatabase:
                  name: logfire-render-db
                  property: connectionString
              # Pipeline configuration
              - key: QUALITY_THRESHOLD
                value: "85"
              - key: ACCURACY_THRESHOLD
                value: "70"
              - key: MAX_ITERATIONS
                value: "1"
              - key: MAX_TOKENS
                value: "2000"
              # RAG configuration
              - key: RAG_TOP_K
                value: "20"
              - key: SIMILARITY_THRESHOLD
                value: "0.3"
              - key: VERIFICATION_THRESHOLD
                value: "0.30"
              # Performance settings
              - key: ENABLE_CACHING
                value: "true"
              - key: LOG_LEVEL
                value: INFO

          # Frontend (Next.js Static Site)
          - type: web
            runtime: static
            name: logfire-render-frontend
            rootDir: frontend
            buildCommand: rm -rf node_modules/.cache .next out && npm ci && npm run build
            staticPublishPath: out
            pullRequestPreviewsEnabled: true
            envVars:
              # API URL - full public URL of the backend service
              - key: NEXT_PUBLIC_API_URL
                value: https://logfire-render-api-fqx1.onrender.com
            routes:
              - type: rewrite
                source: /*
                destination: /index.html

"""


def test_render_projects_form_and_uv_run(tmp_path: Path) -> None:
    files = {"render.yaml": RENDER_LOGFIRE, "pyproject.toml": "[project]\nname='x'\ndependencies=['fastapi']\n",
             "uv.lock": "", "frontend/package.json": json.dumps({"scripts": {"build": "next build"}})}  # fmt: skip
    plan, kind = plan_for(tmp_path, files)
    assert kind == ServiceType.webapp and plan.source == "render.yaml" and plan.wants == ("postgres",)
    # `uv run` dropped: the build's virtualenv is on PATH; `uv sync` is the installer's job
    assert plan.processes[0].command == "uvicorn backend.main:app --host 0.0.0.0 --port $PORT"
    assert plan.build_command is None
    assert plan.env_defaults["QUALITY_THRESHOLD"] == "85" and plan.env_defaults["LOG_LEVEL"] == "INFO"
    assert "OPENAI_API_KEY" not in plan.env_defaults and "DATABASE_URL" not in plan.env_defaults
    plan, kind = plan_for(tmp_path, {}, service_name="logfire-render-frontend")
    assert kind == ServiceType.webapp_static
    assert (plan.app_dir, plan.static_dir, plan.build_command, plan.stack) == (
        "frontend",
        "out",
        "rm -rf node_modules/.cache .next out && npm run build",
        Stack.node,
    )
    assert plan.env_defaults == {"NEXT_PUBLIC_API_URL": "https://logfire-render-api-fqx1.onrender.com"}


@pytest.mark.parametrize(
    ("command", "unwrapped"),
    [
        ("uv run gunicorn --bind=0.0.0.0:8080 app:app", "gunicorn --bind=0.0.0.0:8080 app:app"),
        ("poetry run python manage.py migrate && poetry run gunicorn x.wsgi",
         "python manage.py migrate && gunicorn x.wsgi"),
        ("uv run --with rich python x.py", "uv run --with rich python x.py"),
        ("npm run start", "npm run start"),
    ],
)  # fmt: skip
def test_environment_wrappers_are_unwrapped(command: str, unwrapped: str) -> None:
    assert unwrap_runner(command) == unwrapped
