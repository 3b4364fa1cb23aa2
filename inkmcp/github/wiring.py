"""Wiring the GitHub integration into a running InkMCP (called by the composition root, inkmcp/app.py).

`trusted_origins()` goes into the SourcePolicy (the configured GitHub host is a git host the operator chose:
reached without the public-address check, so a GitHub Enterprise on a private network or the local stand-in
works without INKMCP_ALLOW_LOCAL_SOURCES). `install(platform, box)` attaches the deploy hooks and the webhook
handler when the operator configured GitHub (OAuth app or webhook secret); otherwise nothing changes. Under Coolify
compute it also gives the provider the deploy keys of private repositories (inkmcp/github/deploy_keys.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from inkmcp.build.source import origin_of
from inkmcp.github.deploy import GitHubDeployHooks
from inkmcp.github.settings import GitHubSettings
from inkmcp.github.webhooks import WebhookHandler

if TYPE_CHECKING:
    from inkmcp.core.platform import Platform
    from inkmcp.store.crypto import SecretBox

log = logging.getLogger(__name__)


@dataclass
class GitHubIntegration:
    settings: GitHubSettings
    hooks: GitHubDeployHooks
    webhooks: WebhookHandler


def enabled(settings: GitHubSettings) -> bool:
    return bool(settings.github_client_id and settings.github_client_secret) or \
        settings.github_webhook_secret is not None


def trusted_origins(settings: GitHubSettings | None = None) -> frozenset[str]:
    settings = settings or GitHubSettings.from_env()
    origin = origin_of(settings.github_url)
    return frozenset({origin}) if enabled(settings) and origin else frozenset()


def install(platform: Platform, box: SecretBox, settings: GitHubSettings | None = None) -> GitHubIntegration | None:
    settings = settings or GitHubSettings.from_env()
    if not enabled(settings):
        return None
    hooks = GitHubDeployHooks(settings, platform.sessions, box)
    compute = getattr(platform, "compute", None)
    if getattr(compute, "name", None) == "coolify":  # Coolify clones itself: private repos through deploy keys
        from inkmcp.github.deploy_keys import DeployKeys
        from inkmcp.providers.compute.coolify.deploy_keys import CoolifyKeyRegistry

        keys = DeployKeys(settings, platform.sessions, box, CoolifyKeyRegistry(compute))  # type: ignore[arg-type]
        hooks.deploy_keys = keys
        compute.deploy_keys = keys  # type: ignore[union-attr]
    platform.deploys.github = hooks
    integration = GitHubIntegration(settings, hooks, WebhookHandler(platform, settings))
    platform.github = integration
    log.info("GitHub integration on: %s (API %s)", settings.github_url, settings.github_api_url)
    return integration
