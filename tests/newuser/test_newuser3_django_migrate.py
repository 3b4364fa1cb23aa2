"""A Django app deployed without a release command (newuser3, 2026-12-02): no Procfile, so InkMCP detected
`gunicorn shop.wsgi` and ran collectstatic, but nothing ran `manage.py migrate`; with DEBUG off every page answered
"Server Error (500)" and the deploy failed at health_check with that body, while the runtime log held no traceback
(Django with DEBUG off logs none to the console): no cause anywhere. The failure now names the missing migrations and
the Procfile that runs them; with it the app goes live.

A manage.py of the standard library stands in for Django (what is tested is InkMCP's plan and failure around it, as
tests/e2e/test_new_user_dec2c.py does): `migrate` creates the table, the server answers 500 without it. A real
`inkmcp serve` (the session's local server, an account of this file's own), the official MCP client over
streamable HTTP."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call, git_commit, git_repo, mcp_session

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"

MANAGE = '''import os
import sqlite3
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

DB = "/tmp/django.sqlite3"
if sys.argv[1] == "collectstatic":
    os.makedirs("staticfiles", exist_ok=True)
elif sys.argv[1] == "migrate":
    sqlite3.connect(DB).execute("CREATE TABLE IF NOT EXISTS items (name text)")
    print("Applying items.0001_initial... OK")
else:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                body, status = str(len(sqlite3.connect(DB).execute("SELECT * FROM items").fetchall())), 200
            except sqlite3.OperationalError:  # DEBUG off: the traceback goes to mail_admins, not the console
                body, status = "<h1>Server Error (500)</h1>", 500
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body.encode())

    HTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
'''


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_django_500_without_migrations_names_the_release_line(server: ServerProc, repos: Path) -> None:
    files = {"requirements.txt": "", "manage.py": MANAGE, "shop/settings.py": "DEBUG = False\n"}
    repo = git_repo(repos / "shop", files)
    project = f"nu3-django-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), project_name=project,
                         start_command="python manage.py serve")  # fmt: skip
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed", dep
        head = dep["error"].partition("\nlast output:\n")[0]
        assert "answered GET / with HTTP 500" in head, head
        assert "Hint: this Django app answered 5xx, and no release command ran its migrations" in head, head
        assert "commit a Procfile with the lines `release: python manage.py migrate` and " \
               "`web: python manage.py serve`" in head, head
        git_commit(repo, {"Procfile": "release: python manage.py migrate\nweb: python manage.py serve\n"})
        dep = await deploy_live(s, repo_url=str(repo), project_name=project)
        assert via_proxy(server, dep["url"]).text == "0"
        assert "runs the Procfile's web: `python manage.py serve`, release: `python manage.py migrate`" in \
            dep["history"][0], dep["history"]
