"""Tenant Postgres bypassed the tenant's limits (red team 2026-12-01), performed again against a real server.

The finding: backends run as `inkmcp-pg`, outside every tenant's service cgroup, so a free-tier role whose app had a
0.25-CPU quota ran two `generate_series` queries at 68% and 55% CPU; `work_mem` and temporary files were unbounded
and there was no statement timeout. The fix, attacked here from the tenant's side (a login from
`provision_database`'s credentials, on the embedded tenant server `inkmcp serve` started):

* per-role limits set by InkMCP as superuser: `temp_file_limit` (superuser-only: the tenant can neither SET it nor
  ALTER/RESET it on its own role, and a query spilling past it fails with Postgres's own error), default
  `statement_timeout` and `idle_in_transaction_session_timeout` (defaults only: a tenant may SET those);
* the tenant server's postmaster, and so every backend, in a cgroup of its own with a memory cap, a CPU quota and a
  lower CPU weight, so tenants' queries together cannot take the host.

The server here has its own small caps (INKMCP_TENANT_PG_*), which also shows those settings reach the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from pydantic import SecretStr

from inkmcp.providers.compute.local.limits import Cgroups
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.postgres import ROLE_SETTINGS, PostgresDatabaseProvider
from inkmcp.settings import TenantPostgresSettings
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.tenant_server import CGROUP_PARENT, tenant_server_cgroup
from tests.requirements import require
from tests.security.conftest import ROOT, security_server, session
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts its own server

ATTACKER = "mallory-pg"
VICTIM = "victor-pg"
TEMP_LIMIT_MB = 8
CPU_CAP = 0.5
MEMORY_CAP_MB = 512
ENV = {
    "INKMCP_TENANT_PG_TEMP_FILE_LIMIT_MB": f'{{"free": {TEMP_LIMIT_MB}}}',
    "INKMCP_TENANT_PG_STATEMENT_TIMEOUT_S": '{"free": 45}',
    "INKMCP_TENANT_PG_CPUS": str(CPU_CAP),
    "INKMCP_TENANT_PG_MEMORY_MB": str(MEMORY_CAP_MB),
}
SPILL = "SELECT count(*) FROM (SELECT g FROM generate_series(1, 3000000) g ORDER BY g DESC) s"
"""A sort of 3M rows with work_mem=64kB writes ~70 MB of temporary files: far past the 8 MB limit."""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    with security_server("inkmcp-sec-pglim-", (ATTACKER, VICTIM), INKMCP_MAX_DATABASES_PER_ACCOUNT="2", **ENV) as srv:
        pgdata = srv.data_dir / "pg" / "tenants"
        yield srv
    with contextlib.suppress(Exception):  # the server is stopped: its group is empty and can go
        Cgroups(CGROUP_PARENT).remove(tenant_server_cgroup(pgdata))


@pytest.fixture(scope="module")
async def creds(server: ServerProc) -> dict[str, Any]:
    async with session(server, ATTACKER) as m:
        await call(m, "ensure_project", name="pg-hog")
        await call(m, "provision_database", project_name="pg-hog")
        return dict(await call(m, "get_database_credentials", project_name="pg-hog"))


def connect(creds: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(host=creds["host"], port=creds["port"], user=creds["user"], password=creds["password"],
                           dbname=creds["database"], connect_timeout=5, autocommit=True)


def denied(conn: psycopg.Connection[Any], statement: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as e:
        conn.execute(statement)
    return e.value


async def test_tenant_cannot_lift_temp_file_limit(creds: dict[str, Any]) -> None:
    """Every way a role could lift a superuser-only limit on itself is refused, and RESET ALL keeps it."""
    with connect(creds) as c:
        assert c.execute("SHOW temp_file_limit").fetchone() == (f"{TEMP_LIMIT_MB}MB",)
        assert c.execute("SHOW statement_timeout").fetchone() == ("45s",)  # the configured default
        assert c.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("5min",)  # tier default
        db = creds["database"]
        for attempt in ("SET temp_file_limit = -1", "SET SESSION temp_file_limit = '100GB'",
                        "ALTER ROLE CURRENT_USER SET temp_file_limit = -1",
                        "ALTER ROLE CURRENT_USER RESET temp_file_limit",
                        f'ALTER ROLE CURRENT_USER IN DATABASE "{db}" SET temp_file_limit = -1',
                        f'ALTER DATABASE "{db}" SET temp_file_limit = -1',
                        "SELECT set_config('temp_file_limit', '-1', false)"):
            err = denied(c, attempt)
            assert err.sqlstate == "42501", (attempt, err)  # insufficient_privilege
            assert "permission denied to set parameter" in str(err), (attempt, err)
        c.execute("ALTER ROLE CURRENT_USER RESET ALL")  # allowed, but only resets what the role may set itself
    with connect(creds) as c:
        assert c.execute("SHOW temp_file_limit").fetchone() == (f"{TEMP_LIMIT_MB}MB",)


async def test_a_query_spilling_past_the_limit_is_refused(creds: dict[str, Any]) -> None:
    """The attack: tiny work_mem (which a tenant may set) so a big sort spills to disk; Postgres stops it."""
    with connect(creds) as c:
        c.execute("SET work_mem = '64kB'")
        err = denied(c, SPILL)
        assert err.sqlstate == "53400", err  # configuration_limit_exceeded
        assert f'temporary file size exceeds "temp_file_limit" ({TEMP_LIMIT_MB * 1024}kB)' in str(err), err
        assert c.execute("SELECT 1").fetchone() == (1,)  # the session itself goes on


@pytest.fixture(scope="module")
def cg() -> Cgroups:
    """The tenant server's cgroup parent as InkMCP sees it (version 1 or 2); the cgroup tests need it working."""
    cgroups = Cgroups(CGROUP_PARENT)
    require("root", cgroups.available, f"cgroups cannot be created on this host: {cgroups.reason}")
    return cgroups


