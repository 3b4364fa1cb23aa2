"""Backups of each project's managed Postgres: scheduled and on-demand dumps with retention, and restores that can
be undone (the current state is dumped first, as a `pre-restore` backup).

What is backed up, by where the database lives (`databases.provider`):

* `postgres`, our own tenant server (the embedded one under <data_dir>/pg/tenants, or INKMCP_TENANT_DATABASE_URL):
  `pg_dump -Fc` over the admin connection, into `<INKMCP_DB_BACKUP_DIR>/<project id hex>/<backup id hex>.dump`
  (directories 0700, files 0600, owned by the server's user: tenant apps run as other users and cannot read them;
  names come from ids only). Scheduled every INKMCP_DB_BACKUP_INTERVAL_S, INKMCP_DB_BACKUP_KEEP kept per kind.
* `neon`: not dumped by InkMCP. Neon keeps the database's history itself (point-in-time restore and branches,
  within the plan's history window); the operator restores there. The tools say so.
* `coolify` (Coolify-managed Postgres on a run server): not dumped by InkMCP: the database is reachable only from
  that server's Docker network. The operator configures Coolify's scheduled database backups. The tools say so.
* `byo`: not ours to back up (it is the agent's own server); the tools say so.
* The Redis add-on: out of scope (a cache or queue by the add-on's contract; not backed up).

A restore never edits the live database in place: the backup is checked against its recorded size and SHA-256 and
its table of contents is read, the current state is dumped (`pre-restore`), the backup is restored into a scratch
database in one transaction as the tenant's role, and only then are the two databases swapped by renaming, in one
transaction. Any failure before the swap drops the scratch database and leaves the live one as it was. The swap
terminates the sessions on the old database; the project's live services are then restarted (blue/green, health
checked, as an env change does), so no app keeps a pool of dead connections or plans cached for the old tables.

Concurrency: every dump and restore of a database holds the tenant server's advisory lock for that database (the
one the provider's provision/drop take), so two restores of one database run one after the other (each undoable),
a scheduled dump never reads a database mid-swap, and a drop never races a restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.backup.manifest import sha256_file
from inkmcp.core.principal import Principal
from inkmcp.dbbackup import pgtools
from inkmcp.dbbackup.models import DatabaseBackup
from inkmcp.errors import InkError, InvalidArgument, NotFound, ProviderError, scrub_paths, settings_from_env
from inkmcp.providers.database.postgres import _LOCK_CLASS, libpq_url
from inkmcp.store.models import Database, Project, Service

log = logging.getLogger(__name__)
Progress = Callable[[str], Awaitable[None]]
MAX_LIST = 50
_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class DatabaseBackupSettings(BaseSettings):
    """`INKMCP_DB_BACKUP_*`: dumps of the projects' managed Postgres on our own tenant server."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_DB_BACKUP_", extra="ignore")

    interval_s: float = Field(default=86400.0, ge=0, description="seconds between scheduled dumps of each "
                              "database (default daily); 0 = no scheduled dumps (manual ones still work)")
    keep: int = Field(default=7, ge=1, le=1000, description="dumps kept per database and kind (scheduled, manual, "
                      "pre-restore are counted apart, so scheduled dumps never push out a restore's undo)")
    dir: Path | None = Field(default=None, description="where dumps go; default <INKMCP_DATA_DIR>/backups/databases")
    timeout_s: float = Field(default=3600.0, gt=0, description="longest one pg_dump or pg_restore may run")

    def root(self, data_dir: Path) -> Path:
        return self.dir if self.dir is not None else data_dir / "backups" / "databases"


class BackupView(BaseModel):
    id: str
    created_at: datetime
    kind: str = Field(description="scheduled, manual or pre-restore")
    status: str = Field(description="ok (restorable), running or failed")
    size_bytes: int | None


class BackupList(BaseModel):
    project: str
    backups: list[BackupView] = Field(description="newest first")
    total: int
    truncated: bool
    note: str
    # --- mcpbudget (issue 13): database_backups(create=true) answers with the list and the dump it just made
    created: BackupView | None = Field(default=None, description="the dump made by this call (create=true)")
    # --- end


