"""Deploy keys (issue 11, inkmcp/github/deploy_keys.py) against both stand-ins and a real PostgreSQL store, without a
server: GitHub's deploy-key endpoints as the published spec and GitHub behave (admins only, one repository per key),
and the record's crash safety (a retry after a death between a remote step and its record adds no second key on
either side), concurrent calls, removal, the sealed private key, and the Coolify policy's allow-list."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import select, text

from inkmcp.coolify.client import CoolifyClient
from inkmcp.coolify.spec import CoolifySpec
from inkmcp.errors import NotFound, SourceError
from inkmcp.github.client import GitHubClient, GitHubError, GitHubUser
from inkmcp.github.deploy_keys import DeployKeys, blob, key_name, new_key_pair
from inkmcp.github.identity import sign_in
from inkmcp.github.models import GitHubDeployKey
from inkmcp.github.settings import GitHubSettings
from inkmcp.github.standin import StandinGitHub
from inkmcp.providers.compute.coolify import policy
from inkmcp.providers.compute.coolify.deploy_keys import CoolifyKeyRegistry
from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
from inkmcp.store.crypto import SecretBox
from inkmcp.store.db import Store
from inkmcp.store.models import Account, Project, Service
from tests.coolify import conftest as _coolify_fixtures
from tests.coolify.conftest import FAST
from tests.coolify_standin import CoolifyStandin
from tests.github_support import unique_login

spec, standin, token = _coolify_fixtures.spec, _coolify_fixtures.standin, _coolify_fixtures.token


def settings_for(gh: StandinGitHub) -> GitHubSettings:
    return GitHubSettings(github_url=gh.url, github_api_url=gh.api_url)


async def test_github_deploy_keys_admins_only_one_repository_per_key(github_standin: StandinGitHub) -> None:
    owner, reader, admin = (github_standin.add_user(unique_login(n)) for n in ("own", "read", "adm"))
    repo = github_standin.create_repo(owner.login, "app", private=True, files={"a": "a"},
                                      collaborators=[reader.login], admins=[admin.login])
    other = github_standin.create_repo(owner.login, "other", private=True, files={"a": "a"})
    public, _ = new_key_pair("test")
    async with GitHubClient(settings_for(github_standin)) as gh:
        made = await gh.create_deploy_key(admin.token, owner.login, "app", title="InkMCP x", public_key=public)
        assert made.read_only and blob(made.key) == blob(public)
        assert [k.id for k in await gh.list_deploy_keys(owner.token, owner.login, "app")] == [made.id]
        assert (await gh.get_deploy_key(owner.token, owner.login, "app", made.id)).id == made.id  # type: ignore[union-attr]
        # a collaborator who can read but not administer: GitHub hides the keys (404), the error says what to do
        for call in (gh.list_deploy_keys(reader.token, owner.login, "app"),
                     gh.create_deploy_key(reader.token, owner.login, "app", title="t", public_key=public)):
            with pytest.raises(GitHubError, match="only an admin") as e:
                await call
            assert f"{owner.login}/app" in e.value.message
        # the same key twice, or on a second repository: 422 "key is already in use"; a bad key: 422
        for where in ("app", "other"):
            with pytest.raises(GitHubError, match="already in use"):
                await gh.create_deploy_key(owner.token, owner.login, where, title="t", public_key=public)
        with pytest.raises(GitHubError, match="OpenSSH public key format"):
            await gh.create_deploy_key(owner.token, owner.login, "app", title="t", public_key="ssh-ed25519 AAAA")
        assert await gh.delete_deploy_key(owner.token, owner.login, "app", made.id) is True
        assert await gh.get_deploy_key(owner.token, owner.login, "app", made.id) is None  # gone, repo still there
        assert await gh.delete_deploy_key(owner.token, owner.login, "app", made.id) is False
    assert repo.deploy_keys == [] and other.deploy_keys == []
    assert github_standin.request_violations == []


async def test_list_deploy_keys_follows_githubs_pages(github_standin: StandinGitHub) -> None:
    """GitHub pages the list (per_page at most 100): a repository with 105 keys is read in two pages, each key
    once. A retry looks its key up in this list, so a missed or repeated page would add a second key or fail."""
    owner = github_standin.add_user(unique_login("pages"))
    github_standin.create_repo(owner.login, "many", private=True, files={"a": "a"})
    async with GitHubClient(settings_for(github_standin)) as gh:
        made = {(await gh.create_deploy_key(owner.token, owner.login, "many", title=f"k{i}",
                                            public_key=new_key_pair("t")[0])).id for i in range(105)}
        listed = [k.id for k in await gh.list_deploy_keys(owner.token, owner.login, "many")]
    assert len(listed) == 105 and set(listed) == made
    assert github_standin.request_violations == []


def test_github_clients_share_one_tls_context() -> None:
    """A GitHubClient is made per deploy, webhook and sign-in, on the event loop: each used to build its own TLS
    context from the CA bundle (~50 ms of CPU each on this box). 20 clients now cost far less than one did."""
    import time

    settings = GitHubSettings()
    GitHubClient(settings)  # the first builds the shared context
    started = time.perf_counter()
    clients = [GitHubClient(settings) for _ in range(20)]
    took = time.perf_counter() - started
    assert took < 0.25, f"20 GitHubClients took {took * 1000:.0f} ms: is the CA bundle loaded per client again?"
    assert len({id(c._http._transport._pool._ssl_context) for c in clients}) == 1  # type: ignore[attr-defined]


@pytest.fixture
async def world(store: Store, standin: CoolifyStandin, token: str, spec: CoolifySpec,
                github_standin: StandinGitHub, tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """An account with a project and a service (rows only), its GitHub user and private repo, a Coolify provider
    on the stand-in, and the DeployKeys record over both."""
    user = github_standin.add_user(unique_login("keys"))
    repo = github_standin.create_repo(user.login, "app", private=True, files={"a": "a"})
    box = SecretBox([Fernet.generate_key()])
    login = await sign_in(store.sessionmaker, box, GitHubUser(id=user.id, login=user.login), user.token)
    async with store.sessionmaker.begin() as s:
        account = (await s.execute(select(Account).where(Account.name == login))).scalar_one()
        project = Project(account_id=account.id, name=unique_login("p"))
        s.add(project)
        await s.flush()
        service = Service(project_id=project.id, name="web", service_type="webapp_static", mode="static",
                          repo_url=github_standin.html_url(repo))
        s.add(service)
    client = CoolifyClient(standin.url, token, retry=FAST, validate_with=spec)  # requests checked against the spec
    provider = CoolifyComputeProvider(client, tmp_path / "work", poll_interval=0.05)
    keys = DeployKeys(settings_for(github_standin), store.sessionmaker, box, CoolifyKeyRegistry(provider))
    try:
        yield {"keys": keys, "service": service.id, "account": account.id, "repo": repo, "user": user,
               "standin": standin, "store": store, "box": box}
    finally:
        await client.aclose()
    assert standin.request_violations == []


def coolify_keys(standin: CoolifyStandin, service_id: uuid.UUID) -> list[str]:
    return [u for u, r in standin._key_records().items() if r["name"] == key_name(service_id)]


async def test_a_retry_after_a_crash_at_each_step_adds_no_second_key(world: dict[str, Any],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    keys: DeployKeys = world["keys"]
    repo, user, service = world["repo"], world["user"], world["service"]
    name = repo.full_name.lower()

    # dies after GitHub added the key, before its id was recorded
    real_set = DeployKeys._set

    async def die_on_github_id(self: DeployKeys, service_id: uuid.UUID, **values: object) -> None:
        if "github_key_id" in values and values["github_key_id"] is not None:
            raise RuntimeError("crash after the GitHub add")
        await real_set(self, service_id, **values)

    monkeypatch.setattr(DeployKeys, "_set", die_on_github_id)
    with pytest.raises(RuntimeError):
        await keys.ensure(service, world["account"], name, user.token, "p/web")
    monkeypatch.setattr(DeployKeys, "_set", real_set)
    assert len(repo.deploy_keys) == 1  # made, not recorded

    # dies after Coolify registered the private key, before its uuid was recorded
    real_register = keys.registry.register

    async def die_after_register(*args: Any) -> str:
        await real_register(*args)
        raise RuntimeError("crash after the Coolify register")

    keys.registry.register = die_after_register  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await keys.ensure(service, world["account"], name, user.token, "p/web")
    keys.registry.register = real_register  # type: ignore[method-assign]
    assert len(coolify_keys(world["standin"], service)) == 1

    source = await keys.ensure(service, world["account"], name, user.token, "p/web")
    again = await keys.ensure(service, world["account"], name, user.token, "p/web")
    assert source == again and source.private_key_uuid == coolify_keys(world["standin"], service)[0]
    assert len(repo.deploy_keys) == 1 and len(coolify_keys(world["standin"], service)) == 1
    assert source.git_repository.endswith(f":{name}.git")

    # the private key is sealed in the store, and what Coolify holds is its pair of the key on GitHub
    pem = world["standin"].key_record(source.private_key_uuid)["private_key"]
    body = "".join(pem.strip().splitlines()[1:-1])
    async with world["store"].sessionmaker() as s:
        raw = (await s.execute(text("SELECT private_key_enc FROM github_deploy_keys WHERE service_id = :s"),
                               {"s": service})).scalar_one()
    assert body[:40].encode() not in bytes(raw)
    assert blob(world["standin"].key_record(source.private_key_uuid)["public_key"]) == repo.deploy_keys[0].key

    # a key removed on GitHub by hand is added again on the next deploy (same pair)
    repo.deploy_keys.clear()
    await keys.ensure(service, world["account"], name, user.token, "p/web")
    assert len(repo.deploy_keys) == 1

    # removal: GitHub and Coolify lose it, and the record goes
    await keys.remove(service)
    assert repo.deploy_keys == [] and coolify_keys(world["standin"], service) == []
    async with world["store"].sessionmaker() as s:
        assert (await s.execute(select(GitHubDeployKey).where(GitHubDeployKey.service_id == service))).first() is None


async def test_coolify_s_key_list_is_read_only_while_no_uuid_is_recorded(world: dict[str, Any]) -> None:
    """`CoolifyKeyRegistry.find` lists every private key of the Coolify team (the operator's server keys too): the API
    has no lookup by name, and `GET /security/keys/{uuid}` needs the uuid. So it runs only while InkMCP has no uuid
    recorded (a first registration, or the retry after a crash before the record); with one recorded, the deploys
    and the removal use it and never list."""
    keys: DeployKeys = world["keys"]
    standin: CoolifyStandin = world["standin"]
    name = world["repo"].full_name.lower()

    def listings() -> int:
        return standin.request_count(method="GET", path="/security/keys")

    before = listings()
    source = await keys.ensure(world["service"], world["account"], name, world["user"].token, "p/web")
    assert listings() == before + 1  # nothing recorded yet: the one lookup by name (a crashed attempt's key?)
    for _ in range(2):
        assert await keys.ensure(world["service"], world["account"], name, world["user"].token, "p/web") == source
    await keys.remove(world["service"])
    assert listings() == before + 1
    assert standin.request_count(method="DELETE", path=f"/security/keys/{source.private_key_uuid}") == 1
    assert coolify_keys(standin, world["service"]) == []


async def test_concurrent_first_deploys_make_one_key_on_each_side(world: dict[str, Any]) -> None:
    keys: DeployKeys = world["keys"]
    name = world["repo"].full_name.lower()
    sources = await asyncio.gather(*(keys.ensure(world["service"], world["account"], name, world["user"].token,
                                                 "p/web") for _ in range(4)))
    assert len({s.private_key_uuid for s in sources}) == 1
    assert len(world["repo"].deploy_keys) == 1 and len(coolify_keys(world["standin"], world["service"])) == 1
    await keys.remove(world["service"])


async def test_a_key_left_on_the_old_repository_says_where_to_remove_it(
        world: dict[str, Any], github_standin: StandinGitHub, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service moved to another private repo whose key could not be removed from the first one (its user lost
    admin there: GitHub answers 404, as for a key already gone) cannot add the key to the second (GitHub: one
    repository per key, 422 on every try). The error names the key's title and where to remove it, not "retry in a
    minute"; once it is removed there, the next deploy moves it."""
    keys: DeployKeys = world["keys"]
    user, service, first = world["user"], world["service"], world["repo"]
    await keys.ensure(service, world["account"], first.full_name.lower(), user.token, "p/web")
    second = github_standin.create_repo(user.login, "app2", private=True, files={"a": "a"})

    async def not_removed(*_: Any) -> None:  # what a 404 from GitHub leaves: the key still on the first repo
        return None

    monkeypatch.setattr(DeployKeys, "_forget_on_github", not_removed)
    messages = []
    for _ in range(2):  # the first attempt and a retry give the same advice
        with pytest.raises(SourceError) as e:
            await keys.ensure(service, world["account"], second.full_name.lower(), user.token, "p/web")
        assert f"'InkMCP p/web ({service})'" in (e.value.fix or "") and "Deploy keys" in (e.value.fix or "")
        assert "retry" not in (e.value.fix or ""), e.value.fix
        messages.append(e.value.message)
    assert first.full_name.lower() in messages[0], messages
    assert len(first.deploy_keys) == 1 and second.deploy_keys == []
    monkeypatch.undo()

    first.deploy_keys.clear()  # the user removes it by hand, as told
    await keys.ensure(service, world["account"], second.full_name.lower(), user.token, "p/web")
    assert len(second.deploy_keys) == 1
    await keys.remove(service)
    assert second.deploy_keys == [] and coolify_keys(world["standin"], service) == []


@pytest.mark.parametrize("step", ["github", "coolify"])
async def test_a_service_deleted_during_its_first_deploy_leaves_no_key_anywhere(
        world: dict[str, Any], step: str) -> None:
    """delete_service (its removal, then the service row) runs while deploy_app is between two steps of the key's
    setup: before the GitHub add, or before the Coolify register. The deploy's next step finds the record gone and
    takes back what it made itself (before: the key stayed on GitHub, or in Coolify with a crash on the missing
    row), so no private key that reads the repository is left behind."""
    keys: DeployKeys = world["keys"]
    repo, user, service, store = world["repo"], world["user"], world["service"], world["store"]

    async def delete_service() -> None:
        await keys.remove(service)
        async with store.sessionmaker.begin() as s:
            await s.execute(text("DELETE FROM services WHERE id = :s"), {"s": service})

    if step == "github":
        real_add = keys._add_on_github

        async def add_after_delete(*args: Any) -> int:
            await delete_service()
            return await real_add(*args)

        keys._add_on_github = add_after_delete  # type: ignore[method-assign]
    else:
        real_register = keys.registry.register

        async def register_after_delete(*args: Any) -> str:
            await delete_service()
            return await real_register(*args)

        keys.registry.register = register_after_delete  # type: ignore[method-assign]
    with pytest.raises(NotFound, match="deleted while this deploy"):
        await keys.ensure(service, world["account"], repo.full_name.lower(), user.token, "p/web")
    assert repo.deploy_keys == [] and coolify_keys(world["standin"], service) == []


def test_the_coolify_policy_lets_through_only_deploy_keys_inkmcp_made() -> None:
    url, key = "git@github.com:alice/app.git", "k" * 24
    body = {"project_uuid": "p" * 24, "server_uuid": "s" * 24, "environment_name": "production",
            "environment_uuid": "e" * 24, "git_repository": url, "git_branch": "main", "build_pack": "static",
            "private_key_uuid": key}
    with pytest.raises(policy.PolicyViolation, match="private_key_uuid"):  # e.g. the operator's server key
        policy.check_request("POST", "/applications/private-deploy-key", body)
    with pytest.raises(policy.PolicyViolation, match="InkMCP deletes only"):
        policy.check_request("DELETE", f"/security/keys/{key}")
    with pytest.raises(policy.PolicyViolation, match="git_repository"):  # an SSH URL nobody registered
        policy.check_request("PATCH", f"/applications/{'a' * 24}", {"git_repository": url})
    policy.DEPLOY_KEYS.allow(key, url)
    try:
        policy.check_request("POST", "/applications/private-deploy-key", body)
        policy.check_request("PATCH", f"/applications/{'a' * 24}", {"git_repository": url})
        policy.check_request("DELETE", f"/security/keys/{key}")
        with pytest.raises(policy.PolicyViolation, match="git_repository"):  # a known SSH URL, but no key named:
            policy.check_request("POST", "/applications/public",  # Coolify would pick the key itself
                                 {k: v for k, v in body.items() if k != "private_key_uuid"})
        with pytest.raises(policy.PolicyViolation, match="git_repository"):  # the key with another repository
            policy.check_request("POST", "/applications/private-deploy-key",
                                 {**body, "git_repository": "git@github.com:alice/other.git"})
        with pytest.raises(policy.PolicyViolation, match="custom_docker_run_options"):  # the usual checks still run
            policy.check_request("POST", "/applications/private-deploy-key",
                                 {**body, "custom_docker_run_options": "--privileged"})
    finally:
        policy.DEPLOY_KEYS.forget(key)
    _, pem = new_key_pair("x")
    policy.check_request("POST", "/security/keys", {"name": key_name(uuid.uuid4()), "private_key":
                                                    pem.get_secret_value()})
    for bad in ({"name": "my-server-key", "private_key": pem.get_secret_value()},
                {"name": key_name(uuid.uuid4()), "private_key": "not a key"},
                {"name": key_name(uuid.uuid4()), "private_key": pem.get_secret_value(), "is_git_related": True}):
        with pytest.raises(policy.PolicyViolation):
            policy.check_request("POST", "/security/keys", bad)
