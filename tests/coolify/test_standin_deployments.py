"""Deployments on the stand-in's clock: Coolify's statuses, the per-server queue (25 queued -> 429 Retry-After
60 on /deploy), build logs as Coolify stores them, asynchronous status refresh, env revisions, runtime logs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.coolify.spec import CoolifySpec
from inkmcp.coolify.standin import CoolifyStandin
from tests.coolify.standin_support import api, seed, wait_for


@pytest.fixture
def slow(tmp_path: Path, spec: CoolifySpec) -> Iterator[CoolifyStandin]:
    """Builds of 0.4 s and a status refresh 0.3 s after a deployment: long enough to observe each state."""
    with CoolifyStandin(tmp_path / "slow", spec=spec, build_seconds=0.4, status_delay=0.3) as s:
        yield s
    assert s.response_violations == []


def test_deployment_moves_queued_in_progress_finished_and_status_refreshes_later(slow: CoolifyStandin) -> None:
    team = seed(slow)
    app = team.create_app(health_check_enabled=True, pre_deployment_command="python manage.py migrate")
    r = team.deploy(app)
    assert r.status_code == 200
    [entry] = r.json()["deployments"]
    assert entry["resource_uuid"] == app and entry["message"].endswith("deployment queued.")
    dep = team.deployment(entry["deployment_uuid"])
    assert dep["status"] == "in_progress" and dep["commit"] == "HEAD" and dep["restart_only"] is False
    assert [d["deployment_uuid"] for d in team.client.get("/deployments").json()] == [entry["deployment_uuid"]]
    done = team.wait_deployment(entry["deployment_uuid"])
    assert done["status"] == "finished"
    # the deployment waited for the health check, whose pass wrote `running` (ApplicationDeploymentJob::
    # health_check); GetContainersStatus adds the health later
    seen: list[str] = [team.app(app)["status"]]
    assert seen[0] in ("running", "running:healthy")

    def healthy() -> bool:
        seen.append(team.app(app)["status"])
        return seen[-1] == "running:healthy"
    wait_for(healthy, what="the asynchronous status refresh")
    assert "starting:unknown" not in seen and "exited" not in seen  # never a step back after a healthy switch
    assert team.client.get("/deployments").json() == []  # only queued/in_progress are listed
    logs = json.loads(done["logs"])  # a JSON string of entries, as ApplicationDeploymentQueue stores it
    assert set(logs[0]) == {"command", "output", "type", "timestamp", "hidden", "batch"}  # no order on the first
    assert [e["order"] for e in logs[1:]] == list(range(2, len(logs) + 1))
    assert any(e["hidden"] and e["command"] == "python manage.py migrate" for e in logs)
    assert logs[-1]["output"] == "Rolling update completed."


def test_logs_only_with_read_sensitive_and_app_deployments_are_paged_newest_first(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    first = team.deploy(app).json()["deployments"][0]["deployment_uuid"]
    team.wait_deployment(first)
    second = team.deploy(app).json()["deployments"][0]["deployment_uuid"]
    team.wait_deployment(second)
    reader = api(standin, standin.add_token("read"))
    assert "logs" not in reader.get(f"/deployments/{first}").json()
    page = team.client.get(f"/deployments/applications/{app}", params={"take": 1}).json()
    assert page["count"] == 2 and [d["deployment_uuid"] for d in page["deployments"]] == [second]
    assert any("/deployments/applications/" in d for d in standin.deviations_seen)  # object, the spec: array


def test_concurrent_builds_queue_and_start_in_order(slow: CoolifyStandin) -> None:
    team = seed(slow, servers=1)
    apps = [team.create_app(name=f"app{i}") for i in range(3)]
    deps = [team.deploy(a).json()["deployments"][0]["deployment_uuid"] for a in apps]
    assert [team.deployment(d)["status"] for d in deps] == ["in_progress", "in_progress", "queued"]  # 2 builds
    wait_for(lambda: team.deployment(deps[2])["status"] == "in_progress", what="the queued deployment to start")
    assert {team.wait_deployment(d)["status"] for d in deps} == {"finished"}


def test_queue_of_25_full_makes_deploy_answer_429_retry_after_60(tmp_path: Path, spec: CoolifySpec) -> None:
    with CoolifyStandin(tmp_path, spec=spec, build_seconds=30) as s:
        team = seed(s, servers=1)
        apps = [team.create_app(name=f"a{i}") for i in range(28)]
        statuses = [team.deploy(a).status_code for a in apps[:27]]
        assert statuses == [200] * 27  # 2 in progress + 25 queued
        r = team.deploy(apps[27])
        assert r.status_code == 429 and r.headers["retry-after"] == "60"
        assert r.json() == {"message": "Deployment queue is full. Please wait for existing deployments to complete."}
        # /start does not check the queue (NOTES.md §h): 200 and a deployment uuid that was never stored
        r = team.client.post(f"/applications/{apps[27]}/start")
        assert r.status_code == 200
        assert team.client.get(f"/deployments/{r.json()['deployment_uuid']}").status_code == 404
        assert s.response_violations == []


def test_same_commit_again_is_skipped_unless_forced(slow: CoolifyStandin) -> None:
    team = seed(slow)
    app = team.create_app()
    first = team.deploy(app).json()["deployments"][0]
    again = team.deploy(app).json()["deployments"][0]
    assert again["message"] == "Deployment already queued for this commit."
    # DeployController.php:539: the answer names a fresh uuid that was never stored
    assert again["deployment_uuid"] != first["deployment_uuid"]
    assert team.client.get(f"/deployments/{again['deployment_uuid']}").status_code == 404
    forced = team.deploy(app, force="true").json()["deployments"][0]
    assert team.deployment(forced["deployment_uuid"])["force_rebuild"] is True
    assert team.client.post(f"/applications/{app}/restart").json() == {
        "message": "Deployment already queued for this commit."}


def test_cancel_queued_then_refuse_a_finished_one(slow: CoolifyStandin) -> None:
    team = seed(slow, servers=1)
    apps = [team.create_app(name=f"c{i}") for i in range(3)]
    deps = [team.deploy(a).json()["deployments"][0]["deployment_uuid"] for a in apps]
    r = team.client.post(f"/deployments/{deps[2]}/cancel")
    assert r.json() == {"message": "Deployment cancelled successfully.", "deployment_uuid": deps[2],
                        "status": "cancelled-by-user"}
    assert json.loads(team.deployment(deps[2])["logs"])[0]["output"] == "Deployment cancelled by user via API."
    team.wait_deployment(deps[0])
    r = team.client.post(f"/deployments/{deps[0]}/cancel")
    assert (r.status_code, r.json()) == (400, {"message": "Deployment cannot be cancelled. Current status: finished"})


def test_env_changes_apply_on_the_next_restart_not_before(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    c = team.client
    c.post(f"/applications/{app}/envs", json={"key": "MESSAGE", "value": "one"})
    c.post(f"/applications/{app}/envs", json={"key": "BUILD_ONLY", "value": "x", "is_runtime": False})
    team.wait_deployment(team.deploy(app).json()["deployments"][0]["deployment_uuid"])
    assert standin.running_env(app) == {"MESSAGE": "one"}
    c.patch(f"/applications/{app}/envs", json={"key": "MESSAGE", "value": "two"})
    assert standin.running_env(app) == {"MESSAGE": "one"}  # the running container keeps its env
    r = c.post(f"/applications/{app}/restart")
    assert r.json()["message"] == "Restart request queued."
    assert team.deployment(r.json()["deployment_uuid"])["restart_only"] is True
    team.wait_deployment(r.json()["deployment_uuid"])
    assert standin.running_env(app) == {"MESSAGE": "two"}
    container = standin.application(app).container
    assert container is not None and container.env_revision == standin.application(app).env_revision


def test_runtime_logs_last_lines_and_not_running_after_stop(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    assert team.client.get(f"/applications/{app}/logs").json() == {"message": "Application is not running."}
    team.wait_deployment(team.deploy(app).json()["deployments"][0]["deployment_uuid"])
    # an application reads "exited" until its first status refresh: wait for it to run, so "exited" below is the stop
    wait_for(lambda: team.app(app)["status"].startswith("running"), what="running")
    standin.add_runtime_log(app, "listening on :3000", "GET / 200")
    assert team.client.get(f"/applications/{app}/logs", params={"lines": 2}).json() == {
        "logs": "listening on :3000\nGET / 200"}
    assert team.client.post(f"/applications/{app}/stop").json() == {"message": "Application stopping request queued."}
    wait_for(lambda: team.app(app)["status"] == "exited", what="the queued stop")
    assert team.client.get(f"/applications/{app}/logs").status_code == 400


def test_failed_build_keeps_the_running_version(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    team.wait_deployment(team.deploy(app).json()["deployments"][0]["deployment_uuid"])
    wait_for(lambda: team.app(app)["status"].startswith("running"), what="running")
    good = standin.application(app).container
    standin.fail_builds(app_uuid=app, line="npm ERR! missing script: build")
    failed = team.wait_deployment(team.deploy(app, force="true").json()["deployments"][0]["deployment_uuid"])
    assert failed["status"] == "failed"
    outputs = [e["output"] for e in json.loads(failed["logs"])]
    assert "npm ERR! missing script: build" in outputs and outputs[-1].startswith("Deployment failed.")
    assert standin.application(app).container is good and team.app(app)["status"].startswith("running")


def test_unreachable_server_fails_deployments_on_it(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app(server_uuid=team.servers[1].uuid)
    standin.set_server_unreachable(team.servers[1].uuid)
    assert team.client.get(f"/servers/{team.servers[1].uuid}").json()["settings"]["is_reachable"] is False
    dep = team.wait_deployment(team.deploy(app).json()["deployments"][0]["deployment_uuid"])
    assert dep["status"] == "failed"
    assert "port 22: Connection refused" in json.loads(dep["logs"])[-2]["output"]
    standin.set_server_unreachable(team.servers[1].uuid, False)
    assert team.wait_deployment(team.deploy(app).json()["deployments"][0]["deployment_uuid"])["status"] == \
        "finished"


def test_instant_deploy_and_build_server_and_deploy_by_tag(standin: CoolifyStandin) -> None:
    team = seed(standin)
    builder = standin.add_server("10.1.1.1", name="builder", is_build_server=True, usable=True)
    r = team.client.post("/applications/public", json=team.app_body(instant_deploy=True, use_build_server=True,
                                                                    tags=["shop"]))
    assert r.status_code == 201 and set(r.json()) == {"uuid", "domains"}  # no deployment uuid in the answer
    app = r.json()["uuid"]
    [dep] = standin.deployments_of(app)
    done = team.wait_deployment(dep.deployment_uuid)
    assert f"Found a suitable build server ({builder.name})." in [e["output"] for e in json.loads(done["logs"])]
    r = team.client.post("/deploy", params={"tag": "shop"})
    assert r.json()["details"][0]["resource_uuid"] == app
    assert team.client.post("/deploy", params={"tag": "shop", "uuid": app}).status_code == 400
    assert team.client.post("/deploy").json() == {"message": "You must provide uuid or tag."}
    assert team.client.post("/deploy", params={"uuid": "missing"}).json() == {"message": "No resources found."}


def test_get_on_post_only_routes_is_405(standin: CoolifyStandin) -> None:
    team = seed(standin)
    app = team.create_app()
    r = team.client.get("/deploy", params={"uuid": app})
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    assert r.json() == {"message": "This endpoint has changed to a POST request."}
    assert team.client.get(f"/applications/{app}/restart").status_code == 405
    assert standin.deployments == {}
