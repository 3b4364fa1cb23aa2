"""Settings of the Coolify compute provider (`INKMCP_COOLIFY_*`).

Why its own class: `inkmcp/settings.py` is the composition root's, and the Coolify provider is switched on by
`INKMCP_COOLIFY_URL` + `INKMCP_COOLIFY_TOKEN` alone (issue 8 item 8); everything else here has a default that
fits a standard InkMCP fleet (build server registered, Sablier on every run server). The composition root
builds `CoolifySettings()` and hands it to `CoolifyComputeProvider.from_settings`.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.coolify.client import check_api_url, check_token


class CoolifySettings(BaseSettings):
    """Where Coolify is, with which token, and how InkMCP names and sizes what it creates there."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_COOLIFY_", extra="ignore")

    url: str = Field(description="Coolify's base URL (API under /api/v1): https://<instance domain> or the "
                                 "master's private address, e.g. http://10.0.1.10:8000")
    token: SecretStr = Field(description="API token <id>|<secret> with read, read:sensitive, write and deploy "
                                         "(or root), created under Keys & Tokens → API tokens")
    project_prefix: str = Field(default="inkmcp-", description="Coolify project name = prefix + InkMCP project id")
    environment: str = Field(default="production",
                             description="the Coolify environment InkMCP's applications live in (Coolify creates "
                                         "'production' with every project)")
    build_server_uuid: str | None = Field(
        default=None, description="the registered build server (is_build_server); excluded from placement. "
                                  "None: any build server of the token's team (Coolify picks one at random)")
    use_build_server: bool = Field(
        default=True, description="build on the build server, never on a run server (review finding 2); turn off "
                                  "only for a single-machine test install")
    default_branch: str = Field(default="main", description="branch Coolify clones before checking out the exact "
                                                            "commit InkMCP pinned (the contract carries no branch)")
    max_memory_mb: int = Field(default=16384, ge=64, description="ceiling of limits_memory any body may carry")
    max_cpus: float = Field(default=16.0, gt=0, description="ceiling of limits_cpus any body may carry")
    static_memory_mb: int = Field(default=64, ge=32, description="memory limit of a `static` (nginx) application")
    static_cpus: float = Field(default=0.25, gt=0, description="CPU limit of a `static` application")
    sablier_session: str = Field(default="10m", pattern=r"^[0-9]+[smh]$",
                                 description="idle time after which an on_demand service sleeps")
    poll_interval: float = Field(default=2.0, gt=0, description="seconds between deployment status polls")
    poll_max_interval: float = Field(default=10.0, gt=0, description="polls back off up to this many seconds")
    wait_timeout: float = Field(default=1800.0, gt=0,
                                description="seconds a release waits for Coolify's deployments before "
                                            "reporting ProviderUnavailable (the next attempt re-attaches)")

    dev_local_repos: bool = Field(
        default=False, description="development and tests only: let agents deploy local git repositories by "
                                   "handing Coolify a https://local-repo.invalid/… name for them, which only the "
                                   "stand-in's runner (inkmcp/coolify/standin/runner.py) fetches. Refused unless "
                                   "INKMCP_COOLIFY_URL is a loopback address, so a production install (a remote "
                                   "Coolify) cannot turn it on by accident")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return check_api_url(v, "INKMCP_COOLIFY_URL")

    @field_validator("dev_local_repos")
    @classmethod
    def _dev_local_repos(cls, v: bool, info: ValidationInfo) -> bool:
        if v and not is_loopback_url(str(info.data.get("url") or "")):
            raise ValueError("local repositories are for a Coolify stand-in on this machine only: INKMCP_COOLIFY_URL "
                             "must be a loopback address (http://127.0.0.1:PORT); unset INKMCP_COOLIFY_DEV_LOCAL_REPOS "
                             "for a real Coolify")
        return v

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        check_token(v.get_secret_value(), "INKMCP_COOLIFY_TOKEN")
        return v


def is_loopback_url(url: str) -> bool:
    """True when `url`'s host is a loopback IP address or `localhost` (the stand-in on this machine)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
