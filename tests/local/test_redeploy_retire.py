"""A redeploy is "live" once traffic reaches the new version; the old one stops in the background.

"live" still means every new request reaches the new version (the proxy serves the new route and what was
forwarded to the old one before the switch has its answer: the drain, ~0.15 s). The old version's graceful
stop (gunicorn: ~0.3 s after SIGTERM) used to hold up "live" too, though no request reaches it any more.
Now it finishes in the background, and nothing is left half-made: the
old processes are still stopped and reaped, a stop that fails is in the service's runtime log, a second
redeploy right after starts only once the first's old version is gone (never three versions at once),
and close() returns only after the background stop. The apps here stop like gunicorn: SIGTERM, then
0.4 s of "graceful" work before exiting.
"""

from __future__ import annotations

import asyncio
import os
import time

import psutil

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from inkmcp.providers.compute.base import LogScope, Step
from inkmcp.providers.compute.local.provider import LocalComputeProvider
from tests.local.conftest import PY, get, key_for, no_record, request_for

GRACEFUL_APP = """
import os, signal, sys, time, http.server
def graceful(*_):
    time.sleep(float(os.environ.get("STOP_DELAY", "0.4")))  # what gunicorn's workers take to finish
    os._exit(0)
signal.signal(signal.SIGTERM, graceful)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = (os.environ["MESSAGE"] + "\\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Pid", str(os.getpid()))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

SERVING_WHILE_STOPPING_APP = GRACEFUL_APP.replace(
    "def graceful(*_):\n    time.sleep(",
    "import threading\ndef graceful(*_):\n    threading.Thread(target=finish).start()\ndef finish():\n    time.sleep(",
)
"""GRACEFUL_APP that keeps accepting and answering requests during its graceful stop (as a server that finishes a
grace period before closing its listener): a request the proxy still sends to it after "live" gets its answer."""


def plan() -> BuildPlan:
    return BuildPlan(stack=Stack.none, source="call",
                     processes=(ProcessSpec(name="web", command=f"exec {PY} app.py", routed=True),))  # fmt: skip


class Timed:
    """Progress callback noting when each step was reported."""

    def __init__(self) -> None:
        self.at: dict[Step, float] = {}

    async def __call__(self, step: Step, detail: str) -> None:
        self.at[step] = time.monotonic()


def gone(pid: int) -> bool:
    """Stopped and reaped: a zombie still has its pid (we are its parent until the loop reaps it)."""
    return not psutil.pid_exists(pid)


async def deploy(provider: LocalComputeProvider, key, checkouts, message: str, stop_delay: float = 0.4,  # type: ignore[no-untyped-def]
                 app: str = GRACEFUL_APP) -> tuple[int, float]:
    """Release `message` (an app whose graceful stop takes `stop_delay` s; 1.5 where a test looks at it while it
    stops: a loaded box may take more than 0.4 s to get there); returns its pid and the seconds from "switching"
    to "live"."""
    timed = Timed()
    env = {"MESSAGE": message, "STOP_DELAY": str(stop_delay)}
    request = request_for(key, checkouts({"app.py": app}), plan(), env=env)
    await provider.release(request, timed, no_record)
    response = await get(provider, key)
    assert response.text == f"{message}\n"
    return int(response.headers["X-Pid"]), timed.at[Step.live] - timed.at[Step.switching]


async def test_live_does_not_wait_for_the_old_versions_stop_and_the_stop_still_completes(
    make_provider, checkouts, project_ids
):
    provider = await make_provider()
    key = key_for(project_ids())
    v1, _ = await deploy(provider, key, checkouts, "v1", stop_delay=1.5)
    v2, switch_to_live = await deploy(provider, key, checkouts, "v2", stop_delay=1.5)
    svc = provider._services[key.service_id]
    assert svc.retiring and psutil.pid_exists(v1)  # "live" came while v1 was still in its graceful stop
    assert switch_to_live < 2.0, switch_to_live  # (the drain only: was the drain + v1's stop)
    await asyncio.wait_for(provider._retired(svc), 10)
    assert gone(v1) and not svc.retiring

    # a second redeploy right after the third: v2 is still stopping when v4's release begins, and v4's
    # processes start only once it is gone (v3, the one v4 replaces, keeps serving meanwhile)
    v3, _ = await deploy(provider, key, checkouts, "v3")
    assert psutil.pid_exists(v2)
    v4_request = request_for(key, checkouts({"app.py": GRACEFUL_APP}), plan(), env={"MESSAGE": "v4"})
    at_start: list[tuple[bool, bool]] = []

    async def note(step: Step, detail: str) -> None:
        if step == Step.starting:
            at_start.append((psutil.pid_exists(v2), psutil.pid_exists(v3)))

    await provider.release(v4_request, note, no_record)
    assert at_start == [(False, True)]
    await asyncio.wait_for(provider._retired(svc), 10)
    assert gone(v3)
    assert (await get(provider, key)).text == "v4\n"
    assert (await provider.runtime(key)).detail.endswith(f"pids {svc.live.run.pids}")  # type: ignore[union-attr]


async def test_a_failed_background_stop_is_logged_and_close_waits_for_the_stop(
    make_provider, checkouts, project_ids, caplog
):
    provider = await make_provider()
    key = key_for(project_ids())
    v1, _ = await deploy(provider, key, checkouts, "v1")
    svc = provider._services[key.service_id]
    old = svc.live.run  # type: ignore[union-attr]
    assert old is not None
    real_stop = old.stop

    async def failing_stop(grace: float) -> None:  # the stop fails after it ended the processes
        await real_stop(grace)
        raise OSError(5, "Input/output error")

    old.stop = failing_stop  # type: ignore[method-assign]
    await deploy(provider, key, checkouts, "v2", stop_delay=1.5)
    await asyncio.wait_for(provider._retired(svc), 10)
    assert gone(v1)
    logs = "\n".join(await provider.logs(key, LogScope.runtime, deployment_id=None, tail=20))
    assert f"could not stop the previous version ({old.meta.deployment_id}, pids [{v1}])" in logs, logs
    assert "Input/output error" in logs and any("could not stop the previous version" in r.message
                                                  for r in caplog.records)
    assert (await get(provider, key)).text == "v2\n"  # the release stayed live

    # close() right after a switch: returns only once the old version stopped (its stop takes 1.5 s)
    v2 = svc.live.run.pids[0]  # type: ignore[union-attr]
    await deploy(provider, key, checkouts, "v3")
    assert svc.retiring and psutil.pid_exists(v2)
    await provider.close()
    assert gone(v2) and not svc.retiring
    assert not os.path.exists(f"/proc/{v2}")


async def test_an_env_restart_of_a_worker_only_service_keeps_the_new_workers_pid_file(
    make_provider, checkouts, project_ids, data_dir
):
    """The pid file is what a restarted InkMCP reaps after a crash. A worker-only service has no port, so both
    versions of an env restart used the same file name, and the old version's stop (after the new one started)
    deleted the new worker's file: a crash then left the new worker running unreaped."""
    import json

    from pydantic import SecretStr

    from inkmcp.build.plan import ServiceType

    provider = await make_provider()
    key = key_for(project_ids(), service="jobs")
    worker = BuildPlan(stack=Stack.none, source="call",
                       processes=(ProcessSpec(name="worker", command=f"exec {PY} -c 'import time; time.sleep(600)'",
                                              routed=False),))  # fmt: skip
    request = request_for(key, checkouts({"app.py": ""}), worker, service_type=ServiceType.backend)
    await provider.release(request, Timed(), no_record)
    svc = provider._services[key.service_id]
    old = svc.live.run.pids  # type: ignore[union-attr]
    await provider.update_env(key, {"X": SecretStr("2")}, "rev-2", no_record)
    await asyncio.wait_for(provider._retired(svc), 10)
    new = svc.live.run.pids  # type: ignore[union-attr]
    assert new != old and all(gone(p) for p in old)
    await asyncio.sleep(0.05)  # (the pid file is written on the loop's next turn)
    recorded = [json.loads(p.read_text())["pid"] for p in svc.layout.run_dir.glob("*.pid")]
    assert recorded == new, (recorded, new)


async def test_a_drain_that_fails_after_the_switch_neither_fails_the_release_nor_leaves_the_old_version(
    make_provider, checkouts, project_ids, monkeypatch
):
    """After the switch the new version is live: an error from the proxy's drain (injected: OSError) is logged; the
    release still reports live, keeps its files (a failed release deletes its release dir) and the old version is
    still stopped. "live" still means a new request reaches the new version: v1 keeps answering during its 1.5 s
    graceful stop, so a request nginx sent to the old port because "live" came before nginx served the new route
    (the failed drain was what waited for that) gets v1's answer (suitefast: the flake this was, made certain)."""
    provider = await make_provider()
    key = key_for(project_ids())
    v1, _ = await deploy(provider, key, checkouts, "v1", stop_delay=1.5, app=SERVING_WHILE_STOPPING_APP)

    async def broken_drain(port: int, timeout: float) -> bool:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(provider.proxy, "drain", broken_drain)
    await deploy(provider, key, checkouts, "v2")  # its first request, right after "live", is answered by v2
    svc = provider._services[key.service_id]
    await asyncio.wait_for(provider._retired(svc), 10)
    assert gone(v1)
    assert svc.layout.src(svc.live.meta.deployment_id).is_dir()  # type: ignore[union-attr]
