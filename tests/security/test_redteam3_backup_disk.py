"""redteam3: database dumps filled the host's disk past the reserve the projects' disks were promised.

`database_backups(create=true)` writes a dump of the project's database to INKMCP_DB_BACKUP_DIR (by default under the
data dir, the control plane's filesystem, outside every tenant disk), and each database keeps INKMCP_DB_BACKUP_KEEP
dumps of each kind (manual, pre-restore, scheduled). One account with 5 databases of 1 GiB of random data (the
tenant disk's default) holds ~100 GiB of dumps there; nothing checked the free space, so the dumps ate into
INKMCP_DISK_RESERVE_MB (the control plane's) and the space the projects' sparse disks had been promised by their
admission, and those then got ENOSPC.

Here the backups' filesystem is a 220 MiB tmpfs and the reserve 50 MiB: mallory fills her database with ~65 MiB of
random bytes and asks for dumps until one is refused. Before the fix the third dump filled the filesystem (0 MiB
free while it was written, then ENOSPC); now the third is refused before it starts, naming
INKMCP_DISK_RESERVE_MB, and the reserve stays free throughout. Fix: `dbbackup/service.py` `_check_room`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.security.conftest import ROOT, security_server, session
from tests.support import ServerProc, call, traversable_tmpdir

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: a server of its own, 65 MiB dumped twice

FS_MB = 220
RESERVE_MB = 50
FILL_MB = 65
PROJECT = "rt3-dumps"


@pytest.fixture(scope="module")
def backup_fs() -> Iterator[Path]:
    """A FS_MB tmpfs for the dumps (its free space is exact; the box's disk is shared with other sessions)."""
    d = traversable_tmpdir("inkmcp-rt3-dumps-")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m,mode=0700", "tmpfs", str(d)], check=True)
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=False)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def dump_server(backup_fs: Path) -> Iterator[ServerProc]:
    with security_server("inkmcp-rt3-dumps-", ("mallory",), INKMCP_DB_BACKUP_DIR=str(backup_fs),
                         INKMCP_DISK_RESERVE_MB=str(RESERVE_MB), INKMCP_TENANT_PG_DISK_MB="256",
                         INKMCP_DB_BACKUP_INTERVAL_S="0") as srv:
        yield srv


def free_mb(path: Path) -> float:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize / 2**20


async def test_dumps_never_eat_into_the_hosts_reserve(dump_server: ServerProc, backup_fs: Path) -> None:
    async with session(dump_server, "mallory") as m:
        await call(m, "ensure_project", name=PROJECT)
        await call(m, "provision_database", project_name=PROJECT)
        creds: dict[str, Any] = dict(await call(m, "get_database_credentials", project_name=PROJECT))
        with psycopg.connect(host=creds["host"], port=creds["port"], user=creds["user"], password=creds["password"],
                             dbname=creds["database"], connect_timeout=5, autocommit=True) as conn:
            conn.execute("CREATE TABLE junk (b bytea)")
            conn.execute("ALTER TABLE junk ALTER COLUMN b SET STORAGE EXTERNAL")  # no compression (random anyway)
            conn.execute("INSERT INTO junk SELECT (SELECT decode(string_agg(md5(random()::text || i || g), ''), 'hex')"
                         " FROM generate_series(1, 65536) g) FROM generate_series(1, %s) i", (FILL_MB,))
        outcomes: list[tuple[str, str]] = []
        lowest, done = [free_mb(backup_fs)], threading.Event()

        def sample() -> None:  # a failed dump's partial file is removed: the low point is while it is written
            while not done.wait(0.02):
                lowest.append(min(lowest[-1], free_mb(backup_fs)))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            for _ in range(5):
                result = await m.call_tool("database_backups", {"project_name": PROJECT, "create": True})
                text = " ".join(getattr(c, "text", "") for c in result.content)
                outcomes.append(("refused" if result.is_error else "ok", text))
                if result.is_error:
                    break
        finally:
            done.set()
            sampler.join()
    assert lowest[-1] >= RESERVE_MB - 1, (
        f"mallory's dumps took the backups' filesystem down to {lowest[-1]:.0f} MiB free, under the {RESERVE_MB} "
        f"MiB reserve: {[(o, t[:200]) for o, t in outcomes]}")
    assert [o for o, _ in outcomes][:2] == ["ok", "ok"], [(o, t[:300]) for o, t in outcomes]  # control: room for two
    assert outcomes[-1][0] == "refused" and "INKMCP_DISK_RESERVE_MB" in outcomes[-1][1], outcomes[-1][1][:500]
