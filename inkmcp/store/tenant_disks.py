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

Crash recovery (tenantdisk2): WAL replay writes into the tablespaces, and needs MORE room than the files hold at the
crash: a relation written and dropped since the last checkpoint is written again before its drop is replayed, a
relation map is rewritten through a new file. Measured: a tenant fills her image to ENOSPC, the server is killed -9,
the next start fails ("could not write file pg_tblspc/.../pg_filenode.map.tmp: No space left on device", startup
process exit 1, "shutting down due to startup process failure"): every tenant's database down, at every start.
So each image has HEADROOM on top of the limit that the tenant cannot use: a file of root's (`.headroom`, allocated,
never written: the image stays sparse) beside `data/`. Before the server starts (`EmbeddedPostgres.start`, whoever
calls it) it is released; once the server is ready (recovery and its end-of-recovery checkpoint done) it is taken
back (`keep_headroom`); in between the server refuses tenants' TCP connections (pg_hba `reject`, flakehunt), so no
tenant writes into the released headroom (CI run 59: one row after a crash restart did). What replay needs
beyond the crash-time files is at most what was written since the last checkpoint, so the tenant server's
`max_wal_size` is bounded too (`server_config`): headroom = 2 x max_wal_size.
A backend crash (an OOM kill) makes the postmaster itself re-run recovery with the headroom still held; should
that fail, the postmaster exits, and `inkmcp serve` starts it again within seconds, headroom released
(`supervise`, which also takes headroom back that a tenant held while it was released).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import ProviderError
from inkmcp.providers.compute.local.diskquota import NamedDisks

if TYPE_CHECKING:
    from inkmcp.store.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

KIND = "tenant-pg"
SETTING = "INKMCP_TENANT_PG_DISK_MB"
MAX_WAL_MB = 64
"""The tenant server's max_wal_size: WAL between checkpoints, so what a crash recovery may write on top of the files
(a checkpoint starts after ~max_wal_size/1.9 of WAL; recovery starts at the last completed one's redo point)."""


class TenantDiskSettings(BaseSettings):
    """INKMCP_TENANT_PG_DISK_MB and its headroom (read by every process that starts the tenant server). The host's
    admission (INKMCP_DISK_RESERVE_MB / _OVERCOMMIT) is `inkmcp.settings.Settings`', passed in by app.py."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    tenant_pg_disk_mb: int = Field(
        default=1024, ge=0,
        description="disk one tenant database may fill on the embedded tenant PostgreSQL server, in MiB (its tables, "
        "indexes and temporary files are on an ext4 image of this size, a tablespace of its own; root only). 0: not "
        "limited",
    )  # fmt: skip
    tenant_pg_disk_headroom_mb: int = Field(
        default=2 * MAX_WAL_MB, ge=0,
        description="room on each tenant database's image beyond INKMCP_TENANT_PG_DISK_MB that the tenant cannot use, "
        "released to the server's crash recovery (which writes more than the files hold); twice the tenant server's "
        f"max_wal_size ({MAX_WAL_MB} MiB) covers it. 0: none (a tenant that fills its disk can then keep the shared "
        "server from coming back after a crash)",
    )  # fmt: skip
    tenant_pg_log_mb: int = Field(
        default=64, ge=0,
        description="the embedded tenant PostgreSQL server's own log (server.log) is on an ext4 image of this size, "
        "so no tenant can fill the host's disk through it (root only); trimmed to its newest lines at each start "
        "and while `inkmcp serve` runs. 0: not limited",
    )  # fmt: skip


def server_config() -> str:
    """The tenant server's settings this module relies on (EmbeddedPostgres writes them into inkmcp.conf)."""
    return f"max_wal_size = {MAX_WAL_MB}MB\nmin_wal_size = 32MB\n"


def _server_user() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    from inkmcp.store.embedded import SYSTEM_USER, _ensure_system_user

    user = _ensure_system_user(SYSTEM_USER)
    return user.pw_uid, user.pw_gid


