"""Coolify-only tests of CoolifyComputeProvider over the HTTP stand-in (the contract suite, tests/contract/, runs
the shared ones): the exact bodies Coolify receives, no tenant-controlled field ever reaching it (each attack
tried, proof from the stand-in's request log), env changes through /deploy and never /restart (review finding 2),
placement kept across redeploys, custom domains with their DNS record, on_demand labels, and Coolify's 429/500/
403 answers turned into the contract's errors."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.coolify.client import CoolifyClient, RetryPolicy
from inkmcp.coolify.standin import Seen
from inkmcp.providers.compute.base import (
    EnvOutcome,
    ProviderRefused,
    ProviderUnavailable,
    RefScope,
    ReleaseFailed,
    Resources,
    RuntimeState,
    ServiceKey,
    Step,
)
from inkmcp.providers.compute.coolify import mapping, policy
from inkmcp.providers.compute.coolify.mapping import PlacedServer
from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider, Crash
from tests.contract.conftest import CoolifyHarness, Events, RefBook, release, revision, wait_for


def writes(h: CoolifyHarness, since: int = 0) -> list[Seen]:
    return [s for s in h.standin.requests[since:] if s.method != "GET"]


def app_bodies(h: CoolifyHarness, since: int = 0) -> list[tuple[str, str, dict[str, Any]]]:
    return [(s.method, s.path, s.body) for s in writes(h, since)
            if s.path.startswith("/api/v1/applications") and isinstance(s.body, dict)]  # fmt: skip


def assert_nothing_forbidden(h: CoolifyHarness) -> None:
    """Every request the stand-in received is one InkMCP's policy allows: no forbidden field, no label outside
    InkMCP's set, no storage, restart, compose or image route."""
    for seen in h.standin.requests:
        policy.check_request(seen.method, seen.path, seen.body, seen.query)
        body = seen.body if isinstance(seen.body, dict) else {}
        assert not set(body) & set(policy.FORBIDDEN_FIELDS), (seen.path, body)
        assert "/storages" not in seen.path and not seen.path.endswith("/restart"), seen.path


async def test_release_sends_exactly_the_mapped_bodies_and_records_every_id(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True, release_command="echo migrate")
    since = len(h.standin.requests)
    await release(h, book, req)
    server = h.standin.servers[book.refs[(RefScope.service, key.service_id)]["server_uuid"]]
    placed = PlacedServer(uuid=server.uuid, wildcard_base=f"{server.name}.apps.test")
    project_ref = book.refs[(RefScope.project, key.project_id)]
    service_ref = book.refs[(RefScope.service, key.service_id)]
    specs = {p.name: h.provider._app_spec(req, p, placed) for p in mapping.processes(req.service_type, req.plan)}
    creates = [b for m, p, b in app_bodies(h, since) if p == "/api/v1/applications/public"]
    # sent side by side: in whichever order they reached Coolify
    assert sorted(creates, key=lambda b: b["name"]) == [mapping.release_create_body(
        specs[n], project_ref["project_uuid"], project_ref["environment_uuid"], mapping.MappingSettings())
        for n in ("web", "worker")]  # fmt: skip
    for name in ("web", "worker"):
        app = service_ref["apps"][name]
        patches = [b for m, p, b in app_bodies(h, since) if m == "PATCH" and p == f"/api/v1/applications/{app}"]
        # issue 8: the create carried every setting of the release's PATCH (routing included), so none is sent
        assert patches == []
        assert mapping.covers(next(b for b in creates if b["name"] == mapping.app_name(key, name)),
                              mapping.update_body(specs[name], mapping.MappingSettings()))
        stored = h.standin.applications[app]
        assert stored.fields["git_commit_sha"] == req.commit  # Coolify builds exactly the commit InkMCP pinned
        assert stored.settings["is_build_server_enabled"] is True
        # never Coolify's pre-deployment command (old container): "" clears it (ConvertEmptyStringsToNull → null);
        # the release runs first in web's new container, guarded by INKMCP_RELEASE = this deployment's id
        assert stored.fields.get("pre_deployment_command") is None
        env = {e.key: e.value for e in stored.envs if not e.is_preview}
        if name == "web":
            assert stored.fields["start_command"].startswith(f"sh -c '{mapping.RELEASE_GUARD}' ")
            assert stored.fields["start_command"].endswith(" 'echo migrate'")
            assert env[mapping.RELEASE_ENV] == req.deployment_id
        else:
            assert mapping.RELEASE_ENV not in env and "RELEASE_GUARD" not in str(stored.fields.get("start_command"))
    # the route only on web: https://<service>-<project>.<the placed server's wildcard base>
    assert h.standin.applications[service_ref["apps"]["web"]].fields["fqdn"] == \
        f"https://web-{key.project_name}.{server.name}.apps.test"
    assert not h.standin.applications[service_ref["apps"]["worker"]].fields.get("fqdn")
    dep_ref = book.refs[(RefScope.deployment, req.deployment_id)]
    assert set(dep_ref["deployments"]) == {"web", "worker"} and set(dep_ref["intent"]) == {"web", "worker"}
    for name, uuid in dep_ref["deployments"].items():
        assert h.standin.deployments[uuid].application_uuid == service_ref["apps"][name]
    # the worker is deployed only once web's release finished: never new code against an unmigrated database
    web, worker = (h.standin.deployments[dep_ref["deployments"][n]] for n in ("web", "worker"))
    assert worker.started_at is not None and web.finished_at is not None and worker.started_at >= web.finished_at
    assert_nothing_forbidden(h)


@pytest.mark.parametrize(("change", "field"), [
    ({"env": {"COOLIFY_FQDN": "https://victim.example"}}, "COOLIFY_"),
    ({"env": {"INKMCP_DEPLOYMENT": "other"}}, "INKMCP_"),
    ({"env": {"A-B": "x"}}, "letters, digits"),
    ({"domains": ["other-service.run-1.apps.test"]}, "platform's domain"),
    ({"domains": ["victim.example:8443"]}, "not a host name"),
    ({"app_dir": "../../../var/run"}, "not a directory inside the repository"),
    ({"command": "run\ndocker run -v /:/host"}, "multi-line"),
    ({"repo_url": "file:///var/run/docker.sock"}, "https"),
])  # fmt: skip
async def test_a_tenant_value_that_cannot_be_sent_safely_fails_before_coolify_sees_anything(
    h: CoolifyHarness, change: dict[str, Any], field: str
) -> None:
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one")
    update: dict[str, Any] = {}
    if "env" in change:
        update["env"] = {k: SecretStr(v) for k, v in change["env"].items()}
    if "domains" in change:
        update["domains"] = change["domains"]
    if "app_dir" in change:
        update["plan"] = req.plan.model_copy(update={"app_dir": change["app_dir"]})
    if "command" in change:
        update["plan"] = req.plan.model_copy(update={"processes": (
            ProcessSpec(name="web", command=change["command"], routed=True),)})
    if "repo_url" in change:
        update["repo_url"] = SecretStr(change["repo_url"])
        h.provider.local_repo_url = None  # as in production: the development hook is off
    since = len(h.standin.requests)
    with pytest.raises(ReleaseFailed) as failed:
        await release(h, book, req.model_copy(update=update))
    assert failed.value.step == Step.building and field in failed.value.reason, failed.value
    assert not failed.value.retryable
    assert [s.path for s in writes(h, since)] == [], "nothing may be created or changed in Coolify"


