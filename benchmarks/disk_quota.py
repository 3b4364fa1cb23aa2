"""What the per-project disk (INKMCP_MAX_DISK_MB, local/diskquota.py) costs: its primitives, and a release with it.

Rounds alternate the limit off and on (same machine, same moment): per round, one first release of a new
project (with the limit: the image is made, formatted and mounted, the home and service bind-mounted, and the
checkout copied onto the project's filesystem instead of renamed) and one redeploy of the same service (the copy
only). Then the primitives alone: a project's filesystem made and mounted, a service bound, and a restart's
unmount_all + mount_all for 10 projects. Prints medians and the on/off ratio.

    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/disk_quota.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inkmcp.providers.compute.local import LocalComputeProvider
from inkmcp.providers.compute.local.diskquota import ProjectDisks
from tests.local.conftest import WEB_APP, key_for, request_for, web_plan
from tests.support import traversable_tmpdir


def checkout(root: Path, files: int) -> Path:
    """A small app plus `files` files of 8 KiB (a typical repo's few MB)."""
    d = root / uuid.uuid4().hex
    (d / "assets").mkdir(parents=True)
    (d / "app.py").write_text(WEB_APP)
    for i in range(files):
        (d / "assets" / f"f{i}.txt").write_bytes(os.urandom(8192))
    return d


async def events(step: object, detail: str) -> None:
    pass


async def no_record(scope: object, ref: object) -> None:
    raise AssertionError("the local provider never records refs")


async def one_round(data: Path, disk_mb: int, files: int) -> tuple[float, float]:
    provider = LocalComputeProvider(data, proxy_port=0, health_timeout=15.0, stability_window=0.3,
                                    max_disk_mb=disk_mb)  # fmt: skip
    await provider.start()
    pid = uuid.uuid4().hex
    key = key_for(pid)
    try:
        t0 = time.perf_counter()
        await provider.release(request_for(key, checkout(data.parent, files), web_plan()), events, no_record)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        await provider.release(request_for(key, checkout(data.parent, files), web_plan()), events, no_record)
        again = time.perf_counter() - t0
        await provider.remove(key)
        await provider.remove_project(pid)
    finally:
        await provider.close()
    return first, again


def primitives(data: Path, projects: int = 10) -> dict[str, float]:
    disks = ProjectDisks(data, size_mb=4096)
    for parent in ("services", "homes", "projects"):
        (data / parent).mkdir(mode=0o711, parents=True, exist_ok=True)
    made, bound = [], []
    ids = [uuid.uuid4().hex for _ in range(projects)]
    for pid in ids:
        t0 = time.perf_counter()
        disks.ensure_project(pid)
        made.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        disks.bind_service(pid, data / "services" / f"svc-{pid[:8]}")
        bound.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    disks.unmount_all()
    down = time.perf_counter() - t0
    t0 = time.perf_counter()
    disks.mount_all()
    up = time.perf_counter() - t0
    disks.unmount_all()
    allocated = sum(p.stat().st_blocks * 512 for p in (data / "disks").glob("*.img")) / len(ids)
    return {"create+mount ms p50": statistics.median(made) * 1000, "bind ms p50": statistics.median(bound) * 1000,
            f"unmount_all {projects} projects ms": down * 1000, f"mount_all {projects} projects ms": up * 1000,
            "host MiB per new 4 GiB image": allocated / 2**20}  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--files", type=int, default=300, help="8 KiB files in the checkout besides app.py")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the limit is only enforced as root")
    print(f"loadavg at start: {Path('/proc/loadavg').read_text().strip()}")
    root = traversable_tmpdir("inkmcp-bench-disk-")
    try:
        times: dict[str, list[float]] = {"off first": [], "on first": [], "off again": [], "on again": []}
        for r in range(args.rounds):
            for mode in (("off", "on") if r % 2 == 0 else ("on", "off")):
                data = root / f"{mode}-{r}" / "compute"
                first, again = await one_round(data, 4096 if mode == "on" else 0, args.files)
                times[f"{mode} first"].append(first)
                times[f"{mode} again"].append(again)
        for what in ("first", "again"):
            off, on = statistics.median(times[f"off {what}"]), statistics.median(times[f"on {what}"])
            print(f"release ({what}): off {off * 1000:.0f} ms, on {on * 1000:.0f} ms p50; on/off {on / off:.2f}; "
                  f"on - off {(on - off) * 1000:.0f} ms")
        for name, value in primitives(root / "primitives" / "compute").items():
            print(f"{name}: {value:.1f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
