"""Fetching over https, as production does from a git host: the peer is verified against the system's CA bundle,
and git reads no CA directory (libcurl on GnuTLS parsed all of /etc/ssl/certs at every fetch: 36 ms of ~70).

A real TLS git server (the GitHub stand-in's smart HTTP behind uvicorn with a certificate made for this module, in
a process of its own: benchmarks/git_standin_process.py) and real git processes through inkmcp.build.source.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.git_standin_process import GitStandinProcess
from inkmcp.build import source as source_mod
from inkmcp.build.plan import RunAs
from inkmcp.build.source import SourcePolicy, SourceWorkspace, fetch_commit
from inkmcp.errors import SourceError
from tests.requirements import require, require_root

ALLOW = SourcePolicy(allow_local=True)  # the stand-in listens on 127.0.0.1
FILES = {"app.py": "print('over https')\n", "Procfile": "web: python app.py\n"}


@pytest.fixture(scope="module")
def githost(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitStandinProcess]:
    host = GitStandinProcess(tmp_path_factory.mktemp("githost"))
    try:
        yield host
    finally:
        host.stop()


@pytest.fixture
def curl_trace(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """libcurl's own account of the fetch (which CA files and directories it read), from GIT_TRACE_CURL added on
    top of the environment InkMCP gives git."""
    trace = tmp_path / "curl.trace"
    real = source_mod._git_env

    def traced(source: Any) -> dict[str, str]:
        return {**real(source), "GIT_TRACE_CURL": str(trace), "GIT_TRACE_CURL_NO_DATA": "1"}

    monkeypatch.setattr(source_mod, "_git_env", traced)
    return trace


async def test_an_https_fetch_trusts_the_bundle_and_reads_no_ca_directory(
        githost: GitStandinProcess, ws: SourceWorkspace, monkeypatch: pytest.MonkeyPatch, curl_trace: Path) -> None:
    monkeypatch.setattr(source_mod, "CA_BUNDLE", str(githost.bundle))  # the system's authorities and the host's
    monkeypatch.setattr(source_mod, "IN_PROCESS_FETCH", False)  # git's own https fetch (a redeploy's, a tenant's)
    url = githost.repo(FILES)
    fetched = await fetch_commit(url, None, workspace=ws, policy=ALLOW)
    assert len(fetched.sha) == 40
    trace = curl_trace.read_text()
    assert f"certificates in {githost.bundle}" in trace, trace[:2000]
    assert "found 0 certificates in /dev/null" in trace or "/etc/ssl/certs" not in trace, trace[:2000]
    read = [line for line in trace.splitlines() if "certificates in /etc/ssl/certs" in line]
    assert read == [], read  # the directory libcurl reads by default: 432 files on Debian 12


async def test_an_https_fetch_still_verifies_the_host(githost: GitStandinProcess, ws: SourceWorkspace,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A bundle without the host's authority: the fetch fails on the certificate (verification was not traded
    for speed), and nothing was fetched."""
    assert source_mod.CA_BUNDLE is not None, "no system CA bundle on this machine (Debian's ca-certificates)"
    system_only = githost.bundle.parent / "system-only.pem"
    system_only.write_text(Path(source_mod.CA_BUNDLE).read_text())
    system_only.chmod(0o644)
    monkeypatch.setattr(source_mod, "CA_BUNDLE", str(system_only))
    url = githost.repo(FILES)
    with pytest.raises(SourceError) as e:
        await fetch_commit(url, None, workspace=ws, policy=ALLOW)
    assert "certificate" in str(e.value).lower(), str(e.value)
    packs = [pack for mirror in ws.mirrors_dir.iterdir() for pack in mirror.glob("objects/pack/*.pack")]
    assert packs == [], packs


@pytest.fixture
def tenant_ws() -> Iterator[SourceWorkspace]:
    """The local provider's layout: a throwaway project user owns the mirrors (0700), git runs as that user."""
    require_root("creates a throwaway Unix user to fetch as a tenant")
    require("root", shutil.which("useradd") is not None, "no useradd on PATH (Debian's passwd package)")
    name = f"inkt-tls-{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    base = Path(tempfile.mkdtemp(prefix="inkmcp-tls-", dir="/tmp"))
    try:
        base.chmod(0o711)
        run_as = RunAs(user=name, uid=int(subprocess.check_output(["id", "-u", name])),
                       gid=int(subprocess.check_output(["id", "-g", name])), home="/nonexistent")
        mirrors, locks = base / "mirrors", base / "locks"
        mirrors.mkdir(mode=0o700)
        locks.mkdir(mode=0o700)
        os.chown(mirrors, run_as.uid, run_as.gid)
        yield SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=run_as)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        subprocess.run(["userdel", name], check=False, capture_output=True)


async def test_a_tenants_https_fetch_reads_the_bundle_as_the_tenant(
        githost: GitStandinProcess, tenant_ws: SourceWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The local provider fetches as the project's user: the bundle is read with that user's rights (the system's
    is world-readable, as the stand-in's copy here)."""
    monkeypatch.setattr(source_mod, "CA_BUNDLE", str(githost.bundle))
    fetched = await fetch_commit(githost.repo(FILES), None, workspace=tenant_ws, policy=ALLOW)
    assert len(fetched.sha) == 40
    owners = {p.stat().st_uid for p in fetched.mirror.rglob("*") if p.is_file()}
    assert tenant_ws.run_as is not None and owners == {tenant_ws.run_as.uid}, owners
