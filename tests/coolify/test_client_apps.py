"""The Coolify client on the application path, against the stateful stand-in (inkmcp/coolify/standin): the exact
bodies and queries each method sends (spec-checked before sending and again on arrival), base64 fields encoded by
the models, Coolify's refusals turned into typed errors naming the field, what is retried and what never is
(a create, /deploy, a PATCH that queues a deploy), the full deployment queue surfaced as progress-able
`CoolifyRateLimited`, and no token or database password in a log, repr or error."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator

import pytest
from pydantic import ValidationError

from inkmcp.coolify.budget import BudgetSettings, LocalBudget
from inkmcp.coolify.client import (
    SPEC_OMITTED_KEYS,
    CoolifyBadRequest,
    CoolifyClient,
    CoolifyConflict,
    CoolifyNotFound,
    CoolifyRateLimited,
    CoolifyUnavailable,
    CoolifyValidationError,
)
from inkmcp.coolify.models import (
    ApplicationUpdate,
    DockerfileApplicationCreate,
    EnvVarSet,
    PostgresCreate,
    ProjectCreate,
    PublicApplicationCreate,
    ServerUpdate,
)
from inkmcp.coolify.polling import wait_for_application, wait_for_deployment
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.coolify.standin import applications as apps_standin
from inkmcp.coolify.standin import databases as dbs_standin
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin

REPO = "https://github.com/inkmcp/hello"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def token(standin: CoolifyStandin) -> str:
    """What the compute provider needs: read, read:sensitive (env values, build logs), write, deploy."""
    return standin.add_token("read", "read:sensitive", "write", "deploy")


@pytest.fixture
async def client(standin: CoolifyStandin, token: str, spec: CoolifySpec) -> AsyncIterator[CoolifyClient]:
    async with CoolifyClient(standin.url, token, validate_with=spec, retry=FAST) as c:
        yield c
    assert standin.request_violations == []


class Place:
    """Where test applications go: a project with its production environment, one usable run server."""

    def __init__(self, project: str, environment: str, server: str) -> None:
        self.project, self.environment, self.server = project, environment, server

    def public(self, name: str = "web", **kw: object) -> PublicApplicationCreate:
        fields: dict[str, object] = {
            "project_uuid": self.project, "server_uuid": self.server, "environment_name": "production",
            "environment_uuid": self.environment, "git_repository": REPO, "git_branch": "main",
            "build_pack": "nixpacks", "ports_exposes": "3000", "name": name, "git_commit_sha": COMMIT}
        fields.update(kw)
        return PublicApplicationCreate(**fields)  # type: ignore[arg-type]


@pytest.fixture
async def place(standin: CoolifyStandin, client: CoolifyClient) -> Place:
    server = standin.add_servers(1)[0]
    project = await client.create_project(ProjectCreate(name="inkmcp-acct1", description="InkMCP project"))
    environment = next(e for e in (await client.get_project(project)).environments if e.name == "production")
    assert environment.uuid
    return Place(project, environment.uuid, server.uuid)


def last(standin: CoolifyStandin, method: str, path: str) -> object:
    return standin.requests_of(method=method, path=path)[-1]


# ---------------------------------------------------------------------------------------------------------
# The models against the contract
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "operation", "allowed"), [
    (PublicApplicationCreate, "create-public-application", apps_standin.CREATE_ALLOWED),
    (DockerfileApplicationCreate, "create-dockerfile-application", apps_standin.CREATE_ALLOWED),
    (ApplicationUpdate, "update-application-by-uuid", apps_standin.UPDATE_ALLOWED),
    (PostgresCreate, "create-database-postgresql", dbs_standin.DB_ALLOWED),
    (EnvVarSet, "create-env-by-application-uuid", list(apps_standin.ENV_RULES)),
    (ProjectCreate, "create-project", ["name", "description"]),
])
def test_request_models_send_only_what_spec_and_controller_both_accept(
        spec: CoolifySpec, model: type, operation: str, allowed: list[str]) -> None:
    """Every field a request model can send is in the spec's schema for the operation (the stand-in and
    `validate_with` refuse anything else; SPEC_OMITTED_KEYS are the documented exceptions) and in the
    controller's allow-list as the stand-in transcribes it (Coolify answers 422 for anything else)."""
    fields = set(model.model_fields)  # type: ignore[attr-defined]
    omitted = SPEC_OMITTED_KEYS.get(operation, frozenset())
    assert fields - omitted <= spec.by_id(operation).body_keys
    assert fields <= set(allowed)


