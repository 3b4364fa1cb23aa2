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
"""

from __future__ import annotations

import logging
import secrets

import psycopg
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.errors import InkError
from inkmcp.store.crypto import SecretBox, shared_value

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
