"""The Redis add-on's servers (providers/database/redis.py) for real: per-project redis-server processes, and one
project's credentials getting nothing of another project's Redis, proved from the attacker's connection."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from inkmcp.errors import ProviderError
from inkmcp.providers.database.base import DatabaseHandle, Tier
from inkmcp.providers.database.redis import RedisProvider, RedisReplyError, RedisSettings, RespConnection
from tests.requirements import require, require_root

HAVE_REDIS = shutil.which("redis-server") is not None


def redis_settings() -> RedisSettings:
    """A port range of its own, so concurrent test sessions do not hand out the same ports."""
    low = random.randrange(20000, 29000, 100)
    return RedisSettings(port_min=low, port_max=low + 99)


@contextlib.asynccontextmanager
async def redis_provider(base: Path | None = None) -> AsyncIterator[RedisProvider]:
    """A provider over a private directory; afterwards every instance it has is stopped (by the PID in its own
    pidfile, checked to be that instance's redis-server) and the directory removed."""
    require("redis", HAVE_REDIS, "redis-server is not on PATH")
    own = base is None
    base = base or Path(tempfile.mkdtemp(prefix="inkmcp-redis-test-"))
    provider = RedisProvider(base / "redis", redis_settings())
    try:
        yield provider
    finally:
        await provider.close()
        for ident in provider.idents():
            provider.instance(ident).stop()
        if own:
            shutil.rmtree(base, ignore_errors=True)


async def login(handle: DatabaseHandle, *, user: str | None = None, password: str | None = None,
                port: int | None = None) -> RespConnection:
    c = handle.credentials
    conn = await RespConnection.open(c.host, port or c.port)
    await conn.execute("AUTH", user or c.user, password or c.password.get_secret_value())
    return conn


async def refused(conn: RespConnection, *cmd: str | int) -> str:
    with pytest.raises(RedisReplyError) as e:
        await conn.execute(*cmd)
    return str(e.value)


async def test_one_projects_credentials_reach_nothing_of_anothers_redis() -> None:
    async with redis_provider() as provider:
        a = await provider.provision(owner_slug="a" * 32, tier=Tier.free)
        b = await provider.provision(owner_slug="b" * 32, tier=Tier.free)
        assert a.credentials.port != b.credentials.port
        victim = await login(b)
        await victim.execute("SET", "session:secret", "b-data")
        await victim.execute("HSET", "celery", "task", "b-task")

        # The attacker holds A's credentials. B's server refuses them, as user A and as user B.
        pw_a = a.credentials.password.get_secret_value()
        for user in (a.credentials.user, b.credentials.user, "default"):
            probe = await RespConnection.open(b.credentials.host, b.credentials.port)
            assert "WRONGPASS" in await refused(probe, "AUTH", user, pw_a)
            assert "NOAUTH" in await refused(probe, "GET", "session:secret")  # still not logged in
            await probe.close()
        anon = await RespConnection.open(b.credentials.host, b.credentials.port)
        assert "NOAUTH" in await refused(anon, "KEYS", "*")
        await anon.close()

        # On its own server A sees only its own keys: B's are not there to read, list or scan.
        attacker = await login(a)
        await attacker.execute("SET", "mine", "1")
        assert await attacker.execute("GET", "session:secret") is None
        assert await attacker.execute("KEYS", "*") == [b"mine"]
        cursor, keys = await attacker.execute("SCAN", 0, "MATCH", "*", "COUNT", 1000)  # type: ignore[misc]
        assert cursor == b"0" and keys == [b"mine"]
        for db in range(16):  # no other logical db holds them either
            await attacker.execute("SELECT", db)
            assert await attacker.execute("DBSIZE") == (1 if db == 0 else 0)
        await attacker.execute("SELECT", 0)

        # Administrative commands are refused to the project user on its own server.
        for cmd in (("CONFIG", "SET", "dir", "/tmp"), ("CONFIG", "GET", "*"), ("ACL", "LIST"),
                    ("ACL", "SETUSER", "evil", "on", ">x", "~*", "+@all"), ("ACL", "GETUSER", b.credentials.user),
                    ("REPLICAOF", b.credentials.host, str(b.credentials.port)), ("SLAVEOF", "127.0.0.1", "1"),
                    ("MIGRATE", b.credentials.host, str(b.credentials.port), "mine", "0", "1000"),
                    ("SHUTDOWN", "NOSAVE"), ("MONITOR",), ("SAVE",),
                    ("BGSAVE",), ("SYNC",), ("CLIENT", "KILL", "TYPE", "normal"), ("CLIENT", "LIST")):
            assert "NOPERM" in await refused(attacker, *cmd), cmd
        for cmd in (("DEBUG", "SLEEP", "0"), ("MODULE", "LOAD", "/tmp/x.so")):  # disabled outright
            assert "command not allowed" in await refused(attacker, *cmd), cmd
        # FLUSHALL is the app's to use on its own data: B's data stays.
        assert await attacker.execute("FLUSHALL") == "OK"
        assert await attacker.execute("KEYS", "*") == []
        assert await victim.execute("GET", "session:secret") == b"b-data"
        assert await victim.execute("HGET", "celery", "task") == b"b-task"
        for conn in (attacker, victim):
            await conn.close()


async def test_apps_use_unprefixed_keys_and_the_commands_their_libraries_send() -> None:
    """What Celery/RQ/Sidekiq/Django's cache send: plain key names, INFO, KEYS, FLUSHDB, pub/sub, Lua, MULTI."""
    async with redis_provider() as provider:
        h = await provider.provision(owner_slug="c" * 32, tier=Tier.free)
        conn = await login(h)
        assert await conn.execute("INCR", "hits") == 1
        assert await conn.execute("LPUSH", "rq:queue:default", "job") == 1
        assert b"redis_version:7" in await conn.execute("INFO", "server")  # type: ignore[operator]
        assert await conn.execute("CLIENT", "SETNAME", "worker-1") == "OK"
        assert await conn.execute("EVAL", "return redis.call('GET', KEYS[1])", 1, "hits") == b"1"
        assert await conn.execute("PUBLISH", "events", "x") == 0
        assert await conn.execute("MULTI") == "OK"
        assert await conn.execute("SET", "k", "v") == "QUEUED"
        assert await conn.execute("EXEC") == ["OK"]
        assert sorted(await conn.execute("KEYS", "*")) == [b"hits", b"k", b"rq:queue:default"]  # type: ignore[arg-type]
        assert await conn.execute("FLUSHDB") == "OK"
        await conn.close()


async def test_data_and_url_survive_a_restart_and_drop_deletes_them() -> None:
    base = Path(tempfile.mkdtemp(prefix="inkmcp-redis-test-"))
    try:
        async with redis_provider(base) as first:
            h = await first.provision(owner_slug="d" * 32, tier=Tier.free)
            conn = await login(h)
            await conn.execute("SET", "order:1", "paid")
            await conn.close()
            pid = first.instance(h.external_id).running_pid()
            assert pid is not None
        # close() stopped the instance this provider started: the process is gone and the port closed
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        with pytest.raises(OSError):
            await RespConnection.open(h.credentials.host, h.credentials.port, timeout=1)

        async with redis_provider(base) as second:  # InkMCP starting again, e.g. after a reboot
            second.settings = first.settings
            assert await second.start() == []
            conn = await login(h)  # same port, same password: REDIS_URL did not change
            assert await conn.execute("GET", "order:1") == b"paid"
            await conn.close()
            # a second start adopts the running instance rather than starting another
            pid = second.instance(h.external_id).running_pid()
            assert await second.start() == [] and second.instance(h.external_id).running_pid() == pid

            await second.drop(h.external_id)
            assert not (second.base / h.external_id).exists()
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            await second.drop(h.external_id)  # idempotent
    finally:
        shutil.rmtree(base, ignore_errors=True)


async def test_provisioning_again_changes_the_password_and_keeps_the_data() -> None:
    """A crash between creating and recording: the next provision must hand out working credentials."""
    async with redis_provider() as provider:
        first = await provider.provision(owner_slug="e" * 32, tier=Tier.free)
        conn = await login(first)
        await conn.execute("SET", "kept", "yes")
        await conn.close()
        again = await provider.provision(owner_slug="e" * 32, tier=Tier.free)
        assert again.credentials.port == first.credentials.port
        assert again.credentials.password != first.credentials.password
        probe = await RespConnection.open(first.credentials.host, first.credentials.port)
        assert "WRONGPASS" in await refused(probe, "AUTH", first.credentials.user,
                                            first.credentials.password.get_secret_value())
        await probe.close()
        conn = await login(again)
        assert await conn.execute("GET", "kept") == b"yes"
        await conn.close()


async def test_instances_run_unprivileged_and_other_users_cannot_read_their_files() -> None:
    require_root("the instances run as the inkmcp-redis system user only when InkMCP is root")
    async with redis_provider() as provider:
        h = await provider.provision(owner_slug="f" * 32, tier=Tier.free)
        conn = await login(h)
        await conn.execute("SET", "card", "4242-secret")
        await conn.close()
        inst = provider.instance(h.external_id)
        pid = inst.running_pid()
        assert pid is not None
        assert psutil.Process(pid).username() == "inkmcp-redis"
        # Another tenant's app user (here: nobody) cannot read the data or the password hash.
        nobody = pwd.getpwnam("nobody")
        for target in (inst.dir / "appendonlydir", inst.dir / "users.acl", inst.dir / "redis.conf"):
            proc = await asyncio.to_thread(
                subprocess.run, ["cat", str(target)], capture_output=True, text=True, check=False,
                user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
            )
            assert proc.returncode != 0 and "Permission denied" in proc.stderr, target
        listing = await asyncio.to_thread(
            subprocess.run, ["ls", str(provider.base)], capture_output=True, text=True, check=False,
            user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
        )
        assert listing.returncode != 0 and h.external_id not in listing.stdout  # projects' ids are not listed
        assert oct(os.stat(inst.dir).st_mode & 0o777) == "0o700"


async def test_no_free_port_is_a_clear_error() -> None:
    async with redis_provider() as provider:
        provider.settings = RedisSettings(port_min=provider.settings.port_min, port_max=provider.settings.port_min)
        await provider.provision(owner_slug="1" * 32, tier=Tier.free)
        with pytest.raises(Exception, match="INKMCP_REDIS_PORT_MIN/INKMCP_REDIS_PORT_MAX") as e:
            await provider.provision(owner_slug="2" * 32, tier=Tier.free)
        assert str(provider.base) not in str(e.value)


def test_settings_reject_a_reversed_port_range_and_an_unknown_policy() -> None:
    with pytest.raises(ValueError, match="INKMCP_REDIS_PORT_MIN must not exceed"):
        RedisSettings(port_min=17000, port_max=16000)
    with pytest.raises(ValueError, match="noeviction"):
        RedisSettings(maxmemory_policy="lru")


async def test_concurrent_provisions_give_one_instance_per_project_and_distinct_ports() -> None:
    async with redis_provider() as provider:
        same = await asyncio.gather(*[provider.provision(owner_slug="7" * 32, tier=Tier.free) for _ in range(3)])
        others = await asyncio.gather(*[provider.provision(owner_slug=f"{i}" * 32, tier=Tier.free) for i in (8, 9)])
        assert provider.idents() == sorted({h.external_id for h in (*same, *others)})
        assert len({h.credentials.port for h in same}) == 1  # one instance, one port for the project
        assert len({h.credentials.port for h in (same[0], *others)}) == 3
        # the last provision's password is the one that works (each call resets it, as Postgres does)
        winners = []
        for h in same:
            probe = await RespConnection.open(h.credentials.host, h.credentials.port)
            try:
                pw = h.credentials.password.get_secret_value()
                winners.append(await probe.execute("AUTH", h.credentials.user, pw))
            except RedisReplyError:
                pass
            await probe.close()
        assert winners == ["OK"]


async def test_a_missing_redis_server_says_which_setting_to_fix() -> None:
    async with redis_provider() as provider:
        provider.settings = RedisSettings(server_bin="/nonexistent/redis-server")
        with pytest.raises(ProviderError, match="INKMCP_REDIS_SERVER_BIN") as e:
            await provider.provision(owner_slug="a" * 32, tier=Tier.free)
        assert "redis-server package" in (e.value.fix or "")
        assert provider.idents() == []  # nothing half-made is left for start() to retry


async def test_an_instance_that_dies_is_restarted_with_its_data() -> None:
    async with redis_provider() as provider:
        provider.settings = provider.settings.model_copy(update={"watch_seconds": 0.1})
        assert await provider.start() == []
        h = await provider.provision(owner_slug="9" * 32, tier=Tier.free)
        conn = await login(h)
        await conn.execute("SET", "order:7", "shipped")
        await conn.close()
        inst = provider.instance(h.external_id)
        aof = inst.dir / "appendonlydir"
        deadline = time.monotonic() + 5
        while not any(b"order:7" in f.read_bytes() for f in aof.glob("*.incr.aof")):  # fsync'd (everysec)
            assert time.monotonic() < deadline, "the write never reached the AOF"
            await asyncio.sleep(0.05)
        pid = inst.running_pid()
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # a crash, not a shutdown
        deadline = time.monotonic() + 10
        while (inst.running_pid() in (None, pid)):
            assert time.monotonic() < deadline, "the watchdog did not restart the instance"
            await asyncio.sleep(0.05)
        conn = await login(h)  # same port and password
        assert await conn.execute("GET", "order:7") == b"shipped"
        await conn.close()
