"""Restarts, stdio, the operator CLI, audit and encryption at rest, on servers of their own.

Every test here passes alone (`pytest tests/e2e/test_lifecycle.py::<name>`) and in any order:
- `keeper` deploys what the CLI, metrics, restart and encryption tests look at (a web service with a
  database and secrets, and a static site), once per module, on the module's `own_server`;
- `srv` hands out that server and starts it again when an earlier test left it stopped, so a restart
  that failed half-way fails one test, not every test after it;
- key rotation, which restarts twice and rewrites the key file, runs on a server of its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx
import pytest
from cryptography.fernet import Fernet
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.e2e import apps
from tests.e2e.probes import Gate, decrypts_with, encryption_keys, metric_value, store_query
from tests.support import (
    INKMCP,
    ServerProc,
    call,
    dispose_server,
    free_port,
    git_repo,
    make_server,
    mcp_session,
    remove_tenant_users,
    running_server,
    traversable_tmpdir,
)

pytestmark = pytest.mark.asyncio

SECRET, GREETING = "never-in-the-store", "persisted"


@pytest.fixture(scope="module")
def own_server() -> Iterator[ServerProc]:
    # A short answer window: the resume test's deploy_app answers "building" after 3 s, not 10.
    with running_server("inkmcp-life-", ("dana",), INKMCP_DEPLOY_ANSWER_WITHIN="3") as srv:
        yield srv


def ensure_running(server: ServerProc) -> ServerProc:
    if server.proc is None:  # an earlier test stopped it and failed before starting it again
        server.start()
    return server


@pytest.fixture
def srv(own_server: ServerProc) -> ServerProc:
    """The module's server, guaranteed to be running when the test starts."""
    return ensure_running(own_server)


@dataclass(frozen=True)
class Keeper:
    """Account dana's live services: `keeper/web` (Python, Postgres, secrets) and `keeper-site/web` (static)."""

    web: dict
    site: dict


async def deploy_live(s: ClientSession, timeout: float = 300, **args: object) -> dict:
    dep = await call(s, "deploy_app", **args)
    deadline = time.monotonic() + timeout
    while not dep["done"] and time.monotonic() < deadline:
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
    assert dep["status"] == "live", dep
    return dep


@pytest.fixture(scope="module")
async def keeper(own_server: ServerProc) -> AsyncIterator[Keeper]:
    ensure_running(own_server)
    repos = traversable_tmpdir("inkmcp-life-repos-")
    try:
        web = git_repo(repos / "keeper", apps.PY_WEB)
        site = git_repo(repos / "keeper-site", apps.STATIC_SITE)
        async with mcp_session(own_server, own_server.keys["dana"]) as s:
            web_dep = await deploy_live(s, repo_url=str(web), database={"type": "postgres"},
                                        env_vars={"GREETING": GREETING, "API_SECRET": SECRET})
            site_dep = await deploy_live(s, repo_url=str(site), service_type="webapp_static")
        yield Keeper(web=web_dep, site=site_dep)
    finally:
        shutil.rmtree(repos, ignore_errors=True)


def get(server: ServerProc, url: str, path: str = "/") -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}{path}", headers={"Host": urlsplit(url).netloc},
                     timeout=30)


async def test_restart_brings_services_back(srv: ServerProc, keeper: Keeper) -> None:
    hits = get(srv, keeper.web["url"], "/db").json()["hits"]
    assert srv.stop() == 0
    with pytest.raises(httpx.ConnectError):
        get(srv, keeper.web["url"])  # proxy and apps stopped with the server
    srv.start()

    assert get(srv, keeper.web["url"], "/env").json()["GREETING"] == GREETING
    assert get(srv, keeper.web["url"], "/db").json()["hits"] == hits + 1  # same database, same data
    assert "hello static" in get(srv, keeper.site["url"]).text
    server_log = srv.log_path.read_text(errors="replace") if srv.log_path else ""
    assert SECRET not in server_log and GREETING not in server_log  # no secrets logged
    async with mcp_session(srv, srv.keys["dana"]) as s:
        for project in ("keeper", "keeper-site"):
            services = (await call(s, "list_services", project_name=project))["services"]
            assert [x["state"] for x in services] == ["running"], (project, services)


