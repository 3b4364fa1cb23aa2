"""Fetching over https, as production does from a git host: the peer is verified against the system's CA bundle,
and git reads no CA directory (libcurl on GnuTLS parsed all of /etc/ssl/certs at every fetch: 36 ms of ~70).

A real TLS git server (the GitHub stand-in's smart HTTP behind uvicorn with a certificate made for this module, in
a process of its own: benchmarks/git_standin_process.py) and real git processes through inkmcp.build.source.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.git_standin_process import GitStandinProcess
from inkmcp.build import source as source_mod
from inkmcp.build.source import SourcePolicy, SourceWorkspace, fetch_commit
from inkmcp.errors import SourceError

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
