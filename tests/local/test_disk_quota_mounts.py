"""diskquota.ProjectDisks on its own: the mounts it makes, the upgrade of an existing data dir, what it refuses.

Real ext4 images, loop devices and bind mounts (root). Every test unmounts what it made by exact path
(`unmount_all` of its own data dir) and checks that no mount and no loop device of its images is left.
tests/security/test_disk_quota.py attacks the limit from a tenant's side through a real server.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.errors import ProviderError
from inkmcp.providers.compute.local import diskquota
from inkmcp.providers.compute.local.diskquota import ProjectDisks, mount_points
from tests.requirements import is_root, requires
from tests.support import traversable_tmpdir

pytestmark = requires("root", is_root(), "loop devices and mounts need root")

OWNER = (4242, 4243)  # a uid/gid no test user has: ownership must survive the move


def _ours(data: Path) -> list[str]:
    return sorted(p for p in mount_points() if p.startswith(str(data) + "/"))


def _attached(image: Path) -> str:
    return subprocess.run(["losetup", "-j", str(image)], capture_output=True, text=True, check=False).stdout.strip()


@pytest.fixture
def data() -> Iterator[Path]:
    root = traversable_tmpdir("inkmcp-diskq-")
    data = root / "compute"
    for name in ("services", "homes", "projects"):
        (data / name).mkdir(mode=0o711, parents=True)
    yield data
    ProjectDisks(data, size_mb=1).unmount_all()
    left = _ours(data)
    images = list((data / "disks").glob("*.img")) if (data / "disks").is_dir() else []
    # a loop device mounted with autoclear is detached by the kernel after the unmount, asynchronously (CI run 44
    # saw one still attached right after): waited for, bounded
    deadline = time.monotonic() + 10
    while (attached := [a for a in (_attached(i) for i in images) if a]) and time.monotonic() < deadline:
        time.sleep(0.1)
    shutil.rmtree(root, ignore_errors=True)
    assert not left and not attached, (left, attached)


def _old_tree(path: Path, files: dict[str, bytes]) -> None:
    """A home or service dir as an InkMCP before diskquota left it: files of the tenant's uid on the host fs."""
    path.mkdir(mode=0o700)
    for rel, content in files.items():
        f = path / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(content)
        os.chown(f, *OWNER)
    os.symlink("/etc/shadow", path / "planted-link")  # copied as a link, never followed
    os.lchown(path / "planted-link", *OWNER)
    os.chown(path, *OWNER)


def test_an_upgrade_moves_homes_and_services_onto_the_projects_filesystem(data: Path) -> None:
    """A data dir from before: its home and service files end up on the project's own filesystem, owners,
    modes and links as they were, nothing left on the host's; a restart (unmount_all, mount_all) finds them."""
    home, service = data / "homes" / "ink-0123456789ab", data / "services" / "svc-1"
    _old_tree(home, {"notes.txt": b"mine", ".cache/x": b"y" * 5000})
    _old_tree(service, {"releases/d1/src/app.py": b"print(1)", "venvs/v/bin/python": b"#!"})
    _old_tree(data / "projects" / "p1", {"mirrors/repo.git/HEAD": b"ref: refs/heads/main"})  # a backup's restore
    disks = ProjectDisks(data, size_mb=32)
    disks.bind("p1", "home", home)
    disks.bind_service("p1", service)

    host = os.stat(data).st_dev
    for tree, probe in ((home, "notes.txt"), (service, "releases/d1/src/app.py")):
        st = os.stat(tree / probe)
        assert st.st_dev != host and (st.st_uid, st.st_gid) == OWNER, (tree, st)
        assert os.stat(tree).st_mode & 0o777 == 0o700 and os.stat(tree).st_uid == OWNER[0]
        assert os.readlink(tree / "planted-link") == "/etc/shadow"
        assert not (tree.parent / f".{tree.name}.pre-disk").exists()
    assert _ours(data) == sorted([str(home), str(service), str(data / "projects" / "p1")])
    mirror = data / "projects" / "p1" / "mirrors" / "repo.git" / "HEAD"
    assert mirror.read_bytes() == b"ref: refs/heads/main" and mirror.stat().st_dev != host
    assert not list((data / "projects").glob(".*pre-disk*")), list((data / "projects").iterdir())

    assert disks.unmount_all() == 3 and _ours(data) == []
    assert not _attached(disks.image("p1"))
    assert disks.mount_all({"p1": home.name}) == 1
    assert (home / "notes.txt").read_bytes() == b"mine" and (service / "venvs/v/bin/python").exists()