def tablespace_disks(data_dir: Path, settings: TenantDiskSettings | None = None, *, reserve_mb: int = 2048,
                     overcommit: float = 1.0) -> NamedDisks:
    """The tenant databases' images of the data dir `data_dir` (INKMCP_DATA_DIR). `reserve_mb`/`overcommit`:
    INKMCP_DISK_RESERVE_MB / _OVERCOMMIT (Settings), for new images; mounting existing ones needs neither."""
    if settings is None:
        from inkmcp.errors import settings_from_env

        settings = settings_from_env(TenantDiskSettings, "INKMCP_", "inkmcp/store/tenant_disks.py")
    return NamedDisks(Path(data_dir) / "compute", KIND, Path(data_dir) / "pg" / "tablespaces",
                      size_mb=settings.tenant_pg_disk_mb, setting=SETTING, what="tenant database",
                      owner=_server_user(), reserve_mb=reserve_mb, overcommit=overcommit,
                      headroom_mb=settings.tenant_pg_disk_headroom_mb)  # fmt: skip


def server_disks(pgdata: Path) -> NamedDisks | None:
    """The images of the tenant server on `pgdata` when it is a data dir's embedded one (`<data>/pg/tenants`)."""
    pgdata = Path(pgdata).absolute()
    if pgdata.name != "tenants" or pgdata.parent.name != "pg":
        return None
    return tablespace_disks(pgdata.parent.parent)


def mount_tablespaces(pgdata: Path) -> int:
    """Before the tenant server starts: every tenant database's image mounted (its tablespace reachable). A server
    started without them would fail its crash recovery, or its tenants' first queries, for want of their files."""
    prepare_log(pgdata)
    disks = server_disks(pgdata)
    if disks is None or not disks.names():
        return 0
    mounted = disks.mount_all()
    log.info("tenant databases' filesystems mounted: %d (%s)", mounted, disks.note())
    return mounted


def release_headroom(pgdata: Path) -> None:
    """Right before the postmaster starts (it runs crash recovery first if it was not shut down cleanly)."""
    disks = server_disks(pgdata)
    for name in disks.names() if disks is not None and disks.enforced else ():
        try:
            disks.release_headroom(name)
        except OSError as exc:
            log.warning("could not release the headroom of tenant database %s: %s", name, exc)


def has_headroom(pgdata: Path) -> bool:
    """--- flakehunt: whether the server's tenant databases have headroom (then `EmbeddedPostgres.start` refuses
    tenants' connections from its release until `keep_headroom` took it back)."""
    disks = server_disks(pgdata)
    return disks is not None and disks.enforced and disks.headroom_mb > 0 and bool(disks.names())


def keep_headroom(pgdata: Path) -> int:
    """Once the server is ready (and every few seconds while `serve` runs): each image's headroom taken back;
    returns the bytes held on all of them."""
    disks = server_disks(pgdata)
    held = 0
    for name in disks.names() if disks is not None and disks.enforced else ():
        try:
            held += disks.keep_headroom(name)
        except OSError as exc:
            log.warning("could not take back the headroom of tenant database %s: %s", name, exc)
    return held


def open_each_database(pgdata: Path, conninfo: str) -> int:
    """After a start, before the headroom is taken back: one superuser connection to each tenant database on an
    image, so PostgreSQL writes its relation-cache init file (removed at every start) while there is room. A tenant
    whose disk was full could not connect at all otherwise ("FATAL: could not write init file: No space left on
    device"), so not even to delete rows. Returns how many were opened."""
    import psycopg

    disks = server_disks(pgdata)
    names = set(disks.names()) if disks is not None and disks.enforced else set()
    if not names:
        return 0
    opened = 0
    for name in sorted(names):
        try:
            with psycopg.connect(f"{conninfo} dbname={name}", connect_timeout=10) as conn:
                conn.execute("SELECT 1")
            opened += 1
        except psycopg.Error as exc:  # a database being dropped, or not made yet: nothing to warm
            log.info("could not open tenant database %s after the start: %s", name, str(exc).strip()[:200])
    return opened


def unmount_tablespaces(pgdata: Path) -> int:
    """After the tenant server stopped: its tenant databases' images unmounted (and its log's)."""
    disks = server_disks(pgdata)
    if disks is None:
        return 0
    logs = log_disk(pgdata.absolute().parent.parent)
    return disks.unmount_all() + logs.unmount_all()


# --- the tenant server's own log, on a small image of its own ------------------------------------------------------
# Why (tenantdisk2): `log_min_messages = fatal` kept a tenant's RAISE loops out of server.log, and with them the
# server's own LOG and ERROR lines (a backend's OOM kill, a failed checkpoint, a failed crash recovery's cause). Now
# the server logs at PostgreSQL's default level (WARNING), every tenant ROLE has `log_min_messages = fatal` (set by
# the superuser; a tenant cannot reset it: it is a superuser-only parameter), so its own sessions' RAISEs are not
# logged; what a tenant can still get logged (an autovacuum worker evaluating its index expressions, connection
# attempts) lands on this image: full means lines lost, never the host's disk. Trimmed to its newest part at each
# start and by `supervise`.