def _group_dir(cg: Cgroups, controller: str, group: str) -> Path:
    return cg.root / CGROUP_PARENT / group if cg.version == 2 else cg.root / controller / CGROUP_PARENT / group


def _cgroup_of(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controller: path} ('' for the v2 unified line)."""
    found: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            found[c] = path
    return found


async def test_backends_run_in_the_capped_cgroup(server: ServerProc, creds: dict[str, Any], cg: Cgroups) -> None:
    """The tenant's own backend (pg_backend_pid, from the attacker's login) is in the tenant server's group,
    whose cpu and memory limits are the configured caps."""
    group = tenant_server_cgroup(server.data_dir / "pg" / "tenants")
    with connect(creds) as c:
        backend = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        where = _cgroup_of(backend)
        parent = psutil.Process(backend).ppid()  # while connected: the backend exits with its session
    expected = f"/{CGROUP_PARENT}/{group}"
    if cg.version == 2:
        assert where[""] == expected, where
        d = _group_dir(cg, "", group)
        quota, period = (d / "cpu.max").read_text().split()
        assert int(quota) / int(period) == CPU_CAP
        assert int((d / "memory.max").read_text()) == MEMORY_CAP_MB * 2**20
        assert int((d / "cpu.weight").read_text()) == 50
    else:  # cgroup v1: one hierarchy per controller
        assert where["memory"] == expected and where["cpu"] == expected and where["pids"] == expected, where
        cpu, mem = _group_dir(cg, "cpu", group), _group_dir(cg, "memory", group)
        quota = int((cpu / "cpu.cfs_quota_us").read_text()) / int((cpu / "cpu.cfs_period_us").read_text())
        assert quota == CPU_CAP
        assert int((mem / "memory.limit_in_bytes").read_text()) == MEMORY_CAP_MB * 2**20
        assert int((cpu / "cpu.shares").read_text()) == 512
    # the postmaster too, so every backend forked later is born inside
    postmaster = int((server.data_dir / "pg" / "tenants" / "postmaster.pid").read_text().split()[0])
    assert parent == postmaster
    assert _cgroup_of(postmaster) == where


async def test_two_cpu_hogs_share_the_cap(creds: dict[str, Any], cg: Cgroups) -> None:
    """The red team's attack again: two busy generate_series queries. Their backends together get at most the
    server's quota (0.5 CPU), not the 68% + 55% of one core each they got before."""
    conns = [connect(creds) for _ in range(2)]
    try:
        pids = [c.execute("SELECT pg_backend_pid()").fetchone()[0] for c in conns]
        for c in conns:
            c.execute("SET statement_timeout = '4s'")  # a tenant may set this one (it is only a default)
        procs = [psutil.Process(p) for p in pids]
        before = [sum(p.cpu_times()[:2]) for p in procs]
        errors: list[BaseException] = []

        def hog(c: psycopg.Connection[Any]) -> None:
            try:
                # in the select list (ProjectSet) it streams; in FROM it would fill a tuplestore, i.e. temp files
                c.execute("SELECT count(*) FROM (SELECT generate_series(1, 10000000000) AS g) s")
            except psycopg.errors.QueryCanceled:
                pass  # statement_timeout, as intended
            except BaseException as e:  # reported below
                errors.append(e)

        t0 = time.monotonic()
        threads = [threading.Thread(target=hog, args=(c,)) for c in conns]
        for t in threads:
            t.start()
        await asyncio.to_thread(lambda: [t.join(30) for t in threads])
        wall = time.monotonic() - t0
        used = sum(sum(p.cpu_times()[:2]) - b for p, b in zip(procs, before, strict=True))
    finally:
        for c in conns:
            c.close()
    print(f"two generate_series backends: {used:.2f} s CPU in {wall:.2f} s = {used / wall:.2f} cores (cap {CPU_CAP})")
    assert not errors, errors
    assert wall >= 3.5, wall  # both ran until their statement_timeout
    assert used > 0.1, used  # they did run
    assert used / wall <= CPU_CAP * 1.3, f"two backends used {used:.2f}s CPU in {wall:.2f}s (cap {CPU_CAP})"


