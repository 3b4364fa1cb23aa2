"""Test support shared by the end-to-end suites: a real `inkmcp serve` process, real MCP clients.

Servers are started as subprocesses and stopped by PID in teardown; nothing else is touched.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

REPO = Path(__file__).resolve().parent.parent
INKMCP = str(Path(sys.executable).with_name("inkmcp"))


@contextlib.contextmanager
def serving(server: ThreadingHTTPServer) -> Iterator[int]:
    """Run `server` in a thread; yields its port; shuts it down (and joins the thread) on exit."""
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def wait_for(predicate: Callable[[], Awaitable[Any]], timeout: float = 20.0, what: str = "condition",
                   interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, and return that (no fixed sleeps as synchronisation);
    past `timeout` an AssertionError names `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await predicate()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout:g} s (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ROOT_TEST_BASE = Path("/var/lib/inkmcp-tests")


def traversable_tmpdir(prefix: str) -> Path:
    """A temp dir tenant users can traverse (pytest's own tmp dirs are 0700 under root).

    As root it lies outside /tmp and /var/tmp: tenant processes see their service's private temp dir
    mounted there, so a data dir under /tmp would be out of their reach (InkMCP refuses one).
    """
    base = Path("/tmp")
    if os.geteuid() == 0:
        ROOT_TEST_BASE.mkdir(mode=0o711, exist_ok=True)
        ROOT_TEST_BASE.chmod(0o711)
        base = ROOT_TEST_BASE
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    d.chmod(0o711)
    return d


PORT_TAKEN = (
    # (serve's message when the port was taken, lower-cased; the ServerProc attribute; the setting naming it)
    ("error while attempting to bind on address ('127.0.0.1', {port}): address already in use", "port", "INKMCP_PORT"),
    # CI run 44: "the proxy cannot listen on 127.0.0.1:N: Address already in use" failed a whole module's server
    ("the proxy cannot listen on 127.0.0.1:{port}: address already in use", "proxy_port", "INKMCP_PROXY_PORT"),
)
"""The ports `ServerProc.start` moves to a fresh one when serve exits because another process took it first."""


@dataclass
class ServerProc:
    data_dir: Path
    port: int
    proxy_port: int
    env: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    inkmcp: str = INKMCP
    run_as: tuple[int, int] | None = None  # (uid, gid): run the CLI and the server as this user
    compute: str = "local"  # the compute provider the server runs on (tests/e2e/coolify.py: "coolify")
    initdb_template: bool = True
    """Before the first `inkmcp` process touches the data dir, its two embedded clusters (control plane, tenants) are
    copies of one cluster this test process initialised with the product's own `EmbeddedPostgres._initdb` (see
    `initdb_template`): the same files initdb would write there, ~1.5 s of CPU and fsync less per server. False:
    the product runs initdb itself (tests/e2e/test_first_start.py keeps that path covered)."""

    def _user_kwargs(self) -> dict[str, Any]:
        if self.run_as is None:
            return {}
        return {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}

    @property
    def mcp_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        self._prepare_clusters()
        return subprocess.run([self.inkmcp, *args], env=self.env, capture_output=True, text=True, timeout=120,
                              check=check, cwd="/tmp", **self._user_kwargs())

    def create_key(self, account: str) -> str:
        """A new API key for `account` (made if needed), kept in `keys`.

        While the server runs (as root, the usual case), the key is made in this process by the product's own
        `AccountService.create_key` on the server's control-plane database, which is what `inkmcp keys create`
        runs too: each CLI process cost ~4 s (~3 s of CPU importing `inkmcp.app`) per key and account, the largest
        part of most test servers' set-up. Before the first start (no control plane yet) or for a server run as
        another user, the CLI makes it (tests/e2e/test_keys_create_url.py and others test the command itself)."""
        if self.proc is not None and self.run_as is None:
            [key] = issue_keys(self.control_url(), account)
        else:
            out = self.cli("keys", "create", "--account", account).stdout
            found = re.search(r"dk_live_[A-Za-z0-9_\-]+", out)
            assert found, out
            key = found.group(0)
        self.keys[account] = key
        return key

    def create_keys(self, accounts: tuple[str, ...] | list[str]) -> None:
        """A key per account (`create_key`), in one connection when the server runs."""
        if self.proc is not None and self.run_as is None:
            self.keys.update(zip(accounts, issue_keys(self.control_url(), *accounts), strict=True))
        else:
            for account in accounts:
                self.create_key(account)

    def control_url(self) -> str:
        """The control-plane database's URL as `inkmcp serve` opens it (INKMCP_DATABASE_URL, else the embedded
        cluster's socket, where the superuser is trusted: the harness runs as the server's user or root)."""
        if self.env.get("INKMCP_DATABASE_URL"):
            return self.env["INKMCP_DATABASE_URL"]
        from inkmcp.store.embedded import EmbeddedPostgres

        return EmbeddedPostgres(self.data_dir / "pg" / "control").url(database="postgres").get_secret_value()

    def _prepare_clusters(self) -> None:
        """Copy the template cluster in as the control-plane and tenant clusters, once, before any `inkmcp` process
        runs on a new data dir (`initdb_template`). Not for a server with its own database URLs (it makes no
        embedded cluster of that kind) or run as another user (the copies would be owned by `inkmcp-pg`)."""
        pg = self.data_dir / "pg"
        if not self.initdb_template or self.run_as is not None or self.data_dir.exists():
            return
        self.initdb_template = False  # once: the data dir is the product's from here on
        kinds = [name for name, setting in (("control", "INKMCP_DATABASE_URL"),
                                            ("tenants", "INKMCP_TENANT_DATABASE_URL")) if not self.env.get(setting)]
        if not kinds:
            return
        template = initdb_template()
        self.data_dir.mkdir(mode=0o711)
        self.data_dir.chmod(0o711)  # as serve makes it (app.py: tenant users traverse it)
        pg.mkdir()
        for name in kinds:
            subprocess.run(["cp", "-a", "--reflink=auto", str(template), str(pg / name)], check=True)

    def start(self, timeout: float = 60) -> None:
        """Start `inkmcp serve` and wait for /healthz. `free_port` hands out a port the kernel may give to any
        outgoing connection before serve binds it (another xdist worker's client, a tenant app's upstream): when
        serve exits on exactly that, the same server starts again on a fresh port (CI run 31 lost a test to it)."""
        for _ in range(3):
            if not self._start_once(timeout):
                return
        raise RuntimeError(f"inkmcp serve found its port taken three times in a row:\n{self.log()}")

    def _start_once(self, timeout: float) -> bool:
        """True when serve exited because its MCP or proxy port was taken (then a fresh one to retry on)."""
        assert self.proc is None
        self._prepare_clusters()
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        log = self.log_path.open("ab")
        offset = log.tell()
        self.proc = subprocess.Popen([self.inkmcp, "serve"], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd="/tmp", **self._user_kwargs())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                said = self.log_path.read_bytes()[offset:].decode(errors="replace").lower()
                for message, attribute, setting in PORT_TAKEN:
                    port = getattr(self, attribute)
                    if message.format(port=port) in said and self.env.get(setting) == str(port):
                        self.proc = None
                        setattr(self, attribute, free_port())
                        self.env[setting] = str(getattr(self, attribute))
                        return True
                raise RuntimeError(f"inkmcp serve exited {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return False
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"inkmcp serve did not become healthy:\n{self.log()}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM our server by PID (graceful shutdown), SIGKILL its group if it hangs."""
        assert self.proc is not None
        proc, self.proc = self.proc, None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path else ""


