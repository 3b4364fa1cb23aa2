"""`build_web`: the web UI from the runtime's parts. `inkmcp serve` calls it and hands the result to
`build_http_app`, which puts it in front of /mcp (`WebUI.mount`)."""

from __future__ import annotations

from datetime import timedelta

from inkmcp.core.platform import Platform
from inkmcp.github.settings import GitHubSettings
from inkmcp.store.crypto import SecretBox
from inkmcp.web.app import WebUI
from inkmcp.web.github import GitHubOAuth
from inkmcp.web.sessions import WebSessions, signing_key
from inkmcp.web.settings import WebSettings


async def build_web(platform: Platform, box: SecretBox) -> WebUI:
    """Settings errors (INKMCP_PUBLIC_URL, INKMCP_GITHUB_*, INKMCP_WEB_*) stop the start with an InkError naming
    the variable; unset GitHub settings are fine (the home page says what to set)."""
    github = GitHubSettings.from_env()
    web = WebSettings.from_env()
    key = await signing_key(platform.sessions, box)
    sessions = WebSessions(platform.sessions, key, web.session_lifetime, timedelta(minutes=web.state_minutes))
    return WebUI(platform, sessions, GitHubOAuth(github, platform.sessions, box), github.public_url)
