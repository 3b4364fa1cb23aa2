"""A deployment is live only once every process stayed up and the web answered HTTP (issue 9 item 7).

Real local provider, real processes, real proxy. Each failing case checks the three things an agent
relies on: the release fails at health_check, the previous version still answers through the proxy
(HTTP proof, not the provider's word), and the error points at the runtime logs (not the build's)
and quotes the cause, with this server's paths shown relative.

A redeploy waits the whole stability window (the previous version serves meanwhile); a first deploy,
with nothing serving to protect, only a short settle (issue 12 item 3), and a crash after it went live
shows the way any crash of a live service does.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, Stack
from inkmcp.errors import InvalidArgument, register_server_paths, scrub_paths
from inkmcp.providers.compute.base import LogScope, ReleaseFailed, RuntimeState, Step
from inkmcp.providers.compute.local import LocalComputeProvider
from tests.local.conftest import PY, Events, get, key_for, no_record, request_for, web_plan
from tests.requirements import require_root
from tests.support import call, free_port, git_repo, mcp_session, running_server, traversable_tmpdir

# A web app: GET / answers 200 with MESSAGE, except as told by env. CRASH_AFTER: the process dies with a
# traceback that many seconds after it starts listening (a Redis client giving up, an unhandled
# rejection). FAIL_ROOT: GET / answers 500 with a framework-style debug page (a missing setting).
# NO_ROOT: GET / answers 404 and GET /health 200 (an API without a root page).
APP = """
import os, sys, threading, time, http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        status, body = 200, os.environ.get("MESSAGE", "hello")
        if os.environ.get("FAIL_ROOT"):  # a framework's debug page: the exception comes after a lot of CSS
            status, body = 500, ("<html><head><title>KeyError at /</title><style>" + "p { margin: 0 }" * 400 +
                                 "</style></head><body><pre>KeyError: &#x27;SECRET_KEY&#x27; (settings.py line 12)"
                                 "</pre></body></html>")
        elif os.environ.get("NO_ROOT") and self.path != "/health":
            status, body = 404, "not found"
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("listening on", os.environ["PORT"], "SECRET_KEY set:", "SECRET_KEY" in os.environ, flush=True)
def connect_cache():
    raise ConnectionRefusedError("Error 111 connecting to localhost:6379. Connection refused.")
if os.environ.get("CRASH_AFTER"):
    time.sleep(float(os.environ["CRASH_AFTER"]))
    connect_cache()
while True:
    time.sleep(3600)
"""

# A worker that connects to Redis after a moment and crashes when nobody answers (the case).
CRASHING_WORKER = """
import time
print("worker starting", flush=True)
time.sleep(0.3)
raise ConnectionRefusedError("Error 111 connecting to localhost:6379. Connection refused.")
"""

STEADY_WORKER = """
import time
print("worker up", flush=True)
while True:
    time.sleep(3600)
