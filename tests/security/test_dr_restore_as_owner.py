"""A disaster-recovery restore (`inkmcp backup restore`) never runs a tenant's code as the PostgreSQL superuser.

The attack (red team dec2 found it on the per-project restore; the DR restore had it too): mallory's database has
a CHECK constraint calling her plpgsql function, evaluated for every restored row. The DR restore ran pg_restore
--create as the tenant server's superuser, so her function ran as the superuser: RESET ROLE, then ALTER ROLE
<her> SUPERUSER. After the restore her role is a superuser and she reads every other tenant's database.

From the attacker's side, through the real code path: a real installation (control plane by the CLI, a real
tenant server, databases made by the real provider), `create_backup`, `restore_backup` into a new data dir, then
the restored tenant server is asked what happened: her role is not a superuser, her function did run during the
restore and recorded who it ran as (her role, not a superuser, for every call), and every database, role and
role setting is what was dumped (pg_dump / pg_authid compared with the source). Her database also carries
settings that would have locked a restore-as-owner out of it (ALTER DATABASE SET default_transaction_read_only,
an ALTER ROLE SET on her own role): the restore still succeeds and puts them back.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from inkmcp.backup import pgtools
from inkmcp.backup.create import create_backup
from inkmcp.backup.restore import restore_backup
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.settings import Settings
from inkmcp.store.embedded import EmbeddedPostgres, _bin_dir
from tests.support import INKMCP, free_port, traversable_tmpdir

# mallory's schema. dr_check runs for every row restored into dr_rows; it records who it runs as (application_name
# tells the restore's calls from hers), then tries the escalation (errors swallowed: run by her, it changes
# nothing). dr_twice is an index expression's function (IMMUTABLE: it cannot write), the matview and the trigger
# are there so the restore's later steps (indexes, refresh, triggers) are exercised and compared too.
MALLORY = """
CREATE TABLE dr_seen (app text, session_role text, current_role_ text, superuser boolean);
CREATE FUNCTION dr_check(v int) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO public.dr_seen SELECT current_setting('application_name'), session_user, current_user, rolsuper
    FROM pg_catalog.pg_roles WHERE rolname = session_user;
  BEGIN
    RESET ROLE;
    EXECUTE format('ALTER ROLE %I SUPERUSER', {role});
  EXCEPTION WHEN others THEN NULL;
  END;
  RETURN true;
