"""`inkmcp dr restore-postgres`: the control-plane database back from the Storage Box into a fresh server.

Runs on the new Postgres host after the factory's `postgres` step (Debian's cluster, the `inkmcp` role and an
empty `inkmcp` database): find the dump, copy it over rsync, check its table of contents, refuse a database that
already holds tables, then `pg_restore --single-transaction --exit-on-error` as the postgres OS user, so a bad
or truncated dump leaves the database exactly as empty as it was.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from inkmcp.dr.dumps import Dump, dump_time, latest_before
from inkmcp.dr.errors import DrError
from inkmcp.dr.settings import DrSettings
from inkmcp.dr.storagebox import BoxApi, BoxFiles

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RestoreResult:
    dump: Dump
    tables: int
    seconds: dict[str, float]


def _dumps_in(files: BoxFiles, directory: str, source: str, database: str) -> list[Dump]:
    return [Dump(f.name, t, f.size, source, f"{directory}/{f.name}") for f in files.list(directory)
            if not f.is_dir and (t := dump_time(f.name, database)) is not None]


def find_dumps(files: BoxFiles, settings: DrSettings, api: BoxApi | None, at: datetime,
               progress: Progress) -> tuple[list[Dump], Dump | None]:
    """Live dumps first; the snapshots (through the API) only when no live dump is old enough.

    Snapshot order: those taken after `at`, earliest first (the first one holds the newest dumps before `at`,
    unless they had already left the live directory), then those taken before `at`, newest first.
    """
    db, d = settings.database, settings.postgres_dir
    dumps = _dumps_in(files, d, "live", db)
    progress(f"{len(dumps)} dump(s) in {d}/ on the box")
    chosen = latest_before(dumps, at)
    if chosen is not None or api is None:
        return dumps, chosen
    snaps = api.snapshots()
    ordered = [s for s in snaps if s.created >= at] + [s for s in reversed(snaps) if s.created < at]
    progress(f"no live dump at or before {at:%Y-%m-%dT%H:%M:%SZ}; searching {len(ordered)} snapshot(s)")
    with api.snapshot_files_visible():
        for snap in ordered:
            dumps += _dumps_in(files, f".zfs/snapshot/{snap.name}/{d}", snap.name, db)
            chosen = latest_before(dumps, at)
            if chosen is not None:
                break
        return dumps, chosen


def list_dumps(settings: DrSettings, *, snapshots: bool = True, progress: Progress = lambda _m: None) -> list[Dump]:
    """Every dump on the box: the live directory, then each snapshot's copy (one zfs visibility window)."""
    files = BoxFiles(settings)
    db, d = settings.database, settings.postgres_dir
    dumps = _dumps_in(files, d, "live", db)
    progress(f"{len(dumps)} dump(s) in {d}/")
    if snapshots:
        api = BoxApi(settings)
        snaps = api.snapshots()
        with api.snapshot_files_visible():
            for snap in snaps:
                dumps += _dumps_in(files, f".zfs/snapshot/{snap.name}/{d}", snap.name, db)
        progress(f"{len(snaps)} snapshot(s) searched")
    return sorted(dumps, key=lambda x: (x.taken_at, x.source != "live"))


