"""The deploy path's git work, batched: one `cat-file` process resolves the ref and measures the commit, and a
workspace without a tenant (the Coolify provider's) checks its mirror and local sources without child processes.

Real repositories and real git processes; the children a fetch starts are counted at `_spawn`, the one place every
child of inkmcp.build.source is started.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build import source as source_mod
from inkmcp.build.source import SourcePolicy, SourceWorkspace, checkout_fetched, fetch_commit, resolve_and_checkout
from inkmcp.errors import SourceError

from .conftest import commit, git

MakeRepo = Callable[[dict[str, str]], Path]
ALLOW = SourcePolicy(allow_local=True)


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """argv of every child process inkmcp.build.source starts (git with its -c options stripped)."""
    started: list[list[str]] = []
    real = source_mod._spawn

    async def spawn(argv: list[str], *a: Any, **kw: Any) -> Any:
        args = list(argv)
        if Path(args[0]).name == "git":
            args = ["git", *[x for i, x in enumerate(args[1:], 1)
                             if x != "-c" and args[i - 1] != "-c" and not x.startswith("--git-dir=")]]
        started.append(args)
        return await real(argv, *a, **kw)

    monkeypatch.setattr(source_mod, "_spawn", spawn)
    return started


def ls_tree_size(repo: Path, rev: str) -> tuple[int, int]:
    """What the size check counted before: `git ls-tree -r -l`'s bytes (submodules: none) and entries."""
    total = entries = 0
    for line in git(repo, "ls-tree", "-r", "-l", rev).splitlines():
        entries += 1
        size = line.split("\t", 1)[0].split()[-1]
        total += int(size) if size.isdigit() else 0
    return total, entries


async def test_measure_counts_like_ls_tree(make_repo: MakeRepo, ws: SourceWorkspace, tmp_path: Path) -> None:
    repo = make_repo({"app.py": "print('hi')\n" * 50, "a/b/c/deep.txt": "x" * 5000, "a/b/two.txt": "22\n",
                      "empty.txt": "", "bin/run": "#!/bin/sh\necho run\n"})
    (repo / "link").symlink_to("app.py")
    (repo / "bin" / "run").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "update-index", "--add", "--cacheinfo", f"160000,{git(repo, 'rev-parse', 'HEAD')},vendor/sub")
    git(repo, "commit", "-q", "-m", "symlink, executable, submodule")
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    assert fetched.sha == git(repo, "rev-parse", "HEAD")
    assert fetched.size == ls_tree_size(repo, "HEAD")
    assert fetched.size is not None and fetched.size[1] == 7  # five files, the link and the submodule


async def test_refs_resolve_in_one_process_as_rev_parse_does(make_repo: MakeRepo, ws: SourceWorkspace,
                                                             children: list[list[str]]) -> None:
    repo = make_repo({"v.txt": "1\n"})
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "-a", "v1", "-m", "annotated")  # a tag object: peeled to its commit
    git(repo, "checkout", "-q", "-b", "feature")
    feature = commit(repo, {"v.txt": "feature\n"})
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "v1-branch", feature)
    await fetch_commit(f"file://{repo}", None, workspace=ws, policy=ALLOW)  # the mirror exists from here on
    for ref, want in ((None, first), ("main", first), ("v1", first), ("feature", feature),
                      (feature[:10], feature), (feature.upper(), feature), ("refs/heads/feature", feature),
                      ("v1-branch", feature)):
        children.clear()
        fetched = await fetch_commit(f"file://{repo}", ref, workspace=ws, policy=ALLOW)
        assert fetched.sha == want, ref
        assert [c[:2] for c in children] == [["git", "fetch"], ["git", "cat-file"]], (ref, children)
    with pytest.raises(SourceError) as err:
        await fetch_commit(str(repo), "no-such-branch", workspace=ws, policy=ALLOW)
    assert err.value.argument == "ref"


