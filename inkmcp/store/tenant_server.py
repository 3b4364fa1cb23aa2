"""One tenant Postgres server per control plane: replicas must not each fall back to their own.

With one machine, tenant databases live on the embedded server in the data dir. With several replicas sharing
INKMCP_DATABASE_URL, a replica that falls back to its *own* embedded server would create databases the other
replicas cannot reach, and hand agents credentials that work on one replica only: a split that is silent until a
request lands on the wrong replica. So the tenant server carries an identity (a random id in a one-row table on
the admin connection's database), the control-plane database records the first one it saw (`shared_keys`,
sealed by the encryption keys), and a replica whose tenant server has another identity refuses to start, naming
the setting that fixes it.

The identity lives *in* the tenant server, not in a host name or a data-dir path, so a restored copy of the same
server (backups, a moved disk, a new IP) is still recognised, and a wiped one is not (its databases are gone).

Relaxed only where no split can happen: when our own server is not the default provider (Neon or Coolify-managed
Postgres is) and the control plane records no database on it, a mismatch is logged, not refused.

The embedded tenant server also runs in a cgroup of its own (`confine_tenant_server`): its backends run as
`inkmcp-pg`, outside every tenant's service cgroup, so without one a free-tier role's queries took the host's CPU
while the app that sent them had a 0.25-CPU quota (red team 2026-12-01). The group caps all backends together
(memory.max, cpu.max, a lower CPU weight, pids.max); per-role limits are in providers/database/postgres.py.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import psycopg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.errors import InkError
from inkmcp.store.crypto import SecretBox, shared_value

if TYPE_CHECKING:
    from inkmcp.providers.compute.local.limits import Cgroups

log = logging.getLogger(__name__)

TENANT_SERVER_ROW = "tenant_server"
MARKER_TABLE = "inkmcp_server_identity"


async def tenant_server_identity(admin_url: str) -> str:
    """The server's identity, created on first use (two replicas creating it at once agree on one row).
    `admin_url` is a libpq URL (`postgresql://`, as `providers.database.postgres.libpq_url` makes one)."""
    try:
        async with await psycopg.AsyncConnection.connect(admin_url, autocommit=True,
                                                         connect_timeout=10) as conn:
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {MARKER_TABLE} "
                               "(one boolean PRIMARY KEY DEFAULT true CHECK (one), id text NOT NULL)")
            await conn.execute(f"INSERT INTO {MARKER_TABLE} (id) VALUES (%s) ON CONFLICT DO NOTHING",
                               (secrets.token_hex(16),))
            row = await (await conn.execute(f"SELECT id FROM {MARKER_TABLE}")).fetchone()
    except psycopg.Error as e:
        raise InkError(
            f"cannot read or record the tenant Postgres server's identity ({type(e).__name__}: "
            f"{str(e).strip().splitlines()[0] if str(e).strip() else 'no detail'})",
            argument="INKMCP_TENANT_DATABASE_URL",
            fix="point INKMCP_TENANT_DATABASE_URL at a reachable server with a role that may create a table in its "
            f"database (InkMCP keeps a one-row {MARKER_TABLE} table there), or unset it for the embedded server",
        ) from None
    assert row is not None
    return str(row[0])


async def _databases_on_own_server(sessions: async_sessionmaker[AsyncSession]) -> int:
    from inkmcp.store.models import Database

    async with sessions() as s:
        return int((await s.execute(select(func.count()).select_from(Database)
                                    .where(Database.provider == "postgres"))).scalar() or 0)


async def check_tenant_server(
    sessions: async_sessionmaker[AsyncSession], box: SecretBox, admin_url: str, *, embedded: bool,
    own_is_default: bool,
) -> str:
    """Record this control plane's tenant server, or refuse a replica whose tenant server is another one."""
    ours = await tenant_server_identity(admin_url)
    recorded = (await shared_value(sessions, box, TENANT_SERVER_ROW, ours.encode, "tenant-server record")).decode()
    if recorded == ours:
        return ours
    held = await _databases_on_own_server(sessions)
    where = "its own embedded server in INKMCP_DATA_DIR" if embedded else "the server at INKMCP_TENANT_DATABASE_URL"
    if not own_is_default and held == 0:
        log.warning("tenant Postgres server differs from the one the control plane recorded (%s); no database is "
                    "recorded on it and it is not the default provider, so starting anyway", where)
        return ours
    raise InkError(
        f"this replica would create tenant databases on {where}, but the control-plane database "
        f"(INKMCP_DATABASE_URL) belongs to another tenant Postgres server ({held} database(s) recorded on it). "
        "Replicas sharing one control plane must share one tenant server, or agents get credentials that work on "
        "one replica only.",
        argument="INKMCP_TENANT_DATABASE_URL",
        fix="set INKMCP_TENANT_DATABASE_URL on every replica to the admin URL of the one tenant server (the first "
        "replica's), or make Neon the default (INKMCP_NEON_API_KEY); if that server's data was lost, restore it "
        "from a backup rather than starting an empty one",
    )


