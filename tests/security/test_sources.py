"""Where `repo_url` may point: findings 5 (local paths read as root), 9 (SSRF / port scan), 10 (tokens).

#5: mallory deployed `/root-only/repo`, `file://<alice's repo>` and alice's mirror path; root read them
and served her the files. #9: git fetched any URL, so the server connected to loopback listeners, and
its errors told open ports from closed ones. #10: a token in `repo_url` came back from list_projects
and sat in plaintext in the control database.

As root with INKMCP_ALLOW_LOCAL_SOURCES unset (the default on a shared machine: this module's own
server), local and internal sources are refused with an error naming the setting. Where an operator
allows them (the shared server), they are read with the tenant's rights and the error does not tell
a root-only path from a missing one.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.security.conftest import (
    LAB_START,
    ROOT,
    deploy_failure,
    deploy_live,
    lab_repo,
    refused,
    security_server,
    session,
    via_proxy,
)
from tests.support import ServerProc, call, free_port, git_repo, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server

SETTING = "INKMCP_ALLOW_LOCAL_SOURCES"
ROOT_SECRET = "ROOT_ONLY_SECRET_abc123"


@pytest.fixture(scope="module")
def root_default() -> Iterator[ServerProc]:
    """A root server with INKMCP_ALLOW_LOCAL_SOURCES unset: what a shared machine runs by default."""
    with security_server("inkmcp-sec-default-", ("mallory",), unset=(SETTING,)) as srv:
        assert SETTING not in srv.env
        yield srv


def root_only_repo(path: Path) -> Path:
    """A git repo only root can read (mode 0700), holding a secret."""
    git_repo(path, {"secret.txt": ROOT_SECRET + "\n", "index.html": "<h1>loot</h1>\n"})
    path.chmod(0o700)
    return path


class Listener:
    """A TCP listener on loopback (IPv4, and IPv6 where the host has it) that counts the connections it gets."""

    def __init__(self) -> None:
        self.connections: list[str] = []
        v4 = socket.create_server(("127.0.0.1", 0))
        self.port = v4.getsockname()[1]
        self.sockets = [v4]
        with contextlib.suppress(OSError):  # no IPv6 loopback here: the [::1] URL is still refused, unanswered
            self.sockets.append(socket.create_server(("::1", self.port), family=socket.AF_INET6))
        for s in self.sockets:
            threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = sock.accept()
                self.connections.append(str(peer))
                conn.close()

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def _closed_port() -> int:
    port = free_port()
    with socket.socket() as s:  # nothing listens there: a connect is refused
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


async def test_local_sources_refused_by_default_as_root(root_default: ServerProc, repos: Path) -> None:
    """#5: a local path, a file:// URL of a root-only repo and another account's repo path are refused."""
    public = git_repo(repos / "shared-app", {"index.html": "<h1>shared</h1>\n", "secret.txt": ROOT_SECRET + "\n"})
    root_only = root_only_repo(repos / "rootsecret")
    alice_app = root_only_repo(repos / "alice-app")
    attempts = {"loot-path": str(public), "loot-root": f"file://{root_only}", "loot-alice": str(alice_app)}
    async with session(root_default, "mallory") as m:
        for project, url in attempts.items():
            text = await refused(m, "deploy_app", repo_url=url, project_name=project, service_type="webapp_static")
            assert SETTING in text, text
            assert ROOT_SECRET not in text
    for project in attempts:  # what mallory would fetch had a deployment happened
        r = via_proxy(root_default, f"http://web.{project}.localhost", "/secret.txt")
        assert ROOT_SECRET not in r.text and r.status_code != 200, (project, r.status_code, r.text[:200])


def _normalised(text: str, *values: str | int) -> str:
    for v in values:
        text = text.replace(str(v), "<x>")
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "<id>", text)
    text = re.sub(r"\bink-[0-9a-f]{12}\b", "<user>", text)  # each attempt may get a fresh project user
    return re.sub(r"\b[0-9a-f]{40}\b", "<sha>", text)


async def test_internal_addresses_refused_without_connecting(root_default: ServerProc) -> None:
    """#9: loopback, private, link-local and metadata addresses: refused before any connection, same text."""
    listener = Listener()
    closed = _closed_port()
    try:
        port = listener.port
        urls = {
            "open": f"http://127.0.0.1:{port}/mallory-probe.git",
            "closed": f"http://127.0.0.1:{closed}/mallory-probe.git",
            "localhost": f"http://localhost:{port}/mallory-probe.git",
            "ipv6": f"http://[::1]:{port}/mallory-probe.git",
            "decimal": f"http://2130706433:{port}/mallory-probe.git",
            "short": f"https://127.1:{port}/mallory-probe.git",
            "git": f"git://127.0.0.1:{port}/mallory-probe.git",
            "metadata": "http://169.254.169.254/latest/meta-data.git",
            "private": "http://10.0.0.1/x.git",
        }
        texts: dict[str, str] = {}
        async with session(root_default, "mallory") as m:
            for name, url in urls.items():
                texts[name] = await refused(m, "deploy_app", repo_url=url, project_name="probe",
                                            start_command=LAB_START)
    finally:
        listener.close()
    assert listener.connections == [], f"the server connected to mallory's listener: {listener.connections}"
    for name, text in texts.items():  # numeric host spellings may be refused as such, before any lookup
        assert SETTING in text or name in ("decimal", "short"), (name, text)
    assert _normalised(texts["open"], port) == _normalised(texts["closed"], closed), texts