async def test_secrets_are_encrypted_at_rest_and_kept_out_of_the_audit_log(srv: ServerProc, keeper: Keeper) -> None:
    """Not "the plaintext is absent" (base64 would pass that) but "a Fernet token of the server's key"."""
    key = encryption_keys(srv)[0]
    stranger = Fernet.generate_key()
    values = [bytes(r[0]) for r in store_query(srv, "SELECT value_enc FROM env_vars")]
    plain = {decrypts_with(key, v) for v in values}
    assert {SECRET.encode(), GREETING.encode()} <= plain
    assert all(SECRET.encode() not in v and decrypts_with(stranger, v) is None for v in values)

    async with mcp_session(srv, srv.keys["dana"]) as s:
        creds = await call(s, "get_database_credentials", project_name="keeper")
    (stored,) = [bytes(r[0]) for r in store_query(
        srv, "SELECT d.credentials_enc FROM databases d JOIN projects p ON p.id = d.project_id WHERE p.name = %s",
        ("keeper",))]
    assert creds["password"].encode() not in stored
    decrypted = decrypts_with(key, stored)
    assert decrypted is not None and json.loads(decrypted)["password"] == creds["password"]

    audit = store_query(srv, "SELECT action, arguments::text, result FROM audit_log")
    assert any(a == "deploy_app" and r == "ok" for a, _, r in audit), audit
    assert all(SECRET not in args and GREETING not in args for _, args, _ in audit)


async def test_cli_lists_and_tails(srv: ServerProc, keeper: Keeper) -> None:
    out = srv.cli("projects", "--account", "dana").stdout
    assert "keeper" in out
    out = srv.cli("services", "keeper", "--account", "dana").stdout
    assert "web" in out and "live" in out
    logs = srv.cli("logs", "keeper", "--account", "dana", "--tail", "20").stdout
    assert "booting with secret" in logs and SECRET not in logs
    keys = srv.cli("keys", "list").stdout
    assert "dk_live_" in keys and "dana" in keys
    deps = srv.cli("deployments", "keeper", "--account", "dana").stdout
    assert keeper.web["deployment_id"].split("-")[0] in deps and "live" in deps  # the table wraps long ids
    bad = srv.cli("services", "nope", "--account", "dana", check=False)
    assert bad.returncode == 1 and "no project named 'nope'" in bad.stderr


async def test_invalid_configuration_is_reported_at_start(srv: ServerProc) -> None:
    env = {**srv.env, "INKMCP_PORT": "not-a-port"}
    r = await asyncio.to_thread(subprocess.run, [INKMCP, "serve"], env=env, capture_output=True, text=True,
                                timeout=60)
    assert r.returncode == 2 and "INKMCP_PORT" in r.stderr


async def test_second_server_on_same_data_dir_is_refused(srv: ServerProc) -> None:
    env = {**srv.env, "INKMCP_PORT": str(free_port()), "INKMCP_PROXY_PORT": str(free_port())}
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


async def test_healthz_and_metrics_reflect_services(srv: ServerProc, keeper: Keeper) -> None:
    async with httpx.AsyncClient() as c:
        m = (await c.get(f"http://127.0.0.1:{srv.port}/metrics")).text
        health = (await c.get(f"http://127.0.0.1:{srv.port}/healthz")).json()
    assert metric_value(srv, "inkmcp_running_services") >= 2  # keeper's web and site
    assert "# TYPE inkmcp_deploy_duration_seconds histogram" in m
    assert health["status"] == "ok"


