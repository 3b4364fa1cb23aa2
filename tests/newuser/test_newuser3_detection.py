"""Two repos whose command was in the repo, where deploy_app did not look (newuser3, 2026-12-02).

A Streamlit app (requirements.txt: streamlit; streamlit_app.py) was refused with "Found: requirements.txt. Fix: pass
start_command (e.g. 'python app.py')"; named app.py it ran as `python app.py`, which only prints "run it with:
streamlit run app.py" and exits. It is detected now (`streamlit run <script>` on $PORT, headless); with that command
the app went live in 48 s on this box (its install is ~100 MB, so the deploy is not repeated here: the plan is).

A Procfile's lines were not named in the queued event, as a detected command is.

A Node app with a Dockerfile (`CMD ["node", "src/index.js"]`, no start script) was refused with "pass its CMD as
start_command"; the refusal now gives the command, with the image's fixed port turned into $PORT, and that call goes
live (a real `inkmcp serve`, the session's local server with an account of this file's own, and the official MCP
client over streamable HTTP)."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from inkmcp.build.detect import derive_plan, dockerfile_command
from tests.e2e.test_deploy import deploy_live, via_proxy
from tests.support import ServerProc, call_error, git_repo, mcp_session, traversable_tmpdir

ACCOUNT = f"newuser3-{uuid.uuid4().hex[:8]}"


def _command(root: Path, files: dict[str, str]) -> str:
    for name, text in files.items():
        (root / name).write_text(text)
    plan, _ = derive_plan(root, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    return plan.processes[0].command


@pytest.mark.parametrize("script", ["streamlit_app.py", "app.py", "dashboard.py"])
def test_a_streamlit_app_is_run_by_streamlit(tmp_path: Path, script: str) -> None:
    files = {"requirements.txt": "streamlit==1.40\npandas\n", script: "import streamlit as st\n\nst.title('hi')\n",
             "helpers.py": "def f():\n    return 1\n"}  # fmt: skip
    assert _command(tmp_path, files) == \
        f"streamlit run {script} --server.port $PORT --server.address 0.0.0.0 --server.headless true"


def test_streamlit_prefers_its_own_default_script(tmp_path: Path) -> None:
    page = "from streamlit import title\n\ntitle('x')\n"
    files = {"pyproject.toml": '[project]\nname = "d"\nversion = "0"\ndependencies = ["streamlit>=1.30"]\n',
             "app.py": page, "streamlit_app.py": page}  # fmt: skip
    assert _command(tmp_path, files).startswith("streamlit run streamlit_app.py ")


def test_a_flask_app_beside_streamlit_in_the_dependencies_is_not_taken_for_it(tmp_path: Path) -> None:
    files = {"requirements.txt": "flask\ngunicorn\nstreamlit\n",
             "app.py": "from flask import Flask\n\napp = Flask(__name__)\n"}  # fmt: skip
    assert _command(tmp_path, files).startswith("gunicorn app:app")


def test_the_procfiles_commands_are_named_as_a_detected_one_is(tmp_path: Path) -> None:
    """A Django shop with `release`, `web` and `worker` lines: the queued event said only "queued: commit ...",
    where a detected command is named ("runs `gunicorn ...` (detected; ...)"): which line ran was not said."""
    (tmp_path / "requirements.txt").write_text("django\ngunicorn\n")
    (tmp_path / "Procfile").write_text("release: python manage.py migrate\nweb: gunicorn shop.wsgi\n"
                                       "worker: python manage.py runworker\n")  # fmt: skip
    plan, _ = derive_plan(tmp_path, service_name="web", service_type=None, build_command=None, start_command=None,
                          port=None)  # fmt: skip
    assert plan.notes[0] == ("runs the Procfile's web: `gunicorn shop.wsgi`, worker: `python manage.py runworker`, "
                             "release: `python manage.py migrate`"), plan.notes


@pytest.mark.parametrize(("dockerfile", "command"), [
    ('FROM node:20\nEXPOSE 8080\nCMD ["node", "src/index.js"]\n', "node src/index.js"),
    ("FROM python:3.12\nCMD uvicorn main:app --port 8000\n", "uvicorn main:app --port $PORT"),
    ('FROM python\nENTRYPOINT ["gunicorn"]\nCMD ["-b", "0.0.0.0:8000", "a:b"]\n', "gunicorn -b 0.0.0.0:$PORT a:b"),
    ('FROM python\nCMD ["python", \\\n  "app.py"]\n', None),  # a continued line: not guessed at
    ("FROM nginx\n", None),
])  # fmt: skip
def test_the_dockerfiles_command(dockerfile: str, command: str | None) -> None:
    assert dockerfile_command(dockerfile) == command


@pytest.mark.slow
@pytest.mark.asyncio
async def test_the_refusal_names_the_dockerfiles_command_and_it_goes_live(server: ServerProc) -> None:
    repos = traversable_tmpdir("inkmcp-newuser3-docker-")
    repo = git_repo(repos / "docker-node", {
        "Dockerfile": 'FROM node:20-alpine\nWORKDIR /app\nCOPY . .\nEXPOSE 8080\nCMD ["node", "src/index.js"]\n',
        "package.json": '{"name": "docker-node", "version": "1.0.0"}\n',
        "src/index.js": "require('http').createServer((q, s) => s.end('from the CMD'))"
                        ".listen(process.env.PORT || 8080);\n",
    })  # fmt: skip
    project = f"nu3-docker-{uuid.uuid4().hex[:6]}"
    async with mcp_session(server, server.keys[ACCOUNT]) as s:
        error = await call_error(s, "deploy_app", repo_url=str(repo), project_name=project)
        assert "does not run the Dockerfile: pass its CMD as start_command (start_command='node src/index.js';" in error
        dep = await deploy_live(s, repo_url=str(repo), project_name=project, start_command="node src/index.js")
        assert via_proxy(server, dep["url"]).text == "from the CMD"
    shutil.rmtree(repos, ignore_errors=True)