# ---------------------------------------------------------------------------------------------------------
# Projects and environments
# ---------------------------------------------------------------------------------------------------------


async def test_projects_and_environments(standin: CoolifyStandin, client: CoolifyClient) -> None:
    uuid = await client.create_project(ProjectCreate(name="inkmcp-acct2"))
    assert standin.requests_of(method="POST", path="/projects")[-1].body == {"name": "inkmcp-acct2"}
    project = await client.get_project(uuid)
    assert project.name == "inkmcp-acct2" and [e.name for e in project.environments] == ["production"]
    assert uuid in [p.uuid for p in await client.list_projects()]
    staging = await client.create_environment(uuid, "staging")
    assert {e.name for e in await client.list_environments(uuid)} == {"production", "staging"}
    assert (await client.get_environment(uuid, "staging")).uuid == staging
    with pytest.raises(CoolifyConflict):  # 409: the caller lists and takes the existing one
        await client.create_environment(uuid, "staging")
    await client.delete_project(uuid)
    with pytest.raises(CoolifyNotFound):
        await client.get_project(uuid)


def test_project_names_are_checked_before_sending() -> None:
    with pytest.raises(ValidationError, match="name"):
        ProjectCreate(name="x")  # Coolify: 3 to 255 characters
    with pytest.raises(ValidationError, match="name"):
        ProjectCreate(name="semi;colon")


# ---------------------------------------------------------------------------------------------------------
# Applications
# ---------------------------------------------------------------------------------------------------------


async def test_create_public_application_sends_exactly_what_was_set(standin: CoolifyStandin,
                                                                    client: CoolifyClient, place: Place) -> None:
    labels = "sablier.enable=true\nsablier.group=web-acct1"
    created = await client.create_public_application(place.public(
        limits_memory="512m", limits_cpus="0.5", custom_labels=labels, health_check_port="3000",
        pre_deployment_command="python manage.py migrate", use_build_server=True, instant_deploy=False))
    sent = last(standin, "POST", "/applications/public").body  # type: ignore[attr-defined]
    assert sent == {
        "project_uuid": place.project, "server_uuid": place.server, "environment_name": "production",
        "environment_uuid": place.environment, "git_repository": REPO, "git_branch": "main",
        "build_pack": "nixpacks", "ports_exposes": "3000", "name": "web", "git_commit_sha": COMMIT,
        "limits_memory": "512m", "limits_cpus": "0.5", "custom_labels": b64(labels), "health_check_port": "3000",
        "pre_deployment_command": "python manage.py migrate", "use_build_server": True, "instant_deploy": False}
    assert created.domains and created.domains.startswith("http://") and created.uuid in created.domains
    app = await client.get_application(created.uuid)
    assert (app.name, app.git_commit_sha, app.ports_exposes, app.limits_memory) == ("web", COMMIT, "3000", "512m")
    assert app.fqdn == created.domains and not app.running
    assert created.uuid in [a.uuid for a in await client.list_applications()]


