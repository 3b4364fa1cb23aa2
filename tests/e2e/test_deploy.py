"""deploy_app end to end: real git repos, real builds, real processes behind the real proxy."""

from __future__ import annotations

import asyncio
import pwd
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from websockets.asyncio.client import connect as ws_connect

from tests.e2e import apps
from tests.e2e.conftest import local_only
from tests.e2e.probes import Gate, service_host, wait_env_applied
from tests.requirements import require, require_root
from tests.support import ServerProc, call, call_error, git_commit, git_repo, mcp_session

pytestmark = pytest.mark.asyncio


def via_proxy(server: ServerProc, url: str, path: str = "/") -> httpx.Response:
    """GET a deployed service: connect to the proxy, route by the Host of its URL."""
    host = urlsplit(url).netloc
    return httpx.get(f"http://127.0.0.1:{server.proxy_port}{path}", headers={"Host": host}, timeout=30)


async def deploy_live(s, progress: list[str] | None = None, **args) -> dict:
    dep = await call(s, "deploy_app", progress, **args)
    for _ in range(10):
        if dep["done"]:
            break
        dep = await call(s, "wait_for_deployment", progress, deployment_id=dep["deployment_id"])
    assert dep["status"] == "live", dep
    return dep


async def test_python_app_with_database_env_and_isolation(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "shop-app", apps.PY_WEB)
    progress: list[str] = []
    async with mcp_session(server, server.keys["alice"]) as s:
        started = time.monotonic()
        dep = await call(s, "deploy_app", progress, repo_url=str(repo), database={"type": "postgres"},
                         env_vars={"GREETING": "hello", "API_SECRET": "sup3r-s3cret-value"})
        assert time.monotonic() - started < 45
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", progress, deployment_id=dep["deployment_id"])
        assert dep["status"] == "live", dep
        assert dep["project"] == "shop-app" and dep["service"] == "web"
        assert any("building" in p for p in progress) and any("live" in p for p in progress)
        url = dep["url"]
        assert urlsplit(url).hostname == service_host(server, "web", "shop-app")

        assert via_proxy(server, url, "/db").json()["hits"] == 1
        assert via_proxy(server, url, "/db").json()["hits"] == 2
        env = via_proxy(server, url, "/env").json()
        assert env["GREETING"] == "hello" and env["PORT"]
        who = via_proxy(server, url, "/whoami").json()
        # InkMCP's own environment never reaches tenants; the one INKMCP_* an app has, on every provider, is the id
        # of the deployment whose release runs (tenant_env.DEPLOYMENT_ENV, mapping.DEPLOYMENT_ENV)
        assert who["inkmcp_env"] == ["INKMCP_DEPLOYMENT"]

        # same commit, same settings: a no-op returning the same deployment
        again = await call(s, "deploy_app", repo_url=str(repo), database={"type": "postgres"},
                           env_vars={"GREETING": "hello", "API_SECRET": "sup3r-s3cret-value"})
        assert again["reused"] is True and again["deployment_id"] == dep["deployment_id"]

        # env change restarts and is served
        upd = await call(s, "update_env_vars", project_name="shop-app", env_vars={"GREETING": "bye"})
        assert upd["restarted"] + upd["pending"] == ["web"]  # Coolify: a queued deployment applies it (pending)
        if upd["pending"]:
            await wait_env_applied(s, "shop-app")
        assert via_proxy(server, url, "/env").json()["GREETING"] == "bye"
        assert via_proxy(server, url, "/db").json()["hits"] == 3  # data survived the restart

        services = (await call(s, "list_services", project_name="shop-app"))["services"]
        assert services[0]["state"] == "running" and services[0]["health"] == "ok"

        logs = await call(s, "get_logs", project_name="shop-app", scope="runtime", tail=50)
        text = "\n".join(logs["lines"])
        assert "booting with secret" in text and "sup3r-s3cret-value" not in text and "[REDACTED]" in text
        assert logs["untrusted"] is True

        creds = await call(s, "get_database_credentials", project_name="shop-app")
        with psycopg.connect(creds["url"]) as c:
            assert c.execute("SELECT count(*) FROM hits").fetchone()[0] == 3

    async with mcp_session(server, server.keys["bob"]) as b:
        msg = await call_error(b, "get_logs", project_name="shop-app")
        assert "no project named 'shop-app'" in msg
        await call(b, "ensure_project", name="bob-db")
        await call(b, "provision_database", project_name="bob-db")
        bob = await call(b, "get_database_credentials", project_name="bob-db")
    # bob's login cannot reach alice's database
    with pytest.raises(psycopg.OperationalError, match=r"permission denied|not permitted|no pg_hba"):
        psycopg.connect(host=bob["host"], port=bob["port"], user=bob["user"], password=bob["password"],
                        dbname=creds["database"], connect_timeout=5).close()

    if server.compute != "local":
        return  # per-project Unix users are the local provider's (Coolify runs each process in its own container)
    # Last, because only root can check it: the app runs as its project's own Unix user, never as root.
    require_root("per-project Unix users exist only when InkMCP runs as root")
    user = pwd.getpwuid(who["uid"])
    assert who["uid"] != 0 and user.pw_name.startswith("ink-") and user.pw_name in tenant_users(server), user


