"""A deleted project's image leaves its loop device even while other tenants' processes run (propagation.py).

Every tenant process has a mount namespace of its own, a slave of the host's. Where the data dir lies on a
private mount (a container's `/`, this CI's), such a namespace kept a copy of every image mounted when it
started: deleting a project left its image attached to a loop device, its space not freed, as long as any
older tenant process lived. With the data dir made a shared mount the unmount reaches those copies.
Real images, loop devices, and a tenant process started through the real sandbox (`build.process.spawn`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.build.process import TenantSandbox, kill_process_group, spawn
from inkmcp.providers.compute.local import propagation
from inkmcp.providers.compute.local.diskquota import ProjectDisks, mount_points
from tests.requirements import is_root, requires
from tests.support import traversable_tmpdir, wait_for

pytestmark = requires("root", is_root(), "loop devices, mounts and mount namespaces need root")


@pytest.fixture
def root() -> Iterator[Path]:
    root = traversable_tmpdir("inkmcp-propagation-")
    for name in ("compute/services", "compute/homes", "compute/projects", "tmp"):
        (root / name).mkdir(mode=0o711, parents=True)
    yield root
    ProjectDisks(root / "compute", size_mb=1).unmount_all()
    propagation.release(root)
    left = [p for p in mount_points() if p == str(root) or p.startswith(f"{root}/")]
    shutil.rmtree(root, ignore_errors=True)
    assert not left, left


def _loop_of(image: Path) -> str:
    out = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=True).stdout
    assert out.count("/dev/loop") == 1, out
    return out.split(":", 1)[0].removeprefix("/dev/")


def _attached(loop: str) -> bool:
    """Whether the loop device still has a backing file (autoclear detaches it once its last mount is gone)."""
    try:
        return bool(Path(f"/sys/block/{loop}/loop/backing_file").read_text().strip())
    except FileNotFoundError:
        return False


async def _detached_within(loop: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _attached(loop):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _tenant_process(root: Path) -> asyncio.subprocess.Process:
    """A long-lived process in a sandbox namespace of its own, as every build step and app runs."""
    sandbox = TenantSandbox(run_as=None, tmp_dir=root / "tmp")
    proc, _ = await spawn(["/bin/sleep", "120"], cwd=Path("/"), env={"PATH": "/usr/bin:/bin"}, sandbox=sandbox)


    async def own_namespace() -> bool:  # it copied the host's mounts at its unshare (a fixed 0.2 s: late at load)
        return os.readlink(f"/proc/{proc.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

    await wait_for(own_namespace, timeout=10, what="the tenant process's own mount namespace")
    return proc


async def test_a_deleted_projects_image_is_released_while_older_tenant_processes_run(root: Path) -> None:
    disks = ProjectDisks(root / "compute", size_mb=16)
    # Control, without the shared mount: the older tenant namespace keeps the deleted image's loop device.
    assert disks.ensure_project("before") is not None
    loop = _loop_of(disks.image("before"))
    tenant = await _tenant_process(root)
    try:
        disks.remove_project("before", root / "compute" / "homes" / "ink-before")
        assert not await _detached_within(loop, 2.0), "the kernel let go of it anyway: this test proves nothing here"
    finally:
        await kill_process_group(tenant)
    assert await _detached_within(loop, 10.0)  # its copy went with the namespace

    propagation.share(root)
    assert disks.ensure_project("after") is not None
    loop = _loop_of(disks.image("after"))
    tenant = await _tenant_process(root)
    try:
        disks.remove_project("after", root / "compute" / "homes" / "ink-after")
        assert await _detached_within(loop, 5.0), "the tenant's namespace still holds the deleted image"
        assert tenant.returncode is None  # and the older tenant process runs on
    finally:
        await kill_process_group(tenant)


def test_release_leaves_a_data_dir_with_mounts_beneath_and_an_operators_own_mount(root: Path) -> None:
    propagation.share(root)
    disks = ProjectDisks(root / "compute", size_mb=16)
    assert disks.ensure_project("kept") is not None
    propagation.release(root)  # an image is still mounted beneath: the bind stays, for the next serve to adopt
    assert str(root) in mount_points() and disks.image("kept").exists()
    propagation.share(root)  # a restart finds it in place: nothing stacked twice
    assert sum(1 for p in _mount_lines() if p == str(root)) == 1
    disks.unmount_all()
    propagation.release(root)
    assert str(root) not in mount_points() and not (root / propagation.MARKER).exists()

    # A data dir that is a mount of the operator's own (no marker) is never unmounted by InkMCP.
    subprocess.run(["mount", "--bind", str(root), str(root)], check=True)
    try:
        propagation.release(root)
        assert str(root) in mount_points()
    finally:
        subprocess.run(["umount", str(root)], check=True)


def _mount_lines() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f]


def test_release_unbinds_while_a_slave_namespace_holds_mounts_beneath_its_copy(root: Path) -> None:
    """A namespace made a slave after `share` (a tenant's, or another server's process) with a mount of its own
    under its copy of the data dir and its cwd there: `release` takes the bind away here, the data dir can be used
    and removed, and the other namespace keeps what it mounted. (CI run 57 saw the plain unmount fail with EBUSY at
    a stop, leaving the bind, and `rm -rf` of the data dir failed: `release` now detaches on EBUSY. This set-up does
    not reproduce that EBUSY; it checks the release around it.)"""
    propagation.share(root)
    assert str(root) in mount_points()
    holder = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "slave", "sh", "-c",
         f"mount -t tmpfs held {root}/tmp && cd {root}/tmp && echo mounted && exec sleep 60"],
        stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "mounted"
        propagation.release(root)
        assert str(root) not in mount_points() and not (root / propagation.MARKER).exists()
        scratch = root / "gone"
        scratch.mkdir()
        os.rmdir(scratch)  # the directory itself works as before
        inside = Path(f"/proc/{holder.pid}/mountinfo").read_text()
        assert f"{root}/tmp " in inside  # the other namespace's own mount is untouched
    finally:
        holder.kill()
        holder.wait()
