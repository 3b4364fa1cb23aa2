"""`inkmcp backup create`: one self-contained, consistent backup set of a one-machine InkMCP, while it serves.

What goes in (docs/backup.md has the operator's view):

* control.dump     the control-plane database (pg_dump, custom format) read in one snapshot: accounts, API key
                   hashes, projects, services, deployments and their history, env vars and database credentials
                   (as the `*_enc` ciphertext they are stored as: nothing is decrypted), the audit log, the MAC key
                   (sealed in `shared_keys`) and the tenant server's recorded identity;
* tenants/         the tenant Postgres server: `globals.sql` (roles with their SCRAM verifiers, so every tenant
                   DATABASE_URL keeps its password) and one dump per database, each in its own snapshot; the
                   `postgres` database is included (it holds the server's identity the control plane checks);
                   plus the server's port (`tenants.port`), which every tenant URL embeds;
* redis/<ident>/   each Redis add-on: its port, ACL file (password hashes only) and append-only files;
* sources/         the git objects of the live deployments' commits (sources.py), so services are rebuilt
                   without their source;
* backups/databases/  the per-project tenant database dumps (item 2), when kept at their default place;
* keys/keys.json   the encryption keys (and a legacy mac.key), unless `--keys-to` writes them elsewhere.

Not included, rebuilt or re-made instead: builds, virtualenvs and checkouts (rebuilt from the recorded commits at
the first `inkmcp serve`), logs, the replica id, and the embedded servers' own files (`pg/*/`, re-initialised by
the restore and filled from the dumps).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from inkmcp.backup import pgtools, sources
from inkmcp.backup.manifest import (
    FORMAT,
    KEYS_IN_SET,
    FileEntry,
    KeysFile,
    Manifest,
    SourceMirror,
    TenantDatabase,
    fingerprint,
    list_files,
    sha256_file,
    write_manifest,
)
from inkmcp.errors import InkError
from inkmcp.providers.database.postgres import libpq_url
from inkmcp.settings import Settings
from inkmcp.store.crypto import BOX_CHECK_ROW, ENV_VAR, KEY_FILE_RELATIVE, MAC_ENV_VAR, MAC_KEY_RELATIVE, SecretBox
from inkmcp.store.embedded import EmbeddedPostgres

Step = Callable[[str], None]
SET_PREFIX = "inkmcp-backup-"
DB_BACKUPS = Path("backups") / "databases"
"""Per-project dumps of tenant databases (issue 10 item 2, inkmcp/dbbackup) at their default place: their records
are in the control plane, so the files travel with it."""


@dataclass
class Created:
    path: Path
    size: int
    seconds: float
    manifest: Manifest
    keys_path: Path | None


def _quiet(_: str) -> None:
    return None


@contextlib.contextmanager
def running(server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    """The embedded server, started for the duration if nobody runs it (a stopped `inkmcp serve`)."""
    started = server.pid is None
    server.start()
    try:
        yield server
    finally:
        if started:
            server.stop()


def read_keys(data_dir: Path) -> tuple[list[str], bool]:
    """The installation's encryption keys and whether they come from INKMCP_ENCRYPTION_KEYS. Never creates a key
    file: a backup of an installation without keys would be unreadable."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return [k.strip() for k in env.split(",") if k.strip()], True
    from inkmcp.store.crypto import _read_keys

    key_file = data_dir / KEY_FILE_RELATIVE
    try:
        keys = _read_keys(key_file)
    except FileNotFoundError:
        keys = []
    if not keys:
        raise InkError(f"no encryption keys: {key_file} is missing or empty and {ENV_VAR} is unset.",
                       argument="INKMCP_DATA_DIR",
                       fix=f"point INKMCP_DATA_DIR at the installation to back up, or set {ENV_VAR} to its keys")
    return keys, False


