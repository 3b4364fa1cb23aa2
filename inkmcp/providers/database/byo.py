"""Bring-your-own database: the agent passes a connection string for a database it already has.

We store the credentials (encrypted, like any other) and hand them to the app, but we never
created that database, so `drop` never touches it.
"""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from pydantic import SecretStr

from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.providers.database.base import DatabaseCredentials, DatabaseHandle, Tier

ARGUMENT = "database.url"
_FIX = "pass a URL like postgresql://USER:PASSWORD@HOST:5432/DBNAME (postgres:// also accepted)"
CONNECT_TIMEOUT_S = 5


def parse_database_url(url: SecretStr) -> DatabaseCredentials:
    """Validate a postgres:// / postgresql:// URL. Error messages never quote the URL (it holds a password)."""
    raw = url.get_secret_value().strip()
    try:
        parts = urlsplit(raw)
        port = parts.port or 5432
    except ValueError:
        raise InvalidArgument("is not a valid URL (bad port or malformed host)", argument=ARGUMENT, fix=_FIX) from None
    if parts.scheme not in ("postgres", "postgresql"):
        shown = parts.scheme or "none"
        raise InvalidArgument(
            f"scheme must be postgres or postgresql, got {shown!r}", argument=ARGUMENT, fix=_FIX
        )
    if not parts.hostname:
        raise InvalidArgument("has no host", argument=ARGUMENT, fix=_FIX)
    if not parts.username:
        raise InvalidArgument("has no user name", argument=ARGUMENT, fix=_FIX)
    database = unquote(parts.path.lstrip("/"))
    if not database or "/" in database:
        raise InvalidArgument("has no database name after the host", argument=ARGUMENT, fix=_FIX)
    params = dict(parse_qsl(parts.query))
    if "host" in params:
        raise InvalidArgument(
            "unix-socket URLs (?host=...) are not reachable from apps", argument=ARGUMENT, fix=_FIX
        )
    return DatabaseCredentials(
        host=parts.hostname,
        port=port,
        database=database,
        user=unquote(parts.username),
        password=SecretStr(unquote(parts.password or "")),
        options=params,
    )


class BringYourOwnDatabase:
    """DatabaseProvider for externally managed databases (provider name "byo")."""

    name = "byo"

    async def register(self, url: SecretStr, *, check: bool = True, tier: Tier = Tier.standard) -> DatabaseHandle:
        """Validate `url`, optionally prove it connects (5 s), and return a handle for it.

        The connection check uses the URL as given (so sslmode=require etc. apply).
        """
        creds = parse_database_url(url)
        if check:
            await self._check(url)
        return DatabaseHandle(
            provider=self.name,
            tier=tier,
            credentials=creds,
            external_id=f"{creds.host}:{creds.port}/{creds.database}",
        )

    @staticmethod
    async def _check(url: SecretStr) -> None:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S + 1):
                conn = await psycopg.AsyncConnection.connect(
                    url.get_secret_value(), connect_timeout=CONNECT_TIMEOUT_S, autocommit=True
                )
                try:
                    await conn.execute("SELECT 1")
                finally:
                    await conn.close()
        except (psycopg.Error, TimeoutError) as e:
            reason = "timed out" if isinstance(e, TimeoutError) else str(e).strip().splitlines()[0]
            raise InvalidArgument(
                f"could not connect: {reason}",
                argument=ARGUMENT,
                fix="check host, port, user, password and that the server accepts connections from this host",
            ) from None

    async def provision(self, *, owner_slug: str, tier: Tier) -> DatabaseHandle:
        raise ProviderError(
            "bring-your-own databases are registered, not provisioned",
            argument=ARGUMENT,
            fix="pass the connection string of your database as database.url",
        )

    async def drop(self, external_id: str) -> None:
        """No-op: we never drop a database we did not create."""

    async def close(self) -> None:
        """Nothing held."""