"""


def worker_plan(worker: str = "worker.py") -> BuildPlan:
    return web_plan(extra=(ProcessSpec(name="worker", command=f"exec {PY} {worker}", routed=False),))


async def deploy_v1(provider: LocalComputeProvider, checkouts, key) -> None:
    """A healthy first version, proven to answer through the proxy."""
    await provider.release(request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v1"}),
                           Events(), no_record)  # fmt: skip
    assert (await get(provider, key)).text == "v1"


async def still_serves_v1(provider: LocalComputeProvider, key) -> None:
    """The proxy, asked like a visitor would, still gets the old version (several fresh connections)."""
    for _ in range(3):
        response = await get(provider, key)
        assert (response.status_code, response.text) == (200, "v1")
    runtime = await provider.runtime(key)
    assert runtime.state == RuntimeState.running, runtime


def assert_points_at_runtime_logs(reason: str) -> None:
    assert "get_logs(scope='runtime')" in reason, reason
    assert "scope='build'" not in reason, reason


def assert_no_server_paths(text: str, provider: LocalComputeProvider) -> None:
    for form in {str(provider.data_dir), str(provider.data_dir.resolve())}:
        assert form not in text, text


async def test_web_that_exits_after_a_second_fails_and_the_old_version_keeps_serving(
    make_provider, checkouts, project_ids
):
    provider = await make_provider(stability_window=2.0)
    key = key_for(project_ids())
    await deploy_v1(provider, checkouts, key)

    started = time.monotonic()
    events = Events()
    request = request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v2", "CRASH_AFTER": "1"})
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request, events, no_record)
    took = time.monotonic() - started

    assert failed.value.step == Step.health_check
    assert Step.switching not in events.steps  # never switched: the old run was not touched
    reason = failed.value.reason
    assert "process 'web' exited with code 1" in reason, reason
    assert "the previous version stays live" in reason, reason
    assert "ConnectionRefusedError: Error 111" in reason, reason  # the cause, quoted from its output
    assert_points_at_runtime_logs(reason)
    assert 'File "./app.py", line' in reason, reason  # the traceback's path, relative to the repo
    assert_no_server_paths(reason, provider)
    assert took < 2.0 + 1.5, f"a process exiting must fail the release at once, not after the window ({took:.1f}s)"
    await still_serves_v1(provider, key)

    # The runtime logs an agent reads next show the same traceback, also without server paths.
    lines = await provider.logs(key, LogScope.runtime, deployment_id=None, tail=200)
    crash = [line for line in lines if 'File "' in line and "app.py" in line]
    assert crash and all('File "./app.py"' in line for line in crash), crash
    assert_no_server_paths("\n".join(lines), provider)


async def test_a_crashing_worker_fails_the_deploy(make_provider, checkouts, project_ids):
    provider = await make_provider(stability_window=1.5)
    key = key_for(project_ids())
    await deploy_v1(provider, checkouts, key)

    files = {"app.py": APP, "worker.py": CRASHING_WORKER}
    request = request_for(key, checkouts(files), worker_plan(), env={"MESSAGE": "v2"})
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request, Events(), no_record)

    reason = failed.value.reason
    assert failed.value.step == Step.health_check
    assert "process 'worker' exited with code 1" in reason, reason
    assert "Connection refused" in reason, reason
    assert_points_at_runtime_logs(reason)
    assert_no_server_paths(reason, provider)
    await still_serves_v1(provider, key)
    runtime = await provider.runtime(key)
    assert [p.name for p in runtime.processes] == ["web"], runtime  # the worker of v2 is not running


async def test_a_failed_deploy_on_a_fixed_port_brings_the_old_version_back(make_provider, checkouts, project_ids):
    """A fixed `port` cannot run blue/green (the old run stops first): a failed release starts it again."""
    fixed = free_port()
    provider = await make_provider(stability_window=0.5)
    key = key_for(project_ids())
    plan = web_plan().model_copy(update={"port": fixed})
    await provider.release(request_for(key, checkouts({"app.py": APP}), plan, env={"MESSAGE": "v1"}), Events(),
                           no_record)  # fmt: skip
    assert (await get(provider, key)).text == "v1"
    request = request_for(key, checkouts({"app.py": APP}), plan, env={"MESSAGE": "v2", "FAIL_ROOT": "1"})
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request, Events(), no_record)
    # v2 ran on the port (v1's closed connections in TIME_WAIT there did not count as "in use") and failed.
    assert failed.value.step == Step.health_check and "HTTP 500" in failed.value.reason, failed.value
    deadline = time.monotonic() + 10  # restarted without a health wait, as at InkMCP start-up: poll until it answers
    while (response := await get(provider, key)).status_code != 200:
        assert time.monotonic() < deadline, response
        await asyncio.sleep(0.05)
    await still_serves_v1(provider, key)


async def test_a_web_answering_500_fails_with_the_body_and_first_log_lines_quoted(
    make_provider, checkouts, project_ids
):
    provider = await make_provider(stability_window=0.5)
    key = key_for(project_ids())
    await deploy_v1(provider, checkouts, key)

    request = request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v2", "FAIL_ROOT": "1"})
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request, Events(), no_record)

    reason = failed.value.reason
    assert failed.value.step == Step.health_check
    assert "answered GET / with HTTP 500" in reason, reason
    assert "KeyError: 'SECRET_KEY' (settings.py line 12)" in reason, reason  # the body, as text
    assert "margin" not in reason, reason
    assert "SECRET_KEY set: False" in reason, reason  # the app's own first output
    assert_points_at_runtime_logs(reason)
    await still_serves_v1(provider, key)


async def test_env_change_that_breaks_the_app_keeps_the_old_env(make_provider, checkouts, project_ids):
    """update_env restarts blue/green through the same check: a 500 keeps the running processes."""
    from pydantic import SecretStr

    provider = await make_provider(stability_window=0.3)
    key = key_for(project_ids())
    await deploy_v1(provider, checkouts, key)
    with pytest.raises(ReleaseFailed) as failed:
        await provider.update_env(key, {"MESSAGE": SecretStr("v2"), "FAIL_ROOT": SecretStr("1")}, "r2", no_record)
    assert "HTTP 500" in failed.value.reason
    await still_serves_v1(provider, key)


class TimedEvents(Events):
    """Progress steps with the time each arrived and its detail."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[Step, float] = {}
        self.detail: dict[Step, str] = {}

    async def __call__(self, step: Step, detail: str) -> None:
        await super().__call__(step, detail)
        self.at[step] = time.monotonic()
        self.detail[step] = detail