async def test_names_and_commands_a_tenant_chooses_never_become_coolify_fields(h: CoolifyHarness) -> None:
    """A service named like a platform container, a command trying docker run options, labels and a mount: all
    stay inside the tenant's own start command; Coolify gets InkMCP's fields only."""
    book = RefBook()
    key = h.key().model_copy(update={"service_name": "coolify-proxy"})
    req = h.request(key, message="one")
    evil = "exec python3 web.py --privileged --label traefik.http.routers.x.rule=Host(`victim.io`) -v /:/host"
    req = req.model_copy(update={"plan": req.plan.model_copy(update={"processes": (
        ProcessSpec(name="web", command=evil, routed=True),)})})
    await release(h, book, req)
    app = h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]]
    assert app.fields["name"] == f"{key.service_id}-web"  # InkMCP's id, not the tenant's name
    assert not app.settings.get("custom_internal_name") and not app.settings.get("is_consistent_container_name_enabled")
    assert not app.fields.get("custom_docker_run_options")
    assert app.fields["start_command"] == mapping.shell_safe(evil, "command")
    assert_nothing_forbidden(h)


async def test_policy_on_the_wire_stops_a_request_that_bypasses_the_provider(h: CoolifyHarness) -> None:
    """Even a call no provider code makes (a storage with the Docker socket, a restart) never reaches Coolify
    through the provider's client."""
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one"))
    app = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    before = len(h.standin.requests)
    client = h.provider.client
    with pytest.raises(policy.PolicyViolation, match="operation"):
        await client.request("POST", f"/applications/{app}/storages", json={
            "type": "persistent", "name": "sock", "mount_path": "/sock", "host_path": "/var/run/docker.sock"})
    with pytest.raises(policy.PolicyViolation, match="custom_internal_name"):
        await client.request("PATCH", f"/applications/{app}", json={"custom_internal_name": "coolify-proxy"})
    with pytest.raises(policy.PolicyViolation, match="operation"):
        await client.request("POST", f"/applications/{app}/restart")
    assert len(h.standin.requests) == before  # the stand-in saw none of them
    assert h.standin.applications[app].settings.get("custom_internal_name") in (None, "")


async def test_env_change_is_a_deploy_of_the_live_commit_never_a_restart(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    v1 = h.request(key, message="one", worker=True)
    await release(h, book, v1)
    since = len(h.standin.requests)
    two = {"MESSAGE": "two"}
    async with h.hold():
        change = await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in two.items()},
                                             revision(two), book.recorder(key, None))  # fmt: skip
        assert change.outcome == EnvOutcome.pending
        assert (await h.provider.runtime(book.key(key))).env_revision == v1.env_revision
    paths = [s.path for s in writes(h, since)]
    assert paths.count("/api/v1/deploy") == 2 and not any(p.endswith(("/restart", "/start")) for p in paths)

    async def applied() -> bool:
        return (await h.provider.runtime(book.key(key))).env_revision == revision(two)

    await wait_for(applied, what="the env change applied")
    assert await h.serve(key) == "two"
    apps = book.refs[(RefScope.service, key.service_id)]["apps"]
    for uuid in apps.values():  # the redeploy built the live commit, not whatever the app was left at
        assert h.standin.applications[uuid].container.commit == v1.commit


def app_env(h: CoolifyHarness, uuid: str) -> dict[str, str]:
    with h.standin._lock:
        return {e.key: e.value or "" for e in h.standin.applications[uuid].envs if not e.is_preview}


async def test_an_env_change_waits_for_its_deployments_and_reports_restarted(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    v1 = h.request(key, message="one", worker=True)
    await release(h, book, v1)
    two = {"MESSAGE": "two"}
    change = await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in two.items()}, revision(two),
                                         book.recorder(key, None))  # fmt: skip
    assert change.outcome == EnvOutcome.restarted, change
    assert await h.serve(key) == "two"  # true when the call returned, as `restarted` promises
    ref = book.refs[(RefScope.service, key.service_id)]
    assert ref["env_revision"] == revision(two) and "env_change" not in ref
    assert (await h.provider.runtime(book.key(key))).env_revision == revision(two)


async def test_a_service_released_with_a_pre_deployment_command_still_takes_env_changes(h: CoolifyHarness) -> None:
    """Records from before the release command moved into the start command carry `pre_deployment_command` in the
    live release's body; the policy now refuses sending one, so putting the live settings back clears it."""
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one"))
    ref = book.refs[(RefScope.service, key.service_id)]
    ref["live_config"]["web"]["pre_deployment_command"] = "python manage.py migrate"  # as an older InkMCP recorded
    since = len(h.standin.requests)
    two = {"MESSAGE": "two"}
    change = await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in two.items()}, revision(two),
                                         book.recorder(key, None))  # fmt: skip
    assert change.outcome == EnvOutcome.restarted
    patches = [b for m, p, b in app_bodies(h, since) if m == "PATCH" and "pre_deployment_command" in b]
    assert patches and all(b["pre_deployment_command"] == "" for b in patches)
    assert_nothing_forbidden(h)


