"""Settings of the Neon database provider (`INKMCP_NEON_*`).

Why its own class: `inkmcp/settings.py` is the composition root's. Neon is switched on by `INKMCP_NEON_API_KEY`
alone (issue 8 item 8); everything else has a default. `NeonSettings.from_env()` turns pydantic's validation
errors into an `InkError` that names the environment variable and what to pass instead.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import settings_from_env

ENV_PREFIX = "INKMCP_NEON_"
DEFAULT_API_URL = "https://console.neon.tech/api/v2"


def check_api_url(url: str, setting: str = "INKMCP_NEON_API_URL") -> str:
    """`https://…`, or `http://` to a loopback address only (the stand-in, an SSH tunnel): the API key must never
    cross a network in clear text. Returns the URL without a trailing slash."""
    parts = urlsplit(url.strip())
    example = f"{DEFAULT_API_URL} (Neon's API) or http://127.0.0.1:PORT/api/v2 (a local stand-in)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{setting}={url!r} is not an http(s) URL with a host; pass e.g. {example}")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{setting} must be a plain base URL without user:password@, query or fragment; "
                         f"pass e.g. {example}")
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ValueError(f"{setting}={url!r} would send the Neon API key in clear text to {host!r}; use https "
                             f"(e.g. {DEFAULT_API_URL}) or a loopback address")
    return url.strip().rstrip("/")


class NeonSettings(BaseSettings):
    """Neon account access and how InkMCP names and sizes what it creates there."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    api_key: SecretStr | None = Field(
        default=None, description="Neon API key (Console → Account or Organization settings → API keys). "
                                  "Unset: the Neon provider is off")
    api_url: str = Field(default=DEFAULT_API_URL, description="base URL of Neon's API v2")
    region: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,60}$",
                               description="Neon region id for new projects, e.g. aws-eu-central-1; unset: "
                                           "Neon's default region")
    pg_version: int = Field(default=17, ge=14, le=17, description="Postgres major version of new projects")
    org_id: str | None = Field(default=None, pattern=r"^[a-z0-9-]{1,60}$",
                               description="Neon organization that owns the projects (org-…); required when the "
                                           "API key is an organization key or the user belongs to an org")
    project_prefix: str = Field(default="inkmcp-", pattern=r"^[a-z0-9-]{1,20}$",
                                description="Neon project name = prefix + InkMCP project id; drop refuses "
                                            "projects without it")
    free_max_cu: float = Field(default=0.25, ge=0.25, description="autoscaling max CU of a free-tier database")
    standard_max_cu: float = Field(default=2.0, ge=0.25,
                                   description="autoscaling max CU of a standard-tier database")
    request_timeout: float = Field(default=30.0, gt=0, description="seconds per HTTP request to Neon")
    operation_timeout: float = Field(default=300.0, gt=0,
                                     description="seconds to wait for Neon's operations of one step to finish")
    max_retry_wait: float = Field(default=60.0, ge=0,
                                  description="seconds one call may spend waiting out 423/429/5xx before failing")

    @field_validator("api_url")
    @classmethod
    def _api_url(cls, v: str) -> str:
        return check_api_url(v)

    @field_validator("api_key")
    @classmethod
    def _api_key(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        raw = v.get_secret_value()
        if not raw.strip():
            return None
        if any(c.isspace() for c in raw):
            raise ValueError("contains whitespace (a pasted newline?); pass the key exactly as Neon showed it")
        return v

    @classmethod
    def from_env(cls, **overrides: object) -> NeonSettings:
        """Read the environment; a bad value raises `InkError` naming INKMCP_NEON_<FIELD> (never its value)."""
        return settings_from_env(cls, ENV_PREFIX, "inkmcp/neon/settings.py", **overrides)

    @property
    def enabled(self) -> bool:
        return self.api_key is not None
