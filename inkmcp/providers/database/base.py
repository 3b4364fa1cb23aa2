"""The database provider contract.

A provider hands out one database per project with its own login. What core stores is the
resulting credentials (encrypted); the provider keeps nothing else, so a provider can be swapped
for Neon without a data migration of ours.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable
from urllib.parse import quote, urlencode

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class Tier(StrEnum):
    free = "free"
    standard = "standard"


class DatabaseCredentials(BaseModel):
    model_config = ConfigDict(frozen=True)

    host: str
    port: int
    database: str
    user: str
    password: SecretStr
    options: dict[str, str] = Field(
        default_factory=dict, description="URL query options to keep, e.g. sslmode=require for Neon"
    )
    scheme: str = Field(
        default="postgresql",
        description="URL scheme: postgresql (every Postgres provider; rows stored before this field read as it) "
        "or redis (the Redis add-on, where `database` is the logical db number)",
    )

    def url(self) -> SecretStr:
        """postgresql:// URL, what apps read from DATABASE_URL (redis:// for the Redis add-on's REDIS_URL)."""
        pw = quote(self.password.get_secret_value(), safe="")
        user = quote(self.user, safe="")
        query = f"?{urlencode(self.options)}" if self.options else ""
        db = quote(self.database, safe="")
        return SecretStr(f"{self.scheme}://{user}:{pw}@{self.host}:{self.port}/{db}{query}")


class DatabaseHandle(BaseModel):
    """What a provider returns for a provisioned database."""

    provider: str
    tier: Tier
    credentials: DatabaseCredentials
    external_id: str = Field(description="provider's id for the database, e.g. the database name")


@runtime_checkable
class DatabaseProvider(Protocol):
    name: str

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        """Create a database and login for `owner_slug`, idempotent per slug.

        Core calls this only when it holds no credentials for the project. If the database already
        exists (a crash between creating it and recording it), its login gets a new random password,
        which is returned: the provider never stores passwords, so that is the only way to recover.
        """

    async def drop(self, external_id: str) -> None:
        """Delete the database and its login. Idempotent."""

    async def close(self) -> None: ...
