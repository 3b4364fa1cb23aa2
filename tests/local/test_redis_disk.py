"""A project's Redis on an image of its own (providers/database/redis.py, diskquota.NamedDisks), the upgrade path.

An instance made before (its directory on the data dir's filesystem) and still running when the new InkMCP starts
is stopped (its AOF flushed), copied onto its new image and started again: its data is there, its files are on the
image, nothing is left on the host filesystem; the provider's close unmounts what it stopped, and a drop removes
image and mount; with InkMCP stopped, `inkmcp backup create` mounts the images to read the instances' files.
Real redis-server, real ext4 image and loop device (root).
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from inkmcp.providers.compute.local.diskquota import NamedDisks, is_mounted
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.redis import (
    RedisProvider,
    RedisSettings,
    RespConnection,
    _ensure_user,
    redis_files_mounted,
)
from tests.requirements import is_root, requires
from tests.support import traversable_tmpdir

pytestmark = [pytest.mark.asyncio, requires("root", is_root(), "loop devices and mounts need root"),
              requires("redis", shutil.which("redis-server") is not None, "redis-server is not on PATH")]  # fmt: skip


def _disks(data: Path) -> NamedDisks:
    user = _ensure_user()
    assert user is not None
    return NamedDisks(data / "compute", "redis", data / "redis", size_mb=32, setting="INKMCP_REDIS_DISK_MB",
                      what="Redis instance", owner=(user.pw_uid, user.pw_gid), overcommit=64, inner=None)  # fmt: skip


async def test_a_running_instance_from_before_moves_onto_its_own_image() -> None:
    low = random.randrange(20000, 29000, 100)
    settings = RedisSettings(port_min=low, port_max=low + 99, watch_seconds=0)
    data = traversable_tmpdir("inkmcp-redisdisk-") / "data"
    old = RedisProvider(data / "redis", settings)  # as before: no image
    new = RedisProvider(data / "redis", settings, disks=_disks(data))
    try:
        handle = await old.provision(owner_slug="upgrade", tier=Tier.free)
        c = handle.credentials
        conn = await RespConnection.open(c.host, c.port)
        await conn.execute("AUTH", c.user, c.password.get_secret_value())
        await conn.execute("SET", "kept", "from before")
        await conn.close()
        directory = data / "redis" / handle.external_id
        assert not is_mounted(directory) and old.instance(handle.external_id).running_pid() is not None

        assert await new.start() == []  # the new InkMCP's start: stopped, copied, mounted, started again
        assert is_mounted(directory) and os.stat(directory).st_dev != os.stat(data).st_dev
        assert new.instance(handle.external_id).running_pid() is not None
        conn = await RespConnection.open(c.host, c.port)
        await conn.execute("AUTH", c.user, c.password.get_secret_value())
        assert await conn.execute("GET", "kept") == b"from before"
        await conn.close()
        assert (directory / "appendonlydir").is_dir() and not list((data / "redis").glob(".*pre-disk*"))

        await new.close()  # stops what it started, then unmounts it
        assert not is_mounted(directory) and new.instance(handle.external_id).running_pid() is None
        assert not (directory / "instance.json").exists()  # what `inkmcp backup create` saw with InkMCP stopped
        with redis_files_mounted(data / "redis"):  # what it does now (a marked block in backup/create.py)
            assert (directory / "instance.json").exists() and (directory / "appendonlydir").is_dir()
        assert not is_mounted(directory)
        assert await new.start() == [] and is_mounted(directory)  # mounted again before it starts
        await new.drop(handle.external_id)
        assert not is_mounted(directory) and not directory.exists()
        assert not (data / "compute" / "disks" / "redis" / f"{handle.external_id}.img").exists()
    finally:
        await new.close()
        for ident in new.idents():
            new.instance(ident).stop()
        _disks(data).unmount_all()
        shutil.rmtree(data.parent, ignore_errors=True)
