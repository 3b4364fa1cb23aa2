"""Tenant database backups (issue 10 item 2) over the real store and the real embedded tenant Postgres: dump, bad
migration, restore, undo; retention; cross-account refusal; damaged dumps refused with the database untouched;
concurrent restores; the schedule. The MCP tools over the real transport are in tests/dbbackup/."""

from __future__ import annotations

import asyncio
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import select, update

from inkmcp.core.databases import DatabaseRequest
from inkmcp.core.principal import Principal
from inkmcp.dbbackup.models import DatabaseBackup
from inkmcp.dbbackup.service import DatabaseBackupService, DatabaseBackupSettings, start_scheduler
from inkmcp.errors import InvalidArgument, NotFound, ProviderError
from inkmcp.store.models import AuditEntry, Database
from tests.core.conftest import Core


def make_service(core: Core, root: Path, **settings: object) -> DatabaseBackupService:
    return DatabaseBackupService(
        core.store.sessionmaker, projects=core.projects, admin_url=core.tenant_pg.url(), root=root,
        settings=DatabaseBackupSettings(**settings),  # type: ignore[arg-type]
        deploys=core.deploys, audit=core.platform.audit,
        databases=core.databases)  # --- attacker2: restores log in as the tenant (pgtools.restore)


@pytest.fixture
async def env(make_core: Callable[..., Core], tmp_path: Path) -> AsyncIterator[tuple[Core, DatabaseBackupService]]:
    core = make_core()
    yield core, make_service(core, tmp_path / "backups", keep=2, interval_s=3600)


async def project_with_rows(core: Core, rows: int = 3) -> tuple[Principal, str, str]:
    """An account, a project with a managed Postgres holding `items` (ids 1..rows); returns (principal, name, url)."""
    acct = await core.account("bk")
    name = core.name("bk")
    project, _ = await core.projects.ensure(acct, name)
    info = await core.databases.ensure(project.id, DatabaseRequest())
    url = info.url.get_secret_value()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL)")
        await c.execute("INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, %s) g", (rows,))
    return acct, name, url


async def items(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        return [r[0] for r in await (await c.execute("SELECT id FROM items ORDER BY id")).fetchall()]


async def tables(url: str) -> set[str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        cur = await c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r[0] for r in await cur.fetchall()}


async def leftover_databases(core: Core) -> list[str]:
    async with await psycopg.AsyncConnection.connect(core.tenant_pg.url(driver=None).get_secret_value()) as c:
        cur = await c.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ink\\_restore\\_%' "
                              "OR datname LIKE 'ink\\_old\\_%'")
        return [r[0] for r in await cur.fetchall()]


