"""Findings 3 and 3b (hostname takeover across accounts) and held items 21 and 26.

#3: hostnames are `<service>.<project>.<domain>` while project names were unique per account only, so
mallory deployed her own project named `alice-shop` and alice's URL answered mallory's app, which
logged alice's users' cookies and passwords. #3b: mallory deleting her homonymous project took
alice's route down. Held: #26 every tool refuses another account's project by name; #21 the proxy
answers 404 to path traversal.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import (
    LAB_START,
    ROOT,
    host_of,
    lab_live,
    lab_repo,
    refused,
    session,
    via_proxy,
)
from tests.support import ServerProc, call, git_repo

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server

ALICE_TOKEN = "ALICE_SECRET_TOKEN_9f8e7d"
PROJECT = "alice-shop"


@pytest.fixture(scope="module")
async def alice_shop(server: ServerProc, repos: Path) -> dict[str, Any]:
    """alice's live shop: the web app (`alice says hi`) and a static site of the same project."""
    repo = lab_repo(repos, "alice-shop")
    static = git_repo(repos / "alice-site", {"index.html": "<h1>alice static</h1>\n"})
    async with session(server, "alice") as a:
        web = await lab_live(a, repo, "alice", project_name=PROJECT, env_vars={"SECRET_TOKEN": ALICE_TOKEN})
        site = await call(a, "deploy_app", repo_url=str(static), project_name=PROJECT, service_name="site",
                          service_type="webapp_static")
        while not site["done"]:
            site = await call(a, "wait_for_deployment", deployment_id=site["deployment_id"])
        assert site["status"] == "live", site
    return {"web": web, "site": site, "hijack": lab_repo(repos, "hijack")}


def answers_alice(server: ServerProc, shop: dict[str, Any]) -> str:
    r = via_proxy(server, shop["web"]["url"])
    return f"{r.status_code} {r.text}"


async def hijack_attempt(server: ServerProc, shop: dict[str, Any]) -> tuple[bool, str]:
    """The review's #3 as mallory's agent did it: deploy her app as project `alice-shop`, service `web`."""
    async with session(server, "mallory") as m:
        result = await m.call_tool("deploy_app", {
            "repo_url": str(shop["hijack"]), "project_name": PROJECT, "service_name": "web",
            "start_command": LAB_START, "mode": "persistent", "env_vars": {"LAB_OWNER": "mallory"}})
        text = " ".join(getattr(c, "text", "") for c in result.content)
        if not result.is_error and result.structured_content and not result.structured_content["done"]:
            await m.call_tool("wait_for_deployment", {"deployment_id": result.structured_content["deployment_id"]})
    return result.is_error, text


async def test_another_account_cannot_take_a_project_name(server: ServerProc, alice_shop: dict[str, Any]) -> None:
    """#3: mallory's deploy_app / ensure_project with alice's project name: "taken"; alice keeps her URL."""
    refused_deploy, text = await hijack_attempt(server, alice_shop)
    assert refused_deploy, f"mallory deployed into alice's hostname: {text[:500]}"
    assert "taken" in text, text
    async with session(server, "mallory") as m:
        text = await refused(m, "ensure_project", name=PROJECT)
        assert "taken" in text, text

    # alice's users keep talking to alice: a login sent to her URL reaches her app, not mallory's
    assert answers_alice(server, alice_shop) == "200 alice says hi"
    r = via_proxy(server, alice_shop["web"]["url"], "/login", "POST", content=b"password=hunter2",
                  headers={"Cookie": "session=ALICE_USER_SESSION"})
    assert r.text == "alice captured /login", r.text
    async with session(server, "mallory") as m:
        projects = (await call(m, "list_projects"))["projects"]
        assert PROJECT not in [p["name"] for p in projects]
        text = await refused(m, "get_logs", project_name=PROJECT, scope="runtime")
        assert "ALICE_USER_SESSION" not in text and "hunter2" not in text
    async with session(server, "alice") as a:
        logs = await call(a, "get_logs", project_name=PROJECT, service_name="web", scope="runtime", tail=50)
        assert any("ALICE_USER_SESSION" in line for line in logs["lines"]), logs["lines"]


