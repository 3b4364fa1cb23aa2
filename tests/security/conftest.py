"""Red-team regression suite: each finding of ../shared/reviews/redteam-local-2026-11-30.md, attacked again.

Every test here performs the review's attack through the real MCP client against a real
`inkmcp serve` running as root, with two accounts: alice (the victim) and mallory (the attacker).
What the attack achieved is read from the attacker's side: the attack code runs inside mallory's
own app (the "lab" below) and reports what it saw, or it is what mallory's agent got back from a tool.

Servers: one shared server (`server`, package scope) with INKMCP_ALLOW_LOCAL_SOURCES=1 so that test
repos on this machine can be deployed at all; modules keep their state apart by project name, and
per-account limits that one module exhausts use an account of that module's own. The default-root
behaviour (local sources refused) gets a server of its own in test_sources.py.

Finding of the review -> test (module::test):
    1      test_root_symlinks::test_tenant_cannot_create_entries_in_its_releases_dir,
           test_root_symlinks::test_release_dir_race_never_chowns_a_root_file
    2      test_root_symlinks::test_venv_symlinks_never_redirect_root_writes, ::test_venv_locks_and_markers_...
    3, 3b  test_cross_account::test_another_account_cannot_take_a_project_name,
           test_cross_account::test_deleting_a_homonymous_project_never_touches_another_accounts_route
    4, 4b  test_tenant_isolation::test_other_projects_mirrors_and_checkouts_are_unreadable, ::test_checkouts_...
    5      test_sources::test_local_sources_refused_by_default_as_root, ::test_allowed_local_sources_read_...
    6, 6b, 6c  test_limits::test_build_over_its_memory_limit_..., ::test_build_and_release_run_in_the_service_cgroup,
           ::test_runtime_memory_limit_kills_the_hog, ::test_runtime_cannot_fork_past_the_pids_limit
    7      test_limits::test_delete_ends_double_forked_daemons_and_removes_the_user
    8, 14  test_databases (all three)
    9, 10  test_sources::test_internal_addresses_refused_..., ::test_repo_url_credentials_never_returned_...
    11-13, 15, 16, 19  test_tenant_isolation (processes, port, secrets and control socket, /tmp and /dev/shm)
    21, 26 test_cross_account::test_proxy_path_traversal_is_404, ::test_tools_on_another_accounts_project_...
    22-24, 27, 28  test_api_surface
    25     test_limits::test_checkout_size_is_capped
    16b, 17, 18, 20, 29-34  test_held_items (a test each, named in its docstring; #33 adds strict-xfail
           ::test_ambiguous_host_lines_are_refused: Host lines the proxy routes on instead of a 400)
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from mcp import ClientSession

from tests.cgroup_cleanup import remove_service_cgroups  # --- mender6
from tests.requirements import is_root, require_root, requires
from tests.support import (
    ServerProc,
    ToolFailed,
    call,
    git_repo,
    make_server,
    mcp_session,
    remove_tenant_users,
    traversable_tmpdir,
    unmount_beneath,
)

ALICE_SECRET = "ALICE_FILE_SECRET_42"
"""Content of alice's private repo file; must never appear in anything mallory sees."""

