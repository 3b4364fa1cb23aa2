"""A uvicorn command that names no address (newuser6, 2026-12-03).

A FastAPI app with a Procfile `web: uvicorn main:app` (FastAPI's tutorial runs `uvicorn main:app --reload`; the user
dropped --reload) failed its first deploy: uvicorn listened on 127.0.0.1:8000, the bind guard refused the port, and the
failure said "pass port=8000 to deploy_app". With port=8000 it went live on the local provider listening on loopback
only: a port of the whole machine (no other project can have it), and on Coolify the container's loopback, which the
proxy cannot reach. A routed process that is one uvicorn command now runs with UVICORN_HOST=0.0.0.0 and
UVICORN_PORT=$PORT for what its flags do not say (uvicorn's CLI reads them; its flags win), said in the queued event;
the same repo goes live with one call. hypercorn, which Quart's deployment docs run as `hypercorn module:app` and which
reads no env, gets `--bind 0.0.0.0:$PORT` when it names no bind (nor a config file).

Units read the repo as deploy_app does (`derive_plan`); the end-to-end test is a real `inkmcp serve` (the session's
local server, an account of this file's own), the official MCP client over streamable HTTP, a real fastapi + uvicorn
install.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import BuildPlan
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, git_repo, mcp_session

ACCOUNT = f"newuser6u-{uuid.uuid4().hex[:8]}"
MAIN = """from fastapi import FastAPI

app = FastAPI()


@app.get("/")
def read_root():
    return {"Hello": "World"}
"""


def _plan(root: Path, procfile: str) -> BuildPlan:
    root.mkdir(parents=True)
    (root / "requirements.txt").write_text("fastapi\nuvicorn\n")
    (root / "main.py").write_text(MAIN)
    (root / "Procfile").write_text(procfile)
    return derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                       port=None)[0]  # fmt: skip


@pytest.mark.parametrize(("line", "runs"), [
    ("web: uvicorn main:app", "UVICORN_HOST=0.0.0.0 UVICORN_PORT=$PORT uvicorn main:app"),
    ("web: uvicorn main:app --reload", "UVICORN_HOST=0.0.0.0 UVICORN_PORT=$PORT uvicorn main:app --reload"),
    ("web: uvicorn main:app --port $PORT", "UVICORN_HOST=0.0.0.0 uvicorn main:app --port $PORT"),
    ("web: uvicorn main:app --host=0.0.0.0", "UVICORN_PORT=$PORT uvicorn main:app --host=0.0.0.0"),
    # named, or not one plain uvicorn command: as written
    ("web: uvicorn main:app --host 0.0.0.0 --port $PORT", "uvicorn main:app --host 0.0.0.0 --port $PORT"),
    ("web: uvicorn main:app --uds /tmp/app.sock", "uvicorn main:app --uds /tmp/app.sock"),
    ("web: cd . && uvicorn main:app", "cd . && uvicorn main:app"),
    ("web: gunicorn main:app -k uvicorn.workers.UvicornWorker", "gunicorn main:app -k uvicorn.workers.UvicornWorker"),
    ("web: hypercorn main:app", "hypercorn main:app --bind 0.0.0.0:$PORT"),
    ("web: hypercorn main:app --workers 2", "hypercorn main:app --workers 2 --bind 0.0.0.0:$PORT"),
    ("web: hypercorn main:app -b 0.0.0.0:$PORT", "hypercorn main:app -b 0.0.0.0:$PORT"),
    ("web: hypercorn -c hypercorn.toml main:app", "hypercorn -c hypercorn.toml main:app"),
])  # fmt: skip
def test_a_uvicorn_command_without_an_address_is_told_where_to_listen(tmp_path: Path, line: str, runs: str) -> None:
    plan = _plan(tmp_path / "app", line + "\n")
    assert [p.command for p in plan.processes] == [runs]
    said = [n for n in plan.notes if "what uvicorn reads for a flag it is not given" in n or
            "it runs with --bind 0.0.0.0:$PORT added" in n]
    assert len(said) == (0 if runs == line.removeprefix("web: ") else 1), plan.notes


def test_a_worker_running_uvicorn_is_left_alone(tmp_path: Path) -> None:
    """Only a routed process gets $PORT: a second, unrouted uvicorn (an internal API) is the app's own business."""
    plan = _plan(tmp_path / "app", "web: uvicorn main:app --host 0.0.0.0 --port $PORT\nworker: uvicorn other:app\n")
    assert {p.name: p.command for p in plan.processes}["worker"] == "uvicorn other:app"


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_procfile_uvicorn_without_an_address_goes_live_with_one_call(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "fastapi-procfile", {"requirements.txt": "fastapi\nuvicorn\n", "main.py": MAIN,
                                                  "Procfile": "web: uvicorn main:app\n"})  # fmt: skip
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await deploy_live(s, repo_url=str(repo), project_name=f"nu6-uvicorn-{uuid.uuid4().hex[:6]}")
        assert "where uvicorn's default is 127.0.0.1:8000: it runs with UVICORN_HOST=0.0.0.0 UVICORN_PORT=$PORT" \
            in dep["history"][0], dep["history"]
        assert via_proxy(server, dep["url"]).json() == {"Hello": "World"}


@pytest.mark.slow
@pytest.mark.asyncio
async def test_a_procfile_hypercorn_without_a_bind_goes_live_with_one_call(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "hypercorn-procfile", {"requirements.txt": "fastapi\nhypercorn\n", "main.py": MAIN,
                                                    "Procfile": "web: hypercorn main:app\n"})  # fmt: skip
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await deploy_live(s, repo_url=str(repo), project_name=f"nu6-hypercorn-{uuid.uuid4().hex[:6]}")
        assert "it runs with --bind 0.0.0.0:$PORT added" in dep["history"][0], dep["history"]
        assert via_proxy(server, dep["url"]).json() == {"Hello": "World"}
