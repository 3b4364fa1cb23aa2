"""The data dir as a shared mount, so that InkMCP's unmounts reach every tenant's mount namespace.

Every tenant process runs in a mount namespace of its own (`inkmcp.build.process`, `inkspawn.c`), made a
slave of the host's: mounts and unmounts done on the host propagate into it, but only those under a
*shared* mount. On a systemd host `/` is shared and nothing is needed. In a container (Docker, this
project's CI) `/` is private, and a tenant namespace keeps its own copy of every image that was mounted
when it started: a deleted project's or database's image stayed attached to its loop device, its disk
space not freed, for as long as any older tenant process lived, and a busy host could run out of loop
devices. So the data dir is made a shared mount, as kubelet does with /var/lib/kubelet: bound onto itself
when it is not a mount point already, then marked shared, recursively. Mounts made under it afterwards are
shared too, and their unmounts reach the tenants' copies.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

from inkmcp.providers.compute.local.diskquota import _MS_BIND, _libc, _unescape

log = logging.getLogger(__name__)

_MS_REC = 16384
_MS_SHARED = 1 << 20
_MNT_DETACH = 2
# Present while the data dir's own bind mount is InkMCP's (never unmount an operator's own mount of it).
MARKER = ".shared-mount"


def _mounts() -> list[tuple[str, bool]]:
    """(mount point, shared) for every mount of this namespace, in mount order."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            optional = fields[6 : fields.index("-")]
            point = _unescape(fields[4])
            found.append((point, any(tag.startswith("shared:") for tag in optional)))
    return found


def _containing(path: str, mounts: list[tuple[str, bool]]) -> tuple[str, bool]:
    """The mount `path` lies on: the last-mounted of the longest matching mount points."""
    best = ("/", False)
    for point, shared in mounts:
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) >= len(best[0]):
            best = (point, shared)
    return best


def share(data_dir: Path) -> None:
    """Make `data_dir` a shared mount (bound onto itself if need be, which `release` undoes at close).

    Call it before anything is mounted under the data dir. A data dir that already lies on a shared mount is left
    as it is. One with mounts beneath it but no mount of its own (left by a serve that predates this, killed)
    cannot be bound onto itself without hiding them: that start goes on as before, saying so.
    """
    path = os.path.realpath(data_dir)
    mounts = _mounts()
    point, shared = _containing(path, mounts)
    if shared:
        return
    if point != path:
        beneath = [p for p, _ in mounts if p.startswith(path + "/")]
        if beneath:
            log.warning("%s has mounts beneath it but is not a mount point itself, so it cannot be made a shared "
                        "mount this time (tenant namespaces keep copies of images until their processes end); "
                        "it will be at the next start after a clean stop", path)  # fmt: skip
            return
        _mount(path, path, _MS_BIND, "bind the data dir onto itself")
        Path(path, MARKER).touch()
    _mount(None, path, _MS_SHARED | _MS_REC, "mark the data dir shared")


def release(data_dir: Path) -> None:
    """At close: take away the data dir's own bind mount, once nothing is mounted beneath it any more (what is
    left stays, for the next serve to adopt; the next `share` finds the bind in place)."""
    path = os.path.realpath(data_dir)
    mounts = _mounts()
    if not Path(path, MARKER).exists() or path not in {p for p, _ in mounts}:
        return
    if any(p.startswith(path + "/") for p, _ in mounts):
        return
    if _libc().umount2(path.encode(), 0) != 0:
        err = ctypes.get_errno()
        # EBUSY: a copy of the bind in a tenant namespace (a slave of this one, of this server or of another server
        # on the machine) still has mounts beneath it, and the kernel refuses an unmount whose propagation finds a
        # busy copy. Nothing is mounted beneath it here (checked above), so detaching it is safe: the dir is the
        # same directory without the bind, and the copies go when their namespaces do. Before, the bind stayed
        # after every such stop and `rm -rf` of the data dir failed with EBUSY (CI run 57, tests/backup/test_drill.py).
        if err != errno.EBUSY or _libc().umount2(path.encode(), _MNT_DETACH) != 0:
            log.warning("could not unmount the data dir's own bind mount %s: %s", path,
                        os.strerror(ctypes.get_errno() if err == errno.EBUSY else err))
            return
    Path(path, MARKER).unlink(missing_ok=True)


def _mount(source: str | None, target: str, flags: int, what: str) -> None:
    if _libc().mount(source.encode() if source else None, target.encode(), None, flags, None) != 0:
        raise OSError(ctypes.get_errno(), f"could not {what} ({target}): {os.strerror(ctypes.get_errno())}")
