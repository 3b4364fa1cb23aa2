"""`inkmcp backup restore --from PATH`: all or nothing, into an empty (or missing) data dir, server stopped.

Order, so that a refusal or a failure anywhere writes nothing where the data dir goes:

1. refuse a running server (its serve.lock is held) and a data dir with anything in it;
2. verify the whole set (manifest.verify: every checksum, the signature, the format and schema revision);
3. build the data dir in a private temporary directory next to it (same filesystem): fresh embedded servers filled
   from the dumps, the tenant port, the keys, the Redis add-ons, the sources;
4. stop those servers, fsync, and rename the directory into place: the one step that makes it appear.

A failure in 3 removes the temporary directory. The next `inkmcp serve` migrates the control plane if the set is
from an older InkMCP, starts the tenant server on its recorded port, starts the Redis add-ons and rebuilds every
live service from its recorded commit (sources.rebuild_checkout) at the URL it had.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from inkmcp.backup import pgtools, sources
from inkmcp.backup.manifest import Verified, verify
from inkmcp.errors import InkError
from inkmcp.settings import Settings
from inkmcp.store.crypto import ENV_VAR, KEY_FILE_RELATIVE, MAC_KEY_RELATIVE, _write_keys
from inkmcp.store.embedded import EmbeddedPostgres

Step = Callable[[str], None]


@dataclass
class Restored:
    data_dir: Path
    seconds: float
    verified: Verified
    keys_written: bool


def serve_lock_holder(data: Path) -> str | None:
    """The pid in serve.lock when an `inkmcp serve` holds it, else None (the lock is an flock, gone with its
    process: a stale file left by a crash does not count)."""
    path = data / "serve.lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.read(fd, 32).decode(errors="replace").strip() or "?"
        return None
    finally:
        os.close(fd)


def _check_target(data: Path) -> None:
    holder = serve_lock_holder(data)
    if holder is not None:
        raise InkError(f"`inkmcp serve` (pid {holder}) is running on {data}; nothing was restored.",
                       argument="INKMCP_DATA_DIR", fix="stop it first, then restore into an empty data dir")
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise InkError(f"the data dir {data} is not empty; a restore never overwrites an installation.",
                       argument="INKMCP_DATA_DIR",
                       fix="point INKMCP_DATA_DIR (or --data-dir) at an empty or missing directory, or move this one "
                       "aside first")


def _quiet(_: str) -> None:
    return None


def restore_backup(settings: Settings, path: Path, *, keys_from: Path | None = None, step: Step = _quiet,
                   progress: Callable[[int], None] | None = None,
                   total: Callable[[int], None] | None = None) -> Restored:
    t0 = time.monotonic()
    data = settings.data_dir
    _check_target(data)
    if settings.database_url is not None or settings.tenant_database_url is not None:
        raise InkError("restore fills the embedded servers of a one-machine installation, and INKMCP_DATABASE_URL or "
                       "INKMCP_TENANT_DATABASE_URL is set.", argument="INKMCP_DATABASE_URL",
                       fix="unset them for the restore, or restore external servers as docs/backup.md \"External "
                       "servers\" says: each tenant database logged in as its owner "
                       "(inkmcp.backup.pgtools.restore_database), never a plain pg_restore as the superuser")
    env = os.environ.get(ENV_VAR, "").strip()
    env_keys = [k.strip() for k in env.split(",") if k.strip()] if env else None
    step("verifying the set")
    checked = verify(path, keys_from=keys_from, env_keys=env_keys, progress=progress, total=total)
    m, keys = checked.manifest, checked.keys
    assert keys is not None
    root = path.absolute()

    data.parent.mkdir(parents=True, exist_ok=True)
    tmp = data.parent / f".{data.name}.restore-{os.getpid()}-{int(time.time())}"
    tmp.mkdir(mode=0o700)
    servers: list[EmbeddedPostgres] = []
    try:
        (tmp / "pg").mkdir(mode=0o700)
        control = EmbeddedPostgres(tmp / "pg" / "control")
        tenants = EmbeddedPostgres(tmp / "pg" / "tenants")  # socket only here; serve adds its recorded port
        servers.extend([control, tenants])

        def fill_control() -> None:
            control.start()
            pgtools.restore_into(control.url(database="postgres", driver=None).get_secret_value(),
                                 root / m.control_file)
            control.stop()

        def fill_tenants() -> None:
            tenants.start()
            pgtools.restore_globals(tenants.socket_url(driver=None).get_secret_value(), root / m.tenant_globals)
            template1 = tenants.socket_url(database="template1", driver=None).get_secret_value()
            # --- restore2: each tenant database is restored logged in as its owner (pgtools.restore_database
            # says why); the owners are lent a one-time login for it and put back exactly as the globals made them
            with pgtools.OwnerLogins(template1) as logins:
                logins.open([root / db.file for db in m.tenant_databases])
                with ThreadPoolExecutor(max_workers=3) as dbs:  # independent databases, restored side by side
                    for future in [dbs.submit(pgtools.restore_database, template1, root / db.file, logins)
                                   for db in m.tenant_databases]:
                        future.result()
            _harden(tenants.socket_url(driver=None).get_secret_value())
            tenants.stop()
            if m.tenant_port is not None:
                (tmp / "pg" / "tenants.port").write_text(str(m.tenant_port))  # as app._stable_port writes it

        # The two servers are independent: initialised and filled side by side (initdb dominates a small restore).
        jobs = [fill_control]
        if m.tenant_port is not None or m.tenant_databases:
            jobs.append(fill_tenants)
        step(f"restoring the control plane and {len(m.tenant_databases)} tenant database(s)")
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(job) for job in jobs]:
                future.result()

        keys_written = False
        if not env_keys:
            _write_keys(tmp / KEY_FILE_RELATIVE, keys.encryption_keys)
            keys_written = True
        legacy = keys.legacy_mac_key
        if legacy is not None:
            fd = os.open(tmp / MAC_KEY_RELATIVE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(legacy)

        if m.redis:
            step(f"restoring {len(m.redis)} Redis add-on(s)")
            _restore_redis(root / "redis", tmp / "redis", m.redis)
        from inkmcp.backup.create import DB_BACKUPS

        if (root / DB_BACKUPS).is_dir():
            step("restoring the tenant database backups")
            shutil.copytree(root / DB_BACKUPS, tmp / DB_BACKUPS)
        for mirror in m.sources:
            step(f"restoring the sources of project {mirror.project_id[:8]}")
            sources.extract(root / mirror.file, tmp / sources.RESTORED_SOURCES / mirror.project_id)
        if (tmp / "work").exists():
            os.chmod(tmp / "work", 0o700)
            os.chmod(tmp / sources.RESTORED_SOURCES, 0o700)

        step("making the data dir appear")
        from inkmcp.backup.create import _fsync_dir, _fsync_tree

        if (tmp / "secrets").exists():
            _fsync_tree(tmp / "secrets")
        os.chmod(tmp, 0o711)  # noqa: S103 - as `inkmcp serve` keeps it (app._open)
        _check_target(data)  # nobody started one meanwhile
        if data.exists():
            data.rmdir()  # empty (checked): rename needs the name free
        os.rename(tmp, data)
        _fsync_dir(data.parent)
    except BaseException:
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Restored(data_dir=data, seconds=time.monotonic() - t0, verified=checked, keys_written=keys_written)


def _harden(admin_url: str) -> None:
    """What the Postgres provider does at every provision (REVOKE on the shared databases), which lives in no
    dump of template1: tenants must not connect to databases not theirs."""
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        for shared in ("postgres", "template1"):
            conn.execute(f'REVOKE CONNECT, TEMPORARY ON DATABASE "{shared}" FROM PUBLIC')


def _restore_redis(src: Path, dest: Path, idents: list[str]) -> None:
    from inkmcp.providers.database.redis import _ensure_user

    user = _ensure_user()
    dest.mkdir(mode=0o711, parents=True)  # instances are 0700 each, owned by their server's user
    for ident in idents:
        shutil.copytree(src / ident, dest / ident)
        os.chmod(dest / ident, 0o700)
        if user is not None:
            for dirpath, dirs, files in os.walk(dest / ident):
                for n in [dirpath, *(os.path.join(dirpath, x) for x in [*dirs, *files])]:
                    os.chown(n, user.pw_uid, user.pw_gid)