async def test_a_first_deploy_goes_live_after_the_settle_not_the_window(make_provider, checkouts, project_ids):
    """Nothing serves yet, so nothing is protected by waiting: live once the web answers and every process
    (the worker too) has been up for the settle, well before the window ends."""
    window, settle = 30.0, 0.4  # a long window: a start at load is never mistaken for it (3 s: the bound was 2 s)
    provider = await make_provider(stability_window=window, first_deploy_settle=settle, health_timeout=60.0)
    key = key_for(project_ids())
    files = {"app.py": APP, "worker.py": STEADY_WORKER}
    # NO_ROOT: an API whose `/` is a 404 works, and must go live.
    request = request_for(key, checkouts(files), worker_plan(), env={"MESSAGE": "api", "NO_ROOT": "1"})
    events = TimedEvents()
    await provider.release(request, events, no_record)

    assert events.steps[-4:] == [Step.starting, Step.health_check, Step.switching, Step.live], events.steps
    checked = events.at[Step.switching] - events.at[Step.starting]
    assert settle <= checked < window - 1.0, f"went live {checked:.2f}s after the start (settle {settle}s)"
    assert "no previous version is serving" in events.detail[Step.health_check], events.detail
    assert f"stay up {settle:g}s" in events.detail[Step.health_check], events.detail
    runtime = await provider.runtime(key)
    assert runtime.state == RuntimeState.running, runtime
    assert sorted(p.name for p in runtime.processes) == ["web", "worker"]
    assert (await get(provider, key, "/health")).text == "api"
    assert (await get(provider, key)).status_code == 404


async def test_a_redeploy_waits_the_whole_window_while_the_old_version_serves(make_provider, checkouts, project_ids):
    window = 1.5
    provider = await make_provider(stability_window=window, first_deploy_settle=0.2)
    key = key_for(project_ids())
    await deploy_v1(provider, checkouts, key)

    files = {"app.py": APP, "worker.py": STEADY_WORKER}
    request = request_for(key, checkouts(files), worker_plan(), env={"MESSAGE": "v2"})
    events = TimedEvents()
    release = asyncio.create_task(provider.release(request, events, no_record))
    while Step.health_check not in events.at:
        assert not release.done(), release
        await asyncio.sleep(0.01)
    assert f"stay up {window:g}s while the previous version keeps serving" in events.detail[Step.health_check]
    await asyncio.sleep(window / 2)
    assert not release.done(), "a redeploy went live before the window ended"
    assert (await get(provider, key)).text == "v1"  # the old version answers while the new one proves itself
    await release

    checked = events.at[Step.switching] - events.at[Step.starting]
    assert checked >= window, f"went live {checked:.2f}s after the start, before every process was up {window}s"
    assert (await get(provider, key)).text == "v2"
    assert sorted(p.name for p in (await provider.runtime(key)).processes) == ["web", "worker"]