def _set_name(to: Path) -> str:
    base = SET_PREFIX + datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name, n = base, 1
    while (to / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _control_url(settings: Settings, stack: contextlib.ExitStack) -> tuple[str, str]:
    if settings.database_url is not None:
        return libpq_url(settings.database_url.get_secret_value()), "external"
    pgdata = settings.data_dir / "pg" / "control"
    if not (pgdata / "PG_VERSION").exists():
        raise InkError(f"{settings.data_dir} holds no InkMCP installation (no {pgdata}).", argument="INKMCP_DATA_DIR",
                       fix="point INKMCP_DATA_DIR (or --data-dir) at the data dir of the InkMCP to back up")
    control = stack.enter_context(running(EmbeddedPostgres(pgdata)))
    return control.url(database="postgres", driver=None).get_secret_value(), "embedded"


def _tenant_url(settings: Settings, stack: contextlib.ExitStack) -> tuple[str | None, str, int | None]:
    if settings.tenant_database_url is not None:
        return libpq_url(settings.tenant_database_url.get_secret_value()), "external", None
    port_file = settings.data_dir / "pg" / "tenants.port"
    pgdata = settings.data_dir / "pg" / "tenants"
    if not port_file.exists() or not (pgdata / "PG_VERSION").exists():
        return None, "embedded", None  # never started: no tenant databases yet
    port = int(port_file.read_text().strip())
    tenants = stack.enter_context(running(EmbeddedPostgres(pgdata, port=port)))
    return tenants.socket_url(driver=None).get_secret_value(), "embedded", port


_LIVE_SQL = """
SELECT p.id::text, d.commit FROM services s
JOIN deployments d ON d.id = s.live_deployment_id JOIN projects p ON p.id = s.project_id
WHERE d.commit IS NOT NULL
"""


def _check_keys(conn: object, keys: list[str]) -> None:
    """Refuse to write a set whose keys cannot read its own database (it could never be restored usefully)."""
    row = conn.execute("SELECT value_enc FROM shared_keys WHERE name = %s", (BOX_CHECK_ROW,)).fetchone()  # type: ignore[attr-defined]
    if row is None:
        return
    from inkmcp.store.crypto import DecryptionError

    try:
        SecretBox(keys).decrypt(bytes(row[0]))
    except DecryptionError:
        raise InkError("the encryption keys found here cannot read the control-plane database's secrets; a set "
                       "made with them could not be restored.", argument=ENV_VAR,
                       fix=f"run with the keys `inkmcp serve` uses ({ENV_VAR} or {KEY_FILE_RELATIVE})") from None


def _copy_redis(src: Path, dest: Path) -> None:
    """One instance's port, ACL file and append-only files. Writes reach the AOF file (not yet necessarily the
    disk) before Redis answers, so a copy taken now holds every acknowledged write; the AOF manifest is read
    before and after, and the copy repeated if a rewrite swapped files meanwhile."""
    for _attempt in range(5):
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in ("instance.json", "users.acl"):
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)
        aof = src / "appendonlydir"
        before = _aof_manifest(aof)
        if aof.is_dir():
            shutil.copytree(aof, dest / "appendonlydir", symlinks=False,
                            ignore=shutil.ignore_patterns("temp-*"))
        if _aof_manifest(aof) == before:
            return
    raise InkError(f"Redis instance {src.name} kept rewriting its append-only file during the copy",
                   fix="run `inkmcp backup create` again")


def _aof_manifest(aof: Path) -> bytes:
    found = sorted(aof.glob("*.manifest")) if aof.is_dir() else []
    return b"".join(p.read_bytes() for p in found)


