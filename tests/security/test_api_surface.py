"""Held items of the review on the tool and HTTP surface: 22 (names), 23 (manifest symlinks), 24 (git
argument and transport injection), 27 (a revoked key inside an open session), 28 (DNS rebinding).

Each injection would create a file in a world-writable marker dir if anything ran it (as root or
as a tenant); the tests assert the refusal and that no marker appeared.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.security.conftest import LAB_START, ROOT, deploy_failure, lab_repo, refused, session
from tests.support import ServerProc, call, git_repo

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server


@pytest.fixture(scope="module")
def markers(repos: Path) -> Path:
    d = repos / "markers"
    d.mkdir()
    d.chmod(0o1777)  # anyone, root or any tenant, could leave a marker here if an injection ran
    return d


async def test_bad_names_are_refused(server: ServerProc, repos: Path, markers: Path) -> None:
    """#22: shell metacharacters and traversal in project, service, manifest and Procfile names."""
    repo = lab_repo(repos, "names-ok")
    async with session(server, "mallory") as m:
        for args in ({"project_name": "../../x"}, {"service_name": "we;b"},
                     {"service_name": f"web;touch {markers}/svc"}, {"project_name": f"x$(touch {markers}/proj)"}):
            text = await refused(m, "deploy_app", repo_url=str(repo), start_command=LAB_START, **args)
            assert "not a valid name" in text and "DNS label" in text, text
        text = await refused(m, "ensure_project", name="../../x")
        assert "not a valid name" in text, text

        manifest = git_repo(repos / "names-manifest", {
            "lab.py": "", "inkmcp.yaml": f"services:\n  'web;touch {markers}/manifest':\n    start: python3 lab.py\n"})
        text = await deploy_failure(m, repo_url=str(manifest))
        assert "web;touch" in text and "DNS label" in text, text
        procfile = git_repo(repos / "names-procfile", {"lab.py": "", "Procfile": f"web$(touch {markers}/procfile): "
                                                                                 "python3 lab.py\n"})
        text = await deploy_failure(m, repo_url=str(procfile))
        assert "Procfile" in text, text
    assert sorted(os.listdir(markers)) == []


def _symlinked_repo(path: Path, name: str) -> Path:
    repo = git_repo(path, {"lab.py": "print('x')\n"})
    (repo / name).symlink_to("/etc/shadow")
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(repo)]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", f"{name} -> /etc/shadow"], check=True)
    return repo


@pytest.mark.parametrize("name", ["inkmcp.yaml", "Procfile"])
async def test_manifest_symlinks_are_refused(server: ServerProc, repos: Path, name: str) -> None:
    """#23: `inkmcp.yaml` / `Procfile` -> /etc/shadow: refused, and nothing of /etc/shadow is shown."""
    repo = _symlinked_repo(repos / f"shadow-{name.lower().replace('.', '-')}", name)
    async with session(server, "mallory") as m:
        text = await deploy_failure(m, repo_url=str(repo))  # no start_command: the Procfile is read
        logs = await m.call_tool("get_logs", {"project_name": repo.name, "scope": "build", "tail": 500})
    shown = text + " ".join(getattr(c, "text", "") for c in logs.content)
    assert "symlink" in text and name in text, text
    assert not re.search(r"root:[^:\s]*:\d+:", shown), "the content of /etc/shadow reached mallory"


async def test_git_argument_and_transport_injection_is_refused(server: ServerProc, repos: Path,
                                                              markers: Path) -> None:
    """#24: ext::, fd::, --upload-pack, -oProxyCommand in repo_url, and a ref that is an option."""
    repo = lab_repo(repos, "inject-ok")
    urls = [
        f"ext::sh -c touch% {markers}/ext",
        f"ext::sh -c touch% {markers}/ext2 x://h/p",
        f"--upload-pack=touch {markers}/upload-pack",
        f"ssh://-oProxyCommand=touch%20{markers}/ssh/x",
        f"-oProxyCommand=touch {markers}/proxy@localhost:x",
        "fd::17/x",
    ]
    async with session(server, "mallory") as m:
        for url in urls:
            await refused(m, "deploy_app", repo_url=url, project_name="inject", start_command=LAB_START)
        for ref in (f"--upload-pack=touch {markers}/ref", f"-c core.sshCommand=touch {markers}/ref2"):
            text = await deploy_failure(m, repo_url=str(repo), ref=ref, start_command=LAB_START)
            assert "ref" in text, text
    assert sorted(os.listdir(markers)) == []


@contextlib.asynccontextmanager
async def recording_session(server: ServerProc, key: str, statuses: list[int]) -> AsyncIterator[ClientSession]:
    """An MCP session over the real transport that records the HTTP status of every response."""

    async def record(response: Any) -> None:
        statuses.append(response.status_code)

    client = create_mcp_http_client(headers={"Authorization": f"Bearer {key}"})
    client.event_hooks["response"].append(record)
    async with client, streamable_http_client(server.mcp_url, http_client=client) as (read, write), \
            ClientSession(read, write) as s:
        await s.initialize()
        yield s


async def test_revoked_key_is_refused_inside_an_open_session(server: ServerProc) -> None:
    """#27: after `keys revoke`, the next call of an already open session gets 401."""
    key = server.keys.get("carol") or server.create_key("carol")
    statuses: list[int] = []
    async with recording_session(server, key, statuses) as s:
        await call(s, "list_projects")
        assert statuses and statuses[-1] == 200
        server.cli("keys", "revoke", key)
        server.keys.pop("carol")
        with pytest.raises(Exception) as failed:  # the client raises McpError; the 401 is the proof
            await call(s, "list_projects")
        assert statuses[-1] == 401, (statuses, failed.value)
    r = httpx.post(server.mcp_url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                   headers={"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"})
    assert r.status_code == 401


INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
    "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}


@pytest.mark.parametrize(("headers", "status"), [
    ({"Host": "evil.example"}, 421),
    ({"Host": "127.0.0.1.nip.io"}, 421),
    ({"Origin": "http://evil.example"}, 403),
])
async def test_dns_rebinding_is_refused(server: ServerProc, headers: dict[str, str], status: int) -> None:
    """#28: a page on a foreign origin reaching the MCP port through DNS rebinding is refused."""
    base = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {server.keys['alice']}"}
    r = httpx.post(server.mcp_url, json=INIT, headers={**base, **headers})
    assert r.status_code == status, (r.status_code, r.text[:300])