def unmount_beneath(root: Path) -> list[str]:
    """After a test server stopped: every mount at or under `root` that is still there, deepest first, by exact path
    (a serve killed -9 leaves its images mounted for the next one to adopt, and the data dir's own shared bind
    mount, providers/compute/local/propagation.py, stays while anything is mounted beneath it). Returns them."""
    if os.geteuid() != 0:
        return []
    from inkmcp.errors import ProviderError
    from inkmcp.providers.compute.local.diskquota import mount_points, unmount

    base = os.path.realpath(root)
    left = sorted((p for p in mount_points() if p == base or p.startswith(base + "/")), key=len, reverse=True)
    for point in left:
        with contextlib.suppress(OSError, ProviderError):
            unmount(Path(point))
    return left


def remove_tenant_users(data_dir: Path) -> int:
    """Delete the per-project Unix users a test server created (their homes live in its data dir).

    The server keeps users while projects exist, as production must; tests clean up after it.
    """
    removed = 0
    for line in Path("/etc/passwd").read_text().splitlines():
        fields = line.split(":")
        if len(fields) > 5 and fields[0].startswith("ink-") and fields[5].startswith(str(data_dir) + "/"):
            subprocess.run(["userdel", fields[0]], check=False, capture_output=True)
            removed += 1
    return removed