async def test_encryption_key_rotation() -> None:
    """Rotate, restart, retire, restart: every secret is re-encrypted under the new key and still readable.

    Its server is also the harness's port check (mender7: it was a test of its own that started one more fresh
    server for it): tests.support's free_port can lose its port to any outgoing connection before serve binds it
    (CI run 31), and the harness must start the same server on a fresh port, not fail the test that wanted one."""
    with socket.socket() as squatter, socket.socket() as proxy_squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        proxy_squatter.bind(("127.0.0.1", 0))  # the proxy's port too (CI run 44): each taken port is retried
        proxy_squatter.listen()
        proxy_taken = proxy_squatter.getsockname()[1]
        srv = make_server("inkmcp-rot-", INKMCP_PORT=str(taken), INKMCP_PROXY_PORT=str(proxy_taken))
        srv.port, srv.proxy_port = taken, proxy_taken
        srv.create_key("rita")
        try:
            await asyncio.to_thread(srv.start)
        except BaseException:
            dispose_server(srv, clean_stop=False)
            raise
    try:
        assert srv.port != taken and srv.env["INKMCP_PORT"] == str(srv.port)
        assert srv.proxy_port != proxy_taken and srv.env["INKMCP_PROXY_PORT"] == str(srv.proxy_port)
        assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=5).json()["status"] == "ok"
        assert srv.log_path is not None
        said = srv.log_path.read_text()
        assert "address already in use" in said.lower()  # the first attempt really hit it
        assert f"the proxy cannot listen on 127.0.0.1:{proxy_taken}" in said  # and one attempt hit the proxy's

        async with mcp_session(srv, srv.keys["rita"]) as s:
            await call(s, "ensure_project", name="rotating")
            await call(s, "update_env_vars", project_name="rotating", env_vars={"KEEP": "value-across-rotation"})
            await call(s, "provision_database", project_name="rotating")
            password = (await call(s, "get_database_credentials", project_name="rotating"))["password"]
        (old,) = encryption_keys(srv)

        def tokens() -> list[bytes]:
            return [bytes(r[0]) for r in store_query(srv, "SELECT value_enc FROM env_vars UNION ALL "
                                                          "SELECT credentials_enc FROM databases")]

        assert len(tokens()) == 2 and all(decrypts_with(old, t) for t in tokens())
        out = srv.cli("rotate-encryption-key").stdout
        assert "re-encrypted" in out, out
        new, kept = encryption_keys(srv)
        assert kept == old and new != old
        # re-encrypted: the new key alone reads every value, the old key alone reads none
        assert all(decrypts_with(new, t) and decrypts_with(old, t) is None for t in tokens())

        assert srv.stop() == 0
        srv.start()
        srv.cli("rotate-encryption-key", "--retire")
        assert encryption_keys(srv) == [new]
        assert srv.stop() == 0
        srv.start()  # only the new key is left
        async with mcp_session(srv, srv.keys["rita"]) as s:
            env = await call(s, "list_env_vars", project_name="rotating", reveal=True)
            assert env["env"]["KEEP"] == "value-across-rotation"
            creds = await call(s, "get_database_credentials", project_name="rotating")
            assert creds["password"] == password
    finally:
        dispose_server(srv)


async def test_deployment_interrupted_by_restart_is_resumed(srv: ServerProc) -> None:
    """A build still running at shutdown is resumed at start. The build waits on a gate this test opens,
    so it is certainly still running when deploy_app answers and when the server stops."""
    repos = traversable_tmpdir("inkmcp-resume-")
    gate = Gate(srv.data_dir)
    try:
        repo = git_repo(repos / "resumable", apps.ON_DEMAND)
        async with mcp_session(srv, srv.keys["dana"]) as s:
            dep = await call(s, "deploy_app", repo_url=str(repo), start_command="python app.py",
                             build_command=gate.build_command())
        assert dep["status"] == "building" and dep["done"] is False, dep
        gate.wait_closed()
        assert srv.stop() == 0  # graceful: the pipeline is cancelled, its record stays open
        srv.start()
        with gate.kept_open():
            async with mcp_session(srv, srv.keys["dana"]) as s:
                done = dep
                deadline = time.monotonic() + 300
                while not done["done"] and time.monotonic() < deadline:
                    done = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert done["status"] == "live", done
        assert any("resumed after restart" in h for h in done["history"]), done["history"]
        assert gate.opened, "the resumed build never reached the gate"
        assert get(srv, done["url"]).status_code == 200
    finally:
        gate.open_once()
        shutil.rmtree(repos, ignore_errors=True)