async def test_static_site_and_new_commit(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "docs-site", apps.STATIC_SITE)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), service_type="webapp_static")
        r = via_proxy(server, dep["url"], "/")
        assert r.status_code == 200 and "hello static" in r.text
        services = (await call(s, "list_services", project_name="docs-site"))["services"]
        assert services[0]["mode"] == "static"
        git_commit(repo, {"index.html": "<h1>v2</h1>\n"})
        dep2 = await deploy_live(s, repo_url=str(repo), service_type="webapp_static")
        assert dep2["deployment_id"] != dep["deployment_id"] and dep2["commit"] != dep["commit"]
        assert "v2" in via_proxy(server, dep["url"], "/").text


async def test_static_dir_and_app_dir_arguments_pick_the_served_files(server: ServerProc, repos: Path) -> None:
    """A monorepo whose site lives in site/public: without the two arguments the root's index.html would be
    served; with them, exactly the named directory is, and the same call again is a no-op."""
    repo = git_repo(repos / "mono-site", {
        "index.html": "<h1>repo root, not the site</h1>\n",
        "site/public/index.html": "<h1>the real site</h1>\n",
        "site/index.html": "<h1>site source, not its output</h1>\n",
    })  # fmt: skip
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), app_dir="site", static_dir="public")
        r = via_proxy(server, dep["url"], "/")
        assert r.status_code == 200 and "the real site" in r.text, r.text
        again = await call(s, "deploy_app", repo_url=str(repo), app_dir="site", static_dir="public")
        assert again["deployment_id"] == dep["deployment_id"]
        error = await call_error(s, "deploy_app", repo_url=str(repo), app_dir="../elsewhere")
        assert "app_dir" in error and "relative" in error


async def test_websocket_echo_through_proxy(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "ws-game", apps.WS_ECHO)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), mode="persistent", service_type="backend")
    host = urlsplit(dep["url"]).netloc
    # the URI carries the service's Host; the socket goes to the proxy on loopback
    async with ws_connect(f"ws://{host}/", host="127.0.0.1", port=server.proxy_port) as ws:
        for word in ("ping", "pong", "x" * 10_000):
            await ws.send(word)
            assert await ws.recv() == "echo:" + word


async def test_worker_runs_without_route(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "jobs", apps.WORKER)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), service_name="worker", env_vars={"WORKER_TOKEN": "tok-abcdef"})
        assert dep["url"] is None
        deadline = time.monotonic() + 20
        while True:  # the worker prints a tick every 0.5 s; a few must reach the log
            logs = await call(s, "get_logs", project_name="jobs", service_name="worker", tail=5)
            if sum("tick" in line for line in logs["lines"]) >= 3 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert len(logs["lines"]) <= 5 and sum("tick" in line for line in logs["lines"]) >= 3, logs
        assert all("tok-abcdef" not in line for line in logs["lines"])
        services = (await call(s, "list_services", project_name="jobs"))["services"]
        assert services[0]["type"] == "backend" and services[0]["state"] == "running"


WEB_AND_WORKER = {
    "app.py": "import http.server, os\n"
              "class H(http.server.BaseHTTPRequestHandler):\n"
              "    def do_GET(self):\n"
              "        self.send_response(200); self.end_headers(); self.wfile.write(b'web ok')\n"
              "http.server.HTTPServer(('127.0.0.1', int(os.environ['PORT'])), H).serve_forever()\n",
    "worker.py": apps.WORKER["worker.py"],
    "Procfile": "web: python app.py\nworker: python worker.py\n",
}