def product_window() -> dict[str, str]:
    """The stability window a product server waits (INKMCP_STABILITY_WINDOW if set, else its default), for benchmarks:
    make_server's 0.3 s is the suites' setting, and a figure must be measured as operators run it."""
    from inkmcp.providers.compute.local.readiness import LiveSettings

    default = LiveSettings.model_fields["stability_window"].default
    return {"INKMCP_STABILITY_WINDOW": os.environ.get("INKMCP_STABILITY_WINDOW", str(default))}


SHARED_SERVER_LIMITS = {"INKMCP_MAX_PROJECTS_PER_ACCOUNT": "400", "INKMCP_MAX_DATABASES_PER_ACCOUNT": "100"}
"""The session's shared servers (tests/conftest.py `local_server`, tests/e2e/conftest.py) hold many modules' projects:
the per-account defaults are not what their tests check (tests/core and tests/security do, on servers of their own)."""


def issue_keys(control_url: str, *accounts: str) -> list[str]:
    """A new API key per account in `accounts` (each account made if needed), in that order, by the product's
    `AccountService.create_key`, the code `inkmcp keys create` runs, on the control-plane database at `control_url`.
    Runs its own event loop in a thread, so it can be called from async tests too."""

    async def issue() -> list[str]:
        from inkmcp.core.accounts import AccountService
        from inkmcp.store.db import open_store

        store = await open_store(control_url, pool_size=1, max_overflow=0)
        try:
            service = AccountService(store.sessionmaker)
            return [(await service.create_key(account)).key for account in accounts]
        finally:
            await store.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, issue()).result(timeout=120)


_TEMPLATE: Path | None = None
_TEMPLATE_LOCK = threading.Lock()


def initdb_template() -> Path:
    """A cluster made by the product's own initdb step (`EmbeddedPostgres._initdb`: the same initdb command and
    the same `include_if_exists` line every embedded server gets), once per test process, never started; test
    servers' clusters are copies of it (`ServerProc.initdb_template`). Everything else a start needs (inkmcp.conf,
    pg_hba.conf, the superuser password, tablespaces) the product writes at every start, as on a first start.
    Removed by `remove_initdb_template` (tests/conftest.py's pytest_sessionfinish: xdist workers end without running
    atexit handlers) or at exit."""
    global _TEMPLATE
    with _TEMPLATE_LOCK:
        if _TEMPLATE is None or not (_TEMPLATE / "PG_VERSION").exists():
            from inkmcp.store.embedded import EmbeddedPostgres

            base = traversable_tmpdir("inkmcp-pg-template-")
            atexit.register(shutil.rmtree, base, ignore_errors=True)
            EmbeddedPostgres(base / "pgdata")._initdb()
            _TEMPLATE = base / "pgdata"
        return _TEMPLATE


def remove_initdb_template() -> None:
    """Delete this process's template cluster, if it made one (it is never started: nothing runs on it)."""
    global _TEMPLATE
    with _TEMPLATE_LOCK:
        if _TEMPLATE is not None:
            shutil.rmtree(_TEMPLATE.parent, ignore_errors=True)
            _TEMPLATE = None