class BackupMade(BaseModel):
    project: str
    backup: BackupView
    note: str


class RestoreResult(BaseModel):
    project: str
    restored: str = Field(description="the backup id now live")
    undo_backup_id: str = Field(description="pre-restore backup of the state before: restore it to undo")
    restarted: list[str] = Field(description="services restarted on the restored database")
    note: str


def _view(row: DatabaseBackup) -> BackupView:
    return BackupView(id=str(row.id), created_at=row.created_at, kind=row.kind, status=row.status,
                      size_bytes=row.size_bytes)


NOT_OURS = {
    "byo": "this project's database is bring-your-own: InkMCP does not back it up; back it up where it is hosted",
    "neon": "this project's database is hosted on a service that keeps its own point-in-time history (restore to "
            "any moment in its history window); InkMCP does not dump it: ask the operator to restore it there",
    "coolify": "this project's database runs on its app server under Coolify, which backs it up (Coolify's "
               "scheduled database backups); InkMCP does not dump it: ask the operator to restore it there",
}
"""What an agent is told for a database whose backups are not InkMCP's (see the module docstring)."""


# --- mender7: a restore keeps the live database's own settings (see _swap). Catalog rows copied exactly (ALTER
# DATABASE SET would re-quote list values) by the superuser's session: no tenant code runs in a catalog write.
_KEEP_DATABASE_SETTINGS = """
INSERT INTO pg_catalog.pg_db_role_setting (setdatabase, setrole, setconfig)
SELECT n.oid, s.setrole, s.setconfig FROM pg_catalog.pg_db_role_setting s
JOIN pg_catalog.pg_database l ON l.oid = s.setdatabase AND l.datname = %(live)s
JOIN pg_catalog.pg_database n ON n.datname = %(scratch)s
"""
_KEEP_DATABASE_LIMITS = """
UPDATE pg_catalog.pg_database d SET datconnlimit = l.datconnlimit, datacl = l.datacl
FROM pg_catalog.pg_database l WHERE d.datname = %(scratch)s AND l.datname = %(live)s
"""