async def test_create_dockerfile_application_then_fix_its_port(standin: CoolifyStandin, client: CoolifyClient,
                                                               place: Place) -> None:
    dockerfile = "FROM python:3.12-slim\nEXPOSE 8000\nCMD [\"python\", \"-m\", \"http.server\"]\n"
    created = await client.create_dockerfile_application(DockerfileApplicationCreate(
        project_uuid=place.project, server_uuid=place.server, environment_name="production",
        environment_uuid=place.environment, dockerfile=dockerfile, name="api"))
    sent = last(standin, "POST", "/applications/dockerfile").body  # type: ignore[attr-defined]
    assert sent["dockerfile"] == b64(dockerfile) and "\n" not in sent["dockerfile"]
    assert (await client.get_application(created.uuid)).ports_exposes == "80"  # Coolify ignores EXPOSE (NOTES §b)
    await client.update_application(created.uuid, ApplicationUpdate(ports_exposes="8000"))
    assert last(standin, "PATCH", f"/applications/{created.uuid}").body == {"ports_exposes": "8000"}  # type: ignore[attr-defined]
    assert (await client.get_application(created.uuid)).ports_exposes == "8000"


async def test_unknown_or_malformed_fields_never_leave(standin: CoolifyStandin, client: CoolifyClient,
                                                      place: Place) -> None:
    """What Coolify would refuse with 422 (an unknown key, the GET field `fqdn` written back, #9502) or store
    wrongly fails in the model, naming the field, before any request."""
    before = len(standin.requests)
    with pytest.raises(ValidationError, match="fqdn"):
        place.public(fqdn="https://x.example.com")
    with pytest.raises(ValidationError, match="custom_network_aliases"):
        ApplicationUpdate(custom_network_aliases="web")  # type: ignore[call-arg] - controller-only, not in the spec
    with pytest.raises(ValidationError, match="limits_memory"):
        place.public(limits_memory="lots")
    with pytest.raises(ValidationError, match="ports_exposes"):
        place.public(ports_exposes="3000/tcp")
    assert len(standin.requests) == before


async def test_coolify_422_names_the_field_and_is_not_retried(standin: CoolifyStandin, client: CoolifyClient,
                                                              place: Place) -> None:
    with pytest.raises(CoolifyValidationError) as caught:
        await client.create_public_application(place.public(git_repository="ftp://example.com/x.git"))
    e = caught.value
    assert not e.retryable and e.status == 422 and e.fields == ["git_repository"]
    assert "POST /applications/public" in str(e) and "git_repository: The git repository URL is not valid." in str(e)
    assert standin.request_count(method="POST", path="/applications/public") == 1


async def test_a_create_is_never_repeated_after_an_ambiguous_failure(standin: CoolifyStandin,
                                                                      client: CoolifyClient, place: Place) -> None:
    """The answer to a create is lost after Coolify made the application: the client raises a retryable error
    and sends nothing more (a repeat would make a second application); the caller finds it by re-reading."""
    standin.drop_next("POST", r"/applications/public", after=True)
    with pytest.raises(CoolifyUnavailable) as caught:
        await client.create_public_application(place.public(name="once"))
    assert caught.value.retryable
    assert standin.request_count(method="POST", path="/applications/public") == 1
    assert [a.name for a in await client.list_applications()] == ["once"]  # made once; found by re-reading

    standin.fail_next("POST", r"/applications/public", status=503)
    with pytest.raises(CoolifyUnavailable):
        await client.create_public_application(place.public(name="twice"))
    assert standin.request_count(method="POST", path="/applications/public") == 2


async def test_one_attempt_has_a_total_time_limit(standin: CoolifyStandin, token: str, spec: CoolifySpec,
                                                  place: Place) -> None:
    """A create whose answer comes too late (Coolify made it) ends at attempt_timeout as a retryable error, not
    repeated; a slow GET is tried again."""
    async with CoolifyClient(standin.url, token, validate_with=spec, retry=FAST, attempt_timeout=0.3) as c:
        standin.delay_next("POST", r"/applications/public", 1.0, after=True)
        started = asyncio.get_running_loop().time()
        with pytest.raises(CoolifyUnavailable, match="no complete answer"):
            await c.create_public_application(place.public(name="slow"))
        assert asyncio.get_running_loop().time() - started < 0.9
        deadline = started + 5  # the stand-in logs a request when its (late) answer goes out
        while standin.request_count(method="POST", path="/applications/public") == 0:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        assert [a.name for a in await c.list_applications()] == ["slow"]  # made once, never repeated
        assert standin.request_count(method="POST", path="/applications/public") == 1
        standin.delay_next("GET", r"/projects", 1.0)
        assert place.project in [p.uuid for p in await c.list_projects()]
        deadline = asyncio.get_running_loop().time() + 5
        while standin.request_count(method="GET", path="/projects") < 2:  # the slow one, logged when it answers
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
    with pytest.raises(ValueError, match="attempt_timeout=0"):
        CoolifyClient(standin.url, token, attempt_timeout=0)


