"""A commit's files written by the fetch's own `git cat-file` process (`fetch_commit(files_for=...)`), for a provider
that reads a repo here only for its build plan (Coolify): the same files `git archive | tar -x` writes, nothing
outside the destination whatever the tree names, and bigger commits left to the archive path.

Real repositories and real git processes (tests/build/conftest.py); the crafted trees are written with
`git hash-object --literally`, the way a hostile repository would carry them.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from inkmcp.build import source as source_mod
from inkmcp.build.source import SourcePolicy, SourceWorkspace, checkout_fetched, fetch_commit
from inkmcp.errors import SourceError

from .conftest import git

MakeRepo = Callable[[dict[str, str]], Path]
ALLOW = SourcePolicy(allow_local=True)


@pytest.fixture
def private(tmp_path: Path) -> Path:
    """A parent only this process can write, as deploy_app's checkouts dir."""
    d = tmp_path / "checkouts"
    d.mkdir(mode=0o700)
    return d


def tree_of(root: Path) -> dict[str, tuple[str, str | bytes]]:
    """Every entry under `root`: ('dir'|'link'|'exec'|'file', link target or contents), links never followed."""
    out: dict[str, tuple[str, str | bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", "")
            else:
                out[rel] = ("exec" if st.st_mode & 0o100 else "file", path.read_bytes())
    return out


async def test_the_files_are_those_archive_and_tar_write(make_repo: MakeRepo, ws: SourceWorkspace,
                                                         private: Path) -> None:
    repo = make_repo({"app.py": "print('hi')\n", "Procfile": "web: python app.py\n", "a/b/c/deep.txt": "x" * 5000,
                      "empty.txt": "", "bin/run": "#!/bin/sh\necho run\n", "static/index.html": "<p>hi</p>"})
    (repo / "bin" / "run").chmod(0o755)
    (repo / "outside").symlink_to("/etc/passwd")  # a link is written as a link, never followed
    (repo / "inside").symlink_to("app.py")
    git(repo, "add", "-A")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{git(repo, 'rev-parse', 'HEAD')},vendor/sub")
    git(repo, "commit", "-q", "-m", "more")
    asked: list[tuple[Path, str]] = []

    def files_for(mirror: Path, sha: str) -> Path:
        asked.append((mirror, sha))
        return private / "plan"

    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW, files_for=files_for)
    assert fetched.files == private / "plan" and asked == [(fetched.mirror, fetched.sha)]
    assert stat.S_IMODE(os.lstat(fetched.files).st_mode) == 0o700
    await checkout_fetched(fetched, private / "tar", policy=ALLOW)
    ours, theirs = tree_of(private / "plan"), tree_of(private / "tar")
    assert ours == theirs
    assert ours["outside"] == ("link", "/etc/passwd") and ours["bin/run"][0] == "exec" and ours["vendor/sub"] == (
        "dir", "")
    for path in (private / "plan").rglob("*"):  # private to InkMCP, as tar writes them
        if not path.is_symlink():
            assert os.lstat(path).st_mode & 0o077 == 0, path


async def test_nowhere_asked_or_too_big_writes_nothing(make_repo: MakeRepo, ws: SourceWorkspace, private: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    repo = make_repo({"app.py": "x" * 4000})
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW, files_for=lambda mirror, sha: None)
    assert fetched.files is None and list(private.iterdir()) == []
    monkeypatch.setattr(source_mod, "FILES_MAX_BYTES", 1000)  # bigger commits go through archive and tar
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW,
                                 files_for=lambda mirror, sha: private / "plan")
    assert fetched.files is None and list(private.iterdir()) == []
    await checkout_fetched(fetched, private / "tar", policy=ALLOW)
    assert (private / "tar" / "app.py").read_text() == "x" * 4000


def crafted_commit(repo: Path, name: bytes) -> None:
    """Commit a tree holding a file named `name` (a name git's own checkout refuses) on top of main."""
    blob = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"], input=b"owned\n",
                          check=True, capture_output=True).stdout.strip().decode()
    entry = b"100644 " + name + b"\0" + bytes.fromhex(blob)
    inner = subprocess.run(["git", "-C", str(repo), "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
                           input=entry, check=True, capture_output=True).stdout.strip().decode()
    # the hostile name one level down, under an ordinary directory
    outer = b"40000 sub\0" + bytes.fromhex(inner)
    tree = subprocess.run(["git", "-C", str(repo), "hash-object", "-t", "tree", "-w", "--literally", "--stdin"],
                          input=outer, check=True, capture_output=True).stdout.strip().decode()
    sha = git(repo, "commit-tree", tree, "-p", "HEAD", "-m", "crafted")
    git(repo, "update-ref", "HEAD", sha)


@pytest.mark.parametrize("name", [b"..", b".", b".git", b".GIT"])
async def test_a_tree_naming_a_path_git_refuses_writes_nothing(make_repo: MakeRepo, ws: SourceWorkspace,
                                                               private: Path, tmp_path: Path, name: bytes) -> None:
    """The attack: a repository whose tree names `sub/..` (or `.git`) holding a file, to write next to or above the
    destination. Refused before any file is written; nothing appears outside the destination."""
    repo = make_repo({"app.py": "print('hi')\n"})
    crafted_commit(repo, name)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(SourceError) as refused:
        await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW, files_for=lambda mirror, sha: private / "p")
    assert "names a path git refuses to check out" in refused.value.render()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (private / "owned").exists() and not (private / "p" / "owned").exists()
    assert [p for p in (private / "p").rglob("*")] == []


async def test_a_fetch_skips_gits_auto_maintenance_only_when_it_would_find_nothing(
        make_repo: MakeRepo, ws: SourceWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """InkMCP-owned mirrors: `--no-auto-maintenance` while gc --auto's own test says nothing to do (loose objects
    sampled in objects/17, packs); past either threshold the fetch runs git's maintenance as before."""
    repo = make_repo({"app.py": "print('hi')\n"})
    argvs: list[list[str]] = []
    real = source_mod._spawn

    async def spawn(argv: list[str], *a: object, **kw: object) -> object:
        argvs.append(argv)
        return await real(argv, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(source_mod, "_spawn", spawn)
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    fetches = [a for a in argvs if "fetch" in a]
    assert len(fetches) == 1 and "--no-auto-maintenance" in fetches[0]
    sample = fetched.mirror / "objects" / "17"
    sample.mkdir(exist_ok=True)
    for i in range(source_mod._GC_AUTO_LOOSE):
        (sample / f"{i:038x}").write_bytes(b"")
    assert source_mod._needs_maintenance(fetched.mirror)
    argvs.clear()
    await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    assert not any("--no-auto-maintenance" in a for a in argvs if "fetch" in a)
    for f in sample.iterdir():
        f.unlink()
    packs = fetched.mirror / "objects" / "pack"
    for i in range(source_mod._GC_AUTO_PACKS + 1):
        (packs / f"pack-{i:040x}.pack").write_bytes(b"")
    assert source_mod._needs_maintenance(fetched.mirror)