@local_only("the 'worker | ' prefix of the local provider's process log lines")
async def test_procfile_worker_is_a_process_of_web_and_get_logs_says_so(server: ServerProc, repos: Path) -> None:
    """A Procfile with `web` and `worker` deploys one service, `web`, running both. A new user's agent then asked
    get_logs(service_name='worker') and heard only "no service 'worker'; pass one of: web": the error now says
    'worker' is a process of `web` and where its lines are, and those lines are there."""
    repo = git_repo(repos / "webwork", WEB_AND_WORKER)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo))
        assert dep["service"] == "web" and via_proxy(server, dep["url"]).text == "web ok"
        msg = await call_error(s, "get_logs", project_name="webwork", service_name="worker")
        assert "'worker' is a process of service 'web'" in msg and "service_name='web'" in msg, msg
        assert "'worker | '" in msg, msg
        msg = await call_error(s, "get_logs", project_name="webwork", service_name="nope")
        assert "no service 'nope'" in msg and "pass one of: web" in msg, msg
        deadline = time.monotonic() + 20
        while True:
            lines = (await call(s, "get_logs", project_name="webwork", service_name="web", tail=50))["lines"]
            if any(line.startswith("worker | tick") for line in lines) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.3)
        assert any(line.startswith("worker | tick") for line in lines), lines


async def test_on_demand_sleeps_and_wakes(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "sleepy", apps.ON_DEMAND)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), mode="on_demand", start_command="python app.py")
        first = via_proxy(server, dep["url"]).text
        deadline = time.monotonic() + 20  # INKMCP_IDLE_TIMEOUT=3 in the test server
        state = None
        while time.monotonic() < deadline:
            state = (await call(s, "list_services", project_name="sleepy"))["services"][0]["state"]
            if state == "sleeping":
                break
            await asyncio.sleep(0.5)
        assert state == "sleeping"
        woke = time.monotonic()
        r = via_proxy(server, dep["url"])
        assert r.status_code == 200 and r.text.startswith("awake since") and r.text != first
        assert time.monotonic() - woke < 10


async def test_failed_build_keeps_old_version_and_shows_logs(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "fragile", {**apps.ON_DEMAND, "requirements.txt": ""})
    async with mcp_session(server, server.keys["alice"]) as s:
        good = await deploy_live(s, repo_url=str(repo), start_command="python app.py")
        before = via_proxy(server, good["url"]).text
        git_commit(repo, {"requirements.txt": "this-package-does-not-exist-inkmcp==0.0.1\n"})
        dep = await call(s, "deploy_app", repo_url=str(repo), start_command="python app.py")
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed" and "building" in dep["error"]
        assert "get_logs" in dep["next_step"]
        logs = await call(s, "get_logs", project_name="fragile", scope="build", tail=40)
        assert any("this-package-does-not-exist-inkmcp" in line for line in logs["lines"])
        assert via_proxy(server, good["url"]).text == before  # old version still serving


async def test_app_that_never_listens_fails_health_check(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "deaf", {"main.py": "import time\ntime.sleep(600)\n"})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await call(s, "deploy_app", repo_url=str(repo), start_command="python main.py")
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed"
        assert "health_check" in dep["error"] and "PORT" in dep["error"]


async def test_bad_repo_and_missing_start_command(server: ServerProc, repos: Path) -> None:
    empty = git_repo(repos / "nothing-here", {"README.md": "just docs\n"})
    async with mcp_session(server, server.keys["alice"]) as s:
        msg = await call_error(s, "deploy_app", repo_url=str(repos / "no-such-repo"))
        assert "repo_url" in msg
        msg = await call_error(s, "deploy_app", repo_url="https://127.0.0.1:9/nope.git")
        assert "repo_url" in msg
        msg = await call_error(s, "deploy_app", repo_url=str(empty))
        assert "start_command" in msg and "Procfile" in msg
        msg = await call_error(s, "deploy_app", repo_url=str(empty), mode="sometimes")
        assert "mode" in msg and "on_demand" in msg
        msg = await call_error(s, "deploy_app", repo_url=str(empty), service_name="Bad_Name")
        assert "service_name" in msg