# The attack lab: a stdlib-only web app that runs whatever Python its owner POSTs to /exec, as the
# app's own Unix user, and returns `result`. It is how the attacker's code runs on the machine (any
# tenant can deploy arbitrary code); background threads it starts keep their findings in STATE or in
# files under $HOME (a redeploy replaces the process, the home stays). Any other request is printed
# to the runtime log as "CAPTURED ...", so a hijacked hostname shows up in the attacker's logs.
LAB_SOURCE = r'''
import errno, json, os, pwd, sys, threading, traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OWNER = os.environ.get("LAB_OWNER", "nobody")
STATE = {}


def attempt(fn, *args, **kwargs):
    """["ok", value] or [errno name, message]: exactly what the attacker's code saw."""
    try:
        return ["ok", fn(*args, **kwargs)]
    except OSError as e:
        return [errno.errorcode.get(e.errno or 0, type(e).__name__), str(e)]


def whoami():
    return {"owner": OWNER, "pid": os.getpid(), "uid": os.getuid(), "gid": os.getgid(),
            "user": pwd.getpwuid(os.getuid()).pw_name, "home": os.environ.get("HOME"), "cwd": os.getcwd(),
            "path": os.environ.get("PATH", ""), "port": int(os.environ["PORT"]),
            "cgroup": open("/proc/self/cgroup").read()}


class Lab(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def reply(self, code, body, ctype="text/plain"):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/":
            self.reply(200, f"{OWNER} says hi")
        elif self.path == "/whoami":
            self.reply(200, json.dumps(whoami()), "application/json")
        else:
            self.capture(b"")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path != "/exec":
            return self.capture(body)
        request = json.loads(body)
        scope = {"ARGS": request.get("args", {}), "STATE": STATE, "attempt": attempt, "whoami": whoami,
                 "result": None}
        try:
            exec(compile(request["code"], "<attack>", "exec"), scope)
            out = {"ok": True, "result": scope["result"]}
        except BaseException:
            out = {"ok": False, "error": traceback.format_exc()}
        self.reply(200, json.dumps(out, default=repr), "application/json")

    def capture(self, body):
        print("CAPTURED", self.command, self.path, dict(self.headers), body, flush=True)
        self.reply(200, f"{OWNER} captured {self.path}")

    def log_message(self, fmt, *args):
        pass


print(f"lab of {OWNER} up as uid {os.getuid()} pid {os.getpid()}", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Lab).serve_forever()
'''

LAB_FILES = {"lab.py": LAB_SOURCE}
LAB_START = "python3 lab.py"

NEEDS_ROOT = "the attacks need per-project Unix users, which InkMCP creates only as root"
ROOT = requires("root", is_root(), NEEDS_ROOT)
"""Every module's marker: skipped with the reason as a normal user, a failure under INKMCP_REQUIRE_ALL=1."""

SHARED_ENV = {
    "INKMCP_ALLOW_LOCAL_SOURCES": "1",  # test repos are local paths; the refusal itself is tested in test_sources
    "INKMCP_MAX_PROJECTS_PER_ACCOUNT": "100",  # modules share mallory; the limit itself is not what they test
    "INKMCP_MAX_DATABASES_PER_ACCOUNT": "4",
}


@contextlib.contextmanager
def security_server(prefix: str, accounts: tuple[str, ...], *, unset: tuple[str, ...] = (),
                    **env: str) -> Iterator[ServerProc]:
    """A started `inkmcp serve` as root with a key per account; stopped by PID and cleaned up afterwards.

    `unset` removes variables the shared helpers may add, so a fixture can test a setting's default.
    Keys are created after the server is up, in this process (tests.support.ServerProc.create_keys: the product's
    AccountService on the server's control plane): an `inkmcp keys create` process per account was the slowest
    part of starting a test server.
    """
    require_root(NEEDS_ROOT)
    srv = make_server(prefix, **env)
    for name in unset:
        srv.env.pop(name, None)
    code = 0
    try:
        srv.start()
        srv.create_keys(accounts)
        yield srv
    finally:
        try:
            if srv.proc is not None:
                code = srv.stop()
        finally:
            remove_tenant_users(srv.data_dir)
            remove_service_cgroups(srv.data_dir / "compute")  # --- mender6: its services' cgroups, by exact path
            unmount_beneath(srv.data_dir)
            shutil.rmtree(srv.data_dir.parent, ignore_errors=True)
    assert code == 0, f"graceful shutdown failed ({code}):\n{srv.log()}"


SHARED_ACCOUNTS = (
    "alice",  # the victim
    "mallory",  # the attacker
    "mallory-db",  # the attacker of test_databases, whose databases count against her per-account limit
    "carol",  # test_api_surface revokes her key
)


