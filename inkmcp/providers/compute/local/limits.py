"""Memory and CPU limits per service, enforced by the kernel through cgroups.

`deploy_app(resources=...)` must not be accepted and then ignored: on the local provider a
service's processes are placed in their own cgroup with `memory_mb` as a hard memory limit (no swap)
and `cpus` as a CFS quota. cgroup v2 (the unified hierarchy, Debian 12's default) is preferred;
hosts still on v1 use its memory and cpu controllers. Without root or without the controllers the
limits cannot be enforced, and `reason` says why (reported in the deployment history).

A process joins its group in the forked child, while still root and before it execs tenant code
(see `supervisor._join_cgroups_then_drop`), so nothing it forks can start outside the limits.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from inkmcp.providers.compute.base import Resources

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


class Cgroups:
    def __init__(self, parent: str = "inkmcp", root: Path = CGROUP_ROOT) -> None:
        self.parent = parent
        self.root = root
        self.version: int | None = None
        self.reason = ""
        self._detect()

    @property
    def available(self) -> bool:
        return self.version is not None

    def _detect(self) -> None:
        if os.geteuid() != 0:
            self.reason = "InkMCP is not running as root"
            return
        unified = self.root / "cgroup.controllers"
        if unified.exists() and {"memory", "cpu"} <= set(unified.read_text().split()):
            try:
                self._enable_v2(self.root)
                base = self.root / self.parent
                base.mkdir(exist_ok=True)
                self._enable_v2(base)
                self.version = 2
                return
            except OSError as e:
                self.reason = f"cgroup v2 controllers cannot be delegated: {e.strerror}"
        v1 = [self.root / "memory", self.root / "cpu"]
        if all((d / "cgroup.procs").exists() for d in v1):
            try:
                for d in v1:
                    (d / self.parent).mkdir(exist_ok=True)
                self.version = 1
                self.reason = ""
                return
            except OSError as e:
                self.reason = f"cgroup v1 hierarchy is not writable: {e.strerror}"
        elif not self.reason:
            self.reason = "no cgroup memory and cpu controllers on this host"

    @staticmethod
    def _enable_v2(group: Path) -> None:
        control = group / "cgroup.subtree_control"
        if not {"memory", "cpu"} <= set(control.read_text().split()):
            control.write_text("+memory +cpu")

    def _dirs(self, group: str) -> list[Path]:
        if self.version == 2:
            return [self.root / self.parent / group]
        return [self.root / "memory" / self.parent / group, self.root / "cpu" / self.parent / group]

    def ensure(self, group: str, resources: Resources) -> None:
        """Create (or update) the group's limits."""
        if not self.available:
            return
        memory = resources.memory_mb * 1024 * 1024
        quota = max(1000, int(resources.cpus * PERIOD_US))
        dirs = self._dirs(group)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        if self.version == 2:
            d = dirs[0]
            (d / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):  # absent when the kernel has no swap accounting
                (d / "memory.swap.max").write_text("0")
            (d / "cpu.max").write_text(f"{quota} {PERIOD_US}")
        else:
            mem, cpu = dirs
            (mem / "memory.limit_in_bytes").write_text(str(memory))
            with contextlib.suppress(OSError):
                (mem / "memory.memsw.limit_in_bytes").write_text(str(memory))
            (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (cpu / "cpu.cfs_quota_us").write_text(str(quota))

    def procs_files(self, group: str) -> tuple[str, ...]:
        """The cgroup.procs files a process writes its pid to in order to join `group`."""
        return tuple(str(d / "cgroup.procs") for d in self._dirs(group)) if self.available else ()

    def attach(self, group: str, pid: int) -> None:
        if not self.available:
            return
        for d in self._dirs(group):
            try:
                (d / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                return  # already gone
            except OSError as e:
                log.warning("could not place pid %s in cgroup %s: %s", pid, d, e.strerror)

    def remove(self, group: str) -> None:
        """Delete the group once its processes are gone (rmdir fails while any remain)."""
        if not self.available:
            return
        for d in self._dirs(group):
            with contextlib.suppress(FileNotFoundError, OSError):
                d.rmdir()
