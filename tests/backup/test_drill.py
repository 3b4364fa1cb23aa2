"""The restore drill (issue 10 item 4): the whole one-machine cycle with a real `inkmcp serve`, real Postgres and
Redis, a real app and a real MCP client, checking that a restore loses nothing and adds nothing.

deploy app + Postgres + Redis, write rows, set env → `inkmcp backup create` while serving → write more, change env,
add a key → stop, delete the data dir → `inkmcp backup restore` → serve → the same API key works (the later one
does not), env, rows and Redis data are exactly those at backup time, deployment history and audit log unchanged,
the app answers at its URL again (rebuilt from its recorded commit, from the set's copy of the repository: the
repository is deleted too).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from inkmcp.backup.manifest import verify
from inkmcp.providers.compute.local.diskquota import mount_points
from inkmcp.store.embedded import _bin_dir
from tests.backup.apps import DRILL_APP
from tests.e2e.probes import metric_value
from tests.support import (
    ServerProc,
    call,
    dispose_server,
    git_repo,
    make_server,
    mcp_session,
    remove_tenant_users,
    traversable_tmpdir,
)

pytestmark = pytest.mark.slow
PROJECT = "drill"


def app_get(srv: ServerProc, path: str, timeout: float = 10) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{srv.proxy_port}{path}", headers={"Host": f"web.{PROJECT}.localhost"},
                     timeout=timeout)


def app_json(srv: ServerProc, path: str) -> dict[str, Any]:
    r = app_get(srv, path)
    if r.status_code != 200:  # the app's own output says why
        logs = srv.cli("logs", PROJECT, "-a", "default", "--tail", "40", check=False)
        raise AssertionError(f"{path}: {r.status_code} {r.text[:200]}\napp log:\n{logs.stdout}{logs.stderr}")
    return r.json()


def wait_app(srv: ServerProc, timeout: float) -> None:
    """Poll the app's URL until it answers 200 (a restore rebuilds it first)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            r = app_get(srv, "/", timeout=5)
            if r.status_code == 200:
                return
            last = r.status_code
        except httpx.HTTPError as e:
            last = e
        time.sleep(0.3)
    raise AssertionError(f"the app did not come back within {timeout} s (last: {last}):\n{srv.log()}")


async def deploy(session: Any, repo: Path) -> dict[str, Any]:
    view = await call(session, "deploy_app", repo_url=str(repo), project_name=PROJECT, service_name="web",
                      start_command="python app.py", database={"type": ["postgres", "redis"]},
                      env_vars={"GREETING": "before-backup-greeting"})
    deadline = time.monotonic() + 240
    while view["status"] not in ("live", "failed") and time.monotonic() < deadline:
        view = await call(session, "wait_for_deployment", deployment_id=view["deployment_id"], timeout_seconds=30)
    assert view["status"] == "live", view
    return view


def audit(srv: ServerProc) -> list[dict[str, Any]]:
    out = srv.cli("audit", "--account", "default", "--json").stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def plain_sql(dump: Path) -> str:
    """The SQL text of a custom-format dump (compressed on disk): what an attacker with the set can read."""
    return subprocess.run([str(_bin_dir() / "pg_restore"), "--file=-", str(dump)], capture_output=True, text=True,
                          check=True).stdout


async def state(srv: ServerProc, key: str, deployment_id: str) -> dict[str, Any]:
    async with mcp_session(srv, key) as s:
        services = (await call(s, "list_services", project_name=PROJECT))["services"]
        env = await call(s, "list_env_vars", project_name=PROJECT, reveal=True)
        creds = await call(s, "get_database_credentials", project_name=PROJECT)
        dep = await call(s, "wait_for_deployment", deployment_id=deployment_id, timeout_seconds=0)
    return {"services": [(x["name"], x.get("url"), x.get("deployment_id")) for x in services],
            "env": env, "creds": creds, "deployment": {k: dep[k] for k in ("status", "commit", "url", "history")}}


T0 = time.monotonic()


def mark(what: str) -> None:
    print(f"[drill {time.monotonic() - T0:6.1f}] {what}", flush=True)


