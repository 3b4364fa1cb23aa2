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
        if kind == "stderr":
            dep.err.append(output)


@pytest.fixture
def runner() -> Iterator[AppRunner]:
    root = traversable_tmpdir("inkmcp-runner-")
    r = AppRunner(root / "node", start_timeout=10, time_scale=0.1).attach(FakeStandin())
    try:
        yield r
    finally:
        r.close()
        shutil.rmtree(root, ignore_errors=True)


def deploy(runner: AppRunner, repo: Path, commit: str, env: dict[str, str] | None = None,
           **fields: Any) -> tuple[Any, Any]:
    dep = SimpleNamespace(deployment_uuid=os.urandom(8).hex(), commit=commit, restart_only=False, status="in_progress",
                          started_at=time.monotonic(), duration=0.0, fail_with=None, log=[], err=[])
    app = SimpleNamespace(uuid="app-1", container=None, settings={}, status_plan=[], envs=[
        SimpleNamespace(key="GREETING", value="hello", is_preview=False), *[
            SimpleNamespace(key=k, value=v, is_preview=False) for k, v in (env or {}).items()]],
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


HEALTH = {"health_check_enabled": True, "health_check_path": "/", "health_check_port": "3000",
          "health_check_interval": 2, "health_check_timeout": 5, "health_check_retries": 5,
          "health_check_start_period": 5}  # fmt: skip
"""As the mapping sends them (fewer retries); the runner's time_scale=0.1 makes the window 1.5 s."""


def commit_of(repo: Path) -> str:
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture
def repo() -> Iterator[Path]:
    files = {**APP, "deaf.py": "import time\ntime.sleep(600)\n",
             "notfound.py": APP["app.py"].replace("send_response(200)", "send_response(404)")}
    r = git_repo(traversable_tmpdir("inkmcp-runner-repo-") / "demo", files)
    yield r
    shutil.rmtree(r.parent, ignore_errors=True)


def test_health_check_gates_the_rolling_update_as_coolify_does(runner: AppRunner, repo: Path) -> None:
    """Healthy: switched. A process that never listens, or answers 404 (curl -f fails on >= 400): "not healthy",
    the container's output in the log as stderr, the new process stopped, the old one keeps serving."""
    commit = commit_of(repo)
    good, _ = deploy(runner, repo, commit, **HEALTH)
    assert good.fail_with is None, good.log
    assert "Healthcheck URL (inside the container): GET: http://localhost:3000/" in good.log
    assert "New container is healthy." in good.log and get(runner, HOST).text == "hello"
    pid = runner.live["app-1"].popen.pid

    started = time.monotonic()
    deaf, _ = deploy(runner, repo, commit, start_command="python deaf.py", **HEALTH)
    assert deaf.fail_with == "New container is not healthy, rolling back to the old container.", deaf.log
    assert time.monotonic() - started >= 0.1 * (5 + 4 * 2)  # start period + the attempts, scaled
    assert 'Attempt 5 of 5 | Healthcheck status: "starting"' in deaf.log and "Container logs:" in deaf.err
    assert runner.live["app-1"].popen.pid == pid and get(runner, HOST).text == "hello"

    missing, _ = deploy(runner, repo, commit, start_command="python notfound.py", **HEALTH)
    assert missing.fail_with and "not healthy" in missing.fail_with
    assert runner.live["app-1"].popen.pid == pid and get(runner, HOST).text == "hello"
    assert not runner.pending


def test_without_health_check_a_crashing_process_still_finishes(runner: AppRunner, repo: Path) -> None:
    """Coolify: health check disabled → the new container counts as healthy once started (a crash shows in the
    application's status, not as a failed deployment)."""
    dep, app = deploy(runner, repo, commit_of(repo), start_command="sh -c 'echo bye; exit 4'",
                      health_check_enabled=False)
    assert dep.fail_with is None, dep.log
    assert app.status_plan and app.status_plan[-1][1] == "degraded:unhealthy"


def test_release_in_the_start_command_runs_in_the_new_container_once_and_a_failure_keeps_the_old(
        runner: AppRunner, repo: Path) -> None:  # fmt: skip
    """The mapping's release design under the runner: the release's output is the container's, its marker lives in
    the container's own TMPDIR; a failing release never lets the new container become healthy."""
    from inkmcp.providers.compute.coolify import mapping

    commit = commit_of(repo)
    web = mapping.Process("web", "python app.py", True, True)
    ok = mapping.release_start_command("echo migrating; echo done > migrated.txt", web)
    dep, _ = deploy(runner, repo, commit, env={"INKMCP_RELEASE": "d1"}, start_command=ok, **HEALTH)
    assert dep.fail_with is None, dep.log
    proc = runner.live["app-1"]
    assert get(runner, HOST).text == "hello"
    assert mapping.RELEASE_STARTED in proc.lines and "migrating" in proc.lines
    assert mapping.RELEASE_FINISHED in proc.lines
    assert (Path(proc.env["TMPDIR"]) / ".inkmcp-release-d1.done").exists()

    bad = mapping.release_start_command("echo schema broke >&2; exit 2", web)
    failed, _ = deploy(runner, repo, commit, env={"INKMCP_RELEASE": "d2"}, start_command=bad, **HEALTH)
    assert failed.fail_with and "not healthy" in failed.fail_with
    assert any(f"{mapping.RELEASE_FAILED} with exit code 2" in line for line in failed.err), failed.err
    assert any("schema broke" in line for line in failed.err)
    assert runner.live["app-1"] is proc and get(runner, HOST).text == "hello"


def test_a_fixed_container_name_means_no_rolling_update_and_no_health_gate(runner: AppRunner, repo: Path) -> None:
    """Coolify's rolling_update(): with `is_consistent_container_name_enabled` the old container is stopped first and
    the new one started without health_check(), so even a process that never listens "finishes" (what the provider
    cannot rely on for such an application)."""
    commit = commit_of(repo)
    good, app = deploy(runner, repo, commit, **HEALTH)
    assert good.fail_with is None, good.log
    old = runner.live["app-1"]
    app.settings["is_consistent_container_name_enabled"] = True

    def fixed() -> tuple[Any, Any]:
        dep = SimpleNamespace(deployment_uuid=os.urandom(8).hex(), commit=commit, restart_only=False,
                              status="in_progress", started_at=time.monotonic(), duration=0.0, fail_with=None, log=[],
                              err=[])  # fmt: skip
        app.fields.update(start_command="python deaf.py")
        runner.begin(dep, app)
        deadline = time.monotonic() + 60
        while dep.duration == float("inf") and time.monotonic() < deadline:
            time.sleep(0.05)
        dep.status = "failed" if dep.fail_with else "finished"
        runner.finish(dep, app)
        return dep, app

    runner.start_timeout = 1.0  # the runner's own wait for a port (a test convenience; Coolify does not wait)
    deaf, _ = fixed()
    assert deaf.fail_with is None and "Consistent container name feature enabled, rolling update is not " \
        "supported." in deaf.log, deaf.log
    assert not any("Healthcheck" in line for line in deaf.log)
    assert not old.alive() and runner.live["app-1"] is not old  # the old one was stopped before the new started
    assert get(runner, HOST).status_code == 502  # nothing answers: the switch happened anyway