async def test_concurrent_deploys_create_one_project_and_service(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "racer", apps.STATIC_SITE)
    async with mcp_session(server, server.keys["alice"]) as s:
        results = await asyncio.gather(*[
            call(s, "deploy_app", repo_url=str(repo), service_type="webapp_static") for _ in range(5)
        ])
        assert len({r["deployment_id"] for r in results}) == 1
        projects = [p["name"] for p in (await call(s, "list_projects"))["projects"]]
        assert projects.count("racer") == 1
        assert len((await call(s, "list_services", project_name="racer"))["services"]) == 1


async def test_deploy_answers_before_a_long_build_ends(server: ServerProc, repos: Path) -> None:
    """deploy_app returns by INKMCP_DEPLOY_ANSWER_WITHIN (10 s here, 40 s by default) with how to follow.

    The build waits on a gate until this test opens it, so it is still running when the answer comes,
    however slow the machine: no `sleep 14` raced against the 10 s window.
    """
    repo = git_repo(repos / "slow-build", apps.ON_DEMAND)
    gate = Gate(server.data_dir)
    try:
        async with mcp_session(server, server.keys["alice"]) as s:
            t0 = time.monotonic()
            dep = await call(s, "deploy_app", repo_url=str(repo), start_command="python app.py",
                             build_command=gate.build_command())
            waited = time.monotonic() - t0
            assert dep["done"] is False and dep["status"] == "building", dep
            assert 9 < waited < 25, waited  # answered at the 10 s window, not at the end of the build
            assert "wait_for_deployment" in dep["next_step"]
            gate.wait_closed()  # the build is still at its gate
            assert gate.open_once() == 1
            progress: list[str] = []
            deadline = time.monotonic() + 120
            while not dep["done"] and time.monotonic() < deadline:
                dep = await call(s, "wait_for_deployment", progress, deployment_id=dep["deployment_id"])
            assert dep["status"] == "live" and any("live" in p for p in progress), dep
    finally:
        gate.open_once()


async def test_manifest_services_node_build_and_release_phase(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "mono", apps.MONOREPO)
    async with mcp_session(server, server.keys["alice"]) as s:
        site = await deploy_live(s, repo_url=str(repo), service_name="site")
        assert "built by node" in via_proxy(server, site["url"]).text
        api = await deploy_live(s, repo_url=str(repo), service_name="api", env_vars={"RELEASE_MARK": "r1"})
        assert via_proxy(server, api["url"]).text == "migrated=r1"
        worker = await deploy_live(s, repo_url=str(repo), service_name="worker")
        assert worker["url"] is None
        services = {x["name"]: x for x in (await call(s, "list_services", project_name="mono"))["services"]}
        assert set(services) == {"site", "api", "worker"}
        assert services["site"]["mode"] == "static" and services["worker"]["type"] == "backend"
        build_logs = await call(s, "get_logs", project_name="mono", service_name="api", scope="build")
        assert any("migration ran" in line for line in build_logs["lines"]), build_logs

        # a failing release phase fails the deployment; the previous version keeps serving
        git_commit(repo, {"api/migrate.py": "raise SystemExit('migration broke')\n"})
        dep = await call(s, "deploy_app", repo_url=str(repo), service_name="api", env_vars={"RELEASE_MARK": "r1"})
        while not dep["done"]:
            dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
        assert dep["status"] == "failed" and "releasing" in dep["error"]
        assert via_proxy(server, api["url"]).text == "migrated=r1"


async def test_backend_release_phase_runs_first_and_a_failure_brings_the_previous_version_back(
        server: ServerProc, repos: Path) -> None:  # fmt: skip
    """A backend (not health-checked on Coolify: an API need not answer 2xx on /) with a Procfile release phase:
    the release runs in the new release before it serves, and a failing one fails the deploy naming the release
    step while the previous version serves again (on Coolify: InkMCP reads the release guard's report from the
    container's log and deploys the previous release again)."""
    files = {k.removeprefix("api/"): v for k, v in apps.MONOREPO.items() if k.startswith("api/")}
    repo = git_repo(repos / "api-rel", {**files, "Procfile": "web: python server.py\nrelease: python migrate.py\n"})
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), service_type="backend", env_vars={"RELEASE_MARK": "r1"})
        assert via_proxy(server, dep["url"]).text == "migrated=r1"
        git_commit(repo, {"migrate.py": "raise SystemExit('backend migration broke')\n"})
        bad = await call(s, "deploy_app", repo_url=str(repo), service_type="backend", env_vars={"RELEASE_MARK": "r1"})
        while not bad["done"]:
            bad = await call(s, "wait_for_deployment", deployment_id=bad["deployment_id"])
        assert bad["status"] == "failed" and "releasing" in bad["error"], bad
        assert "backend migration broke" in bad["error"] or "get_logs" in bad["next_step"]
        deadline = time.monotonic() + 30
        while via_proxy(server, dep["url"]).status_code != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # Coolify: the previous release's container starts again
        assert via_proxy(server, dep["url"]).text == "migrated=r1"
        services = (await call(s, "list_services", project_name="api-rel"))["services"]
        assert services[0]["state"] == "running", services