class PgTools:
    """pg_restore/psql, run as the postgres OS user when we are root (peer auth on Debian's socket)."""

    def __init__(self, settings: DrSettings, run_as: str | None) -> None:
        self._bin = settings.pg_bin
        self.run_as = run_as

    def argv(self, tool: str, *args: str) -> list[str]:
        exe = str(self._bin / tool) if self._bin else tool
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, exe, *args]

    def run(self, tool: str, *args: str, timeout: float = 3600) -> str:
        r = subprocess.run(self.argv(tool, *args), capture_output=True, text=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise DrError(f"{tool} failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")
        return r.stdout

    def user_relations(self, database: str) -> int:
        sql = ("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
               "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' "
               "AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')")
        return int(self.run("psql", "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d", database, "-c", sql).strip())


BACKUP_TIMER = "inkmcp-pg-backup.timer"


def _refuse_while_backup_timer_runs() -> None:
    """The factory's nightly job uploads the host's new dumps to the box. On a rebuilt host its first run would
    upload a dump of a database that may not be restored yet, and that dump would be the box's newest ("latest").
    So the timer must be stopped until the restore is done."""
    if shutil.which("systemctl") is None:
        return
    r = subprocess.run(["systemctl", "is-active", "--quiet", BACKUP_TIMER], capture_output=True, timeout=30,
                       check=False)
    if r.returncode == 0:
        raise DrError(f"{BACKUP_TIMER} is active on this host: stop it first (`systemctl stop {BACKUP_TIMER}`); its "
                      "next run would upload a dump of this host's new, near-empty database, which would then be "
                      "the box's newest. Start it again after the restore.")


def restore_postgres(settings: DrSettings, *, at: datetime, work_dir: Path, dump_name: str | None = None,
                     into: str | None = None, run_as: str | None = None, use_snapshots: bool = True,
                     progress: Progress = lambda _m: None) -> RestoreResult:
    """Dumps are chosen by `settings.database` (their name prefix) and restored into `into` (default: the same)."""
    target = into or settings.database
    if target == settings.database:  # a drill into a scratch database may run next to the live job
        _refuse_while_backup_timer_runs()
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    files = BoxFiles(settings)
    api = BoxApi(settings) if use_snapshots and settings.hetzner_token and settings.box_id else None
    pg = PgTools(settings, run_as)
    # Refuse a non-empty target before moving any data: a restore never merges into live rows.
    existing = pg.user_relations(target)
    if existing:
        raise DrError(f"database {target!r} already holds {existing} relation(s): restore only into a "
                      "fresh, empty database (drop and re-create it, or pass --into a new one)")
    dumps, chosen = find_dumps(files, settings, api, at, progress)
    if dump_name is not None:
        chosen = next((d for d in dumps if d.name == dump_name), None)
        if chosen is None:
            raise DrError(f"--dump {dump_name}: not on the box; available: "
                          f"{', '.join(sorted({d.name for d in dumps})[-10:]) or 'none'}")
    if chosen is None:
        oldest = min((d.taken_at for d in dumps), default=None)
        raise DrError(f"no dump of {settings.database!r} taken at or before {at:%Y-%m-%dT%H:%M:%SZ} "
                      f"(oldest found: {oldest:%Y-%m-%dT%H:%M:%SZ})" if oldest else
                      f"no dump of {settings.database!r} on the box under {settings.postgres_dir}/"
                      + ("" if api else "; pass --box-id and INKMCP_DR_HETZNER_TOKEN to search the snapshots"))
    progress(f"chosen: {chosen.name} ({chosen.source}, taken {chosen.taken_at:%Y-%m-%dT%H:%M:%SZ}, "
             f"{chosen.size} bytes)")
    seconds["find"] = time.monotonic() - t0
    t1 = time.monotonic()
    work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    local = work_dir / chosen.name
    if api is not None and chosen.source != "live":
        with api.snapshot_files_visible():
            files.pull(chosen.path, local)
    else:
        files.pull(chosen.path, local)
    if local.stat().st_size != chosen.size:
        raise DrError(f"{chosen.name}: copied {local.stat().st_size} bytes, the box lists {chosen.size}")
    if run_as:
        pw = pwd.getpwnam(run_as)
        for p in (work_dir, local):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        readable = subprocess.run(["runuser", "-u", run_as, "--", "test", "-r", str(local)], timeout=30,
                                  check=False).returncode == 0
        if not readable:
            raise DrError(f"--work-dir {work_dir}: the {run_as} user cannot reach it (a parent directory is closed "
                          "to it); pass a directory it can traverse, e.g. /var/lib/postgresql/inkmcp-restore")
    seconds["copy"] = time.monotonic() - t1
    t2 = time.monotonic()
    try:
        pg.run("pg_restore", "--list", str(local), timeout=300)
    except DrError as e:
        raise DrError(f"{chosen.name} is not a readable pg_dump archive (truncated or damaged): {e}") from None
    progress(f"restoring into {target!r} (one transaction)")
    pg.run("pg_restore", "--exit-on-error", "--single-transaction", "-d", target, str(local))
    seconds["restore"] = time.monotonic() - t2
    tables = pg.user_relations(target)
    return RestoreResult(chosen, tables, seconds)
