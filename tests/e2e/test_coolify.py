"""Coolify-only end-to-end checks (issue 8, "How we will know"): an agent cannot tell the providers apart, and
nothing a tenant controls reaches Coolify as a field of its own.

Both run a real `inkmcp serve` on Coolify (the stand-in, its runner really running what is deployed); the
parity test makes the same calls on the session's local-provider server too (a new account on each).
"""

from __future__ import annotations

import base64
import binascii
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import apps
from tests.support import ServerProc, call, call_error, git_repo, mcp_session, traversable_tmpdir

pytestmark = [pytest.mark.asyncio, pytest.mark.parametrize("server", ["coolify"], indirect=True)]


@pytest.fixture
def repos() -> Iterator[Path]:
    d = traversable_tmpdir("inkmcp-coolify-only-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def deploy_done(s: Any, **args: Any) -> dict[str, Any]:
    dep = await call(s, "deploy_app", **args)
    for _ in range(20):
        if dep["done"]:
            break
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    return dep


ACCOUNT = f"parity-{uuid.uuid4().hex[:8]}"


def shape(value: Any) -> Any:
    """The structure of a result: keys and JSON types, not values (urls, ids and times differ by nature)."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return sorted({repr(shape(v)) for v in value})
    return type(value).__name__


async def transcript(srv: ServerProc, repo: Path, empty: Path) -> dict[str, Any]:
    """The same calls, in the same order, by a new account (the shared server has other accounts' projects), as
    an agent would make them: results and error texts."""
    out: dict[str, Any] = {}
    async with mcp_session(srv, srv.create_key(ACCOUNT)) as s:
        out["tools"] = [t.model_dump(mode="json") for t in (await s.list_tools()).tools]
        out["errors"] = {
            "unknown argument": await call_error(s, "deploy_app", repo_url=str(repo),
                                                 custom_docker_run_options="-v /:/h"),
            "bad mode": await call_error(s, "deploy_app", repo_url=str(repo), mode="sometimes"),
            "no start command": await call_error(s, "deploy_app", repo_url=str(empty)),
            "bad service name": await call_error(s, "deploy_app", repo_url=str(repo), service_name="Bad_Name"),
            "too little memory": await call_error(s, "deploy_app", repo_url=str(repo), resources={"memory_mb": 10}),
            "no project": await call_error(s, "list_services", project_name="nope"),
            "reserved env": await call_error(s, "update_env_vars", project_name="nope", env_vars={"PORT": "1"}),
        }
        out["ensure_project"] = await call(s, "ensure_project", name="parity-site")
        dep = await deploy_done(s, repo_url=str(repo), project_name="parity-site", service_type="webapp_static")
        out["deploy_app"] = dep
        out["again"] = await call(s, "deploy_app", repo_url=str(repo), project_name="parity-site",
                                  service_type="webapp_static")
        out["wait_for_deployment"] = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        out["list_projects"] = await call(s, "list_projects")
        out["list_services"] = await call(s, "list_services", project_name="parity-site")
        out["get_logs"] = await call(s, "get_logs", project_name="parity-site", scope="build", tail=5)
        out["list_env_vars"] = await call(s, "list_env_vars", project_name="parity-site")
        out["delete refused"] = await call_error(s, "delete", project_name="parity-site", confirm="other")
        out["delete"] = await call(s, "delete", project_name="parity-site", confirm="parity-site")
    return out


async def test_agents_cannot_tell_the_providers_apart(server: ServerProc, local_server: ServerProc,
                                                      repos: Path) -> None:
    """Same tool list (names, schemas, annotations, descriptions), same error texts, same result structure and
    the same values where they are not provider facts (URL host, ids, times, log text).

    `server` is the session's Coolify server, `local_server` the session's local one (tests/e2e/conftest.py: the
    same settings; suitetime: this test started a local server of its own, ~20 s of CI time)."""
    repo = git_repo(repos / "site", apps.STATIC_SITE)
    empty = git_repo(repos / "empty", {"README.md": "docs only\n"})
    coolify = await transcript(server, repo, empty)
    local = await transcript(local_server, repo, empty)

    assert coolify["tools"] == local["tools"]
    assert coolify["errors"] == local["errors"]
    for name in ("ensure_project", "deploy_app", "again", "wait_for_deployment", "list_projects", "list_services",
                 "get_logs", "list_env_vars", "delete"):
        assert shape(coolify[name]) == shape(local[name]), name
    assert coolify["delete refused"] == local["delete refused"]
    for key in ("status", "done", "project", "service", "reused", "next_step"):
        assert coolify["deploy_app"][key] == local["deploy_app"][key], key
    assert coolify["deploy_app"]["status"] == "live"
    assert coolify["again"]["reused"] is True and coolify["again"]["deployment_id"] == coolify["deploy_app"][
        "deployment_id"]
    for c, lo in zip(coolify["list_services"]["services"], local["list_services"]["services"], strict=True):
        assert {k: c[k] for k in ("name", "type", "mode", "state", "health")} == \
            {k: lo[k] for k in ("name", "type", "mode", "state", "health")}
    assert coolify["delete"] == local["delete"]


HOSTILE = "--privileged -v /:/host --name pwned --label traefik.http.routers.evil.rule=Host(`evil.test`)"
FORBIDDEN_FIELDS = {
    # run options, container names, storages and compose (review infra-2026-11-30 finding 6)
    "custom_docker_run_options", "custom_network_aliases", "custom_internal_name",
    "docker_compose", "docker_compose_raw", "docker_compose_custom_start_command", "docker_compose_domains",
    "post_deployment_command", "post_deployment_command_container", "pre_deployment_command_container",
    "custom_nginx_configuration", "dockerfile", "docker_registry_image_name", "redirect", "watch_paths",
    "connect_to_docker_network", "mount_path", "host_path", "fs_path", "volumes",
}
TENANT_FIELDS = {"value", "build_command", "start_command"}
"""Where a tenant's text legitimately goes: env values (envs/bulk `data[].value`) and its own commands."""
OUR_LABELS = {"inkmcp.managed", "inkmcp.project", "inkmcp.service", "inkmcp.process", "sablier.enable",
              "sablier.group"}


def walk(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield from walk(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk(v, (*path, i))
    else:
        yield path, value


def label_lines(text: str) -> list[str]:
    try:
        text = base64.b64decode(text, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        pass
    return [line for line in text.splitlines() if line.strip()]


async def test_no_tenant_controlled_field_reaches_coolify(server: ServerProc, repos: Path) -> None:
    """Deploy with hostile inputs, then read every request the stand-in received: Coolify's own fields for run
    options, container names, storages and labels never carry the tenant's text."""
    standin = server.standin  # type: ignore[attr-defined]
    repo = git_repo(repos / "hostile", apps.ON_DEMAND)
    first = len(standin.requests)
    async with mcp_session(server, server.keys["alice"]) as s:
        for arg in ("custom_docker_run_options", "custom_labels", "volumes", "container_name", "docker_compose_raw"):
            msg = await call_error(s, "deploy_app", repo_url=str(repo), start_command="python app.py",
                                   **{arg: HOSTILE})
            assert arg in msg and "not accepted" in msg, msg
        assert len(standin.requests) == first  # refused before anything reached Coolify
        for mode in ("on_demand", "persistent"):
            dep = await deploy_done(
                s, repo_url=str(repo), service_name=f"h-{mode.replace('_', '-')}", mode=mode,
                start_command="python app.py", build_command=f"echo '{HOSTILE}'",
                env_vars={"DOCKER_OPTS": HOSTILE, "LABELS": "traefik.enable=true\nsablier.group=victim",
                          "CONTAINER_NAME": "coolify-proxy"})
            assert dep["status"] == "live", dep
    sent = standin.requests[first:]
    assert any(r.path.endswith("/envs/bulk") for r in sent) and any(r.method == "PATCH" for r in sent)
    assert not [r.path for r in sent if re.search(r"/storages|/docker-?compose|/dockerimage|/dockerfile", r.path)]
    labels_seen = tenant_text = 0
    for r in sent:
        for path, value in walk(r.body):
            keys = {p for p in path if isinstance(p, str)}
            assert not keys & FORBIDDEN_FIELDS, (r.method, r.path, path)
            if "is_consistent_container_name_enabled" in keys:  # on_demand's router address: the app's own uuid
                assert value is True, (r.method, r.path, value)
            if not isinstance(value, str):
                continue
            if "pwned" in value or "traefik.enable" in value or "coolify-proxy" in value:
                assert path and path[-1] in TENANT_FIELDS, (r.method, r.path, path, value)
                tenant_text += 1
            if path and path[-1] == "custom_labels":
                labels_seen += 1
                names = {line.split("=", 1)[0] for line in label_lines(value)}
                assert names <= OUR_LABELS, names
    assert tenant_text >= 6  # the hostile text was sent (env values, build command), so the scan saw it
    assert labels_seen >= 1  # the on_demand service was labelled, with InkMCP's set only
    # from the run side: the tenant's text reached its process as an env value, nothing more
    assert any(HOSTILE in p.env.get("DOCKER_OPTS", "") for p in server.runner.live.values())  # type: ignore[attr-defined]