async def test_a_redeploy_over_a_crash_looping_version_waits_only_the_settle(make_provider, checkouts, project_ids):
    """A live version that crash-loops serves nothing worth protecting: its fix goes live after the settle."""
    window = 30.0  # a long window: a start at load is never mistaken for it (2.5 s: the bound was 2 s)
    provider = await make_provider(stability_window=window, first_deploy_settle=0.3, health_timeout=60.0)
    key = key_for(project_ids())
    # Crashes 0.8 s after its first start, and at once on every restart (a marker file in its own directory).
    looping = ('import os, sys\nif os.path.exists("crashed-once"):\n    sys.exit("still broken")\n'
               'open("crashed-once", "w").close()\n' + APP)  # fmt: skip
    await provider.release(request_for(key, checkouts({"app.py": looping}), web_plan(),
                                       env={"MESSAGE": "v1", "CRASH_AFTER": "0.8"}), Events(), no_record)  # fmt: skip
    deadline = time.monotonic() + 10
    while (runtime := await provider.runtime(key)).restarts < 1 or runtime.state != RuntimeState.crashed:
        assert time.monotonic() < deadline, runtime
        await asyncio.sleep(0.05)

    events = TimedEvents()
    await provider.release(request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v2"}), events,
                           no_record)  # fmt: skip
    assert "no previous version is serving" in events.detail[Step.health_check], events.detail
    checked = events.at[Step.switching] - events.at[Step.starting]
    assert checked < window - 0.5, f"the fix went live {checked:.2f}s after its start"
    assert (await get(provider, key)).text == "v2"


async def test_a_redeploy_of_a_sleeping_on_demand_service_waits_the_whole_window(make_provider, checkouts, project_ids):
    """Asleep is still serving (a request wakes it), so the new version proves itself through the window."""
    window = 1.2
    provider = await make_provider(stability_window=window, first_deploy_settle=0.2, idle_timeout=0.3)
    key = key_for(project_ids())
    await provider.release(request_for(key, checkouts({"app.py": APP}), web_plan(), mode=Mode.on_demand,
                                       env={"MESSAGE": "v1"}), Events(), no_record)  # fmt: skip
    deadline = time.monotonic() + 15
    while (await provider.runtime(key)).state != RuntimeState.sleeping:
        assert time.monotonic() < deadline, "never went to sleep"
        await asyncio.sleep(0.05)
    events = TimedEvents()
    await provider.release(request_for(key, checkouts({"app.py": APP}), web_plan(), mode=Mode.on_demand,
                                       env={"MESSAGE": "v2"}), events, no_record)  # fmt: skip
    assert "while the previous version keeps serving" in events.detail[Step.health_check], events.detail
    assert events.at[Step.switching] - events.at[Step.starting] >= window
    assert (await get(provider, key)).text == "v2"


async def test_a_first_deploy_whose_web_dies_at_start_fails_with_its_output(make_provider, checkouts, project_ids):
    """The common crash on start (an import error) fails a first deploy at health_check, quoting it."""
    provider = await make_provider(stability_window=3.0, first_deploy_settle=1.0)
    key = key_for(project_ids())
    app = 'print("booting", flush=True)\nimport flask_sqlalchemy_not_installed\n' + APP
    events = Events()
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts({"app.py": app}), web_plan()), events, no_record)
    reason = failed.value.reason
    assert failed.value.step == Step.health_check
    assert Step.switching not in events.steps
    assert "process 'web' exited with code 1" in reason, reason
    assert "ModuleNotFoundError: No module named 'flask_sqlalchemy_not_installed'" in reason, reason
    assert "nothing went live" in reason, reason
    assert_points_at_runtime_logs(reason)
    assert_no_server_paths(reason, provider)
    assert (await provider.runtime(key)).deployment_id is None
    assert (await get(provider, key)).status_code == 404  # no route was made


async def test_a_first_deploy_whose_worker_dies_within_the_settle_fails(make_provider, checkouts, project_ids):
    """The web answers at once, the worker dies ~0.3 s after its start (a missing Redis): inside the settle,
    so the deploy fails, though the web alone would have gone live. (A settle of 2.5 s: on a loaded 2-core box
    the worker's Python start alone can take most of a second.)"""
    provider = await make_provider(stability_window=3.0, first_deploy_settle=2.5)
    key = key_for(project_ids())
    files = {"app.py": APP, "worker.py": CRASHING_WORKER}
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts(files), worker_plan()), Events(), no_record)
    reason = failed.value.reason
    assert failed.value.step == Step.health_check
    assert "process 'worker' exited with code 1" in reason, reason
    assert "must keep running for 2.5s after its start" in reason, reason
    assert "Connection refused" in reason and "nothing went live" in reason, reason
    assert (await provider.runtime(key)).deployment_id is None