def test_restore_drill(tmp_path: Path) -> None:
    global T0
    T0 = time.monotonic()
    scheduled = traversable_tmpdir("inkmcp-drill-sched-")
    # scheduled backups run the whole time too: every 2 s, keeping 1 (retention), reported in /metrics
    srv = make_server("inkmcp-drill-", INKMCP_BACKUP_DIR=str(scheduled), INKMCP_BACKUP_INTERVAL_S="2",
                      INKMCP_BACKUP_KEEP="1")
    repo = git_repo(srv.data_dir.parent / "repo", DRILL_APP)
    sets = srv.data_dir.parent / "sets"
    try:
        srv.start()  # the first start makes account `default` and prints its key (no CLI start-up, no extra initdb)
        found = re.search(r"dk_live_[A-Za-z0-9_\-]+", srv.log())
        assert found, srv.log()
        key = found.group(0)
        mark("served")
        view = asyncio.run(_deploy(srv, key, repo))
        dep_id = view["deployment_id"]
        mark("deployed")
        assert [app_json(srv, "/write")["rows"] for _ in range(2)] == [1, 2]
        assert [app_json(srv, "/incr")["hits"] for _ in range(2)] == [1, 2]
        before = asyncio.run(state(srv, key, dep_id))
        audit_before = audit(srv)
        mark("state read")
        assert any(e["action"] == "deploy_app" for e in audit_before), audit_before

        check_schedule(srv, scheduled)
        mark("scheduled backups checked")

        t0 = time.monotonic()
        made = srv.cli("backup", "create", "--to", str(sets))  # while serving
        backup_s = time.monotonic() - t0
        mark("backed up")
        set_path = Path(made.stdout.strip().splitlines()[-1])
        assert set_path.parent == sets and (set_path / "manifest.json").is_file(), made.stdout
        manifest = json.loads((set_path / "manifest.json").read_text())
        names = sorted(d["name"] for d in manifest["tenant_databases"])
        assert len(names) == 2 and names[1] == "postgres" and names[0].startswith("ink_"), names
        assert len(manifest["redis"]) == 1 and manifest["sources"][0]["commits"] == [view["commit"]]
        # secrets stay encrypted in the set: neither the env value nor the database password is readable
        control_sql = plain_sql(set_path / "control.dump")
        assert "before-backup-greeting" not in control_sql and "audit_log" in control_sql
        password = before["creds"]["password"]
        assert password and password not in control_sql
        assert password not in (set_path / "tenants" / "globals.sql").read_text()
        assert "before-backup-greeting" not in (set_path / "keys" / "keys.json").read_text()

        # after the backup: more rows, more Redis data, another env value, another key. None may come back.
        assert app_json(srv, "/write")["rows"] == 3
        assert app_json(srv, "/incr")["hits"] == 3
        asyncio.run(_set_env(srv, key, "after-backup-greeting"))
        later_key = srv.create_key("bob")
        mark("post-backup changes")

        assert srv.stop() == 0
        wait_gone(srv.data_dir)  # a lost machine runs nothing: no old Postgres, Redis or app may linger
        # with serve stopped the projects' filesystems are unmounted: `inkmcp logs` mounts the service's files for
        # itself, in a mount namespace of its own (mender7: it printed nothing), and leaves no mount behind
        offline = srv.cli("logs", PROJECT, "-a", "default", "--scope", "build", "--tail", "40")
        assert "build complete" in offline.stdout, offline.stdout + offline.stderr
        assert not [p for p in mount_points() if p.startswith(f"{srv.data_dir}/")], mount_points()
        wait_gone(srv.data_dir)  # the command's own Postgres servers stopped with it
        mark("offline logs read")
        remove_tenant_users(srv.data_dir)
        shutil.rmtree(srv.data_dir)  # the machine's state is lost...
        shutil.rmtree(repo)  # ...and so is the app's source: the set must carry it
        mark("stopped, lost")

        t0 = time.monotonic()
        restored = srv.cli("backup", "restore", "--from", str(set_path))
        restore_s = time.monotonic() - t0
        mark("restored")
        assert "restored" in restored.stdout, restored.stdout + restored.stderr
        try:
            srv.start()
        except RuntimeError:
            assert srv.log_path is not None
            print(srv.log_path.read_text()[-20000:])
            raise
        mark("served again")
        wait_app(srv, timeout=240)
        mark("app back")
        rto_s = time.monotonic() - t0

        print(f"drill: backup {backup_s:.1f} s, restore {restore_s:.1f} s, restore-to-live {rto_s:.1f} s")
        assert audit(srv) == audit_before  # nothing lost, nothing gained (read before the audited reads below)
        assert app_json(srv, "/count")["rows"] == 2  # exactly the rows at backup time
        assert app_json(srv, "/hits")["hits"] == 2
        assert app_json(srv, "/")["GREETING"] == "before-backup-greeting"
        after = asyncio.run(state(srv, key, dep_id))  # the same API key works
        assert after == before
        mark("checked")
        r = httpx.post(srv.mcp_url, headers={"Authorization": f"Bearer {later_key}"}, json={}, timeout=10)
        assert r.status_code == 401  # the key made after the backup is not in the restored installation
    finally:
        if srv.log_path is not None and srv.log_path.exists():  # kept for a failed run's reader
            shutil.copy(srv.log_path, Path("/tmp/inkmcp-drill-last.log"))
        for log in srv.data_dir.glob("redis/*/server.log"):
            shutil.copy(log, Path("/tmp/inkmcp-drill-last-redis.log"))
        dispose_server(srv, clean_stop=False)
        shutil.rmtree(scheduled, ignore_errors=True)


def lingering(data_dir: Path) -> list[str]:
    """Processes still running from `data_dir` (their command line or working directory is in it)."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(data_dir) in cmdline or (proc.info["cwd"] or "").startswith(str(data_dir)):
            found.append(f"{proc.info['pid']}: {cmdline[:120]}")
    return found


def wait_gone(data_dir: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while (left := lingering(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still running after `inkmcp serve` stopped: {left}"


def check_schedule(srv: ServerProc, scheduled: Path, timeout: float = 120) -> None:
    """Two scheduled sets completed (the /metrics timestamp moved on), and retention left only the newest."""
    first = 0.0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamp = metric_value(srv, "inkmcp_backup_last_success_timestamp_seconds")
        if stamp and not first:
            first = stamp
            assert metric_value(srv, "inkmcp_backup_last_size_bytes") > 0
        if first and stamp > first:
            kept = sorted(p.name for p in scheduled.iterdir() if not p.name.startswith("."))
            if len(kept) == 1:
                assert verify(scheduled / kept[0]).manifest.created_at.timestamp() <= stamp
                return
        time.sleep(0.2)
    raise AssertionError(f"no two scheduled backups within {timeout} s:\n{srv.log()}")


async def _deploy(srv: ServerProc, key: str, repo: Path) -> dict[str, Any]:
    async with mcp_session(srv, key) as s:
        return await deploy(s, repo)


async def _set_env(srv: ServerProc, key: str, value: str) -> None:
    async with mcp_session(srv, key) as s:
        await call(s, "update_env_vars", project_name=PROJECT, env_vars={"GREETING": value})
