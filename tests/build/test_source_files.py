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


def _fsyncs(trace: Path) -> int:
    """Hardware flushes git reported (trace2's `fsync/hardware-flush` counter, one per fsync it made)."""
    text = trace.read_text() if trace.exists() else ""
    return sum(int(n) for n in __import__("re").findall(r"fsync/hardware-flush:(\d+)", text))


async def test_a_new_mirrors_first_fetch_is_one_pack_without_fsync_and_a_redeploys_stays_loose(
        make_repo: MakeRepo, ws: SourceWorkspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """overhead9 (issue 8): a project's first fetch into an InkMCP-owned mirror is written as one pack by index-pack
    (not as a loose file per object by unpack-objects), and git fsyncs neither the pack nor its index, as it never
    fsyncs loose objects; a redeploy's fetch of a few objects stays loose (git's own storage, as before). Seen from
    git's side: its trace2 fsync counter and the mirror's files. Fails with `_FAST_FETCH` taken out (loose objects,
    no pack) or with the fsync setting taken out (2 fsyncs)."""
    repo = make_repo({"app.py": "print('hi')\n", "Procfile": "web: python app.py\n", "lib/util.py": "X = 1\n"})
    trace = tmp_path / "trace2.txt"
    real_env = source_mod._git_env
    monkeypatch.setattr(source_mod, "_git_env", lambda src: {**real_env(src), "GIT_TRACE2_PERF": str(trace)})
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    objects = fetched.mirror / "objects"
    assert len(list((objects / "pack").glob("*.pack"))) == 1 and len(list((objects / "pack").glob("*.idx"))) == 1
    assert not list(objects.glob("??/*")), "a first fetch left loose objects"
    assert "index-pack" in trace.read_text() and "unpack-objects" not in trace.read_text()
    assert _fsyncs(trace) == 0, trace.read_text()[-2000:]

    trace.unlink()
    (repo / "app.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "v2")
    again = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    assert again.sha != fetched.sha
    assert len(list((objects / "pack").glob("*.pack"))) == 1  # the redeploy's 3 objects: loose, no second pack
    assert len(list(objects.glob("??/*"))) == 3
    assert "unpack-objects" in trace.read_text() and _fsyncs(trace) == 0


@pytest.mark.parametrize("damage", ["pack emptied", "pack truncated", "index emptied", "loose object emptied"])
async def test_a_mirror_an_unclean_shutdown_broke_is_fetched_again(
        make_repo: MakeRepo, ws: SourceWorkspace, private: Path, damage: str) -> None:
    """overhead9 (issue 8): what an unclean shutdown can leave of files git did not fsync (a pack and its index of a
    first fetch, loose objects of later ones, as git has always written those): an empty or truncated file under
    the mirror's refs. The next fetch finds the mirror broken, removes it and fetches into a new one: the deploy
    goes on with the right files. git heals a pack it cannot read by itself here (it no longer claims the commits
    in it, so the remote sends them again); an empty loose object it does not: before, every later deploy of the
    project failed ("loose object ... is corrupt") until someone removed the mirror by hand."""
    repo = make_repo({"app.py": "print('hi')\n", "Procfile": "web: python app.py\n"})
    first = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    objects = first.mirror / "objects"
    if damage == "loose object emptied":
        (repo / "app.py").write_text("print('v2')\n")
        git(repo, "commit", "-qam", "v2")
        second = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
        loose = [p for p in objects.glob("??/*") if p.parent.name + p.name == second.sha]
        assert loose, "the redeploy's commit is loose"
        loose[0].chmod(0o600)
        loose[0].write_bytes(b"")
    else:
        pack = next((objects / "pack").glob("*.pack"))
        target = pack if damage.startswith("pack") else pack.with_suffix(".idx")
        target.chmod(0o600)
        size = target.stat().st_size
        with open(target, "r+b") as f:
            f.truncate(size // 2 if damage == "pack truncated" else 0)
    (repo / "Procfile").write_text("web: python app.py --v3\n")
    git(repo, "commit", "-qam", "v3")
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW,
                                 files_for=lambda mirror, sha: private / "p")
    assert fetched.sha == git(repo, "rev-parse", "HEAD")
    assert (private / "p" / "Procfile").read_text() == "web: python app.py --v3\n"
    assert fetched.mirror == first.mirror


async def test_a_remote_that_stays_broken_is_fetched_again_once_then_refused(
        make_repo: MakeRepo, ws: SourceWorkspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """overhead9: a source whose own objects are broken makes git name a broken object too: the mirror is fetched
    anew once (not in a loop), then the error is the fetch's, naming the repository."""
    repo = make_repo({"app.py": "print('hi')\n"})
    await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    (repo / "app.py").write_text("print('v2')\n")
    git(repo, "commit", "-qam", "v2")
    tree = git(repo, "rev-parse", "HEAD^{tree}")
    loose = repo / ".git" / "objects" / tree[:2] / tree[2:]
    loose.chmod(0o600)
    loose.write_bytes(b"")  # the source's new tree object: upload-pack cannot send it
    fetches = 0
    real = source_mod._fetch

    async def counted(*a: object, **kw: object) -> None:
        nonlocal fetches
        fetches += 1
        await real(*a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(source_mod, "_fetch", counted)
    with pytest.raises(SourceError) as refused:
        await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    assert fetches == 2
    assert str(repo) in refused.value.render()
