"""Memory, CPU and process-count limits per service, enforced by the kernel through cgroups.

`deploy_app(resources=...)` must not be accepted and then ignored: on the local provider every
process of a service (its build steps, its release command and its runtime processes) runs in the
service's own cgroup, with `memory_mb` as a hard memory limit (no swap), `cpus` as a CFS quota and
`pids_max` (INKMCP_PIDS_MAX) as a cap on processes plus threads, so one tenant can neither take the
machine's memory nor fork-bomb it. cgroup v2 (the unified hierarchy, Debian 12's default) is
preferred; hosts still on v1 use its memory, cpu, pids and freezer controllers. Without root or
without the controllers the limits cannot be enforced, and `reason` says why (the deployment history
shows it).

A process joins its group while still root and before it execs tenant code, so nothing it forks
can start outside the limits: runtime processes and release commands in the `inkmcp-spawn` exec
wrapper that the server vforks (`spawn.py`), build steps in the forked child of
`inkmcp.build.process.TenantSandbox`. Because
every descendant stays in the group, the group is also how a service is ended for good: `kill_all`
freezes it, SIGKILLs every member (double-forked `setsid` daemons included, which no process-tree
walk finds) and waits until it is empty.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from inkmcp.errors import ProviderError
from inkmcp.providers.compute.base import Resources

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000
DEFAULT_PIDS_MAX = 512
V1_REQUIRED = ("memory", "cpu", "pids")
V1_OPTIONAL = ("freezer",)  # without it kill_all still works, by killing until the group is empty
V2_CONTROLLERS = ("memory", "cpu", "pids")
KERNEL = Path("/proc/sys/kernel")
PARENT_MODE = 0o711
"""InkMCP's parent groups (`inkmcp`, `inkmcp-tenant-pg`): traversable, not listable by tenants (`Cgroups._unlisted`)."""
TENANT_TASK_SHARE = 0.75
"""Of the machine's task limit (the lower of kernel.pid_max and kernel.threads-max), what all tenants together
may hold: the parent group's pids.max. Per service is INKMCP_PIDS_MAX (512), but one account may run 20 projects
x 10 services, 102,400 tasks, and pid_max is 32,768 on a kernel nobody raised it on (this test box): with every
PID taken, nothing on the machine forks, InkMCP's spawns, nginx and PostgreSQL's backends included (red team
2026-12-01). The remaining quarter is the host's and the control plane's."""


def tenant_task_budget(kernel: Path = KERNEL) -> int | None:
    """TENANT_TASK_SHARE of min(pid_max, threads-max), or None when neither can be read."""
    limits = []
    for name in ("pid_max", "threads-max"):
        with contextlib.suppress(OSError, ValueError):
            limits.append(int((kernel / name).read_text()))
    return int(min(limits) * TENANT_TASK_SHARE) if limits else None


@dataclass(frozen=True)
class LimitEvents:
    """Kernel counters of a group: how often its limits bit."""

    oom_kills: int = 0  # processes the OOM killer killed because the group hit its memory limit
    pids_refused: int = 0  # fork/clone calls refused because the group hit pids.max


@dataclass(frozen=True)
class LimitHit:
    """Why a command failed, when the cause was one of the service's limits (an actionable error)."""

    message: str
    argument: str | None
    fix: str


class CgroupKillError(ProviderError):
    """Some process of a service's group would not die (it stays in the group, so it is still capped)."""