async def test_existing_roles_get_the_limits_at_start(server: ServerProc, creds: dict[str, Any]) -> None:
    """A role made before these limits existed (no role settings) gets them from the start-up reconcile
    (`ensure_connection_limit`, which core runs for every managed role); a second run changes nothing."""
    pgdata = server.data_dir / "pg" / "tenants"
    port = int((server.data_dir / "pg" / "tenants.port").read_text())
    admin = EmbeddedPostgres(pgdata, port=port).socket_url(driver=None)
    role = creds["user"]
    with psycopg.connect(admin.get_secret_value(), autocommit=True) as su:
        su.execute(psycopg.sql.SQL("ALTER ROLE {} RESET ALL").format(psycopg.sql.Identifier(role)))
    with connect(creds) as c:
        assert c.execute("SHOW temp_file_limit").fetchone() == ("-1",)  # what an old role had
    limits = TenantPostgresSettings(temp_file_limit_mb={Tier.free: TEMP_LIMIT_MB}, statement_timeout_s={Tier.free: 45})
    provider = PostgresDatabaseProvider(SecretStr(admin.get_secret_value()), public_host="127.0.0.1",
                                        public_port=port, role_limits=limits)  # the server's INKMCP_TENANT_PG_*
    assert await provider.ensure_connection_limit(role, Tier.free) is True
    assert await provider.ensure_connection_limit(role, Tier.free) is False  # idempotent
    with connect(creds) as c:
        shown = {name: c.execute(psycopg.sql.SQL("SHOW {}").format(psycopg.sql.Identifier(name))).fetchone()[0]
                 for name in ROLE_SETTINGS}
    assert shown == {"temp_file_limit": f"{TEMP_LIMIT_MB}MB", "statement_timeout": "45s",
                     "idle_in_transaction_session_timeout": "5min"}
    # The tenant's own default for a setting it may change anyway is kept; the superuser-only one is not.
    with connect(creds) as c:
        c.execute("ALTER ROLE CURRENT_USER SET statement_timeout = 0")  # e.g. for a long migration
    with psycopg.connect(admin.get_secret_value(), autocommit=True) as su:  # a limit from an older configuration
        su.execute(psycopg.sql.SQL("ALTER ROLE {} SET temp_file_limit = '64GB'").format(psycopg.sql.Identifier(role)))
    assert await provider.ensure_connection_limit(role, Tier.free) is True
    with connect(creds) as c:
        assert c.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert c.execute("SHOW temp_file_limit").fetchone() == (f"{TEMP_LIMIT_MB}MB",)