class DatabaseBackupService:
    """Dumps, lists and restores the managed Postgres of projects on our own tenant server.

    `admin_url`: the tenant server's superuser URL (the provider's). `deploys` (optional): restarts a project's live
    services after a restore (`DeployService.apply_env`). `audit` (optional): records backups and restores."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], *, projects: Any, admin_url: SecretStr,
                 root: Path, settings: DatabaseBackupSettings | None = None, deploys: Any = None,
                 audit: Any = None, databases: Any = None) -> None:
        self._sessions = sessions
        self._projects = projects
        self._admin = libpq_url(admin_url.get_secret_value())
        self.root = root
        self.settings = settings or DatabaseBackupSettings()
        self._deploys = deploys
        self._audit = audit
        # --- attacker2: `databases` (core.databases.DatabaseService) gives a restore the tenant's own login
        # (`login_of`); without it restores are refused (pgtools.restore says why the superuser must not restore)
        self._databases = databases
        # --- redteam3: the host's disk reserve (_check_room); None: no check (a caller without a data dir)
        self.reserve: tuple[Path, int, float] | None = None

    # ------------------------------------------------------------------------------------------ agent operations
    async def list(self, p: Principal, project_name: str, limit: int = 10) -> BackupList:
        if not 1 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit={limit} is out of range.", argument="limit", fix=f"pass 1..{MAX_LIST}")
        project = await self._projects.get(p, project_name)
        db = await self._database(project.id)
        async with self._sessions() as s:
            total = (await s.execute(select(func.count()).select_from(DatabaseBackup)
                                     .where(DatabaseBackup.project_id == project.id))).scalar_one()
            rows = (await s.execute(select(DatabaseBackup).where(DatabaseBackup.project_id == project.id)
                                    .order_by(DatabaseBackup.created_at.desc(), DatabaseBackup.id)
                                    .limit(limit))).scalars().all()
        if db is None:
            note = f"project {project.name!r} has no Postgres database now; provision_database to restore into one"
        elif db.provider != "postgres":
            note = NOT_OURS.get(db.provider, f"InkMCP does not back up {db.provider} databases")
        else:
            every = self.settings.interval_s
            when = f"every {every / 3600:g} h" if every else "on request only (no schedule)"
            note = (f"dumped {when}, {self.settings.keep} kept per kind; restore_database_backup restores one "
                    "(the current state is saved first)")
        return BackupList(project=project.name, backups=[_view(r) for r in rows], total=total,
                          truncated=total > len(rows), note=note)

    # --- mcpbudget (issue 13): the one `database_backups` tool (listing and dumping were two tools; tools/list budget)
    async def backups(self, p: Principal, project_name: str, *, create: bool = False, limit: int = 10,
                      on_progress: Progress | None = None) -> BackupList:
        """The `database_backups` tool: the newest `limit` backups, after a dump made now when `create` (then the
        answer's `created` is that dump and its `note` says how to restore it). `limit` is checked before dumping,
        so a bad call leaves no dump behind."""
        if not 1 <= limit <= MAX_LIST:
            raise InvalidArgument(f"limit={limit} is out of range.", argument="limit", fix=f"pass 1..{MAX_LIST}")
        made = await self.backup(p, project_name, on_progress) if create else None
        listed = await self.list(p, project_name, limit)
        if made is not None:
            listed.created, listed.note = made.backup, made.note
        return listed
    # --- end

    async def backup(self, p: Principal, project_name: str, on_progress: Progress | None = None) -> BackupMade:
        async with self._audited(p, "backup_database", project_name, {}):
            project = await self._projects.get(p, project_name)
            db = self._ours(await self._database(project.id), project_name)
            async with self._locked(db.external_id):
                row = await self._dump(project.id, db, "manual", on_progress)
                await self._prune(project.id, "manual")
        return BackupMade(project=project.name, backup=_view(row),
                          note=f"restore_database_backup(project_name={project.name!r}, backup_id={str(row.id)!r}, "
                               f"confirm={project.name!r}) brings this state back")

    async def restore(self, p: Principal, project_name: str, backup_id: str, confirm: str,
                      on_progress: Progress | None = None) -> RestoreResult:
        if confirm != project_name:
            raise InvalidArgument("confirmation does not match.", argument="confirm",
                                  fix=f"pass confirm={project_name!r} (the project name) to replace its database")
        try:
            bid = uuid.UUID(backup_id)
        except ValueError:
            raise InvalidArgument(f"{backup_id!r} is not a backup id.", argument="backup_id",
                                  fix=f"pass an id from database_backups(project_name={project_name!r})"
                                  ) from None
        say = on_progress or _quiet
        async with self._audited(p, "restore_database_backup", project_name, {"backup_id": backup_id}):
            project = await self._projects.get(p, project_name)
            async with self._sessions() as s:
                row = (await s.execute(select(DatabaseBackup).where(
                    DatabaseBackup.id == bid, DatabaseBackup.project_id == project.id,
                    DatabaseBackup.status == "ok"))).scalar_one_or_none()
            if row is None:  # another account's id reads exactly like a missing one: its project is not this one
                raise NotFound(f"no backup {backup_id!r} in project {project_name!r}.", argument="backup_id",
                               fix=f"pass an id from database_backups(project_name={project_name!r})")
            db = await self._database(project.id)
            if db is None:
                raise InvalidArgument(f"project {project_name!r} has no database to restore into.",
                                      argument="project_name",
                                      fix=f"call provision_database(project_name={project_name!r}), then retry")
            db = self._ours(db, project_name)
            async with self._locked(db.external_id) as conn:
                # checked under the lock: a concurrent restore's retention cannot remove the file after the check
                await say(f"checking backup {backup_id}")
                async with self._sessions() as s:
                    if await s.get(DatabaseBackup, bid) is None:
                        raise NotFound(f"backup {backup_id!r} was just removed by retention (INKMCP_DB_BACKUP_KEEP).",
                                       argument="backup_id",
                                       fix=f"pass an id from database_backups(project_name={project_name!r})")
                path = await self._verified(row)
                await say("saving the current state as a pre-restore backup")
                undo = await self._dump(project.id, db, "pre-restore", on_progress)
                await say("restoring the backup into a scratch database")
                scratch = await self._restore_scratch(conn, db, path, backup_id, on_progress)
                await say("switching the project to the restored database")
                await self._swap(conn, db.external_id, scratch)
                await self._prune(project.id, "pre-restore")
            restarted, trouble = await self._restart(project, say)
        note = (f"database restored to backup {backup_id}; to undo, restore_database_backup(backup_id="
                f"{str(undo.id)!r})")
        if trouble:
            note += "; " + trouble
        return RestoreResult(project=project.name, restored=backup_id, undo_backup_id=str(undo.id),
                             restarted=restarted, note=note)

    # ------------------------------------------------------------------------------------------------ schedule
    async def run_due(self, project_ids: set[uuid.UUID] | None = None) -> int:
        """One scheduled pass: dump every database on our server whose last scheduled dump is older than the
        interval, prune, sweep the files of deleted projects. Returns how many dumps were made. `project_ids`
        limits the dumps to those projects (a shared store's other tenants are left alone, e.g. in tests)."""
        await self._fail_stale()
        query = select(Database).where(Database.provider == "postgres", Database.kind == "postgres")
        if project_ids is not None:
            query = query.where(Database.project_id.in_(project_ids))
        async with self._sessions() as s:
            dbs = (await s.execute(query)).scalars().all()
        made = 0
        for db in dbs:
            try:
                if not await self._due(db.project_id):
                    continue
                async with self._locked(db.external_id):
                    if not await self._due(db.project_id):  # another replica dumped it while we waited
                        continue
                    await self._dump(db.project_id, db, "scheduled", None)
                    await self._prune(db.project_id, "scheduled")
                made += 1
            except InkError as e:
                log.warning("scheduled dump of project %s failed: %s", db.project_id, e.render())
        await self._sweep()
        await self._sweep_databases()
        return made

    async def _due(self, project_id: uuid.UUID) -> bool:
        async with self._sessions() as s:
            last = (await s.execute(select(func.max(DatabaseBackup.created_at)).where(
                DatabaseBackup.project_id == project_id, DatabaseBackup.kind == "scheduled",
                DatabaseBackup.status == "ok"))).scalar_one()
        return last is None or datetime.now(UTC) - last >= timedelta(seconds=self.settings.interval_s * 0.95)

    async def _fail_stale(self) -> None:
        """Rows left `running` by a process that died mid-dump: failed, their partial files removed."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.timeout_s + 60)
        async with self._sessions.begin() as s:
            stale = (await s.execute(update(DatabaseBackup).where(
                DatabaseBackup.status == "running", DatabaseBackup.created_at < cutoff).values(
                status="failed", error="interrupted (the server stopped during the dump)").returning(
                DatabaseBackup.file))).scalars().all()
        for rel in stale:
            (self.root / rel).unlink(missing_ok=True)

    async def _sweep(self) -> None:
        """Remove the backup directories of projects that no longer exist (their rows went with them)."""
        if not self.root.is_dir():
            return
        names = [d.name for d in self.root.iterdir() if d.is_dir() and _HEX32.fullmatch(d.name)]
        if not names:
            return
        async with self._sessions() as s:
            alive = {i.hex for i in (await s.execute(select(Project.id).where(
                Project.id.in_([uuid.UUID(n) for n in names])))).scalars()}
        for name in set(names) - alive:
            log.info("removing the database backups of deleted project %s", name)
            await asyncio.to_thread(shutil.rmtree, self.root / name, True)

    async def _sweep_databases(self) -> list[str]:
        """Drop the scratch (`ink_restore_*`) and replaced (`ink_old_*`) databases a restore that died left behind.
        Each is owned by the tenant whose restore made it, so holding that tenant's lock (without waiting) proves
        no restore of it is running, on any replica; one that is running keeps its scratch database."""
        dropped: list[str] = []
        try:
            async with await psycopg.AsyncConnection.connect(self._admin, autocommit=True, connect_timeout=10,
                                                             application_name="inkmcp-backup") as conn:
                cur = await conn.execute(
                    "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                    "WHERE d.datname ~ '^ink_(restore|old)_[0-9a-f]{24}$' AND r.rolname ~ '^ink_'")
                for datname, owner in await cur.fetchall():
                    got = await (await conn.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))",
                                                    (_LOCK_CLASS, owner))).fetchone()
                    if not (got and got[0]):
                        continue
                    try:
                        await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                            sql.Identifier(datname)))
                        dropped.append(datname)
                        log.info("dropped %s, left behind by an interrupted restore", datname)
                    finally:
                        await conn.execute("SELECT pg_advisory_unlock(%s, hashtext(%s))", (_LOCK_CLASS, owner))
        except psycopg.Error as e:
            log.warning("could not sweep interrupted restores: %s", e)
        return dropped

    async def run_forever(self) -> None:
        """The scheduler loop: a pass at start, then one per check period (an interval's quarter, 1 s to 1 h);
        `_due` decides per database, so restarts and replicas never dump more often than the interval."""
        period = max(1.0, min(self.settings.interval_s / 4, 3600.0))
        while True:
            try:
                await self.run_due()
            except Exception:  # a pass that fails (control plane briefly down) must not end the schedule
                log.exception("scheduled database backups: pass failed; retrying in %.0f s", period)
            await asyncio.sleep(period)

    # ------------------------------------------------------------------------------------------------ internals
    async def _database(self, project_id: uuid.UUID) -> Database | None:
        async with self._sessions() as s:
            return (await s.execute(select(Database).where(Database.project_id == project_id,
                                                           Database.kind == "postgres"))).scalar_one_or_none()

    @staticmethod
    def _ours(db: Database | None, project_name: str) -> Database:
        if db is None:
            raise InvalidArgument(f"project {project_name!r} has no Postgres database.", argument="project_name",
                                  fix=f"call provision_database(project_name={project_name!r}) first")
        if db.provider != "postgres":
            raise InvalidArgument(NOT_OURS.get(db.provider, f"InkMCP does not back up {db.provider} databases")
                                  + ".", argument="project_name",
                                  fix="nothing to pass here: see the message for who restores this database")
        return db

    @asynccontextmanager
    async def _locked(self, ident: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The tenant server's advisory lock for this database (the provider's own), on an admin connection that
        the caller may use; released when the connection closes."""
        try:
            conn = await psycopg.AsyncConnection.connect(self._admin, autocommit=True, connect_timeout=10,
                                                         application_name="inkmcp-backup")
        except psycopg.OperationalError as e:
            raise ProviderError(f"cannot reach the tenant database server: {e}".strip(),
                                fix="retry later; if it persists, ask the operator (inkmcp doctor)") from None
        try:
            await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, ident))
            yield conn
        finally:
            await conn.close()

    def _project_dir(self, project_id: uuid.UUID) -> Path:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        d = self.root / project_id.hex
        d.mkdir(exist_ok=True, mode=0o700)
        os.chmod(d, 0o700)
        return d

    async def _dump(self, project_id: uuid.UUID, db: Database, kind: str, on_progress: Progress | None
                    ) -> DatabaseBackup:
        """Dump under the caller's lock: a `running` row first (so a crash leaves a trace), the file, then `ok` with
        its size and digest; a failure marks the row failed and removes the partial file."""
        bid = uuid.uuid4()
        rel = f"{project_id.hex}/{bid.hex}.dump"
        path = self._project_dir(project_id) / f"{bid.hex}.dump"
        await self._check_room(db)  # --- redteam3
        async with self._sessions.begin() as s:
            s.add(DatabaseBackup(id=bid, project_id=project_id, database_name=db.external_id, provider=db.provider,
                                 kind=kind, status="running", file=rel))
        if on_progress:
            await on_progress(f"dumping the database ({kind} backup {bid})")
        try:
            size, digest = await pgtools.dump(self._admin, db.external_id, path, timeout=self.settings.timeout_s,
                                              on_progress=on_progress)
        except BaseException as e:
            reason = scrub_paths(e.render()) if isinstance(e, InkError) else type(e).__name__
            with contextlib.suppress(Exception):
                async with self._sessions.begin() as s:
                    await s.execute(update(DatabaseBackup).where(DatabaseBackup.id == bid).values(
                        status="failed", error=reason[:2000], finished_at=func.now()))
            if isinstance(e, TimeoutError):
                raise ProviderError(f"dumping the database took longer than {self.settings.timeout_s:g} s.",
                                    fix="retry later, or ask the operator to raise INKMCP_DB_BACKUP_TIMEOUT_S"
                                    ) from None
            raise
        async with self._sessions.begin() as s:
            row = await s.get(DatabaseBackup, bid)
            assert row is not None
            row.status, row.size_bytes, row.sha256, row.finished_at = "ok", size, digest, datetime.now(UTC)
        async with self._sessions() as s:
            fresh = await s.get(DatabaseBackup, bid)
            assert fresh is not None
        if on_progress:
            await on_progress(f"dumped {size / 2**20:.2f} MiB")
        return fresh

    # --- redteam3
    async def _check_room(self, db: Database) -> None:
        """Refuse a dump the backups' filesystem cannot take without eating into the host's reserve.

        Dumps are files on the data dir's filesystem (by default), the control plane's, outside every tenant disk,
        and each database keeps up to INKMCP_DB_BACKUP_KEEP of each kind (manual, pre-restore, scheduled): one
        account filling its 5 databases with 1 GiB of random data and asking for dumps and restores wrote ~100 GiB
        there, and the projects' sparse disks, promised that space by their admission (INKMCP_DISK_RESERVE_MB), then
        got ENOSPC with the control plane. A dump is now refused, saying why, when the free space minus the
        database's size would fall under the reserve plus what the disks on that filesystem are still promised.
        tests/security/test_redteam3_backup_disk.py."""
        if self.reserve is None:
            return
        compute, reserve_mb, overcommit = self.reserve
        async with await psycopg.AsyncConnection.connect(self._admin, autocommit=True, connect_timeout=10,
                                                         application_name="inkmcp-backup") as conn:
            found = await (await conn.execute("SELECT pg_database_size(%s)", (db.external_id,))).fetchone()
        need = int(found[0]) if found else 0
        st = await asyncio.to_thread(os.statvfs, self.root)
        free = st.f_bavail * st.f_frsize
        promised = 0
        with contextlib.suppress(OSError):
            if os.stat(self.root).st_dev == os.stat(compute).st_dev:
                from inkmcp.providers.compute.local.diskquota import promised_bytes

                promised = int(await asyncio.to_thread(promised_bytes, compute) / overcommit)
        keep = reserve_mb * 2**20 + promised
        if free - need < keep:
            raise ProviderError(
                f"no room for a backup of this database ({need / 2**20:.0f} MiB): the server has {free / 2**20:.0f} "
                f"MiB free and keeps {keep / 2**20:.0f} MiB for itself and the projects' disks "
                "(INKMCP_DISK_RESERVE_MB); nothing was dumped.",
                fix="delete data the database no longer needs, or ask the operator for disk space")
    # --- end

    async def _prune(self, project_id: uuid.UUID, kind: str) -> None:
        """Keep the newest `keep` good dumps of this kind (and as many failed rows); delete the rest with files."""
        keep = self.settings.keep
        async with self._sessions.begin() as s:
            rows = (await s.execute(select(DatabaseBackup.id, DatabaseBackup.file, DatabaseBackup.status).where(
                DatabaseBackup.project_id == project_id, DatabaseBackup.kind == kind,
                DatabaseBackup.status != "running").order_by(DatabaseBackup.created_at.desc()))).all()
            doomed = [r for r in rows if r.status == "ok"][keep:] + [r for r in rows if r.status != "ok"][keep:]
            if doomed:
                await s.execute(delete(DatabaseBackup).where(DatabaseBackup.id.in_([r.id for r in doomed])))
        for r in doomed:
            (self.root / r.file).unlink(missing_ok=True)

    async def _verified(self, row: DatabaseBackup) -> Path:
        """The backup's file, refused unless its size and SHA-256 are the recorded ones and pg_restore reads its
        table of contents: a truncated or altered dump never reaches the database."""
        path = self.root / row.file
        damaged = (f"backup {row.id} is damaged or missing on the server ({{}}); it cannot be restored and nothing "
                   "was changed.")
        fix = "pass another backup_id from database_backups (e.g. the next older one)"
        if not path.is_file():
            raise ProviderError(damaged.format("the dump file is gone"), argument="backup_id", fix=fix)
        size, digest = await asyncio.to_thread(sha256_file, path)
        if size != row.size_bytes or digest != row.sha256:
            raise ProviderError(damaged.format(f"{size} bytes with another checksum than the {row.size_bytes} "
                                               "recorded"), argument="backup_id", fix=fix)
        try:
            await pgtools.check_archive(path, timeout=self.settings.timeout_s)
        except pgtools.PgToolError as e:
            raise ProviderError(damaged.format(scrub_paths(e.message)), argument="backup_id", fix=fix) from None
        return path

    async def _restore_scratch(self, conn: psycopg.AsyncConnection[Any], db: Database, path: Path,
                               backup_id: str, on_progress: Progress | None) -> str:
        """A new database owned by the tenant with the backup restored into it (all or nothing), by the tenant's own
        login; dropped again on any failure, so the live database is never touched by a restore that fails."""
        if self._databases is None:
            raise ProviderError("restores are not set up on this server (no tenant login to restore with).",
                                fix="ask the operator")
        ident = db.external_id
        role, password = self._databases.login_of(db)
        scratch = f"ink_restore_{uuid.uuid4().hex[:24]}"
        name, owner = sql.Identifier(scratch), sql.Identifier(ident)
        # --- tenantdisk: on the live database's own disk (its tablespace), so neither the restore nor, after the swap,
        # the restored database can fill the filesystem every tenant shares (store/tenant_disks.py)
        spc = await (await conn.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON "
                                        "t.oid = d.dattablespace WHERE d.datname = %s", (ident,))).fetchone()
        space = (sql.SQL(" TABLESPACE {}").format(sql.Identifier(str(spc[0]))) if spc and spc[0] != "pg_default"
                 else sql.SQL(""))
        await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template1{}").format(
            name, owner, space))
        # --- end tenantdisk
        try:
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(name))
            await pgtools.restore(self._admin, scratch, role, path, password=password, timeout=self.settings.timeout_s,
                                  on_progress=on_progress)
        except BaseException as e:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            if isinstance(e, pgtools.PgToolError):
                raise ProviderError(
                    f"backup {backup_id} could not be restored ({scrub_paths(e.message)}); nothing was changed: the "
                    "database is as it was.", argument="backup_id",
                    # --- attacker2: the restore logs in as the tenant, so the role's connection limit counts
                    fix="stop the project's services (or shrink their connection pools) so a connection is free, "
                    "then retry" if "too many connections" in e.message else
                    "pass another backup_id from database_backups, or ask the operator") from None
            if isinstance(e, TimeoutError):
                raise ProviderError(f"restoring took longer than {self.settings.timeout_s:g} s; nothing was "
                                    "changed.", fix="ask the operator to raise INKMCP_DB_BACKUP_TIMEOUT_S") from None
            raise
        return scratch

    async def _swap(self, conn: psycopg.AsyncConnection[Any], ident: str, scratch: str) -> None:
        """Put `scratch` in place of `ident` in one transaction (both renames or neither), then drop the old one.

        The live database's own settings go with its name, in that same transaction: its `ALTER DATABASE ... SET`
        and `ALTER ROLE ... IN DATABASE ... SET` values, CONNECTION LIMIT and ACL (all its owner may set; a dump of
        the contents holds none of them, and the scratch database was made with none). They are the live ones,
        not the backup's: settings are configuration, the backup restores data.

        New connections to the old database are refused first and its sessions terminated; a client that gets
        in between is terminated again (renaming needs a database nobody is connected to), within a deadline."""
        old = f"ink_old_{uuid.uuid4().hex[:24]}"
        live, new, gone = sql.Identifier(ident), sql.Identifier(scratch), sql.Identifier(old)
        terminate = ("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ANY(%s) "
                     "AND pid <> pg_backend_pid()")
        await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(live))
        deadline = asyncio.get_running_loop().time() + 30
        try:
            while True:
                await conn.execute(terminate, ([ident, scratch],))
                try:
                    async with conn.transaction():
                        await conn.execute(_KEEP_DATABASE_SETTINGS, {"live": ident, "scratch": scratch})
                        await conn.execute(_KEEP_DATABASE_LIMITS, {"live": ident, "scratch": scratch})
                        await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(live, gone))
                        await conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(new, live))
                    break
                except psycopg.errors.ObjectInUse:
                    if asyncio.get_running_loop().time() > deadline:
                        raise
                    await asyncio.sleep(0.05)
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                await conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live))
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(new))
            raise ProviderError("the restored database could not be switched in (sessions kept reconnecting); "
                                "nothing was changed.", fix="retry") from None
        try:
            await conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(gone))
        except psycopg.Error as e:  # the restore is done; a leftover only costs disk
            log.warning("could not drop the replaced database %s: %s", old, e.diag.message_primary or e)

    async def _restart(self, project: Project, say: Progress) -> tuple[list[str], str]:
        """Restart the project's live services on the restored database (fresh connections)."""
        if self._deploys is None:
            return [], ""
        async with self._sessions() as s:
            services = list((await s.execute(select(Service).where(Service.project_id == project.id))).scalars())
        if not any(svc.live_deployment_id for svc in services):
            return [], ""
        await say("restarting the project's services on the restored database")
        applied = await self._deploys.apply_env(project, services)
        problems = {**applied.failed, **applied.unavailable}
        trouble = ("; ".join(f"service {n!r} did not restart ({why}): it may hold dead connections until "
                             "its next deploy_app" for n, why in problems.items()))
        return applied.restarted + applied.pending, trouble

    def _audited(self, p: Principal, action: str, target: str, args: dict[str, Any]
                 ) -> contextlib.AbstractAsyncContextManager[None]:
        return self._audit.recording(p, action, target, args) if self._audit else contextlib.nullcontext()