# --- the embedded tenant server's cgroup --------------------------------------------------------------------------

CGROUP_PARENT = "inkmcp-tenant-pg"
"""Beside the local provider's `inkmcp` parent (whose groups are services), so its sweeps never see this one."""
BACKGROUND_TASKS = 100
"""pids.max headroom over max_connections: checkpointer, walwriter, autovacuum and parallel workers."""
_SWEEP_AGE_S = 120
"""An empty group is removed only when older than this, so one created by a server starting right now stays."""


def tenant_server_cgroup(pgdata: Path) -> str:
    """The group of the server on `pgdata`: one per data dir, so two servers on a host (tests) have their own caps."""
    return "pg-" + hashlib.sha256(str(Path(pgdata).absolute()).encode()).hexdigest()[:12]


def default_caps(cpus: float | None, memory_mb: int | None) -> tuple[float, int]:
    """Configured caps, else all cores but one (at least half a core) and half the RAM."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ram_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    return (cpus if cpus is not None else max(0.5, cores - 1.0),
            memory_mb if memory_mb is not None else max(256, ram_mb // 2))


def confine_tenant_server(pgdata: Path, postmaster: int | None, *, max_connections: int) -> str | None:
    """Move the postmaster and its children into the server's capped cgroup; returns the group (None: not capped).

    Idempotent: run on every start, adopted servers included (a server started before this existed is moved on the
    next InkMCP start). The postmaster moves first, so every backend it forks afterwards is born inside; the
    children that exist already are moved next. Best effort like the local provider's limits: without root or
    cgroup controllers it logs why and the server runs uncapped (per-role limits still hold).
    """
    from inkmcp.providers.compute.base import Resources
    from inkmcp.providers.compute.local.limits import Cgroups
    from inkmcp.settings import TenantPostgresSettings

    if postmaster is None:
        return None
    settings = TenantPostgresSettings()
    cgroups = Cgroups(CGROUP_PARENT, pids_max=max_connections + BACKGROUND_TASKS)
    if not cgroups.available:
        # as a normal user (one person's machine) that is expected; as root it means the host lacks the controllers
        log.log(logging.WARNING if os.geteuid() == 0 else logging.INFO,
                "tenant Postgres runs without a CPU/memory cap: %s", cgroups.reason)
        return None
    cpus, memory_mb = default_caps(settings.cpus, settings.memory_mb)
    group = tenant_server_cgroup(pgdata)
    _sweep_empty(cgroups, keep=group)
    # model_construct: Resources' bounds are a service's (at most 16 GiB, 16 cores); a host's share may exceed them
    cgroups.ensure(group, Resources.model_construct(memory_mb=memory_mb, cpus=cpus))
    cgroups.set_weight(group, settings.cpu_weight)
    cgroups.attach(group, postmaster)
    try:
        children = psutil.Process(postmaster).children(recursive=True)
    except psutil.Error:
        children = []
    for child in children:
        cgroups.attach(group, child.pid)
    log.info("tenant Postgres %s capped in cgroup %s/%s: %.2f CPUs, %d MiB", pgdata, CGROUP_PARENT, group, cpus,
             memory_mb)
    return group


def _sweep_empty(cgroups: Cgroups, keep: str) -> None:
    """Remove empty groups of servers that are gone (tests start many); a non-empty one cannot be removed anyway."""
    base = cgroups.root / CGROUP_PARENT if cgroups.version == 2 else cgroups.root / "memory" / CGROUP_PARENT
    try:
        entries = [d for d in base.iterdir() if d.is_dir() and d.name.startswith("pg-") and d.name != keep]
    except OSError:
        return
    now = time.time()
    for d in entries:
        try:
            if now - d.stat().st_mtime < _SWEEP_AGE_S or cgroups.pids(d.name):
                continue
        except OSError:
            continue
        cgroups.remove(d.name)