def _oom_kills(cg: Cgroups, group: str) -> int:
    """The group's OOM-kill counter (memory.events on v2, memory.oom_control on v1)."""
    path = _group_dir(cg, "memory", group) / ("memory.events" if cg.version == 2 else "memory.oom_control")
    counters = dict(line.split() for line in path.read_text().splitlines())
    return int(counters["oom_kill"])


async def test_a_memory_hog_fails_alone(server: ServerProc, creds: dict[str, Any], cg: Cgroups) -> None:
    """The finding's memory attack: work_mem is the tenant's to SET, so it sets 4 GB and grows one backend with a
    huge hash aggregate (and two other ways to allocate: a 400 MB string, a 100M-element array). Before
    store/tenant_memory.py the backend grew to the group's cap (512 MiB for the whole server) and the kernel killed
    it; Postgres then ended every session on the server, every tenant's, for crash recovery. Now each backend runs
    under an address-space limit: the query fails with Postgres's own `out of memory` in the attacker's session,
    which goes on, nothing is OOM-killed, and another tenant's session opened before is untouched."""
    group = tenant_server_cgroup(server.data_dir / "pg" / "tenants")
    before = _oom_kills(cg, group)
    async with session(server, VICTIM) as v:
        await call(v, "ensure_project", name="pg-victim")
        await call(v, "provision_database", project_name="pg-victim")
        victim_creds = dict(await call(v, "get_database_credentials", project_name="pg-victim"))
    with connect(victim_creds) as victim, connect(creds) as c:
        victim.execute("CREATE TEMP TABLE mine AS SELECT 42 AS x")  # gone if its session is ended
        victim_pid = victim.execute("SELECT pg_backend_pid()").fetchone()[0]
        backend = c.execute("SELECT pg_backend_pid()").fetchone()[0]
        limit = next(line.split()[3] for line in Path(f"/proc/{backend}/limits").read_text().splitlines()
                     if line.startswith("Max address space"))
        assert limit != "unlimited", "the tenant's backend runs without an address-space limit"
        c.execute("SET work_mem = '4GB'")  # allowed: only a default
        c.execute("SET statement_timeout = '60s'")
        for hog in ("SELECT count(*) FROM (SELECT g, count(*) FROM generate_series(1, 40000000) g GROUP BY g) s",
                    "SELECT length(repeat('x', 400000000))",
                    "SELECT count(*) FROM (SELECT array_agg(g) FROM generate_series(1, 100000000) g) s"):
            err = denied(c, hog)
            assert err.sqlstate == "53200", (hog, err)  # out_of_memory, in the attacker's own session
            assert c.execute("SELECT pg_backend_pid()").fetchone() == (backend,)  # the same session goes on
        assert victim.execute("SELECT x FROM mine").fetchone() == (42,)  # the other tenant's session survived
        assert victim.execute("SELECT pg_backend_pid()").fetchone() == (victim_pid,)
    assert _oom_kills(cg, group) == before, "a backend was OOM-killed (every session on the server restarted)"