async def test_a_crash_after_a_first_deploy_went_live_shows_as_crashed_with_its_logs(
    make_provider, checkouts, project_ids
):
    """Past the settle, a crash is a live service's crash: restarted with backoff, the runtime says crashed
    (what list_services turns into health 'failing'), and the traceback is in the runtime logs."""
    provider = await make_provider(stability_window=3.0, first_deploy_settle=0.3)
    key = key_for(project_ids())
    request = request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v1", "CRASH_AFTER": "1.0"})
    await provider.release(request, Events(), no_record)  # live before the crash
    assert (await get(provider, key)).text == "v1"

    deadline = time.monotonic() + 10
    while (runtime := await provider.runtime(key)).state != RuntimeState.crashed:
        assert time.monotonic() < deadline, runtime
        await asyncio.sleep(0.02)
    assert "web exited with code 1" in (runtime.detail or ""), runtime
    assert runtime.processes[0].state == RuntimeState.crashed, runtime
    deadline = time.monotonic() + 10
    while (response := await get(provider, key)).status_code != 200:  # restarted (backoff 0.2 s), answering again
        assert time.monotonic() < deadline, response
        await asyncio.sleep(0.05)
    # Up again but not yet through the window since its crash: still crashed, not `running` (health ok) for most
    # of each short life of a crash loop.
    runtime = await provider.runtime(key)
    assert runtime.state == RuntimeState.crashed and runtime.restarts >= 1, runtime
    assert "web crashed and was restarted (restarts: " in (runtime.detail or ""), runtime
    lines = await provider.logs(key, LogScope.runtime, deployment_id=None, tail=200)
    assert any("ConnectionRefusedError: Error 111" in line for line in lines), lines
    assert any("[inkmcp] exited with code 1" in line and "restarting in" in line for line in lines), lines
    assert_no_server_paths("\n".join(lines), provider)


async def test_a_worker_only_service_that_exits_fails(make_provider, checkouts, project_ids):
    provider = await make_provider(stability_window=1.0, first_deploy_settle=1.0)
    key = key_for(project_ids(), service="jobs")
    plan = BuildPlan(stack=Stack.none, source="call",
                     processes=(ProcessSpec(name="worker", command=f"exec {PY} worker.py", routed=False),))  # fmt: skip
    request = request_for(key, checkouts({"worker.py": CRASHING_WORKER}), plan)
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request, Events(), no_record)
    assert failed.value.step == Step.health_check
    assert "process 'worker' exited with code 1" in failed.value.reason
    assert "nothing went live" in failed.value.reason
    assert (await provider.runtime(key)).deployment_id is None


async def test_a_wake_does_not_wait_for_the_window(make_provider, checkouts, project_ids):
    """The window is for deploys: a request waking an on_demand service waits only for the port."""
    window = 3.0
    provider = await make_provider(stability_window=window, idle_timeout=0.3)
    key = key_for(project_ids())
    request = request_for(key, checkouts({"app.py": APP}), web_plan(), mode=Mode.on_demand, env={"MESSAGE": "v1"})
    await provider.release(request, Events(), no_record)

    deadline = time.monotonic() + 15
    while (await provider.runtime(key)).state != RuntimeState.sleeping:
        assert time.monotonic() < deadline, "never went to sleep"
        await asyncio.sleep(0.05)
    started = time.monotonic()
    response = await get(provider, key)
    took = time.monotonic() - started
    assert (response.status_code, response.text) == (200, "v1")
    assert took < window / 2, f"the wake took {took:.2f}s"


async def test_a_build_failure_shows_relative_paths_in_the_error_and_build_logs(
    make_provider, checkouts, project_ids
):
    provider = await make_provider(stability_window=0.0)
    key = key_for(project_ids())
    plan = BuildPlan(stack=Stack.none, source="call", build_command="echo building in $(pwd) >&2; exit 3",
                     processes=(ProcessSpec(name="web", command=f"exec {PY} app.py", routed=True),))  # fmt: skip
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts({"app.py": APP}), plan), Events(), no_record)
    assert failed.value.step == Step.building
    assert "building in ." in failed.value.reason, failed.value.reason
    assert_no_server_paths(failed.value.reason, provider)
    lines = await provider.logs(key, LogScope.build, deployment_id=None, tail=100)
    assert any("building in ." in line for line in lines), lines
    assert_no_server_paths("\n".join(lines), provider)


