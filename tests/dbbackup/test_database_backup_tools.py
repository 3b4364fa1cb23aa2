"""The database backup tools over the real MCP transport of a real `inkmcp serve` (issue 10 item 2): an agent backs
up, breaks its schema, restores with progress, the app is restarted on the restored database, the restore is undone;
another account's attack with a stolen backup id; dump files out of a tenant user's reach; the schedule `serve`
runs. Service-level cases (damaged dumps, retention, concurrency) are in tests/core/test_database_backups.py."""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.requirements import require_root
from tests.support import ServerProc, call, call_error, git_repo, mcp_session, running_server, traversable_tmpdir

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

APP = {
    "app.py": '''
import os, time
from http.server import BaseHTTPRequestHandler, HTTPServer
started = f"{os.getpid()}@{time.time()}"
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = f"{started} db={'DATABASE_URL' in os.environ}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProc]:
    # a short schedule, so the test sees `serve` run it; 2 kept per kind
    with running_server("inkmcp-dbb-", ("alice", "bob"), INKMCP_DB_BACKUP_INTERVAL_S="2",
                        INKMCP_DB_BACKUP_KEEP="2") as srv:
        yield srv


def served(server: ServerProc, url: str) -> str:
    host = httpx.URL(url).host
    r = httpx.get(f"http://127.0.0.1:{server.proxy_port}/", headers={"Host": host}, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


async def rows(url: str) -> list[int]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
        return [r[0] for r in await (await c.execute("SELECT id FROM orders ORDER BY id")).fetchall()]


async def test_backup_break_restore_undo_and_attack_over_mcp(server: ServerProc) -> None:
    repos = traversable_tmpdir("inkmcp-dbb-repos-")
    try:
        await _scenario(server, git_repo(repos / "dbb-shop", APP))
    finally:
        shutil.rmtree(repos, ignore_errors=True)


async def _scenario(server: ServerProc, repo: Path) -> None:
    progress: list[str] = []
    async with mcp_session(server, server.keys["alice"]) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        assert tools["restore_database_backup"].annotations.destructive_hint is True
        # listing and dumping are one tool (issue 13: the tools/list budget); create=true runs the retention, which
        # deletes old dumps (shown at the end), so the hint says destructive
        backups_hints = tools["database_backups"].annotations
        assert backups_hints.destructive_hint is True and not backups_hints.read_only_hint

        dep = await call(s, "deploy_app", repo_url=str(repo), project_name="dbb-shop", mode="persistent",
                         start_command="python app.py", database={"type": "postgres"})
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "live", dep
        before = served(server, dep["url"])
        assert before.endswith("db=True")
        url = (await call(s, "get_database_credentials", project_name="dbb-shop"))["url"]
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:
            await c.execute("CREATE TABLE orders (id int PRIMARY KEY)")
            await c.execute("INSERT INTO orders SELECT generate_series(1, 5)")

        # a bad limit is refused before anything is dumped
        msg = await call_error(s, "database_backups", project_name="dbb-shop", create=True, limit=500)
        assert "limit" in msg
        assert (await call(s, "database_backups", project_name="dbb-shop"))["created"] is None

        made = await call(s, "database_backups", progress, project_name="dbb-shop", create=True)
        backup_id = made["created"]["id"]
        assert made["created"]["kind"] == "manual" and made["created"]["size_bytes"] > 0
        # the answer is the list with the new dump in it; only it is manual (the refused call made none). Not
        # "first": the 2 s schedule may start a newer scheduled dump before the list is read (CI run 32)
        assert [b for b in made["backups"] if b["kind"] == "manual"] == [made["created"]]
        assert backup_id in made["note"] and "restore_database_backup" in made["note"]
        assert any("dumping the database" in p for p in progress)

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as c:  # the bad migration
            await c.execute("DROP TABLE orders")

        msg = await call_error(s, "restore_database_backup", project_name="dbb-shop", backup_id=backup_id,
                               confirm="yes")
        assert "confirm" in msg and "'dbb-shop'" in msg
        progress.clear()
        done = await call(s, "restore_database_backup", progress, project_name="dbb-shop", backup_id=backup_id,
                          confirm="dbb-shop")
        assert await rows(url) == [1, 2, 3, 4, 5]
        assert done["restarted"] == ["web"] and done["undo_backup_id"] in done["note"]
        assert "saving the current state as a pre-restore backup" in progress
        assert "restarting the project's services on the restored database" in progress
        after = served(server, dep["url"])
        assert after != before and after.endswith("db=True")  # new processes, on the restored database

        listed = await call(s, "database_backups", project_name="dbb-shop", limit=50)
        ids = [b["id"] for b in listed["backups"]]
        assert ids.index(done["undo_backup_id"]) < ids.index(backup_id)  # newest first
        assert [b["created_at"] for b in listed["backups"]] == sorted(
            (b["created_at"] for b in listed["backups"]), reverse=True)
        one = await call(s, "database_backups", project_name="dbb-shop", limit=1)
        assert len(one["backups"]) == 1 and one["truncated"] is True and one["total"] == listed["total"]

        # the restore itself is undone: the dropped table is dropped again
        await call(s, "restore_database_backup", project_name="dbb-shop", backup_id=done["undo_backup_id"],
                   confirm="dbb-shop")
        with pytest.raises(psycopg.errors.UndefinedTable):
            await rows(url)

    async with mcp_session(server, server.keys["bob"]) as b:
        await call(b, "ensure_project", name="dbb-bob")
        await call(b, "provision_database", project_name="dbb-bob")
        bob_url = (await call(b, "get_database_credentials", project_name="dbb-bob"))["url"]
        # alice's project by name: not his (the answer a name nobody has gets)
        for tool, args in [("database_backups", {}), ("database_backups", {"create": True}),
                           ("restore_database_backup", {"backup_id": backup_id, "confirm": "dbb-shop"})]:
            err = await call_error(b, tool, project_name="dbb-shop", **args)
            assert "no project named 'dbb-shop'" in err, err
        # alice's backup id with his own project: exactly what an id that never existed gets
        stolen = await call_error(b, "restore_database_backup", project_name="dbb-bob", backup_id=backup_id,
                                  confirm="dbb-bob")
        missing = str(uuid.uuid4())
        nothing = await call_error(b, "restore_database_backup", project_name="dbb-bob", backup_id=missing,
                                   confirm="dbb-bob")
        assert stolen.replace(backup_id, "ID") == nothing.replace(missing, "ID") and "no backup" in stolen
        async with await psycopg.AsyncConnection.connect(bob_url, autocommit=True) as c:
            cur = await c.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
            assert (await cur.fetchone()) == (0,)  # alice's tables never reached bob's database
        theirs = (await call(b, "database_backups", project_name="dbb-bob"))["backups"]
        assert backup_id not in [x["id"] for x in theirs] and all(x["kind"] == "scheduled" for x in theirs)

    # `serve` runs the schedule: a scheduled dump of each database shows up
    async with mcp_session(server, server.keys["alice"]) as s:
        deadline = time.monotonic() + 30
        while not any(b["kind"] == "scheduled" for b in (await call(s, "database_backups",
                                                                    project_name="dbb-shop", limit=50))["backups"]):
            assert time.monotonic() < deadline, "no scheduled dump within 30 s"
            await asyncio.sleep(0.2)
        # why database_backups is annotated destructive: with 2 kept per kind, two more create=true calls delete the
        # first manual dump (its row and its file)
        [first_file] = (server.data_dir / "backups" / "databases").glob(f"*/{uuid.UUID(backup_id).hex}.dump")
        for _ in range(2):
            await call(s, "database_backups", project_name="dbb-shop", create=True)
        manual = [b["id"] for b in (await call(s, "database_backups", project_name="dbb-shop", limit=50))["backups"]
                  if b["kind"] == "manual"]
        assert len(manual) == 2 and backup_id not in manual, manual
        assert not first_file.exists()

    # the dumps: 0700 directories, 0600 files, owned by the server's user; a tenant's Unix user cannot read them
    root = server.data_dir / "backups" / "databases"
    dumps = sorted(root.glob("*/*.dump"))
    assert dumps and stat.S_IMODE(root.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o600 and stat.S_IMODE(d.parent.stat().st_mode) == 0o700
               for d in dumps)
    require_root("a tenant's Unix user exists only when InkMCP runs as root")
    tenant = next(line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()
                  if line.split(":")[5].startswith(f"{server.data_dir}/compute/homes/"))
    attack = subprocess.run(["runuser", "-u", tenant, "--", "cat", str(dumps[0])], capture_output=True,
                            timeout=30, check=False)
    assert attack.returncode != 0 and b"Permission denied" in attack.stderr and not attack.stdout
