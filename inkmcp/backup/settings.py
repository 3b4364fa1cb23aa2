"""Settings of scheduled backups (started by `inkmcp serve`, see `schedule.start_scheduled`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class BackupSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_BACKUP_", extra="ignore")

    dir: Path | None = Field(
        default=None,
        description="where scheduled backup sets are written (one subdirectory per set); unset: "
        "<data_dir>/../<data_dir name>-backups, outside the data dir so losing it does not lose them",
    )
    interval_s: float = Field(
        default=0, ge=0, description="seconds between scheduled backups while `inkmcp serve` runs; 0 = off"
    )
    keep: int = Field(default=7, ge=1, description="scheduled sets kept; older ones are deleted after a success")
    keys_to: Path | None = Field(
        default=None,
        description="write each scheduled set's keys here instead of into the set (see `backup create --keys-to`)",
    )

    def target(self, data_dir: Path) -> Path:
        return self.dir if self.dir is not None else data_dir.parent / f"{data_dir.name}-backups"
