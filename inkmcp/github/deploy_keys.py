"""Deploy keys: private GitHub repositories under Coolify compute (issue 11).

Coolify clones the source itself, on its build server, without the user's GitHub token. So for a private repository
InkMCP makes an SSH key pair, adds the public half to the repository as a **read-only deploy key** through GitHub's
API (with the signed-in user's token: GitHub lets only an admin of the repository do that), registers the private
half in Coolify (`POST /security/keys`) and creates the application with `POST /applications/private-deploy-key`
(`git@HOST:OWNER/REPO.git` + `private_key_uuid`), still pinned to the exact commit InkMCP fetched and read.

**One key pair per service**, not per repository:
* GitHub allows a public key on one repository only, and a deploy key reaches only that repository, so a key per
  (account, repo) would save nothing but add sharing: reference counts across services (and replicas) to know when
  it may be removed, and a deletion of one service racing a deploy of another.
* A service's key goes with the service: `delete_service` / `delete_project` remove exactly that key from GitHub and
  Coolify, and one leaked key (Coolify's database) exposes one repository, named in the key's title on GitHub
  ("InkMCP <project>/<service> (<service id>)"), so the repository's admin sees which service reads with it.
* If the service's repository changes, the same pair moves: the key leaves the old repository first (GitHub would
  refuse it on two), then is added to the new one; the Coolify key (same private key) stays. When the old
  repository keeps it (the user lost admin there, so GitHub answers 404), every add is a 422 "key is already in
  use": the tool error names the key's title and says to remove it there (retrying alone never helps).

Crash safety: the pair is generated and stored (private key sealed with the SecretBox, like env vars and the GitHub
token) *before* anything remote; the GitHub key id and the Coolify key uuid are recorded as soon as they are known.
A retry finds what an interrupted attempt made: on GitHub by the public key among the repository's deploy keys
(GitHub answers 422 "key is already in use" to a second add of the same key, so even two concurrent attempts add it
once), in Coolify by the key's deterministic name (`inkmcp-deploy-key-<service id>`); two concurrent Coolify
registrations are settled by a conditional UPDATE, the loser deleting its own copy.

The private key is never logged, returned or put anywhere but the sealed column and Coolify.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import SecretStr
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from inkmcp.errors import NotFound, SourceError
from inkmcp.github.client import DeployKeyInUse, GitHubClient, GitHubError
from inkmcp.github.identity import token_for
from inkmcp.github.models import GitHubDeployKey
from inkmcp.github.settings import GitHubSettings
from inkmcp.store.crypto import SecretBox

log = logging.getLogger(__name__)

KEY_NAME_PREFIX = "inkmcp-deploy-key-"
"""Coolify key names InkMCP uses (`inkmcp-deploy-key-<service id>`); the Coolify policy allows only these."""


def key_name(service_id: uuid.UUID | str) -> str:
    return f"{KEY_NAME_PREFIX}{service_id}"


def new_key_pair(comment: str) -> tuple[str, SecretStr]:
    """(OpenSSH public key line, OpenSSH private key): ed25519, what GitHub and Coolify both take."""
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH).decode()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    return f"{public} {comment}", SecretStr(pem)


def blob(public_key: str) -> str:
    """`<type> <base64>` of a public key line (GitHub shows keys without the comment)."""
    return " ".join(public_key.split()[:2])


def ssh_url(settings: GitHubSettings, repo: str) -> str:
    """`git@HOST:OWNER/REPO.git`, the SSH clone URL of `repo` (owner/name) on the configured GitHub host."""
    host = urlsplit(settings.github_url).hostname or "github.com"
    return f"git@{host}:{repo}.git"


class KeyRegistry(Protocol):
    """Where the private key goes for the compute platform to clone with (Coolify's security keys)."""

    async def find(self, name: str) -> str | None: ...

    async def register(self, name: str, private_key: SecretStr, description: str) -> str: ...

    async def delete(self, key_uuid: str, git_repository: str) -> None:
        """Remove the key (gone already: fine); waits while the platform still uses it (deleted apps)."""


@dataclass(frozen=True)
class KeySource:
    """What the compute provider creates a private-repo application with."""

    git_repository: str  # git@HOST:OWNER/REPO.git
    private_key_uuid: str


def _deleted() -> NotFound:
    return NotFound("the service was deleted while this deploy was setting up its deploy key; what this deploy "
                    "added for it on GitHub and in Coolify is removed again.", argument="service_name",
                    fix="deploy again to make the service anew")


class DeployKeys:
    def __init__(self, settings: GitHubSettings, sessions: async_sessionmaker[AsyncSession], box: SecretBox,
                 registry: KeyRegistry) -> None:
        self.settings = settings
        self._sessions = sessions
        self._box = box
        self.registry = registry

    async def _row(self, service_id: uuid.UUID) -> GitHubDeployKey | None:
        async with self._sessions() as s:
            return await s.get(GitHubDeployKey, service_id)

    async def _set(self, service_id: uuid.UUID, **values: object) -> None:
        async with self._sessions.begin() as s:
            await s.execute(update(GitHubDeployKey).where(GitHubDeployKey.service_id == service_id)
                            .values(updated_at=datetime.now(UTC), **values))

    async def ensure(self, service_id: uuid.UUID, account_id: uuid.UUID, repo: str, token: SecretStr | str,
                     slug: str) -> KeySource:
        """The service's deploy key on `repo` (owner/name) and in Coolify, made or found again (module
        docstring). GitHub refusals are SourceErrors naming the repository and what to do."""
        row = await self._row(service_id)
        if row is None:
            public, private = new_key_pair(f"inkmcp-{service_id}")
            async with self._sessions.begin() as s:
                await s.execute(insert(GitHubDeployKey).values(
                    service_id=service_id, account_id=account_id, repo=repo, public_key=public,
                    private_key_enc=self._box.encrypt(private.get_secret_value())).on_conflict_do_nothing())
            row = await self._row(service_id)  # the pair a concurrent attempt stored first wins
            assert row is not None
        owner, name = repo.split("/", 1)
        previous: str | None = None
        try:
            async with GitHubClient(self.settings) as gh:
                if row.repo.lower() != repo.lower():  # the service now builds another repository: the key moves
                    previous = row.repo
                    if row.github_key_id is not None:
                        await self._forget_on_github(gh, row, token)
                    await self._set(service_id, repo=repo, github_key_id=None, account_id=account_id)
                    row = await self._row(service_id)
                    assert row is not None
                key_id = row.github_key_id
                if key_id is not None and await gh.get_deploy_key(token, owner, name, key_id) is None:
                    log.warning("the deploy key of service %s was removed from %s on GitHub; adding it again",
                                service_id, repo)
                    key_id = None
                if key_id is None:
                    key_id = await self._add_on_github(gh, token, owner, name, row.public_key,
                                                       f"InkMCP {slug} ({service_id})")
                    await self._set(service_id, github_key_id=key_id, account_id=account_id)
                    if await self._row(service_id) is None:  # deleted meanwhile: its removal ran before this add
                        await gh.delete_deploy_key(token, owner, name, key_id)
                        raise _deleted()
        except DeployKeyInUse:  # the key is still on the repo the service was built from (its removal failed)
            where = previous or "the repository this service was built from before"
            raise SourceError(
                f"the deploy key of this service is still on {where} on GitHub, which allows a key on one repository "
                f"only, so it cannot be added to {repo}.", argument="repo_url",
                fix=f"remove the deploy key titled 'InkMCP {slug} ({service_id})' from {where} (Settings → Deploy "
                    "keys), then deploy again; or deploy this repository under another service_name") from None
        except GitHubError as e:
            raise SourceError(f"could not set up the deploy key of GitHub repository {repo}: {e.message}",
                              argument="repo_url", fix=e.fix or "retry in a minute") from None
        key_uuid = row.coolify_key_uuid or await self._register(service_id, row)
        return KeySource(ssh_url(self.settings, repo), key_uuid)

    async def _add_on_github(self, gh: GitHubClient, token: SecretStr | str, owner: str, name: str, public_key: str,
                             title: str) -> int:
        mine = blob(public_key)
        for key in await gh.list_deploy_keys(token, owner, name):  # added by an attempt that died before recording
            if blob(key.key) == mine:
                return key.id
        try:
            return (await gh.create_deploy_key(token, owner, name, title=title, public_key=public_key)).id
        except GitHubError:
            for key in await gh.list_deploy_keys(token, owner, name):  # a concurrent attempt added it first
                if blob(key.key) == mine:
                    return key.id
            raise

    async def _register(self, service_id: uuid.UUID, row: GitHubDeployKey) -> str:
        name = key_name(service_id)
        found = await self.registry.find(name)
        made = found or await self.registry.register(
            name, SecretStr(self._box.decrypt(bytes(row.private_key_enc)).decode()),
            f"InkMCP deploy key of service {service_id} ({row.repo}, read-only)")
        async with self._sessions.begin() as s:
            won = (await s.execute(update(GitHubDeployKey).where(
                GitHubDeployKey.service_id == service_id, GitHubDeployKey.coolify_key_uuid.is_(None))
                .values(coolify_key_uuid=made, updated_at=datetime.now(UTC))
                .returning(GitHubDeployKey.coolify_key_uuid))).scalar_one_or_none()
            if won is None:
                current = (await s.execute(select(GitHubDeployKey.coolify_key_uuid).where(
                    GitHubDeployKey.service_id == service_id))).scalar_one_or_none()
            else:
                current = won
        if current is None:  # the service was deleted meanwhile (its removal found no key yet): nobody else will
            await self.registry.delete(made, ssh_url(self.settings, row.repo))
            raise _deleted()
        if current != made and found is None:  # a concurrent attempt registered its copy first: drop ours
            await self.registry.delete(made, ssh_url(self.settings, row.repo))
        assert current is not None
        return current

    async def source(self, service_id: uuid.UUID, repo_url: str | None = None) -> KeySource | None:
        """The recorded key of a service, for `repo_url` (the release's https URL): None when the service has
        none, or when it is now built from another repository than the key's (a public one: fetched as such)."""
        row = await self._row(service_id)
        if row is None or row.coolify_key_uuid is None or row.github_key_id is None:
            return None
        if repo_url is not None:
            from inkmcp.github.deploy import parse_repo

            parsed = parse_repo(self.settings, repo_url)
            if parsed is None or "/".join(parsed).lower() != row.repo.lower():
                return None
        return KeySource(ssh_url(self.settings, row.repo), row.coolify_key_uuid)

    async def remove(self, service_id: uuid.UUID) -> None:
        """The service is going: its key leaves GitHub (with the account's token) and Coolify, then the record.
        A GitHub that no longer lets the account reach the key (token revoked, admin withdrawn) is logged and
        passed over: once the private key is gone from Coolify and from here, the public key on GitHub opens
        nothing."""
        row = await self._row(service_id)
        if row is None:
            return
        if row.github_key_id is not None:
            token = await token_for(self._sessions, self._box, row.account_id)
            if token is None:
                log.warning("deploy key %s on %s: the account has no GitHub sign-in any more; remove it on GitHub "
                            "(Settings → Deploy keys)", row.github_key_id, row.repo)
            else:
                async with GitHubClient(self.settings) as gh:
                    await self._forget_on_github(gh, row, token)
            await self._set(service_id, github_key_id=None)
        key_uuid = row.coolify_key_uuid or await self.registry.find(key_name(service_id))
        if key_uuid:
            await self.registry.delete(key_uuid, ssh_url(self.settings, row.repo))
        async with self._sessions.begin() as s:
            await s.execute(delete(GitHubDeployKey).where(GitHubDeployKey.service_id == service_id))

    async def _forget_on_github(self, gh: GitHubClient, row: GitHubDeployKey, token: SecretStr | str) -> None:
        owner, name = row.repo.split("/", 1)
        assert row.github_key_id is not None
        try:
            await gh.delete_deploy_key(token, owner, name, row.github_key_id)
        except GitHubError as e:
            log.warning("could not remove deploy key %s from %s on GitHub (%s); remove it there (Settings → "
                        "Deploy keys)", row.github_key_id, row.repo, e.message)
