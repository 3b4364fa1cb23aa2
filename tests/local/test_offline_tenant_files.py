"""A provider that was not started (what `inkmcp logs` and other CLI commands open while `serve` is stopped) reads
and removes a service's files on its project's own filesystem (diskquota), and the CLI's mounts stay its own.

Real ext4 images, loop devices and bind mounts (root), a real release through the started provider first. Before
(mender7): with `serve` stopped the images are unmounted, so the provider read an empty mount point (`inkmcp logs`
printed nothing) and a removal deleted the empty mount point, leaving the service's files on the image.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from inkmcp.providers.compute.base import LogScope
from inkmcp.providers.compute.local.diskquota import mount_points
from inkmcp.providers.compute.local.provider import LocalComputeProvider
from tests.local.conftest import WEB_APP, Events, key_for, no_record, request_for, web_plan
from tests.requirements import is_root, requires

pytestmark = requires("root", is_root(), "loop devices and mounts need root")


def _ours(data: Path) -> list[str]:
    return sorted(p for p in mount_points() if p.startswith(str(data) + "/"))


async def test_a_provider_not_started_reads_and_removes_the_files_on_the_projects_filesystem(
        make_provider, checkouts, project_ids, data_dir: Path) -> None:
    pid = project_ids()
    key, other = key_for(pid), key_for(pid, service="other")
    served = await make_provider(max_disk_mb=32, disk_overcommit=64)
    for k in (key, other):
        await served.release(request_for(k, checkouts({"app.py": WEB_APP}), web_plan()), Events(), no_record)
    await served.close()  # `serve` stopped: every mount of the data dir gone
    assert _ours(data_dir) == []
    service_dir = data_dir / "services" / key.service_id
    assert not any(service_dir.iterdir())  # the empty mount point the old code read

    offline = LocalComputeProvider(data_dir, proxy_port=0, max_disk_mb=32, disk_overcommit=64)  # never started
    try:
        lines = await offline.logs(key, LogScope.runtime, deployment_id=None, tail=50)
        assert any(line.startswith("web | listening on") for line in lines), lines
        build = await offline.logs(key, LogScope.build, deployment_id=None, tail=50)
        assert any("build complete" in line for line in build), build

        await offline.remove(key)
        inner = offline.disks.inner(pid) / "services"
        assert sorted(p.name for p in inner.iterdir()) == [other.service_id]  # its files went, the other's stay
        assert not service_dir.exists()
        assert any((inner / other.service_id).iterdir())
    finally:
        offline.disks.unmount_all()  # what the CLI's own mount namespace does for it when it exits
    assert _ours(data_dir) == []


def test_the_clis_mounts_stay_in_its_own_namespace(data_dir: Path) -> None:
    """cli.private_mounts: a mount made after it is seen by the process itself, not by the host, and is gone
    with the process (nothing to unmount, no loop device left)."""
    target = data_dir / "point"
    target.mkdir()
    script = (
        "import os, subprocess, sys\n"
        "from inkmcp.cli import private_mounts\n"
        "assert private_mounts()\n"
        f"subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'none', {str(target)!r}], check=True)\n"
        f"open(os.path.join({str(target)!r}, 'seen'), 'w').write('x')\n"
        "print(sum(1 for line in open('/proc/self/mounts') if line.split()[1] == " + repr(str(target)) + "))\n"
        "sys.stdin.readline()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "1"  # mounted, in its namespace
        assert str(target) not in mount_points()  # never in the host's
        assert not (target / "seen").exists()
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert str(target) not in mount_points() and os.listdir(target) == []
