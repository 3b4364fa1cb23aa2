"""Red team 2026-12-01, "fill the disk at runtime", attacked again: a hard disk limit per project.

The attack: mallory's app (a lab, tests/security/conftest.py) `posix_fallocate`s 5 x 1 GiB in its HOME, then
writes 1 MiB at a time into every place it can reach (HOME, /tmp, /var/tmp, /run/lock, its release dir) until
the kernel refuses. Before the fix the data dir's filesystem (which also holds the control-plane PostgreSQL)
took all of it. Now each project is on an ext4 image of INKMCP_MAX_DISK_MB (diskquota.py): from her side every
write ends with ENOSPC within that size, the filesystem she sees is that size, and nothing she wrote is on the
data dir's filesystem. Meanwhile alice (another account) deploys and her app answers, and the MCP server does.

Then: a build that fills the disk fails with an error naming INKMCP_MAX_DISK_MB and what to do; the limit holds
for a new release of the same service and after InkMCP restarts (the images are mounted again, the files kept);
and the server leaves no mount or loop device behind when it stops (checked by exact path and image).

One server of its own (INKMCP_MAX_DISK_MB=96), two accounts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.security.conftest import (
    ROOT,
    deploy,
    deploy_live,
    lab_exec,
    lab_live,
    lab_repo,
    security_server,
    session,
    via_proxy,
)
from tests.support import ServerProc, call, git_commit

pytestmark = [pytest.mark.asyncio, ROOT]

LIMIT_MB = 96
MALLORY = "q-mallory"
ALICE = "q-alice"

# Inside mallory's app: the red team's fallocate, then 1 MiB writes into every writable place until refused.
FILL = r'''
import os, errno

def fill(directory, name, cap_mb=400):
    """Write 1 MiB blocks until the kernel refuses; (MiB written, errno name of the refusal)."""
    path = os.path.join(directory, name)
    written, block = 0, b"\xa5" * 2**20
    with open(path, "wb") as f:
        while written < cap_mb:
            try:
                f.write(block)
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                return [written, errno.errorcode.get(e.errno, str(e.errno))]
            written += 1
    return [written, "no refusal"]

def falloc(path, size):
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)

home = os.environ["HOME"]
st = os.statvfs(home)
result = {
    "fs_mb": st.f_blocks * st.f_frsize // 2**20,
    "dev": {p: os.stat(p).st_dev for p in (home, "/tmp", "/var/tmp", os.getcwd())},
    "fallocate": [attempt(falloc, os.path.join(home, f"big{i}"), 2**30) for i in range(5)],
    "home": fill(home, "fill-home"),
    "tmp": fill("/tmp", "fill-tmp"),
    "var_tmp": fill("/var/tmp", "fill-var-tmp"),
    "cwd": fill(os.getcwd(), "fill-cwd"),
    "run_lock": fill("/run/lock", "fill-run-lock") if os.path.isdir("/run/lock") else [0, "absent"],
    "shm": fill("/dev/shm", "fill-shm"),
}
'''

CLEAN = r'''
import os
for d in (os.environ["HOME"], "/tmp", "/var/tmp", os.getcwd(), "/run/lock", "/dev/shm"):
    for name in os.listdir(d) if os.path.isdir(d) else ():
        if name.startswith(("fill-", "big")):
            os.unlink(os.path.join(d, name))
st = os.statvfs(os.environ["HOME"])
kept = os.path.exists(os.path.join(os.environ["HOME"], "keep"))
result = {"free_mb": st.f_bavail * st.f_frsize // 2**20, "kept": kept}
'''


@pytest.fixture(scope="module")
def qserver() -> Iterator[ServerProc]:
    with security_server("inkmcp-quota-", ("alice", "mallory"), INKMCP_MAX_DISK_MB=str(LIMIT_MB),
                         INKMCP_ALLOW_LOCAL_SOURCES="1") as srv:  # fmt: skip
        yield srv
    _assert_nothing_mounted(srv)


def _assert_nothing_mounted(srv: ServerProc) -> None:
    """After the server stopped: no mount under its data dir, no loop device on any of its images."""
    data = str(srv.data_dir)
    with open("/proc/self/mountinfo") as f:
        left = [line.split()[4] for line in f if line.split()[4].startswith(data + "/")]
    assert not left, left
    deadline = time.monotonic() + 10  # the kernel lets go of an unmounted image's loop device just after
    while data in (attached := subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout):
        assert time.monotonic() < deadline, attached
        time.sleep(0.2)


KEEP = "import os\nopen(os.path.join(os.environ['HOME'], 'keep'), 'w').write('kept')\nresult = 1"
HOME_DEV = "import os\nresult = os.stat(os.environ['HOME']).st_dev"


async def _answers(srv: ServerProc, url: str, text: str, timeout: float = 60) -> None:
    """Until the app at `url` answers `text` (after a restart its release is restored in the background)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            if via_proxy(srv, url, timeout=10).text == text:
                return
        except httpx.HTTPError:
            pass
        assert asyncio.get_running_loop().time() < deadline, srv.log()
        await asyncio.sleep(0.5)