async def test_backup_bad_migration_restore_and_undo(env: tuple[Core, DatabaseBackupService]) -> None:
    core, svc = env
    acct, name, url = await project_with_rows(core)
    steps: list[str] = []

    async def progress(line: str) -> None:
        steps.append(line)

    made = await svc.backup(acct, name, on_progress=progress)
    assert made.backup.kind == "manual" and made.backup.status == "ok" and made.backup.size_bytes
    assert any("dumping" in s for s in steps)

    # the file: named by ids, readable by the server's user only, in a directory only it can enter
    async with core.store.sessionmaker() as s:
        row = await s.get(DatabaseBackup, uuid.UUID(made.backup.id))
    assert row is not None and row.file == f"{row.project_id.hex}/{row.id.hex}.dump"
    path = svc.root / row.file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and stat.S_IMODE(svc.root.stat().st_mode) == 0o700

    # the bad migration: the table is gone, and a row written after the backup too
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("INSERT INTO items VALUES (4, 'after the backup')")
        await c.execute("DROP TABLE items")
        await c.execute("CREATE TABLE wrong (x int)")

    steps.clear()
    done = await svc.restore(acct, name, made.backup.id, confirm=name, on_progress=progress)
    assert await items(url) == [1, 2, 3] and await tables(url) == {"items"}
    assert done.restored == made.backup.id and done.undo_backup_id != made.backup.id
    assert [s for s in steps if not s.startswith("dumping:")][:3] == [
        f"checking backup {made.backup.id}", "saving the current state as a pre-restore backup",
        f"dumping the database (pre-restore backup {done.undo_backup_id})"]
    assert "switching the project to the restored database" in steps
    # the restored objects belong to the tenant, not the superuser who ran pg_restore
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        owner = await (await c.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'items'")).fetchone()
        assert owner is not None and owner[0] == (await core.databases.get((await core.projects.get(acct, name)).id)
                                                  ).user
        await c.execute("INSERT INTO items VALUES (10, 'the tenant still writes')")  # its login works as before

    # the restore itself is undone by the pre-restore backup: the bad state (table `wrong`, no items) comes back
    listed = await svc.list(acct, name)
    assert [b.id for b in listed.backups][:2] == [done.undo_backup_id, made.backup.id]  # newest first
    assert listed.backups[0].kind == "pre-restore"
    await svc.restore(acct, name, done.undo_backup_id, confirm=name)
    assert await tables(url) == {"wrong"}
    assert await leftover_databases(core) == []

    # audited, with the backup id and no secret
    async with core.store.sessionmaker() as s:
        actions = (await s.execute(select(AuditEntry.action).where(AuditEntry.account_id == acct.account_id))
                   ).scalars().all()
    assert actions.count("restore_database_backup") == 2 and "backup_database" in actions


async def test_wrong_confirm_and_bad_ids_are_refused_with_what_to_pass(env: tuple[Core, DatabaseBackupService]
                                                                       ) -> None:
    core, svc = env
    acct, name, url = await project_with_rows(core)
    made = await svc.backup(acct, name)
    with pytest.raises(InvalidArgument) as e:
        await svc.restore(acct, name, made.backup.id, confirm="yes")
    assert e.value.argument == "confirm" and repr(name) in e.value.render()
    with pytest.raises(InvalidArgument) as e:
        await svc.restore(acct, name, "latest", confirm=name)
    assert e.value.argument == "backup_id" and "pass an id from database_backups(" in e.value.render()
    with pytest.raises(InvalidArgument) as e:
        await svc.list(acct, name, limit=500)
    assert e.value.argument == "limit" and "1..50" in e.value.render()
    assert await items(url) == [1, 2, 3]


async def test_database_backups_lists_and_creates_and_refuses_a_bad_limit_before_dumping(
        env: tuple[Core, DatabaseBackupService]) -> None:
    """The one `database_backups` tool (issue 13 folded list + backup): the list, or a dump first and then the list
    with it on top; a limit out of range is refused before a dump is made (the tool's arguments are bounded too, but
    the service is the last line)."""
    core, svc = env
    acct, name, _ = await project_with_rows(core)
    assert (await svc.backups(acct, name)).total == 0
    with pytest.raises(InvalidArgument) as e:
        await svc.backups(acct, name, create=True, limit=0)
    assert e.value.argument == "limit"
    listed = await svc.backups(acct, name)
    assert listed.total == 0 and listed.created is None and "every 1 h" in listed.note
    made = await svc.backups(acct, name, create=True, limit=1)
    assert made.created is not None and made.created.kind == "manual" and made.backups == [made.created]
    assert made.total == 1 and made.created.id in made.note and "restore_database_backup(" in made.note


async def test_another_account_cannot_list_restore_or_use_a_backup_id(env: tuple[Core, DatabaseBackupService]
                                                                      ) -> None:
    core, svc = env
    alice, a_name, a_url = await project_with_rows(core)
    a_backup = (await svc.backup(alice, a_name)).backup.id
    bob, b_name, b_url = await project_with_rows(core, rows=1)

    # bob names alice's project: no such project, as for any name he does not own
    with pytest.raises(NotFound) as e:
        await svc.restore(bob, a_name, a_backup, confirm=a_name)
    assert e.value.render() == (await _error(svc.restore(bob, "nobody-has-this", a_backup, "nobody-has-this"))
                                ).replace("nobody-has-this", a_name)
    with pytest.raises(NotFound):
        await svc.list(bob, a_name)
    with pytest.raises(NotFound):
        await svc.backup(bob, a_name)

    # bob passes alice's backup id with his own project: refused exactly like an id that does not exist
    stolen = await _error(svc.restore(bob, b_name, a_backup, confirm=b_name))
    missing = str(uuid.uuid4())
    assert stolen.replace(a_backup, "ID") == (await _error(svc.restore(bob, b_name, missing, confirm=b_name))
                                               ).replace(missing, "ID")
    assert "no backup" in stolen
    # nothing moved: bob's data is his, alice's is hers, and bob got no pre-restore backup out of it
    assert await items(b_url) == [1] and await items(a_url) == [1, 2, 3]
    assert (await svc.list(bob, b_name)).total == 0


async def _error(call: object) -> str:
    with pytest.raises((NotFound, InvalidArgument)) as e:
        await call  # type: ignore[misc]
    return e.value.render()


async def test_damaged_dumps_are_refused_and_the_database_is_untouched(env: tuple[Core, DatabaseBackupService]
                                                                       ) -> None:
    core, svc = env
    acct, name, url = await project_with_rows(core, rows=20000)
    good = (await svc.backup(acct, name)).backup.id
    bad = (await svc.backup(acct, name)).backup.id
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("DELETE FROM items WHERE id > 5")  # the state a failed restore must not lose
    async with core.store.sessionmaker() as s:
        row = await s.get(DatabaseBackup, uuid.UUID(bad))
    assert row is not None
    path = svc.root / row.file
    intact = path.read_bytes()

    # 1. truncated on disk: the recorded size and checksum do not match
    path.write_bytes(intact[: len(intact) // 2])
    with pytest.raises(ProviderError) as e:
        await svc.restore(acct, name, bad, confirm=name)
    assert "damaged" in e.value.message and "nothing was changed" in e.value.message
    assert e.value.argument == "backup_id" and "another backup_id" in (e.value.fix or "")

    # 2. damaged before it was recorded (checksum matches the bad bytes): the table of contents still reads, the
    # data does not; pg_restore fails in the scratch database, which is dropped; the live database is as it was
    body = bytearray(intact)
    for i in range(len(body) // 2, len(body) // 2 + 64):  # inside the table's compressed data
        body[i] ^= 0x5A
    path.write_bytes(bytes(body))
    from inkmcp.backup.manifest import sha256_file as file_digest

    size, digest = file_digest(path)
    async with core.store.sessionmaker.begin() as s:
        await s.execute(update(DatabaseBackup).where(DatabaseBackup.id == row.id).values(size_bytes=size,
                                                                                        sha256=digest))
    with pytest.raises(ProviderError) as e:
        await svc.restore(acct, name, bad, confirm=name)
    assert "could not be restored" in e.value.message and "nothing was changed" in e.value.message
    assert await items(url) == [1, 2, 3, 4, 5]
    assert await leftover_databases(core) == []

    # a good one still restores
    await svc.restore(acct, name, good, confirm=name)
    assert len(await items(url)) == 20000


async def test_retention_keeps_n_per_kind_and_deletes_the_files(env: tuple[Core, DatabaseBackupService],
                                                                tmp_path: Path) -> None:
    core, _ = env
    svc = make_service(core, tmp_path / "retention", keep=2, interval_s=0.001)
    acct, name, _url = await project_with_rows(core)
    manual = (await svc.backup(acct, name)).backup.id
    project = await core.projects.get(acct, name)
    made = []
    for _ in range(4):
        assert await svc.run_due({project.id}) == 1
        async with core.store.sessionmaker() as s:
            made.append((await s.execute(select(DatabaseBackup.id).where(
                DatabaseBackup.project_id == project.id, DatabaseBackup.kind == "scheduled")
                .order_by(DatabaseBackup.created_at.desc()).limit(1))).scalar_one())
    listed = await svc.list(acct, name)
    scheduled = [b.id for b in listed.backups if b.kind == "scheduled"]
    assert scheduled == [str(made[3]), str(made[2])]  # the newest two
    assert manual in [b.id for b in listed.backups]  # scheduled dumps never push out a manual one
    files = sorted(p.name for p in (svc.root / project.id.hex).iterdir())
    assert files == sorted(f"{uuid.UUID(i).hex}.dump" for i in [*scheduled, manual])


async def test_due_only_after_the_interval_and_files_of_deleted_projects_are_swept(
        env: tuple[Core, DatabaseBackupService]) -> None:
    core, svc = env  # interval 1 h
    acct, name, _url = await project_with_rows(core)
    project = await core.projects.get(acct, name)
    assert await svc.run_due({project.id}) == 1
    assert await svc.run_due({project.id}) == 0  # not due again within the hour
    async with core.store.sessionmaker() as s:
        n = len((await s.execute(select(DatabaseBackup.id).where(DatabaseBackup.project_id == project.id,
                                                                 DatabaseBackup.kind == "scheduled"))).all())
    assert n == 1
    await core.platform.delete_project(acct, name, name, delete_database=True)
    await svc.run_due(set())  # the sweep of deleted projects' files runs on every pass
    assert not (svc.root / project.id.hex).exists()


async def test_leftovers_of_an_interrupted_restore_are_dropped_unless_one_runs(
        env: tuple[Core, DatabaseBackupService]) -> None:
    core, svc = env
    acct, name, _url = await project_with_rows(core)
    owner = (await core.databases.get((await core.projects.get(acct, name)).id)).user
    admin = core.tenant_pg.url(driver=None).get_secret_value()
    dead, busy = f"ink_restore_{uuid.uuid4().hex[:24]}", f"ink_old_{uuid.uuid4().hex[:24]}"
    async with await psycopg.AsyncConnection.connect(admin, autocommit=True) as c:
        for db in (dead, busy):
            await c.execute(f'CREATE DATABASE "{db}" OWNER "{owner}"')
    async with svc._locked(owner):  # a restore of this tenant in progress: its databases are not touched
        assert dead not in await svc._sweep_databases()
    assert set(await svc._sweep_databases()) >= {dead, busy}
    assert not {dead, busy} & set(await leftover_databases(core))


async def test_concurrent_restores_run_one_after_the_other_and_sessions_are_cut(
        env: tuple[Core, DatabaseBackupService]) -> None:
    core, svc = env
    acct, name, url = await project_with_rows(core)
    three = (await svc.backup(acct, name)).backup.id
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        await c.execute("INSERT INTO items VALUES (4, 'four')")
    four = (await svc.backup(acct, name)).backup.id
    app = await psycopg.AsyncConnection.connect(url, autocommit=True)  # an app's pooled connection
    try:
        results = await asyncio.gather(svc.restore(acct, name, three, confirm=name),
                                       svc.restore(acct, name, four, confirm=name))
        assert {r.restored for r in results} == {three, four}
        assert len({r.undo_backup_id for r in results}) == 2
        assert await items(url) in ([1, 2, 3], [1, 2, 3, 4])
        with pytest.raises(psycopg.OperationalError):  # the old database's session was terminated
            await app.execute("SELECT 1")
    finally:
        await app.close()
    assert await leftover_databases(core) == []
    # each restore saved what was live before it: one of them saved the other's result
    async with core.store.sessionmaker() as s:
        pre = (await s.execute(select(DatabaseBackup).where(DatabaseBackup.kind == "pre-restore",
                                                            DatabaseBackup.id.in_([uuid.UUID(r.undo_backup_id)
                                                                                   for r in results])))).scalars()
        assert all(r.status == "ok" for r in pre)


async def test_databases_inkmcp_does_not_dump_say_who_does(env: tuple[Core, DatabaseBackupService]) -> None:
    core, svc = env
    acct, name, _url = await project_with_rows(core)
    project = await core.projects.get(acct, name)
    for provider, says in [("neon", "point-in-time"), ("coolify", "Coolify"), ("byo", "bring-your-own")]:
        async with core.store.sessionmaker.begin() as s:
            await s.execute(update(Database).where(Database.project_id == project.id).values(provider=provider))
        assert says in (await svc.list(acct, name)).note
        with pytest.raises(InvalidArgument) as e:
            await svc.backup(acct, name)
        assert says in e.value.message
    async with core.store.sessionmaker.begin() as s:
        await s.execute(update(Database).where(Database.project_id == project.id).values(provider="postgres"))
    assert await svc.run_due({project.id}) == 1  # the schedule dumps only our own server's databases


async def test_scheduler_task_dumps_and_stops_with_the_runtime(make_core: Callable[..., Core], tmp_path: Path
                                                               ) -> None:
    core = make_core()
    svc = make_service(core, tmp_path / "sched", keep=3, interval_s=1)
    acct, name, _url = await project_with_rows(core)
    project = await core.projects.get(acct, name)
    real_pass = svc.run_due
    svc.run_due = lambda: real_pass({project.id})  # type: ignore[method-assign]  # the store is shared by tests
    async with AsyncExitStack() as stack:
        task = start_scheduler(stack, svc)
        assert task is not None
        deadline = asyncio.get_running_loop().time() + 20
        while True:
            async with core.store.sessionmaker() as s:
                ok = (await s.execute(select(DatabaseBackup.id).where(
                    DatabaseBackup.project_id == project.id, DatabaseBackup.kind == "scheduled",
                    DatabaseBackup.status == "ok"))).all()
            if len(ok) >= 2:
                break
            assert asyncio.get_running_loop().time() < deadline, "no scheduled dumps within 20 s"
            await asyncio.sleep(0.1)
    assert task.done()
    assert start_scheduler(AsyncExitStack(), make_service(core, tmp_path / "off", interval_s=0)) is None


def test_backup_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("INKMCP_DB_BACKUP_INTERVAL_S", "0")
    monkeypatch.setenv("INKMCP_DB_BACKUP_KEEP", "3")
    s = DatabaseBackupSettings()
    assert (s.interval_s, s.keep, s.root(tmp_path)) == (0, 3, tmp_path / "backups" / "databases")
    monkeypatch.setenv("INKMCP_DB_BACKUP_KEEP", "0")
    from inkmcp.dbbackup.service import build_database_backups
    from inkmcp.errors import InkError

    with pytest.raises(InkError) as e:
        build_database_backups(object(), core_url_unused(), tmp_path)
    assert e.value.argument == "INKMCP_DB_BACKUP_KEEP"
    assert os.environ["INKMCP_DB_BACKUP_KEEP"] == "0"


def core_url_unused():  # the settings are read before anything else is touched
    from pydantic import SecretStr

    return SecretStr("postgresql://unused@localhost/x")


async def test_a_failed_dump_is_recorded_as_failed_and_leaves_no_file(env: tuple[Core, DatabaseBackupService]
                                                                      ) -> None:
    core, svc = env
    acct, name, _url = await project_with_rows(core)
    project = await core.projects.get(acct, name)
    async with core.store.sessionmaker.begin() as s:  # the database vanished from the server behind our back
        await s.execute(update(Database).where(Database.project_id == project.id).values(
            external_id=f"ink_{uuid.uuid4().hex}"))
    with pytest.raises(ProviderError) as e:
        await svc.backup(acct, name)
    assert "pg_dump" in e.value.message and "does not exist" in e.value.message
    listed = await svc.list(acct, name)
    assert [(b.kind, b.status, b.size_bytes) for b in listed.backups] == [("manual", "failed", None)]
    assert list((svc.root / project.id.hex).iterdir()) == []
    with pytest.raises(NotFound):  # a failed dump is not restorable
        await svc.restore(acct, name, listed.backups[0].id, confirm=name)


async def test_a_restore_keeps_the_databases_own_settings(env: tuple[Core, DatabaseBackupService]) -> None:
    """What the owner set on the database itself (ALTER DATABASE SET, ALTER ROLE IN DATABASE SET, CONNECTION LIMIT,
    a GRANT on it) is configuration, not data: the database put in place by a restore keeps it (mender7: the scratch
    database came without any, so every such setting was gone after a restore)."""
    core, svc = env
    acct, name, url = await project_with_rows(core)
    made = await svc.backup(acct, name)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:  # as the tenant, the owner
        db, me = (await (await c.execute("SELECT current_database(), current_user")).fetchone())  # type: ignore[misc]
        await c.execute(f'ALTER DATABASE "{db}" SET lock_timeout = \'17s\'')
        await c.execute(f'ALTER DATABASE "{db}" SET search_path = public, "$user"')
        await c.execute(f'ALTER ROLE "{me}" IN DATABASE "{db}" SET work_mem = \'7MB\'')
        await c.execute(f'ALTER DATABASE "{db}" CONNECTION LIMIT 9')
        await c.execute(f'GRANT TEMPORARY ON DATABASE "{db}" TO PUBLIC')

    async def settings() -> tuple[object, ...]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            row = await (await c.execute(
                "SELECT current_setting('lock_timeout'), current_setting('search_path'), "
                "current_setting('work_mem'), d.datconnlimit, d.datacl::text, "
                "(SELECT array_agg(s.setconfig::text ORDER BY s.setrole) FROM pg_db_role_setting s "
                " WHERE s.setdatabase = d.oid) FROM pg_database d WHERE d.datname = current_database()")).fetchone()
        assert row is not None
        return tuple(row)

    before = await settings()
    assert before[:4] == ("17s", 'public, "$user"', "7MB", 9) and "=T/" in before[4]
    await svc.restore(acct, name, made.backup.id, confirm=name)
    assert await settings() == before
    assert await items(url) == [1, 2, 3]
