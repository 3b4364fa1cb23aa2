"""INKMCP_REDIS_URL: projects as ACL users of one shared Redis, confined to their key prefix, attacked for real
from one project's connection against another's keys (a real redis-server stands in for the external one)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr

from inkmcp.core.databases import DatabaseRequest
from inkmcp.errors import InvalidArgument
from inkmcp.providers.database.base import DatabaseHandle, Tier
from inkmcp.providers.database.redis import (
    ExternalRedisProvider,
    RedisReplyError,
    RedisSettings,
    RespConnection,
    build_redis_provider,
)
from tests.core.test_addons_redis import HAVE_REDIS, login, refused
from tests.requirements import require
from tests.store.conftest import free_port

ADMIN_PASSWORD = "admin-pw-for-tests"


@dataclass
class Server:
    port: int
    dir: Path

    @property
    def admin_url(self) -> SecretStr:
        return SecretStr(f"redis://admin:{ADMIN_PASSWORD}@127.0.0.1:{self.port}/0")

    async def admin(self) -> RespConnection:
        conn = await RespConnection.open("127.0.0.1", self.port)
        await conn.execute("AUTH", "admin", ADMIN_PASSWORD)
        return conn


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[Server]:
    """A redis-server with an admin user and an aclfile, as an operator's production Redis; stopped by its PID."""
    require("redis", HAVE_REDIS, "redis-server is not on PATH")
    base = Path(tempfile.mkdtemp(prefix="inkmcp-shared-redis-"))
    port = free_port()
    (base / "users.acl").write_text(f"user default off\nuser admin on >{ADMIN_PASSWORD} ~* &* +@all\n")
    (base / "redis.conf").write_text(f"bind 127.0.0.1\nport {port}\ndir {base}\naclfile {base / 'users.acl'}\n"
                                     'save ""\nappendonly no\n')  # fmt: skip
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", str(base / "redis.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=base)  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True,
                             check=False).stdout.strip() not in ("PONG", "NOAUTH Authentication required."):
            assert proc.poll() is None and time.monotonic() < deadline, "shared redis-server did not start"
            time.sleep(0.05)
        yield Server(port=port, dir=base)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
async def external(shared_redis: Server) -> AsyncIterator[ExternalRedisProvider]:
    provider = build_redis_provider(shared_redis.dir / "unused", RedisSettings(url=shared_redis.admin_url))
    assert isinstance(provider, ExternalRedisProvider)
    yield provider
    await provider.close()


async def test_a_project_reaches_only_its_own_prefix_on_the_shared_server(
    shared_redis: Server, external: ExternalRedisProvider
) -> None:
    a = await external.provision(owner_slug="a1" * 16, tier=Tier.free)
    b = await external.provision(owner_slug="b2" * 16, tier=Tier.free)
    pa, pb = f"{a.external_id}:", f"{b.external_id}:"
    victim = await login(b)
    await victim.execute("SET", f"{pb}secret", "b-data")
    attacker = await login(a)
    assert await attacker.execute("SET", f"{pa}mine", "1") == "OK"
    assert await attacker.execute("EVAL", "return redis.call('GET', KEYS[1])", 1, f"{pa}mine") == b"1"
    assert await attacker.execute("SELECT", 0) == "OK"  # the URL's own db, as some clients send it

    for cmd in (("GET", f"{pb}secret"), ("SET", f"{pb}secret", "x"), ("DEL", f"{pb}secret"), ("SET", "plain", "x"),
                ("KEYS", "*"), ("SCAN", 0), ("RANDOMKEY",), ("DBSIZE",), ("FLUSHALL",), ("FLUSHDB",), ("SELECT", 1),
                ("MOVE", f"{pa}mine", 1), ("COPY", f"{pa}mine", f"{pb}secret"), ("RENAME", f"{pa}mine", f"{pb}x"),
                ("CLIENT", "TRACKING", "ON", "BCAST"), ("PUBSUB", "CHANNELS"), ("SUBSCRIBE", f"{pb}events"),
                ("PUBLISH", f"{pb}events", "x"), ("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"),
                ("ACL", "LIST"), ("ACL", "SETUSER", a.external_id, "~*"), ("INFO", "keyspace"),
                ("FUNCTION", "FLUSH"), ("SCRIPT", "KILL"), ("SCRIPT", "FLUSH"), ("CLIENT", "LIST"),
                ("REPLICAOF", "127.0.0.1", shared_redis.port), ("MONITOR",)):  # fmt: skip
        message = await refused(attacker, *cmd)
        assert "NOPERM" in message, (cmd, message)
        assert "b-data" not in message
    # Lua cannot reach around the key patterns either
    message = await refused(attacker, "EVAL", f"return redis.call('GET', '{pb}secret')", 0)
    assert "b-data" not in message and "can't access" in message
    assert await victim.execute("GET", f"{pb}secret") == b"b-data"  # untouched

    # Dropping A: its user is gone (A's login fails, its connection is closed), its keys deleted, B's kept,
    # and the aclfile no longer lists it (it would come back at the server's next start otherwise).
    await external.drop(a.external_id)
    with pytest.raises((RedisReplyError, ConnectionError)):
        await attacker.execute("GET", f"{pa}mine")
    probe = await RespConnection.open("127.0.0.1", shared_redis.port)
    assert "WRONGPASS" in await refused(probe, "AUTH", a.external_id, a.credentials.password.get_secret_value())
    await probe.close()
    admin = await shared_redis.admin()
    assert await admin.execute("EXISTS", f"{pa}mine") == 0
    assert await admin.execute("GET", f"{pb}secret") == b"b-data"
    await admin.close()
    acl = (shared_redis.dir / "users.acl").read_text()
    assert f"user {b.external_id} on" in acl and a.external_id not in acl
    assert b.credentials.password.get_secret_value() not in acl  # only its hash
    await external.drop(a.external_id)  # idempotent
    await external.drop(b.external_id)
    await victim.close()


async def test_services_get_the_key_prefix_with_the_url(make_core, external: ExternalRedisProvider) -> None:
    core = make_core(redis=external)
    acct = await core.account("ext")
    name = core.name("ext")
    project, _ = await core.projects.ensure(acct, name)
    info = await core.databases.ensure(project.id, DatabaseRequest(type="redis"))
    assert info.provider == "redis"  # agents are not told which backend serves it
    env = await core.databases.env_for(project.id)
    prefix = env["REDIS_KEY_PREFIX"].get_secret_value()
    assert prefix == f"{info.user}:" and env["REDIS_URL"].get_secret_value().startswith(f"redis://{info.user}:")
    handle = DatabaseHandle(provider="redis-external", tier=Tier.free, external_id=info.user,
                            credentials=_creds(info))  # fmt: skip
    conn = await login(handle)
    assert await conn.execute("SET", f"{prefix}sessions:1", "x") == "OK"
    await conn.close()
    assert await core.databases.drop(project.id)


def _creds(info):  # type: ignore[no-untyped-def]
    from inkmcp.providers.database.base import DatabaseCredentials

    return DatabaseCredentials(host=info.host, port=info.port, database=info.database, user=info.user,
                               password=info.password, scheme="redis")  # fmt: skip


def test_a_bad_url_names_the_setting() -> None:
    with pytest.raises(InvalidArgument, match="INKMCP_REDIS_URL") as e:
        ExternalRedisProvider(SecretStr("http://cache:6379"))
    assert "redis://" in (e.value.fix or "")