def _host_dev(srv: ServerProc) -> int:
    return os.stat(srv.data_dir).st_dev


async def _fills_only_its_own_disk(srv: ServerProc, url: str) -> None:
    """mallory's app fills its disk again: HOME ends in ENOSPC within the limit, on no filesystem of the host's;
    then it frees what it wrote, and the file it kept in HOME (KEEP) is still there."""
    seen = await asyncio.to_thread(lab_exec, srv, url, FILL, 240)
    assert seen["home"][1] == "ENOSPC" and seen["fs_mb"] <= LIMIT_MB, seen
    assert all(dev != _host_dev(srv) for dev in seen["dev"].values()), seen["dev"]
    cleaned = await asyncio.to_thread(lab_exec, srv, url, CLEAN)
    assert cleaned["kept"], cleaned


async def test_runtime_fill_ends_with_enospc_in_its_own_space(qserver: ServerProc, repos: Path) -> None:
    """The red team's attack from mallory's app, with alice deploying and the MCP server answering meanwhile."""
    mallory_repo = lab_repo(repos, "q-mallory")
    alice_repo = lab_repo(repos, "q-alice")
    async with session(qserver, "mallory") as m:
        lab = await lab_live(m, mallory_repo, "mallory", project_name=MALLORY)

    async def attack() -> dict[str, Any]:
        return await asyncio.to_thread(lab_exec, qserver, lab["url"], FILL, 240)

    async def alice_deploys() -> dict[str, Any]:
        async with session(qserver, "alice") as a:
            return await lab_live(a, alice_repo, "alice", project_name=ALICE)

    attacked = asyncio.create_task(attack())
    alice_lab = await alice_deploys()
    seen = await attacked

    # mallory's side: her filesystem is the limit's size; every write and the fallocates were refused
    assert LIMIT_MB * 0.85 <= seen["fs_mb"] <= LIMIT_MB, seen["fs_mb"]
    assert all(r[0] == "ENOSPC" for r in seen["fallocate"]), seen["fallocate"]
    total = 0
    for where in ("home", "tmp", "var_tmp", "cwd", "run_lock"):
        mib, refusal = seen[where]
        if where == "run_lock" and refusal == "absent":
            continue
        assert refusal in ("ENOSPC", "EDQUOT"), (where, seen[where])
        total += mib
    assert total <= LIMIT_MB, seen
    assert seen["shm"][1] == "ENOSPC" and seen["shm"][0] <= 64, seen["shm"]  # a private tmpfs of 64 MiB
    # none of it is on the data dir's filesystem (which holds the control plane)
    host = _host_dev(qserver)
    assert all(dev != host for dev in seen["dev"].values()), (host, seen["dev"])
    assert not Path("/run/lock/fill-run-lock").exists()  # the host's /run/lock got nothing
    # alice: deployed meanwhile, her app answers; the control plane answers
    assert via_proxy(qserver, alice_lab["url"]).text == "alice says hi"
    assert httpx.get(f"http://127.0.0.1:{qserver.port}/healthz", timeout=10).status_code == 200
    async with session(qserver, "alice") as a:
        listed = await call(a, "list_services", project_name=ALICE)
        assert listed, listed
    # the images themselves: sparse, never more than the limit on the host
    for image in (qserver.data_dir / "compute" / "disks").glob("*.img"):
        assert image.stat().st_blocks * 512 <= (LIMIT_MB + 1) * 2**20, image
    # mallory's app still answers (her own disk is full, her process lives)
    assert via_proxy(qserver, lab["url"]).text == "mallory says hi"
    cleaned = await asyncio.to_thread(lab_exec, qserver, lab["url"], CLEAN)
    assert cleaned["free_mb"] > LIMIT_MB // 2, cleaned


