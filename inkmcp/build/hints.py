"""Advice for a release that failed at start, read from the app's own output (what an agent can act on).

The health_check failure quotes the app's last output lines; these hints add the one fact the agent cannot
get from them: a command not found names the dependency to add (or says the server has no such toolchain),
a missing table names the release command that would create it, an unset env var names the argument that
sets it, and the app's own error line is quoted when its tail (a Node error object dump) pushed it out.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

_PREFIX = re.compile(r"^[\w.-]+ \| ")
_NOT_FOUND = re.compile(
    r"inkmcp: could not run (?P<cmd>\S+): No such file or directory"  # the start command's own program
    r"|^(?:/bin/)?(?:ba)?sh: (?:\d+: |line \d+: )?(?P<cmd2>[\w./@+-]+): (?:command )?not found$"  # npm start's shell
)
# Python servers and tools a start command names, each installed from the app's dependencies (its pip name).
_PYTHON_TOOLS = {
    "gunicorn": "gunicorn", "uvicorn": "uvicorn", "hypercorn": "hypercorn", "daphne": "daphne",
    "waitress-serve": "waitress", "flask": "flask", "celery": "celery", "streamlit": "streamlit",
    "django-admin": "django", "fastapi": "fastapi[standard]", "granian": "granian", "rq": "rq", "dramatiq": "dramatiq",
    "alembic": "alembic", "huey_consumer": "huey", "panel": "panel", "gradio": "gradio",
}  # fmt: skip
_NODE_TOOLS = frozenset({
    "next", "nuxt", "nodemon", "ts-node", "tsx", "vite", "serve", "pm2", "pm2-runtime", "nest", "remix-serve",
    "astro", "react-scripts", "http-server", "concurrently", "prisma", "knex", "sequelize", "typeorm",
})  # fmt: skip
_TOOLCHAINS = {
    "go": "Go", "cargo": "Rust", "rustc": "Rust", "ruby": "Ruby", "bundle": "Ruby", "rails": "Ruby", "rake": "Ruby",
    "puma": "Ruby", "php": "PHP", "composer": "PHP", "java": "Java", "mvn": "Java", "gradle": "Java",
    "dotnet": ".NET", "mix": "Elixir", "elixir": "Elixir", "deno": "Deno", "bun": "Bun", "dart": "Dart",
}  # fmt: skip
_NO_TABLE = re.compile(
    r"""relation "(?P<pg>[^"]+)" does not exist|no such table: (?P<lite>[\w.]+)|Table '(?P<my>[^']+)' doesn't exist"""
)
_ENV_KEY = re.compile(r"^KeyError: '(?P<name>[A-Z][A-Z0-9_]*)'$")
_ADDON_VARS = {"DATABASE_URL": "postgres", "REDIS_URL": "redis"}
_LOCAL_SERVICE = re.compile(
    r"ECONNREFUSED (?:127\.0\.0\.1|::1):(?P<port>5432|6379)\b"
    r"|connecting to (?:localhost|127\.0\.0\.1):(?P<port2>6379)\b"
    r"|connection to server at \"(?:localhost|127\.0\.0\.1|::1)\"(?: \([^)]*\))?, port (?P<port3>5432)\b"
)
# A development server listens on its own port (5000, 8000, 5173) and on 127.0.0.1 only, as it is meant to: its
# output names it, and the way out is the production command, not port=5000 (a port every service here shares).
# Needles from before the bind too: where the bind guard refuses the port (EPERM), a server never gets to its banner.
_DEV_SERVERS = (
    (("This is a development server", "* Serving Flask app", "* Debug mode: "),
     "this is Flask's development server (`flask run`, `app.run()`): start the "
     "production server instead, start_command='gunicorn app:app --bind 0.0.0.0:$PORT' (module:variable of the Flask "
     "app, with gunicorn in the dependencies), or `flask run --host 0.0.0.0 --port $PORT`"),
    (("Starting development server at",), "this is Django's development server (`manage.py runserver`): start "
     "start_command='gunicorn <project>.wsgi --bind 0.0.0.0:$PORT' (with gunicorn in the dependencies), or omit "
     "start_command and let InkMCP detect it"),
    (("use --host to expose", "error when starting dev server"),
     "this is Vite's development server: omit start_command (and port), and InkMCP runs "
     "the build script and serves what it writes (dist/)"),
)
# --- newuser3: an import of a package the dependencies do not list (`import yaml` with only flask in
# requirements.txt; `require('express')` with no dependencies): the app died quoting the error and nothing said
# which file to change, nor that the import's name is not always the package's.
# --- newuser6: `node --env-file=.env` (Node's own loader, in the start scripts of Express starters) exits at once,
# printing only "node: .env: not found", when the file is not in the commit, as a .env file never is (it holds the
# secrets; .gitignore lists it): the failure quoted that line and nothing said where the values go instead
_NODE_ENV_FILE = re.compile(r"^node: (?P<file>[^\s:]+): not found$")
# --- end
_PY_NO_MODULE = re.compile(r"^ModuleNotFoundError: No module named '(?P<name>[\w.]+)'")
_NODE_NO_MODULE = re.compile(r"^Error: Cannot find module '(?P<name>[^']+)'")
_PIP_NAMES = {
    "yaml": "PyYAML", "PIL": "Pillow", "cv2": "opencv-python-headless", "sklearn": "scikit-learn",
    "bs4": "beautifulsoup4", "dotenv": "python-dotenv", "jwt": "PyJWT", "dateutil": "python-dateutil",
    "psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "magic": "python-magic", "jose": "python-jose",
    "multipart": "python-multipart", "google.protobuf": "protobuf", "attr": "attrs", "Crypto": "pycryptodome",
    "OpenSSL": "pyOpenSSL", "serial": "pyserial", "dns": "dnspython", "zmq": "pyzmq", "docx": "python-docx",
    "telegram": "python-telegram-bot", "discord": "discord.py", "slugify": "python-slugify", "git": "GitPython",
    "psycopg": "psycopg[binary]",  # plain psycopg needs the system's libpq
}  # fmt: skip
# SQLAlchemy 2.1 opens a `postgresql://` URL (what DATABASE_URL is) with psycopg 3: an app that installs only
# psycopg2-binary, as SQLAlchemy 1.x/2.0 apps do, dies on `import psycopg` inside SQLAlchemy's dialect
_SQLALCHEMY_PSYCOPG = "sqlalchemy/dialects/postgresql/psycopg.py"


