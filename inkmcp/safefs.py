"""File operations root performs next to tenant-writable trees, without ever following a tenant's link.

The rule (docs/trust-boundary.md): root never follows, opens, moves into or chowns a path that a
tenant can write. Every helper here therefore takes a *trusted* parent directory, one that only root
can write (so no tenant can swap the entry we name in it), and works on a single entry of it through
a directory file descriptor with `O_NOFOLLOW`: a symlink planted by a tenant makes the call fail
instead of redirecting root's write. Trees are walked with `os.fwalk`, which opens each directory
relative to its parent's fd and never descends through symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from inkmcp.build.plan import RunAs

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def dir_fd(path: Path) -> Iterator[int]:
    """An fd of `path`, refusing a symlink as its last component (its parents must be root's)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def ensure_owned_dir(parent: Path, name: str, owner: RunAs | None, mode: int = 0o700) -> Path:
    """Create (or fix) `parent/name` as a directory owned by `owner` (None: by us) with `mode`.

    `parent` must be writable only by root. An existing symlink or file under that name raises
    (NotADirectoryError / OSError ELOOP) instead of being followed; chown and chmod go through the
    directory's own fd, so they land on the inode we just checked.
    """
    with dir_fd(parent) as pfd:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, mode, dir_fd=pfd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        try:
            if owner is not None:
                os.fchown(fd, owner.uid, owner.gid)
            elif os.geteuid() == 0:
                os.fchown(fd, 0, 0)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    return parent / name


def chown_private_tree(root: Path, owner: RunAs | None) -> None:
    """Give a tree that no tenant can reach yet (inside a root 0700 dir) to `owner`.

    Done *before* the tree is moved where the tenant can write, so there is nothing to race; symlinks
    are re-owned themselves (lchown semantics), never followed. The top directory becomes 0700.
    """
    with dir_fd(root) as fd:
        os.fchmod(fd, 0o700)  # whatever the staging mode was, only its owner enters the tree
        if owner is None:
            return
        uid, gid = owner.uid, owner.gid
        os.fchown(fd, uid, gid)
    for _dirpath, dirnames, filenames, dfd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            os.chown(name, uid, gid, dir_fd=dfd, follow_symlinks=False)


def move_into(src: Path, dest_parent: Path, dest_name: str) -> None:
    """rename(2) `src` to `dest_parent/dest_name` through directory fds.

    `src`'s parent and `dest_parent` are opened with O_NOFOLLOW; `dest_parent` may be tenant-owned
    (a release dir) because renameat never follows its last component: if the tenant planted a
    symlink or a non-empty directory under `dest_name`, the rename fails instead of moving root's
    tree into the link's target.
    """
    with dir_fd(src.parent) as sfd, dir_fd(dest_parent) as dfd:
        os.rename(src.name, dest_name, src_dir_fd=sfd, dst_dir_fd=dfd)


def _parts(rel: str | None) -> list[str] | None:
    path = Path(rel or ".")
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or any(p == ".." for p in parts):
        return None
    return parts


def _open_dir_beneath(root: Path, parts: list[str]) -> int | None:
    """An fd of directory `root/parts...`, every component opened with O_NOFOLLOW; None if not one."""
    try:
        fd = os.open(root, _DIR_FLAGS)
    except OSError:
        return None
    for part in parts:
        try:
            nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EACCES):
                return None
            raise
        os.close(fd)
        fd = nxt
    return fd


def is_dir_beneath(root: Path, rel: str | None) -> bool:
    """True if `root/rel` is a real directory reached without following any symlink.

    `root`'s own parents must be root's; below it the tenant may own everything: a link to a
    directory elsewhere counts as missing, as it would for a chroot.
    """
    parts = _parts(rel)
    fd = _open_dir_beneath(root, parts) if parts is not None else None
    if fd is None:
        return False
    os.close(fd)
    return True


def list_beneath(root: Path, rel: str | None) -> list[str]:
    """Entry names of directory `root/rel` (no symlink followed on the way); [] if it is not one."""
    parts = _parts(rel)
    fd = _open_dir_beneath(root, parts) if parts is not None else None
    if fd is None:
        return []
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def read_beneath(root: Path, rel: str, *, max_bytes: int = 4 << 20, owner_uid: int | None = None) -> bytes | None:
    """The bytes of regular file `root/rel`, reached without following any symlink; None if it is not one.

    For root reading files of a tree its tenant can still change: each component is opened with
    O_NOFOLLOW relative to its parent's fd, the file with O_NONBLOCK (a FIFO cannot hang us), and
    `owner_uid`, when given, must own it (a hard link to someone else's file counts as absent).
    Files over `max_bytes` count as absent too.
    """
    parts = _parts(rel)
    if not parts:
        return None
    fd = _open_dir_beneath(root, parts[:-1])
    if fd is None:
        return None
    try:
        ffd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(ffd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        if owner_uid is not None and st.st_uid != owner_uid:
            return None
        return f.read(max_bytes + 1)[:max_bytes]


def tree_bytes(root: Path) -> int:
    """Disk space used by the tree at `root` (allocated blocks), walked without following any symlink.

    Hard links count once per link; good enough for a cap, and never more than the truth by much.
    """
    total = 0
    for _dirpath, dirnames, filenames, dfd in os.fwalk(root, follow_symlinks=False):
        for name in (*dirnames, *filenames):
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(name, dir_fd=dfd, follow_symlinks=False).st_blocks * 512
    return total
