"""The GitHub client against the stand-in's OAuth and REST contract, and sign-in → account binding (issue 11)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import select, text

from inkmcp.core.accounts import AccountService
from inkmcp.errors import Conflict
from inkmcp.github.client import GitHubClient, GitHubError
from inkmcp.github.identity import sign_in, token_for
from inkmcp.github.models import GitHubIdentity
from inkmcp.github.settings import GitHubSettings
from inkmcp.github.standin import StandinGitHub
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.models import Account
from tests.github_support import CLIENT_ID, CLIENT_SECRET, unique_login

CALLBACK = "http://127.0.0.1:9/auth/github/callback"


def settings(standin: StandinGitHub, **extra: object) -> GitHubSettings:
    values: dict[str, object] = {"github_url": standin.url, "github_api_url": standin.api_url,
                                 "github_client_id": CLIENT_ID, "github_client_secret": SecretStr(CLIENT_SECRET),
                                 "public_url": "http://127.0.0.1:9", **extra}
    return GitHubSettings(**values)  # type: ignore[arg-type]


async def authorize(standin: StandinGitHub, gh: GitHubClient, login: str, state: str = "st4te") -> str:
    """What the browser does: follow authorize_url, pick the user, come back with ?code=&state=."""
    async with httpx.AsyncClient() as browser:
        page = await browser.get(gh.authorize_url(state, CALLBACK))
        assert page.status_code == 200 and "Authorize" in page.text
        r = await browser.post(f"{standin.url}/login/oauth/authorize",
                               data={"client_id": CLIENT_ID, "redirect_uri": CALLBACK, "state": state,
                                     "login": login})
    assert r.status_code == 302
    location = httpx.URL(r.headers["location"])
    assert str(location).startswith(CALLBACK) and location.params["state"] == state
    return location.params["code"]


async def test_oauth_flow_user_and_repo_access(github_standin: StandinGitHub) -> None:
    alice = github_standin.add_user(unique_login("alice"))
    bob = github_standin.add_user(unique_login("bob"))
    github_standin.create_repo(alice.login, "secret-app", private=True, files={"README": "hi"})
    github_standin.create_repo(alice.login, "open-app", files={"README": "hi"})
    async with GitHubClient(settings(github_standin)) as gh:
        code = await authorize(github_standin, gh, alice.login)
        token = await gh.exchange_code(code, CALLBACK)
        assert token.get_secret_value().startswith("gho_")
        with pytest.raises(GitHubError, match="bad_verification_code") as e:  # a code is single use
            await gh.exchange_code(code, CALLBACK)
        assert "sign in again" in str(e.value)
        assert (await gh.get_user(token)).login == alice.login
        assert (await gh.get_user(token)).id == alice.id
        mine = await gh.repo_access(token, alice.login, "secret-app")
        assert mine.readable and mine.private and mine.permissions["push"]
        theirs = await gh.repo_access(bob.token, alice.login, "secret-app")
        assert not theirs.readable  # GitHub's 404 for a private repo the caller cannot see
        public = await gh.repo_access(bob.token, alice.login, "open-app")
        assert public.readable and not public.private and not public.permissions["push"]
        with pytest.raises(GitHubError, match="did not accept"):
            await gh.get_user("gho_" + "x" * 36)
    bad = settings(github_standin, github_client_secret=SecretStr("wrong"))
    async with GitHubClient(bad) as gh:
        code = await authorize(github_standin, gh, alice.login)
        with pytest.raises(GitHubError, match="incorrect_client_credentials"):
            await gh.exchange_code(code, CALLBACK)


def test_settings_build_api_urls_by_appending_and_refuse_clear_text() -> None:
    s = GitHubSettings(github_api_url="https://ghe.example.com/api/v3/")
    assert s.api("/repos/a/b") == "https://ghe.example.com/api/v3/repos/a/b"
    assert not s.configured and s.missing == ["INKMCP_PUBLIC_URL", "INKMCP_GITHUB_CLIENT_ID",
                                              "INKMCP_GITHUB_CLIENT_SECRET"]
    from inkmcp.errors import InkError
    with pytest.raises(InkError, match="INKMCP_GITHUB_API_URL") as e:
        GitHubSettings.from_env(github_api_url="http://ghe.example.com/api/v3")
    assert "clear text" in str(e.value)


async def test_sign_in_binds_by_id_survives_rename_and_never_takes_over(store: Store,
                                                                      github_standin: StandinGitHub) -> None:
    box = SecretBox([Fernet.generate_key()])
    sessions = store.sessionmaker
    carol = github_standin.add_user(unique_login("carol"))
    name = await sign_in(sessions, box, _user(carol), "gho_first")
    assert name == carol.login
    account_id = await _account_id(store, name)
    assert await token_for(sessions, box, account_id) == "gho_first"
    # the token is sealed at rest: the raw column holds no clear text
    async with sessions() as s:
        raw = (await s.execute(text("SELECT token_enc FROM github_identities WHERE account_id = :a"),
                               {"a": account_id})).scalar_one()
    assert b"gho_first" not in bytes(raw)

    old_login = carol.login
    renamed = github_standin.state.rename(carol.login, unique_login("carol-new"))
    assert await sign_in(sessions, box, _user(renamed), "gho_second") == name  # same account after a rename
    assert await token_for(sessions, box, account_id) == "gho_second"

    # an operator-made account with the login's name is not taken over
    dave = github_standin.add_user(unique_login("dave"))
    await AccountService(sessions).create_key(dave.login)
    got = await sign_in(sessions, box, _user(dave), "gho_dave")
    assert got == f"{dave.login}-gh{dave.id}"
    assert await token_for(sessions, box, await _account_id(store, dave.login)) is None
    # and the freed login of a renamed user does not hand the new holder the old account
    newcomer = github_standin.add_user(old_login)  # someone registers carol's old login
    got = await sign_in(sessions, box, _user(newcomer), "gho_newcomer")
    assert got != name and got.endswith(f"-gh{newcomer.id}")
    assert await token_for(sessions, box, account_id) == "gho_second"


async def test_concurrent_sign_ins_make_one_account(store: Store, github_standin: StandinGitHub) -> None:
    import asyncio
    box = SecretBox([Fernet.generate_key()])
    erin = github_standin.add_user(unique_login("erin"))
    names = await asyncio.gather(*(sign_in(store.sessionmaker, box, _user(erin), f"gho_{i}") for i in range(6)))
    assert set(names) == {erin.login}
    async with store.sessionmaker() as s:
        rows = (await s.execute(select(GitHubIdentity).where(GitHubIdentity.github_id == erin.id))).all()
    assert len(rows) == 1


async def test_both_names_taken_is_a_clear_conflict(store: Store, github_standin: StandinGitHub) -> None:
    box = SecretBox([Fernet.generate_key()])
    frank = github_standin.add_user(unique_login("frank"))
    accounts = AccountService(store.sessionmaker)
    await accounts.ensure_account(frank.login)
    await accounts.ensure_account(f"{frank.login}-gh{frank.id}")
    with pytest.raises(Conflict, match="belong to someone else"):
        await sign_in(store.sessionmaker, box, _user(frank), "gho_frank")


def _user(u: object):  # type: ignore[no-untyped-def]
    from inkmcp.github.client import GitHubUser
    return GitHubUser(id=u.id, login=u.login)  # type: ignore[attr-defined]


async def _account_id(store: Store, name: str) -> uuid.UUID:
    async with store.sessionmaker() as s:
        return (await s.execute(select(Account.id).where(Account.name == name))).scalar_one()


async def test_the_operator_moves_a_github_sign_in_onto_its_own_account(store: Store,
                                                                       github_standin: StandinGitHub) -> None:
    from inkmcp.errors import NotFound
    from inkmcp.github.identity import move_identity

    box = SecretBox([Fernet.generate_key()])
    gina = github_standin.add_user(unique_login("gina"))
    await AccountService(store.sessionmaker).create_key(gina.login)  # the operator made "gina" for her
    fallback = await sign_in(store.sessionmaker, box, _user(gina), "gho_gina1")
    assert fallback == f"{gina.login}-gh{gina.id}"
    moved = await move_identity(store.sessionmaker, fallback, gina.login)
    assert (moved.id, moved.login) == (gina.id, gina.login)
    assert await sign_in(store.sessionmaker, box, _user(gina), "gho_gina2") == gina.login  # lands on hers now
    assert await token_for(store.sessionmaker, box, await _account_id(store, gina.login)) == "gho_gina2"
    assert await token_for(store.sessionmaker, box, await _account_id(store, fallback)) is None
    with pytest.raises(NotFound, match="no GitHub sign-in"):
        await move_identity(store.sessionmaker, fallback, gina.login)
    other = github_standin.add_user(unique_login("hal"))
    bound = await sign_in(store.sessionmaker, box, _user(other), "gho_hal")
    with pytest.raises(Conflict, match="already bound"):
        await move_identity(store.sessionmaker, bound, gina.login)
    with pytest.raises(NotFound, match="no account named"):
        await move_identity(store.sessionmaker, bound, "no-such-account-x1")
    async with store.sessionmaker() as s:  # a typo creates nothing
        assert (await s.execute(select(Account).where(Account.name == "no-such-account-x1"))).first() is None
