"""Crash recovery of the shared tenant PostgreSQL server when one tenant filled its disk (tenantdisk2).

WAL replay writes into the tablespaces, and needs more room than the files hold at the crash (a relation written
and dropped since the last checkpoint is written again before its drop is replayed; a relation map is rewritten
through a new file). Without headroom, mallory fills her image to ENOSPC, the server is killed -9, and the next
start fails for EVERY tenant ("could not write file .../pg_filenode.map.tmp: No space left on device"; the
postmaster exits "due to startup process failure"), at every start. A backend crash (an OOM kill) is worse: the
postmaster re-runs recovery itself and exits.

Now (store/tenant_disks.py): each image has root's headroom that the tenant cannot use, released while the server
starts and taken back once it is ready, and `supervise` (run by `inkmcp serve`) starts a server whose own recovery
failed. Real embedded PostgreSQL, real ext4 images and loop devices (root), real kill -9 by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from pydantic import SecretStr

from inkmcp.providers.compute.local.diskquota import HEADROOM, mount_points
from inkmcp.providers.database.base import DatabaseCredentials, Tier
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.store import tenant_disks
from inkmcp.store.embedded import EmbeddedPostgres, EmbeddedPostgresError
from tests.requirements import is_root, requires
from tests.support import traversable_tmpdir

pytestmark = [requires("root", is_root(), "loop devices and mounts need root"), pytest.mark.slow]

DB_MB = 32
BIG = "INSERT INTO {} SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768)"
"""1 MiB of md5 hex per row (TOASTed, barely compressible)."""


@dataclass
class Shared:
    data: Path
    pg: EmbeddedPostgres
    mallory: DatabaseCredentials
    alice: DatabaseCredentials


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(headroom_mb: int, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shared]:
    monkeypatch.setenv("INKMCP_TENANT_PG_DISK_MB", str(DB_MB))  # read by EmbeddedPostgres.start's mounts too
    monkeypatch.setenv("INKMCP_TENANT_PG_DISK_HEADROOM_MB", str(headroom_mb))
    root = traversable_tmpdir("inkmcp-pgcrash-")
    data = root / "data"
    (data / "pg").mkdir(mode=0o711, parents=True)
    pg = EmbeddedPostgres(data / "pg" / "tenants", port=_free_port())
    try:
        pg.start()
        provider = PostgresDatabaseProvider(SecretStr(pg.socket_url(driver=None).get_secret_value()),
                                            public_host="127.0.0.1", public_port=pg.socket_port,
                                            tablespaces=tenant_disks.tablespace_disks(data, overcommit=64))
        mallory, alice = (asyncio.run(provider.provision(owner_slug=who, tier=Tier.free)).credentials
                          for who in ("pgcrash-mallory", "pgcrash-alice"))  # fmt: skip
        yield Shared(data, pg, mallory, alice)
    finally:
        with contextlib.suppress(Exception):
            pg.stop()  # pg_ctl on this data dir only; then its images are unmounted
        left = [p for p in mount_points() if p.startswith(str(root) + "/")]
        shutil.rmtree(root, ignore_errors=True)
        assert not left, left


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Shared]:
    yield from _start(tenant_disks.TenantDiskSettings().tenant_pg_disk_headroom_mb, monkeypatch)


@pytest.fixture
def no_headroom(monkeypatch: pytest.MonkeyPatch) -> Iterator[Shared]:
    yield from _start(0, monkeypatch)


def connect(c: DatabaseCredentials) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=c.port, user=c.user, password=c.password.get_secret_value(),
                           dbname=c.database, autocommit=True, connect_timeout=5)  # fmt: skip


def fill(conn: psycopg.Connection[Any], table: str) -> int:
    """INSERT 1 MiB rows, then 100 KiB ones, into `table` until ENOSPC (sqlstate 53100): the image is left full to
    its last block a tenant may use. Returns the MiB that went in."""
    conn.execute(f"CREATE TABLE {table} (b text STORAGE EXTERNAL)")
    written = 0
    for statement in (BIG.format(table), f"INSERT INTO {table} SELECT repeat('y', 1000) FROM generate_series(1, 100)"):
        while True:
            try:
                conn.execute(statement)
            except psycopg.Error as e:
                assert e.sqlstate == "53100", e
                break
            written += 1
            assert written < 4 * DB_MB, "never refused"
    return written


def attack(s: Shared, rounds: int) -> psycopg.Connection[Any]:
    """Mallory's worst case for replay: fill to ENOSPC and drop, `rounds` times (each dropped table is written again
    by the replay until its drop), then fill it to ENOSPC once more and keep it. Alice keeps a row meanwhile."""
    with connect(s.alice) as a:
        a.execute("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('alice before the crash')")
    m = connect(s.mallory)
    for n in range(rounds):
        assert fill(m, f"churn{n}") >= 4
        m.execute(f"DROP TABLE churn{n}")
    assert fill(m, "hog") >= 4
    loc = tenant_disks.tablespace_disks(s.data).location(s.mallory.database)
    st = os.statvfs(loc)
    assert st.f_bavail * st.f_frsize < 2**20, st  # nothing left a tenant may use
    return m


def kill9(pid: int) -> None:
    proc = psutil.Process(pid)
    os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def wait_for(conn_creds: DatabaseCredentials, timeout: float) -> list[tuple[Any, ...]]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with connect(conn_creds) as c:
                return c.execute("SELECT x FROM kept").fetchall()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


def test_the_server_comes_back_after_kill_9_with_a_full_tablespace(shared: Shared) -> None:
    """kill -9 of the postmaster after mallory's churn-and-fill; the next start (what `inkmcp serve` does) recovers
    every tenant: alice's row, mallory's data; the headroom is held again and mallory is still refused at her
    limit."""
    m = attack(shared, rounds=4)
    m.close()
    kill9(shared.pg.pid or 0)
    shared.pg.start()  # crash recovery, headroom released meanwhile
    assert wait_for(shared.alice, 5) == [("alice before the crash",)]
    balloon = shared.data / "pg" / "tablespaces" / shared.mallory.database / HEADROOM
    assert balloon.stat().st_uid == 0 and balloon.stat().st_blocks * 512 >= 64 * 2**20  # taken back (most of it)
    with connect(shared.mallory) as c:
        assert c.execute("SELECT count(*) FROM hog").fetchone()[0] >= 4  # type: ignore[index]
        with pytest.raises(psycopg.Error) as refused:
            c.execute(BIG.format("hog"))
        assert refused.value.sqlstate == "53100", refused.value  # the limit holds after the recovery
        with pytest.raises(psycopg.Error) as denied:  # and the headroom is not hers: root's, 0600
            c.execute(f"SELECT pg_read_binary_file('{balloon}', 0, 1)")
        assert denied.value.sqlstate == "42501", denied.value


def test_a_backend_crash_after_the_fill_is_recovered_by_serves_supervisor(shared: Shared) -> None:
    """A tenant backend killed -9 (as an OOM kill would): the postmaster re-runs recovery with the headroom held,
    fails for want of room and exits; `supervise` (inkmcp serve's loop) starts it again with the headroom released,
    and alice's database is back within seconds."""
    m = attack(shared, rounds=2)
    backend = int(m.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
    postmaster = shared.pg.pid

    async def scenario() -> list[tuple[Any, ...]]:
        watcher = asyncio.create_task(tenant_disks.supervise(shared.pg, interval=0.5))
        try:
            kill9(backend)
            return await asyncio.to_thread(wait_for, shared.alice, 60)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    assert asyncio.run(scenario()) == [("alice before the crash",)]
    m.close()
    log = shared.pg.log_file.read_text(errors="replace")
    assert shared.pg.pid is not None and shared.pg.pid != postmaster, "the postmaster's own recovery did not fail"
    assert "WAL redo" in log and "No space left on device" in log, log[-2000:]  # why the postmaster's own failed
    with connect(shared.mallory) as c:
        assert c.execute("SELECT count(*) FROM hog").fetchone()[0] >= 4  # type: ignore[index]


def test_without_headroom_one_full_tenant_keeps_the_server_down(no_headroom: Shared) -> None:
    """The control (what the headroom is for): INKMCP_TENANT_PG_DISK_HEADROOM_MB=0, the same attack, kill -9, and
    the next start fails for everyone."""
    m = attack(no_headroom, rounds=1)
    m.close()
    kill9(no_headroom.pg.pid or 0)
    with pytest.raises(EmbeddedPostgresError) as failed:
        no_headroom.pg.start()
    assert "could not start server" in str(failed.value), failed.value
    with pytest.raises(psycopg.OperationalError):
        connect(no_headroom.alice)


def test_a_database_too_big_for_its_disk_is_not_copied_at_every_start(shared: Shared,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """A database from before the disks (pg_default) holding more than its limit: the start-up reconcile says so and
    leaves it where it is without copying it onto its disk first (before: copied until ENOSPC, at every start)."""
    import logging

    ident = shared.mallory.database
    disks = tenant_disks.tablespace_disks(shared.data, overcommit=64)
    with psycopg.connect(shared.pg.socket_url(driver=None).get_secret_value(), autocommit=True) as su:
        su.execute(f'ALTER DATABASE "{ident}" SET TABLESPACE pg_default')
        su.execute(f'DROP TABLESPACE "{ident}"')
    disks.remove(ident)
    with connect(shared.mallory) as m:  # as an older InkMCP left it: no limit
        m.execute("CREATE TABLE big (b text STORAGE EXTERNAL)")
        for _ in range(DB_MB + 8):
            m.execute(BIG.format("big"))
    provider = PostgresDatabaseProvider(SecretStr(shared.pg.socket_url(driver=None).get_secret_value()),
                                        public_host="127.0.0.1", public_port=shared.pg.socket_port, tablespaces=disks)
    with caplog.at_level(logging.WARNING):
        asyncio.run(provider.ensure_connection_limit(ident, Tier.free))
    assert "do not fit on its own disk" in caplog.text, caplog.text
    assert not list(disks.location(ident).glob("PG_*/*"))  # no database directory: nothing was copied onto it
    with psycopg.connect(shared.pg.socket_url(driver=None).get_secret_value(), autocommit=True) as su:
        row = su.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
                         "WHERE d.datname = %s", (ident,)).fetchone()  # fmt: skip
    assert row == ("pg_default",)
    with connect(shared.mallory) as m:
        assert m.execute("SELECT count(*) FROM big").fetchone() == (DB_MB + 8,)