LOG_KIND = "tenant-pg-log"
LOG_NAME = "server"
LOG_KEEP = 2**20  # bytes of the newest lines kept in server.log.1 when server.log is trimmed


def log_disk(data_dir: Path, settings: TenantDiskSettings | None = None) -> NamedDisks:
    """The image holding the tenant server's log (`<data>/pg/logs/server/`)."""
    if settings is None:
        from inkmcp.errors import settings_from_env

        settings = settings_from_env(TenantDiskSettings, "INKMCP_", "inkmcp/store/tenant_disks.py")
    return NamedDisks(Path(data_dir) / "compute", LOG_KIND, Path(data_dir) / "pg" / "logs",
                      size_mb=settings.tenant_pg_log_mb, setting="INKMCP_TENANT_PG_LOG_MB",
                      what="tenant server log", owner=_server_user(), inner=None)  # fmt: skip


def log_file(pgdata: Path) -> Path | None:
    """Where the data dir's tenant server on `pgdata` logs; None for any other server (its pgdata/server.log)."""
    pgdata = Path(pgdata).absolute()
    if pgdata.name != "tenants" or pgdata.parent.name != "pg":
        return None
    return pgdata.parent / "logs" / LOG_NAME / "server.log"


def prepare_log(pgdata: Path) -> None:
    """Before the tenant server starts: its log's image mounted (created the first time; refused by the host's
    admission or without root it is a plain directory, unlimited, said in the log), trimmed, and
    `pgdata/server.log` a link to it (where older InkMCPs and operators look)."""
    path = log_file(pgdata)
    if path is None:
        return
    disks = log_disk(pgdata.absolute().parent.parent)
    try:
        if disks.ensure(LOG_NAME) is None:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            if (owner := _server_user()) is not None:
                os.chown(path.parent, *owner)
    except (OSError, ProviderError) as exc:
        log.warning("the tenant server's log has no disk of its own (%s); it is on the data dir's filesystem", exc)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (owner := _server_user()) is not None:
            os.chown(path.parent, *owner)
    trim_log(path, disks.size_mb * 2**20 // 2 if disks.enforced else 64 * 2**20)
    old = Path(pgdata).absolute() / "server.log"
    if old.is_symlink():
        return
    if old.exists():  # a log from before: kept beside, out of the way
        os.replace(old, old.with_name("server.log.before-log-disk"))
    old.symlink_to(path)


def trim_log(path: Path, limit: int) -> bool:
    """Above `limit` bytes: the newest LOG_KEEP bytes copied to `server.log.1`, server.log emptied in place (the
    server appends, O_APPEND, so it goes on at the new end). True when trimmed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return False
    if size <= limit:
        return False
    with open(path, "rb") as f:
        f.seek(max(0, size - LOG_KEEP))
        tail = f.read(LOG_KEEP)
    rotated = path.with_name(path.name + ".1")
    rotated.write_bytes(tail)
    os.truncate(path, 0)
    log.info("trimmed the tenant server's log %s (%d MiB; its newest MiB is in %s)", path, size // 2**20, rotated)
    return True


async def supervise(server: EmbeddedPostgres, interval: float = 2.0, headroom_every: int = 5) -> None:
    """While `inkmcp serve` runs: the tenant server started again when it is down (a postmaster whose crash
    recovery failed exits; so does one killed), its headroom released for that start; the headroom taken back
    on every image every `headroom_every` rounds otherwise. Runs until cancelled; a failed start is logged and
    tried again next round."""
    rounds = 0
    while True:
        await asyncio.sleep(interval)
        rounds += 1
        try:
            if await asyncio.to_thread(lambda: server.pid) is None:
                log.warning("the tenant PostgreSQL server %s is not running; starting it again", server.pgdata)
                await asyncio.to_thread(server.start)
                log.warning("the tenant PostgreSQL server %s runs again (pid %s)", server.pgdata, server.pid)
                continue
            try:  # --- redteam4
                await asyncio.to_thread(release_notify_queue, server)
            except Exception as exc:  # logged; the next round looks again
                log.warning("could not check the tenant PostgreSQL server's NOTIFY queue: %s", exc)
            if rounds % headroom_every == 0:
                await asyncio.to_thread(keep_headroom, server.pgdata)
                if (path := log_file(server.pgdata)) is not None:
                    limit = log_disk(server.pgdata.parent.parent).size_mb * 2**20 // 2 or 64 * 2**20
                    await asyncio.to_thread(trim_log, path, limit)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # logged; the next round tries again
            log.error("the tenant PostgreSQL server %s could not be started again: %s", server.pgdata, exc)


# --- redteam4: the NOTIFY queue. It is the whole server's (every database's notifications, in pgdata/pg_notify on the
# data dir's filesystem, up to 8 GB), and it is freed only up to the position of the listener furthest behind. A
# listener that stops reading (LISTEN, then a transaction left open, a long query, or a client that never reads its
# socket) holds it for everyone: mallory's free-tier role wrote 105 MiB there in 7.5 s (1.3 % of it) with her other
# connection idle in a transaction (she may SET idle_in_transaction_session_timeout = 0). At 100 % every tenant's
# NOTIFY fails ("too many notifications in the NOTIFY queue") and 8 GB of the control plane's filesystem are gone.
# So past NOTIFY_QUEUE_LIMIT of it, every tenant backend that has not been idle for NOTIFY_STALL_S (in a transaction,
# running, or blocked writing to its client) is ended: one of them holds the queue (PostgreSQL does not say which).
# tests/security/test_redteam4_notify_queue.py.
NOTIFY_QUEUE_LIMIT = 0.01  # of the queue's 8 GB: ~80 MiB
NOTIFY_STALL_S = 10


def release_notify_queue(server: EmbeddedPostgres, limit: float = NOTIFY_QUEUE_LIMIT,
                         stall_s: int = NOTIFY_STALL_S) -> list[int]:
    """The tenant backends ended because the NOTIFY queue was past `limit` (comment above); [] when it was not."""
    import psycopg

    url = server.socket_url(driver=None).get_secret_value()
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        row = conn.execute("SELECT pg_notification_queue_usage()").fetchone()
        if row is None or float(row[0]) < limit:
            return []
        ended = conn.execute(
            "SELECT a.pid, a.usename, a.state, a.wait_event, pg_terminate_backend(a.pid) FROM pg_stat_activity a "
            "JOIN pg_roles r ON r.oid = a.usesysid WHERE a.backend_type = 'client backend' AND NOT r.rolsuper "
            "AND a.state_change < now() - make_interval(secs => %s) "
            "AND (a.state <> 'idle' OR a.wait_event = 'ClientWrite')", (stall_s,)).fetchall()
    for pid, user, state, wait, _ in ended:
        log.warning("the tenant PostgreSQL server's NOTIFY queue is %.1f%% full: ended %s's backend %s (%s, %s for "
                    "over %s s), which may hold it for every tenant", float(row[0]) * 100, user, pid, state, wait,
                    stall_s)
    return [pid for pid, _, _, _, done in ended if done]
# --- end


def stop_tenant_server(data_dir: Path) -> str:
    """`inkmcp stop-tenant-server`: the data dir's embedded tenant server stopped (`pg_ctl -m fast`) and its images
    unmounted, for when no `inkmcp serve` follows: a SIGKILLed serve leaves them (its successor would adopt them),
    and so does a stopped serve that had adopted them. Refused while a serve runs on the data dir (it uses them).
    Returns what was done, for the operator."""
    import fcntl

    from inkmcp.errors import InkError
    from inkmcp.store.embedded import EmbeddedPostgres

    data_dir = Path(data_dir).absolute()
    lock = data_dir / "serve.lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InkError(f"`inkmcp serve` runs on {data_dir} and uses the tenant server",
                           argument="--data-dir", fix="stop `inkmcp serve` first (or leave the server to it)") from None
        finally:
            os.close(fd)
    port_file = data_dir / "pg" / "tenants.port"
    if not port_file.exists():
        return f"no embedded tenant server in {data_dir}"
    server = EmbeddedPostgres(data_dir / "pg" / "tenants", port=int(port_file.read_text().strip()))
    pid = server.pid
    server.stop()  # its images are unmounted once it stopped
    left = [p for p in _mounts_under(data_dir / "pg")]
    done = f"stopped the tenant server (pid {pid})" if pid is not None else "the tenant server was not running"
    return done + (f"; still mounted: {', '.join(left)}" if left else "; its disks are unmounted")


def _mounts_under(path: Path) -> list[str]:
    from inkmcp.providers.compute.local.diskquota import mount_points

    prefix = os.path.realpath(path) + "/"
    return sorted(p for p in mount_points() if p.startswith(prefix))