async def test_a_backend_release_is_confirmed_from_the_guards_report_before_the_worker_deploys(
        h: CoolifyHarness) -> None:  # fmt: skip
    """No health check gates a backend's deployment, so the provider reads the release guard's report in the new
    container's log (modelled by the stand-in without its runner; tests/e2e runs the real guard) before it goes on."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True, release_command="echo migrate")
    req = req.model_copy(update={"service_type": ServiceType.backend})
    events = Events()
    await release(h, book, req, events)
    assert Step.releasing in events.steps
    dep_ref = book.refs[(RefScope.deployment, req.deployment_id)]
    assert dep_ref["released"] is True
    apps = book.refs[(RefScope.service, key.service_id)]["apps"]
    assert h.standin.applications[apps["web"]].fields["health_check_enabled"] is False
    reads = [s for s in h.standin.requests if s.path == f"/api/v1/applications/{apps['web']}/logs"]
    worker = h.standin.deployments[dep_ref["deployments"]["worker"]]
    assert reads and worker.started_at is not None and worker.started_at >= reads[-1].at  # after the report
    assert await h.serve(key) == "one"


async def test_an_on_demand_release_is_confirmed_from_the_guards_report(h: CoolifyHarness) -> None:
    """on_demand's routed application has a fixed container name, so Coolify does no rolling update and no health
    check holds its deployment: the release's outcome is read from the guard's report as for a backend."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", release_command="echo migrate").model_copy(update={"mode": Mode.on_demand})

    class Routes:  # the SSH writer's place (tests/coolify/test_routes.py runs the real one against sshd)
        async def apublish(self, node: Any, service_id: str, doc: dict[str, Any]) -> bool:
            return True

    h.provider.node_routes = Routes()  # type: ignore[attr-defined]
    await release(h, book, req)
    web = h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]]
    assert web.settings.get("is_consistent_container_name_enabled") and web.fields["health_check_enabled"] is True
    assert book.refs[(RefScope.deployment, req.deployment_id)]["released"] is True
    assert any(s.path == f"/api/v1/applications/{web.uuid}/logs" for s in h.standin.requests)


async def test_an_env_change_that_crashes_the_app_puts_the_previous_values_back_in_coolify(h: CoolifyHarness) -> None:
    """Coolify's rolling update keeps the old web container when the new one is not healthy, but its stored env
    would stay the new one (the next deploy or restart would start the crash again): the provider puts the
    previous values back, deploys the worker (which did start with them) again, and fails as the local provider's
    failed restart does."""
    book = RefBook()
    key = h.key()
    v1 = h.request(key, message="one", worker=True)
    await release(h, book, v1)
    apps = book.refs[(RefScope.service, key.service_id)]["apps"]
    before = {name: app_env(h, uuid) for name, uuid in apps.items()}
    since = len(h.standin.requests)
    broken = {"MESSAGE": "three", "CRASH": "web"}
    with pytest.raises(ReleaseFailed) as failed:
        await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in broken.items()}, revision(broken),
                                    book.recorder(key, None))  # fmt: skip
    assert failed.value.step == Step.health_check and "web" in failed.value.reason
    assert "previous values were put back" in failed.value.reason and "CRASH=web" in failed.value.reason
    assert {name: app_env(h, uuid) for name, uuid in apps.items()} == before  # Coolify holds the old env again
    assert await h.serve(key) == "one"
    await h.settle()
    worker = h.standin.applications[apps["worker"]]
    assert worker.container is not None and worker.container.env.get("MESSAGE") == "one"  # deployed back
    assert [s.path for s in writes(h, since)].count("/api/v1/deploy") == 3  # web, worker, and the worker again
    ref = book.refs[(RefScope.service, key.service_id)]
    assert "env_change" not in ref and ref["env_revision"] == v1.env_revision
    assert (await h.provider.runtime(book.key(key))).env_revision == v1.env_revision
    assert_nothing_forbidden(h)


async def test_an_env_change_cut_short_by_coolify_puts_the_previous_values_back(h: CoolifyHarness) -> None:
    """A 500 on /deploy (unclear: it may have taken effect) is not repeated; the previous values go back (a bulk
    update is safe to repeat) and the error is retryable."""
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one"))
    app = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    before = app_env(h, app)
    h.standin.fail_next("POST", r"/deploy", status=500)
    since = len(h.standin.requests)
    two = {"MESSAGE": "two"}
    with pytest.raises(ProviderUnavailable):
        await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in two.items()}, revision(two),
                                    book.recorder(key, None))  # fmt: skip
    assert app_env(h, app) == before
    assert [s.path for s in h.standin.requests[since:]].count("/api/v1/deploy") == 1
    assert "env_change" not in book.refs[(RefScope.service, key.service_id)]


async def test_a_failed_release_command_fails_the_release_and_keeps_the_old_container(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    v1 = h.request(key, message="one", worker=True, release_command="echo migrated")
    await release(h, book, v1)
    apps = book.refs[(RefScope.service, key.service_id)]["apps"]
    bad = h.request(key, message="two", worker=True, release_command="echo schema broke; exit 3")
    with pytest.raises(ReleaseFailed) as failed:
        await release(h, book, bad)
    assert failed.value.step == Step.releasing and "schema broke" in failed.value.reason
    assert await h.serve(key) == "one"
    dep_ref = book.refs[(RefScope.deployment, bad.deployment_id)]
    assert set(dep_ref["deployments"]) == {"web"}  # the worker never started against an unmigrated database
    worker = h.standin.applications[apps["worker"]]
    assert worker.fields["git_commit_sha"] == v1.commit and app_env(h, apps["worker"])["MESSAGE"] == "one"
    assert mapping.RELEASE_ENV not in app_env(h, apps["web"])  # a rollback container does not migrate again


async def test_a_failed_release_puts_the_live_settings_back_so_an_env_change_redeploys_the_live_code(
    h: CoolifyHarness,
) -> None:
    book = RefBook()
    key = h.key()
    v1 = h.request(key, message="one", build_command="echo compiled")
    await release(h, book, v1)
    bad = h.request(key, message="two", build_command="echo broken; exit 2")
    with pytest.raises(ReleaseFailed):
        await release(h, book, bad)
    app = h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]]
    assert (app.fields["git_commit_sha"], app.fields["build_command"]) == (v1.commit, "echo compiled")
    three = {"MESSAGE": "three"}
    await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in three.items()}, revision(three),
                                book.recorder(key, None))  # fmt: skip

    async def applied() -> bool:
        return (await h.provider.runtime(book.key(key))).env_revision == revision(three)

    await wait_for(applied, what="the env change applied")
    assert await h.serve(key) == "three"


async def test_placement_is_asked_once_and_the_service_stays_on_its_server(h: CoolifyHarness) -> None:
    h.standin.add_servers(1)  # run-2
    asked: list[tuple[str, Mode, Resources]] = []
    servers = sorted(h.standin.servers.values(), key=lambda s: s.name)

    async def place(key: ServiceKey, mode: Mode, resources: Resources, *, processes: int = 1) -> PlacedServer:
        asked.append((key.service_id, mode, resources))
        target = servers[len(asked) % 2]  # a different server each time it is asked
        return PlacedServer(uuid=target.uuid, wildcard_base=f"{target.name}.apps.test")

    h.provider.place = place
    book = RefBook()
    key = h.key()
    first = await release(h, book, h.request(key, message="one"))
    second = await release(h, book, h.request(key, message="two"))
    assert len(asked) == 1 and asked[0][1] == Mode.persistent
    assert first.url == second.url and first.url is not None and servers[1].name in first.url
    app = h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]]
    assert app.server_uuid == servers[1].uuid


