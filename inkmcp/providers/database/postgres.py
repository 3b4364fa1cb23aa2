"""Databases on a PostgreSQL server we administer (normally the embedded tenant server).

One tenant = one login role + one database owned by it, both named `ink_<slug>`. Isolation:

* `REVOKE ALL ON DATABASE ... FROM PUBLIC` on every tenant database, so only its owner (and the
  superuser) may CONNECT or create TEMP tables there; the same revoke is applied to the `postgres`
  and `template1` databases, which PUBLIC can otherwise connect to.
* Tenant roles are NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT with a per-tier CONNECTION LIMIT
  (`DEFAULT_CONNECTION_LIMITS`; `ensure_connection_limit` corrects roles made under older limits).
* Per-role resource limits, per tier (`inkmcp.settings.TenantPostgresSettings`), set by us as superuser with
  `ALTER ROLE ... SET` (red team 2026-12-01: one free-tier role ran the host's CPU and temp disk):
  `temp_file_limit` is superuser-only, so the tenant can neither SET it in a session nor ALTER/RESET it on its
  own role: a query spilling more than that to disk fails. `statement_timeout` and
  `idle_in_transaction_session_timeout` are only defaults: a tenant may SET them (like `work_mem`) in its
  session or on its own role (which InkMCP then leaves alone). What holds however a tenant sets those is the
  embedded server's cgroup (CPU and memory of all backends together,
  `inkmcp.store.tenant_server.confine_tenant_server`) and the connection limit.
* Schema `public`: since PostgreSQL 15 it is owned by `pg_database_owner` and PUBLIC has no CREATE
  on it, so in a tenant database only the tenant (as database owner) can create objects there;
  nothing further to revoke (verified in tests/store/test_postgres_provider.py).

* Disk (tenantdisk): on the embedded tenant server (`tablespaces` given) each database has a tablespace of its own,
  named like it, on an ext4 image of its own (INKMCP_TENANT_PG_DISK_MB; store/tenant_disks.py says why and how), and
  is created with it as its default: its tables, indexes and temporary files cannot fill the filesystem every other
  tenant and the control plane share; a full one says "could not extend file ...: No space left on device" to its
  tenant only. Only the superuser may CREATE in a tablespace, so a tenant cannot put a table in `pg_default` or
  another tenant's. A database made before that is moved onto its image at the next start (`_move_into`).

Passwords are hashed client-side (libpq's PQencryptPasswordConn, SCRAM-SHA-256) before they are
sent, so the plaintext never appears in server logs or pg_stat_activity.

Concurrency: every operation on a slug takes a session advisory lock keyed by the database name,
so two provisions of one slug produce one database (the later one resets the password again).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from pydantic import SecretStr

from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, Tier
from inkmcp.settings import TenantPostgresSettings

if TYPE_CHECKING:
    from inkmcp.providers.compute.local.diskquota import NamedDisks

log = logging.getLogger(__name__)

PREFIX = "ink_"
_MAX_IDENT = 63
_CLEAN_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_OUR_IDENT = re.compile(r"^ink_[a-z0-9_]{1,59}$")
_LOCK_CLASS = 0x1A4C  # advisory lock namespace (first int of the two-int form) for this provider

DEFAULT_CONNECTION_LIMITS: Mapping[Tier, int] = {Tier.free: 5, Tier.standard: 20}
"""Per role (= per database). The embedded tenant server has max_connections=200, 3 of them reserved
for the superuser: with the default account limits (5 databases, tier free only) one account holds at
most 5 x 5 = 25 connections, an eighth of the server, so no single account can starve the others;
an account granted `standard` holds at most 5 x 20 = 100. Apps needing more pool their connections."""


ROLE_SETTINGS = ("temp_file_limit", "statement_timeout", "idle_in_transaction_session_timeout")
"""The parameters InkMCP sets on every tenant role (and only these: anything else on the role is the tenant's)."""
ENFORCED = frozenset({"temp_file_limit"})
"""Of those, the superuser-only ones: a tenant cannot change them, so InkMCP resets them whenever they differ."""


def role_settings(limits: TenantPostgresSettings, tier: Tier) -> dict[str, str]:
    """The `ALTER ROLE ... SET` values of a tier, in the form PostgreSQL keeps them (pg_db_role_setting).

    A tier left out of a configured map keeps its default, so setting only `free` does not unlimit `standard`."""
    defaults = TenantPostgresSettings.model_construct()

    def pick(configured: Mapping[Tier, float], default: Mapping[Tier, float]) -> float:
        return configured.get(tier, default.get(tier, 0))

    temp_mb = int(pick(limits.temp_file_limit_mb, defaults.temp_file_limit_mb))
    return {
        "temp_file_limit": "-1" if temp_mb < 0 else f"{temp_mb}MB",
        "statement_timeout": f"{int(pick(limits.statement_timeout_s, defaults.statement_timeout_s) * 1000)}ms",
        "idle_in_transaction_session_timeout":
            f"{int(pick(limits.idle_in_transaction_timeout_s, defaults.idle_in_transaction_timeout_s) * 1000)}ms",
    }


def database_name_for(owner_slug: str) -> str:
    """Map a slug to a role/database identifier: `ink_` + only [a-z0-9_], at most 63 chars.

    Injective by construction, because a mix-up would hand one tenant another tenant's database:
    DNS-style slugs (`my-app`) map readably to `ink_my_app`; anything else (upper case, `_`, other
    characters, too long) becomes `ink_<sanitised prefix>__<sha256[:16]>`. Readable names never
    contain `__`, hashed ones always do, so the two forms cannot collide.
    """
    if not owner_slug:
        raise InvalidArgument("must not be empty", argument="owner_slug", fix="pass the project slug")
    if _CLEAN_SLUG.fullmatch(owner_slug) and len(PREFIX) + len(owner_slug) <= _MAX_IDENT:
        return PREFIX + owner_slug.replace("-", "_")
    digest = hashlib.sha256(owner_slug.encode()).hexdigest()[:16]
    readable = re.sub(r"_+", "_", re.sub(r"[^a-z0-9]", "_", owner_slug.lower())).strip("_")
    readable = readable[: _MAX_IDENT - len(PREFIX) - 2 - len(digest)].rstrip("_")
    return f"{PREFIX}{readable}__{digest}" if readable else f"{PREFIX}_{digest}"


def _check_ours(external_id: str) -> str:
    if not _OUR_IDENT.fullmatch(external_id):
        raise InvalidArgument(
            f"{external_id!r} is not a database this provider created",
            argument="external_id",
            fix="pass the external_id returned by provision (it starts with 'ink_')",
        )
    return external_id


def libpq_url(url: str) -> str:
    """SQLAlchemy-style `postgresql+psycopg://` → libpq `postgresql://`."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, *parts[1:]))


class PostgresDatabaseProvider:
    """DatabaseProvider over a server reachable with superuser (or CREATEROLE+CREATEDB) `admin_url`.

    `public_host`/`public_port` are what apps use to reach that server; they go into the returned
    credentials, which may differ from the admin URL (e.g. admin over a unix socket).
    """

    name = "postgres"

    def __init__(
        self,
        admin_url: SecretStr,
        *,
        public_host: str,
        public_port: int,
        connection_limits: Mapping[Tier, int] | None = None,
        role_limits: TenantPostgresSettings | None = None,
        connect_timeout_s: int = 10,
        tablespaces: NamedDisks | None = None,
    ) -> None:
        self._admin_url = SecretStr(libpq_url(admin_url.get_secret_value()))
        self.public_host = public_host
        self.public_port = public_port
        self.connection_limits = dict(connection_limits or DEFAULT_CONNECTION_LIMITS)
        self.role_limits = role_limits or TenantPostgresSettings()  # INKMCP_TENANT_PG_* from the environment
        self.connect_timeout_s = connect_timeout_s
        self.tablespaces = tablespaces  # the embedded server's per-database images; None: no disk limit

    def __repr__(self) -> str:
        return f"PostgresDatabaseProvider(public={self.public_host}:{self.public_port})"

    async def _connect(self) -> psycopg.AsyncConnection[tuple[object, ...]]:
        try:
            return await psycopg.AsyncConnection.connect(
                self._admin_url.get_secret_value(),
                autocommit=True,  # CREATE/DROP DATABASE cannot run inside a transaction
                connect_timeout=self.connect_timeout_s,
                application_name="inkmcp-provisioner",
            )
        except psycopg.OperationalError as e:
            # libpq messages name host/port/user but never the password.
            raise ProviderError(f"cannot reach the tenant database server: {e}".strip()) from None

    @staticmethod
    async def _lock(conn: psycopg.AsyncConnection[tuple[object, ...]], ident: str) -> None:
        await conn.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (_LOCK_CLASS, ident))

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        tier = Tier(tier)
        ident = database_name_for(owner_slug)
        password = secrets.token_urlsafe(32)
        limit = self.connection_limit(tier)
        role = sql.Identifier(ident)
        location = await self._disk(ident)  # refused here (nothing made) when the host cannot hold another image
        conn = await self._connect()
        try:
            await self._lock(conn, ident)
            verifier = conn.pgconn.encrypt_password(password.encode(), ident.encode(), b"scram-sha-256").decode()
            exists = await (await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ident,))).fetchone()
            options = sql.SQL(
                "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS "
                "CONNECTION LIMIT {} PASSWORD {}"
            ).format(sql.Literal(limit), sql.Literal(verifier))
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            await conn.execute(sql.SQL("{} {} WITH {}").format(verb, role, options))
            await self._set_role_limits(conn, ident, tier)
            db_exists = await (
                await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (ident,))
            ).fetchone()
            space = sql.SQL("")
            if location is not None:
                await self._ensure_tablespace(conn, ident, location)
                space = sql.SQL(" TABLESPACE {}").format(role)
            if not db_exists:
                await conn.execute(sql.SQL("CREATE DATABASE {} OWNER {} ENCODING 'UTF8' TEMPLATE template1{}").format(
                    role, role, space))
            else:
                await conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(role, role))
                if location is not None:
                    await self._move_into(conn, ident)
            await conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(role))
            await self._quiet(conn, ident)  # --- tenantdisk2
            # one provision at a time here: two sessions updating one pg_database row fail "tuple concurrently
            # updated" (two accounts' provisions at once, seen once the tablespace made provisions slower)
            await conn.execute("SELECT pg_advisory_lock(%s, 0)", (_LOCK_CLASS,))
            try:
                for shared in ("postgres", "template1"):
                    await conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(
                        sql.Identifier(shared)))
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s, 0)", (_LOCK_CLASS,))
        except psycopg.Error as e:
            raise ProviderError(f"provisioning database {ident} failed: {e.diag.message_primary or e}") from None
        finally:
            await conn.close()  # also releases the session advisory lock
        return DatabaseHandle(
            provider=self.name,
            tier=tier,
            external_id=ident,
            credentials=DatabaseCredentials(
                host=self.public_host,
                port=self.public_port,
                database=ident,
                user=ident,
                password=SecretStr(password),
            ),
        )

    # --- tenantdisk: a tablespace per database on an image of its own ------------------------------------------

    async def _disk(self, ident: str) -> str | None:
        """The database's image created (admitted) and mounted; the tablespace's location, None when not limited."""
        if self.tablespaces is None or not self.tablespaces.enforced:
            return None
        try:
            path = await asyncio.to_thread(self.tablespaces.ensure, ident)
        except OSError as e:
            raise ProviderError(f"the disk of database {ident} could not be prepared: {e.strerror or e}",
                                fix="retry; if it persists the operator finds the cause in InkMCP's log") from None
        return None if path is None else str(path)

    @staticmethod
    async def _ensure_tablespace(conn: psycopg.AsyncConnection[tuple[object, ...]], ident: str, location: str) -> None:
        """`CREATE TABLESPACE ident LOCATION` (owned by the superuser: only the database's default uses it)."""
        cur = await conn.execute("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = %s", (ident,))
        row = await cur.fetchone()
        if row is None:
            await conn.execute(sql.SQL("CREATE TABLESPACE {} LOCATION {}").format(
                sql.Identifier(ident), sql.Literal(location)))
        elif Path(str(row[0])) != Path(location):
            log.warning("tablespace %s is at %s, not on its image at %s; left as it is", ident, row[0], location)

    @staticmethod
    async def tablespace_of(conn: psycopg.AsyncConnection[tuple[object, ...]], database: str) -> str | None:
        cur = await conn.execute("SELECT t.spcname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
                                 "WHERE d.datname = %s", (database,))  # fmt: skip
        row = await cur.fetchone()
        return None if row is None else str(row[0])

    def _room(self, ident: str) -> int | None:
        """--- tenantdisk2: bytes the database's own disk can still take (None: not limited, or not mounted)."""
        if self.tablespaces is None or not self.tablespaces.enforced:
            return None
        try:
            st = os.statvfs(self.tablespaces.location(ident))
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    async def _move_into(self, conn: psycopg.AsyncConnection[tuple[object, ...]], ident: str,
                         deadline_s: float = 30) -> bool:
        """A database made before its tablespace (an upgrade, a DR restore) moved onto it; True when it moved.

        `ALTER DATABASE ... SET TABLESPACE` copies its files and needs nobody connected: the tenant's sessions are
        terminated (its apps reconnect; this runs at start, before InkMCP restores them), again if one gets in
        between, within a deadline. One that does not fit stays where it was, unlimited, with a warning."""
        current = await self.tablespace_of(conn, ident)
        if current is None or current == ident:
            return False
        # --- tenantdisk2: one that cannot fit is not copied at all (it was copied, and refused, at every start)
        size = await (await conn.execute("SELECT pg_database_size(%s)", (ident,))).fetchone()
        room = await asyncio.to_thread(self._room, ident)
        if size is not None and room is not None and int(size[0]) > room:
            log.warning("database %s stays in %s WITHOUT a disk limit: its %d MiB do not fit on its own disk (%d MiB "
                        "free of INKMCP_TENANT_PG_DISK_MB=%s); raise the limit, or delete data, and restart", ident,
                        current, int(size[0]) // 2**20, room // 2**20,
                        self.tablespaces.size_mb if self.tablespaces else "?")  # fmt: skip
            return False
        # --- end tenantdisk2
        loop = asyncio.get_running_loop()
        deadline = loop.time() + deadline_s
        while True:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_backend_pid()", (ident,))  # fmt: skip
            try:
                await conn.execute(sql.SQL("ALTER DATABASE {} SET TABLESPACE {}").format(
                    sql.Identifier(ident), sql.Identifier(ident)))
                log.info("database %s moved onto its own disk (tablespace %s)", ident, ident)
                return True
            except psycopg.errors.ObjectInUse:
                if loop.time() > deadline:
                    log.warning("database %s stays in %s without a disk limit: sessions kept reconnecting while it "
                                "was to move onto its own disk; the next start tries again", ident, current)
                    return False
                await asyncio.sleep(0.1)
            except (psycopg.errors.DiskFull, psycopg.errors.InsufficientResources) as e:
                log.warning("database %s stays in %s WITHOUT a disk limit: it does not fit on its own %s MiB disk "
                            "(%s); raise INKMCP_TENANT_PG_DISK_MB and restart", ident, current,
                            self.tablespaces.size_mb if self.tablespaces else "?", e.diag.message_primary or e)
                return False

    async def _quiet(self, conn: psycopg.AsyncConnection[tuple[object, ...]], ident: str) -> bool:
        """--- tenantdisk2: on the embedded server, the role's sessions and every process working in its database
        (an autovacuum worker evaluating its index expressions runs the tenant's functions: measured 54 MB of its RAISE
        WARNINGs in 15 s without this) log only FATAL: `log_min_messages` on the role and on the database, a
        superuser-only parameter the tenant can neither SET nor RESET (42501). The server's own messages stay
        (store/tenant_disks.py). True when one was set now."""
        if self.tablespaces is None:
            return False
        changed = False
        for kind, target, query in (
            ("ROLE", ident, "SELECT 1 FROM pg_db_role_setting s JOIN pg_roles r ON s.setrole = r.oid WHERE "
                            "r.rolname = %s AND s.setdatabase = 0 AND 'log_min_messages=fatal' = ANY(s.setconfig)"),
            ("DATABASE", ident, "SELECT 1 FROM pg_db_role_setting s JOIN pg_database d ON s.setdatabase = d.oid WHERE "
                                "d.datname = %s AND s.setrole = 0 AND 'log_min_messages=fatal' = ANY(s.setconfig)"),
        ):
            if await (await conn.execute(query, (target,))).fetchone() is not None:
                continue
            if kind == "DATABASE" and await (await conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                                                (target,))).fetchone() is None:
                continue
            await conn.execute(sql.SQL("ALTER {} {} SET log_min_messages = 'fatal'").format(
                sql.SQL(kind), sql.Identifier(target)))
            changed = True
        return changed

    # --- end tenantdisk

    def connection_limit(self, tier: Tier) -> int:
        return self.connection_limits.get(Tier(tier), -1)

    def role_settings(self, tier: Tier) -> dict[str, str]:
        return role_settings(self.role_limits, Tier(tier))

    async def _set_role_limits(self, conn: psycopg.AsyncConnection[tuple[object, ...]], ident: str, tier: Tier) -> bool:
        """`ALTER ROLE ident SET` the tier's ROLE_SETTINGS; returns True when it changed one.

        ENFORCED ones (superuser-only) are set whenever they differ. The others are defaults the tenant may change,
        even on its own role (`ALTER ROLE CURRENT_USER SET statement_timeout = 0` for a long migration): they are
        set only when the role has none, so a restart does not undo the tenant's choice; enforcing them would buy
        nothing, since a session can SET them anyway. A changed tier default thus reaches roles without one.
        """
        cur = await conn.execute(
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON s.setrole = r.oid "
            "WHERE r.rolname = %s AND s.setdatabase = 0", (ident,))
        row = await cur.fetchone()
        setconfig = row[0] if row is not None and isinstance(row[0], list) else []
        current = dict(str(item).split("=", 1) for item in setconfig if "=" in str(item))
        changed = False
        for name, value in self.role_settings(tier).items():
            if current.get(name) == value or (name not in ENFORCED and name in current):
                continue
            # name comes from ROLE_SETTINGS (a fixed list), the value is a literal
            await conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(
                sql.Identifier(ident), sql.Identifier(name), sql.Literal(value)))
            changed = True
        return changed

    async def ensure_connection_limit(self, external_id: str, tier: Tier) -> bool:
        """Bring the role's limits to its tier's where they differ (roles made under older limits, or before
        per-role limits existed): its CONNECTION LIMIT and its ROLE_SETTINGS (temp_file_limit, timeouts).

        Core runs it for every managed role at start (`DatabaseService.reconcile_connection_limits`). Idempotent;
        returns True when it changed something. Existing sessions stay; the limits apply to new connections.
        """
        ident = _check_ours(external_id)
        limit = self.connection_limit(tier)
        conn = await self._connect()
        try:
            await self._lock(conn, ident)
            cur = await conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = %s", (ident,))
            row = await cur.fetchone()
            if row is None:
                return False
            changed = await self._set_role_limits(conn, ident, tier)
            changed = await self._quiet(conn, ident) or changed  # --- tenantdisk2
            try:  # --- tenantdisk: a database from before moves onto its own disk
                location = await self._disk(ident)
            except ProviderError as e:  # the host cannot hold its image: it stays where it is, the limits still apply
                log.warning("database %s stays without a disk limit: %s", ident, e)
                location = None
            if location is not None and await self.tablespace_of(conn, ident) is not None:
                await self._ensure_tablespace(conn, ident, location)
                changed = await self._move_into(conn, ident) or changed
            if row[0] != limit:
                await conn.execute(
                    sql.SQL("ALTER ROLE {} WITH CONNECTION LIMIT {}").format(sql.Identifier(ident), sql.Literal(limit))
                )
                changed = True
            return changed
        except psycopg.Error as e:
            reason = e.diag.message_primary or e
            raise ProviderError(f"setting the limits of {ident} failed: {reason}") from None
        finally:
            await conn.close()

    async def drop(self, external_id: str) -> None:
        """Terminate sessions, drop the database and its role. Refuses names it did not create."""
        ident = _check_ours(external_id)
        conn = await self._connect()
        try:
            await self._lock(conn, ident)
            # WITH (FORCE) terminates the tenant's connections first (PostgreSQL 13+).
            await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(ident)))
            # --- tenantdisk: leftovers of its backup restores (dbbackup's scratch and replaced copies) are on its disk
            cur = await conn.execute(
                "SELECT d.datname FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
                "WHERE t.spcname = %s AND (d.datname LIKE 'ink\\_restore\\_%%' OR d.datname LIKE 'ink\\_old\\_%%')",
                (ident,))
            for (left,) in await cur.fetchall():
                await conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(left)))
            await conn.execute(sql.SQL("DROP TABLESPACE IF EXISTS {}").format(sql.Identifier(ident)))
            # --- end tenantdisk
            await conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ident)))
        except psycopg.Error as e:
            raise ProviderError(f"dropping database {ident} failed: {e.diag.message_primary or e}") from None
        finally:
            await conn.close()
        if self.tablespaces is not None:  # --- tenantdisk: its image, once the server let go of its files
            await asyncio.to_thread(self.tablespaces.remove, ident)

    async def close(self) -> None:
        """Nothing to release: connections are opened per operation (provisioning is rare)."""