async def test_reads_and_absolute_writes_are_retried(standin: CoolifyStandin, client: CoolifyClient,
                                                     place: Place) -> None:
    app = (await client.create_public_application(place.public())).uuid
    standin.fail_next("GET", rf"/applications/{app}", times=2, status=503)
    assert (await client.get_application(app)).uuid == app
    assert [r.status for r in standin.requests_of(method="GET", path=f"/applications/{app}")] == [503, 503, 200]

    standin.drop_next("PATCH", rf"/applications/{app}", after=True)
    await client.update_application(app, ApplicationUpdate(limits_memory="256m"))  # absolute: safe to repeat
    assert standin.request_count(method="PATCH", path=f"/applications/{app}") == 2

    standin.drop_next("PATCH", rf"/applications/{app}", after=True)
    with pytest.raises(CoolifyUnavailable):  # instant_deploy queues a deployment: never repeated
        await client.update_application(app, ApplicationUpdate(limits_memory="300m", instant_deploy=True))
    assert standin.request_count(method="PATCH", path=f"/applications/{app}") == 3


async def test_start_stop_restart_logs_and_status(standin: CoolifyStandin, client: CoolifyClient,
                                                  place: Place) -> None:
    app = (await client.create_public_application(place.public(health_check_enabled=True,
                                                               health_check_path="/health"))).uuid
    with pytest.raises(CoolifyBadRequest, match="not running"):
        await client.application_logs(app)
    started = await client.start_application(app)
    assert started.deployment_uuid and last(standin, "POST", f"/applications/{app}/start").query == {  # type: ignore[attr-defined]
        "force": "false", "instant_deploy": "false"}
    assert (await wait_for_deployment(client, started.deployment_uuid, timeout=10)).status == "finished"
    running = await wait_for_application(client, app, timeout=10)
    assert running.running and running.status == "running:healthy"
    standin.add_runtime_log(app, "listening on :3000")
    assert "listening on :3000" in await client.application_logs(app, lines=50, show_timestamps=True)
    assert last(standin, "GET", f"/applications/{app}/logs").query == {"lines": "50", "show_timestamps": "true"}  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="lines=0"):
        await client.application_logs(app, lines=0)
    restarted = await client.restart_application(app)
    assert restarted.deployment_uuid and restarted.deployment_uuid != started.deployment_uuid
    assert await client.stop_application(app) == "Application stopping request queued."
    stopped = await wait_for_application(client, app, until=lambda a: not a.running, timeout=10)
    assert stopped.status and stopped.status.startswith("exited")


async def test_delete_application_sends_its_flags(standin: CoolifyStandin, client: CoolifyClient,
                                                  place: Place) -> None:
    app = (await client.create_public_application(place.public())).uuid
    assert await client.delete_application(app, delete_volumes=False, docker_cleanup=False)
    assert last(standin, "DELETE", f"/applications/{app}").query == {  # type: ignore[attr-defined]
        "delete_configurations": "true", "delete_volumes": "false", "docker_cleanup": "false",
        "delete_connected_networks": "true"}
    deadline = asyncio.get_running_loop().time() + 5
    while True:  # Coolify deletes in a queued job: the application is gone a moment later
        try:
            await client.get_application(app)
        except CoolifyNotFound:
            break
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.02)
    assert standin.deleted_with[app] == {"delete_configurations": True, "delete_volumes": False,
                                         "docker_cleanup": False, "delete_connected_networks": True}
    assert not await client.delete_application(app, missing_ok=True)  # a repeat after a crash: already gone
    with pytest.raises(CoolifyNotFound):
        await client.delete_application(app)


