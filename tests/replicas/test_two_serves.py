"""Two whole `inkmcp serve` processes on one control plane (issue 8 item 7), as an operator runs them: the same
INKMCP_DATABASE_URL, INKMCP_TENANT_DATABASE_URL, INKMCP_ENCRYPTION_KEYS and Coolify settings, their own data dirs
and ports, agents talking MCP over HTTP to either. The other replica tests drive core in-process per replica
(tests/replicas/replica.py); these prove the real server's wiring (app.py, serve, the periodic scans) does it too.

Ground truth is read from the Coolify stand-in and the databases, never from a replica's answer alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.fernet import Fernet

from inkmcp.coolify.client import CoolifyClient
from inkmcp.coolify.standin import CoolifyStandin
from inkmcp.store.embedded import EmbeddedPostgres
from tests.contract.conftest import APP_FILES, PROCFILE
from tests.replicas.conftest import coolify_census
from tests.store import conftest as _store_fixtures
from tests.store.conftest import create_database
from tests.support import (
    ServerProc,
    call,
    dispose_server,
    git_repo,
    make_server,
    mcp_session,
    traversable_tmpdir,
)

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
tenant_pg = _store_fixtures.tenant_pg

LEASE = "2"


@pytest.fixture
def root() -> Iterator[Path]:
    d = traversable_tmpdir("inkmcp-two-serves-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def standin(root: Path) -> Iterator[CoolifyStandin]:
    with CoolifyStandin(root / "nodes", rate_limit=100_000, status_delay=0.05, delete_delay=0.1, stop_delay=0.05,
                        validation_delay=0.01) as s:
        s.add_servers(1, cpus=64, memory_mb=65536, wildcard_base="apps.test")
        s.add_server("10.77.0.200", name="builder", is_build_server=True, usable=True)
        s.add_private_key()
        yield s


@contextlib.contextmanager
def replicas(shared: dict[str, str]) -> Iterator[Callable[..., ServerProc]]:
    """`replica(name, **env)`: a serve sharing everything an operator shares between replicas (`shared`), with
    its own data dir and ports; every one made is stopped by its own PID and cleaned up at the end."""
    made: list[ServerProc] = []

    def replica(name: str, **env: str) -> ServerProc:
        made.append(make_server(f"inkmcp-serve-{name}-", INKMCP_REPLICA_ID=name, **{**shared, **env}))
        return made[-1]

    try:
        yield replica
    finally:
        for srv in made:
            dispose_server(srv)


@pytest.fixture
def control_url(control_pg: EmbeddedPostgres) -> str:
    """A fresh control-plane database per test (each replica migrates it, as `inkmcp serve` does)."""
    return create_database(control_pg, "serves")


async def test_a_replica_falling_back_to_its_own_embedded_tenant_server_refuses_to_start(control_url: str) -> None:
    """The split this prevents: replica B creating databases on its own embedded server that replica A (and the
    agents it serves) cannot reach. The first replica records its tenant server; the second, with another, exits
    non-zero naming the setting to fix; A keeps serving with databases on its server."""
    shared = {"INKMCP_DATABASE_URL": control_url, "INKMCP_ENCRYPTION_KEYS": Fernet.generate_key().decode()}
    with replicas(shared) as replica:
        a = replica("a")
        a.create_key("alice")
        a.start()
        b = replica("b")
        proc = await asyncio.create_subprocess_exec(b.inkmcp, "serve", env=b.env, cwd="/tmp",
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        text = out.decode(errors="replace")
        assert proc.returncode != 0, text
        assert "INKMCP_TENANT_DATABASE_URL" in text and "another tenant Postgres server" in text, text
        # A still serves, and its databases are where agents were told they are.
        async with mcp_session(a, a.keys["alice"]) as s:
            await call(s, "ensure_project", name="shop")
            assert (await call(s, "provision_database", project_name="shop"))["created"]
            creds = await call(s, "get_database_credentials", project_name="shop")
        with psycopg.connect(creds["url"], connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0].startswith("ink_")


async def _deployment_in_progress(standin_url: str, token: str, timeout: float = 60) -> None:
    """Until Coolify has a deployment in progress for an application (the test's project is the only one)."""
    deadline = time.monotonic() + timeout
    async with CoolifyClient(standin_url, token) as client:
        while time.monotonic() < deadline:
            for app in await client.list_applications():
                page = await client.list_deployments(app.uuid, take=10)
                if any(d.status == "in_progress" for d in page.deployments):
                    return
            await asyncio.sleep(0.1)
    raise AssertionError("no Coolify deployment went in progress")


async def test_two_serves_share_work_and_the_survivor_finishes_a_killed_replicas_deployment(
    root: Path, control_url: str, tenant_pg: EmbeddedPostgres, standin: CoolifyStandin
) -> None:
    """What one replica does, the other sees and can finish: a key made through A's CLI works on B; a database
    provisioned through A answers B with the same credentials (which really log in); a deployment started through
    A, which is then killed with SIGKILL mid-build, is finished by B (lease taken over), leaving exactly one
    Coolify application per process and one Coolify deployment each."""
    token = standin.add_token("root")
    repo = git_repo(root / "repo", {**APP_FILES, "Procfile": PROCFILE})
    tenant_url = tenant_pg.url(driver=None).get_secret_value()
    shared = {
        "INKMCP_DATABASE_URL": control_url, "INKMCP_TENANT_DATABASE_URL": tenant_url,
        "INKMCP_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
        "INKMCP_COOLIFY_URL": standin.url, "INKMCP_COOLIFY_TOKEN": token, "INKMCP_COOLIFY_DEV_LOCAL_REPOS": "1",
        "INKMCP_COOLIFY_POLL_INTERVAL": "0.2", "INKMCP_COOLIFY_POLL_MAX_INTERVAL": "0.5",
        "INKMCP_COOLIFY_RATE_LIMIT": "100000",
        "INKMCP_PLACEMENT_DEFAULT_NODE": '{"memory_mb": 65536, "cpus": 64}',
        "INKMCP_LEASE_SECONDS": LEASE, "INKMCP_HEARTBEAT_SECONDS": "0.5", "INKMCP_TAKEOVER_SCAN_SECONDS": "0.5",
        "INKMCP_DEPLOY_ANSWER_WITHIN": "1",
        "INKMCP_DATABASE_PROVIDER": "postgres",  # the shared tenant server is this test's subject
    }  # fmt: skip
    with replicas(shared) as replica:
        a, b = replica("a"), replica("b")
        key = a.create_key("alice")
        a.start()
        b.start()

        async with mcp_session(a, key) as sa:
            await call(sa, "ensure_project", name="shop")
            assert (await call(sa, "provision_database", project_name="shop"))["created"]
            made = await call(sa, "get_database_credentials", project_name="shop")
        async with mcp_session(b, key) as sb:
            assert [x["name"] for x in (await call(sb, "list_projects"))["projects"]] == ["shop"]
            seen = await call(sb, "get_database_credentials", project_name="shop")
        assert seen["url"] == made["url"]
        with psycopg.connect(seen["url"], connect_timeout=5) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0].startswith("ink_")

        standin.slow_builds(6.0)
        async with mcp_session(a, key) as sa:
            dep = await call(sa, "deploy_app", repo_url=str(repo), project_name="shop", service_name="web")
        assert not dep["done"], dep
        await _deployment_in_progress(standin.url, token)
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGKILL)  # by PID: the replica we started, mid-build
        a.proc.wait(10)
        a.proc = None
        standin.slow_builds(0.05)

        async with mcp_session(b, key) as sb:
            view = dep
            deadline = time.monotonic() + 120
            while not view["done"] and time.monotonic() < deadline:
                view = await call(sb, "wait_for_deployment", deployment_id=dep["deployment_id"],
                                  timeout_seconds=20)
            assert view["status"] == "live", view
            services = (await call(sb, "list_services", project_name="shop"))["services"]
            assert [s["name"] for s in services] == ["web"] and services[0]["url"], services
            # B owns it now: a redeploy of the same commit through B is a no-op, not a second build.
            again = await call(sb, "deploy_app", repo_url=str(repo), project_name="shop", service_name="web")
            assert again["reused"] and again["deployment_id"] == dep["deployment_id"], again
        census = await coolify_census(standin.url, token)
        assert census["apps"] == {"web": 1, "worker": 1}, census
        assert census["deployments"] == {"web": 1, "worker": 1}, census

        # The tenant server is the shared one for both (no per-replica fallback was made).
        assert not (a.data_dir / "pg" / "tenants").exists() and not (b.data_dir / "pg" / "tenants").exists()
        with psycopg.connect(tenant_url) as conn:
            assert conn.execute("SELECT count(*) FROM inkmcp_server_identity").fetchone()[0] == 1
