"""Settings of the GitHub integration (`INKMCP_*`, issue 11 item 1).

Why its own class: `inkmcp/settings.py` belongs to the composition root; the web UI, the deploy pipeline and the
webhook route each read only what they need from here. Without a client id and secret the web UI explains how to
configure it (`configured` is False) and CLI-made API keys keep working.

`github_api_url` may carry a path (GitHub Enterprise serves its API under `https://HOST/api/v3`), so every API
URL is made by appending to it (`api(path)`), never by joining (which would drop the path).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import settings_from_env

ENV_PREFIX = "INKMCP_"


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_base_url(url: str, setting: str, example: str) -> str:
    """`https://…`, or `http://` to a loopback address only (the stand-in): tokens and client secrets must never
    cross a network in clear text. Returns the URL without a trailing slash."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting}={url!r} is not an http(s) URL with a host; pass e.g. {example}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{setting} must be a plain base URL without user:password@, query or fragment; "
                         f"pass e.g. {example}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"{setting}={url!r} would send GitHub tokens in clear text to {parts.hostname!r}; "
                         f"use https (e.g. {example}) or a loopback address")
    return url.strip().rstrip("/")


class GitHubSettings(BaseSettings):
    """Where GitHub is, the OAuth app InkMCP signs users in with, and the webhook secret."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    public_url: str | None = Field(
        default=None, description="base URL users reach InkMCP's web UI at, e.g. https://inkmcp.example.com; "
                                  "the OAuth callback is {PUBLIC_URL}/auth/github/callback")
    github_client_id: str | None = Field(
        default=None, description="client id of the GitHub OAuth app (GitHub → Settings → Developer settings → "
                                  "OAuth Apps)")
    github_client_secret: SecretStr | None = Field(default=None, description="client secret of that OAuth app")
    github_webhook_secret: SecretStr | None = Field(
        default=None, description="secret of the repositories' push webhooks (POST {PUBLIC_URL}/webhooks/github, "
                                  "content type application/json); unset: webhooks are refused")
    github_url: str = Field(default="https://github.com",
                            description="GitHub's web and git host, base of OAuth pages and clone URLs")
    github_api_url: str = Field(default="https://api.github.com",
                                description="GitHub's REST API base; GitHub Enterprise: https://HOST/api/v3")
    github_timeout: float = Field(default=15.0, gt=0, description="seconds per HTTP request to GitHub")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(f"INKMCP_PUBLIC_URL={v!r} is not a base URL; pass e.g. https://inkmcp.example.com")
        return v.strip().rstrip("/")

    @field_validator("github_url")
    @classmethod
    def _github_url(cls, v: str) -> str:
        return check_base_url(v, "INKMCP_GITHUB_URL", "https://github.com")

    @field_validator("github_api_url")
    @classmethod
    def _github_api_url(cls, v: str) -> str:
        return check_base_url(v, "INKMCP_GITHUB_API_URL", "https://api.github.com or https://HOST/api/v3")

    @field_validator("github_client_id")
    @classmethod
    def _client_id(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @field_validator("github_client_secret", "github_webhook_secret")
    @classmethod
    def _secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        if any(c.isspace() for c in v.get_secret_value()):
            raise ValueError("contains whitespace (a pasted newline?); pass the value exactly as GitHub showed it")
        return v

    @classmethod
    def from_env(cls, **overrides: object) -> GitHubSettings:
        """Read the environment; a bad value raises `InkError` naming INKMCP_<FIELD> (never its value)."""
        return settings_from_env(cls, ENV_PREFIX, "inkmcp/github/settings.py", **overrides)

    @property
    def configured(self) -> bool:
        """Sign-in with GitHub is possible: client id, client secret and public URL are set."""
        return bool(self.github_client_id and self.github_client_secret and self.public_url)

    @property
    def missing(self) -> list[str]:
        """The settings sign-in still needs, by environment variable name (for the web UI's help text)."""
        names = {"public_url": self.public_url, "github_client_id": self.github_client_id,
                 "github_client_secret": self.github_client_secret}
        return [ENV_PREFIX + k.upper() for k, v in names.items() if not v]

    @property
    def callback_url(self) -> str | None:
        return f"{self.public_url}/auth/github/callback" if self.public_url else None

    @property
    def git_host(self) -> str:
        """host[:port] of github_url: a repo_url on this host is a GitHub repository."""
        return urlsplit(self.github_url).netloc.lower()

    def api(self, path: str) -> str:
        """An API URL: `path` appended to github_api_url (which may end in /api/v3)."""
        return self.github_api_url + "/" + path.lstrip("/")