# ---------------------------------------------------------------------------------------------------------
# Environment variables
# ---------------------------------------------------------------------------------------------------------


async def test_env_vars_bulk_single_and_delete(standin: CoolifyStandin, client: CoolifyClient,
                                               place: Place) -> None:
    app = (await client.create_public_application(place.public())).uuid
    upserted = await client.update_envs(app, [
        EnvVarSet(key="DATABASE_URL", value="postgres://u:s3cret@db:5432/app", is_buildtime=False),
        EnvVarSet(key="CERT", value="-----BEGIN-----\nabc\n-----END-----", is_multiline=True)])
    assert last(standin, "PATCH", f"/applications/{app}/envs/bulk").body == {"data": [  # type: ignore[attr-defined]
        {"key": "DATABASE_URL", "value": "postgres://u:s3cret@db:5432/app", "is_buildtime": False},
        {"key": "CERT", "value": "-----BEGIN-----\nabc\n-----END-----", "is_multiline": True}]}
    assert {e.key for e in upserted} == {"DATABASE_URL", "CERT"}
    listed = await client.list_envs(app)
    mains = {e.key: e for e in listed if not e.is_preview}
    assert set(mains) == {"DATABASE_URL", "CERT"} and len(listed) == 4  # each with its preview twin
    assert mains["DATABASE_URL"].value == "postgres://u:s3cret@db:5432/app" and not mains["DATABASE_URL"].is_buildtime
    assert "s3cret" not in repr(mains["DATABASE_URL"]) and "s3cret" not in repr(upserted)

    updated = await client.update_env(app, EnvVarSet(key="CERT", value="new"))
    assert updated.key == "CERT" and updated.value == "new"
    created = await client.create_env(app, EnvVarSet(key="PORT", value="3000"))
    assert last(standin, "POST", f"/applications/{app}/envs").body == {"key": "PORT", "value": "3000"}  # type: ignore[attr-defined]
    with pytest.raises(CoolifyConflict):
        await client.create_env(app, EnvVarSet(key="PORT", value="3001"))
    await client.delete_env(app, created)
    assert "PORT" not in {e.key for e in await client.list_envs(app) if not e.is_preview}
    with pytest.raises(ValidationError, match="key"):
        EnvVarSet(key="1BAD", value="x")
    with pytest.raises(ValidationError, match="data"):
        await client.update_envs(app, [])


async def test_env_flags_the_spec_omits_pass_the_clients_check(client: CoolifyClient, spec: CoolifySpec) -> None:
    """is_runtime/is_buildtime/comment are Coolify's (allow-list :3755) but not the spec's: validate_with lets
    exactly those through on the single-variable routes and still refuses any other unknown key."""
    flags = EnvVarSet(key="A", value="1", is_runtime=True, is_buildtime=False, comment="c").body()
    client._check_spec("POST", "/applications/abc/envs", None, flags, "Bearer x")
    with pytest.raises(Exception, match="is_build_time"):
        client._check_spec("POST", "/applications/abc/envs", None,
                           {"key": "A", "value": "1", "is_build_time": True}, "Bearer x")


# ---------------------------------------------------------------------------------------------------------
# Deploy and deployments
# ---------------------------------------------------------------------------------------------------------


