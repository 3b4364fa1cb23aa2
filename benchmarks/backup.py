"""Backup and restore figures of one machine with N services (issue 10's closing note): backup size and duration
while serving, and restore-to-live time (RTO): from `inkmcp backup restore` on an empty data dir until every
service answers at its URL again (rebuilt from its recorded commit).

    .venv/bin/python benchmarks/backup.py [--services 10]

A real `inkmcp serve` (tests/support.py), N projects each with one web service and its own Postgres database,
deployed over MCP; the data dir and the app's repository are deleted before the restore.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import call, dispose_server, git_repo, make_server, mcp_session, remove_tenant_users

APP = {
    "app.py": '''
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        data = ("ok " + os.environ.get("PGDATABASE", "-")).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
}


async def deploy_all(srv, key: str, repo: Path, n: int) -> None:  # type: ignore[no-untyped-def]
    async with mcp_session(srv, key) as s:
        views = [await call(s, "deploy_app", repo_url=str(repo), project_name=f"bench-{i}", service_name="web",
                            start_command="python app.py", database={"type": "postgres"}) for i in range(n)]
        for v in views:
            deadline = time.monotonic() + 300
            while v["status"] not in ("live", "failed") and time.monotonic() < deadline:
                v = await call(s, "wait_for_deployment", deployment_id=v["deployment_id"], timeout_seconds=30)
            assert v["status"] == "live", v


def all_up(srv, n: int) -> bool:  # type: ignore[no-untyped-def]
    for i in range(n):
        try:
            r = httpx.get(f"http://127.0.0.1:{srv.proxy_port}/", headers={"Host": f"web.bench-{i}.localhost"},
                          timeout=5)
        except httpx.HTTPError:
            return False
        if r.status_code != 200:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--services", type=int, default=10)
    n = parser.parse_args().services
    srv = make_server("inkmcp-bench-backup-", INKMCP_MAX_DATABASES_PER_ACCOUNT=str(n),
                      INKMCP_MAX_PROJECTS_PER_ACCOUNT=str(n))
    repo = git_repo(srv.data_dir.parent / "repo", APP)
    sets = srv.data_dir.parent / "sets"
    try:
        key = srv.create_key("bench")
        srv.start()
        t0 = time.monotonic()
        asyncio.run(deploy_all(srv, key, repo, n))
        deploy_s = time.monotonic() - t0
        t0 = time.monotonic()
        made = srv.cli("backup", "create", "--to", str(sets))
        backup_s = time.monotonic() - t0
        set_path = Path(made.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in set_path.rglob("*") if p.is_file())
        srv.stop()
        remove_tenant_users(srv.data_dir)
        shutil.rmtree(srv.data_dir)
        shutil.rmtree(repo)
        t0 = time.monotonic()
        srv.cli("backup", "restore", "--from", str(set_path))
        restore_s = time.monotonic() - t0
        srv.start()
        deadline = time.monotonic() + 600
        while not all_up(srv, n):
            if time.monotonic() > deadline:
                raise SystemExit(f"not every service came back within 600 s:\n{srv.log()}")
            time.sleep(0.5)
        rto_s = time.monotonic() - t0
        print(json.dumps({"services": n, "first_deploy_all_s": round(deploy_s, 1),
                          "backup_s": round(backup_s, 1), "backup_bytes": size,
                          "restore_command_s": round(restore_s, 1), "restore_to_live_s": round(rto_s, 1)}))
    finally:
        dispose_server(srv, clean_stop=False)


if __name__ == "__main__":
    main()