async def test_a_deploy_of_a_known_repo_starts_four_children(make_repo: MakeRepo, ws: SourceWorkspace,
                                                              tmp_path: Path, children: list[list[str]]) -> None:
    """fetch, cat-file (resolve + size), archive | tar: no sh, init, rev-parse, ls-tree or rm for InkMCP's own
    mirror, from the first deploy on."""
    repo = make_repo({"app.py": "print('hi')\n"})
    dest_parent = tmp_path / "private"
    dest_parent.mkdir(mode=0o700)
    await resolve_and_checkout(str(repo), None, dest_parent / "one", workspace=ws, policy=ALLOW)
    assert [c[:2] for c in children] == [["git", "fetch"], ["git", "cat-file"], ["git", "archive"], ["tar", "-x"]]
    (mirror,) = ws.mirrors_dir.iterdir()  # written in-process: git itself takes it for a bare repository
    assert git(mirror, "rev-parse", "--is-bare-repository") == "true"
    assert git(mirror, "fsck", "--no-progress") == ""
    assert {oct(p.stat().st_mode & 0o777) for p in [mirror, *mirror.rglob("*")] if p.is_dir()} == {"0o700"}
    children.clear()
    second = commit(repo, {"app.py": "print('two')\n"})
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    await checkout_fetched(fetched, dest_parent / "two", policy=ALLOW)
    assert fetched.sha == second
    assert (dest_parent / "two" / "app.py").read_text() == "print('two')\n"
    assert [c[:2] for c in children] == [["git", "fetch"], ["git", "cat-file"], ["git", "archive"], ["tar", "-x"]]


@pytest.mark.parametrize("damage", ["config", "bare flag", "refs", "leftover"])
async def test_an_incomplete_own_mirror_is_rebuilt(make_repo: MakeRepo, ws: SourceWorkspace, damage: str) -> None:
    repo = make_repo({"v.txt": "1\n"})
    sha = (await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)).sha
    (mirror,) = ws.mirrors_dir.iterdir()
    if damage == "config":
        (mirror / "config").unlink()
    elif damage == "bare flag":  # as if `git init` died before it wrote core.bare
        (mirror / "config").write_text("[core]\n\trepositoryformatversion = 0\n")
    elif damage == "refs":
        shutil.rmtree(mirror / "refs")
    else:  # a file where the mirror goes (not even a directory)
        shutil.rmtree(mirror)
        mirror.write_text("not a repository")
    assert (await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)).sha == sha
    assert "bare = true" in (mirror / "config").read_text()


async def test_the_size_cap_still_refuses_before_extracting(make_repo: MakeRepo, ws: SourceWorkspace,
                                                           tmp_path: Path) -> None:
    repo = make_repo({"big.bin": "x" * 4096, "small.txt": "1\n"})
    fetched = await fetch_commit(str(repo), None, workspace=ws, policy=ALLOW)
    dest_parent = tmp_path / "private"
    dest_parent.mkdir(mode=0o700)
    with pytest.raises(SourceError) as err:
        await checkout_fetched(fetched, dest_parent / "out", policy=SourcePolicy(allow_local=True,
                                                                                max_checkout_bytes=4000))
    assert "over this server's checkout size cap" in str(err.value)
    assert list((dest_parent / "out").iterdir()) == []


@pytest.mark.parametrize("case", ["missing", "plain dir"])
async def test_local_source_checks_without_a_shell(tmp_path: Path, ws: SourceWorkspace, case: str,
                                                   children: list[list[str]]) -> None:
    path = tmp_path / "nothing-here"
    if case == "plain dir":
        path.mkdir()
        (path / "app.py").write_text("")
    with pytest.raises(SourceError) as err:
        await fetch_commit(str(path), None, workspace=ws, policy=ALLOW)
    assert err.value.argument == "repo_url"
    assert ("does not exist" in str(err.value)) == (case == "missing")
    assert ("not a git repository" in str(err.value)) == (case == "plain dir")
    assert children == []