async def test_deploy_progress_and_build_log(standin: CoolifyStandin, client: CoolifyClient, place: Place) -> None:
    app = (await client.create_public_application(place.public())).uuid
    standin.slow_builds(0.6, app_uuid=app)
    result = await client.deploy(app)
    seen = last(standin, "POST", "/deploy")
    assert seen.query == {"uuid": app, "force": "false"} and seen.body is None  # type: ignore[attr-defined]
    assert result.deployment_uuid and not result.skipped and result.resource_uuid == app

    again = await client.deploy(app)  # same commit while the first is in progress: Coolify skips it
    assert again.skipped and again.deployment_uuid is None  # not Coolify's phantom uuid (GET would 404)

    statuses: list[str] = []
    done = await wait_for_deployment(client, result.deployment_uuid, timeout=10,
                                     on_change=lambda p: statuses.append(p.status))
    assert done.status == "finished" and statuses[-1] == "finished" and "in_progress" in statuses
    assert done.commit == COMMIT
    lines = done.log_lines()
    assert lines and all(not line.hidden for line in lines) and len(done.log_lines(include_hidden=True)) >= len(lines)
    # in Coolify's order: the first entry (stored without `order`) first, the rollout's last line last
    outputs = [x.output for x in done.log_lines(include_hidden=True)]
    assert outputs[0] == standin.deployment(result.deployment_uuid).log_entries[0]["output"]
    assert outputs[-1] == "Rolling update completed."
    page = await client.list_deployments(app, take=5)
    assert page.count == 1 and [d.deployment_uuid for d in page.deployments] == [result.deployment_uuid]
    assert last(standin, "GET", f"/deployments/applications/{app}").query == {"skip": "0", "take": "5"}  # type: ignore[attr-defined]


async def test_failed_build_is_a_result_with_its_log(standin: CoolifyStandin, client: CoolifyClient,
                                                     place: Place) -> None:
    app = (await client.create_public_application(place.public())).uuid
    standin.fail_builds(app_uuid=app, line="npm ERR! missing script: build")
    result = await client.deploy(app, force=True)
    assert last(standin, "POST", "/deploy").query == {"uuid": app, "force": "true"}  # type: ignore[attr-defined]
    assert result.deployment_uuid
    done = await wait_for_deployment(client, result.deployment_uuid, timeout=10)
    assert done.status == "failed" and "npm ERR! missing script: build" in [x.output for x in done.log_lines()]


async def test_deploy_is_never_repeated_after_a_lost_answer(standin: CoolifyStandin, client: CoolifyClient,
                                                            place: Place) -> None:
    app = (await client.create_public_application(place.public())).uuid
    standin.drop_next("POST", r"/deploy", after=True)
    with pytest.raises(CoolifyUnavailable) as caught:
        await client.deploy(app)
    assert caught.value.retryable and standin.request_count(method="POST", path="/deploy") == 1
    page = await client.list_deployments(app)  # how the caller resumes: the one deployment Coolify queued
    assert page.count == 1


async def test_full_deployment_queue_is_progress_not_an_error(standin: CoolifyStandin, client: CoolifyClient,
                                                              place: Place) -> None:
    """A server with a queue of 1 and one build slot: the third deploy meets Coolify's 429 "queue is full"
    (Retry-After 60). The client raises it at once as a retryable CoolifyRateLimited(queue_full) for the caller
    to report and retry later; it neither waits a minute nor pauses the budget (other calls go on)."""
    await client.update_server(place.server, ServerUpdate(deployment_queue_limit=1, concurrent_builds=1))
    apps = [(await client.create_public_application(place.public(name=f"a{i}"))).uuid for i in range(3)]
    standin.slow_builds(5.0)
    first, second = await client.deploy(apps[0]), await client.deploy(apps[1])
    assert first.deployment_uuid and second.deployment_uuid
    started = asyncio.get_running_loop().time()
    with pytest.raises(CoolifyRateLimited) as caught:
        await client.deploy(apps[2])
    e = caught.value
    assert e.queue_full and e.retryable and e.retry_after == 60 and "queue is full" in str(e)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert standin.request_count(method="POST", path="/deploy") == 3
    assert (await client.get_application(apps[2])).uuid == apps[2]  # no pause: the next call goes at once
    await client.cancel_deployment(second.deployment_uuid)
    await client.cancel_deployment(first.deployment_uuid)


async def test_throttle_429_on_deploy_is_waited_out_and_sent_again(standin: CoolifyStandin, client: CoolifyClient,
                                                                    place: Place) -> None:
    """Laravel's throttle answers before the controller runs: nothing was queued, so /deploy is sent again after
    Retry-After (unlike the full queue, which comes from the controller)."""
    app = (await client.create_public_application(place.public())).uuid
    standin.throttle_next("POST", r"/deploy", retry_after=1)
    result = await client.deploy(app)
    assert result.deployment_uuid
    assert [r.status for r in standin.requests_of(method="POST", path="/deploy")] == [429, 200]
    assert len(standin.deployments_of(app)) == 1


