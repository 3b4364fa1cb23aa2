"""The stand-in's opt-in runner (inkmcp/coolify/standin/runner.py) on its own: a deployment really builds and
starts the repo at its commit, the proxy routes the application's host to it, a failed build leaves nothing
running, and stopping the application stops exactly its process. (tests/e2e runs it under a real InkMCP.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from inkmcp.coolify.standin.runner import AppRunner, local_repo_url
from tests.support import git_repo, traversable_tmpdir

APP = {"app.py": "import os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n"
                 "class H(BaseHTTPRequestHandler):\n"
                 "    def do_GET(self):\n"
                 "        b = os.environ['GREETING'].encode()\n"
                 "        self.send_response(200); self.send_header('Content-Length', str(len(b)))\n"
                 "        self.end_headers()\n"
                 "        self.wfile.write(b)\n"
                 "HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n"}
HOST = "web-demo.run-1.apps.test"


class FakeStandin:
    """What the runner uses of the stand-in: its lock, `_log`, and `runner`."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.runner: Any = None

    @staticmethod
    def _log(dep: Any, output: str, kind: str = "stdout") -> None:
        dep.log.append(output)


@pytest.fixture
def runner() -> Iterator[AppRunner]:
    root = traversable_tmpdir("inkmcp-runner-")
    r = AppRunner(root / "node", start_timeout=10).attach(FakeStandin())
    try:
        yield r
    finally:
        r.close()
        shutil.rmtree(root, ignore_errors=True)


def deploy(runner: AppRunner, repo: Path, commit: str, **fields: Any) -> tuple[Any, Any]:
    dep = SimpleNamespace(deployment_uuid=os.urandom(8).hex(), commit=commit, restart_only=False, status="in_progress",
                          started_at=time.monotonic(), duration=0.0, fail_with=None, log=[])
    app = SimpleNamespace(uuid="app-1", container=None, settings={}, envs=[
        SimpleNamespace(key="GREETING", value="hello", is_preview=False)],
        fields={"git_repository": local_repo_url(str(repo)), "fqdn": f"https://{HOST}", "build_pack": "nixpacks",
                "start_command": "python app.py", **fields})
    runner.begin(dep, app)
    deadline = time.monotonic() + 120
    while dep.duration == float("inf") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dep.duration != float("inf"), dep.log
    dep.status = "failed" if dep.fail_with else "finished"
    runner.finish(dep, app)
    return dep, app


def get(runner: AppRunner, host: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{runner.proxy_port}/", headers={"Host": host}, timeout=10)


def test_runs_routes_and_stops_exactly_its_process(runner: AppRunner) -> None:
    repo = git_repo(traversable_tmpdir("inkmcp-runner-repo-") / "demo", APP)
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert get(runner, HOST).status_code == 404  # nothing deployed: Traefik's 404
    dep, _ = deploy(runner, repo, commit)
    assert dep.fail_with is None, dep.log
    assert get(runner, HOST).text == "hello"
    assert get(runner, "other.run-1.apps.test").status_code == 404
    pid = runner.live["app-1"].popen.pid

    bad, _ = deploy(runner, repo, commit, build_command="sh -c 'echo no-such-tool-inkmcp >&2; exit 3'")
    assert bad.fail_with and "exited with code 3" in bad.fail_with
    assert any("no-such-tool-inkmcp" in line for line in bad.log)
    assert runner.live["app-1"].popen.pid == pid and get(runner, HOST).text == "hello"  # the old one serves
    assert not runner.pending

    runner.stop_app("app-1")
    assert get(runner, HOST).status_code == 404
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(f"/proc/{pid}") and \
            "Z" not in open(f"/proc/{pid}/stat").read().split()[2]:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    shutil.rmtree(repo.parent, ignore_errors=True)


def test_fetches_nothing_but_dev_hook_repos(runner: AppRunner) -> None:
    dep, _ = deploy(runner, Path("/nonexistent"), "HEAD", git_repository="https://github.com/a/b.git")
    assert dep.fail_with and "fetches only local repositories" in dep.fail_with and not runner.live