def test_scrub_paths_rewrites_only_registered_directories(tmp_path: Path):
    top = tmp_path / "srv"
    data = top / "data"
    register_server_paths(data, [(r"services/[^/\s]+/releases/[^/\s]+/src", "."), (r"homes/[^/\s]+", "~")])
    register_server_paths(top, [(r"work/checkouts/[0-9a-f]+", ".")], fallback="<data>")
    src = data / "services" / "s1" / "releases" / "d1" / "src"
    assert scrub_paths(f'File "{src}/app.py", line 3') == 'File "./app.py", line 3'
    assert scrub_paths(f"cd {src} && make") == "cd . && make"
    assert scrub_paths(f"HOME={data}/homes/ink-x/.npm") == "HOME=~/.npm"
    assert scrub_paths(f"{top}/work/checkouts/abc123/fly.toml") == "./fly.toml"
    # Not a named form: the deepest registered directory's fallback, never the path itself.
    assert scrub_paths(f"{data}/services/s1/logs/x.log") == "<server>/services/s1/logs/x.log"
    assert scrub_paths(f"{top}/other") == "<data>/other"
    assert scrub_paths(f"{top}x/y") == f"{top}x/y"
    # A sibling whose name merely starts the same is another directory: untouched.
    assert scrub_paths(f"{data}x/services/s1") == "<data>/datax/services/s1"  # under `top`, not under `data`
    assert scrub_paths("/usr/lib/python3.11/json/__init__.py") == "/usr/lib/python3.11/json/__init__.py"


async def test_a_window_not_shorter_than_the_health_timeout_is_refused(data_dir):
    with pytest.raises(InvalidArgument) as refused:
        LocalComputeProvider(data_dir, proxy_port=0, health_timeout=5.0, stability_window=5.0)
    assert refused.value.argument == "INKMCP_STABILITY_WINDOW"


@pytest.mark.slow
async def test_over_mcp_a_crash_at_start_fails_and_a_crash_after_live_shows_failing():
    """What an agent sees end to end, on first deploys: an app that dies right after it listens fails with its
    runtime output quoted; one that dies a second later (past the settle) goes live, then list_services shows
    it failing and get_logs the crash."""
    repos = traversable_tmpdir("inkmcp-live-repos-")
    try:
        repo = git_repo(repos / "crashy", {"app.py": APP, "Procfile": "web: python app.py\n"})
        with running_server("inkmcp-live-", ("agent",), INKMCP_STABILITY_WINDOW="3",
                            INKMCP_FIRST_DEPLOY_SETTLE="0.5") as server:  # fmt: skip
            async with mcp_session(server, server.keys["agent"]) as s:
                dep = await call(s, "deploy_app", repo_url=str(repo), env_vars={"CRASH_AFTER": "0.05"})
                while not dep["done"]:
                    dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
                logs = await call(s, "get_logs", project_name="crashy", scope="runtime")

                later = await call(s, "deploy_app", repo_url=str(repo), project_name="crashy-later",
                                   env_vars={"CRASH_AFTER": "1.5"})  # fmt: skip
                while not later["done"]:
                    later = await call(s, "wait_for_deployment", deployment_id=later["deployment_id"])
                assert later["status"] == "live", later
                deadline = time.monotonic() + 15
                while (svc := (await call(s, "list_services", project_name="crashy-later"))["services"][0])[
                    "health"
                ] != "failing":
                    assert time.monotonic() < deadline, svc
                    await asyncio.sleep(0.05)
                later_logs = await call(s, "get_logs", project_name="crashy-later", scope="runtime")
        assert dep["status"] == "failed", dep
        error = dep["error"]
        assert error.startswith("health_check: process 'web' exited with code 1"), error
        assert "get_logs(scope='runtime')" in error and 'File "./app.py"' in error, error
        assert "scope='runtime'" in dep["next_step"], dep  # the build passed: the cause is in the app's output
        crash = [line for line in logs["lines"] if 'File "' in line and "app.py" in line]
        assert crash and all('File "./app.py"' in line for line in crash), logs
        for shown in (error, "\n".join(logs["lines"])):
            assert str(server.data_dir) not in shown and "/services/" not in shown, shown

        assert svc["state"] == "crashed", svc
        assert any("ConnectionRefusedError: Error 111" in line for line in later_logs["lines"]), later_logs
        assert any("[inkmcp] exited with code 1" in line for line in later_logs["lines"]), later_logs
    finally:
        shutil.rmtree(repos, ignore_errors=True)