async def test_build_filling_the_disk_fails_with_the_limit_named(qserver: ServerProc, repos: Path) -> None:
    """A build_command that writes 300 MiB into the app dir: the deployment fails, and the error names
    INKMCP_MAX_DISK_MB and what to do (not a bare "exited with code 1")."""
    repo = lab_repo(repos, "q-filler")
    async with session(qserver, "mallory") as m:
        dep = await deploy(m, repo_url=str(repo), project_name="q-filler", start_command="python3 lab.py",
                           build_command="dd if=/dev/zero of=fill bs=1M count=300", mode="persistent")
    assert dep["status"] == "failed", dep
    error = str(dep["error"])
    assert "INKMCP_MAX_DISK_MB" in error and "disk is full" in error, error
    assert "Delete files" in error and "delete with service_name" in error, error


async def test_limit_holds_across_a_new_release_and_a_restart(qserver: ServerProc, repos: Path) -> None:
    """mallory keeps a file in HOME, redeploys (a new release), fills again: ENOSPC within the limit, the file
    kept. Then InkMCP restarts: her release runs again from its (re-mounted) filesystem, still limited."""
    repo = lab_repo(repos, "q-redeploy")
    async with session(qserver, "mallory") as m:
        lab = await lab_live(m, repo, "mallory", project_name="q-redeploy")
        await asyncio.to_thread(lab_exec, qserver, lab["url"], KEEP)
        git_commit(repo, {"extra.txt": "a new release"})
        again = await lab_live(m, repo, "mallory", project_name="q-redeploy")
        assert again["deployment_id"] != lab["deployment_id"]
    await _fills_only_its_own_disk(qserver, again["url"])

    assert qserver.stop() == 0, qserver.log()
    _assert_nothing_mounted(qserver)
    qserver.start()
    await _answers(qserver, again["url"], "mallory says hi")
    await _fills_only_its_own_disk(qserver, again["url"])


async def test_deleting_the_project_removes_its_filesystem(qserver: ServerProc, repos: Path) -> None:
    """delete_project: the project's image, its mounts and its loop device are gone."""
    repo = lab_repo(repos, "q-gone")
    async with session(qserver, "mallory") as m:
        await deploy_live(m, repo_url=str(repo), project_name="q-gone", start_command="python3 lab.py",
                          mode="persistent")
        before = set((qserver.data_dir / "compute" / "disks").glob("*.img"))
        await call(m, "delete", project_name="q-gone", confirm="q-gone")
    after = set((qserver.data_dir / "compute" / "disks").glob("*.img"))
    gone = before - after
    assert len(gone) == 1, (before, after)
    image = gone.pop()
    project_id = image.name[: -len(".img")]
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    assert str(qserver.data_dir / "compute" / "projects" / project_id) not in points
    attached = subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout
    assert not attached.strip(), attached