def test_a_tree_larger_than_the_limit_stays_where_it_was(data: Path, caplog: pytest.LogCaptureFixture) -> None:
    """40 MiB of old files into a 24 MiB filesystem: not moved, kept in place (unlimited), and the log says so."""
    service = data / "services" / "big"
    _old_tree(service, {"releases/blob": os.urandom(40 * 2**20)})
    disks = ProjectDisks(data, size_mb=24)
    with caplog.at_level(logging.WARNING, logger=diskquota.__name__):
        assert disks.bind_service("p2", service) is False
    assert str(service) not in _ours(data)
    assert (service / "releases" / "blob").stat().st_size == 40 * 2**20
    assert os.stat(service / "releases" / "blob").st_dev == os.stat(data).st_dev
    assert "WITHOUT a disk limit" in caplog.text and "INKMCP_MAX_DISK_MB" in caplog.text, caplog.text
    assert not (disks.inner("p2") / "services" / "big").exists()  # the partial copy is gone from the project's fs


def test_a_disk_the_host_cannot_hold_is_refused_with_the_settings_named(data: Path) -> None:
    disks = ProjectDisks(data, size_mb=64, reserve_mb=10**9)
    with pytest.raises(ProviderError) as refused:
        disks.ensure_project("p3")
    text = str(refused.value)
    assert "INKMCP_MAX_DISK_MB" in text and "INKMCP_DISK_RESERVE_MB" in text and "Delete a project" in text, text
    assert not disks.image("p3").exists() and _ours(data) == []


def test_a_busy_image_is_reused_never_attached_twice(data: Path) -> None:
    """A process still holds a file on the project's filesystem at close: the unmount is lazy and the loop device
    stays. The next mount must use that device: a second one on the same image would corrupt it."""
    disks = ProjectDisks(data, size_mb=32)
    base = disks.ensure_project("p4")
    assert base is not None
    held = open(base / "held", "w")  # held open across the unmount on purpose
    try:
        disks.unmount_all()
        first = _attached(disks.image("p4"))
        assert first.count("/dev/loop") == 1, first
        disks.ensure_project("p4")
        assert _attached(disks.image("p4")) == first
        assert (base / "held").exists()
    finally:
        held.close()
    disks.unmount_all()