def _missing_module(text: str) -> str | None:
    """What to add for an import the app's dependencies do not provide, or None."""
    if (m := _PY_NO_MODULE.match(text)) is not None:
        name = m.group("name")
        top = name.split(".")[0]
        package = _PIP_NAMES.get(name) or _PIP_NAMES.get(top) or top
        named = f"{package} (the package that provides `{top}`)" if package != top else package
        return (f"the app imports `{name}`, which is not installed: add {named} to the app's Python dependencies "
                "(requirements.txt or pyproject.toml), which the build installs; if it is the app's own module, "
                "commit it (files listed in .gitignore are not deployed) or correct the import")
    if (m := _NODE_NO_MODULE.match(text)) is not None:
        name = m.group("name")
        if name.startswith((".", "/")):
            shown = re.sub(r"^/.*?/src/", "./", name)
            return (f"`{shown}` is not in the deployed files: a file the build writes (dist/, build/) needs the "
                    "build script in package.json (scripts.build, which InkMCP runs) or a build_command; a file "
                    "listed in .gitignore is not deployed: commit it, or correct the path")
        package = name if name.startswith("@") else name.split("/")[0]
        if name.startswith("@"):
            package = "/".join(name.split("/")[:2])
        return (f"the app requires `{name}`, which is not installed: add {package} to package.json's "
                "\"dependencies\" (`npm install " + package + "` writes it and the lock file), commit both, and "
                "deploy again")
    return None


_ERROR_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*(?:Error|Exception)|error|Error)(?: \[\w+\])?: \S")


def _text(line: str) -> str:
    return _PREFIX.sub("", line, count=1).strip()


