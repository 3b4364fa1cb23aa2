"""Configuration, read once at start from INKMCP_* environment variables and CLI flags.

Validated up front so that a typo fails `inkmcp serve` with a message naming the variable, not an
obscure error in the middle of the first deployment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_data_dir() -> Path:
    # Tenant users must be able to traverse to their files, so never default into /root (0700).
    if os.geteuid() == 0:
        return Path("/var/lib/inkmcp")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "inkmcp"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    data_dir: Path = Field(default_factory=default_data_dir, description="state: embedded Postgres, builds, logs")
    database_url: SecretStr | None = Field(
        default=None, description="control-plane Postgres; unset = embedded server in data_dir"
    )
    tenant_database_url: SecretStr | None = Field(
        default=None, description="admin URL of the Postgres server tenant databases are created on"
    )
    tenant_database_public_host: str = "127.0.0.1"

    host: str = "127.0.0.1"
    port: int = Field(default=8081, ge=1, le=65535)
    allowed_hosts: list[str] = Field(
        default_factory=list, description="extra Host headers accepted (DNS-rebinding protection)"
    )

    compute: Literal["local"] = "local"
    proxy_host: str = "127.0.0.1"
    proxy_port: int = Field(default=8080, ge=1, le=65535)
    apps_domain: str = Field(default="localhost", description="services answer at <service>.<project>.<domain>")
    idle_timeout: float = Field(default=300.0, gt=0, description="seconds before an on_demand service sleeps")
    health_timeout: float = Field(default=60.0, gt=0)
    build_timeout: float = Field(default=900.0, gt=0)
    tenant_python: str = "/usr/bin/python3"

    deploy_answer_within: float = Field(
        default=40.0, gt=0, le=55, description="deploy_app returns by then even if the build goes on"
    )
    max_env_bytes: int = Field(default=64 * 1024, gt=0, description="cap on the env var payload of one call")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @field_validator("data_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @field_validator("database_url", "tenant_database_url")
    @classmethod
    def _postgres_url(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and not v.get_secret_value().startswith(("postgresql://", "postgres://", "postgresql+")):
            raise ValueError("must be a postgresql:// URL, e.g. postgresql://user:pass@host:5432/inkmcp")
        return v

    @property
    def public_port_suffix(self) -> str:
        return "" if self.proxy_port == 80 else f":{self.proxy_port}"
