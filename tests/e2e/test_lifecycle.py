"""Restarts, stdio, the operator CLI, audit and encryption at rest, on a server of their own."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.e2e import apps
from tests.support import (
    INKMCP,
    ServerProc,
    call,
    free_port,
    git_repo,
    make_server,
    mcp_session,
    remove_tenant_users,
    running_server,
    traversable_tmpdir,
)

pytestmark = pytest.mark.asyncio


@pytest.fixture(scope="module")
def own_server() -> Iterator[ServerProc]:
    with running_server("inkmcp-life-", ("dana",)) as srv:
        yield srv


def get(server: ServerProc, url: str, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}{path}", headers={"Host": urlsplit(url).netloc},
                     timeout=30)


def store_query(server: ServerProc, sql: str) -> list[tuple]:
    """Read the control-plane store directly, as an attacker with a copy of the database would."""
    from inkmcp.store.embedded import EmbeddedPostgres

    pg = EmbeddedPostgres(server.data_dir / "pg" / "control")
    with psycopg.connect(pg.url(driver=None).get_secret_value()) as c:
        return c.execute(sql).fetchall()


async def test_restart_brings_services_back(own_server: ServerProc) -> None:
    repos = traversable_tmpdir("inkmcp-life-repos-")
    try:
        web = git_repo(repos / "keeper", apps.PY_WEB)
        site = git_repo(repos / "keeper-site", apps.STATIC_SITE)
        async with mcp_session(own_server, own_server.keys["dana"]) as s:
            dep = await call(s, "deploy_app", repo_url=str(web), database={"type": "postgres"},
                             env_vars={"GREETING": "persisted", "API_SECRET": "never-in-the-store"})
            while not dep["done"]:
                dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
            assert dep["status"] == "live", dep
            static = await call(s, "deploy_app", repo_url=str(site), service_type="webapp_static")
            while not static["done"]:
                static = await call(s, "wait_for_deployment", deployment_id=static["deployment_id"])
        assert get(own_server, dep["url"], "/db").json()["hits"] == 1

        # secrets are encrypted at rest; the audit log has the call but no value
        rows = store_query(own_server, "SELECT value_enc FROM env_vars")
        assert rows and all(b"never-in-the-store" not in bytes(r[0]) for r in rows)
        audit = store_query(own_server, "SELECT action, arguments::text, result FROM audit_log")
        assert any(a == "deploy_app" and r == "ok" for a, _, r in audit)
        assert all("never-in-the-store" not in args and "persisted" not in args for _, args, _ in audit)
        creds = store_query(own_server, "SELECT credentials_enc FROM databases")
        assert creds and b"password" not in bytes(creds[0][0])

        assert own_server.stop() == 0
        with pytest.raises(httpx.ConnectError):
            get(own_server, dep["url"])  # proxy and apps stopped with the server
        own_server.start()

        assert get(own_server, dep["url"], "/env").json()["GREETING"] == "persisted"
        assert get(own_server, dep["url"], "/db").json()["hits"] == 2  # same database, same data
        assert "hello static" in get(own_server, static["url"]).text
        server_log = own_server.log_path.read_text(errors="replace")
        assert "never-in-the-store" not in server_log and "persisted" not in server_log  # no secrets logged
        async with mcp_session(own_server, own_server.keys["dana"]) as s:
            services = (await call(s, "list_services", project_name="keeper"))["services"]
            assert services[0]["state"] == "running"
    finally:
        shutil.rmtree(repos, ignore_errors=True)


async def test_cli_lists_and_tails(own_server: ServerProc) -> None:
    out = own_server.cli("projects", "--account", "dana").stdout
    assert "keeper" in out
    out = own_server.cli("services", "keeper", "--account", "dana").stdout
    assert "web" in out and "live" in out
    logs = own_server.cli("logs", "keeper", "--account", "dana", "--tail", "20").stdout
    assert "booting with secret" in logs and "never-in-the-store" not in logs
    keys = own_server.cli("keys", "list").stdout
    assert "dk_live_" in keys and "dana" in keys
    deps = own_server.cli("deployments", "keeper", "--account", "dana").stdout
    assert "live" in deps and "web" in deps
    bad = own_server.cli("services", "nope", "--account", "dana", check=False)
    assert bad.returncode == 1 and "no project named 'nope'" in bad.stderr


async def test_invalid_configuration_is_reported_at_start(own_server: ServerProc) -> None:
    env = {**own_server.env, "INKMCP_PORT": "not-a-port"}
    r = await asyncio.to_thread(subprocess.run, [INKMCP, "serve"], env=env, capture_output=True, text=True,
                                timeout=60)
    assert r.returncode == 2 and "INKMCP_PORT" in r.stderr


async def test_second_server_on_same_data_dir_is_refused(own_server: ServerProc) -> None:
    env = {**own_server.env, "INKMCP_PORT": str(free_port()), "INKMCP_PROXY_PORT": str(free_port())}
    r = await asyncio.to_thread(
        subprocess.run, [INKMCP, "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "already serving" in r.stderr and "--data-dir" in r.stderr


async def test_stdio_transport() -> None:
    """A local client over stdio, on a data dir of its own: the operator's account, no key needed."""
    srv = make_server("inkmcp-stdio-")
    params = StdioServerParameters(command=INKMCP, args=["serve", "--stdio", "--account", "erin"], env=srv.env)
    try:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            created = await s.call_tool("ensure_project", {"name": "from-stdio"})
            assert not created.is_error and created.structured_content["created"] is True
            result = await s.call_tool("list_projects", {})
            assert [p["name"] for p in result.structured_content["projects"]] == ["from-stdio"]
    finally:
        remove_tenant_users(srv.data_dir)
        shutil.rmtree(srv.data_dir.parent, ignore_errors=True)