async def test_allowed_local_sources_read_with_tenant_rights(server: ServerProc, repos: Path) -> None:
    """#5 when an operator allows local sources: a root-only repo is still unreadable, and the error
    is the same as for a path that does not exist (it does not reveal what is on the disk)."""
    vault = repos / "vault"
    vault.mkdir(mode=0o711)
    root_only = root_only_repo(vault / "secret-repo")
    missing = repos / "nowhere" / "secret-repo"
    texts = {}
    async with session(server, "mallory") as m:
        for path in (root_only, missing):
            texts[path] = await deploy_failure(m, repo_url=str(path), project_name="loot-vault",
                                               service_type="webapp_static")
    assert all(ROOT_SECRET not in t for t in texts.values()), texts
    assert _normalised(texts[root_only], root_only) == _normalised(texts[missing], missing), texts
    r = via_proxy(server, "http://web.loot-vault.localhost", "/secret.txt")
    assert ROOT_SECRET not in r.text


@contextlib.contextmanager
def dumb_http_git(root: Path, source: Path) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """Serve a bare copy of `source` over git's dumb HTTP protocol; yields (port, request headers seen)."""
    bare = root / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)
    subprocess.run(["git", "-C", str(bare), "update-server-info"], check=True)
    seen: list[dict[str, str]] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(dict(self.headers))
            super().do_GET()

        def log_message(self, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))) as port:
        yield port, seen


def control_rows(data_dir: Path) -> dict[str, list[str]]:
    """Every row of every table of the control-plane database, as text (root over its unix socket)."""
    from inkmcp.store.embedded import EmbeddedPostgres

    url = EmbeddedPostgres(data_dir / "pg" / "control").socket_url(driver=None).get_secret_value()
    out: dict[str, list[str]] = {}
    with psycopg.connect(url) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT quote_ident(schemaname) || '.' || quote_ident(tablename) FROM pg_tables "
            "WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")]
        for table in tables:
            out[table] = [r[0] for r in conn.execute(f"SELECT t::text FROM {table} t")]
    return out


async def test_repo_url_credentials_never_returned_or_stored_in_plaintext(server: ServerProc, repos: Path) -> None:
    """#10: a token in repo_url: no tool output, no control-DB row and no server log line holds it."""
    token = f"ghp_SUPERSECRETTOKEN{secrets.token_hex(6)}"
    source = lab_repo(repos, "tokened-src")
    web = repos / "httpgit"
    web.mkdir()
    with dumb_http_git(web, source) as (port, _seen):
        url = f"http://alice:{token}@127.0.0.1:{port}/repo.git"
        outputs: list[Any] = []
        async with session(server, "alice") as a:
            dep = await deploy_live(a, repo_url=url, project_name="tokened", start_command=LAB_START,
                                    mode="persistent", env_vars={"LAB_OWNER": "alice"})
            outputs.append(dep)
            outputs.append(await call(a, "deploy_app", repo_url=url, project_name="tokened",
                                      start_command=LAB_START, mode="persistent", env_vars={"LAB_OWNER": "alice"}))
            outputs.append(await call(a, "list_projects"))
            outputs.append(await call(a, "list_services", project_name="tokened"))
            outputs.append(await call(a, "wait_for_deployment", deployment_id=dep["deployment_id"]))
            for scope in ("build", "runtime"):
                outputs.append(await call(a, "get_logs", project_name="tokened", scope=scope, tail=500))
    assert via_proxy(server, dep["url"]).text == "alice says hi"
    shown = json.dumps(outputs)
    assert "tokened" in shown and token not in shown, [o for o in outputs if token in json.dumps(o)]
    rows = control_rows(server.data_dir)
    assert any("tokened" in r for r in rows.get("public.projects", [])), sorted(rows)
    plain = {t: [r for r in rs if token in r] for t, rs in rows.items() if any(token in r for r in rs)}
    assert plain == {}, f"repo_url token stored in plaintext: {plain}"
    assert server.log_path is not None and token not in server.log_path.read_text(errors="replace")
