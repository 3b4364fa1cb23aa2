"""The Coolify side of deploy keys for private GitHub repositories (issue 11; the GitHub side and why one key per
service: inkmcp/github/deploy_keys.py).

* `CoolifyKeyRegistry`: Coolify's security keys (`GET|POST /security/keys`, `DELETE /security/keys/{uuid}`, which
  answers 422 "Private Key is in use and cannot be deleted." while an application still uses it: application
  deletes are queued jobs, so a delete waits for them, bounded).
* The provider's hooks (called from small marked blocks of provider.py): `keyed` swaps a release's https
  `repo_url` for the service's `git@HOST:OWNER/REPO.git` when the service has a deploy key; `create_call` creates
  an application through `POST /applications/private-deploy-key` with its `private_key_uuid`; `removed` removes the
  key when the service goes. Each fills the policy's `DEPLOY_KEYS` allow-list from InkMCP's own record first, so
  the policy lets through only pairs InkMCP made.

`provider.deploy_keys` (set by inkmcp/github/wiring.py when GitHub is configured) is the `DeployKeys` record; None
(the default) leaves the provider exactly as before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr, TypeAdapter

from inkmcp.coolify import models as m
from inkmcp.coolify.client import CoolifyError, CoolifyNotFound, CoolifyValidationError
from inkmcp.providers.compute.base import ProviderUnavailable, ReleaseRequest, ServiceKey
from inkmcp.providers.compute.coolify import policy

if TYPE_CHECKING:
    from inkmcp.github.deploy_keys import DeployKeys
    from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider


class _Key(m._Response):
    uuid: str
    name: str | None = None


_KEYS = TypeAdapter(list[_Key])


class CoolifyKeyRegistry:
    """`inkmcp.github.deploy_keys.KeyRegistry` over Coolify's security keys."""

    def __init__(self, provider: CoolifyComputeProvider, *, in_use_timeout: float = 300.0) -> None:
        self.provider = provider
        self.in_use_timeout = in_use_timeout

    async def find(self, name: str) -> str | None:
        """The uuid of the key named `name`. Coolify has no lookup by name (`GET /security/keys/{uuid}` needs the
        uuid, and the list takes no filter), so this reads the team's whole list, the operator's server keys
        included (never logged, kept only as uuid and name). DeployKeys calls it only while no uuid is recorded:
        a first registration, or the retry after a crash between Coolify's answer and the record."""
        self.provider._check("GET", "/security/keys")
        try:
            r = await self.provider.client.request("GET", "/security/keys")
        except CoolifyError as e:
            raise ProviderUnavailable(f"listing Coolify's keys: {e}") from None
        return next((k.uuid for k in _KEYS.validate_python(r.json()) if k.name == name), None)

    async def register(self, name: str, private_key: SecretStr, description: str) -> str:
        body = {"name": name, "description": description, "private_key": private_key.get_secret_value()}
        self.provider._check("POST", "/security/keys", body)
        try:
            r = await self.provider.client.request("POST", "/security/keys", json=body)
        except CoolifyError as e:  # str(e) names the request and Coolify's message, never the body
            raise ProviderUnavailable(f"registering the deploy key in Coolify: {e}") from None
        return m.Uuid.model_validate(r.json()).uuid

    async def delete(self, key_uuid: str, git_repository: str) -> None:
        policy.DEPLOY_KEYS.allow(key_uuid, git_repository)  # InkMCP's own key (from its record): may be deleted
        path = f"/security/keys/{key_uuid}"
        self.provider._check("DELETE", path)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.in_use_timeout
        interval = self.provider.poll_interval
        while True:
            try:
                await self.provider.client.request("DELETE", path)
                break
            except CoolifyNotFound:
                break
            except CoolifyValidationError as e:  # "in use": the applications' queued deletes are not done yet
                if loop.time() > deadline:
                    raise ProviderUnavailable(f"deleting the deploy key in Coolify: {e}; retrying later") from None
            except CoolifyError as e:
                raise ProviderUnavailable(f"deleting the deploy key in Coolify: {e}") from None
            await asyncio.sleep(interval)
            interval = min(self.provider.poll_max_interval, interval * 1.5)
        policy.DEPLOY_KEYS.forget(key_uuid)


def _keys(provider: CoolifyComputeProvider) -> DeployKeys | None:
    return getattr(provider, "deploy_keys", None)


async def keyed(provider: CoolifyComputeProvider, request: ReleaseRequest) -> ReleaseRequest:
    """`request` with the service's SSH repository URL when it has a deploy key (else unchanged)."""
    keys = _keys(provider)
    if keys is None:
        return request
    source = await keys.source(uuid.UUID(request.key.service_id), request.repo_url.get_secret_value())
    if source is None:
        return request
    policy.DEPLOY_KEYS.allow(source.private_key_uuid, source.git_repository)
    _sources(provider)[request.key.service_id] = (source.private_key_uuid, source.git_repository)
    return request.model_copy(update={"repo_url": SecretStr(source.git_repository)})


def _sources(provider: CoolifyComputeProvider) -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] | None = getattr(provider, "_deploy_key_sources", None)
    if found is None:
        found = {}
        provider._deploy_key_sources = found  # type: ignore[attr-defined]
    return found


def known_ssh_url(url: str) -> bool:
    """An SSH repository URL of a deploy key InkMCP made (provider._repo_url passes it through)."""
    return policy.DEPLOY_KEYS.knows_url(url)


def create_call(provider: CoolifyComputeProvider, key: ServiceKey,
                body: dict[str, Any]) -> Awaitable[m.ApplicationCreated] | None:
    """`POST /applications/private-deploy-key` for an application of a service with a deploy key whose body
    names its SSH URL; None for every other application (the caller creates it as a public one)."""
    source = _sources(provider).get(key.service_id)
    if source is None or body.get("git_repository") != source[1]:
        return None
    payload = {**m.PublicApplicationCreate(**body).body(), "private_key_uuid": source[0]}
    provider._check("POST", "/applications/private-deploy-key", payload)

    async def call() -> m.ApplicationCreated:
        r = await provider.client.request("POST", "/applications/private-deploy-key", json=payload)
        return m.ApplicationCreated.model_validate(r.json())

    return call()


async def removed(provider: CoolifyComputeProvider, key: ServiceKey) -> None:
    """The service's applications are deleted (queued): its deploy key leaves GitHub and Coolify."""
    keys = _keys(provider)
    if keys is None:
        return
    await keys.remove(uuid.UUID(key.service_id))
    _sources(provider).pop(key.service_id, None)
