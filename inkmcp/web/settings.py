"""Settings of the web UI (`INKMCP_WEB_*`). Where GitHub is and the public URL are GitHubSettings'
(inkmcp/github/settings.py); this class holds only what the browser sessions need."""

from __future__ import annotations

from datetime import timedelta

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import settings_from_env


class WebSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="INKMCP_WEB_", extra="ignore")

    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30,
        description="how long a dashboard sign-in lasts (hours); after it the user signs in with GitHub again",
    )
    state_minutes: float = Field(
        default=10.0, gt=0, le=60,
        description="how long a started GitHub sign-in may take before its state cookie expires (minutes)",
    )

    @property
    def session_lifetime(self) -> timedelta:
        return timedelta(hours=self.session_hours)

    @classmethod
    def from_env(cls) -> WebSettings:
        """A bad value is an InkError naming INKMCP_WEB_<FIELD> and what it takes."""
        return settings_from_env(cls, "INKMCP_WEB_", "inkmcp/web/settings.py")