async def test_healthz_and_metrics_reflect_services(own_server: ServerProc) -> None:
    async with httpx.AsyncClient() as c:
        m = (await c.get(f"http://127.0.0.1:{own_server.port}/metrics")).text
    line = next(x for x in m.splitlines() if x.startswith("inkmcp_running_services"))
    assert float(line.split()[-1]) >= 2
    assert "# TYPE inkmcp_deploy_duration_seconds histogram" in m
    assert json.loads(httpx.get(f"http://127.0.0.1:{own_server.port}/healthz").text)["status"] == "ok"
    assert os.path.isdir(own_server.data_dir)


async def test_encryption_key_rotation(own_server: ServerProc) -> None:
    async with mcp_session(own_server, own_server.keys["dana"]) as s:
        await call(s, "ensure_project", name="rotating")
        await call(s, "update_env_vars", project_name="rotating", env_vars={"KEEP": "value-across-rotation"})
    before = store_query(own_server, "SELECT value_enc FROM env_vars")
    out = own_server.cli("rotate-encryption-key").stdout
    assert "re-encrypted" in out
    after = store_query(own_server, "SELECT value_enc FROM env_vars")
    assert before != after
    own_server.stop()
    own_server.start()
    own_server.cli("rotate-encryption-key", "--retire")
    own_server.stop()
    own_server.start()  # only the new key is left
    async with mcp_session(own_server, own_server.keys["dana"]) as s:
        env = await call(s, "list_env_vars", project_name="rotating", reveal=True)
        assert env["env"]["KEEP"] == "value-across-rotation"
        creds = await call(s, "get_database_credentials", project_name="keeper")
        assert creds["password"]


async def test_deployment_interrupted_by_restart_is_resumed(own_server: ServerProc) -> None:
    repos = traversable_tmpdir("inkmcp-resume-")
    try:
        repo = git_repo(repos / "resumable", apps.ON_DEMAND)
        async with mcp_session(own_server, own_server.keys["dana"]) as s:
            dep = await call(s, "deploy_app", repo_url=str(repo), start_command="python app.py",
                             build_command="sleep 12")
            assert dep["status"] == "building"
        assert own_server.stop() == 0  # graceful: the pipeline is cancelled, its record stays open
        own_server.start()
        async with mcp_session(own_server, own_server.keys["dana"]) as s:
            done = dep
            for _ in range(6):
                done = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
                if done["done"]:
                    break
            assert done["status"] == "live", done
            assert any("resumed after restart" in h for h in done["history"])
        assert get(own_server, done["url"]).status_code == 200
    finally:
        shutil.rmtree(repos, ignore_errors=True)


async def test_first_start_prints_a_key_and_the_claude_line() -> None:
    srv = make_server("inkmcp-first-")
    srv.start()
    try:
        log = srv.log()
        line = next(x.strip() for x in log.splitlines() if x.strip().startswith("claude mcp add"))
        assert line.startswith(f"claude mcp add --transport http mcpdeploy http://localhost:{srv.port}/mcp "
                               '--header "Authorization: Bearer dk_live_')
        key = line.split("Bearer ")[1].rstrip('"')
        async with mcp_session(srv, key) as s:
            assert (await call(s, "list_projects"))["total"] == 0
        assert srv.stop() == 0
        srv.start()  # not on the second start
        assert srv.log().count("claude mcp add") == 1
    finally:
        if srv.proc is not None:
            srv.stop()
        shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