async def test_custom_domains_are_routed_and_the_dns_record_is_returned(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one").model_copy(update={"domains": ["www.acme.example"]})
    result = await release(h, book, req)
    host = f"web-{key.project_name}.run-1.apps.test"
    assert result.url == f"https://{host}"
    assert [r.model_dump() for r in result.dns_records] == [{"name": "www.acme.example", "type": "CNAME",
                                                             "value": host}]  # fmt: skip
    app = h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]]
    assert app.fields["fqdn"] == f"https://{host},https://www.acme.example"
    # a repeat of the same deployment returns the same answer, DNS record included
    assert await release(h, book, req) == result


async def test_on_demand_carries_inkmcps_sablier_labels_and_sleeps(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one").model_copy(update={"mode": Mode.on_demand})
    written: list[tuple[str, str, dict[str, Any]]] = []

    class Routes:  # the SSH writer's place (tests/coolify/test_routes.py runs the real one against sshd)
        async def apublish(self, node: Any, service_id: str, doc: dict[str, Any]) -> bool:
            written.append((node.host, service_id, doc))
            return True

    h.provider.node_routes = Routes()  # type: ignore[attr-defined]
    await release(h, book, req)
    uuid = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    app = h.standin.applications[uuid]
    assert app.settings.get("is_consistent_container_name_enabled") is True  # the router's stable address
    server = h.standin.servers[app.server_uuid]
    assert [(host, sid) for host, sid, _ in written] == [(server.ip, key.service_id)]  # the node that hosts it
    assert written[0][2]["http"]["services"][f"inkmcp-{uuid}"]["loadBalancer"]["servers"][0]["url"].startswith(
        f"http://{uuid}:")
    labels = base64.b64decode(app.fields["custom_labels"]).decode().splitlines()
    assert "sablier.enable=true" in labels and f"sablier.group=inkmcp-{key.service_id}" in labels
    assert all(line.split("=", 1)[0] in policy.LABEL_KEYS for line in labels), labels
    assert not app.fields.get("fqdn")  # routed by the proxy's file provider, not Coolify's label router
    assert "limits_memory_reservation" not in [k for _, _, b in app_bodies(h) for k in b]  # overcommittable
    await h.provider.client.stop_application(uuid)  # what Sablier does when the service is idle

    async def asleep() -> bool:
        return (await h.provider.runtime(book.key(key))).state == RuntimeState.sleeping

    await wait_for(asleep, what="runtime says sleeping")


async def test_builds_go_to_the_build_server(h: CoolifyHarness) -> None:
    builder = h.standin.add_server("10.77.9.9", name="build-1", is_build_server=True, usable=True)
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one")
    await release(h, book, req)
    dep = book.refs[(RefScope.deployment, req.deployment_id)]["deployments"]["web"]
    log = [e["output"] for e in h.standin.deployments[dep].log_entries]
    assert f"Found a suitable build server ({builder.name})." in log
    assert h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]].server_uuid != \
        builder.uuid


async def test_throttling_is_waited_out_and_a_long_one_is_a_retryable_error(h: CoolifyHarness) -> None:
    """A short 429 (Retry-After within the client's budget) never reaches the caller; a long one is
    ProviderUnavailable with Coolify's retry_after; the retry then finishes with one deployment per process."""
    book = RefBook()
    key = h.key()
    h.provider.client.retry = RetryPolicy(attempts=3, backoff_initial=0.01, backoff_max=0.05, max_total_wait=3.0)
    h.standin.throttle_next("GET", r"/deployments/[^/]+", retry_after=1)
    req = h.request(key, message="one")
    await release(h, book, req)
    assert any(s.fault == "429" for s in h.standin.requests)

    again = h.request(key, message="two")
    h.standin.throttle_next("POST", r"/deploy", retry_after=30)
    with pytest.raises(ProviderUnavailable) as busy:
        await release(h, book, again)
    assert busy.value.retryable and busy.value.retry_after == 30
    h.budget._paused_until = 0.0  # core waits the 30 s before it retries; the test does not
    await release(h, book, again)
    assert h.census(key)["deployments"][again.deployment_id] == {"web": 1}


async def test_500s_are_retryable_and_refusals_name_the_operators_fix(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one"))
    req = h.request(key, message="two")  # a redeploy PATCHes the settings (a first release creates with them)
    h.standin.fail_next("PATCH", r"/applications/[^/]+", status=500)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    await release(h, book, req)
    assert await h.serve(key) == "two"

    # a token without `write`: Coolify's 403, permanent, naming the abilities to give
    read_only = h.standin.add_token("read", "read:sensitive", "deploy")
    client = CoolifyClient(h.standin.url, read_only, validate_with=h.spec, retry=RetryPolicy(attempts=1),
                           transport=policy.PolicyTransport(), budget=h.budget)  # fmt: skip
    provider = CoolifyComputeProvider(client, h.root / "work2", poll_interval=0.01, wait_timeout=10.0,
                                      local_repo_url=h.providers[0].local_repo_url)  # fmt: skip
    try:
        with pytest.raises(ProviderRefused) as refused:
            await release(h, book, h.request(key, message="three"), provider=provider)
        assert not refused.value.retryable
        assert "Missing required permissions: write" in refused.value.reason and "abilities" in refused.value.reason
    finally:
        await provider.close()
    assert await h.serve(key) == "two"


async def test_static_site_is_served_by_the_static_pack_with_minimal_limits(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one").model_copy(update={
        "service_type": ServiceType.webapp_static, "mode": Mode.static,
        "plan": BuildPlan(stack=Stack.static, source="detected", static_dir="public")})
    events = Events()
    result = await release(h, book, req, events)
    assert result.url == f"https://web-{key.project_name}.run-1.apps.test"
    app = h.standin.applications[book.refs[(RefScope.service, key.service_id)]["apps"]["web"]]
    assert (app.fields["build_pack"], app.fields["publish_directory"], app.fields["limits_memory"],
            app.fields["limits_cpus"]) == ("static", "/public", "64m", "0.25")  # fmt: skip
    assert app.settings.get("is_static") is True