@pytest.fixture(scope="package")
def server() -> Iterator[ServerProc]:
    """The shared root server with every account the modules use, local sources allowed (module docstring)."""
    with security_server("inkmcp-sec-", SHARED_ACCOUNTS, **SHARED_ENV) as srv:
        yield srv


@pytest.fixture(scope="module")
def repos() -> Iterator[Path]:
    """Where a module's git repos and root-owned attack targets live (traversable, not listable)."""
    d = traversable_tmpdir("inkmcp-sec-repos-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def lab_repo(repos: Path, name: str, extra: dict[str, str] | None = None) -> Path:
    return git_repo(repos / name, {**LAB_FILES, **(extra or {})})


@contextlib.asynccontextmanager
async def session(srv: ServerProc, account: str) -> AsyncIterator[ClientSession]:
    async with mcp_session(srv, srv.keys[account]) as s:
        yield s


def host_of(url: str) -> str:
    return urlsplit(url).netloc


def via_proxy(srv: ServerProc, url: str, path: str = "/", method: str = "GET", timeout: float = 60,
              **kwargs: Any) -> httpx.Response:
    """A request to a deployed service: to the proxy on loopback, routed by the Host of its URL."""
    headers = {"Host": host_of(url), **kwargs.pop("headers", {})}
    return httpx.request(method, f"http://127.0.0.1:{srv.proxy_port}{path}", headers=headers, timeout=timeout,
                         **kwargs)


def lab_exec(srv: ServerProc, url: str, code: str, timeout: float = 120, **args: Any) -> Any:
    """Run attack code inside a deployed lab (as that app's Unix user); returns what the code saw."""
    r = via_proxy(srv, url, "/exec", "POST", timeout=timeout, json={"code": code, "args": args})
    assert r.status_code == 200, f"lab at {url} answered {r.status_code}: {r.text[:500]}"
    body = r.json()
    assert body["ok"], f"attack code crashed inside the app:\n{body['error']}"
    return body["result"]


def whoami(srv: ServerProc, url: str) -> dict[str, Any]:
    r = via_proxy(srv, url, "/whoami")
    assert r.status_code == 200, r.text
    return r.json()


async def deploy(s: ClientSession, **args: Any) -> dict[str, Any]:
    """deploy_app, then wait_for_deployment until it is done; returns the final view (live or failed)."""
    dep = await call(s, "deploy_app", **args)
    deadline = time.monotonic() + 240
    while not dep["done"]:
        assert time.monotonic() < deadline, f"deployment never finished: {dep}"
        dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"], timeout_seconds=30)
    return dep


async def deploy_live(s: ClientSession, **args: Any) -> dict[str, Any]:
    dep = await deploy(s, **args)
    assert dep["status"] == "live", dep
    return dep


async def lab_live(s: ClientSession, repo: Path, owner: str, **args: Any) -> dict[str, Any]:
    """Deploy a lab as a persistent web service (an on_demand one would sleep, killing attack threads)."""
    env = {"LAB_OWNER": owner, **args.pop("env_vars", {})}
    return await deploy_live(s, repo_url=str(repo), start_command=LAB_START, mode="persistent", env_vars=env,
                             **args)


async def refused(s: ClientSession, tool: str, **args: Any) -> str:
    """The text of the tool error `tool` must answer with (fails the test if the call succeeds)."""
    result = await s.call_tool(tool, args)
    text = " ".join(getattr(c, "text", "") for c in result.content)
    assert result.is_error, f"{tool}({args}) was accepted: {text[:1000]}"
    return text


async def deploy_failure(s: ClientSession, **args: Any) -> str:
    """What an agent is told when a deployment must not happen: the tool error, or the failed deployment's error.

    Some refusals can only come after the fetch started (e.g. a path the tenant cannot read), so a
    deployment that is accepted and then fails counts too; one that goes live fails the test.
    """
    try:
        dep = await deploy(s, **args)
    except ToolFailed as e:
        return str(e)
    assert dep["status"] == "failed", f"deployment was not refused: {dep}"
    return str(dep["error"])
