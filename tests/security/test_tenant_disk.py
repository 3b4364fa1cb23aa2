"""Tenant databases and Redis filled the shared disk (closing note dec2, "noticed, not touched"), attacked again.

The attack: mallory provisions a database (`provision_database`) and INSERTs 1 MiB of incompressible text at a time
as her own role. Before the fix her database lived in the tenant server's data dir on the data dir's filesystem
(the host's, beside the control-plane PostgreSQL): 200 MiB went in without a refusal, in `pg_default`, and she could
also `CREATE TABLE ... TABLESPACE pg_default` and `SET temp_tablespaces`. The same for her Redis: SET and DEL a big
value in a loop, and its append-only file grows on the same filesystem while memory stays flat. And a
`RAISE WARNING` of any size in a loop went to the tenant server's log, on the same filesystem again.

Now (store/tenant_disks.py, providers/database/postgres.py and redis.py): each database is in a tablespace of its
own on an image of INKMCP_TENANT_PG_DISK_MB, each Redis instance on one of INKMCP_REDIS_DISK_MB, and the tenant
server logs only FATAL and PANIC. From mallory's side: "could not extend file ...: No space left on device" within
her own limit, no other tablespace, a Redis that refuses writes with ENOSPC; meanwhile alice (another account) writes
to her own database and the MCP server answers. Then the lifecycle: a database from before the upgrade moves onto
its own disk at the next start; InkMCP's stop unmounts the images after the tenant server it started stopped, and
its start mounts them before it starts again (data kept); deleting the project removes tablespace, image and mount.

One `inkmcp serve` of its own, two accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from inkmcp.providers.compute.local.diskquota import attached_loops, mount_points
from inkmcp.providers.database.redis import RespConnection
from inkmcp.store.embedded import _socket_dir_for
from tests.security.conftest import ROOT, security_server, session
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]

DB_MB = 48
REDIS_MB = 24
MALLORY = "td-mallory"
ALICE = "td-alice"
FILL_ROW = "INSERT INTO fill SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768)"
"""1 MiB of md5 hex per row: incompressible enough that TOAST cannot shrink it much, so MiB in = MiB on disk."""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    with security_server("inkmcp-tdisk-", (MALLORY, ALICE), INKMCP_TENANT_PG_DISK_MB=str(DB_MB),
                         INKMCP_REDIS_DISK_MB=str(REDIS_MB), INKMCP_MAX_DATABASES_PER_ACCOUNT="3") as srv:  # fmt: skip
        yield srv


async def _database(srv: ServerProc, account: str, project: str, *, redis: bool = False) -> dict[str, Any]:
    async with session(srv, account) as s:
        await call(s, "ensure_project", name=project)
        await call(s, "provision_database", project_name=project)
        if redis:
            await call(s, "provision_database", project_name=project, type="redis")
        return dict(await call(s, "get_database_credentials", project_name=project))


@pytest.fixture(scope="module")
async def creds(server: ServerProc) -> dict[str, dict[str, Any]]:
    mallory, alice = await asyncio.gather(_database(server, MALLORY, "td-hog", redis=True),
                                          _database(server, ALICE, "td-quiet"))  # fmt: skip
    return {"mallory": mallory, "alice": alice}


def connect(creds: dict[str, Any]) -> psycopg.Connection[Any]:
    return psycopg.connect(host=creds["host"], port=creds["port"], user=creds["user"], password=creds["password"],
                           dbname=creds["database"], connect_timeout=5, autocommit=True)


def superuser(srv: ServerProc, database: str = "postgres") -> psycopg.Connection[Any]:
    pgdata = srv.data_dir / "pg" / "tenants"
    port = int((srv.data_dir / "pg" / "tenants.port").read_text())
    return psycopg.connect(host=str(_socket_dir_for(pgdata.absolute())), port=port, user="postgres", dbname=database,
                           autocommit=True, connect_timeout=5)  # fmt: skip


def tablespace(srv: ServerProc, database: str) -> tuple[str, str]:
    """(the database's default tablespace, that tablespace's location; '' for pg_default)."""
    with superuser(srv) as c:
        row = c.execute("SELECT t.spcname, pg_tablespace_location(t.oid) FROM pg_database d JOIN pg_tablespace t "
                        "ON t.oid = d.dattablespace WHERE d.datname = %s", (database,)).fetchone()  # fmt: skip
    assert row is not None
    return str(row[0]), str(row[1])


def image(srv: ServerProc, kind: str, ident: str) -> Path:
    return srv.data_dir / "compute" / "disks" / kind / f"{ident}.img"


def fill(conn: psycopg.Connection[Any], cap_mb: int = 400) -> tuple[int, psycopg.Error | None]:
    conn.execute("CREATE TABLE IF NOT EXISTS fill (b text STORAGE EXTERNAL)")
    for written in range(cap_mb):
        try:
            conn.execute(FILL_ROW)
        except psycopg.Error as e:
            return written, e
    return cap_mb, None


def healthy(srv: ServerProc) -> None:
    assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=10).status_code == 200


async def test_a_tenant_filling_its_database_gets_enospc_within_its_own_disk(server: ServerProc,
                                                                            creds: dict[str, dict[str, Any]]) -> None:
    """Mallory INSERTs until refused: ENOSPC from her own tablespace within DB_MB, on a filesystem that is not the
    data dir's; alice's database still takes 20 MiB, the MCP server answers; after TRUNCATE mallory writes again."""
    m, a = creds["mallory"], creds["alice"]
    space, location = tablespace(server, m["database"])
    assert space == m["database"] and location.startswith(str(server.data_dir / "pg" / "tablespaces")), location
    assert os.stat(location).st_dev != os.stat(server.data_dir).st_dev  # her database is not on the host's disk
    with connect(m) as c:
        written, err = fill(c)
        assert err is not None, f"{written} MiB went in without a refusal"
        assert err.sqlstate == "53100", err  # disk_full
        assert "could not extend file" in str(err) and "No space left on device" in str(err), err
        assert 8 <= written < DB_MB, written
        size = c.execute("SELECT pg_database_size(current_database())").fetchone()
        assert size is not None and size[0] <= DB_MB * 2**20, size
    with connect(a) as c:  # another tenant, same server: unaffected
        c.execute("CREATE TABLE notes (b text STORAGE EXTERNAL)")
        for _ in range(20):
            c.execute(FILL_ROW.replace("fill", "notes"))
        assert c.execute("SELECT count(*) FROM notes").fetchone() == (20,)
    healthy(server)
    async with session(server, ALICE) as s:  # the control plane writes (a project row, its audit) as ever
        await call(s, "ensure_project", name="td-after-the-fill")
    with connect(m) as c:  # her own database recovers as soon as she frees space (TRUNCATE would need a new file)
        c.execute("DROP TABLE fill")
        assert fill(c, cap_mb=1) == (1, None)
        assert c.execute("SELECT count(*) FROM fill").fetchone() == (1,)


async def test_the_tenant_cannot_leave_its_tablespace(server: ServerProc, creds: dict[str, dict[str, Any]]) -> None:
    """No other tablespace for her tables or temporary files: pg_default (the shared disk) nor alice's."""
    m, a = creds["mallory"], creds["alice"]
    with connect(m) as c:
        for attempt in ("CREATE TABLE esc (x int) TABLESPACE pg_default",
                        f'CREATE TABLE esc (x int) TABLESPACE "{a["database"]}"',
                        "SET temp_tablespaces = 'pg_default'", f"SET temp_tablespaces = '{a['database']}'",
                        "CREATE TABLESPACE mine LOCATION '/tmp'"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(attempt)
            assert e.value.sqlstate == "42501", (attempt, e.value)  # insufficient_privilege
        # (ALTER DATABASE ... SET TABLESPACE works only from another database, and her role may connect to none)
        with pytest.raises(psycopg.Error) as e:
            c.execute(f'ALTER DATABASE "{m["database"]}" SET TABLESPACE pg_default')
        assert e.value.sqlstate == "55006", e.value  # object_in_use: "the currently open database"
        # her temporary files go to her own tablespace (the database's default): temp_tablespaces is empty
        assert c.execute("SHOW temp_tablespaces").fetchone() == ("",)


async def test_raise_warning_does_not_fill_the_server_log(server: ServerProc, creds: dict[str, dict[str, Any]]) -> None:
    """64 MiB of RAISE WARNING/LOG/uncaught EXCEPTION from her session: the tenant server's log does not grow by it
    (her role logs only FATAL, and she cannot change that); the log is on a small disk of its own anyway."""
    log = server.data_dir / "pg" / "tenants" / "server.log"
    assert log.is_symlink() and os.path.realpath(log) in {os.path.realpath(server.data_dir / "pg" / "logs" / "server" /
                                                                           "server.log")}  # fmt: skip
    logs = server.data_dir / "pg" / "logs" / "server"
    assert os.stat(logs).st_dev != os.stat(server.data_dir).st_dev  # its own filesystem, not the host's
    st = os.statvfs(logs)
    assert st.f_blocks * st.f_frsize <= 64 * 2**20
    before = log.stat().st_size
    with connect(creds["mallory"]) as c:
        for attempt in ("SET log_min_messages = warning", "ALTER ROLE CURRENT_USER RESET log_min_messages",
                        "ALTER ROLE CURRENT_USER SET log_min_messages = warning", "RESET log_min_messages"):
            with pytest.raises(psycopg.Error) as e:
                c.execute(attempt)
            assert e.value.sqlstate == "42501", (attempt, e.value)  # insufficient_privilege
        c.execute("ALTER ROLE CURRENT_USER RESET ALL")  # what she may reset does not include it
        c.execute("DO $$BEGIN FOR i IN 1..16 LOOP RAISE WARNING '%', repeat('w', 2 * 1024 * 1024); "
                  "RAISE LOG '%', repeat('l', 2 * 1024 * 1024); END LOOP; END$$")
        for _ in range(8):
            with pytest.raises(psycopg.Error):
                c.execute("DO $$BEGIN RAISE EXCEPTION '%', repeat('e', 2 * 1024 * 1024); END$$")
    with connect(creds["mallory"]) as c:  # a new session after her RESET ALL: still quiet
        assert c.execute("SHOW log_min_messages").fetchone() == ("fatal",)
        c.execute("DO $$BEGIN RAISE WARNING '%', repeat('w', 2 * 1024 * 1024); END$$")
    assert log.stat().st_size - before < 64 * 1024, log.stat().st_size - before


async def test_autovacuum_running_her_functions_does_not_log_them(server: ServerProc,
                                                                   creds: dict[str, dict[str, Any]]) -> None:
    """Her RAISE through a process that is not her session: an index on a function that RAISEs 1 MiB, which
    autovacuum's ANALYZE evaluates (as the table's owner, in an autovacuum worker). Measured before her database got
    `log_min_messages = fatal` too: 54 MB in 15 s. Now the log does not grow by it (autovacuum_naptime 1 s here)."""
    log = server.data_dir / "pg" / "tenants" / "server.log"
    with superuser(server) as su:
        su.execute("ALTER SYSTEM SET autovacuum_naptime = '1s'")
        su.execute("SELECT pg_reload_conf()")
    try:
        before = log.stat().st_size
        with connect(creds["mallory"]) as c:
            c.execute("CREATE FUNCTION noisy(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$BEGIN "
                      "RAISE WARNING '%', repeat('a', 1024 * 1024); RAISE LOG '%', repeat('l', 1024 * 1024); "
                      "RETURN $1; END$$")
            c.execute("CREATE TABLE noisy_t (x int); CREATE INDEX ON noisy_t (noisy(x))")
            c.execute("INSERT INTO noisy_t SELECT g FROM generate_series(1, 2000) g")
            deadline = time.monotonic() + 30
            while c.execute("SELECT last_autoanalyze FROM pg_stat_user_tables WHERE relname = 'noisy_t'"
                            ).fetchone() == (None,):  # fmt: skip
                assert time.monotonic() < deadline, "autovacuum never analyzed the table"
                await asyncio.sleep(0.5)
            c.execute("DROP TABLE noisy_t; DROP FUNCTION noisy(int)")
        assert log.stat().st_size - before < 64 * 1024, log.stat().st_size - before
    finally:
        with superuser(server) as su:
            su.execute("ALTER SYSTEM RESET autovacuum_naptime")
            su.execute("SELECT pg_reload_conf()")


async def test_the_servers_own_errors_are_logged(server: ServerProc, creds: dict[str, dict[str, Any]]) -> None:
    """What `log_min_messages = fatal` hid: a tenant backend killed as the OOM killer would (kill -9 by its PID)
    appears in the server log, with the server's crash recovery, and every tenant is back after it."""
    log = server.data_dir / "pg" / "tenants" / "server.log"
    before = log.stat().st_size
    with connect(creds["mallory"]) as c:
        backend = int(c.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        os.kill(backend, 9)
        with pytest.raises(psycopg.OperationalError):
            c.execute("SELECT 1")
    deadline = time.monotonic() + 30
    while True:
        try:
            with connect(creds["alice"]) as c:
                c.execute("SELECT 1")
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, "the server did not come back"
            await asyncio.sleep(0.3)
    with open(log, "rb") as f:
        f.seek(before)
        text = f.read().decode(errors="replace")
    assert f"backend (PID {backend}) was terminated by signal 9" in text, text[-3000:]
    assert "database system was not properly shut down" in text or "all server processes terminated" in text, text


async def test_the_tenant_server_killed_with_a_full_tenant_disk_comes_back(server: ServerProc,
                                                                          creds: dict[str, dict[str, Any]]) -> None:
    """Mallory fills her disk to ENOSPC again, then the tenant server's postmaster is killed -9 (by its PID, as a
    crash would): `inkmcp serve` starts it again with her tablespace's headroom released for the crash recovery;
    alice's database is back, and mallory is still held to her limit."""
    with connect(creds["mallory"]) as c:
        _, err = fill(c)
        assert err is not None and err.sqlstate == "53100", err
    with connect(creds["alice"]) as c:
        c.execute("CREATE TABLE IF NOT EXISTS crash (x text); INSERT INTO crash VALUES ('before the kill')")
    pid_file = server.data_dir / "pg" / "tenants" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    os.kill(postmaster, 9)
    deadline = time.monotonic() + 60
    while True:
        try:
            with connect(creds["alice"]) as c:
                assert ("before the kill",) in c.execute("SELECT x FROM crash").fetchall()
            break
        except psycopg.OperationalError:
            assert time.monotonic() < deadline, server.log()
            await asyncio.sleep(0.5)
    assert int(pid_file.read_text().split()[0]) != postmaster
    with connect(creds["mallory"]) as c:
        with pytest.raises(psycopg.Error) as refused:
            c.execute(FILL_ROW)
        assert refused.value.sqlstate == "53100", refused.value
        c.execute("DROP TABLE fill")
    healthy(server)


async def test_a_tenant_filling_its_redis_gets_enospc_within_its_own_disk(server: ServerProc,
                                                                         creds: dict[str, dict[str, Any]]) -> None:
    """SET and DEL 4 MiB in a loop (memory flat, the AOF grows): Redis refuses writes once her REDIS_MB disk is
    full, its files are on that disk only; alice's database and the MCP server are fine."""
    r = creds["mallory"]["redis"]
    ident = r["user"]
    directory = server.data_dir / "redis" / ident
    assert os.path.realpath(directory) in mount_points() and image(server, "redis", ident).is_file()
    assert os.stat(directory).st_dev != os.stat(server.data_dir).st_dev
    conn = await RespConnection.open(r["host"], r["port"])
    refused = ""
    try:
        await conn.execute("AUTH", r["user"], r["password"])
        value = os.urandom(4 * 2**20)
        for _ in range(200):  # 800 MiB through the AOF unless refused
            try:
                await conn.execute("SET", "big", value)
                await conn.execute("DEL", "big")
            except Exception as e:  # RedisReplyError, or the connection closed on a failed write
                refused = str(e)
                break
            await asyncio.sleep(0)
    finally:
        await conn.close()
    assert "No space left on device" in refused or "MISCONF" in refused, refused or "never refused"
    st = os.statvfs(directory)
    assert st.f_blocks * st.f_frsize <= REDIS_MB * 2**20
    with connect(creds["alice"]) as c:
        c.execute("CREATE TABLE IF NOT EXISTS after_redis (x int)")
    healthy(server)


async def test_redis_client_buffers_are_capped_together(server: ServerProc,
                                                        creds: dict[str, dict[str, Any]]) -> None:
    """Memory beside the disk: a SET announcing a 400 MB value makes Redis reserve its query buffer at once. Before,
    two such connections held 805 MB of the host's RAM (maxclients 128: ~50 GB); now `maxmemory-clients` evicts
    them and the instance's memory stays small."""
    r = creds["mallory"]["redis"]
    auth = (f"*3\r\n$4\r\nAUTH\r\n${len(r['user'])}\r\n{r['user']}\r\n${len(r['password'])}\r\n"
            f"{r['password']}\r\n").encode()
    socks = []
    try:
        for _ in range(4):
            s = socket.create_connection((r["host"], r["port"]), timeout=5)
            s.sendall(auth)
            assert s.recv(100).startswith(b"+OK")
            s.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$400000000\r\n")
            socks.append(s)
        for _ in range(8):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.sendall(b"a" * 2**20)
        await asyncio.sleep(0.5)
        conn = await RespConnection.open(r["host"], r["port"])
        try:
            await conn.execute("AUTH", r["user"], r["password"])
            memory = str(await conn.execute("INFO", "memory"))
            stats = str(await conn.execute("INFO", "stats"))
        finally:
            await conn.close()
    finally:
        for s in socks:
            s.close()
    used = int(re.search(r"used_memory:(\d+)", memory).group(1))  # type: ignore[union-attr]
    evicted = int(re.search(r"evicted_clients:(\d+)", stats).group(1))  # type: ignore[union-attr]
    assert evicted >= 3 and used < 128 * 2**20, (evicted, used)


def _held_elsewhere(data_dir: Path) -> bool:
    """Whether a process in another mount namespace still has one of `data_dir`'s mounts: a sandboxed app of another
    test (inkspawn: MS_SLAVE) made while they were mounted keeps its copy when the host's parent mount is private,
    and the image's loop device with it (reused by the next mount, never attached twice)."""
    ours = os.readlink("/proc/self/ns/mnt")
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            theirs = os.readlink(f"/proc/{pid}/ns/mnt")
            if theirs != ours and str(data_dir) in Path(f"/proc/{pid}/mountinfo").read_text():
                return True
    return False


def _mounted(path: Path) -> bool:
    return os.path.realpath(path) in mount_points()


async def test_upgrade_restart_and_delete(server: ServerProc, creds: dict[str, dict[str, Any]]) -> None:
    """A database from before (in pg_default, no image) is moved onto its own disk at the next start, its rows
    kept; InkMCP's stop leaves no tablespace mount or loop device once the tenant server it started stopped, its
    start mounts them back before the server (mallory's rows readable); deleting her project takes tablespace,
    image and mount with it."""
    m, a = creds["mallory"], creds["alice"]
    with connect(a) as c:
        c.execute("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('from before the upgrade')")
    with connect(m) as c:
        c.execute("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('from before the restart')")
    # alice's database as an older InkMCP made it: in pg_default, no tablespace, no image
    with superuser(server) as su:
        su.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (a["database"],))
        su.execute(f'ALTER DATABASE "{a["database"]}" SET TABLESPACE pg_default')
        su.execute(f'DROP TABLESPACE "{a["database"]}"')
    from inkmcp.providers.compute.local.diskquota import unmount

    unmount(server.data_dir / "pg" / "tablespaces" / a["database"])
    image(server, "tenant-pg", a["database"]).unlink()
    assert tablespace(server, a["database"])[0] == "pg_default"

    assert server.stop() == 0, server.log()
    points = server.data_dir / "pg" / "tablespaces"
    assert not [p for p in mount_points() if p.startswith(os.path.realpath(points) + "/")]
    images = {os.path.realpath(p) for p in (server.data_dir / "compute" / "disks").rglob("*.img")}
    deadline = time.monotonic() + 10  # the kernel lets go of an unmounted image's loop device just after
    while images & attached_loops().keys():
        if time.monotonic() > deadline:  # a copy in another process's private mount namespace may stay
            assert _held_elsewhere(server.data_dir), images & attached_loops().keys()
            break
        time.sleep(0.2)
    assert len(images) == 3  # mallory's database and Redis (alice's was made "before the upgrade"), the server log
    assert not _mounted(server.data_dir / "pg" / "logs" / "server")
    server.start()

    assert tablespace(server, a["database"])[0] == a["database"], server.log()  # moved onto its own disk
    assert _mounted(points / a["database"]) and image(server, "tenant-pg", a["database"]).is_file()
    with connect(a) as c:
        assert c.execute("SELECT x FROM kept").fetchone() == ("from before the upgrade",)
        _, err = fill(c)
        assert err is not None and err.sqlstate == "53100", err  # limited from now on
        c.execute("DROP TABLE fill")
    with connect(m) as c:  # restart: her tablespace mounted before the server came back
        assert c.execute("SELECT x FROM kept").fetchone() == ("from before the restart",)
        _, err = fill(c)
        assert err is not None and err.sqlstate == "53100", err  # still limited

    async with session(server, MALLORY) as s:
        await call(s, "delete", project_name="td-hog", confirm="td-hog", delete_database=True)
    deadline = time.monotonic() + 30
    while (image(server, "tenant-pg", m["database"]).exists() or image(server, "redis", m["redis"]["user"]).exists()) \
            and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert not image(server, "tenant-pg", m["database"]).exists()
    assert not _mounted(points / m["database"]) and not (points / m["database"]).exists()
    assert not image(server, "redis", m["redis"]["user"]).exists()
    assert not _mounted(server.data_dir / "redis" / m["redis"]["user"])
    with superuser(server) as su:
        assert su.execute("SELECT count(*) FROM pg_tablespace WHERE spcname = %s", (m["database"],)).fetchone() == (0,)
    healthy(server)


async def test_a_restored_backup_stays_on_its_own_disk(server: ServerProc) -> None:
    """restore_database_backup builds the restored copy beside the live one and swaps it in: both on the tenant's
    own disk (a copy in pg_default would have taken the database off its limit), and the limit holds after."""
    creds = await _database(server, ALICE, "td-restore")
    with connect(creds) as c:
        c.execute("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('in the backup')")
        assert fill(c, cap_mb=8) == (8, None)
    async with session(server, ALICE) as s:
        backups = await call(s, "database_backups", project_name="td-restore", create=True)
        with connect(creds) as c:
            c.execute("INSERT INTO kept VALUES ('after the backup')")
        await call(s, "restore_database_backup", project_name="td-restore", backup_id=backups["backups"][0]["id"],
                   confirm="td-restore")
    assert tablespace(server, creds["database"])[0] == creds["database"]
    with superuser(server) as su:  # no other database (the scratch copy, the replaced one) is left in pg_default
        left = su.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ink\\_%%' AND dattablespace = "
                          "(SELECT oid FROM pg_tablespace WHERE spcname = 'pg_default')").fetchall()
    assert not left, left
    with connect(creds) as c:
        assert c.execute("SELECT x FROM kept").fetchall() == [("in the backup",)]
        _, err = fill(c)
        assert err is not None and err.sqlstate == "53100", err