async def test_deleting_a_homonymous_project_never_touches_another_accounts_route(
    server: ServerProc, alice_shop: dict[str, Any]
) -> None:
    """#3b: mallory repeats the takeover and then deletes "her" `alice-shop`: alice's URL still answers alice."""
    await hijack_attempt(server, alice_shop)
    async with session(server, "mallory") as m:
        result = await m.call_tool("delete", {"project_name": PROJECT, "confirm": PROJECT})
        assert result.is_error, "mallory deleted a project named like alice's"
        # and deleting a project that really is hers (deployed, routed) removes only her route
        own = await lab_live(m, alice_shop["hijack"], "mallory", project_name="mallory-shop")
        assert via_proxy(server, own["url"]).text == "mallory says hi"
        await call(m, "delete", project_name="mallory-shop", confirm="mallory-shop")
    assert via_proxy(server, own["url"]).status_code == 404
    assert answers_alice(server, alice_shop) == "200 alice says hi"
    assert via_proxy(server, alice_shop["site"]["url"]).status_code == 200
    async with session(server, "alice") as a:
        services = {s["name"]: s for s in (await call(a, "list_services", project_name=PROJECT))["services"]}
        assert services["web"]["state"] == "running" and services["web"]["url"] == alice_shop["web"]["url"]


async def test_tools_on_another_accounts_project_say_not_found(server: ServerProc, alice_shop: dict[str, Any]) -> None:
    """#26 (held): every tool mallory calls on `alice-shop` or alice's deployment id is refused, nothing leaks."""
    attempts: list[tuple[str, dict[str, Any]]] = [
        ("list_services", {"project_name": PROJECT}),
        ("get_logs", {"project_name": PROJECT, "scope": "runtime"}),
        ("get_logs", {"project_name": PROJECT, "scope": "build"}),
        ("list_env_vars", {"project_name": PROJECT, "reveal": True}),
        ("get_database_credentials", {"project_name": PROJECT}),
        ("update_env_vars", {"project_name": PROJECT, "env_vars": {"SECRET_TOKEN": "mallory-was-here"}}),
        ("provision_database", {"project_name": PROJECT}),
        ("delete", {"project_name": PROJECT, "confirm": "web", "service_name": "web"}),
        ("wait_for_deployment", {"deployment_id": alice_shop["web"]["deployment_id"], "timeout_seconds": 0}),
    ]
    async with session(server, "mallory") as m:
        for tool, args in attempts:
            text = await refused(m, tool, **args)
            assert ALICE_TOKEN not in text and "alice says" not in text, (tool, text)
            assert PROJECT in text or alice_shop["web"]["deployment_id"] in text, (tool, text)
    async with session(server, "alice") as a:
        env = await call(a, "list_env_vars", project_name=PROJECT, service_name="web", reveal=True)
        assert env["env"]["SECRET_TOKEN"] == ALICE_TOKEN
        assert "mallory-was-here" not in json.dumps(env)
    assert answers_alice(server, alice_shop) == "200 alice says hi"


def raw_get(port: int, host: str, path: str) -> tuple[int, bytes]:
    """A GET sent byte for byte (no client-side path normalisation, like curl --path-as-is)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1]), data


@pytest.mark.parametrize("path", ["/../../../../etc/passwd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                                  "/..%2f..%2f..%2f..%2fetc%2fpasswd", "/%252e%252e/%252e%252e/etc/passwd",
                                  "//etc/passwd", "/.%2e/.%2e/.%2e/etc/passwd"])
async def test_proxy_path_traversal_is_404(server: ServerProc, alice_shop: dict[str, Any], path: str) -> None:
    """#21 (held): traversal through the static site's proxy path never leaves the site's directory."""
    host = host_of(alice_shop["site"]["url"])
    status, index = raw_get(server.proxy_port, host, "/")
    assert status == 200 and b"alice static" in index
    status, data = raw_get(server.proxy_port, host, path)
    assert status in (400, 404), data[:300]
    assert b"root:x:0:0" not in data
