"""Where a service's files live under the provider's data_dir, and who owns them.

    data_dir/                          0711 when root (tenants traverse, cannot list)
      homes/<ink-user>/                tenant 0700, the project user's HOME
      services/<service_id>/           InkMCP, 0711 (root) / 0700
        releases/<deployment_id>/src/  tenant 0700: the checkout, built in place
        venvs/                         tenant 0700: buildpack venv_root, reused across releases
        meta/<deployment_id>.json      InkMCP 0700: build-complete marker + build output env
        logs/runtime.log[.1]           InkMCP 0700: process output, `name | line`
        logs/builds/<deployment_id>.log
        run/*.pid                      InkMCP 0700: live pids, to reap after an InkMCP crash

Everything InkMCP itself writes sits in directories the tenant cannot write, so a tenant cannot
plant a symlink that makes a root-owned write land somewhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from inkmcp.build.plan import RunAs
from inkmcp.errors import InvalidArgument

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def safe_id(value: str, argument: str) -> str:
    """Ids become path components: refuse anything that could escape the layout."""
    if not _SAFE_ID.match(value) or ".." in value:
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

    def release_dir(self, deployment_id: str) -> Path:
        return self.releases / safe_id(deployment_id, "deployment_id")

    def src(self, deployment_id: str) -> Path:
        return self.release_dir(deployment_id) / "src"

    def meta(self, deployment_id: str) -> Path:
        return self.meta_dir / f"{safe_id(deployment_id, 'deployment_id')}.json"

    def build_log(self, deployment_id: str) -> Path:
        return self.build_logs / f"{safe_id(deployment_id, 'deployment_id')}.log"

    def prepare(self, run_as: RunAs | None) -> None:
        """Create the directories with their owners and modes (blocking; run in a thread)."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o711 if run_as is not None else 0o700)
        for private in (self.meta_dir, self.logs, self.build_logs, self.run_dir):
            private.mkdir(mode=0o700, exist_ok=True)
        for tenant_dir in (self.releases, self.venvs):
            tenant_dir.mkdir(mode=0o700, exist_ok=True)
            if run_as is not None:
                os.chown(tenant_dir, run_as.uid, run_as.gid)
            tenant_dir.chmod(0o700)


def prepare_data_dir(data_dir: Path, *, root: bool) -> None:
    """Create data_dir; as root make it and its parents traversable so tenant users reach their files."""
    data_dir.mkdir(mode=0o711 if root else 0o700, parents=True, exist_ok=True)
    (data_dir / "services").mkdir(mode=0o711 if root else 0o700, exist_ok=True)
    (data_dir / "homes").mkdir(mode=0o711 if root else 0o700, exist_ok=True)
    if not root:
        return
    for d in (data_dir, data_dir / "services", data_dir / "homes"):
        d.chmod(0o711)
    for parent in data_dir.resolve().parents:
        if not parent.stat().st_mode & 0o001:
            raise InvalidArgument(
                f"{parent} is not traversable by other users, so tenant users cannot reach {data_dir}",
                argument="data_dir",
                fix=f"chmod o+x {parent} or choose a data_dir under a world-traversable path",
            )