END $f$;
CREATE FUNCTION dr_twice(v int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $f$ BEGIN RETURN 2 * v; END $f$;
CREATE TABLE dr_rows (v int CHECK (public.dr_check(v)), label text DEFAULT 'x', doubled int
  GENERATED ALWAYS AS (public.dr_twice(v)) STORED);
INSERT INTO dr_rows (v) SELECT generate_series(1, 3);
CREATE INDEX dr_rows_twice ON dr_rows (public.dr_twice(v));
CREATE MATERIALIZED VIEW dr_view AS SELECT v, public.dr_twice(v) AS t FROM dr_rows;
CREATE FUNCTION dr_touch() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN NEW.label := 'touched'; RETURN NEW; END $f$;
CREATE TRIGGER dr_touch BEFORE INSERT ON dr_rows FOR EACH ROW EXECUTE FUNCTION dr_touch();
CREATE SEQUENCE dr_seq; SELECT setval('dr_seq', 42);
GRANT SELECT ON dr_rows TO PUBLIC;
REVOKE ALL ON FUNCTION dr_check(int) FROM PUBLIC;
COMMENT ON TABLE dr_rows IS 'rows';
CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE plpgsql AS $f$
BEGIN
  BEGIN
    EXECUTE format('COPY (SELECT session_user) TO %L', {proof});
  EXCEPTION WHEN others THEN NULL;
  END;
  RETURN pg_catalog.now();
END $f$;
ALTER DATABASE {db} SET search_path = public, pg_catalog;
COMMENT ON DATABASE {db} IS 'mallory''s';
ALTER DATABASE {db} SET default_transaction_read_only = on;
ALTER DATABASE {db} SET work_mem = '5MB';
ALTER ROLE CURRENT_USER SET search_path = 'public, "$user"';
ALTER ROLE CURRENT_USER IN DATABASE {db} SET lock_timeout = '7s';
"""


# carol lets mallory create objects in her database (a tenant may grant that); mallory's table there carries the
# same trap. Restored logged in as carol, or as the superuser, it would run mallory's function as them: each object
# is restored by a login as its own owner, so it runs as mallory.
CAROL_GRANTS = "GRANT CONNECT ON DATABASE {db} TO {mallory}; GRANT USAGE, CREATE ON SCHEMA public TO {mallory};"
MALLORY_IN_CAROLS = MALLORY[:MALLORY.index("CREATE FUNCTION dr_twice")] + """
CREATE TABLE dr_rows (v int CHECK (public.dr_check(v)));
INSERT INTO dr_rows SELECT generate_series(1, 2);
GRANT SELECT ON dr_rows TO {carol};
"""


@dataclass
class Tenant:
    user: str
    password: str
    database: str


def connect_as(tenant: Tenant, port: int, **kw: Any) -> psycopg.Connection[Any]:
    return psycopg.connect(host="127.0.0.1", port=port, user=tenant.user, password=tenant.password,
                           dbname=tenant.database, connect_timeout=10, autocommit=True, **kw)


def pg_dump(url: str) -> str:
    """Everything restore promises to bring back (schema, data, owners, grants, comments, database properties),
    except the rows mallory's function added during the restore (dr_seen's data, compared separately)."""
    out = subprocess.run([str(_bin_dir() / "pg_dump"), "--create", "--exclude-table-data=public.dr_seen",
                          f"--dbname={url}"], capture_output=True, text=True, timeout=60, check=True).stdout
    return "\n".join(ln for ln in out.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


GLOBALS = ("SELECT rolname, rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, "
           "rolbypassrls, rolconnlimit, rolpassword, rolvaliduntil, "
           "(SELECT array_agg(coalesce(d.datname, '*') || ':' || array_to_string(s.setconfig, ',') "
           "ORDER BY d.datname NULLS FIRST) FROM pg_db_role_setting s "
           "LEFT JOIN pg_database d ON d.oid = s.setdatabase WHERE s.setrole = a.oid) "
           "FROM pg_authid a WHERE rolname NOT LIKE 'pg\\_%' ORDER BY rolname")


@dataclass
class Restored:
    source: EmbeddedPostgres
    restored: EmbeddedPostgres
    mallory: Tenant
    alice: Tenant
    carol: Tenant
    proof: Path  # where her public.now() writes, if a superuser session calls it
    the_set: Path  # the backup set the restore came from


def su(server: EmbeddedPostgres, database: str = "postgres") -> psycopg.Connection[Any]:
    return psycopg.connect(server.socket_url(database=database, driver=None).get_secret_value(), autocommit=True)


@pytest.fixture(scope="module")
def restored() -> Iterator[Restored]:
    base = traversable_tmpdir("inkmcp-drown-")
    data = base / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INKMCP_")}
    servers: list[EmbeddedPostgres] = []
    proof = Path(f"/tmp/inkmcp-drown-proof-{secrets.token_hex(6)}")  # a place the server's OS user can write
    try:
        made = subprocess.run([INKMCP, "keys", "create", "--account", "alice"], capture_output=True, text=True,
                              timeout=120, check=False, cwd="/tmp", env={**env, "INKMCP_DATA_DIR": str(data)})
        assert made.returncode == 0, made.stderr
        servers.append(EmbeddedPostgres(data / "pg" / "control"))  # `keys create` started it; stopped at the end
        port = free_port()
        source = EmbeddedPostgres(data / "pg" / "tenants", port=port)
        servers.append(source)
        source.start()
        (data / "pg" / "tenants.port").write_text(str(port))
        provider = PostgresDatabaseProvider(source.url(driver=None), public_host="127.0.0.1", public_port=port)

        def provision(slug: str) -> Tenant:
            creds = asyncio.run(provider.provision(owner_slug=slug, tier=Tier.free)).credentials
            return Tenant(creds.user, creds.password.get_secret_value(), creds.database)

        mallory, alice, carol = provision("drmallory"), provision("dralice"), provision("drcarol")
        with connect_as(carol, port) as conn:
            conn.execute(CAROL_GRANTS.replace("{db}", carol.database).replace("{mallory}", mallory.user))
        with connect_as(Tenant(mallory.user, mallory.password, carol.database), port) as conn:
            conn.execute(MALLORY_IN_CAROLS.replace("{role}", sql.quote(mallory.user)).replace("{carol}", carol.user))
        with su(source, alice.database) as conn:  # an operator's extension (only a superuser may create it)
            conn.execute("CREATE EXTENSION vector")
        with connect_as(alice, port) as conn:
            conn.execute("CREATE TABLE private (secret text, v vector(2)); "
                         "INSERT INTO private VALUES ('alice-only', '[1,2]')")
        with connect_as(mallory, port) as conn:
            conn.execute(MALLORY.replace("{role}", sql.quote(mallory.user)).replace("{db}", mallory.database)
                         .replace("{proof}", sql.quote(str(proof))))
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone() == (False,)

        the_set = create_backup(Settings(data_dir=data), base / "sets").path
        target = base / "restored"
        restore_backup(Settings(data_dir=target), the_set)
        after = EmbeddedPostgres(target / "pg" / "tenants")  # socket only: the source keeps its port
        servers.append(after)
        servers.append(EmbeddedPostgres(target / "pg" / "control"))
        after.start()
        yield Restored(source, after, mallory, alice, carol, proof, the_set)
    finally:
        for server in servers:
            if (server.pgdata / "PG_VERSION").exists():
                server.stop()
        shutil.rmtree(base, ignore_errors=True)
        proof.unlink(missing_ok=True)


def test_the_restore_runs_her_check_function_as_her_and_she_stays_an_ordinary_role(restored: Restored) -> None:
    m = restored.mallory
    with su(restored.restored) as conn:
        superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (m.user,)).fetchone()
    with su(restored.restored, m.database) as conn:
        seen = conn.execute("SELECT session_role, current_role_, superuser FROM dr_seen "
                            "WHERE app = 'pg_restore'").fetchall()
        rows = conn.execute("SELECT v, label, doubled FROM dr_rows ORDER BY v").fetchall()
    assert superuser == (False,), f"{m.user} became a superuser by the DR restore; her function saw {seen}"
    # her function did run, once per restored row, and every time as her own login, never a superuser's
    assert len(seen) == 3, seen
    assert set(seen) == {(m.user, m.user, False)}, seen
    assert rows == [(1, "x", 2), (2, "x", 4), (3, "x", 6)], rows  # the trigger came after the rows


def test_her_objects_in_another_tenants_database_are_restored_as_her(restored: Restored) -> None:
    """carol's database holds mallory's table and function (carol granted her CREATE): its rows are restored by a
    login as mallory, the object's owner, so her function runs as her there too, and carol's grant comes back."""
    m, c = restored.mallory, restored.carol
    with su(restored.restored, c.database) as conn:
        seen = conn.execute("SELECT session_role, current_role_, superuser FROM dr_seen "
                            "WHERE app = 'pg_restore'").fetchall()
        owner = conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'dr_rows'").fetchone()
        supers = conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper AND rolname IN (%s, %s)",
                              (m.user, c.user)).fetchall()
    assert supers == [], supers
    assert seen and set(seen) == {(m.user, m.user, False)}, seen
    assert owner == (m.user,), owner


def test_backing_up_never_calls_her_functions_as_the_superuser(restored: Restored) -> None:
    """The backup side: `inkmcp backup create` opens each tenant database as the superuser to export a snapshot.
    Her ALTER DATABASE SET search_path = public, pg_catalog applies to that session, so an unqualified now() in it
    called her public.now(), which wrote a file as the superuser (COPY TO; TO PROGRAM runs a shell the same way).
    Now the file never appears."""
    assert not restored.proof.exists(), f"her function ran as {restored.proof.read_text().strip()!r}"


def test_every_database_and_role_comes_back_as_dumped(restored: Restored) -> None:
    """Byte for byte: pg_dump --create of each tenant database (schema, data, owners, ACLs, comments, ALTER
    DATABASE SET, the matview's rows, the sequence) and every role's row, verifier and settings, source vs
    restored (the lent login is gone: mallory's own password works again and the lent one was never hers)."""
    src, dst = restored.source, restored.restored
    for tenant in (restored.mallory, restored.alice, restored.carol):
        before = pg_dump(src.socket_url(database=tenant.database, driver=None).get_secret_value())
        after = pg_dump(dst.socket_url(database=tenant.database, driver=None).get_secret_value())
        assert before == after, f"{tenant.database} differs after the DR restore"
        if tenant is restored.mallory:  # her settings that would lock a restore out came back too
            assert "SET default_transaction_read_only TO 'on'" in after and "IN DATABASE" in after, after
            assert "CREATE INDEX dr_rows_twice" in after and "dr_view" in after and "COPY public.dr_rows" in after
        if tenant is restored.alice:
            assert "CREATE EXTENSION IF NOT EXISTS vector" in after and "[1,2]" in after, after
    with su(src) as a, su(dst) as b:
        assert a.execute(GLOBALS).fetchall() == b.execute(GLOBALS).fetchall()
    # mallory's own password logs her in on the restored server (socket: it listens on no port here)
    m = restored.mallory
    with psycopg.connect(host=str(dst.socket_dir), port=dst.socket_port, user=m.user, password=m.password,
                         dbname=m.database, connect_timeout=10) as conn:
        assert conn.execute("SELECT count(*) FROM public.dr_rows").fetchone() == (3,)
        with pytest.raises(psycopg.Error):  # and alice's database stays closed to her
            psycopg.connect(host=str(dst.socket_dir), port=dst.socket_port, user=m.user, password=m.password,
                            dbname=restored.alice.database, connect_timeout=10).close()


def test_the_documented_external_restore_runs_her_code_as_her(restored: Restored, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """docs/backup.md's procedure for an external tenant server (the snippet under "External servers", run as written)
    into a fresh server reached over TCP with the superuser's password in the URL: her function runs as her, she
    stays an ordinary role, alice's data is there, and no password (the superuser's or a lent one) is ever on a
    command line (mender7: the doc said "restore their dumps with pg_restore", i.e. as the superuser, the attack
    above; and the admin URL's password went into pg_dump's/pg_restore's argv, where `ps` shows it)."""
    doc = (Path(__file__).parents[2] / "docs" / "backup.md").read_text()
    snippet = doc.split("## External servers", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    base = traversable_tmpdir("inkmcp-drext-")
    server = EmbeddedPostgres(base / "pg", port=free_port())
    argvs: list[list[str]] = []
    real_run = pgtools.subprocess.run

    def recording_run(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        argvs.append([str(a) for a in argv])
        return real_run(argv, *args, **kwargs)

    monkeypatch.setattr(pgtools.subprocess, "run", recording_run)
    try:
        server.start()
        admin = server.url(database="template1", driver=None).get_secret_value()
        password = psycopg.conninfo.conninfo_to_dict(admin)["password"]
        assert password and "@127.0.0.1:" in admin  # TCP, with a password: as an external server is reached
        code = (snippet.replace('Path("/mnt/backups/inkmcp-backup-…")', "Path(THE_SET)")
                .replace('"postgresql://postgres:…@tenant-db.internal:5432/template1"', "ADMIN"))
        assert "THE_SET" in code and "ADMIN" in code, snippet
        exec(compile(code, "docs/backup.md", "exec"), {"THE_SET": str(restored.the_set), "ADMIN": admin})  # noqa: S102 (the doc's own code)

        m = restored.mallory
        with su(server) as conn:
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (m.user,)).fetchone() == (False,)
        with su(server, m.database) as conn:
            seen = conn.execute("SELECT session_role, current_role_, superuser FROM dr_seen "
                                "WHERE app = 'pg_restore'").fetchall()
        assert len(seen) == 3 and set(seen) == {(m.user, m.user, False)}, seen
        with su(server, restored.alice.database) as conn:
            assert conn.execute("SELECT secret FROM private").fetchall() == [("alice-only",)]
        assert any("pg_restore" in a[0] for a in argvs) and any("psql" in a[0] for a in argvs)
        assert not [a for a in argvs if any(password in part for part in a)], "a password on a command line"
    finally:
        if (server.pgdata / "PG_VERSION").exists():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)