class Cgroups:
    def __init__(
        self, parent: str = "inkmcp", root: Path = CGROUP_ROOT, *, pids_max: int = DEFAULT_PIDS_MAX
    ) -> None:
        if pids_max < 1:
            raise ValueError("pids_max must be at least 1 (INKMCP_PIDS_MAX)")
        self.parent = parent
        self.root = root
        self.pids_max = pids_max
        self.version: int | None = None
        self.reason = ""
        self.controllers: tuple[str, ...] = ()
        self.applied: dict[str, Resources] = {}  # group -> the limits `ensure` set (for error messages)
        self._detect()

    @property
    def available(self) -> bool:
        return self.version is not None

    def _detect(self) -> None:
        if os.geteuid() != 0:
            self.reason = "InkMCP is not running as root"
            return
        unified = self.root / "cgroup.controllers"
        if unified.exists() and set(V2_CONTROLLERS) <= set(unified.read_text().split()):
            try:
                self._enable_v2(self.root)
                base = self.root / self.parent
                base.mkdir(exist_ok=True)
                self._unlisted(base)
                self._enable_v2(base)
                self.version = 2
                self.controllers = V2_CONTROLLERS
                self._cap_tenants(base / "pids.max")
                return
            except OSError as e:
                self.reason = f"cgroup v2 controllers cannot be delegated: {e.strerror}"
        present = [c for c in (*V1_REQUIRED, *V1_OPTIONAL) if (self.root / c / "cgroup.procs").exists()]
        if set(V1_REQUIRED) <= set(present):
            try:
                for c in present:
                    (self.root / c / self.parent).mkdir(exist_ok=True)
                    self._unlisted(self.root / c / self.parent)
                self.version = 1
                self.controllers = tuple(present)
                self.reason = ""
                self._cap_tenants(self.root / "pids" / self.parent / "pids.max")
                return
            except OSError as e:
                self.reason = f"cgroup v1 hierarchy is not writable: {e.strerror}"
        elif not self.reason:
            missing = ", ".join(c for c in V1_REQUIRED if c not in present)
            self.reason = f"no cgroup {missing} controller on this host (memory, cpu and pids are needed)"

    @staticmethod
    def _unlisted(parent: Path) -> None:
        """PARENT_MODE on InkMCP's parent group: its children are named after service ids, and a 0755 directory
        let any tenant list every other tenant's (red team 2026-12-01; hidepid covers /proc, not cgroupfs). The
        kernel does not check these bits for its own use, and root (InkMCP, which writes every control file and
        joins processes to groups) bypasses them; a tenant still reaches its own group by its path (the x bit), as
        /proc/self/cgroup names it. cgroup v2 behaves alike (kernfs directories honour chmod there too)."""
        try:
            if parent.stat().st_mode & 0o777 != PARENT_MODE:
                parent.chmod(PARENT_MODE)
        except OSError as e:
            log.warning("could not make cgroup %s unlistable (mode %o): %s", parent, PARENT_MODE, e.strerror)

    @staticmethod
    def _cap_tenants(pids_max: Path) -> None:
        """All tenants' tasks together stay under `tenant_task_budget` (best effort: never lowers a smaller cap)."""
        budget = tenant_task_budget()
        if budget is None or not pids_max.exists():
            return
        try:
            current = pids_max.read_text().strip()
            if current == "max" or int(current) > budget:
                pids_max.write_text(str(budget))
        except (OSError, ValueError) as e:
            log.warning("could not cap all tenants' processes at %d (%s): %s", budget, pids_max, e)

    @staticmethod
    def _enable_v2(group: Path) -> None:
        control = group / "cgroup.subtree_control"
        enabled = set(control.read_text().split())
        wanted = [c for c in V2_CONTROLLERS if c not in enabled]
        if wanted:
            control.write_text(" ".join(f"+{c}" for c in wanted))

    def _dir(self, controller: str, group: str) -> Path:
        if self.version == 2:
            return self.root / self.parent / group
        return self.root / controller / self.parent / group

    def _dirs(self, group: str) -> list[Path]:
        if self.version == 2:
            return [self.root / self.parent / group]
        return [self.root / c / self.parent / group for c in self.controllers]

    def ensure(self, group: str, resources: Resources, gid: int | None = None) -> None:
        """Create (or update) the group's limits. Must run before anything of the service is spawned.

        `gid`: the group's dirs become root:gid 0750 (redteam4): its own project reads its limits and usage, no
        other tenant does. Their ids are no secret (every service's mount is in /proc/self/mountinfo), and with
        the kernel's 0755 another tenant read a service's pids (cgroup.procs), memory (memory.stat) and CPU use
        (tests/security/test_redteam4_cgroup_peek.py)."""
        if not self.available:
            return
        memory = resources.memory_mb * 1024 * 1024
        quota = max(1000, int(resources.cpus * PERIOD_US))
        for d in self._dirs(group):
            d.mkdir(parents=True, exist_ok=True)
            if gid is not None:  # --- redteam4
                os.chown(d, 0, gid)
                os.chmod(d, 0o750)  # noqa: S103 (root:its project group, no other tenant)
        self.applied[group] = resources
        if self.version == 2:
            d = self._dir("memory", group)
            (d / "memory.max").write_text(str(memory))
            with contextlib.suppress(OSError):  # absent when the kernel has no swap accounting
                (d / "memory.swap.max").write_text("0")
            (d / "cpu.max").write_text(f"{quota} {PERIOD_US}")
            (d / "pids.max").write_text(str(self.pids_max))
            return
        mem, cpu, pids = (self._dir(c, group) for c in V1_REQUIRED)
        # memory.limit_in_bytes <= memory.memsw.limit_in_bytes must hold after every write: when the
        # limit grows, raise memsw (memory + swap) first; when it shrinks, lower memory first.
        limit, memsw = mem / "memory.limit_in_bytes", mem / "memory.memsw.limit_in_bytes"
        growing = memory > int(limit.read_text())
        for path in (memsw, limit) if growing else (limit, memsw):
            try:
                path.write_text(str(memory))
            except OSError:
                if path == limit:
                    raise
                # no swap accounting (memsw absent): swap use cannot be capped, memory still is
        # --- redteam4: socket buffers. cgroup v1 charges a socket's send and receive queues (TCP, and UDP's) to
        # no group unless the group has a kmem.tcp limit: without one, a tenant's loopback connections held
        # 153 MiB of kernel memory with 16 sockets (its memcg +2 MiB), and ~250 reach tcp_mem's max, when every
        # TCP socket on the machine stops getting memory. The limit charges them to the group (its own counter,
        # as large as memory_mb): past it only its own sockets are throttled (test_redteam4_socket_memory.py).
        # v2's memory.max covers socket memory already.
        with contextlib.suppress(OSError):  # absent on a kernel without v1 kmem accounting
            (mem / "memory.kmem.tcp.limit_in_bytes").write_text(str(memory))
        # --- end
        (cpu / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (cpu / "cpu.cfs_quota_us").write_text(str(quota))
        (pids / "pids.max").write_text(str(self.pids_max))

    def set_weight(self, group: str, weight: int) -> None:
        """The group's CPU weight beside its siblings when the machine is busy (after `ensure`; best effort).

        `weight` is on cgroup v2's scale (cpu.weight, 1..10000, 100 = an ordinary group); on v1 it becomes
        cpu.shares on that scale (1024 = ordinary, at least 2). A host that refuses the write logs why: the
        group's hard caps (`ensure`) still hold, only its share of a contended CPU stays the default.
        """
        if not self.available:
            return
        if not 1 <= weight <= 10_000:
            raise ValueError(f"CPU weight {weight} is outside 1..10000 (cgroup v2 cpu.weight)")
        if self.version == 2:
            path, value = self._dir("cpu", group) / "cpu.weight", str(weight)
        else:
            path, value = self._dir("cpu", group) / "cpu.shares", str(max(2, weight * 1024 // 100))
        try:
            path.write_text(value)
        except OSError as e:
            log.warning("could not set the CPU weight of cgroup %s (%s): %s", group, path, e.strerror)

    def watch(self, group: str) -> LimitWatch | None:
        """What the sandbox uses to explain a failure by this group's limits (None before `ensure`)."""
        resources = self.applied.get(group)
        return LimitWatch(self, group, resources) if self.available and resources is not None else None

    def procs_files(self, group: str) -> tuple[str, ...]:
        """The cgroup.procs files a process writes to in order to join `group` (one per controller on v1)."""
        return tuple(str(d / "cgroup.procs") for d in self._dirs(group)) if self.available else ()

    def attach(self, group: str, pid: int) -> None:
        """Move a running process into the group (tests; services join from their forked child)."""
        if not self.available:
            return
        for d in self._dirs(group):
            try:
                (d / "cgroup.procs").write_text(str(pid))
            except ProcessLookupError:
                return  # already gone
            except OSError as e:
                log.warning("could not place pid %s in cgroup %s: %s", pid, d, e.strerror)

    # -- what the limits did ----------------------------------------------------------------------

    def events(self, group: str) -> LimitEvents:
        """The group's OOM-kill and refused-fork counters (zero when unavailable)."""
        if not self.available:
            return LimitEvents()
        mem, pids = self._dir("memory", group), self._dir("pids", group)
        if self.version == 2:
            oom = _counter(mem / "memory.events", "oom_kill")
        else:
            # memory.oom_control has an oom_kill counter since Linux 4.13; older kernels only count
            # how often the limit was reached (failcnt), which is the best available sign.
            oom = _counter(mem / "memory.oom_control", "oom_kill")
            if oom is None:
                oom = _read_int(mem / "memory.failcnt")
        return LimitEvents(oom_kills=oom or 0, pids_refused=_counter(pids / "pids.events", "max") or 0)

    def explain(self, group: str, before: LimitEvents, resources: Resources, what: str) -> LimitHit | None:
        """If a limit bit since `before`, the error to show for the failed `what` ("the build", ...)."""
        after = self.events(group)
        if after.oom_kills > before.oom_kills:
            mb = resources.memory_mb
            more = min(mb * 2, 16384)
            return LimitHit(
                message=f"{what} ran out of memory: the service's limit is {mb} MiB (resources.memory_mb)",
                argument="resources",
                fix=f"raise it with deploy_app(resources={{'memory_mb': {more}}}) or make {what} use less",
            )
        if after.pids_refused > before.pids_refused:
            return LimitHit(
                message=f"{what} hit the service's limit of {self.pids_max} processes and threads (INKMCP_PIDS_MAX): "
                "the kernel refused to start more",
                argument=None,
                fix=f"make {what} start fewer processes or threads (fewer parallel jobs or workers), or ask the "
                "operator to raise INKMCP_PIDS_MAX",
            )
        return None

    # -- ending a service ---------------------------------------------------------------------------

    def pids(self, group: str) -> set[int]:
        """Every process in the group, in any of its controllers (zombies are not listed)."""
        found: set[int] = set()
        if not self.available:
            return found
        for d in self._dirs(group):
            with contextlib.suppress(FileNotFoundError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def kill_all(self, group: str, timeout: float = 10.0) -> int:
        """SIGKILL every process of the group and return once the group is empty; returns how many died.

        The group is frozen while its members are listed and signalled, so nothing can fork a new
        process between the listing and the kill (on v2 with cgroup.kill the kernel does it in one
        step). Blocking: run it in a thread. Raises CgroupKillError after `timeout` seconds.
        """
        if not self.available:
            return 0
        killed: set[int] = set()
        deadline = time.monotonic() + timeout
        kill_file = self._dir("memory", group) / "cgroup.kill"
        pause = 0.002
        while True:
            members = self.pids(group)
            if not members:
                return len(killed)
            if time.monotonic() > deadline:
                raise CgroupKillError(
                    f"processes {sorted(members)} of cgroup {group} are still alive {timeout:g}s after SIGKILL "
                    "(stuck in the kernel, e.g. on a hung file system); they stay capped by the service's limits",
                    fix="retry the delete in a minute; if it persists the operator can inspect them with ps",
                )
            if self.version == 2 and kill_file.exists():
                with contextlib.suppress(FileNotFoundError):
                    kill_file.write_text("1")
                killed |= members
            else:
                with self._frozen(group):
                    members = self.pids(group)
                    for pid in members:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    killed |= members
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    @contextlib.contextmanager
    def _frozen(self, group: str, settle: float = 1.0) -> Iterator[None]:
        """Freeze the group for the duration (best effort: a task stuck in the kernel may not freeze)."""
        if self.version == 2:
            state, frozen, thawed = self._dir("memory", group) / "cgroup.freeze", "1", "0"
        elif "freezer" in self.controllers:
            state, frozen, thawed = self._dir("freezer", group) / "freezer.state", "FROZEN", "THAWED"
        else:
            yield
            return
        try:
            state.write_text(frozen)
        except OSError:
            yield
            return
        try:
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline and not self._is_frozen(state):
                time.sleep(0.001)
            yield
        finally:
            with contextlib.suppress(OSError):
                state.write_text(thawed)

    def _is_frozen(self, state: Path) -> bool:
        if self.version == 2:
            return _counter(state.with_name("cgroup.events"), "frozen") == 1
        return state.read_text().strip() == "FROZEN"

    def remove(self, group: str) -> None:
        """Delete the group once its processes are gone (rmdir fails while any remain)."""
        if not self.available:
            return
        self.applied.pop(group, None)
        for d in self._dirs(group):
            try:
                d.rmdir()
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("could not remove cgroup %s: %s", d, e.strerror)


@dataclass(frozen=True)
class LimitWatch:
    """The limits of one service as the sandbox sees them: snapshot before a command, explain after.

    Satisfies `inkmcp.build.process.LimitProbe`, so the build runner can say "out of memory" instead
    of "exited with -9" without knowing about cgroups.
    """

    cgroups: Cgroups
    group: str
    resources: Resources

    def snapshot(self) -> LimitEvents:
        return self.cgroups.events(self.group)

    def exceeded(self, since: object, what: str) -> LimitHit | None:
        before = since if isinstance(since, LimitEvents) else LimitEvents()
        return self.cgroups.explain(self.group, before, self.resources, what)

    def end_leftovers(self) -> int:
        return self.cgroups.kill_all(self.group)


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _counter(path: Path, key: str) -> int | None:
    """`key N` from a flat-keyed cgroup file (memory.events, pids.events, memory.oom_control)."""
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        return None
    return None
