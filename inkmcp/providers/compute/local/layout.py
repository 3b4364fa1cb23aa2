"""Where a service's files live under the provider's data_dir, and who owns them.

    data_dir/                          0711 when root (tenants traverse, cannot list)
      bin/                             root 0755: `python`/`python3` shims for apps without a venv
      homes/<ink-user>/                tenant 0700, the project user's HOME
      proxy/                           root:nogroup 0710: nginx's config, error log and control socket
      projects/<project_id>/           root 0711
        mirrors/                       tenant 0700: git mirrors of this project (git runs as the tenant)
        locks/                         root 0700: flock files for those mirrors
        cache/                         tenant 0700: download caches of this project's builds (uv, npm, ...)
      services/<service_id>/           root 0711 (root) / 0700
        releases/                      root 0711: only root creates release dirs
          <deployment_id>/             tenant 0700 (made by root through an O_NOFOLLOW fd)
            src/                       the checkout, built in place; renamed in by root through dir fds
        venvs/                         tenant 0700: buildpack venv_root, reused across releases
        tmp/                           tenant 0700: the service's private /tmp, /var/tmp and /run/lock
        staging/<deployment_id>/       root 0700: a checkout copied onto the project's filesystem, renamed to src/
        meta/<deployment_id>.json      root 0700: build-complete marker + build output env
        meta/venv-<hash>.ok            root 0700: "this venv finished installing" markers
        logs/runtime.log[.1]           root 0700: process output, `name | line`
        logs/builds/<deployment_id>.log
        run/*.pid, run/*.lock          root 0700: live pids (reaped after an InkMCP crash), venv locks

With a disk limit per project (INKMCP_MAX_DISK_MB, diskquota.py), `projects/<project_id>/` is the mount point
of the project's own ext4 image (`disks/<project_id>.img`, root 0700), and `homes/<ink-user>/` and each
`services/<service_id>/` are bind mounts of directories on it: every leaf above that a tenant can write, and
its services' logs and metadata, are on the project's filesystem; nothing of a tenant is on the data dir's.

The rule (docs/trust-boundary.md): every directory root writes into or names an entry of is one
only root can write. A tenant owns only leaves of this tree (its release dirs, venvs, tmp, mirrors,
home), and root reaches into those only through `safefs` (no-follow, fd-relative), so a symlink a
tenant plants can never redirect a root write, chown or rename.

Download caches are per project for the same reason: a wheel or tarball in a cache is installed
into every build that hits it, so a cache two projects could write would let one tenant plant code
in another's build. Each project's `cache/` is a leaf of a root-owned dir, owned 0700 by that
project's user only.
"""

from __future__ import annotations

import grp
import os
import re
import shutil
from pathlib import Path

from inkmcp.build.plan import RunAs
from inkmcp.errors import InvalidArgument
from inkmcp.safefs import ensure_owned_dir

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_id(value: str, argument: str) -> str:
    """Ids become path components: refuse anything that could escape the layout."""
    if not _SAFE_ID.fullmatch(value) or ".." in value:
        raise InvalidArgument(f"{value!r} is not a safe identifier", argument=argument,
                              fix="use letters, digits, '-', '_' or '.'")  # fmt: skip
    return value