async def test_a_lost_deploy_answer_is_reattached_not_deployed_again(h: CoolifyHarness) -> None:
    """The /deploy took effect but its answer was lost: the retry finds the deployment through the write-ahead
    anchor in the application's deployment list and sends no second /deploy."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one")
    h.standin.drop_next("POST", r"/deploy", after=True)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    assert book.refs[(RefScope.deployment, req.deployment_id)]["intent"] == {"web": None}  # recorded before /deploy
    await release(h, book, req)
    assert [s.path for s in h.standin.requests].count("/api/v1/deploy") == 1
    app = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    assert len(h.standin.deployments_of(app)) == 1
    assert await h.serve(key) == "one"


@pytest.mark.parametrize("path", [r"/projects", r"/applications/public", r"/deploy"])
async def test_a_create_coolify_carries_out_after_the_client_gave_up_is_found_not_made_twice(
        h: CoolifyHarness, path: str) -> None:  # fmt: skip
    """Late create: Coolify holds the request past the client's timeout and then carries it out. The retry does not
    find it at once (it has not happened yet), waits out `late_window` since the request was sent (the mark written
    before sending), finds it, and sends nothing again: one project, one application, one build."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one")
    h.provider.client.attempt_timeout = 0.5
    h.provider.late_window = 2.0
    h.standin.delay_next("POST", path, 1.2)  # the change happens when the delay ends, the client gave up before
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    scope = {r"/projects": RefScope.project, r"/applications/public": RefScope.service,
             r"/deploy": RefScope.deployment}[path]  # fmt: skip
    owner = {RefScope.project: key.project_id, RefScope.service: key.service_id,
             RefScope.deployment: req.deployment_id}[scope]  # fmt: skip
    assert book.refs[(scope, owner)]["pending"], book.refs[(scope, owner)]  # the write-ahead mark stayed
    await release(h, book, req)

    async def carried_out() -> bool:  # the held request is logged once Coolify (the stand-in) carried it out
        return any(s.fault == "delay" for s in h.standin.requests)

    await wait_for(carried_out, what="the held request carried out")
    sent = [(s.method, s.path) for s in h.standin.requests]
    assert sent.count(("POST", f"/api/v1{path}")) == 1, sent  # the late one was found, not sent again
    census = h.census(key)
    assert census["projects"] == 1 and census["apps"] == {"web": 1}, census
    app = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    assert len(h.standin.deployments_of(app)) == 1
    assert await h.serve(key) == "one"
    assert "pending" not in book.refs[(RefScope.service, key.service_id)]
    assert "pending" not in book.refs[(RefScope.project, key.project_id)]


