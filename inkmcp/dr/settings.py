"""Settings of the DR commands (env prefix INKMCP_DR_); every command flag overrides its field."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PINNED_BOX_KNOWN_HOSTS = Path("/root/.ssh/inkmcp-storagebox.known_hosts")
"""Where the factory's backup job writes the Storage Box's pinned host keys (`storageBox.hostKeys`)."""


class DrSettings(BaseSettings):
    """Where the Storage Box, the Hetzner API and Coolify are, and which keys reach them.

    Defaults are what the factory stack installs: the backup key at /root/.ssh/inkmcp-storagebox on the
    control-plane Postgres host (inkmcp/infra/factory.py `backup_script`), dumps under `inkmcp-postgres/`.
    """

    model_config = SettingsConfigDict(env_prefix="INKMCP_DR_", extra="ignore")

    box_host: str | None = Field(default=None, description="Storage Box host (pulumi output storage_box_host)")
    box_user: str | None = Field(default=None, description="Storage Box user or sub-account (u123456[-subN])")
    box_port: int = Field(default=23, ge=1, le=65535, description="SSH port: the Storage Box serves rsync on 23")
    box_key: Path = Field(default=Path("/root/.ssh/inkmcp-storagebox"), description="private key for the box")
    box_known_hosts: Path | None = Field(
        default=None, description="known_hosts file for the box (default: the factory's pinned "
        f"{PINNED_BOX_KNOWN_HOSTS} when it exists, and then only its keys are trusted; else ssh's own, new keys "
        "accepted once)")
    box_id: int | None = Field(default=None, description="Storage Box ID for the Hetzner API (snapshots)")
    hetzner_token: SecretStr | None = Field(default=None, description="Hetzner API token (project with the box)")
    hetzner_api_url: str = Field(default="https://api.hetzner.com/v1", description="Hetzner API (Storage Boxes)")
    postgres_dir: str = Field(default="inkmcp-postgres", description="box directory of the nightly dumps")
    database: str = Field(default="inkmcp", description="control-plane database name")
    pg_bin: Path | None = Field(default=None, description="directory of pg_restore/psql (default: PATH)")
    operator_key: SecretStr | None = Field(
        default=None, description="Fernet key that encrypts the Coolify secrets bundle (`inkmcp dr keygen`)")
    coolify_dir: Path = Field(default=Path("/data/coolify"), description="Coolify's data directory on the master")
    coolify_secrets_dir: str = Field(default="coolify-secrets", description="box directory of the secrets bundles")
    registry_storage: Path = Field(default=Path("/var/lib/registry"), description="registry storage on its host")
    registry_dir: str = Field(default="registry", description="box directory of the registry copy")
    coolify_api_url: str | None = Field(default=None, description="Coolify URL, e.g. https://coolify.example.com")
    coolify_api_token: SecretStr | None = Field(default=None, description="Coolify API token (read, write)")

    @model_validator(mode="after")
    def _pinned_box_keys(self) -> DrSettings:
        """On a host whose backup job pins the box's keys, a restore trusts the same keys: without this, the DR
        commands would fall back to ssh's own known_hosts and accept whatever key answers first."""
        if self.box_known_hosts is None and PINNED_BOX_KNOWN_HOSTS.is_file():
            self.box_known_hosts = PINNED_BOX_KNOWN_HOSTS
        return self

    @property
    def box_keys_pinned(self) -> bool:
        """Whether the box must present one of the pinned keys (`StrictHostKeyChecking=yes`)."""
        return self.box_known_hosts == PINNED_BOX_KNOWN_HOSTS