HOG = {
    "app.py": '''
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/hog":
            b = bytearray(400 * 2**20)
            b[::4096] = b"x" * len(b[::4096])
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
''',
}


@local_only("kills a process through the local provider's cgroup limit and reads its history line; Coolify's "
            "limits are Docker's limits_memory/limits_cpus, whose bodies tests/coolify checks")
async def test_resource_limits_are_enforced(server: ServerProc, repos: Path) -> None:
    from inkmcp.providers.compute.local.limits import Cgroups

    cg = Cgroups(parent="inkmcp-probe")
    require("cgroups", cg.available, f"the server could not enforce limits: {cg.reason}")
    repo = git_repo(repos / "hungry", HOG)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), start_command="python app.py",
                                resources={"memory_mb": 96, "cpus": 0.5})
        assert any("limits: 96 MiB memory, 0.5 CPU" in h for h in dep["history"]), dep["history"]
        assert via_proxy(server, dep["url"]).text == "ok"
        with pytest.raises(httpx.HTTPError):
            r = via_proxy(server, dep["url"], "/hog")  # the kernel kills it mid-request
            r.raise_for_status()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # restarted with backoff, serving again
            svc = (await call(s, "list_services", project_name="hungry"))["services"][0]
            if svc["restarts"] >= 1 and svc["state"] == "running":
                break
            await asyncio.sleep(0.3)
        assert svc["restarts"] >= 1
        assert via_proxy(server, dep["url"]).text == "ok"
        msg = await call_error(s, "deploy_app", repo_url=str(repo), resources={"memory_mb": 10})
        assert "memory_mb" in msg


async def test_delete_project_with_database_and_its_user(server: ServerProc, repos: Path) -> None:
    repo = git_repo(repos / "doomed", apps.ON_DEMAND)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), start_command="python app.py", database={"type": "postgres"})
        creds = await call(s, "get_database_credentials", project_name="doomed")
        users_before = tenant_users(server)
        msg = await call_error(s, "delete", project_name="doomed", confirm="doomed")
        assert "delete_database" in msg  # the database would be lost: refused without the flag
        gone = await call(s, "delete", project_name="doomed", confirm="doomed", delete_database=True)
        assert gone == {"deleted": "doomed", "database_deleted": True}
        assert "doomed" not in [p["name"] for p in (await call(s, "list_projects"))["projects"]]
    assert via_proxy(server, dep["url"]).status_code == 404
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(creds["url"], connect_timeout=5).close()
    if server.compute != "local":
        return  # per-project Unix users are the local provider's (Coolify runs each process in its own container)
    # Last, because only root can check it: the project's Unix user is gone with the project.
    require_root("per-project Unix users exist only when InkMCP runs as root")
    gone_users = set(users_before) - set(tenant_users(server))
    assert len(gone_users) == 1 and not set(tenant_users(server)) - set(users_before), (users_before, gone_users)


def tenant_users(server: ServerProc) -> list[str]:
    homes = f"{server.data_dir}/compute/homes/"
    return [line.split(":")[0] for line in Path("/etc/passwd").read_text().splitlines()
            if line.split(":")[5].startswith(homes)]


async def test_env_update_that_breaks_the_app_changes_nothing(server: ServerProc, repos: Path) -> None:
    app = dict(apps.ON_DEMAND)
    app["app.py"] = "import os, sys\nif os.environ.get('CRASH'):\n    sys.exit('refusing to start')\n" + app["app.py"]
    repo = git_repo(repos / "picky", app)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), start_command="python app.py", env_vars={"MODE": "a"})
        before = via_proxy(server, dep["url"]).text
        msg = await call_error(s, "update_env_vars", project_name="picky", env_vars={"CRASH": "1", "MODE": "b"})
        assert "nothing was changed" in msg and "env_vars" in msg and "get_logs" in msg
        env = await call(s, "list_env_vars", project_name="picky", service_name="web", reveal=True)
        assert env["env"] == {"MODE": "a"}
        assert via_proxy(server, dep["url"]).text == before  # the same process still serves