async def test_an_app_bound_to_another_port_is_told_which_and_the_port_it_names_goes_live(
        make_provider, checkouts, project_ids):
    """A config that binds a fixed port (DigitalOcean's 8080 in a gunicorn config) instead of $PORT: the error names
    the port the app's own socket listens on, and the deploy with `port` set to it goes live."""
    require_root("apps run as a per-project user, so their listening sockets can be told from InkMCP's")
    fixed = free_port()
    app = APP.replace('int(os.environ["PORT"])', f"{fixed}")
    provider = await make_provider(health_timeout=1.5, stability_window=0.3)
    key = key_for(project_ids())
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts({"app.py": app}), web_plan(), env={"MESSAGE": "v1"}),
                               Events(), no_record)  # fmt: skip
    # --- svcports: with the bind guard (bindguard.py) the wrong port is refused (EPERM) and the error names it
    said = f"it tried to listen on port {fixed}" if provider._binds else f"it listens on {fixed} instead"
    assert said in failed.value.reason and f"pass port={fixed}" in failed.value.reason, failed.value.reason
    plan = web_plan().model_copy(update={"port": fixed})
    provider.health_timeout = 5.0  # the working deploy gets the usual limit (1.5 s for a start: tight at load)
    await provider.release(request_for(key, checkouts({"app.py": app}), plan, env={"MESSAGE": "v1"}), Events(),
                           no_record)  # fmt: skip
    assert (await get(provider, key)).text == "v1"


async def test_an_app_bound_to_another_port_fails_after_the_grace_not_the_health_timeout(
        make_provider, checkouts, project_ids, monkeypatch):
    """A new user's app hard-wired to port 5999 failed only at the health timeout (60 s by default) though the error
    knew the port: it fails once its own processes have listened elsewhere, and not on $PORT, for WRONG_PORT_GRACE
    (15 s; 2 s here), naming the port. Not counted: the version being replaced, which listens as the same uid."""
    require_root("apps run as a per-project user, so their listening sockets can be told from InkMCP's")
    from inkmcp.providers.compute.local import release as release_mod

    monkeypatch.setattr(release_mod, "WRONG_PORT_GRACE", 2.0)
    fixed = free_port()
    wrong = APP.replace('int(os.environ["PORT"])', f"{fixed}")
    provider = await make_provider(health_timeout=30, stability_window=0.3)
    key = key_for(project_ids())
    started = time.monotonic()
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts({"app.py": wrong}), web_plan(), env={"MESSAGE": "v0"}),
                               Events(), no_record)  # fmt: skip
    took = time.monotonic() - started
    # --- svcports: with the bind guard the app's bind() fails at once (EPERM) and the error names the port
    said = (f"it tried to listen on port {fixed}" if provider._binds
            else f"the app listened on {fixed} and not on $PORT=")
    assert said in failed.value.reason, failed.value.reason
    assert f"pass port={fixed}" in failed.value.reason, failed.value.reason
    assert took < 12, took  # the 2 s grace (looked at once a second), not the 30 s health timeout

    def later(extra: str) -> str:  # binds $PORT 5 s after its start, `extra` first
        out = APP.replace("server = http.server.ThreadingHTTPServer(",
                          f"{extra}time.sleep(5)\nserver = http.server.ThreadingHTTPServer(", 1)
        assert out != APP
        return out

    # v1 live; v2 binds $PORT 5 s late while v1 serves as the same uid: v1's port is not v2's, so v2 goes live
    await provider.release(request_for(key, checkouts({"app.py": APP}), web_plan(), env={"MESSAGE": "v1"}),
                           Events(), no_record)  # fmt: skip
    await provider.release(request_for(key, checkouts({"app.py": later("")}), web_plan(), env={"MESSAGE": "v2"}),
                           Events(), no_record)  # fmt: skip
    assert (await get(provider, key)).text == "v2"
    # v3 opens a side port of its own first: past the grace it fails naming it, and v2 keeps serving
    side = later("import socket as _s\n_x = _s.socket()\n_x.bind(('127.0.0.1', 0))\n_x.listen()\n")
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts({"app.py": side}), web_plan(), env={"MESSAGE": "v3"}),
                               Events(), no_record)  # fmt: skip
    assert "and not on $PORT=" in failed.value.reason, failed.value.reason
    assert (await get(provider, key)).text == "v2"
