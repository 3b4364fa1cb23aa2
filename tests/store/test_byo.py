from __future__ import annotations

import pytest
from pydantic import SecretStr

from inkmcp.errors import InvalidArgument, ProviderError
from inkmcp.providers.database.base import DatabaseProvider, Tier
from inkmcp.providers.database.byo import BringYourOwnDatabase, parse_database_url
from inkmcp.store.embedded import EmbeddedPostgres

SECRET = "hunter2-very-secret"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"mysql://u:{SECRET}@h/db", "scheme"),
        (f"postgresql+psycopg://u:{SECRET}@h/db", "scheme"),
        (f"u:{SECRET}@h/db", "scheme"),
        (f"postgresql://u:{SECRET}@/db", "host"),
        (f"postgresql://:{SECRET}@h/db", "user"),
        (f"postgresql://u:{SECRET}@h", "database"),
        (f"postgresql://u:{SECRET}@h:notaport/db", "port"),
        (f"postgresql://u:{SECRET}@h/db?host=/tmp", "socket"),
    ],
)
def test_invalid_urls_name_the_argument_and_hide_the_password(url: str, problem: str) -> None:
    with pytest.raises(InvalidArgument) as exc:
        parse_database_url(SecretStr(url))
    assert exc.value.argument == "database.url"
    assert problem in str(exc.value)
    assert "postgresql://USER:PASSWORD@HOST" in str(exc.value)
    assert SECRET not in str(exc.value)


def test_parses_postgres_and_postgresql() -> None:
    c = parse_database_url(SecretStr("postgres://app%40x:p%2Fw@db.example.com/my%20db?sslmode=require"))
    assert (c.host, c.port, c.user, c.database) == ("db.example.com", 5432, "app@x", "my db")
    assert c.password.get_secret_value() == "p/w"
    assert parse_database_url(SecretStr("postgresql://u@h:6543/d")).port == 6543


async def test_register_checks_connection(tenant_pg: EmbeddedPostgres) -> None:
    byo = BringYourOwnDatabase()
    assert isinstance(byo, DatabaseProvider)
    url = tenant_pg.url(driver=None)
    h = await byo.register(url, tier=Tier.free)
    assert h.provider == "byo" and h.credentials.database == "postgres"
    assert h.external_id == f"127.0.0.1:{tenant_pg.port}/postgres"
    bad = SecretStr(f"postgresql://postgres:{SECRET}@127.0.0.1:{tenant_pg.port}/postgres")
    with pytest.raises(InvalidArgument, match="could not connect") as exc:
        await byo.register(bad)
    assert SECRET not in str(exc.value)
    assert (await byo.register(bad, check=False)).credentials.password.get_secret_value() == SECRET
    await byo.drop(h.external_id)  # no-op, database still there
    assert (await byo.register(url)).external_id == h.external_id
    with pytest.raises(ProviderError):
        await byo.provision(owner_slug="x", tier=Tier.free)
