"""A hard disk limit per project: every byte a project's code can write lands on a filesystem of its own.

Why: tenants wrote wherever their Unix user could (HOME, releases, venvs, caches, the service's /tmp), all on
the data dir's filesystem, which also holds the control-plane PostgreSQL. `INKMCP_MAX_BUILD_MB` is checked only
after a build, so an app `posix_fallocate`d 5 x 1 GiB at runtime (red team 2026-12-01) and one tenant could fill
the disk for every account. `fallocate` is instant: only the filesystem itself can refuse it in time.

How: each project gets an ext4 image, `data_dir/disks/<project_id>.img`, of INKMCP_MAX_DISK_MB, loop-mounted
on the project's own directory `projects/<project_id>/` (its git mirrors and download caches). Inside it, a
root 0700 `.disk/` holds the project's HOME and each service's directory; those are bind-mounted on the paths
the layout already uses (`homes/<ink-user>`, `services/<service_id>`), so no path changes and every tenant-
writable leaf of layout.py (home, mirrors, cache, releases, venvs, tmp, and through the sandbox's private
/tmp and /var/tmp the service's temp files) is on the project's filesystem. A full one gives that project's
processes ENOSPC; nothing else shares it. What InkMCP writes there as root (a service's logs, metadata) has the
filesystem's reserved blocks (2 %), so a tenant filling its space cannot stop its own logs.

Why images and not user quotas on one filesystem (each project already has its own uid): the kernels this
runs on do not all have quota formats (this box's 6.18 has CONFIG_QUOTA but not CONFIG_QFMT_V2, so ext4
refuses `usrquota`), and an image per project isolates inodes as well as bytes. The images are sparse: a
project's image takes on the host only what it holds. So that they can never together take the host's last
bytes, a new one is created only if the host's free space minus INKMCP_DISK_RESERVE_MB covers the new image and
every existing image's unallocated part (`_admit`), one admission at a time for every InkMCP process on the data
dir (`_admit_and_create`: a file lock held until the new image is in place). INKMCP_DISK_OVERCOMMIT (default 1)
divides that promise: above 1, more projects fit than the disk could hold were they all full, and the host is
protected only as long as they are not (thin provisioning, the operator's choice; the per-project limit stays
hard either way).

The mounts live in the host's mount namespace. They are made when a project is first used (`ensure_project`,
`bind`) and at start for every image found (`mount_all`), and removed by exact path at close (`unmount_all`),
with the project (`remove_project`) and with a service (`drop_service`). A loop device already attached to an
image (say a lazily detached mount of a crashed InkMCP) is reused, never a second one: two block devices on
one image would corrupt it.

An existing data dir (before this module, or just restored from a backup): a project's mirrors and caches,
its home and its service directories are copied into its new filesystem the first time the provider touches
them after the upgrade (`_ensure_project`, `bind`: `cp -a` as root), then removed from the host filesystem. A
home or service tree larger than the limit is left where it was, unlimited, with a warning naming it (the
operator raises the limit or deletes files, and the next start tries again); mirrors and caches that do not
fit are kept set aside beside the mount point (`.<id>.pre-disk`), with a warning, and fetched again as needed.

A raised INKMCP_MAX_DISK_MB grows existing images when they are next mounted (`_grow`); a lowered one leaves
them as they are.

Without root (or with INKMCP_MAX_DISK_MB=0) nothing is mounted: `enforced` is False and `reason` says why; the
provider logs it at start and in each deployment's limits note.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from inkmcp.build.plan import RunAs
from inkmcp.errors import ProviderError
from inkmcp.safefs import ensure_owned_dir

log = logging.getLogger(__name__)

DISKS = "disks"  # data_dir/disks/<project_id>.img (root 0700)
ADMISSION_LOCK = ".admission.lock"  # disks/.admission.lock: one admission at a time per data dir (`_admit_and_create`)
HEADROOM = ".headroom"  # on a NamedDisks image with headroom: root's file holding space its owner cannot use
INNER = ".disk"  # projects/<project_id>/.disk: root 0700, the sources of the bind mounts
RESERVED_PERCENT = 2  # ext4 blocks only root may use: InkMCP's logs and metadata of the project's services
# discard: a file deleted inside the image punches a hole in the (sparse) image file, so the host gets the space back;
# without it an image kept its high-water mark for good (a project that once wrote 900 MiB held 900 MiB of the host's
# disk after deleting it). Cost measured on this host: removing 20,000 small files 0.95 -> 1.12 s.
MOUNT_OPTIONS = "loop,nosuid,nodev,noatime,noinit_itable,discard"
_MS_BIND = 4096
_MNT_DETACH = 2
NO_SPACE = re.compile(r"No space left on device|ENOSPC|Disk quota exceeded|EDQUOT")
_PATH = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _bind_mount(source: Path, target: Path) -> None:
    if _libc().mount(os.fsencode(source), os.fsencode(target), None, _MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind-mounting {source} on {target}: {os.strerror(err)}")


def unmount(target: Path) -> None:
    """Unmount `target` (one mount, by its exact path); lazily if something still holds it (it then goes
    when the last user does: the loop device of an image stays attached until then, and is reused)."""
    path = os.fsencode(target)
    if _libc().umount2(path, 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc().umount2(path, _MNT_DETACH) == 0:
        log.warning("%s was busy; detached lazily", target)
        return
    if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (any more)
        return
    raise OSError(err, f"unmounting {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_points() -> set[str]:
    """Every mount point of this mount namespace (/proc/self/mountinfo)."""
    with open("/proc/self/mountinfo") as f:
        return {_unescape(line.split()[4]) for line in f}


def is_mounted(path: Path, points: set[str] | None = None) -> bool:
    """Whether `path` is a mount point; compared resolved (mountinfo lists real paths, a data dir may be given
    relative or through a symlink: a miss would stack a second mount on the first)."""
    return os.path.realpath(path) in (points if points is not None else mount_points())


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, env=_PATH, check=False, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise ProviderError(f"{' '.join(argv[:2])} failed: {(done.stderr or done.stdout).strip()[-500:]}")


def attached_loops() -> dict[str, str]:
    """Backing file -> loop device, for every attached loop device (/sys/block/loop*/loop/backing_file)."""
    found = {}
    for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            found[backing.read_text().strip()] = f"/dev/{backing.parent.parent.name}"
    return found


def _attached_loop(image: Path) -> str | None:
    """A loop device already attached to `image`, if any."""
    return attached_loops().get(os.path.realpath(image))


def _tree_has_entries(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return any(True for _ in it)
    except (FileNotFoundError, NotADirectoryError):
        return False


def _set_aside(target: Path) -> Path | None:
    """Rename a non-empty `target` (a plain directory from before, about to become a mount point) to a fresh
    name beside it, in its root-owned parent; None if it is empty or missing. An earlier attempt's set-aside
    tree (a crash mid-copy) is never touched: it may hold the only full copy."""
    if not _tree_has_entries(target):
        return None
    for n in range(1000):
        old = target.with_name(f".{target.name}.pre-disk{'-' + str(n) if n else ''}")
        if not os.path.lexists(old):
            os.rename(target, old)
            return old
    raise ProviderError(f"too many set-aside copies of {target}; remove the old .pre-disk ones")


def _copy_in(old: Path, target: Path) -> bool:
    """Copy `old`'s tree into the mounted `target` as root (`cp -a`: owners, modes, times, links as links),
    give `target` old's owner and mode, remove `old`; False (old kept) if it did not fit or failed."""
    st = old.lstat()
    done = subprocess.run(["cp", "-a", f"{old}/.", f"{target}/"], capture_output=True, text=True, env=_PATH,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        log.warning("copying %s into %s failed: %s", old, target, done.stderr.strip()[-300:])
        return False
    os.chown(target, st.st_uid, st.st_gid)
    target.chmod(st.st_mode & 0o7777)
    shutil.rmtree(old, ignore_errors=True)
    return True


def promised_bytes(data_dir: Path) -> int:
    """What every image under `data_dir/disks` (projects', tenant databases' and Redis's) may still grow by: the
    host admission's sum (`_admit`), also shown by `inkmcp doctor`. Images are sparse; their unwritten part counts."""
    promised = 0
    for image in (data_dir / DISKS).rglob("*.img"):
        with contextlib.suppress(OSError):
            s = image.stat()
            promised += max(0, s.st_size - s.st_blocks * 512)
    return promised


class ProjectDisks:
    """The per-project filesystems of one data dir (see the module docstring)."""

    what = "project"  # in the admission's refusal: "no disk space left for another project's 4096 MiB"
    setting = "INKMCP_MAX_DISK_MB"

    def __init__(self, data_dir: Path, *, size_mb: int, reserve_mb: int = 2048, overcommit: float = 1.0) -> None:
        self.data_dir = data_dir
        self.size_mb = size_mb
        self.reserve_mb = reserve_mb
        self.overcommit = max(1.0, overcommit)
        self.dir = data_dir / DISKS
        self._lock = threading.Lock()  # guards `_project_locks`
        self._project_locks: dict[str, threading.RLock] = {}  # one project's operations, one at a time
        self.reason = self._why_not()

    @property
    def enforced(self) -> bool:
        return not self.reason

    def _why_not(self) -> str:
        if self.size_mb <= 0:
            return "INKMCP_MAX_DISK_MB=0"
        if os.geteuid() != 0:
            return "InkMCP is not running as root, so it cannot mount a filesystem per project"
        missing = [tool for tool in ("mkfs.ext4", "mount") if shutil.which(tool, path=_PATH["PATH"]) is None]
        if missing:
            return f"{', '.join(missing)} not found (install e2fsprogs and mount: scripts/system-deps.sh does)"
        if not Path("/dev/loop-control").exists():
            return "no loop devices (/dev/loop-control is missing; load the loop module)"
        return ""

    @property
    def image_mb(self) -> int:
        """The image's size: the limit (a NamedDisks' adds its headroom)."""
        return self.size_mb

    def note(self) -> str:
        """For the deployment history and the start-up log."""
        if self.enforced:
            return f"{self.size_mb} MiB disk per project"
        return f"disk per project not limited: {self.reason}"

    # -- paths -------------------------------------------------------------------------------

    def image(self, project_id: str) -> Path:
        return self.dir / f"{project_id}.img"

    def mount_point(self, project_id: str) -> Path:
        return self.data_dir / "projects" / project_id

    def inner(self, project_id: str) -> Path:
        return self.mount_point(project_id) / INNER

    @contextlib.contextmanager
    def _locked(self, project_id: str) -> Iterator[None]:
        """This process's lock, then a file lock shared with any other InkMCP process on this data dir."""
        with self._lock:
            lock = self._project_locks.setdefault(project_id, threading.RLock())
        with lock:  # per project: an upgrade's copy of one project's files does not hold up the others
            self.dir.mkdir(mode=0o700, exist_ok=True)
            fd = os.open(self.dir / f".{project_id}.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # -- a project's filesystem ---------------------------------------------------------------

    def ensure_project(self, project_id: str) -> Path | None:
        """The project's filesystem, created and mounted if needed; None when not enforced (blocking)."""
        if not self.enforced:
            return None
        with self._locked(project_id):
            return self._ensure_project(project_id)

    def _ensure_project(self, project_id: str) -> Path:
        target = self.mount_point(project_id)
        if is_mounted(target):
            return target
        image = self.image(project_id)
        if not image.exists():
            self._admit_and_create(project_id, image)
        (self.data_dir / "projects").mkdir(mode=0o711, exist_ok=True)
        old = _set_aside(target)  # before this module (or restored from a backup): its mirrors, caches
        target.mkdir(mode=0o711, exist_ok=True)
        self._grow(project_id, image)
        self._mount(image, target)
        os.chown(target, 0, 0)
        target.chmod(0o711)
        ensure_owned_dir(target, INNER, None, 0o700)
        ensure_owned_dir(target / INNER, "services", None, 0o700)
        if old is not None and not _copy_in(old, target):
            # What did not fit stays set aside (nothing is lost); the mirrors are fetched again as needed.
            log.warning("project %s: its old files in %s did not all fit on its own %s MiB filesystem; they are "
                        "kept in %s for the operator (delete them, or raise INKMCP_MAX_DISK_MB)", project_id,
                        target, self.size_mb, old)  # fmt: skip
        return target

    @staticmethod
    def _mount(image: Path, target: Path, attempts: int = 30) -> None:
        """Loop-mount `image` on `target`. A loop device still attached to it (a lazily detached mount of an
        earlier run, or one the kernel is releasing right after an unmount) is used, never a second one: two
        block devices on one image would corrupt it. One being released fails the mount: tried again."""
        for attempt in range(attempts):
            device = _attached_loop(image)
            try:
                if device is not None:
                    _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS.replace("loop,", ""), device, str(target)])
                else:
                    _run(["mount", "-t", "ext4", "-o", MOUNT_OPTIONS, str(image), str(target)])
                return
            except ProviderError:
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1)

    def _grow(self, project_id: str, image: Path) -> None:
        """An image made under a smaller INKMCP_MAX_DISK_MB grows to the current one before it is mounted (the
        file extended, `e2fsck -f -p`, `resize2fs`: offline, ~20 ms; online resizing was refused here with
        EPERM): "ask the operator to raise INKMCP_MAX_DISK_MB" must help existing projects too. Not while a loop
        device still holds the image, and a smaller setting never shrinks one (its files would have to move)."""
        want = self.image_mb * 2**20
        if image.stat().st_size >= want or _attached_loop(image) is not None:
            return
        try:
            with open(image, "r+b") as f:
                os.ftruncate(f.fileno(), want)
            fsck = subprocess.run(["e2fsck", "-f", "-p", str(image)], capture_output=True, text=True, env=_PATH,
                                  check=False, stdin=subprocess.DEVNULL)  # fmt: skip
            if fsck.returncode > 1:  # 1: errors corrected; more: needs a person
                raise ProviderError(f"e2fsck exited {fsck.returncode}: {(fsck.stdout + fsck.stderr).strip()[-300:]}")
            _run(["resize2fs", str(image)])
        except (OSError, ProviderError) as exc:
            log.warning("project %s: could not grow its filesystem to %s MiB: %s", project_id, self.size_mb, exc)
            return
        log.info("project %s: its filesystem grew to %s MiB (INKMCP_MAX_DISK_MB)", project_id, self.size_mb)

    def _create(self, image: Path) -> None:
        tmp = image.with_name(f".{image.name}.new")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, self.image_mb * 2**20)  # sparse: the host gives blocks as the project writes
        finally:
            os.close(fd)
        try:
            _run(["mkfs.ext4", "-q", "-F", *self._mkfs_options(), "-E",
                  "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0", str(tmp)])
            os.replace(tmp, image)
        finally:
            tmp.unlink(missing_ok=True)

    def _mkfs_options(self) -> list[str]:
        return ["-m", str(RESERVED_PERCENT)]

    def _admit_and_create(self, name: str, image: Path) -> None:
        """Admission and creation as one step for every InkMCP process on this data dir (`serve` replicas, the
        CLI): a file lock over the whole `disks/` tree, held until the new image is in place and so counted by the
        next admission. Before (tenantdisk2), two images admitted at the same time could both pass when together
        they did not fit: each saw the host's free space without the other's promise."""
        root = self.data_dir / DISKS
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(root / ADMISSION_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if image.exists():  # made by another process while this one waited
                return
            self._admit(name)
            self._create(image)
        finally:
            os.close(fd)

    def _admit(self, project_id: str) -> None:
        """Refuse a new image the host could not hold together with what the existing ones may still grow by."""
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.statvfs(self.dir)
        free = st.f_bavail * st.f_frsize
        promised = promised_bytes(self.data_dir)
        need = (self.image_mb * 2**20 + promised) / self.overcommit + self.reserve_mb * 2**20
        if free < need:
            over = f", divided by INKMCP_DISK_OVERCOMMIT={self.overcommit:g}" if self.overcommit > 1 else ""
            # (newuser3: 78 GB free held 18 projects at the default 4 GiB each, and nothing named the setting that
            # promises more than the disk holds; images are sparse, a project uses only what it writes)
            thin = (f"raise INKMCP_DISK_OVERCOMMIT above {self.overcommit:g}" if self.overcommit > 1 else
                    "set INKMCP_DISK_OVERCOMMIT above 1 (thin provisioning: disks are sparse and use only what "
                    "their projects write)")
            raise ProviderError(
                f"this server has no disk space left for another {self.what}'s {self.image_mb} MiB "
                f"({self.setting}): {free // 2**20} MiB free, {promised // 2**20} MiB promised to existing "
                f"disks{over}, {self.reserve_mb} MiB kept for the control plane (INKMCP_DISK_RESERVE_MB). Delete "
                f"a project you no longer need, or ask the operator to free disk space, lower {self.setting}, or "
                f"{thin}"
            )

    # -- bind mounts of a project's home and services --------------------------------------------

    def bind(self, project_id: str, name: str, target: Path, *, mode: int = 0o700) -> bool:
        """Put `target` (a home or a service dir) on the project's filesystem (`.disk/<name>`); True if it is.

        Blocking. A `target` with files from before the upgrade is copied in (module docstring); a copy that
        does not fit leaves it where it was and returns False.
        """
        if not self.enforced:
            return False
        with self._locked(project_id):
            base = self._ensure_project(project_id)
            points = mount_points()
            if is_mounted(target, points):
                return True
            source = base / INNER / name
            source.parent.mkdir(mode=0o700, exist_ok=True)
            source.mkdir(mode=mode, exist_ok=True)
            old = _set_aside(target)
            target.mkdir(mode=mode, exist_ok=True)
            _bind_mount(source, target)
            if old is None:
                return True
            return self._migrate(project_id, old, target, source)

    def _migrate(self, project_id: str, old: Path, target: Path, source: Path) -> bool:
        if _copy_in(old, target):
            log.info("project %s: moved %s onto its own filesystem", project_id, target)
            return True
        unmount(target)  # does not fit (or cannot be copied): keep the old tree in place, say so
        with contextlib.suppress(OSError):
            target.rmdir()
        os.rename(old, target)
        shutil.rmtree(source, ignore_errors=True)
        log.warning("project %s: %s could not be moved onto its own %s MiB filesystem; it stays on the "
                    "data dir's filesystem WITHOUT a disk limit until it is smaller (delete files, or raise "
                    "INKMCP_MAX_DISK_MB) and InkMCP starts again", project_id, target, self.size_mb)  # fmt: skip
        return False

    def bind_home(self, project_id: str, home: Path, run_as: RunAs | None) -> None:
        if self.bind(project_id, "home", home) and run_as is not None:
            ensure_owned_dir(home.parent, home.name, run_as, 0o700)

    def bind_service(self, project_id: str, service_root: Path) -> bool:
        return self.bind(project_id, f"services/{service_root.name}", service_root)

    def drop_service(self, project_id: str, service_root: Path) -> None:
        """After a service's removal: its bind mount and its directory on the project's filesystem."""
        if not self.enforced:
            return
        with self._locked(project_id):
            unmount(service_root)
            with contextlib.suppress(OSError):
                service_root.rmdir()
            if is_mounted(self.mount_point(project_id)):
                shutil.rmtree(self.inner(project_id) / "services" / service_root.name, ignore_errors=True)

    def remove_project(self, project_id: str, home: Path) -> None:
        """After the project's removal (its processes are gone): unmount everything of it, delete its image."""
        if not self.enforced and not self.image(project_id).exists():
            return
        with self._locked(project_id):
            unmount(home)
            unmount(self.mount_point(project_id))
            self.image(project_id).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (self.dir / f".{project_id}.lock").unlink()

    # -- all of them ----------------------------------------------------------------------------

    def mount_all(self, home_of: dict[str, str] | None = None) -> int:
        """At start: mount every project's image and bind its home and services back; returns how many.

        `home_of` maps a project id to its home dir name (users.project_user_name); blocking.
        """
        if not self.enforced or not self.dir.is_dir():
            return 0
        from inkmcp.providers.compute.local.users import project_user_name

        count = 0
        for image in sorted(self.dir.glob("*.img")):
            project_id = image.name[: -len(".img")]
            try:
                base = self.ensure_project(project_id)
                assert base is not None
                services = base / INNER / "services"
                for service in sorted(services.iterdir()) if services.is_dir() else ():
                    self.bind(project_id, f"services/{service.name}", self.data_dir / "services" / service.name)
                if (base / INNER / "home").is_dir():
                    name = (home_of or {}).get(project_id) or project_user_name(project_id)
                    self.bind(project_id, "home", self.data_dir / "homes" / name)
                count += 1
            except (OSError, ProviderError) as exc:
                log.warning("could not mount the filesystem of project %s: %s", project_id, exc)
        return count

    def unmount_all(self) -> int:
        """At close: every mount of this data dir (service and home binds first, then the projects' images),
        by exact path; returns how many were unmounted. Blocking."""
        if not self.enforced:
            return 0
        points = mount_points()
        ours = []
        for parent in self._mount_parents():
            prefix = os.path.realpath(parent) + "/"
            ours += [p for p in points if p.startswith(prefix) and "/" not in p[len(prefix):]]
        for point in ours:
            try:
                self._unmount_one(Path(point))
            except OSError as exc:
                log.warning("could not unmount %s: %s", point, exc)
        self._wait_detached()
        return len(ours)

    def _mount_parents(self) -> list[Path]:
        """Where this kind's mounts are, in unmount order (binds before the images they come from)."""
        return [self.data_dir / "services", self.data_dir / "homes", self.data_dir / "projects"]

    @staticmethod
    def _unmount_one(point: Path) -> None:
        unmount(point)

    def _wait_detached(self, timeout: float = 3.0) -> None:
        """Until the kernel has let go of this data dir's images (it releases an autoclear loop device just after
        the last unmount), so a restart or a test finds none attached; bounded: a lazily detached mount's device
        stays until its last user goes (and is then reused, `_mount`)."""
        images = {os.path.realpath(p) for p in self.dir.glob("*.img")} if self.dir.is_dir() else set()
        deadline = time.monotonic() + timeout
        while images & attached_loops().keys() and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- usage ------------------------------------------------------------------------------------

    def usage(self, project_id: str) -> tuple[int, int, int] | None:
        """(bytes used, bytes the project's processes may still write, filesystem size); None if not mounted."""
        target = self.mount_point(project_id)
        if not self.enforced or not is_mounted(target):
            return None
        st = os.statvfs(target)
        size = st.f_blocks * st.f_frsize
        return size - st.f_bfree * st.f_frsize, st.f_bavail * st.f_frsize, size

    def is_full(self, project_id: str, *, margin: int = 4 * 2**20) -> bool:
        """True when the project's processes cannot write (much) more: its bytes or its inodes are used up."""
        target = self.mount_point(project_id)
        if not self.enforced or not is_mounted(target):
            return False
        st = os.statvfs(target)
        return st.f_bavail * st.f_frsize <= margin or st.f_favail <= 16

    def explains(self, project_id: str, output: str) -> bool:
        """Whether a failed build failed for lack of space: the project's filesystem is full now, or the build
        said ENOSPC and less than a fifth is left (a tool may have removed its partial files already)."""
        if self.is_full(project_id):
            return True
        used = self.usage(project_id)
        return used is not None and bool(NO_SPACE.search(output)) and used[1] < used[2] // 5

    def full_message(self, project_id: str) -> str:
        used = self.usage(project_id)
        figures = "full" if used is None else (
            f"{used[0] / 2**20:.0f} MiB used of the {used[2] / 2**20:.0f} MiB its filesystem holds")
        return (
            f"this project's disk is full ({figures}; the limit is INKMCP_MAX_DISK_MB={self.size_mb} per project, "
            "for everything its services write: releases, venvs and dependencies, download caches, git mirrors, "
            "its HOME and /tmp). Delete files the app wrote in its HOME or /tmp, delete services of this project "
            "you no longer need (delete with service_name), or ask the operator to raise INKMCP_MAX_DISK_MB"
        )


class NamedDisks(ProjectDisks):
    """Images of one kind beside the projects' (`<disks>/<kind>/<name>.img`), each mounted on `mount_root/<name>`,
    with a directory `data/` in it owned by the process that fills it: a tenant database's tablespace (the embedded
    tenant PostgreSQL server's user) or a project's Redis data (the Redis user).

    Why not the project's own image: those servers run beside InkMCP, not inside it. The tenant PostgreSQL server
    outlives `inkmcp serve` (adopted at the next start), is started before the projects' images are mounted, is
    started by `inkmcp backup create` without any of them, and serves Coolify-deployed projects that have no image;
    a project image unmounted under a running server (InkMCP's close) would make its next file open fail
    (checkpoints, crash recovery: every tenant's database down). Images of their own follow the server's life
    instead: mounted before it starts, unmounted only after it stopped (`mount_all`/`unmount_all`), so a tenant's
    database and its Redis files are always on their own filesystem, and full means ENOSPC for that tenant only.

    Living in the same `disks/` tree as the projects' images, they are counted by the same admission (`_admit`):
    the host's free space minus INKMCP_DISK_RESERVE_MB holds what every image may still grow by.
    """

    def __init__(self, data_dir: Path, kind: str, mount_root: Path, *, size_mb: int, setting: str, what: str,
                 owner: tuple[int, int] | None, reserve_mb: int = 2048, overcommit: float = 1.0,
                 inner: str | None = "data", headroom_mb: int = 0) -> None:
        super().__init__(data_dir, size_mb=size_mb, reserve_mb=reserve_mb, overcommit=overcommit)
        self.headroom_mb = headroom_mb if size_mb > 0 else 0  # on top of size_mb, root's: `keep_headroom`
        self._short: dict[str, int] = {}  # name -> headroom bytes last reported missing
        self.inner_name = inner  # None: the mount point itself is the owner's (0700)
        self.dir = data_dir / DISKS / kind
        self.mount_root = mount_root
        self.setting = setting
        self.what = what
        self.owner = owner

    def mount_point(self, project_id: str) -> Path:
        return self.mount_root / project_id

    @property
    def image_mb(self) -> int:
        return self.size_mb + self.headroom_mb

    def _mkfs_options(self) -> list[str]:
        """With headroom, what the owner may fill stays about what `size_mb` alone gave (48 MiB: 39 MiB, was 38; 1024:
        957, was 937): the headroom is the root reserve (no ext4 one), and inodes and journal are sized for `size_mb`
        (mke2fs's defaults grow with the image: 48 + 128 MiB left the tenant 28 MiB)."""
        if self.headroom_mb <= 0:
            return super()._mkfs_options()
        return ["-m", "0", "-T", "default", "-N", str(max(16384, self.size_mb * 64)),
                "-J", f"size={_journal_mb(self.size_mb)}"]

    @contextlib.contextmanager
    def _locked(self, project_id: str) -> Iterator[None]:
        # the compute dir as the local provider makes it (0711: tenants traverse it), perhaps before it ran
        self.data_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        (self.data_dir / DISKS).mkdir(mode=0o700, exist_ok=True)
        with super()._locked(project_id):
            yield

    def location(self, name: str) -> Path:
        """Where the server keeps the name's files: `data/` on the name's own filesystem (or its root)."""
        return self.mount_point(name) / self.inner_name if self.inner_name else self.mount_point(name)

    def names(self) -> list[str]:
        return sorted(p.name[: -len(".img")] for p in self.dir.glob("*.img")) if self.dir.is_dir() else []

    def ensure(self, name: str) -> Path | None:
        """The name's filesystem created (admitted first) and mounted, its `data/` owned by `owner` (0700); that
        directory, or None when not enforced. Blocking; idempotent."""
        if not self.enforced:
            return None
        with self._locked(name):
            target = self.mount_point(name)
            old, created = None, False
            if not is_mounted(target):
                image = self.image(name)
                created = not image.exists()
                if created:
                    self._admit_and_create(name, image)
                self.mount_root.mkdir(mode=0o711, parents=True, exist_ok=True)
                old = _set_aside(target)  # files from before the upgrade: copied in below
                target.mkdir(mode=0o711, exist_ok=True)
                self._grow(name, image)
                self._mount(image, target)
            data = self.location(name)
            if data != target:
                os.chown(target, 0, 0)
                target.chmod(0o711)  # the owner traverses to data/; nobody lists it
                data.mkdir(mode=0o700, exist_ok=True)
            if old is not None and not _copy_in(old, data):
                unmount(target)  # does not fit: the old files stay in use where they were, unlimited, said loudly
                with contextlib.suppress(OSError):
                    target.rmdir()
                os.rename(old, target)
                log.warning("%s %s: its files in %s could not be moved onto its own %s MiB filesystem; they stay on "
                            "the data dir's filesystem WITHOUT a disk limit (raise %s, or delete data, and restart)",
                            self.what, name, target, self.size_mb, self.setting)  # fmt: skip
                return target
            if self.owner is not None:
                os.chown(data, *self.owner)
            data.chmod(0o700)
            if created:  # a new name of a running server (an existing one's is kept by whoever starts the server)
                self.keep_headroom(name)
            return data

    def remove(self, name: str) -> None:
        """After the server let go of the name's files: unmount, delete the image and the empty mount point."""
        if not self.enforced and not self.image(name).exists():
            return
        with self._locked(name):
            target = self.mount_point(name)
            unmount_patiently(target)
            self.image(name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                target.rmdir()
        with contextlib.suppress(OSError):
            (self.dir / f".{name}.lock").unlink()

    def mount_all(self, home_of: dict[str, str] | None = None) -> int:
        """Mount every image of this kind (before its server starts); returns how many are mounted. A failure is
        logged: that tenant's data is unreachable until the next start, the others' are not."""
        count = 0
        for name in self.names():
            try:
                if self.ensure(name) is not None:
                    count += 1
            except (OSError, ProviderError) as exc:
                log.warning("could not mount the %s filesystem of %s: %s", self.what, name, exc)
        return count

    # unmount_all (ProjectDisks'): every mount of this kind, after its server stopped, patiently
    def _mount_parents(self) -> list[Path]:
        return [self.mount_root]

    @staticmethod
    def _unmount_one(point: Path) -> None:
        unmount_patiently(point)

    # -- headroom: space on the image its owner's processes cannot use, released to the server's crash recovery --

    def release_headroom(self, name: str) -> None:
        """Before the server starts: the name's headroom given back to the filesystem (its crash recovery may need
        it, see store/tenant_disks.py)."""
        if self.headroom_mb > 0 and is_mounted(self.mount_point(name)):
            (self.mount_point(name) / HEADROOM).unlink(missing_ok=True)

    def keep_headroom(self, name: str) -> int:
        """Once the server runs: the headroom taken back (root's file of `headroom_mb`, allocated, not written: the
        host file stays sparse), as much of it as is free; returns the bytes it holds. Idempotent, cheap when full."""
        target = self.mount_point(name)
        if self.headroom_mb <= 0 or not is_mounted(target):
            return 0
        want = self.headroom_mb * 2**20
        fd = os.open(target / HEADROOM, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            held = os.fstat(fd).st_blocks * 512
            if held < want:
                st = os.statvfs(target)
                # what the owner could still write (root's fallocate would otherwise dip into ext4's own reserve)
                room = st.f_bavail * st.f_frsize
                grow = min(want, held + room) // 2**20 * 2**20
                if grow > held:
                    with contextlib.suppress(OSError):
                        os.posix_fallocate(fd, 0, grow)
                    held = os.fstat(fd).st_blocks * 512
        finally:
            os.close(fd)
        short = want - held if held < want else 0
        if short != self._short.get(name, 0):  # said once per change, not at every round of a caller's loop
            if short:
                log.warning("%s %s: %d of its %d MiB headroom held (the rest is in use: by a crash recovery, or by "
                            "its owner while the headroom was released; taken back as space is freed)", self.what,
                            name, held // 2**20, self.headroom_mb)  # fmt: skip
            else:
                log.info("%s %s: its %d MiB headroom is held again", self.what, name, self.headroom_mb)
            self._short[name] = short
        return held


def _journal_mb(size_mb: int) -> int:
    """mke2fs's default journal size for a filesystem of `size_mb` (4 KiB blocks; ext2fs_default_journal_size)."""
    blocks = size_mb * 256
    for limit, journal in ((32768, 4), (256 * 1024, 16), (512 * 1024, 32), (4096 * 1024, 64), (8192 * 1024, 128)):
        if blocks < limit:
            return journal
    return 256


def unmount_patiently(target: Path, wait: float = 2.0) -> None:
    """Unmount `target` once the server that just stopped let go of it (a process that exited may take a moment
    to release its files: Redis's AOF-rewrite child, PostgreSQL's last backends); lazily only past `wait`."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if _libc().umount2(os.fsencode(target), 0) == 0:
            return
        if ctypes.get_errno() != errno.EBUSY:
            break
        time.sleep(0.05)
    unmount(target)