async def test_a_sigkilled_serve_leaves_the_tenant_server_and_the_next_one_adopts_it(server: ServerProc) -> None:
    """`inkmcp serve` killed -9: the tenant server (its own session) and its images' mounts stay; the next serve
    adopts that same postmaster, mounts nothing twice, and tenants' data is there."""
    creds = await _database(server, ALICE, "td-adopt")
    with connect(creds) as c:
        c.execute("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('across a killed serve')")
    pid_file = server.data_dir / "pg" / "tenants" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    ours = os.path.realpath(server.data_dir) + "/"
    before = sorted(p for p in mount_points() if p.startswith(ours))
    assert server.proc is not None
    server.proc.kill()  # SIGKILL to serve alone (the harness started it; its PID)
    server.proc.wait(10)
    server.proc = None
    os.kill(postmaster, 0)  # still running
    assert sorted(p for p in mount_points() if p.startswith(ours)) == before
    server.start()
    assert int(pid_file.read_text().split()[0]) == postmaster  # adopted, not restarted
    after = [p for p in mount_points() if p.startswith(ours)]
    assert len(after) == len(set(after)) and set(before) <= set(after), (before, after)  # nothing stacked twice
    with connect(creds) as c:
        assert c.execute("SELECT x FROM kept").fetchone() == ("across a killed serve",)
    healthy(server)