def create_backup(settings: Settings, to: Path, *, keys_to: Path | None = None, step: Step = _quiet,
                  progress: Callable[[int], None] | None = None) -> Created:
    """Write one set under `to` (atomically: a `.partial` directory renamed when complete) and return it."""
    import inkmcp

    t0 = time.monotonic()
    data = settings.data_dir
    to = to.absolute()
    if to == data or data in to.parents:
        raise InkError(f"--to {to} is inside the data dir {data}: losing the machine would lose the backups too.",
                       argument="--to", fix="pass a directory outside INKMCP_DATA_DIR (another disk, ideally)")
    if keys_to is not None and keys_to.absolute() == to:
        raise InkError("--keys-to is the directory the set goes to: one copy would hold both.",
                       argument="--keys-to", fix="pass another directory (another disk or machine)")
    to.mkdir(parents=True, exist_ok=True)
    keys, keys_from_env = read_keys(data)
    name = _set_name(to)
    stage = to / f".{name}.partial"
    stage.mkdir(mode=0o700)
    set_id = uuid.uuid4().hex
    try:
        with contextlib.ExitStack() as stack:
            step("reaching the database servers (started for the backup if `inkmcp serve` is not running)")
            control_url, control_kind = _control_url(settings, stack)
            tenant_url, tenant_kind, tenant_port = _tenant_url(settings, stack)

            step("dumping the control plane (one snapshot)")
            with pgtools.snapshot(control_url) as (conn, snap, control_at):
                _check_keys(conn, keys)
                revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
                live = conn.execute(_LIVE_SQL).fetchall()
                pgtools.dump_database(control_url, stage / "control.dump", snap)
            if revision is None:
                raise InkError("the control-plane database has no schema revision (never migrated?)",
                               argument="INKMCP_DATA_DIR", fix="start `inkmcp serve` once, then back up")

            tenant_dbs: list[TenantDatabase] = []
            (stage / "tenants").mkdir()
            if tenant_url is not None:
                step("dumping the tenant server's roles")
                pgtools.dump_globals(tenant_url, stage / "tenants" / "globals.sql")
                for db in pgtools.databases(tenant_url):
                    step(f"dumping tenant database {db}")
                    url = _with_database(tenant_url, db)
                    with pgtools.snapshot(url) as (_, snap, at):
                        pgtools.dump_database(url, stage / "tenants" / f"{db}.dump", snap)
                    tenant_dbs.append(TenantDatabase(name=db, file=f"tenants/{db}.dump", snapshot_at=at))
            else:
                (stage / "tenants" / "globals.sql").write_text("-- no tenant server yet\n")
            if tenant_port is not None:
                (stage / "tenants" / "tenants.port").write_text(f"{tenant_port}\n")

            redis: list[str] = []
            # --- tenantdisk: each Redis instance directory is an image of its own, unmounted while InkMCP is stopped
            from inkmcp.providers.database.redis import redis_files_mounted

            stack.enter_context(redis_files_mounted(data / "redis"))
            # --- end tenantdisk
            for inst in sorted((data / "redis").glob("*/instance.json")):
                step(f"copying Redis add-on {inst.parent.name}")
                _copy_redis(inst.parent, stage / "redis" / inst.parent.name)
                redis.append(inst.parent.name)

            mirrors: list[SourceMirror] = []
            by_project: dict[str, list[str]] = {}
            for project_id, commit in live:
                by_project.setdefault(project_id, []).append(commit)
            for project_id, commits in sorted(by_project.items()):
                step(f"copying the sources of project {project_id[:8]}")
                (stage / "sources").mkdir(exist_ok=True)
                out = stage / "sources" / f"{project_id}.tar"
                found = sources.capture(data / "compute" / "projects" / project_id / "mirrors", sorted(set(commits)),
                                        stage / ".mirrors" / project_id, out)
                if found:
                    mirrors.append(SourceMirror(project_id=project_id, file=f"sources/{project_id}.tar",
                                                commits=found))
            shutil.rmtree(stage / ".mirrors", ignore_errors=True)

        db_backups = data / DB_BACKUPS
        if db_backups.is_dir() and any(db_backups.iterdir()):
            step("copying the tenant database backups")
            shutil.copytree(db_backups, stage / DB_BACKUPS, symlinks=False)

        legacy_mac = data / MAC_KEY_RELATIVE
        keys_file = KeysFile(set_id=set_id, encryption_keys=keys,
                             legacy_mac_key_b64=base64.b64encode(legacy_mac.read_bytes()).decode()
                             if legacy_mac.is_file() else None)
        keys_path: Path | None = None
        if keys_to is None:
            keys_file.write(stage / KEYS_IN_SET)
        else:
            keys_path = keys_to.absolute() / f"{name}.keys.json"

        step("checksumming")
        entries = []
        for rel in list_files(stage):
            size, digest = sha256_file(stage / rel, progress)
            entries.append(FileEntry(path=rel, size=size, sha256=digest))
        created = datetime.now(UTC)
        manifest = Manifest(
            format=FORMAT, set_id=set_id, inkmcp_version=inkmcp.__version__, schema_revision=revision[0],
            created_at=created, control_snapshot_at=control_at,
            point_in_time=(f"control plane as of {control_at.isoformat()} (one snapshot); each tenant database as of "
                           "its own snapshot_at (taken one after another, right after); Redis add-ons as copied "
                           "after the databases (every write they had acknowledged)"),
            control=control_kind, control_file="control.dump", tenant_server=tenant_kind, tenant_port=tenant_port,
            tenant_globals="tenants/globals.sql", tenant_databases=tenant_dbs, redis=redis, sources=mirrors,
            keys="in-set" if keys_to is None else "separate", keys_fingerprint=fingerprint(keys),
            mac_key_from_env=bool(os.environ.get(MAC_ENV_VAR, "").strip()), files=entries,
        )
        write_manifest(stage, manifest, keys)
        _fsync_tree(stage)
        if keys_path is not None:
            keys_file.write(keys_path)
        final = to / name
        os.rename(stage, final)
        _fsync_dir(to)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    size = sum(e.size for e in entries)
    if keys_from_env:
        step(f"note: the keys came from {ENV_VAR}; they are in the set's keys too")
    return Created(path=final, size=size, seconds=time.monotonic() - t0, manifest=manifest, keys_path=keys_path)


def _with_database(url: str, db: str) -> str:
    from urllib.parse import quote, urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(db, safe=""), parts.query, parts.fragment))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Flush every file to disk, and make the tree private (0700 dirs, 0600 files): a set holds the keys (unless
    --keys-to) and the password verifiers of every tenant role."""
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            fd = os.open(os.path.join(dirpath, f), os.O_RDONLY)
            try:
                os.fchmod(fd, 0o600)
                os.fsync(fd)
            finally:
                os.close(fd)
        os.chmod(dirpath, 0o700)
        _fsync_dir(Path(dirpath))


def prune(to: Path, keep: int) -> list[Path]:
    """Delete the oldest complete sets in `to` beyond `keep` (names sort by creation time); return them."""
    sets = sorted(p for p in to.glob(SET_PREFIX + "*") if p.is_dir() and (p / "manifest.json").is_file())
    old = sets[:-keep] if keep > 0 else sets
    for p in old:
        shutil.rmtree(p, ignore_errors=True)
    return old