RENDER_ENV_APP = {
    "render.yaml": """services:
  - type: web
    name: envecho
    runtime: python
    startCommand: python app.py
    envVars:
      - key: FLAVOUR
        value: vanilla
      - key: TOPPING
        value: sprinkles
      - key: DB_CONN
        fromDatabase:
          name: envdb
          property: connectionString
      - key: SESSION_SECRET
        generateValue: true
databases:
  - name: envdb
""",
    "app.py": """import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        e = os.environ
        body = json.dumps({"FLAVOUR": e.get("FLAVOUR"), "TOPPING": e.get("TOPPING"),
                           "linked": bool(e.get("DB_CONN")) and e.get("DB_CONN") == e.get("DATABASE_URL"),
                           "PGDATABASE": e.get("PGDATABASE") is not None}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
""",
}


async def test_platform_file_env_defaults_and_links_sit_below_what_the_agent_sets(
    server: ServerProc, repos: Path
) -> None:
    """render.yaml's `value` defaults and its `fromDatabase` link reach the app; the agent's own values win, at the
    deploy and after update_env_vars (which restarts with the live deployment's defaults and links kept)."""
    repo = git_repo(repos / "render-env", RENDER_ENV_APP)
    async with mcp_session(server, server.keys["alice"]) as s:
        dep = await deploy_live(s, repo_url=str(repo), database={"type": "postgres"}, env_vars={"TOPPING": "agent"})
        queued = dep["history"][0]  # what the repo asked for and this call did not give, once
        assert "SESSION_SECRET" in queued and "env_vars" in queued and "'type': 'postgres'" not in queued, queued
        seen = via_proxy(server, dep["url"]).json()
        assert seen == {"FLAVOUR": "vanilla", "TOPPING": "agent", "linked": True, "PGDATABASE": seen["PGDATABASE"]}
        await call(s, "update_env_vars", project_name="render-env", env_vars={"FLAVOUR": "chocolate"})
        await wait_env_applied(s, "render-env")
        after = via_proxy(server, dep["url"]).json()
        assert after["FLAVOUR"] == "chocolate" and after["TOPPING"] == "agent" and after["linked"] is True
        env = await call(s, "list_env_vars", project_name="render-env", service_name="web", reveal=True)
        assert env["env"] == {"TOPPING": "agent", "FLAVOUR": "chocolate"}  # repo defaults are not stored as env


REDIS_APP = {
    "requirements.txt": "redis==5.0.8\n",
    "Procfile": "web: python app.py\nworker: python worker.py\n",
    "app.py": """import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer
import redis

r = redis.Redis.from_url(os.environ["REDIS_URL"])

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"hits": r.incr("hits"), "jobs": int(r.get("jobs") or 0)}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)

HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
""",
    "worker.py": """import os, time
import redis

r = redis.Redis.from_url(os.environ["REDIS_URL"])
while True:
    r.incr("jobs")
    time.sleep(0.2)
""",
}


async def test_redis_add_on_from_one_call(server: ServerProc, repos: Path) -> None:
    """database={"type":"redis"} gives web and worker the project's Redis (REDIS_URL); on Coolify compute without a
    shared Redis (INKMCP_REDIS_URL) the same call is refused with the argument to change, and nothing is made."""
    repo = git_repo(repos / "counter", REDIS_APP)
    async with mcp_session(server, server.keys["alice"]) as s:
        if server.compute != "local":
            error = await call_error(s, "deploy_app", repo_url=str(repo), database={"type": "redis"})
            assert "Redis" in error and "database.type" in error, error
            assert "counter" not in [p["name"] for p in (await call(s, "list_projects"))["projects"]]
            return
        require("redis", shutil.which("redis-server") is not None, "the Redis add-on runs Debian's redis-server")
        dep = await deploy_live(s, repo_url=str(repo), database={"type": "redis"})
        first = via_proxy(server, dep["url"]).json()
        deadline = time.monotonic() + 30
        while (seen := via_proxy(server, dep["url"]).json())["jobs"] <= first["jobs"]:  # the worker writes too
            assert time.monotonic() < deadline, seen
        assert seen["hits"] > first["hits"] >= 1
        creds = await call(s, "get_database_credentials", project_name="counter")
        assert creds["redis"]["url"].startswith("redis://")