async def _quiet(_: str) -> None:
    return None


def start_scheduler(stack: AsyncExitStack, service: DatabaseBackupService) -> asyncio.Task[None] | None:
    """What `inkmcp serve` calls: the schedule as a task cancelled when the runtime closes; None when
    INKMCP_DB_BACKUP_INTERVAL_S=0."""
    if service.settings.interval_s <= 0:
        return None
    task = asyncio.create_task(service.run_forever(), name="database-backups")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
    return task


def build_database_backups(platform: Any, admin_url: SecretStr, data_dir: Path) -> DatabaseBackupService:
    """What app.py calls: the service over the tenant server's admin URL, settings from INKMCP_DB_BACKUP_* (a bad
    value is an InkError naming the variable)."""
    settings = settings_from_env(DatabaseBackupSettings, "INKMCP_DB_BACKUP_",
                                 "inkmcp/dbbackup/service.py (DatabaseBackupSettings)")
    service = DatabaseBackupService(platform.sessions, projects=platform.projects, admin_url=admin_url,
                                    root=settings.root(data_dir), settings=settings, deploys=platform.deploys,
                                    audit=platform.audit, databases=platform.databases)
    # --- redteam3: the host's reserve, as the disks' admission keeps it (_check_room)
    from inkmcp.settings import Settings

    host = settings_from_env(Settings, "INKMCP_", "inkmcp/settings.py (Settings)")
    service.reserve = (data_dir / "compute", host.disk_reserve_mb, host.disk_overcommit)
    # --- end
    return service
