"""Python ASGI frameworks whose own install brings the server, deployed from their quickstarts (newuser6, 2026-12-03).

- Litestar (requirements.txt `litestar[standard]`, app.py `app = Litestar([index])`, run locally with `litestar run`)
  was refused before any build: "app.py defines `app` (ASGI) but ... the dependencies list no server for it. Fix: add
  uvicorn to the dependencies". The `standard` extra (and `full`, `cli`) installs uvicorn[standard]; it runs as
  `uvicorn app:app` now.
- Quart (requirements.txt `quart`, `app.run()` under the main guard) ran as `python app.py`: Quart's development server
  on 127.0.0.1:5000, refused by the bind guard, and the failure said "pass port=5000 to deploy_app" and, read from its
  "Debug mode" line, "this is Flask's development server ... start_command='gunicorn app:app ...'" (gunicorn cannot
  serve an ASGI app). Quart requires hypercorn, which the build had installed; it runs as `hypercorn 'app:app'` now,
  and goes live with one call (a real `inkmcp serve`, the session's local server with an account of this file's own,
  the official MCP client over streamable HTTP, a real install of quart).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan
from inkmcp.build.plan import ServiceType
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, git_repo, mcp_session

ACCOUNT = f"newuser6f-{uuid.uuid4().hex[:8]}"

LITESTAR = """from litestar import Litestar, get


@get("/")
async def index() -> str:
    return "Hello, Litestar!"


app = Litestar([index])
"""
QUART = """from quart import Quart

app = Quart(__name__)


@app.route("/")
async def hello():
    return "hello from quart"

if __name__ == "__main__":
    app.run()
"""


def _commands(root: Path, files: dict[str, str]) -> list[str]:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    plan, kind = derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                             port=None)  # fmt: skip
    assert kind == ServiceType.webapp
    return [p.command for p in plan.processes]


@pytest.mark.parametrize("requirement", ["litestar[standard]", "litestar[standard,sqlalchemy]>=2.12", "litestar[full]"])
def test_litestar_with_the_extra_that_installs_uvicorn_runs_on_uvicorn(tmp_path: Path, requirement: str) -> None:
    assert _commands(tmp_path, {"requirements.txt": f"{requirement}\n", "app.py": LITESTAR}) == \
        ["uvicorn app:app --host 0.0.0.0 --port $PORT"]  # fmt: skip


def test_litestar_in_pyproject_and_poetry_counts_too(tmp_path: Path) -> None:
    pyproject = '[project]\nname = "x"\nversion = "0"\ndependencies = ["litestar[standard]>=2"]\n'
    assert _commands(tmp_path / "pep621", {"pyproject.toml": pyproject, "app.py": LITESTAR}) == \
        ["uvicorn app:app --host 0.0.0.0 --port $PORT"]  # fmt: skip
    poetry = ('[tool.poetry]\nname = "x"\nversion = "0"\n[tool.poetry.dependencies]\npython = "^3.11"\n'
              'litestar = {version = "^2", extras = ["standard"]}\n')
    assert _commands(tmp_path / "poetry", {"pyproject.toml": poetry, "app.py": LITESTAR}) == \
        ["uvicorn app:app --host 0.0.0.0 --port $PORT"]  # fmt: skip


def test_plain_litestar_still_names_the_server_to_add(tmp_path: Path) -> None:
    """Without an extra nothing installs a server: still refused, naming uvicorn (the refusal was right there)."""
    from inkmcp.errors import BuildPlanError

    with pytest.raises(BuildPlanError) as err:
        _commands(tmp_path, {"requirements.txt": "litestar\n", "app.py": LITESTAR})
    assert "add uvicorn to the dependencies" in (err.value.fix or "")


def test_quart_runs_on_the_hypercorn_it_requires(tmp_path: Path) -> None:
    assert _commands(tmp_path / "q", {"requirements.txt": "quart\n", "app.py": QUART}) == \
        ["hypercorn 'app:app' --bind 0.0.0.0:$PORT"]  # fmt: skip
    # uvicorn listed beside it is still preferred, as for any ASGI app
    assert _commands(tmp_path / "u", {"requirements.txt": "quart\nuvicorn\n", "app.py": QUART}) == \
        ["uvicorn app:app --host 0.0.0.0 --port $PORT"]  # fmt: skip


@pytest.mark.slow
@pytest.mark.asyncio
async def test_quarts_quickstart_goes_live_with_one_call(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "quart-hello", {"requirements.txt": "quart\n", "app.py": QUART})
    project = f"nu6-quart-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        dep = await deploy_live(s, repo_url=str(repo), project_name=project)
        assert "runs `hypercorn 'app:app' --bind 0.0.0.0:$PORT` (detected" in dep["history"][0], dep["history"]
        assert via_proxy(server, dep["url"]).text == "hello from quart"