async def test_stop_tenant_server_when_no_serve_follows(server: ServerProc) -> None:
    """`inkmcp stop-tenant-server`: refused while serve runs; after serve is killed -9, it stops the tenant server
    it left and unmounts its databases' and log's disks; a later serve starts it again with the data."""
    creds = await _database(server, MALLORY, "td-stop")  # (alice holds her 3 databases)
    with connect(creds) as c:
        c.execute("CREATE TABLE kept (x text); INSERT INTO kept VALUES ('across a stop')")
    refused = server.cli("stop-tenant-server", check=False)
    assert refused.returncode == 1 and "stop `inkmcp serve` first" in refused.stderr, refused
    pid_file = server.data_dir / "pg" / "tenants" / "postmaster.pid"
    postmaster = int(pid_file.read_text().split()[0])
    assert server.proc is not None
    server.proc.kill()
    server.proc.wait(10)
    server.proc = None
    done = server.cli("stop-tenant-server")
    assert f"stopped the tenant server (pid {postmaster})" in done.stdout, done
    with contextlib.suppress(psutil.NoSuchProcess):  # gone, or a zombie its (non-reaping) new parent keeps
        assert psutil.Process(postmaster).status() == psutil.STATUS_ZOMBIE
    pg = os.path.realpath(server.data_dir / "pg") + "/"
    assert not [p for p in mount_points() if p.startswith(pg)]
    server.start()
    with connect(creds) as c:
        assert c.execute("SELECT x FROM kept").fetchone() == ("across a stop",)
