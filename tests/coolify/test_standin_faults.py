"""The stand-in's fault injection, throttle and request counters, seen from a plain httpx client: each fault
does exactly what it says (before or after the state change), and the rate limit holds per user."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from inkmcp.coolify.spec import CoolifySpec
from inkmcp.coolify.standin import CoolifyStandin
from tests.coolify.standin_support import api, seed, wait_for

REPO = Path(__file__).resolve().parents[2]


def project_names(standin: CoolifyStandin) -> list[str]:
    return sorted(p.name for p in standin.projects.values())


def test_500_before_changes_nothing_500_after_changes_state(standin: CoolifyStandin) -> None:
    token = standin.add_token("root")
    c = api(standin, token)
    standin.fail_next("POST", r"/projects")
    r = c.post("/projects", json={"name": "first"})
    assert (r.status_code, r.json()) == (500, {"message": "Server Error"})
    assert project_names(standin) == []
    standin.fail_next("POST", r"/projects", after=True)
    assert c.post("/projects", json={"name": "second"}).status_code == 500
    assert project_names(standin) == ["second"]  # saved, then the error: a blind retry makes a duplicate
    assert c.post("/projects", json={"name": "second"}).status_code == 201
    assert project_names(standin) == ["second", "second"]
    assert [r.fault for r in standin.requests_of(token, method="POST")] == ["500", "500", None]


def test_fault_matches_method_and_path_and_is_used_up(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    fault = standin.fail_next("PATCH", r"/applications/[^/]+/envs/bulk", times=2, status=503)
    assert team.client.get(f"/applications/{app}/envs").status_code == 200  # another route: untouched
    bulk = {"data": [{"key": "A", "value": "1"}]}
    assert [team.client.patch(f"/applications/{app}/envs/bulk", json=bulk).status_code for _ in range(3)] == [
        503, 503, 201]
    assert (fault.times, fault.used) == (0, 2)
    with pytest.raises(ValueError, match="times=0"):
        standin.fail_next("GET", r"/servers", times=0)
    with pytest.raises(ValueError, match="status=200"):
        standin.fail_next("GET", r"/servers", status=200)


def test_injected_429_carries_retry_after(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    standin.throttle_next("POST", r"/deploy", retry_after=7)
    r = team.deploy(app)
    assert (r.status_code, r.headers["retry-after"], r.json()) == (429, "7", {"message": "Too Many Attempts."})
    assert standin.deployments == {}
    assert team.deploy(app).status_code == 200
    assert [s.status for s in standin.throttled(team.token)] == [429]


def test_delay_longer_than_the_client_timeout_before_or_after_the_change(standin: CoolifyStandin) -> None:
    token = standin.add_token("root")
    c = api(standin, token, timeout=0.2)
    standin.delay_next("POST", r"/projects", seconds=1.0)
    started = time.monotonic()
    with pytest.raises(httpx.ReadTimeout):
        c.post("/projects", json={"name": "late"})
    assert time.monotonic() - started < 0.9  # the client gave up; the stand-in still answers other calls
    assert c.get("/projects").status_code == 200
    standin.delay_next("POST", r"/projects", seconds=1.0, after=True)
    with pytest.raises(httpx.ReadTimeout):
        c.post("/projects", json={"name": "made"})
    assert "made" in project_names(standin)  # changed at once; only the answer is late


def test_lost_answer_changes_state_and_drops_the_connection(standin: CoolifyStandin) -> None:
    team = seed(standin)
    standin.drop_next("POST", r"/applications/public")
    with pytest.raises(httpx.RemoteProtocolError):
        team.client.post("/applications/public", json=team.app_body(name="lost"))
    assert [a.fields["name"] for a in standin.applications.values()] == ["lost"]
    standin.drop_next("POST", r"/applications/public", after=False)
    with pytest.raises(httpx.RemoteProtocolError):
        team.client.post("/applications/public", json=team.app_body(name="never"))
    assert [a.fields["name"] for a in standin.applications.values()] == ["lost"]
    assert [s.status for s in standin.requests_of(team.token, method="POST", path=r"/applications/public")] == [0, 0]


def test_throttle_is_per_user_across_tokens_json_or_html(tmp_path: Path, spec: CoolifySpec) -> None:
    with CoolifyStandin(tmp_path, spec=spec, rate_limit=5, rate_window=60.0) as s:
        a, b = s.add_token("read"), s.add_token("read")  # two tokens of user 1
        other = s.add_token("read", user_id=2)
        ca, cb = api(s, a), api(s, b)
        answers = [ca.get("/servers") for _ in range(3)] + [cb.get("/servers") for _ in range(2)]
        assert [r.status_code for r in answers] == [200] * 5
        assert [r.headers["x-ratelimit-remaining"] for r in answers] == ["4", "3", "2", "1", "0"]
        r = cb.get("/servers")
        assert r.status_code == 429 and r.json() == {"message": "Too Many Attempts."}
        assert 55 <= int(r.headers["retry-after"]) <= 60 and r.headers["x-ratelimit-remaining"] == "0"
        html = httpx.get(s.url + "/api/v1/servers", headers={"Authorization": f"Bearer {a}"})
        assert html.status_code == 429 and html.headers["content-type"].startswith("text/html")
        assert api(s, other).get("/servers").status_code == 200
        assert s.peak_rate(a) == 4 and s.request_count(b) == 3 and len(s.throttled()) == 2
        assert s.response_violations == []


def test_default_rate_limit_is_coolifys_200_per_minute(standin: CoolifyStandin) -> None:
    assert (standin.rate_limit, standin.rate_window) == (200, 60.0)


def test_request_counters_per_token_method_and_path(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    other = standin.add_token("read")
    api(standin, other).get(f"/applications/{app}")
    dep = team.deploy(app).json()["deployments"][0]["deployment_uuid"]
    team.wait_deployment(dep)
    assert standin.request_count(team.token, method="POST", path=r"/deploy") == 1
    assert standin.request_count(team.token, path=r"/deployments/[^/]+") >= 1
    assert standin.request_count(other) == 1
    assert standin.request_count() == standin.request_count(team.token) + 1
    assert standin.peak_rate(team.token, window=60.0) == standin.request_count(team.token)


def test_slow_builds_per_app(tmp_path: Path, spec: CoolifySpec) -> None:
    with CoolifyStandin(tmp_path, spec=spec, build_seconds=0.01) as s:
        team = seed(s)
        slow_app, fast_app = team.create_app(name="slow"), team.create_app(name="fast")
        s.slow_builds(30.0, app_uuid=slow_app)
        slow_dep = team.deploy(slow_app).json()["deployments"][0]["deployment_uuid"]
        team.wait_deployment(team.deploy(fast_app).json()["deployments"][0]["deployment_uuid"])
        assert team.deployment(slow_dep)["status"] == "in_progress"


def test_crash_on_start_fails_a_health_checked_rollout_and_degrades_an_unchecked_app(
        standin: CoolifyStandin) -> None:
    team = seed(standin)
    checked, unchecked = team.create_app(health_check_enabled=True), team.create_app()
    team.wait_deployment(team.deploy(checked).json()["deployments"][0]["deployment_uuid"])
    running = standin.application(checked).container
    standin.crash_on_start(app_uuid=checked, line="panic: missing DATABASE_URL")
    dep = team.wait_deployment(team.deploy(checked, force="true").json()["deployments"][0]["deployment_uuid"])
    outputs = [e["output"] for e in json.loads(dep["logs"])]
    assert dep["status"] == "failed" and "panic: missing DATABASE_URL" in outputs
    assert standin.application(checked).container is running  # rolled back: the old container serves
    standin.crash_on_start(app_uuid=unchecked)
    dep = team.wait_deployment(team.deploy(unchecked).json()["deployments"][0]["deployment_uuid"])
    assert dep["status"] == "finished"  # without a health check Coolify cannot tell
    wait_for(lambda: team.app(unchecked)["status"] == "degraded:unhealthy", what="the crash loop status")


@pytest.mark.slow
def test_module_entry_point_serves_and_prints_url_and_token(tmp_path: Path) -> None:
    """`python -m inkmcp.coolify.standin` for local development: URL and root token printed, token file 0600."""
    token_file = tmp_path / "token"
    proc = subprocess.Popen([sys.executable, "-m", "inkmcp.coolify.standin", "--token-file", str(token_file),
                             "--servers", "2", "--data-dir", str(tmp_path / "nodes")],
                            cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(3)]
        url = lines[1].strip().removeprefix("INKMCP_COOLIFY_URL=")
        token = lines[2].strip().removeprefix("INKMCP_COOLIFY_TOKEN=")
        assert token_file.read_text().strip() == token and token_file.stat().st_mode & 0o777 == 0o600
        r = httpx.get(url + "/api/v1/servers", headers={"Authorization": f"Bearer {token}"})
        assert [s["name"] for s in r.json()] == ["run-1", "run-2"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)  # exactly the process this test started
        assert proc.wait(timeout=10) == 0