# ---------------------------------------------------------------------------------------------------------
# Databases
# ---------------------------------------------------------------------------------------------------------


async def test_postgres_create_get_delete(standin: CoolifyStandin, client: CoolifyClient, place: Place,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="inkmcp.coolify")
    conf = "max_connections = 50\nshared_buffers = 64MB\n"
    created = await client.create_postgresql(PostgresCreate(
        project_uuid=place.project, server_uuid=place.server, environment_name="production",
        environment_uuid=place.environment, name="acct1-db", postgres_user="app", postgres_db="app",
        postgres_password="pw-Secret-42", postgres_conf=conf, limits_memory="256m", instant_deploy=True))
    sent = last(standin, "POST", "/databases/postgresql").body  # type: ignore[attr-defined]
    assert sent["postgres_conf"] == b64(conf) and sent["postgres_password"] == "pw-Secret-42"
    assert created.internal_db_url is not None
    assert created.internal_db_url.get_secret_value() == f"postgres://app:pw-Secret-42@{created.uuid}:5432/app"
    assert "pw-Secret-42" not in repr(created)
    db = await client.get_database(created.uuid)
    assert db.uuid == created.uuid and db.postgres_db == "app" and "pw-Secret-42" not in repr(db)
    assert await client.delete_database(created.uuid, delete_volumes=False)
    assert last(standin, "DELETE", f"/databases/{created.uuid}").query["delete_volumes"] == "false"  # type: ignore[attr-defined]
    logged = "".join(r.getMessage() + repr(r.args) + repr(r.__dict__) for r in caplog.records)
    assert "coolify POST /databases/postgresql -> 201" in logged and "pw-Secret-42" not in logged


# ---------------------------------------------------------------------------------------------------------
# The token
# ---------------------------------------------------------------------------------------------------------


async def test_the_token_never_reaches_a_log_a_repr_or_an_error(standin: CoolifyStandin, token: str,
                                                                 spec: CoolifySpec, place: Place,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Every kind of outcome at DEBUG (success, 404, 422, retried 503, lost answer, budget wait, 429) and every
    error's str/repr and its body: the token's secret part appears nowhere."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="inkmcp.coolify")
    secret = token.split("|", 1)[1]
    errors: list[BaseException] = []
    budget = LocalBudget(BudgetSettings(limit=10, window=1.0, margin=0.05))
    async with CoolifyClient(standin.url, token, validate_with=spec, retry=FAST, budget=budget) as c:
        assert secret not in repr(c) and secret not in str(vars(c).get("_token"))
        app = (await c.create_public_application(place.public())).uuid
        standin.fail_next("GET", rf"/applications/{app}", status=503)
        standin.throttle_next("GET", r"/projects", retry_after=1)
        await c.get_application(app)
        await c.list_projects()
        for call in (lambda: c.get_application("nope" * 6),
                     lambda: c.create_public_application(place.public(git_repository="ftp://bad")),
                     lambda: c.deploy("nope" * 6)):
            try:
                await call()
            except Exception as e:
                errors.append(e)
        standin.drop_next("POST", r"/deploy", after=True)
        try:
            await c.deploy(app)
        except CoolifyUnavailable as e:
            errors.append(e)
        for _ in range(15):  # past the budget: waits logged
            await c.get_application(app)
    assert len(errors) == 4
    logged = "".join(r.getMessage() + repr(r.args) + repr(r.__dict__) for r in caplog.records)
    text = logged + "".join(f"{e}{e!r}{getattr(e, 'body', '')}" for e in errors)
    assert "rate limited, retrying in 1.0 s" in logged
    assert "request budget spent, waiting" in logged
    assert "-> 503" in logged
    assert secret not in text and token not in text