def make_server(prefix: str = "inkmcp-e2e-", **env: str) -> ServerProc:
    data_dir = traversable_tmpdir(prefix) / "data"
    port, proxy_port = free_port(), free_port()
    full_env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("INKMCP_")},
        "INKMCP_DATA_DIR": str(data_dir),
        "INKMCP_PORT": str(port),
        "INKMCP_PROXY_PORT": str(proxy_port),
        "INKMCP_IDLE_TIMEOUT": "3",
        "INKMCP_HEALTH_TIMEOUT": "15",
        "INKMCP_DEPLOY_ANSWER_WITHIN": "10",
        # "live" waits for every process to stay up this long (default 3 s): long enough for the suites' apps,
        # which fail at once or not at all; tests/local/test_live_means_live.py checks the window itself.
        "INKMCP_STABILITY_WINDOW": "0.3",
        # The suites deploy local repos; as root the default would refuse them (a shared machine).
        "INKMCP_ALLOW_LOCAL_SOURCES": "1",
        # --- quota: the suites' servers make dozens of projects each, which with 4 GiB each (INKMCP_MAX_DISK_MB) would
        # be refused beyond what this machine's free disk can promise (diskquota._admit); they hold a few MB each
        "INKMCP_DISK_OVERCOMMIT": "64",
        # --- end
        **env,
    }
    return ServerProc(data_dir=data_dir, port=port, proxy_port=proxy_port, env=full_env)


@contextlib.contextmanager
def running_server(prefix: str, accounts: tuple[str, ...], **env: str) -> Iterator[ServerProc]:
    """A started `inkmcp serve` with a key per account; stopped by PID and cleaned up afterwards."""
    srv = make_server(prefix, **env)
    try:
        srv.start()
        srv.create_keys(accounts)  # after the start: made in this process (ServerProc.create_key)
        yield srv
    finally:
        dispose_server(srv, clean_stop=srv.proc is not None)


def dispose_server(srv: ServerProc, *, clean_stop: bool = True) -> None:
    """Stop the server if it runs (by PID; `clean_stop`: its graceful shutdown must succeed), delete the project
    users it created and its directory."""
    if srv.proc is not None:
        code = srv.stop()
        assert code == 0 or not clean_stop, f"graceful shutdown failed ({code}):\n{srv.log()}"
    remove_tenant_users(srv.data_dir)
    # --- mender6: the cgroups of the server's local services, by exact path (they outlived every test before)
    from tests.cgroup_cleanup import remove_service_cgroups

    remove_service_cgroups(srv.data_dir / "compute")
    # --- end
    unmount_beneath(srv.data_dir)
    shutil.rmtree(srv.data_dir.parent, ignore_errors=True)


@contextlib.asynccontextmanager
async def mcp_session(server: ServerProc, key: str) -> AsyncIterator[ClientSession]:
    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    async with client, streamable_http_client(server.mcp_url, http_client=client) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        yield session


class ToolFailed(AssertionError):
    pass


async def call(session: ClientSession, tool: str, progress: list[str] | None = None, **args: Any) -> dict[str, Any]:
    """Call a tool; return structured content or raise ToolFailed with the error text."""

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        if progress is not None and message:
            progress.append(message)

    result = await session.call_tool(tool, args, progress_callback=on_progress if progress is not None else None)
    if result.is_error:
        raise ToolFailed(" ".join(getattr(c, "text", "") for c in result.content))
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


async def call_error(session: ClientSession, tool: str, **args: Any) -> str:
    result = await session.call_tool(tool, args)
    assert result.is_error, f"{tool} unexpectedly succeeded: {result.structured_content}"
    return " ".join(getattr(c, "text", "") for c in result.content)


def git_repo(path: Path, files: dict[str, str]) -> Path:
    """A real git repo with one commit, made for a test."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        f = path / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(content)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(path)]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    share_repo(path)
    return path


def share_repo(path: Path) -> None:
    """Make a test repo readable by every user: the server fetches it as the project's Unix user."""
    subprocess.run(["chmod", "-R", "go+rX", str(path)], check=True)


def git_commit(path: Path, files: dict[str, str], message: str = "change") -> None:
    for name, content in files.items():
        (path / name).write_text(content)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(path)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", message], check=True)
    share_repo(path)