class ServiceLayout:
    def __init__(self, data_dir: Path, service_id: str) -> None:
        self.root = data_dir / "services" / safe_id(service_id, "service_id")
        self.releases = self.root / "releases"
        self.venvs = self.root / "venvs"
        self.meta_dir = self.root / "meta"
        self.logs = self.root / "logs"
        self.build_logs = self.logs / "builds"
        self.runtime_log = self.logs / "runtime.log"
        self.run_dir = self.root / "run"
        self.tmp = self.root / "tmp"
        self.staging = self.root / "staging"

    def release_dir(self, deployment_id: str) -> Path:
        return self.releases / safe_id(deployment_id, "deployment_id")

    def src(self, deployment_id: str) -> Path:
        return self.release_dir(deployment_id) / "src"

    def meta(self, deployment_id: str) -> Path:
        return self.meta_dir / f"{safe_id(deployment_id, 'deployment_id')}.json"

    def build_log(self, deployment_id: str) -> Path:
        return self.build_logs / f"{safe_id(deployment_id, 'deployment_id')}.log"

    def stage(self, checkout: Path, deployment_id: str) -> Path:
        """Where the checkout can be renamed into `releases/<deployment_id>/src` from (blocking).

        The checkout itself when it is on the same filesystem as the releases (no disk limit); else (the
        service's dir is on its project's own filesystem, and rename(2) cannot cross filesystems or mounts) a
        copy in `staging/<deployment_id>`, root 0700: symlinks are copied as links, never followed, and
        nothing of it is reachable by the tenant until it is renamed into place.
        """
        if os.stat(checkout).st_dev == os.stat(self.releases).st_dev:
            return checkout
        staged = self.staging / safe_id(deployment_id, "deployment_id")
        shutil.rmtree(staged, ignore_errors=True)
        self.staging.mkdir(mode=0o700, exist_ok=True)
        shutil.copytree(checkout, staged, symlinks=True)
        staged.chmod(0o700)
        return staged

    def prepare(self, run_as: RunAs | None) -> None:
        """Create the directories with their owners and modes (blocking; run in a thread).

        Also repairs layouts of older versions, where `releases/` belonged to the tenant: it is
        taken back by root through its fd (its parent is root's, so the entry cannot be swapped).
        """
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o711 if run_as is not None else 0o700)
        for private in (self.meta_dir, self.logs, self.build_logs, self.run_dir, self.staging):
            private.mkdir(mode=0o700, exist_ok=True)
        ensure_owned_dir(self.root, self.releases.name, None, 0o711 if run_as is not None else 0o700)
        for tenant_dir in (self.venvs, self.tmp):
            ensure_owned_dir(self.root, tenant_dir.name, run_as, 0o700)


class ProjectLayout:
    """Per-project caches: git mirrors and build download caches belong to the project's user, the
    mirror locks to root."""

    def __init__(self, data_dir: Path, project_id: str) -> None:
        self.root = data_dir / "projects" / safe_id(project_id, "project_id")
        self.mirrors = self.root / "mirrors"
        self.locks = self.root / "locks"
        self.cache = self.root / "cache"

    def prepare(self, run_as: RunAs | None) -> None:
        (self.root.parent).mkdir(mode=0o711 if run_as is not None else 0o700, exist_ok=True)
        ensure_owned_dir(self.root.parent, self.root.name, None, 0o711 if run_as is not None else 0o700)
        ensure_owned_dir(self.root, self.locks.name, None, 0o700)
        ensure_owned_dir(self.root, self.mirrors.name, run_as, 0o700)
        ensure_owned_dir(self.root, self.cache.name, run_as, 0o700)


def prepare_data_dir(data_dir: Path, *, root: bool) -> None:
    """Create data_dir; as root make it and its parents traversable so tenant users reach their files."""
    data_dir.mkdir(mode=0o711 if root else 0o700, parents=True, exist_ok=True)
    (data_dir / "services").mkdir(mode=0o711 if root else 0o700, exist_ok=True)
    (data_dir / "homes").mkdir(mode=0o711 if root else 0o700, exist_ok=True)
    (data_dir / "projects").mkdir(mode=0o711 if root else 0o700, exist_ok=True)
    (data_dir / "bin").mkdir(mode=0o755, exist_ok=True)
    (data_dir / "bin").chmod(0o755)
    if not root:
        return
    for d in (data_dir, data_dir / "services", data_dir / "homes", data_dir / "projects"):
        os.chown(d, 0, 0, follow_symlinks=False)
        d.chmod(0o711)
    prepare_proxy_dir(data_dir / "proxy")
    for parent in data_dir.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise InvalidArgument(
                f"{parent} is not traversable by other users, so tenant users cannot reach {data_dir}",
                argument="data_dir",
                fix=f"chmod o+x {parent} or choose a data_dir under a world-traversable path",
            )


def prepare_proxy_dir(path: Path) -> None:
    """The proxy's runtime dir, closed to tenants: root 0710, group nogroup (nginx's workers, which send
    idle-tracking lines to its idle.sock and keep request bodies in its tmp/).

    It was 0711 like the rest of the data dir, and nginx writes its files with the server's umask: any
    tenant read error.log (every other account's failed request lines, query strings and all: OAuth codes,
    reset tokens), nginx.conf (every routed hostname and its app's loopback port) and spoke to ctl.sock
    (red team 2026-12-01). Made before the proxy starts; nginx's own mkdir(exist_ok) keeps this mode.
    """
    path.mkdir(mode=0o700, exist_ok=True)
    os.chown(path, 0, 0, follow_symlinks=False)
    try:
        workers = grp.getgrnam("nogroup").gr_gid
    except KeyError:  # no nginx workers to let in (the nginx proxy needs the group and says so)
        path.chmod(0o700)
        return
    os.chown(path, 0, workers, follow_symlinks=False)
    path.chmod(0o710)
