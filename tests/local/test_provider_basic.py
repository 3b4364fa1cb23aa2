"""Release pipeline end to end: web, static, worker, logs, runtime, remove."""

from __future__ import annotations

import json

import psutil
import pytest

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.providers.compute.base import LogScope, ReleaseFailed, RuntimeState, Step
from tests.local.conftest import PY, WEB_APP, Events, get, key_for, no_record, request_for, web_plan


async def test_web_release_serves_through_proxy(make_provider, checkouts, project_ids, monkeypatch):
    monkeypatch.setenv("INKMCP_CANARY_SECRET", "must-not-leak")
    provider = await make_provider()
    key = key_for(project_ids())
    events = Events()
    result = await provider.release(
        request_for(key, checkouts({"app.py": WEB_APP}), web_plan(), env={"MESSAGE": "hi there"}), events, no_record
    )
    assert result.url == provider.url_for(key)
    assert events.steps == [Step.building, Step.starting, Step.health_check, Step.switching, Step.live]

    resp = await get(provider, key)
    assert resp.status_code == 200
    assert resp.text == "hi there\n"

    env_keys = set(json.loads((await get(provider, key, "/env")).text))
    assert "INKMCP_CANARY_SECRET" not in env_keys
    assert {"PATH", "HOME", "LANG", "PORT", "MESSAGE"} <= env_keys

    runtime = await provider.runtime(key)
    assert runtime.state == RuntimeState.running
    assert [(p.name, p.state, p.routed) for p in runtime.processes] == [("web", RuntimeState.running, True)]

    lines = await provider.logs(key, LogScope.runtime, deployment_id=None, tail=50)
    assert any(line.startswith("web | listening on") for line in lines)
    build = await provider.logs(key, LogScope.build, deployment_id=None, tail=50)
    assert any("build complete" in line for line in build)


async def test_unknown_host_is_404_naming_the_host(make_provider, project_ids):
    provider = await make_provider()
    resp = await get(provider, key_for(project_ids(), service="nope"))
    assert resp.status_code == 404
    assert "nope.demo.localhost" in resp.text


async def test_oversized_head_is_431(make_provider, project_ids):
    provider = await make_provider()
    resp = await get(provider, key_for(project_ids()), headers={"X-Big": "a" * 70_000, "Host": "x.y.localhost"})
    assert resp.status_code == 431


async def test_static_site(make_provider, checkouts, project_ids):
    provider = await make_provider()
    key = key_for(project_ids(), service="site")
    checkout = checkouts({"public/index.html": "<h1>static ok</h1>", "secret.txt": "not served"})
    plan = BuildPlan(stack=Stack.static, static_dir="public", source="call")
    events = Events()
    result = await provider.release(
        request_for(key, checkout, plan, mode=Mode.static, service_type=ServiceType.webapp_static), events, no_record
    )
    assert result.url is not None
    assert "building: serving the static files in 'public'" in events.details, events.details  # said (newuser4)
    resp = await get(provider, key, "/index.html")
    assert resp.status_code == 200 and "static ok" in resp.text
    assert (await get(provider, key, "/secret.txt")).status_code == 404


async def test_worker_has_no_url_and_logs(make_provider, checkouts, project_ids):
    provider = await make_provider()
    key = key_for(project_ids(), service="jobs")
    worker = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n"
    plan = BuildPlan(
        stack=Stack.none,
        source="call",
        processes=(ProcessSpec(name="worker", command=f"exec {PY} w.py", routed=False),),
    )
    result = await provider.release(
        request_for(key, checkouts({"w.py": worker}), plan, service_type=ServiceType.backend), Events(), no_record
    )
    assert result.url is None
    runtime = await provider.runtime(key)
    assert runtime.state == RuntimeState.running
    assert [(p.name, p.routed) for p in runtime.processes] == [("worker", False)]
    lines = await provider.logs(key, LogScope.runtime, deployment_id=None, tail=10)
    assert "worker | tick" in lines


async def test_repeat_release_and_remove(make_provider, checkouts, project_ids, data_dir):
    """A repeated release of the live deployment is a no-op (same processes); remove is idempotent."""
    provider = await make_provider()
    key = key_for(project_ids())
    first = request_for(key, checkouts({"app.py": WEB_APP}), web_plan(), env={"MESSAGE": "one"})
    result = await provider.release(first, Events(), no_record)
    pids = [int(p) for p in (await provider.runtime(key)).detail.split("pids ")[1].strip("[]").split(",")]
    events = Events()
    again = await provider.release(first.model_copy(update={"checkout_dir": checkouts({})}), events, no_record)
    assert again == result and events.steps == []
    assert (await provider.runtime(key)).detail.endswith(f"pids {pids}")
    assert (await get(provider, key)).text == "one\n"

    await provider.remove(key)
    await provider.remove(key)  # idempotent
    assert not any(psutil.pid_exists(p) for p in pids)
    assert not (data_dir / "services" / key.service_id).exists()
    assert (await get(provider, key)).status_code == 404
    assert (await provider.runtime(key)).state == RuntimeState.stopped


async def test_build_command_runs_and_failed_build_keeps_old(make_provider, checkouts, project_ids):
    provider = await make_provider()
    key = key_for(project_ids())
    app = WEB_APP.replace('os.environ.get("MESSAGE", "hello")', 'open("built.txt").read().strip()')
    plan = web_plan().model_copy(update={"build_command": "echo built-by-buildpack > built.txt"})
    await provider.release(request_for(key, checkouts({"app.py": app}), plan), Events(), no_record)
    assert (await get(provider, key)).text == "built-by-buildpack\n"

    broken = web_plan().model_copy(update={"build_command": "echo compiling; echo syntax error >&2; exit 2"})
    bad = request_for(key, checkouts({"app.py": WEB_APP}), broken)
    with pytest.raises(ReleaseFailed) as info:
        await provider.release(bad, Events(), no_record)
    assert info.value.step == Step.building and "syntax error" in info.value.reason
    assert (await get(provider, key)).text == "built-by-buildpack\n"
    build = await provider.logs(key, LogScope.build, deployment_id=bad.deployment_id, tail=20)
    assert any("release failed at building" in line for line in build)
