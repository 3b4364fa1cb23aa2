"""Token-aware fetch (inkmcp/build/source.py `GitAuth`, `SourcePolicy.trusted_origins`) against the stand-in's
real git smart HTTP, without a server: fast checks of what the e2e test proves through the whole pipeline."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from inkmcp.build.source import GitAuth, SourcePolicy, SourceWorkspace, fetch_commit, origin_of
from inkmcp.errors import SourceError
from inkmcp.github.standin import StandinGitHub
from tests.github_support import unique_login


def workspace(tmp_path: Path) -> SourceWorkspace:
    mirrors, locks = tmp_path / "mirrors", tmp_path / "locks"
    mirrors.mkdir(mode=0o700)
    locks.mkdir(mode=0o700)
    return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=None)


async def test_a_private_repo_is_fetched_with_the_token_in_gits_environment_only(
        github_standin: StandinGitHub, tmp_path: Path) -> None:
    owner, other = github_standin.add_user(unique_login("dev")), github_standin.add_user(unique_login("dev"))
    repo = github_standin.create_repo(owner.login, "lib", private=True, files={"x.txt": "x\n"})
    url = github_standin.html_url(repo)
    trusted = SourcePolicy(allow_local=False, trusted_origins=frozenset({origin_of(github_standin.url)}))
    ws = workspace(tmp_path)

    # a loopback host is refused unless it is the configured GitHub origin
    with pytest.raises(SourceError, match="does not point at a public internet host"):
        await fetch_commit(url, None, workspace=ws, policy=SourcePolicy(allow_local=False), auth=GitAuth(owner.token))
    with pytest.raises(SourceError, match="could not fetch") as anonymous:
        await fetch_commit(url, None, workspace=ws, policy=trusted)
    with pytest.raises(SourceError) as foreign:
        await fetch_commit(url, None, workspace=ws, policy=trusted, auth=GitAuth(other.token))
    assert other.token not in foreign.value.render() and "not found" in foreign.value.render().lower()
    fetched = await fetch_commit(url, None, workspace=ws, policy=trusted, auth=GitAuth(owner.token))
    assert fetched.sha == github_standin.state.head(repo)
    assert "token" not in repr(fetched) and owner.token not in repr(GitAuth(owner.token))
    basic = base64.b64encode(f"x-access-token:{owner.token}".encode())
    for path in tmp_path.rglob("*"):  # mirror config, FETCH_HEAD, packs: never the credentials
        if path.is_file():
            data = path.read_bytes()
            assert owner.token.encode() not in data and basic not in data, path
    assert "Authentication" in anonymous.value.render() or "Username" in anonymous.value.render()


async def test_credentials_only_go_to_a_plain_http_url(github_standin: StandinGitHub, tmp_path: Path) -> None:
    user = github_standin.add_user(unique_login("dev"))
    url = github_standin.html_url(github_standin.create_repo(user.login, "x", private=True, files={"a": "a"}))
    trusted = SourcePolicy(allow_local=False, trusted_origins=frozenset({origin_of(github_standin.url)}))
    with_userinfo = url.replace("http://", "http://someone:pw@")
    with pytest.raises(SourceError, match="cannot use the stored GitHub credentials"):
        await fetch_commit(with_userinfo, None, workspace=workspace(tmp_path), policy=trusted,
                           auth=GitAuth(user.token))