def test_not_enforced_without_root_or_with_zero_and_says_why(data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ProjectDisks(data, size_mb=0).note() == "disk per project not limited: INKMCP_MAX_DISK_MB=0"
    monkeypatch.setattr(diskquota.os, "geteuid", lambda: 1000)
    disks = ProjectDisks(data, size_mb=64)
    assert not disks.enforced and "not running as root" in disks.reason
    assert disks.ensure_project("p5") is None and disks.usage("p5") is None and not disks.is_full("p5")
    assert not (data / "disks").exists() and _ours(data) == []


def test_a_data_dir_through_a_symlink_is_mounted_once(data: Path) -> None:
    """mountinfo lists real paths: a data dir named through a symlink must still find its mounts (a miss would
    stack a second mount on the first at every call)."""
    link = data.parent / "via-link"
    link.symlink_to(data.parent)
    disks = ProjectDisks(link / "compute", size_mb=32)
    for _ in range(2):
        disks.ensure_project("p6")
        disks.bind_service("p6", link / "compute" / "services" / "s6")
    assert _ours(data) == sorted([str(data / "projects" / "p6"), str(data / "services" / "s6")])
    assert disks.unmount_all() == 2 and _ours(data) == []


def test_overcommit_admits_what_the_disk_could_not_hold_at_once(data: Path) -> None:
    """With the reserve 100 MiB below the free space, a 1 GiB disk is refused at INKMCP_DISK_OVERCOMMIT=1 and
    admitted at 64 (1/64 of it promised); the refusal at 1 names the setting as the way to thin provisioning (an
    operator with 78 GB free saw 18 projects fill it, and nothing named the setting)."""
    st = os.statvfs(data)
    reserve = st.f_bavail * st.f_frsize // 2**20 - 100
    with pytest.raises(ProviderError) as refused:
        ProjectDisks(data, size_mb=1024, reserve_mb=reserve).ensure_project("p7")
    assert "set INKMCP_DISK_OVERCOMMIT above 1 (thin provisioning" in str(refused.value), refused.value
    assert "divided by INKMCP_DISK_OVERCOMMIT" not in str(refused.value)  # not in play in the sum
    disks = ProjectDisks(data, size_mb=1024, reserve_mb=reserve, overcommit=64)
    assert disks.ensure_project("p7") is not None
    assert disks.usage("p7") is not None and disks.usage("p7")[2] > 900 * 2**20  # type: ignore[index]


def test_a_raised_limit_grows_existing_projects_when_mounted(data: Path) -> None:
    """INKMCP_MAX_DISK_MB raised (the refusal's advice) grows a project made under the old value, files kept; a
    lowered one leaves it as it is."""
    small = ProjectDisks(data, size_mb=32)
    base = small.ensure_project("p8")
    assert base is not None
    (base / "kept").write_text("yes")
    before = small.usage("p8")[2]  # type: ignore[index]
    small.unmount_all()
    ProjectDisks(data, size_mb=64).ensure_project("p8")
    grown = small.usage("p8")[2]  # type: ignore[index]
    assert grown > before + 28 * 2**20 and (base / "kept").read_text() == "yes", (before, grown)
    small.unmount_all()
    ProjectDisks(data, size_mb=16).ensure_project("p8")
    assert small.usage("p8")[2] == grown  # type: ignore[index]


def test_deleted_files_give_the_host_its_space_back(data: Path) -> None:
    """An image kept its high-water mark: a project that wrote and deleted 24 MiB still held 24 MiB of the host's disk
    (the image file is sparse; the `discard` mount option punches the freed blocks out of it)."""
    disks = ProjectDisks(data, size_mb=64)
    base = disks.ensure_project("p9")
    assert base is not None
    image = disks.image("p9")
    empty = image.stat().st_blocks * 512
    (base / "big").write_bytes(os.urandom(24 * 2**20))
    os.sync()
    full = image.stat().st_blocks * 512
    assert full - empty >= 24 * 2**20, (empty, full)
    (base / "big").unlink()
    os.sync()
    deadline = time.monotonic() + 10
    while (now := image.stat().st_blocks * 512) - empty > 4 * 2**20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert now - empty <= 4 * 2**20, (empty, full, now)
    disks.unmount_all()


# --- tenantdisk: NamedDisks, the images of tenant databases (tablespaces) and Redis instances beside the projects'


@pytest.fixture
def named(data: Path) -> Iterator[diskquota.NamedDisks]:
    """Tablespace-like images of `data`'s tree (disks/tenant-pg), mounted under a sibling `pg/tablespaces`."""
    disks = diskquota.NamedDisks(data, "tenant-pg", data.parent / "pg" / "tablespaces", size_mb=32,
                                 setting="INKMCP_TENANT_PG_DISK_MB", what="tenant database", owner=OWNER)
    yield disks
    disks.unmount_all()
    left = sorted(p for p in mount_points() if p.startswith(str(data.parent) + "/"))
    attached = [a for a in (_attached(i) for i in (data / "disks").rglob("*.img")) if a]
    assert not left and not attached, (left, attached)


def test_named_disks_mount_before_and_unmount_after_their_server(named: diskquota.NamedDisks) -> None:
    """ensure: an image, mounted, its data/ the owner's 0700 (the mount point root's 0711) and full at its size;
    unmount_all then mount_all (a server's stop and start): the same files back; remove: image, mount, dir gone."""
    location = named.ensure("ink_a")
    assert location == named.mount_point("ink_a") / "data" and location is not None
    st = location.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (*OWNER, 0o700)
    assert named.mount_point("ink_a").stat().st_mode & 0o777 == 0o711
    assert os.stat(location).st_dev != os.stat(named.data_dir).st_dev
    (location / "relation").write_bytes(b"x" * 2**20)
    with pytest.raises(OSError) as full, open(location / "big", "wb") as f:
        f.write(b"\0" * 64 * 2**20)
        f.flush()
        os.fsync(f.fileno())
    assert full.value.errno == 28  # ENOSPC within its 32 MiB
    assert named.unmount_all() == 1 and not (named.mount_point("ink_a") / "data").exists()
    assert named.mount_all() == 1 and (location / "relation").stat().st_size == 2**20
    named.remove("ink_a")
    assert not named.image("ink_a").exists() and not named.mount_point("ink_a").exists()
    assert not diskquota.is_mounted(named.mount_point("ink_a"))


def test_named_disks_are_promised_like_projects(data: Path, named: diskquota.NamedDisks) -> None:
    """The admission counts every image of the tree: with ~3 GiB free past the reserve, a 2 GiB tenant database's
    image is admitted, and then a 2 GiB project's is refused (its refusal names the project setting), as it would
    be after another project's."""
    st = os.statvfs(data)
    reserve = st.f_bavail * st.f_frsize // 2**20 - 3000
    big = diskquota.NamedDisks(data, "tenant-pg", named.mount_root, size_mb=2048, setting="INKMCP_TENANT_PG_DISK_MB",
                               what="tenant database", owner=OWNER, reserve_mb=reserve)  # fmt: skip
    assert big.ensure("ink_b") is not None
    with pytest.raises(ProviderError) as refused:
        ProjectDisks(data, size_mb=2048, reserve_mb=reserve).ensure_project("p9")
    assert "INKMCP_MAX_DISK_MB" in str(refused.value) and "another project's" in str(refused.value)
    with pytest.raises(ProviderError) as refused:
        big.ensure("ink_c")
    assert "INKMCP_TENANT_PG_DISK_MB" in str(refused.value) and "another tenant database's" in str(refused.value)
    big.remove("ink_b")


def test_a_redis_dir_from_before_is_moved_onto_its_own_image(data: Path) -> None:
    """inner=None (Redis: the instance dir itself is the mount point): its files from before the upgrade are copied
    onto the new image, owners kept, and the host copy removed."""
    root = data.parent / "redis"
    root.mkdir(mode=0o711)
    _old_tree(root / "ink_r", {"redis.conf": b"port 1\n", "appendonlydir/x.aof": b"*1\r\n"})
    disks = diskquota.NamedDisks(data, "redis", root, size_mb=16, setting="INKMCP_REDIS_DISK_MB",
                                 what="Redis instance", owner=OWNER, inner=None)  # fmt: skip
    try:
        assert disks.ensure("ink_r") == root / "ink_r"
        assert diskquota.is_mounted(root / "ink_r")
        assert (root / "ink_r" / "appendonlydir" / "x.aof").read_bytes() == b"*1\r\n"
        assert (root / "ink_r" / "redis.conf").stat().st_uid == OWNER[0]
        assert (root / "ink_r").stat().st_mode & 0o777 == 0o700
        assert not list(root.glob(".ink_r.pre-disk*"))
    finally:
        disks.remove("ink_r")
    assert not disks.image("ink_r").exists() and not diskquota.is_mounted(root / "ink_r")


# --- tenantdisk2: admission is one step across processes


_RACER = """
import os, sys, time
from pathlib import Path
from inkmcp.errors import ProviderError
from inkmcp.providers.compute.local import diskquota
data, kind, name, reserve, go = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
if os.environ.get("RACER_UNLOCKED"):  # the code before tenantdisk2, to show the race this test catches
    def _unlocked(self, name, image):
        self._admit(name)
        self._create(image)
    diskquota.ProjectDisks._admit_and_create = _unlocked
if kind == "project":
    disks = diskquota.ProjectDisks(data, size_mb=256, reserve_mb=reserve)
    make = disks.ensure_project
else:
    disks = diskquota.NamedDisks(data, kind, data.parent / kind, size_mb=256, setting="X", what=kind, owner=None,
                                 reserve_mb=reserve)
    make = disks.ensure
(go.parent / f"ready-{name}").touch()
while not go.exists():
    time.sleep(0.001)
try:
    make(name)
    print("admitted")
except ProviderError as e:
    print("refused:", e)
"""


@pytest.fixture
def data_on_own_fs(data: Path) -> Iterator[Path]:
    """A data dir alone on a 1 GiB tmpfs: its free space moves only with what the test does (on the shared disk,
    other xdist workers' builds and images moved it by more than the test's 128 MiB margins: 0 or 2 admitted)."""
    fs = data.parent / "fs"
    fs.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1g,mode=0755", "inkmcp-test-diskq", str(fs)], check=True)
    own = fs / "compute"
    for name in ("services", "homes", "projects"):
        (own / name).mkdir(mode=0o711, parents=True)
    try:
        yield own
    finally:
        ProjectDisks(own, size_mb=1).unmount_all()
        images = list((own / "disks").rglob("*.img")) if (own / "disks").is_dir() else []
        deadline = time.monotonic() + 10  # autoclear loop devices detach asynchronously and hold the tmpfs busy
        while [i for i in images if _attached(i)] and time.monotonic() < deadline:
            time.sleep(0.1)
        subprocess.run(["umount", str(fs)], check=True)


def test_concurrent_admissions_from_several_processes_never_promise_more_than_fits(data_on_own_fs: Path) -> None:
    """Four processes (two `serve` replicas' worth of project and tenant-database images, on one host) admit a
    256 MiB image each at the same instant, with room for one past INKMCP_DISK_RESERVE_MB: exactly one is admitted
    (before, each saw the free space without the others' promise and several passed: 4 of 4 here, with the lock
    taken out by RACER_UNLOCKED=1)."""
    import sys

    data = data_on_own_fs
    st = os.statvfs(data)
    reserve = st.f_bavail * st.f_frsize // 2**20 - 384  # one 256 MiB image fits, two do not
    go = data.parent / "go"
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(data), kind, name, str(reserve), str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for kind, name in (("project", "r1"), ("project", "r2"), ("tenant-pg", "r3"), ("redis", "r4"))]
    deadline = time.monotonic() + 60
    while len(list(data.parent.glob("ready-*"))) < len(racers):  # every racer imported and waiting
        assert time.monotonic() < deadline and all(r.poll() is None for r in racers), [r.poll() for r in racers]
        time.sleep(0.05)
    go.touch()
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=60)
        results.append(out.strip() or err.strip()[-500:])
    try:
        assert sum(r == "admitted" for r in results) == 1, results
        assert all(r == "admitted" or "INKMCP_DISK_RESERVE_MB" in r for r in results), results
        assert len(list((data / "disks").rglob("*.img"))) == 1
    finally:
        for kind in ("tenant-pg", "redis"):
            diskquota.NamedDisks(data, kind, data.parent / kind, size_mb=64, setting="X", what=kind,
                                 owner=None).unmount_all()  # fmt: skip