def missing_command_fix(command: str) -> str:
    """What to do when the start (or release) command's program is on no PATH the app sees."""
    name = command.rsplit("/", 1)[-1]
    if name in _PYTHON_TOOLS:
        return (f"`{name}` is not installed: add {_PYTHON_TOOLS[name]} to the app's Python dependencies "
                "(requirements.txt or pyproject.toml), which the build installs into the app's virtualenv")
    if name in _NODE_TOOLS:
        return (f"`{name}` is not installed: add the package that provides it to package.json's dependencies "
                "(npm ci installs them; its bin is on the app's PATH), or start with `node <file>`")
    if name in _TOOLCHAINS:
        return (f"`{name}` is not on this server: InkMCP builds Python and Node.js apps and installs no "
                f"{_TOOLCHAINS[name]} toolchain; commit a static Linux binary and start it (e.g. "
                "start_command='./bin/server'), or deploy a Python/Node.js app")
    if "/" in command:
        return (f"`{command}` is not in the commit: commit it (with its executable bit and a #! line for a script) "
                "or correct the path, relative to the app directory")
    return (f"`{name}` is neither in the app's dependencies (its virtualenv or node_modules/.bin) nor on the "
            "server: add the package that provides it to the dependencies, or run a file of the repo "
            "(`python x.py`, `node x.js`, `./bin/x`)")


def runtime_hint(recent: Sequence[str], tail: Sequence[str]) -> str | None:
    """One sentence of advice for the app's output `recent` (whose last lines, `tail`, the error quotes)."""
    texts = [_text(line) for line in recent]
    hints: list[str] = []
    for text in texts:
        if (m := _NOT_FOUND.search(text)) is not None:
            hints.append(missing_command_fix(m.group("cmd") or m.group("cmd2")))
            break
    for text in texts:  # --- newuser6
        if (m := _NODE_ENV_FILE.match(text)) is not None:
            env_file = m.group("file")
            hints.append(f"the start command loads {env_file} with node's --env-file, and {env_file} is not in the "
                         "deployed commit (a .env file stays out of git): pass its variables as env_vars to deploy_app "
                         f"(or update_env_vars; the app reads them from process.env), and write --env-file-if-exists="
                         f"{env_file} instead (or drop it) in the start command (package.json scripts.start), commit "
                         "and deploy again")
            break
    for text in texts:  # --- newuser3
        if (missing := _missing_module(text)) is not None:
            if text.endswith("'psycopg'") and any(_SQLALCHEMY_PSYCOPG in t for t in texts):
                missing = ("SQLAlchemy 2.1+ connects a postgresql:// URL (DATABASE_URL is one) with psycopg 3, which "
                           "is not installed: add psycopg[binary] to the app's Python dependencies (requirements.txt "
                           "or pyproject.toml); or, to keep psycopg2, pin sqlalchemy<2.1")
            hints.append(missing)
            break
    for text in reversed(texts):
        if (m := _NO_TABLE.search(text)) is not None:
            table = m.group("pg") or m.group("lite") or m.group("my")
            hints.append(f"the table {table!r} does not exist yet: run the app's migrations once per deployment, "
                         "before traffic switches, with a release command: a Procfile line such as "
                         "`release: python manage.py migrate`, `release: npm run migrate` or "
                         "`release: alembic upgrade head` (or inkmcp.yaml's `release:`), beside its `web:` line")
            break
    for i, text in enumerate(texts):
        if (m := _ENV_KEY.match(text)) is not None and any("environ" in t for t in texts[max(0, i - 6):i]):
            name = m.group("name")
            addon = _ADDON_VARS.get(name) or ("postgres" if name.startswith("PG") else None)
            if addon is not None:
                hints.append(f"the app reads the env var {name}, which is not set: pass database={addon!r} to "
                             f"deploy_app, which provisions {addon} for the project and sets {name}")
            else:
                hints.append(f"the app reads the env var {name}, which is not set: pass "
                             f"env_vars={{'{name}': '...'}} to deploy_app (or call update_env_vars)")
            break
    for text in texts:
        if (m := _LOCAL_SERVICE.search(text)) is not None:
            port = m.group("port") or m.group("port2") or m.group("port3")
            addon, var = ("redis", "REDIS_URL") if port == "6379" else ("postgres", "DATABASE_URL")
            hints.append(f"the app connects to {addon} on localhost:{port}, and nothing runs there: "
                         f"pass database={addon!r} to deploy_app and make the app read {var}, which that sets")
            break
    for needles, advice in _DEV_SERVERS:
        if any(needle in text for text in texts for needle in needles):
            hints.append(advice)
            break
    shown = {_text(line) for line in tail}
    error = next((t for t in texts if _ERROR_LINE.match(t)), None)
    if error is not None and error not in shown and not hints:
        hints.append(f"the app's error, above the lines quoted: {error[:300]}")
    elif error is not None and error not in shown:
        hints[-1] += f" (its error, above the lines quoted: {error[:300]})"
    return "; ".join(hints) if hints else None
