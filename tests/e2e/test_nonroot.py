"""`make serve` as a normal user: the common case on a developer's machine.

CI runs as root, so this test builds a venv from Debian's /usr/bin/python3 (the repo's own venv may point
into /root, which other users cannot read), creates a throwaway user and runs the real CLI and server as
that user: embedded Postgres without a system user, builds and apps as the same user (no per-project
users), no cgroup limits (and the deployment says so).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.e2e import apps
from tests.requirements import requires
from tests.support import REPO, ServerProc, call, git_repo, make_server, mcp_session, traversable_tmpdir

pytestmark = [
    pytest.mark.asyncio,
    requires("root", os.geteuid() == 0, "creates a throwaway user to run the server as (run as a normal user, "
             "every other e2e test covers this case)"),
]
USER = "inkmcp-nonroot-test"


@pytest.fixture(scope="module")
def user_server() -> Iterator[ServerProc]:
    work = traversable_tmpdir("inkmcp-nonroot-")
    venv = work / "venv"
    uv = str(Path(os.sys.executable).with_name("uv"))
    subprocess.run([uv, "venv", "-q", "--python", "/usr/bin/python3", str(venv)], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin/python"), "-r",
                    str(REPO / "requirements.lock")], check=True)
    subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin/python"), "--no-deps", "-e",
                    str(REPO)], check=True)
    subprocess.run(["useradd", "--create-home", "--home-dir", str(work / "home"), "--shell", "/bin/sh", USER],
                   check=True, capture_output=True)
    pw = pwd.getpwnam(USER)
    srv = make_server("inkmcp-nonroot-srv-")
    shutil.chown(srv.data_dir.parent, pw.pw_uid, pw.pw_gid)
    srv.inkmcp = str(venv / "bin/inkmcp")
    srv.run_as = (pw.pw_uid, pw.pw_gid)
    srv.env = {**srv.env, "HOME": str(work / "home"), "USER": USER}
    try:
        srv.create_key("dev")
        srv.start()
        yield srv
    finally:
        if srv.proc is not None:
            code = srv.stop()
            assert code == 0, srv.log()
        subprocess.run(["userdel", "--remove", USER], check=False, capture_output=True)
        shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


async def test_deploy_as_a_normal_user(user_server: ServerProc) -> None:
    uid = user_server.run_as[0] if user_server.run_as else -1
    repos = traversable_tmpdir("inkmcp-nonroot-repos-")
    try:
        repo = git_repo(repos / "mine", apps.PY_WEB | {"requirements.txt": ""})
        shutil.chown(repos, uid, uid)
        subprocess.run(["chown", "-R", f"{uid}:{uid}", str(repos)], check=True)
        async with mcp_session(user_server, user_server.keys["dev"]) as s:
            dep = await call(s, "deploy_app", repo_url=str(repo), env_vars={"GREETING": "hi"},
                             database={"type": "postgres"})
            while not dep["done"]:
                dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
            assert dep["status"] == "live", dep
            assert any("resource limits not enforced" in h for h in dep["history"]), dep["history"]
        host = urlsplit(dep["url"]).netloc
        get = lambda path: httpx.get(f"http://127.0.0.1:{user_server.proxy_port}{path}",  # noqa: E731
                                     headers={"Host": host}, timeout=30)
        assert get("/env").json()["GREETING"] == "hi"
        assert get("/whoami").json()["uid"] == uid  # the app runs as the user who runs InkMCP
        for server in ("control", "tenants"):  # the embedded Postgres servers run as that user too
            pid = int((user_server.data_dir / "pg" / server / "postmaster.pid").read_text().split()[0])
            assert os.stat(f"/proc/{pid}").st_uid == uid
    finally:
        shutil.rmtree(repos, ignore_errors=True)


def test_start_warns_that_the_disk_is_not_limited(user_server: ServerProc) -> None:
    """Without root there is no filesystem per project (diskquota): `serve` says so at start, with the reason and
    what to do, rather than leaving an operator to believe INKMCP_MAX_DISK_MB holds."""
    assert user_server.log_path is not None
    text = user_server.log_path.read_text(errors="replace")
    assert "tenant disk usage is NOT limited" in text, text[-3000:]
    assert "not running as root" in text and "INKMCP_MAX_DISK_MB" in text, text[-3000:]
