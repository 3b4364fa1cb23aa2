"""The Coolify provider's source fetch (inkmcp/build/source.py with InkMCP's own workspace, as
`CoolifyComputeProvider.source_workspace` gives it): the `git cat-file` process that answers the deploy's questions
starts while `git fetch` runs (issue 8, overhead), so a fetch that fails must not leave it behind, and one that
succeeds must let it see what the fetch brought."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import psutil
import pytest

from inkmcp.build.source import SourcePolicy, SourceWorkspace, fetch_commit
from inkmcp.errors import SourceError

ALLOW = SourcePolicy(allow_local=True)
GIT = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]


def _workspace(tmp_path: Path) -> SourceWorkspace:
    mirrors, locks = tmp_path / "mirrors", tmp_path / "locks"
    for d in (mirrors, locks):
        d.mkdir(mode=0o700)
    return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=None)


def _git_children() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.name() == "git" and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


async def test_a_failed_fetch_leaves_no_git_process_behind(tmp_path: Path) -> None:
    repo = tmp_path / "not-really"
    repo.mkdir()
    (repo / ".git").write_text("gitdir: /nonexistent/elsewhere\n")  # passes the local check, fails git's own
    before = {p.pid for p in _git_children()}
    with pytest.raises(SourceError) as err:
        await fetch_commit(str(repo), None, workspace=_workspace(tmp_path), policy=ALLOW)
    assert err.value.argument == "repo_url" and "could not fetch" in str(err.value)
    await asyncio.sleep(0)
    left = [p for p in _git_children() if p.pid not in before]
    assert left == [], [p.cmdline() for p in left]


async def test_the_early_cat_file_sees_what_the_fetch_brought(tmp_path: Path) -> None:
    repo = tmp_path / "app"
    subprocess.run([*GIT, "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "Procfile").write_text("web: python app.py\n")
    (repo / "app.py").write_text("print('hi')\n")
    subprocess.run([*GIT, "-C", str(repo), "add", "-A"], check=True)
    subprocess.run([*GIT, "-C", str(repo), "commit", "-q", "-m", "one"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()  # fmt: skip
    out = tmp_path / "files"
    fetched = await fetch_commit(str(repo), "main", workspace=_workspace(tmp_path), policy=ALLOW,
                                 files_for=lambda mirror, sha: out)  # fmt: skip
    assert fetched.sha == head and fetched.files == out
    assert (out / "Procfile").read_text() == "web: python app.py\n" and fetched.size == (len("print('hi')\n") + 19, 2)
    assert _git_children() == []
