"""Fetching and checking out real git repositories through the cached mirror."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from inkmcp.build.source import redact_url, resolve_and_checkout, resolve_commit
from inkmcp.errors import SourceError

from .conftest import commit, git

MakeRepo = Callable[[dict[str, str]], Path]


async def checkout(url: str, ref: str | None, dest: Path, cache: Path, **kw: object) -> str:
    return await resolve_and_checkout(
        url,
        ref,
        dest,
        cache_dir=cache,
        allow_local_paths=kw.pop("allow", True),
        **kw,  # type: ignore[arg-type]
    )


async def test_checkout_local_path_gives_files_without_git(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"app.py": "print('hi')\n", "sub/data.txt": "x\n"})
    sha = await checkout(str(repo), None, tmp_path / "out", tmp_path / "cache")
    assert sha == git(repo, "rev-parse", "HEAD")
    assert (tmp_path / "out" / "app.py").read_text() == "print('hi')\n"
    assert (tmp_path / "out" / "sub" / "data.txt").is_file()
    assert not (tmp_path / "out" / ".git").exists()
    assert len(list((tmp_path / "cache" / "mirrors").iterdir())) == 2  # mirror dir + its lock file


async def test_file_url_and_refs(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"v.txt": "1\n"})
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    git(repo, "checkout", "-q", "-b", "feature")
    feature = commit(repo, {"v.txt": "feature\n"})
    git(repo, "checkout", "-q", "main")
    url = f"file://{repo}"
    cache = tmp_path / "cache"
    assert await resolve_commit(url, None, cache_dir=cache, allow_local_paths=True) == first
    assert await resolve_commit(url, "main", cache_dir=cache, allow_local_paths=True) == first
    assert await resolve_commit(url, "v1", cache_dir=cache, allow_local_paths=True) == first
    assert await resolve_commit(url, "feature", cache_dir=cache, allow_local_paths=True) == feature
    assert await resolve_commit(url, feature[:10], cache_dir=cache, allow_local_paths=True) == feature
    assert await resolve_commit(url, "refs/heads/feature", cache_dir=cache, allow_local_paths=True) == feature
    await checkout(url, "feature", tmp_path / "out", cache)
    assert (tmp_path / "out" / "v.txt").read_text() == "feature\n"


async def test_redeploy_sees_new_commits(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"v.txt": "1\n"})
    cache = tmp_path / "cache"
    await checkout(str(repo), None, tmp_path / "a", cache)
    second = commit(repo, {"v.txt": "2\n"})
    assert await checkout(str(repo), None, tmp_path / "b", cache) == second
    assert (tmp_path / "b" / "v.txt").read_text() == "2\n"


async def test_concurrent_checkouts_of_one_repo(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"v.txt": "1\n"})
    shas = await asyncio.gather(
        *(checkout(str(repo), None, tmp_path / f"out{i}", tmp_path / "cache") for i in range(6))
    )
    assert len(set(shas)) == 1
    assert all((tmp_path / f"out{i}" / "v.txt").is_file() for i in range(6))


async def test_unknown_ref(make_repo: MakeRepo, tmp_path: Path) -> None:
    repo = make_repo({"v.txt": "1\n"})
    with pytest.raises(SourceError) as err:
        await checkout(str(repo), "no-such-branch", tmp_path / "out", tmp_path / "cache")
    assert err.value.argument == "ref"
    assert "e.g. main" in (err.value.fix or "")
    with pytest.raises(SourceError) as err:
        await checkout(str(repo), "--upload-pack=evil", tmp_path / "out", tmp_path / "cache")
    assert err.value.argument == "ref"


async def test_plain_directory_is_refused_with_git_init_hint(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "app.py").write_text("")
    with pytest.raises(SourceError) as err:
        await checkout(str(tmp_path / "plain"), None, tmp_path / "out", tmp_path / "cache")
    assert err.value.argument == "repo_url"
    assert "git init && git add -A && git commit" in (err.value.fix or "")


async def test_missing_local_path_and_disabled_local_paths(make_repo: MakeRepo, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        await checkout(f"file://{tmp_path}/nope", None, tmp_path / "out", tmp_path / "cache")
    assert err.value.argument == "repo_url"
    repo = make_repo({"v.txt": "1\n"})
    for url in (str(repo), f"file://{repo}"):
        with pytest.raises(SourceError) as err:
            await checkout(url, None, tmp_path / "out", tmp_path / "cache", allow=False)
        assert "disabled" in err.value.message


async def test_unreachable_repo_hides_credentials(tmp_path: Path) -> None:
    url = "https://alice:s3cr3t-token@127.0.0.1:1/owner/repo.git"
    with pytest.raises(SourceError) as err:
        await resolve_commit(url, None, cache_dir=tmp_path / "cache", allow_local_paths=False)
    assert err.value.argument == "repo_url"
    assert "s3cr3t" not in str(err.value) and "alice" not in str(err.value)
    assert "127.0.0.1:1/owner/repo.git" in err.value.message
    assert redact_url(url) == "https://127.0.0.1:1/owner/repo.git"


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/x", "ftp://host/repo.git", "relative/path", "-u"])
async def test_unsupported_urls(url: str, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as err:
        await resolve_commit(url, None, cache_dir=tmp_path / "cache", allow_local_paths=True)
    assert err.value.argument == "repo_url"


async def test_hanging_remote_times_out_and_git_is_killed(tmp_path: Path) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SourceError) as err:
            await resolve_commit(
                f"https://127.0.0.1:{port}/r.git",
                None,
                cache_dir=tmp_path / "c",
                allow_local_paths=False,
                timeout=1,
            )
        assert "did not finish within" in err.value.message
    finally:
        server.close()
    leftovers = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}/r.git"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


async def test_empty_repository(tmp_path: Path) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    with pytest.raises(SourceError) as err:
        await resolve_commit(str(repo), None, cache_dir=tmp_path / "cache", allow_local_paths=True)
    assert err.value.argument in {"repo_url", "ref"}
