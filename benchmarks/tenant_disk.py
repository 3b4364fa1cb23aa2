"""What a tenant database's own disk costs (store/tenant_disks.py): provision, drop, writes; and a Redis instance's.

One embedded tenant server in a scratch data dir; rounds alternate between a provider without tablespaces (the old
way: the database in pg_default) and one with them (an image created, mounted, a tablespace made, the database
created in it), so both see the same load. Per round and mode: `provision` of a new database, 16 MiB written by
its tenant (1 MiB INSERTs of incompressible text), `drop`. Then a Redis instance provisioned and dropped with and
without its image; and what the tenant server's start/stop add for 10 databases (mount_all/unmount_all). Run as
root (images need mounts), under the shared lock:

    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/tenant_disk.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inkmcp.providers.compute.local.diskquota import NamedDisks
from inkmcp.providers.database.base import Tier
from inkmcp.providers.database.postgres import PostgresDatabaseProvider
from inkmcp.providers.database.redis import RedisProvider, RedisSettings, _ensure_user
from inkmcp.store.embedded import EmbeddedPostgres
from inkmcp.store.tenant_disks import TenantDiskSettings, tablespace_disks
from tests.support import free_port

FILL = "INSERT INTO fill SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 32768)"


def ms(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs) * 1000:7.1f} ms  (min {min(xs) * 1000:.1f}, max {max(xs) * 1000:.1f})"


async def pg_round(provider: PostgresDatabaseProvider, slug: str, port: int, out: dict[str, list[float]]) -> None:
    t0 = time.perf_counter()
    handle = await provider.provision(owner_slug=slug, tier=Tier.free)
    out["provision"].append(time.perf_counter() - t0)
    c = handle.credentials
    with psycopg.connect(host="127.0.0.1", port=port, user=c.user, password=c.password.get_secret_value(),
                         dbname=c.database, autocommit=True) as conn:  # fmt: skip
        conn.execute("CREATE TABLE fill (b text STORAGE EXTERNAL)")
        t0 = time.perf_counter()
        for _ in range(16):
            conn.execute(FILL)
        out["write 16 MiB"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    await provider.drop(handle.external_id)
    out["drop"].append(time.perf_counter() - t0)


async def redis_round(provider: RedisProvider, slug: str, out: dict[str, list[float]]) -> None:
    t0 = time.perf_counter()
    handle = await provider.provision(owner_slug=slug, tier=Tier.free)
    out["redis provision"].append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    await provider.drop(handle.external_id)
    out["redis drop"].append(time.perf_counter() - t0)


async def main(rounds: int) -> None:
    print("load average at start:", Path("/proc/loadavg").read_text().split()[:3])
    base = Path(tempfile.mkdtemp(prefix="inkmcp-bench-tdisk-", dir="/var/tmp"))
    base.chmod(0o711)
    data = base / "data"
    port = free_port()
    server = EmbeddedPostgres(data / "pg" / "tenants", port=port)
    server.start()
    modes = {
        "pg_default": PostgresDatabaseProvider(server.url(driver=None), public_host="127.0.0.1", public_port=port),
        "own disk": PostgresDatabaseProvider(
            server.url(driver=None), public_host="127.0.0.1", public_port=port,
            tablespaces=tablespace_disks(data, TenantDiskSettings(tenant_pg_disk_mb=1024), overcommit=64)),
    }
    settings = RedisSettings(port_min=26400, port_max=26499, watch_seconds=0)
    user = _ensure_user()
    redis_modes = {
        "no image": RedisProvider(data / "redis-plain", settings),
        "own disk": RedisProvider(data / "redis", settings, disks=NamedDisks(
            data / "compute", "redis", data / "redis", size_mb=256, setting="INKMCP_REDIS_DISK_MB",
            what="Redis instance", owner=None if user is None else (user.pw_uid, user.pw_gid), overcommit=64,
            inner=None)),
    }
    results: dict[str, dict[str, list[float]]] = {m: {"provision": [], "write 16 MiB": [], "drop": [],
                                                      "redis provision": [], "redis drop": []} for m in modes}
    try:
        for r in range(rounds):
            for mode in (list(modes) if r % 2 == 0 else list(reversed(modes))):
                await pg_round(modes[mode], f"bench-{r}-{mode.replace(' ', '')}", port, results[mode])
            for mode, rmode in (("pg_default", "no image"), ("own disk", "own disk")):
                await redis_round(redis_modes[rmode], f"bench-r{r}-{mode.replace(' ', '').replace('_', '')}",
                                  results[mode])
        # what a tenant server's start and stop add: mounting (and unmounting) 10 databases' images
        disks = tablespace_disks(data, TenantDiskSettings(tenant_pg_disk_mb=1024), overcommit=64)
        for i in range(10):
            disks.ensure(f"ink_bench_mount_{i}")
        t0 = time.perf_counter()
        disks.unmount_all()
        unmount_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        disks.mount_all()
        print(f"10 database images: mount_all {(time.perf_counter() - t0) * 1000:.0f} ms, "
              f"unmount_all {unmount_s * 1000:.0f} ms")
        for i in range(10):
            disks.remove(f"ink_bench_mount_{i}")
        for mode, res in results.items():
            print(f"== {mode} ({rounds} rounds)")
            for what, xs in res.items():
                print(f"  {what:16} {ms(xs)}")
        for what in results["pg_default"]:
            a, b = statistics.median(results["pg_default"][what]), statistics.median(results["own disk"][what])
            print(f"  ratio own disk / pg_default, {what:16}: {b / a:.2f} (+{(b - a) * 1000:.0f} ms)")
    finally:
        for provider in redis_modes.values():
            await provider.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    asyncio.run(main(parser.parse_args().rounds))
