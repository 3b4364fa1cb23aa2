"""A hard disk limit per tenant database on the embedded tenant PostgreSQL server (and its settings).

Why: each project's files are on an image of its own (providers/compute/local/diskquota.py), but its database was
in the tenant server's data dir, on the data dir's filesystem, which also holds the control-plane PostgreSQL: a
tenant could INSERT until that filesystem was full, and every tenant's database and InkMCP itself stopped.

How: each tenant database gets a tablespace of its own, on an ext4 image of its own
(`compute/disks/tenant-pg/<ident>.img`, INKMCP_TENANT_PG_DISK_MB), loop-mounted on `pg/tablespaces/<ident>/`,
whose `data/` (owned by the server's user, 0700) is the tablespace's location, and the database is created with
it as its default tablespace (`providers/database/postgres.py`). Its tables, indexes, TOAST and its temporary
files (`temp_tablespaces` empty = the database's default) all land there: a tenant filling it gets
"could not extend file ...: No space left on device" and nobody else notices. A tenant cannot put anything in
another tablespace (CREATE on a tablespace is the superuser's; its own database's default needs no grant).
What stays shared: WAL (bounded by max_wal_size, recycled) and the catalogs' tiny per-database part.

Lifecycle (why images of their own and not the project's, see `NamedDisks`): the images are mounted before the
tenant server starts and unmounted only after it stopped (`mount_tablespaces`/`unmount_tablespaces`, called by
`EmbeddedPostgres.start/stop` for the tenant server, whoever starts it: `inkmcp serve`, `inkmcp backup create`).
A database made before this (or restored by `inkmcp backup restore`, whose dumps carry no tablespaces) is moved
onto its own image the next time InkMCP starts (`PostgresDatabaseProvider.ensure_connection_limit`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.providers.compute.local.diskquota import NamedDisks

log = logging.getLogger(__name__)

KIND = "tenant-pg"
SETTING = "INKMCP_TENANT_PG_DISK_MB"


class TenantDiskSettings(BaseSettings):
    """INKMCP_TENANT_PG_DISK_MB, with the host-protection settings the projects' disks use too."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    tenant_pg_disk_mb: int = Field(
        default=1024, ge=0,
        description="disk one tenant database may fill on the embedded tenant PostgreSQL server, in MiB (its tables, "
        "indexes and temporary files are on an ext4 image of this size, a tablespace of its own; root only). 0: not "
        "limited",
    )  # fmt: skip
    disk_reserve_mb: int = Field(default=2048, ge=0, description="see INKMCP_DISK_RESERVE_MB (inkmcp/settings.py)")
    disk_overcommit: float = Field(default=1.0, ge=1.0, description="see INKMCP_DISK_OVERCOMMIT (inkmcp/settings.py)")


def _server_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    from inkmcp.store.embedded import SYSTEM_USER, _ensure_system_user

    user = _ensure_system_user(SYSTEM_USER)
    return user.pw_uid, user.pw_gid


def tablespace_disks(data_dir: Path, settings: TenantDiskSettings | None = None) -> NamedDisks:
    """The tenant databases' images of the data dir `data_dir` (INKMCP_DATA_DIR)."""
    if settings is None:
        from inkmcp.errors import settings_from_env

        settings = settings_from_env(TenantDiskSettings, "INKMCP_", "inkmcp/store/tenant_disks.py")
    return NamedDisks(Path(data_dir) / "compute", KIND, Path(data_dir) / "pg" / "tablespaces",
                      size_mb=settings.tenant_pg_disk_mb, setting=SETTING, what="tenant database",
                      owner=_server_user(), reserve_mb=settings.disk_reserve_mb,
                      overcommit=settings.disk_overcommit)  # fmt: skip


def server_disks(pgdata: Path) -> NamedDisks | None:
    """The images of the tenant server on `pgdata` when it is a data dir's embedded one (`<data>/pg/tenants`)."""
    pgdata = Path(pgdata).absolute()
    if pgdata.name != "tenants" or pgdata.parent.name != "pg":
        return None
    return tablespace_disks(pgdata.parent.parent)


def mount_tablespaces(pgdata: Path) -> int:
    """Before the tenant server starts: every tenant database's image mounted (its tablespace reachable). A server
    started without them would fail its crash recovery, or its tenants' first queries, for want of their files."""
    disks = server_disks(pgdata)
    if disks is None or not disks.names():
        return 0
    mounted = disks.mount_all()
    log.info("tenant databases' filesystems mounted: %d (%s)", mounted, disks.note())
    return mounted


def unmount_tablespaces(pgdata: Path) -> int:
    """After the tenant server stopped: its tenant databases' images unmounted."""
    disks = server_disks(pgdata)
    return 0 if disks is None else disks.unmount_all()
