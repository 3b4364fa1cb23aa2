"""The deploy pipeline's GitHub hooks over the real store, without a server: tracking and the auto-deploy flag,
and the up-front refusal of a private repo on a compute provider that fetches sources itself."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from inkmcp.core.deployments import DeployRequest
from inkmcp.errors import InkError, SourceError
from inkmcp.github.client import GitHubUser
from inkmcp.github.deploy import GitHubDeployHooks, Prepared
from inkmcp.github.identity import sign_in
from inkmcp.github.models import GitHubTracking
from inkmcp.github.settings import GitHubSettings
from inkmcp.github.standin import StandinGitHub
from inkmcp.store.models import Project
from tests.core.conftest import Core
from tests.github_support import CLIENT_ID, CLIENT_SECRET, unique_login


def hooks_for(core: Core, standin: StandinGitHub) -> GitHubDeployHooks:
    settings = GitHubSettings(github_url=standin.url, github_api_url=standin.api_url, github_client_id=CLIENT_ID,
                              github_client_secret=SecretStr(CLIENT_SECRET), public_url="http://127.0.0.1:9")
    return GitHubDeployHooks(settings, core.store.sessionmaker, core.box)


async def flag(core: Core, service_id: object) -> bool | None:
    async with core.store.sessionmaker() as s:
        row = (await s.execute(select(GitHubTracking).where(GitHubTracking.service_id == service_id))).scalar()
    return None if row is None else row.auto_deploy


async def test_auto_deploy_is_on_by_default_switchable_and_kept_when_omitted(
        make_core: Callable[..., Core], github_standin: StandinGitHub) -> None:
    core = make_core()
    hooks = hooks_for(core, github_standin)
    p = await core.account()
    service = await core.service(p, core.name())
    await hooks.track(service, Prepared("o/r", "main", None, None))
    assert await flag(core, service) is True
    await hooks.track(service, Prepared("o/r", "main", None, False))
    assert await flag(core, service) is False
    await hooks.track(service, Prepared("o/r", "main", None, None))  # a later deploy_app without auto_deploy
    assert await flag(core, service) is False
    await hooks.track(service, None)  # the service now deploys from elsewhere
    assert await flag(core, service) is None


async def test_a_private_repo_is_refused_up_front_where_the_provider_fetches_itself(
        make_core: Callable[..., Core], github_standin: StandinGitHub) -> None:
    core = make_core()
    core.deploys.github = hooks_for(core, github_standin)
    core.deploys._compute.needs_checkout = False  # as the Coolify provider: it clones repo_url itself
    owner = github_standin.add_user(unique_login("own"))
    repo = github_standin.create_repo(owner.login, "app", private=True, files={"index.html": "x"})
    account = await sign_in(core.store.sessionmaker, core.box, GitHubUser(id=owner.id, login=owner.login),
                            github_standin.state.issue_token(owner.id))
    p = await core.accounts.principal_for(account, "test")
    # no deploy keys wired (GitHub configured without Coolify's key registry): refused, naming the repo
    with pytest.raises(SourceError, match=f"{owner.login.lower()}/app is private") as e:
        await core.deploys.deploy(p, DeployRequest(repo_url=github_standin.html_url(repo)))
    assert e.value.argument == "repo_url" and "local compute provider" in (e.value.fix or "")
    async with core.store.sessionmaker() as s:
        assert (await s.execute(select(Project).where(Project.account_id == p.account_id))).first() is None


async def test_a_revoked_github_token_gets_sign_in_again_and_nothing_is_made(
        make_core: Callable[..., Core], github_standin: StandinGitHub) -> None:
    core = make_core()
    core.deploys.github = hooks_for(core, github_standin)
    owner = github_standin.add_user(unique_login("rev"))
    repo = github_standin.create_repo(owner.login, "app", private=True, files={"index.html": "x"})
    token = github_standin.state.issue_token(owner.id)
    account = await sign_in(core.store.sessionmaker, core.box, GitHubUser(id=owner.id, login=owner.login), token)
    github_standin.state.revoke(token)  # the user revoked InkMCP's access on GitHub
    p = await core.accounts.principal_for(account, "test")
    with pytest.raises(InkError, match="sign in with GitHub again") as e:
        await core.deploys.deploy(p, DeployRequest(repo_url=github_standin.html_url(repo)))
    assert token not in e.value.render() and f"{owner.login}/app" in e.value.render()
    async with core.store.sessionmaker() as s:
        assert (await s.execute(select(Project).where(Project.account_id == p.account_id))).first() is None