async def test_a_create_refused_with_an_answer_is_not_waited_for(h: CoolifyHarness) -> None:
    """A 500 is Coolify's answer: the request is settled, so the retry neither waits nor keeps a mark."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one")
    h.provider.late_window = 3600.0  # a wait would hang the test
    h.standin.fail_next("POST", r"/applications/public", status=500)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    assert not book.refs[(RefScope.service, key.service_id)].get("pending")
    await release(h, book, req)
    assert h.census(key)["apps"] == {"web": 1}


async def test_the_project_mark_is_durable_when_its_create_leaves_and_a_failed_lookup_leaves_none(
        h: CoolifyHarness) -> None:  # fmt: skip
    """The project's write-ahead mark is written beside the lookup by name (GET /projects), not after it: it must
    still be recorded when POST /projects leaves. A lookup that fails (Coolify's 500) created nothing, so it takes
    its mark back: the retry neither waits `late_window` nor makes a second project."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one")
    h.provider.late_window = 3600.0  # a wait would hang the test
    h.standin.fail_next("GET", r"/projects", status=500)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    assert not book.refs.get((RefScope.project, key.project_id), {}).get("pending")
    transport = h.provider.client._http._transport
    real = transport.handle_async_request
    marks: list[Any] = []

    async def watched(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/api/v1/projects":
            marks.append(dict(book.refs.get((RefScope.project, key.project_id), {}).get("pending", {})))
        return await real(request)

    transport.handle_async_request = watched
    try:
        await release(h, book, req)
    finally:
        transport.handle_async_request = real
    assert len(marks) == 1 and set(marks[0]) == {"project"}, marks
    assert h.census(key)["projects"] == 1
    assert "pending" not in book.refs[(RefScope.project, key.project_id)]
    assert await h.serve(key) == "one"


async def test_a_crash_after_the_env_deploy_call_is_found_after_restart(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one"))
    app = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    h.arm_crash("after_env_deploy_call")
    two = {"MESSAGE": "two"}
    with pytest.raises(BaseException) as died:
        await h.provider.update_env(book.key(key), {k: SecretStr(v) for k, v in two.items()}, revision(two),
                                    book.recorder(key, None))  # fmt: skip
    assert type(died.value).__name__ == "FakeCrash"
    ref = book.refs[(RefScope.service, key.service_id)]
    assert ref["env_change"]["deployments"] == {} and "web" in ref["env_change"]["after"]
    provider = await h.restart()

    async def applied() -> bool:
        return (await provider.runtime(book.key(key))).env_revision == revision(two)

    await wait_for(applied, what="the env change found and applied")
    assert await h.serve(key) == "two"
    assert len(h.standin.deployments_of(app)) == 2  # the release's and the one env deploy, nothing more


async def test_settings_switch_compute_to_coolify_and_the_built_client_polices_the_wire(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    from pydantic import ValidationError

    from inkmcp.providers.compute.coolify.settings import CoolifySettings

    monkeypatch.setenv("INKMCP_COOLIFY_URL", "http://203.0.113.5:8000")
    monkeypatch.setenv("INKMCP_COOLIFY_TOKEN", "1|secret")
    with pytest.raises(ValidationError, match="INKMCP_COOLIFY_URL"):
        CoolifySettings()
    monkeypatch.setenv("INKMCP_COOLIFY_URL", "http://10.0.1.10:8000/api/v1")
    monkeypatch.setenv("INKMCP_COOLIFY_TOKEN", "1|secret\n")
    with pytest.raises(ValidationError, match="INKMCP_COOLIFY_TOKEN"):
        CoolifySettings()
    monkeypatch.setenv("INKMCP_COOLIFY_TOKEN", "1|secret")
    monkeypatch.setenv("INKMCP_COOLIFY_MAX_MEMORY_MB", "1024")
    settings = CoolifySettings()
    assert settings.url == "http://10.0.1.10:8000" and "secret" not in repr(settings)
    provider = CoolifyComputeProvider.from_settings(settings, tmp_path)
    try:
        # refused by the transport before any connection is tried (10.0.1.10 is not reachable from here)
        with pytest.raises(policy.PolicyViolation, match="operation"):
            await provider.client.request("POST", "/applications/appaaaaaaaaaaaaaaaaaaaaa/restart")
        with pytest.raises(policy.PolicyViolation, match="limits_memory"):
            await provider.client.request("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa",
                                          json={"limits_memory": "2048m"})  # fmt: skip
    finally:
        await provider.close()


async def test_a_build_command_dropped_by_the_next_release_is_cleared_in_coolify(h: CoolifyHarness) -> None:
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one", build_command="echo compiled"))
    since = len(h.standin.requests)
    await release(h, book, h.request(key, message="two"))
    app_uuid = book.refs[(RefScope.service, key.service_id)]["apps"]["web"]
    patch = next(b for m, p, b in app_bodies(h, since) if m == "PATCH" and p == f"/api/v1/applications/{app_uuid}")
    assert patch["build_command"] == ""  # Coolify keeps what a PATCH omits: the release clears it explicitly
    assert not h.standin.applications[app_uuid].fields.get("build_command")
    assert await h.serve(key) == "two"


async def test_a_redeploy_costs_five_requests_per_process_besides_polling(h: CoolifyHarness) -> None:
    """Coolify allows 200 requests a minute per user for everything InkMCP does: a redeploy of web + worker is
    PATCH settings, GET envs, PATCH envs, GET deployments (the write-ahead), POST /deploy per process, plus polls
    of deployments not finished yet."""
    book = RefBook()
    key = h.key()
    await release(h, book, h.request(key, message="one", worker=True))
    since = len(h.standin.requests)
    await release(h, book, h.request(key, message="two", worker=True))
    seen = [s.operation for s in h.standin.requests[since:] if s.operation != "get-deployment-by-uuid"]
    assert sorted(seen) == sorted(2 * ["update-application-by-uuid", "list-envs-by-application-uuid",
                                       "update-envs-by-application-uuid", "list-deployments-by-app-uuid",
                                       "deploy-by-tag-or-uuid"])  # fmt: skip


async def test_a_first_release_sends_its_creates_and_deploys_side_by_side_each_after_its_marks_are_recorded(
        h: CoolifyHarness) -> None:  # fmt: skip
    """Issue 8 (overhead): a first web + worker release creates both applications at once and starts both
    deployments at once, and every such request leaves InkMCP only after the write-ahead marks of *both* are
    recorded (one write for the two): a crash while one is in flight finds both marks. Also the exact requests
    of a first release besides polling (nothing added by running steps side by side)."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    transport = h.provider.client._http._transport
    real = transport.handle_async_request
    in_flight: dict[str, int] = {}
    most: dict[str, int] = {}
    seen_marks: list[tuple[str, Any]] = []

    async def watched(request: httpx.Request) -> httpx.Response:
        kind = {"/api/v1/applications/public": "create", "/api/v1/deploy": "deploy"}.get(request.url.path)
        if request.method == "PATCH":  # each application's env, of both processes, at once (the settings went
            # with the creates: issue 8)
            in_flight["patch"] = in_flight.get("patch", 0) + 1
            most["patch"] = max(most.get("patch", 0), in_flight["patch"])
            try:
                await asyncio.sleep(0.05)
                return await real(request)
            finally:
                in_flight["patch"] -= 1
        if kind is None or request.method != "POST":
            return await real(request)
        if kind == "create":  # what is recorded (durable) at the moment the create leaves
            ref = book.refs.get((RefScope.service, key.service_id), {})
            seen_marks.append((kind, sorted(ref.get("pending", {}))))
        else:
            ref = book.refs.get((RefScope.deployment, req.deployment_id), {})
            seen_marks.append((kind, (sorted(ref.get("pending", {})), ref.get("intent"))))
        in_flight[kind] = in_flight.get(kind, 0) + 1
        most[kind] = max(most.get(kind, 0), in_flight[kind])
        try:
            await asyncio.sleep(0.05)  # long enough for the other process's request to leave meanwhile
            return await real(request)
        finally:
            in_flight[kind] -= 1

    transport.handle_async_request = watched
    since = len(h.standin.requests)
    try:
        await release(h, book, req)
    finally:
        transport.handle_async_request = real
    assert most == {"create": 2, "deploy": 2, "patch": 2}, most  # side by side
    assert seen_marks.count(("create", ["app:web", "app:worker"])) == 2, seen_marks
    assert seen_marks.count(("deploy", (["deploy:web", "deploy:worker"], {"web": None, "worker": None}))) == 2, \
        seen_marks  # fmt: skip
    polls = ("get-deployment-by-uuid", "get-application-by-uuid")  # as many as the stand-in's build clock needs
    ops = sorted(s.operation for s in h.standin.requests[since:] if s.operation not in polls)
    assert ops == sorted(["list-servers", "list-projects", "create-project", "get-project-by-uuid"]  # placement: 1st
                         + 2 * ["create-public-application", "update-envs-by-application-uuid",
                                "deploy-by-tag-or-uuid"]), ops  # fmt: skip
    refs = book.refs[(RefScope.service, key.service_id)]
    assert "pending" not in refs and set(refs["apps"]) == {"web", "worker"}
    assert set(book.refs[(RefScope.deployment, req.deployment_id)]["deployments"]) == {"web", "worker"}
    assert await h.serve(key) == "one"


@pytest.mark.parametrize("build_seconds", [0.0, 0.3])
async def test_a_build_done_at_the_first_look_records_building_beside_what_follows_and_in_order(
        h: CoolifyHarness, build_seconds: float) -> None:  # fmt: skip
    """Issue 8 (overhead7): when the first read of a release's deployments finds them finished already (the
    stand-in's 0 s builds), the `building` step is written beside what follows (the wait for Coolify's status of the
    worker's first container) instead of before it, and still before the switching step, never lost. A build still
    running at the first look is reported building as before, while it runs (before the switching step's write
    starts, with nothing sent meanwhile that waits for it)."""
    h.standin.build_seconds = build_seconds
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    log: list[tuple[str, Any]] = []

    async def progress(step: Step, detail: str) -> None:
        log.append(("step starts", step))
        if step == Step.building:
            await asyncio.sleep(0.3)  # a slow write: what the release sends meanwhile shows whether it waited
        log.append(("step written", step))

    transport = h.provider.client._http._transport
    real = transport.handle_async_request

    async def watched(request: httpx.Request) -> httpx.Response:
        log.append(("sent", f"{request.method} {request.url.path}"))
        return await real(request)

    transport.handle_async_request = watched
    try:
        await h.provider.release(book.request(req), progress, book.recorder(key, req.deployment_id))
    finally:
        transport.handle_async_request = real
    written = [s for kind, s in log if kind == "step written"]
    assert written == [Step.building, Step.switching], log
    building = log.index(("step starts", Step.building))
    built = log.index(("step written", Step.building))
    assert log.index(("step starts", Step.switching)) > built, log  # in order
    meanwhile = [what for kind, what in log[building:built] if kind == "sent"]
    if build_seconds == 0.0:  # the worker's status read went out while the building step was being written
        assert any(what.startswith("GET /api/v1/applications/") for what in meanwhile), log
    else:  # reported while the build ran: written before Coolify's deployments were read finished
        assert meanwhile == [], log
        assert any(kind == "sent" and what.startswith("GET /api/v1/deployments/") for kind, what in log[built:]), log
    assert await h.serve(key) == "one"


@pytest.mark.parametrize("build_seconds", [0.0, 0.3])
async def test_where_core_writes_refs_and_steps_together_a_build_done_at_the_first_look_adds_no_write(
        h: CoolifyHarness, build_seconds: float) -> None:  # fmt: skip
    """Issue 8 (overhead9): with core's `record.many(refs, steps)` (a pipeline's recorder), the `building` step of a
    build Coolify had finished at the first look (the stand-in's 0 s builds) is not a write of its own: it goes,
    first, in the release's next write, here the last refs with the `switching` step, so the events keep their
    order and the release makes one fenced write less. A build still running at the first look is written at once,
    on its own, while it runs (an agent sees `building` during the build, as before)."""
    h.standin.build_seconds = build_seconds
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    writes: list[tuple[list[str], list[str]]] = []  # (scopes, steps) per write, in order
    inner = book.recorder(key, req.deployment_id)

    async def record(scope: RefScope, ref: Any) -> None:
        writes.append(([RefScope(scope).value], []))
        await inner(scope, ref)

    async def many(refs: dict[RefScope, Any], step: Any = None) -> None:
        steps = [step] if isinstance(step, tuple) else list(step or [])
        writes.append(([RefScope(sc).value for sc in refs], [Step(st).value for st, _ in steps]))
        for scope, ref in refs.items():
            await inner(scope, ref)

    record.many = many  # type: ignore[attr-defined]
    record.with_steps = True  # type: ignore[attr-defined]

    async def progress(step: Step, detail: str) -> None:
        writes.append(([], [step.value]))

    await h.provider.release(book.request(req), progress, record)
    steps = [st for _, sts in writes for st in sts]
    assert steps == ["building", "switching"], writes
    if build_seconds == 0.0:
        assert [sts for _, sts in writes if sts] == [["building", "switching"]], writes  # one write, in order
    else:
        assert ([], ["building"]) in writes, writes  # while the build ran, on its own
    assert await h.serve(key) == "one"


def _pipeline_recorder(book: RefBook, key: Any, req: Any, writes: list[tuple[list[str], list[str]]],
                       log: list[str] | None = None) -> Any:
    """A recorder shaped as core's in a pipeline (`record.many(refs, steps)`, `with_steps`), over `book`, logging
    each write as (scopes, steps), and as "write" in `log`."""
    inner = book.recorder(key, req.deployment_id)

    async def record(scope: RefScope, ref: Any) -> None:
        writes.append(([RefScope(scope).value], []))
        if log is not None:
            log.append("write")
        await inner(scope, ref)

    async def many(refs: dict[RefScope, Any], step: Any = None) -> None:
        steps = [step] if isinstance(step, tuple) else list(step or [])
        writes.append((sorted(RefScope(sc).value for sc in refs), [Step(st).value for st, _ in steps]))
        if log is not None:
            log.append("write")
        for scope, ref in refs.items():
            await inner(scope, ref)

    record.many = many  # type: ignore[attr-defined]
    record.with_steps = True  # type: ignore[attr-defined]
    return record


async def test_a_first_deploy_records_its_new_applications_with_the_deployments_marks(h: CoolifyHarness) -> None:
    """Issue 8 (overhead9): a first deploy's applications, created by its own attempt, are configured (env PATCHes)
    without a write before: their uuids, `env_written` and `set_fields` go in one write with the deployments'
    write-ahead marks, before the first /deploy. A redeploy writes before its PATCHes as before."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    writes: list[tuple[list[str], list[str]]] = []
    transport = h.provider.client._http._transport
    real = transport.handle_async_request
    order: list[str] = []

    async def watched(request: httpx.Request) -> httpx.Response:
        if request.method != "GET":
            order.append(f"{request.method} {request.url.path.split('/')[-1]}")
        return await real(request)

    async def progress(step: Step, detail: str) -> None:
        writes.append(([], [step.value]))

    transport.handle_async_request = watched
    try:
        await h.provider.release(book.request(req), progress, _pipeline_recorder(book, key, req, writes, order))
        created = max(i for i, what in enumerate(order) if what == "POST public")
        first = order.index("write", created + 1)  # the first write after the creates
        assert order[first - 2:first] == ["PATCH bulk", "PATCH bulk"] and order[first + 1] == "POST deploy", order
        marks = book.refs[(RefScope.deployment, req.deployment_id)]
        assert marks["env_written"] and set(marks["intent"]) == {"web", "worker"}
        assert set(book.refs[(RefScope.service, key.service_id)]["apps"]) == {"web", "worker"}
        assert await h.serve(key) == "one"

        order.clear()
        key2 = book.key(key)
        req2 = h.request(key2, message="two", worker=True)
        await h.provider.release(book.request(req2), progress, _pipeline_recorder(book, key2, req2, writes, order))
        assert "write" in order[:order.index("PATCH bulk")], order  # a redeploy: env_written before its PATCHes
        assert await h.serve(key) == "two"
    finally:
        transport.handle_async_request = real


async def test_a_death_after_a_first_deploys_env_patches_finds_its_applications_again(h: CoolifyHarness) -> None:
    """overhead9: InkMCP dies right after a first deploy's env PATCHes. overhead8: the applications' uuids went
    with the deployments' write-ahead marks, written beside those PATCHes (before, the applications' own marks were
    all that was durable): the next attempt finds both applications recorded, configures them again, looks for the
    deployments its marks may have made (none), waits out `late_window` and deploys: one application per process,
    one deployment each, serving the new release."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    h.provider.late_window = 0.5
    transport = h.provider.client._http._transport
    real = transport.handle_async_request
    patched = 0

    async def dying(request: httpx.Request) -> httpx.Response:
        nonlocal patched
        response = await real(request)
        if request.method == "PATCH" and request.url.path.endswith("/envs/bulk"):
            patched += 1
            if patched == 2:
                raise Crash("died after the env PATCHes")
        return response

    writes: list[tuple[list[str], list[str]]] = []

    async def progress(step: Step, detail: str) -> None:
        writes.append(([], [step.value]))

    transport.handle_async_request = dying
    try:
        with pytest.raises(Crash):
            await h.provider.release(book.request(req), progress, _pipeline_recorder(book, key, req, writes))
    finally:
        transport.handle_async_request = real
    service_ref = book.refs[(RefScope.service, key.service_id)]
    assert set(service_ref["apps"]) == {"web", "worker"} and "pending" not in service_ref, service_ref
    marks = book.refs[(RefScope.deployment, req.deployment_id)]
    assert set(marks["pending"]) == {"deploy:web", "deploy:worker"} and not marks.get("deployments"), marks
    await h.provider.release(book.request(req), progress, _pipeline_recorder(book, book.key(key), req, writes))
    census = h.census(key)
    assert census["apps"] == {"web": 1, "worker": 1}, census
    for app in book.refs[(RefScope.service, key.service_id)]["apps"].values():
        assert len(h.standin.deployments_of(app)) == 1
    assert "pending" not in book.refs[(RefScope.service, key.service_id)]
    assert await h.serve(key) == "one"


async def test_a_first_deploys_deployment_marks_are_written_beside_its_env_patches(h: CoolifyHarness) -> None:
    """overhead8 (issue 8): a first deploy's deployments' write-ahead marks (with the refs kept since the creates)
    are written while its env PATCHes are on their way, not after them; every /deploy still leaves after its mark
    is durable."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    transport = h.provider.client._http._transport
    real = transport.handle_async_request
    during: list[set[str]] = []
    at_deploy: list[set[str]] = []

    def marks() -> set[str]:
        return set(book.refs.get((RefScope.deployment, req.deployment_id), {}).get("pending") or {})

    async def watched(request: httpx.Request) -> httpx.Response:
        if request.method == "PATCH" and request.url.path.endswith("/envs/bulk"):
            await asyncio.sleep(0.3)  # the PATCH on its way: the marks' write goes on meanwhile
            during.append(marks())
        if request.method == "POST" and request.url.path.endswith("/deploy"):
            at_deploy.append(marks())
        return await real(request)

    async def progress(step: Step, detail: str) -> None:
        pass

    transport.handle_async_request = watched
    try:
        await h.provider.release(book.request(req), progress, _pipeline_recorder(book, key, req, []))
    finally:
        transport.handle_async_request = real
    assert during == [{"deploy:web", "deploy:worker"}] * 2, during
    assert len(at_deploy) == 2 and all({"deploy:web", "deploy:worker"} <= m for m in at_deploy), at_deploy
    assert await h.serve(key) == "one"


async def test_a_failed_env_patch_beside_the_deployment_marks_takes_them_back(h: CoolifyHarness) -> None:
    """overhead8: the env PATCH beside a first deploy's deployment marks fails (Coolify's 500): no /deploy went out,
    so the marks (and their anchors) are taken back; the retry does not wait `late_window` for them and deploys once
    per process."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    h.provider.late_window = 3600.0  # a wait would hang the test
    h.standin.fail_next("PATCH", r"/applications/[^/]+/envs/bulk", status=500)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    marks = book.refs.get((RefScope.deployment, req.deployment_id), {})
    assert not marks.get("pending") and not marks.get("intent"), marks
    before = len(h.standin.requests)
    await release(h, book, req)
    sent = [(s.method, s.path) for s in h.standin.requests[before:]]
    assert sent.count(("POST", "/api/v1/deploy")) == 2, sent
    for app in book.refs[(RefScope.service, key.service_id)]["apps"].values():
        assert len(h.standin.deployments_of(app)) == 1
    assert await h.serve(key) == "one"


async def test_a_first_releases_application_marks_are_written_beside_its_new_projects_read(h: CoolifyHarness) -> None:
    """overhead8 (issue 8): a first release's applications' write-ahead marks (with the service's placement) are
    written while the read of its new Coolify project is on its way, and the creates follow that read with no write
    in between; every create still leaves after its mark is durable."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    transport = h.provider.client._http._transport
    real = transport.handle_async_request
    during: list[dict[str, Any]] = []
    at_create: list[set[str]] = []
    order: list[str] = []

    def service() -> dict[str, Any]:
        return dict(book.refs.get((RefScope.service, key.service_id), {}))

    async def watched(request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.startswith("/api/v1/projects/"):
            await asyncio.sleep(0.3)  # the read on its way: the marks' write goes on meanwhile
            during.append(service())
        if request.method == "POST" and request.url.path.endswith("/applications/public"):
            at_create.append(set(service().get("pending") or {}))
        if request.method != "GET" or request.url.path.startswith("/api/v1/projects/"):
            order.append(f"{request.method} {request.url.path.split('/')[-1]}" if request.method != "GET" else "read")
        return await real(request)

    async def progress(step: Step, detail: str) -> None:
        pass

    transport.handle_async_request = watched
    try:
        await h.provider.release(book.request(req), progress, _pipeline_recorder(book, key, req, [], order))
    finally:
        transport.handle_async_request = real
    assert len(during) == 1 and set(during[0].get("pending") or {}) == {"app:web", "app:worker"}, during
    assert during[0].get("server_uuid"), during  # the placement went with the marks
    assert at_create == [{"app:web", "app:worker"}] * 2, at_create
    read = order.index("read")
    assert order[read + 1:read + 3] == ["POST public", "POST public"], order  # no write between read and creates
    assert h.census(key)["apps"] == {"web": 1, "worker": 1}
    assert await h.serve(key) == "one"


async def test_a_failed_project_read_beside_the_application_marks_takes_them_back(h: CoolifyHarness) -> None:
    """overhead8: the read of the new project beside a first release's applications' marks fails (Coolify's 500):
    no create went out, so the marks are taken back; the retry does not wait `late_window` for them, and makes one
    application per process."""
    book = RefBook()
    key = h.key()
    req = h.request(key, message="one", worker=True)
    h.provider.late_window = 3600.0  # a wait would hang the test
    h.standin.fail_next("GET", r"/projects/[^/]+", status=500)
    with pytest.raises(ProviderUnavailable):
        await release(h, book, req)
    assert not book.refs.get((RefScope.service, key.service_id), {}).get("pending"), book.refs
    await release(h, book, req)
    assert h.census(key)["apps"] == {"web": 1, "worker": 1}
    assert not book.refs[(RefScope.service, key.service_id)].get("pending")
    assert await h.serve(key) == "one"