SHM = r'''
import os

def shmem():
    """This process's memory cgroup's shmem bytes (cgroup v1 or v2)."""
    for line in open("/proc/self/cgroup").read().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            base = "/sys/fs/cgroup/memory" + path
            break
    else:
        base = "/sys/fs/cgroup" + open("/proc/self/cgroup").read().split("0::", 1)[1].split()[0]
    stat = dict(line.split() for line in open(os.path.join(base, "memory.stat")))
    return int(stat["shmem"])

before = shmem()
with open("/dev/shm/held", "wb") as f:
    f.write(b"\x5a" * (48 * 2**20))
during = shmem()
os.unlink("/dev/shm/held")
result = {"before": before, "during": during, "after": shmem()}
'''


async def test_dev_shm_is_charged_to_the_services_memory(qserver: ServerProc, repos: Path) -> None:
    """/dev/shm is a private tmpfs (64 MiB) per start, not disk: verified that what the app puts there is charged
    to its service's memory cgroup (so its memory limit bounds it too), from the app's own cgroup files."""
    repo = lab_repo(repos, "q-shm")
    async with session(qserver, "mallory") as m:
        lab = await lab_live(m, repo, "mallory", project_name="q-shm")
    seen = await asyncio.to_thread(lab_exec, qserver, lab["url"], SHM)
    assert seen["during"] - seen["before"] >= 40 * 2**20, seen
    assert seen["during"] - seen["after"] >= 40 * 2**20, seen


async def test_an_upgraded_data_dir_keeps_tenant_files_and_gets_the_limit(repos: Path) -> None:
    """An operator upgrades: a server without the limit (INKMCP_MAX_DISK_MB=0) ran mallory's app, which kept a
    file in HOME; the server restarts with the limit. Her app is back with its file (copied onto the project's new
    filesystem), and her writes now end in ENOSPC within the limit."""
    repo = lab_repo(repos, "q-upgrade")
    with security_server("inkmcp-quota-up-", ("mallory",), INKMCP_MAX_DISK_MB="0") as srv:
        async with session(srv, "mallory") as m:
            lab = await lab_live(m, repo, "mallory", project_name="q-upgrade")
        await asyncio.to_thread(lab_exec, srv, lab["url"], KEEP)
        seen = await asyncio.to_thread(lab_exec, srv, lab["url"], HOME_DEV)
        assert seen == _host_dev(srv)  # control: before the upgrade HOME is on the data dir's filesystem
        assert srv.stop() == 0, srv.log()
        srv.env["INKMCP_MAX_DISK_MB"] = str(LIMIT_MB)
        srv.start()
        await _answers(srv, lab["url"], "mallory says hi")
        await _fills_only_its_own_disk(srv, lab["url"])
    _assert_nothing_mounted(srv)


async def test_a_project_disk_the_host_cannot_hold_is_refused_with_what_to_do(repos: Path) -> None:
    """When the host cannot hold another project's disk and INKMCP_DISK_RESERVE_MB (here: a reserve larger than
    any disk), a new project is refused: the agent's error names both settings and what to do; nothing is
    mounted, no image is left, and the server keeps answering."""
    repo = lab_repo(repos, "q-refused")
    with security_server("inkmcp-quota-full-", ("mallory",), INKMCP_MAX_DISK_MB="64",
                         INKMCP_DISK_RESERVE_MB=str(10**9)) as srv:  # fmt: skip
        async with session(srv, "mallory") as m:
            result = await m.call_tool("deploy_app", {"repo_url": str(repo), "project_name": "q-refused",
                                                      "start_command": "python3 lab.py"})
            text = " ".join(getattr(c, "text", "") for c in result.content)
            if not result.is_error:  # accepted, then failed: the deployment's error says it
                dep = await deploy(m, repo_url=str(repo), project_name="q-refused", start_command="python3 lab.py")
                assert dep["status"] == "failed", dep
                text = str(dep["error"])
        assert "INKMCP_MAX_DISK_MB" in text and "INKMCP_DISK_RESERVE_MB" in text and "Delete a project" in text, text
        assert not list((srv.data_dir / "compute" / "disks").glob("*.img"))
        assert httpx.get(f"http://127.0.0.1:{srv.port}/healthz", timeout=10).status_code == 200
    _assert_nothing_mounted(srv)
