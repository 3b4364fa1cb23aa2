"""redteam3: deploy_app's commands and a repo's plan were stored at any size in the shared control database.

A deployment records its settings (on the service) and its build plan (on the deployment row), and deployment rows
are never pruned. mallory's `deploy_app(start_command="python3 app.py # <1 MB>")` stored the megabyte twice and
failed a second later ("Argument list too long": one argument is at most 128 KiB, so it could never run); each retry
with another comment added ~2 MB to the control database (measured: 8.9 -> 12.4 -> 14.6 MB), on the data dir's
filesystem every account shares. The same through her repo: a Procfile line of 100 KB is a plan of 100 KB, live and
stored again on every deploy.

Fix (`core/deployments.py`): deploy_app's commands, paths and URL have a length cap (ARGUMENT_CHARS), checked before
anything is fetched, and a plan larger than MAX_PLAN_BYTES is refused, naming the files to shorten.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.security.conftest import ROOT, deploy_failure, session
from tests.support import ServerProc, git_repo

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: shares a real server, fetches and plans

PROJECT = "rt3-plansize"
APP = ("import http.server, os\nhttp.server.ThreadingHTTPServer(('127.0.0.1', int(os.environ['PORT'])), "
       "http.server.SimpleHTTPRequestHandler).serve_forever()\n")


def noise(chars: int) -> str:
    """Text PostgreSQL cannot compress."""
    return secrets.token_urlsafe(chars)[:chars]


def largest_rows(server: ServerProc, account: str) -> dict[str, int]:
    """The largest stored plan and service settings of `account`'s services, in bytes as stored."""
    url = server.control_url().replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(max(pg_column_size(d.plan)), 0), coalesce(max(pg_column_size(s.settings)), 0), count(d.id)"
            " FROM services s JOIN projects p ON p.id = s.project_id JOIN accounts a ON a.id = p.account_id"
            " LEFT JOIN deployments d ON d.service_id = s.id WHERE a.name = %s", (account,)).fetchone()
    assert row is not None
    return {"plan": int(row[0]), "settings": int(row[1]), "deployments": int(row[2])}


@pytest.fixture(scope="module")
def app_repo(repos: Path) -> Path:
    return git_repo(repos / "rt3-plansize-app", {"app.py": APP})


async def test_a_megabyte_command_is_refused_before_anything_is_stored(server: ServerProc, app_repo: Path) -> None:
    """deploy_app with a 1 MB start_command (and then build_command): refused naming the argument, and none of
    mallory's stored plans or settings is larger than the caps allow."""
    async with session(server, "mallory") as m:
        for argument in ("start_command", "build_command"):
            args: dict[str, Any] = {"repo_url": str(app_repo), "project_name": PROJECT, "mode": "persistent",
                                    "start_command": "python3 app.py"}
            args[argument] = "python3 app.py # " + noise(1 << 20)
            said = await deploy_failure(m, **args)
            assert argument in said and "at most" in said, said[:500]
    stored = largest_rows(server, "mallory")
    assert stored["plan"] < 80 << 10 and stored["settings"] < 40 << 10, stored


async def test_a_repo_giving_a_huge_plan_is_refused(server: ServerProc, repos: Path) -> None:
    """mallory's Procfile has a 100 KB command line (short enough to run): refused as a build plan over the cap,
    saying which files to shorten; before the fix it went live and stored its 100 KB on every deploy."""
    repo = git_repo(repos / "rt3-plansize-procfile",
                    {"app.py": APP, "Procfile": f"web: python3 app.py # {noise(100_000)}\n"})
    async with session(server, "mallory") as m:
        said = await deploy_failure(m, repo_url=str(repo), project_name=f"{PROJECT}-repo", mode="persistent")
    assert "build plan" in said and "Procfile" in said, said[:500]
    stored = largest_rows(server, "mallory")
    assert stored["plan"] < 80 << 10, stored
