"""Subprocess helpers shared by source fetching and builds, and the one way to start tenant code.

`TenantSandbox` + `spawn` start every tenant process (build step, release command, the copy of a
reused build, supervised runtime process). As root, the forked child, before it execs anything of
the tenant's:

1. sets RLIMIT_CORE=0 (no core files full of env secrets) and RLIMIT_FSIZE (INKMCP_MAX_FILE_MB, so
   one file cannot fill the disk);
1b. raises its OOM score adjustment to TENANT_OOM_SCORE_ADJ (inherited by all it forks). Each service's memory is
   capped by its cgroup, but the caps of all services of all accounts together may exceed the host's memory: when
   the host itself runs out, the kernel kills the process with the highest score, by default the largest, which
   may be InkMCP, the control-plane PostgreSQL or the front proxy (every tenant's outage at once). With it, any
   tenant process is chosen before any of those (their adjustment is 0). Raising needs no privilege; written by
   root with CAP_SYS_RESOURCE it is also the floor the tenant cannot go back under (the kernel's
   `oom_score_adj_min`); without that capability (some containers) a tenant can lower its own back to 0, never
   below (tests/security/test_oom_preference.py);
2. joins the service's cgroups (memory, cpu, pids, ...): everything it forks stays capped and can be
   killed as a group;
3. enters a private mount namespace (propagation to the host cut with MS_SLAVE) and mounts the
   service's own tmp dir on /tmp and /var/tmp and a fresh size-capped tmpfs on /dev/shm, so tenants
   share no temp files with each other or with the host, and its own /proc with hidepid=2, so other
   users' processes are invisible. First, before /tmp is replaced (a hidden dir may lie under the host's /tmp),
   an empty read-only tmpfs, mode 000, covers each of the sandbox's `hidden_dirs`: directories the tenant's
   uid owns but its code must not reach, i.e. the project's git mirrors. git runs as the tenant's uid outside
   the sandbox (build/source.py) and reads a mirror's own config, so a setting planted there by the tenant's
   build or app acted in InkMCP's next fetch, in the host's mount namespace (red team 4: `http.cookieFile` and
   `saveCookies` wrote into the host's /tmp). Covered, the mirrors are written by git only
   (tests/security/test_mirror_config.py);
3b. enters a private IPC namespace. SysV shared memory, message queues and semaphore sets, and POSIX
   message queues, belong to the IPC namespace, not to the mount namespace or a cgroup. In the host's, a
   tenant's objects are seen by every other tenant (a key and mode 0666 are all it takes: a channel past
   every other wall), outlive its processes, service and deleted project (nobody removes them; their pages
   stay charged to a cgroup that is gone, so deploy-fill-delete repeats without bound), and count against
   the host's limits: 4096 shm ids (kernel.shmmni), 256 POSIX queues. A tenant holding every shm id leaves
   PostgreSQL unable to start (its postmaster needs one SysV segment: "could not create shared memory
   segment: No space left on device"), so the control plane and every tenant database stay down after
   their next restart. In a namespace of its own the objects count against its own limits, nobody else
   sees them, and the kernel frees them when its last process exits (tests/security/test_redteam3_ipc.py);
4. drops to the tenant (setgroups([]), setresgid, setresuid) and sets PR_SET_NO_NEW_PRIVS, so no setuid or
   file-capability binary can raise its rights again;
4a. joins a session keyring of its own (empty, the tenant's; --- redteam5). Keyrings are not in any namespace the
   sandbox makes, and the session keyring survives setresuid: an InkMCP started with one (systemd's default
   KeyringMode=private for a service, pam_keyinit in a login) handed it to every tenant process, which possesses it
   and so read and wrote root's keys there (possessor rights, whatever the owner) and shared it with every other
   tenant. Skipped where keyctl is unavailable to everyone (ENOSYS, a seccomp filter's EPERM)
   (tests/security/test_redteam5_keyrings.py);
4b. enters a Landlock domain of its own scoped to abstract unix sockets and signals (Linux 6.12+, Landlock
   ABI 6; `landlock_scope_abi`): abstract socket names (`@name`) have no owner or mode and belong to the network
   namespace, which every tenant shares with the host, so any tenant's code could connect to another's
   (`@rt3-alice-admin`) and read what it serves; the loopback guard sees TCP only. In the domain a process
   connects (or sends a datagram) only to abstract sockets created inside it (its own, its descendants') and
   signals only its own process tree. Each started process is a domain of its own: two processes of one
   project started apart (a Procfile's web and worker, two build steps) cannot meet on an abstract socket
   either (a filesystem unix socket still works). Without ABI 6 (an older kernel, Landlock not enabled) the
   step is skipped and `inkmcp doctor` says so (tests/security/test_landlock_scope.py).
   --- redteam5: with ABI 2-5 (Linux 5.19-6.11) the process still enters a domain, one that refuses nothing a
   tenant could do (it handles making block devices, which needs CAP_MKNOD, and reparenting, granted beneath "/"),
   for Landlock's ptrace rule: a process in a domain may ptrace, or open /proc/PID/{cwd,root,environ,fd,mem} of, only
   processes of its own domain. Without one, the app reached every process of its uid outside its sandbox: git runs
   as the tenant's uid in the host's mount namespace (build/source.py), so /proc/<git>/cwd was the project's git
   mirror (the hidden dir above), /proc/<git>/root/tmp the host's /tmp, and with ptrace allowed (Yama 0) its code ran
   in git (tests/security/test_redteam5_ptrace_domain.py);
5. only then chdirs to the working directory (a tenant-owned path: root never resolves it);
6. execs.

Without root there is nobody to switch to and no way to mount: the process runs as the current user
with none of the above (the local provider says so in the deployment history).

Steps 1-5 run in the forked child of a possibly multi-threaded process, so the child does as little
as it can: every path is encoded and the libc handle loaded before the fork, there is no logging,
and a failure writes one pre-built line to the (already redirected) stderr and `_exit`s with 126
instead of raising, so the reason ends up in the build or runtime log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import json
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import psutil

from inkmcp.build.plan import RunAs

DEFAULT_MAX_FILE_BYTES = 2 * 1024**3
DEFAULT_SHM_BYTES = 64 * 1024**2
TENANT_OOM_SCORE_ADJ = 500
"""Step 1b's adjustment (of -1000..1000; 0 is every other process's): half the scale, so a tenant process is the host
OOM killer's choice over InkMCP's own processes unless those hold more than half the memory. Kubernetes gives
burstable pods 2-999 and its own daemons -999 for the same reason."""
SANDBOX_EXIT = 126  # the child could not be confined; nothing of the tenant ran
# The host's shared temp dirs, which the sandbox replaces with the service's own (not used as temp dirs here).
TMP, VAR_TMP, DEV_SHM = "/tmp", "/var/tmp", "/dev/shm"  # noqa: S108
PRIVATE_TMP_MOUNTS = (TMP, VAR_TMP)

# --- quota: the host's other world-writable dirs, which the sandbox also replaces with the service's own tmp
_SCAN_PARENTS = ("/", "/var", "/run", "/srv", "/opt", "/home", "/mnt", "/media", "/usr/local")
_SCAN_DEEPER = ("/var/lib", "/var/cache", "/var/spool", "/var/local")


@lru_cache(maxsize=1)
def shared_writable_dirs() -> tuple[str, ...]:
    """Directories every user may write on the host besides /tmp and /dev/shm: /var/tmp, and others such as
    /run/lock (= /var/lock; on this box on the root filesystem itself), found once per process among the
    children of a few system dirs (and grandchildren under /var/lib, /var/cache, /var/spool).

    A tenant's files there would land on a host filesystem outside its project's disk limit (diskquota.py)
    and could fill the one the control plane is on. The sandbox mounts the service's own temp dir over each
    (like /var/tmp), so those writes count against the project's space. Real dirs only (symlinks such as
    /var/lock resolve to one found anyway); /tmp, /dev/shm, /proc, /sys and /dev are handled apart.
    """
    found: list[str] = []
    parents = [*_SCAN_PARENTS]
    for deeper in _SCAN_DEEPER:
        with contextlib.suppress(OSError):
            parents += [e.path for e in os.scandir(deeper) if e.is_dir(follow_symlinks=False)]
    for parent in parents:
        try:
            entries = list(os.scandir(parent))
        except OSError:
            continue
        for entry in entries:
            path = entry.path.replace("//", "/")
            if path in (TMP, DEV_SHM, "/proc", "/sys", "/dev") or not entry.is_dir(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mode & 0o002:
                    found.append(path)
    if VAR_TMP in found:  # first: the historic one, mounted from /tmp like the others
        found.remove(VAR_TMP)
        found.insert(0, VAR_TMP)
    return tuple(dict.fromkeys(found))
# --- end

_CLONE_NEWNS = 0x00020000
_CLONE_NEWIPC = 0x08000000
_PR_SET_NO_NEW_PRIVS = 38
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_BIND = 4096
_MS_REC = 16384
_MS_SLAVE = 1 << 19
# step 3's cover for a hidden dir: empty, read-only, nobody's to enter (mode 000: root's, and root does not go in)
_HIDE_FLAGS = _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC
_HIDE_OPTIONS = b"size=4k,nr_inodes=1,mode=000"

# --- redteam5: step 4a, keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL); keyctl's number by architecture (asm-generic: 219)
SYS_KEYCTL = {"x86_64": 250, "i686": 288, "i386": 288, "aarch64": 219, "riscv64": 219, "loongarch64": 219,
               "ppc64le": 311, "ppc64": 311, "s390x": 280, "armv7l": 311}.get(os.uname().machine)
_KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_CLEAR = 7
KEY_SPEC_USER_KEYRING = -4
KEY_SPEC_USER_SESSION_KEYRING = -5
# --- end

# --- landlock: the scope every tenant process gets (step 4b); the syscall numbers are the same on every architecture
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_SCOPE_ABI = 6  # the first ABI with `scoped` (Linux 6.12)
_LANDLOCK_SCOPE = 1 | 2  # LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL


@lru_cache(maxsize=1)
def landlock_scope_abi() -> int:
    """The kernel's Landlock ABI version when it can scope abstract unix sockets and signals (>= 6), else 0
    (an older kernel, Landlock not in the LSMs, or a seccomp profile refusing the syscall)."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_long(0),
                       ctypes.c_long(_LANDLOCK_CREATE_RULESET_VERSION))  # fmt: skip
    return abi if abi >= LANDLOCK_SCOPE_ABI else 0


# --- redteam5: ABI 2-5, a domain for Landlock's ptrace rule alone (step 4b)
_SYS_LANDLOCK_ADD_RULE = 445
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_ACCESS_FS_MAKE_BLOCK = 1 << 11
_LANDLOCK_ACCESS_FS_REFER = 1 << 13
_O_PATH = 0o10000000


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = (("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32))


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 without Landlock (not cached: cheap, and tests fake it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_long(0),
                       ctypes.c_long(_LANDLOCK_CREATE_RULESET_VERSION))  # fmt: skip
    return max(abi, 0)
# --- end


async def kill_process_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the process and everything it spawned (git-remote-https, pip, npm): they share its session,
    because every build subprocess is started with start_new_session=True."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await reap(proc)


REAP_DRAIN_SECONDS = 5.0


async def reap(proc: asyncio.subprocess.Process, drain_seconds: float = REAP_DRAIN_SECONDS) -> int:
    """Wait for a process that was just killed, whatever is left in its pipes.

    On Python 3.11 `Process.wait()` returns only once every pipe of the process has been closed, and a
    pipe whose unread output filled the reader's buffer is paused and never reads its EOF: a killed git
    that had printed more than 64 KiB nobody read left `wait()` pending forever (the poisoned-tree test of
    tests/security/test_git_limits.py hung that way). So the pipes are drained (their contents dropped)
    beside the wait; if a descendant that left the process group still holds a pipe open after
    `drain_seconds`, the pipes are closed from this side instead.
    """
    drains = [_discard(s) for s in (proc.stdout, proc.stderr) if s is not None]
    try:
        await asyncio.wait_for(asyncio.gather(proc.wait(), *drains), drain_seconds)
    except TimeoutError:
        close_pipes(proc)
    return await proc.wait()


async def _discard(stream: asyncio.StreamReader) -> None:
    # RuntimeError: another coroutine is reading this stream already, and will see its EOF itself
    with contextlib.suppress(RuntimeError, ConnectionError):
        while await stream.read(1 << 16):
            pass


class ExitAwareProtocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Signals the moment the process exits, independent of its output pipes closing.

    On Python 3.11 `Process.wait()` returns only once every pipe is closed too, and a daemon the
    process left behind can hold them for as long as it lives."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=65536, loop=loop)
        self.exited = asyncio.Event()
        self.on_exit: list[Callable[[], None]] = []  # run once it exited (a prepared start cleans up)

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()
        for callback in self.on_exit:
            callback()
        self.on_exit.clear()


def close_pipes(proc: asyncio.subprocess.Process) -> None:
    """Let go of a process's stdout/stderr from this side: their readers see EOF now, whoever else
    still holds the other end (a descendant that left the process group)."""
    transport = getattr(proc, "_transport", None)  # asyncio's own; no public way to close a process's pipes
    for fd in (1, 2):
        pipe = transport.get_pipe_transport(fd) if transport is not None else None
        if pipe is not None:
            pipe.close()


# How InkMCP's own lines in a service's logs begin (after the `name | ` prefix of runtime lines): statements
# of the platform ("[inkmcp] out of credits, sleeping") and a build's failure reasons ("!! ...").
PLATFORM_MARKERS = ("[inkmcp]", "!!")
TENANT_MARK = "(app) "


def tenant_line(text: str) -> str:
    """A line of tenant output as it goes into a log that InkMCP writes to as well.

    get_logs shows both in one stream, and an agent acts on the platform's lines; so a tenant line that
    begins like one (printed by the app itself, or a visitor's input it logs raw) is marked as the app's
    instead of passing for InkMCP's."""
    return TENANT_MARK + text if text.startswith(PLATFORM_MARKERS) else text


def write_pid_file(path: Path, pid: int) -> bool:
    """Record a running process as {pid, create_time}: the create time lets a later reaper (the local
    provider's `reap_stale`) tell the process from an unrelated one that reused its pid."""
    try:
        created = psutil.Process(pid).create_time()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": pid, "create_time": created}))
        return True
    except (psutil.Error, OSError):
        return False


class LimitProbe(Protocol):
    """Explains a failure by the service's limits (the local provider's cgroup counters)."""

    def snapshot(self) -> object: ...

    def exceeded(self, since: object, what: str) -> LimitExplanation | None: ...

    def end_leftovers(self) -> int:
        """Kill every process still in the group (blocking); how many there were.

        A build step's own process group dies with it, but a daemon (`setsid`, double fork) left the
        group and only the cgroup still holds it."""
        ...


class LimitExplanation(Protocol):
    @property
    def message(self) -> str: ...

    @property
    def argument(self) -> str | None: ...

    @property
    def fix(self) -> str: ...


def private_tmp_conflict(path: Path) -> str | None:
    """Why tenant processes could not reach `path` once /tmp and /var/tmp are private, or None.

    A data dir under /tmp would be hidden by the service's own /tmp mounted over it.
    """
    resolved = path.resolve()
    for mount in PRIVATE_TMP_MOUNTS:
        base = Path(mount).resolve()
        if resolved == base or base in resolved.parents:
            return (
                f"{path} is under {mount}, which every tenant process sees replaced by its service's private "
                f"temp dir; set INKMCP_DATA_DIR to a directory outside /tmp and /var/tmp (the default as root is "
                "/var/lib/inkmcp)"
            )
    return None


@dataclass(frozen=True)
class TenantSandbox:
    """How one service's processes are confined (see the module docstring for the order of steps).

    `tmp_dir` is the service's private temp dir: tenant-owned 0700, its parent root-owned, so the
    tenant can fill it but never swap it for a symlink. `cgroup_procs` are the cgroup.procs files to
    join (`Cgroups.procs_files`); empty when cgroups are unavailable. `limits` explains a failure
    caused by them.
    """

    run_as: RunAs | None
    cgroup_procs: tuple[str, ...] = ()
    tmp_dir: Path | None = None
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    shm_bytes: int = DEFAULT_SHM_BYTES
    limits: LimitProbe | None = field(default=None, compare=False)
    oom_score_adj: int = TENANT_OOM_SCORE_ADJ  # step 1b, for processes run as a tenant (`run_as`)
    hidden_dirs: tuple[Path, ...] = ()  # step 3, with `tmp_dir`: covered by an empty tmpfs (must exist, root's parent)

    @property
    def enforced(self) -> bool:
        """True when the child can be confined (InkMCP is root)."""
        return os.geteuid() == 0

    def environment(self, env: dict[str, str]) -> dict[str, str]:
        """The env the process gets: TMPDIR points at /tmp, which is the service's own when enforced."""
        if self.enforced and self.tmp_dir is not None:
            return {**env, "TMPDIR": TMP}
        return env

    def popen_kwargs(self, cwd: Path) -> dict[str, object]:
        """cwd/identity/preexec arguments for Popen or loop.subprocess_exec."""
        if not self.enforced:
            if self.run_as is not None and self.run_as.uid != os.geteuid():
                raise PermissionError(f"only root can run processes as {self.run_as.user}")
            return {"cwd": str(cwd)}
        # cwd=None: Popen would chdir as root, before the drop, following whatever the tenant put there.
        return {"cwd": None, "preexec_fn": _ChildSetup(self, cwd)}


@lru_cache(maxsize=1)
def _proc_has_private_options() -> bool:
    """Linux >= 5.8: each proc mount has its own hidepid (before, the option was shared by all mounts)."""
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 8)


@lru_cache(maxsize=1)
def _libc() -> tuple[Callable[..., int], Callable[..., int], Callable[..., int]]:
    """unshare(2), mount(2) and prctl(2), loaded once in the parent (Python 3.11 has no os.unshare)."""
    libc = ctypes.CDLL(None, use_errno=True)
    unshare = libc.unshare
    unshare.argtypes = [ctypes.c_int]
    unshare.restype = ctypes.c_int
    mount = libc.mount
    mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    mount.restype = ctypes.c_int
    prctl = libc.prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return unshare, mount, prctl


class _ChildSetup:
    """The preexec_fn: everything is prepared here, in the parent; `__call__` runs in the child."""

    def __init__(self, sandbox: TenantSandbox, cwd: Path) -> None:
        self.unshare, self.mount, self.prctl = _libc()
        self.fsize = sandbox.max_file_bytes
        self.oom_adj = str(sandbox.oom_score_adj).encode() if sandbox.run_as is not None else None  # step 1b
        self.procs = tuple(os.fsencode(p) for p in sandbox.cgroup_procs)
        self.tmp = os.fsencode(sandbox.tmp_dir) if sandbox.tmp_dir is not None else None
        self.var_tmps = tuple(os.fsencode(d) for d in shared_writable_dirs())  # --- quota: /var/tmp, /run/lock...
        self.shm = os.fsencode(DEV_SHM) if os.path.isdir(DEV_SHM) else None
        self.shm_options = f"size={sandbox.shm_bytes},mode=1777".encode()
        self.hide_pids = sandbox.run_as is not None and _proc_has_private_options()
        self.hidden = tuple(os.fsencode(d) for d in sandbox.hidden_dirs)
        run_as = sandbox.run_as
        self.ids = (run_as.uid, run_as.gid) if run_as is not None else None
        self.cwd = os.fsencode(cwd)
        # --- redteam5: step 4a's syscall, made here
        self.keyctl = ctypes.CDLL(None, use_errno=True).syscall if SYS_KEYCTL is not None else None
        self.join_args = (ctypes.c_long(SYS_KEYCTL or 0), ctypes.c_long(_KEYCTL_JOIN_SESSION_KEYRING),
                          ctypes.c_void_p(None))  # fmt: skip
        # --- end
        # --- landlock: everything the child's two syscalls take, made here (step 4b)
        self.scope = self.ids is not None and landlock_scope_abi() > 0
        # --- redteam5: ABI 2-5, the ptrace domain's ruleset and rule (the rule's fd is opened in the child)
        self.ptrace_domain = self.ids is not None and not self.scope and 2 <= landlock_abi() < LANDLOCK_SCOPE_ABI
        if self.ptrace_domain:
            self.ll_syscall = ctypes.CDLL(None, use_errno=True).syscall
            handled = ctypes.c_uint64(_LANDLOCK_ACCESS_FS_MAKE_BLOCK | _LANDLOCK_ACCESS_FS_REFER)
            self.ll_handled = handled
            self.ll_create = (ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), ctypes.byref(handled),
                              ctypes.c_long(ctypes.sizeof(handled)), ctypes.c_long(0))  # fmt: skip
            self.ll_rule = _PathBeneath(_LANDLOCK_ACCESS_FS_REFER, -1)
            self.ll_add = (ctypes.c_long(_SYS_LANDLOCK_ADD_RULE), ctypes.c_long(_LANDLOCK_RULE_PATH_BENEATH))
            self.ll_restrict = ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF)
        # --- end
        if self.scope:
            self.syscall = ctypes.CDLL(None, use_errno=True).syscall
            attr = (ctypes.c_uint64 * 3)(0, 0, _LANDLOCK_SCOPE)  # handled_access_fs, handled_access_net, scoped
            self.scope_args = (ctypes.c_long(_SYS_LANDLOCK_CREATE_RULESET), attr, ctypes.c_long(ctypes.sizeof(attr)),
                               ctypes.c_long(0))  # fmt: skip
            self.restrict = ctypes.c_long(_SYS_LANDLOCK_RESTRICT_SELF)
            self.zero_flags = ctypes.c_long(0)
        # --- end
        self.prefix = b"inkmcp: could not start the process in its sandbox: "
        self.zero = b"0"  # "0" written to cgroup.procs moves the writing process itself

    def _fail(self, step: bytes, errno: int) -> None:
        with contextlib.suppress(OSError):
            os.write(2, self.prefix + step + b": " + os.strerror(errno).encode() + b"\n")
        os._exit(SANDBOX_EXIT)

    def _check(self, rc: int, step: bytes) -> None:
        if rc != 0:
            self._fail(step, ctypes.get_errno())

    def __call__(self) -> None:
        step = b"setting resource limits"
        try:
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_FSIZE, (self.fsize, self.fsize))
            if self.oom_adj is not None:
                step = b"raising the OOM score"
                fd = os.open(b"/proc/self/oom_score_adj", os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, self.oom_adj)
                finally:
                    os.close(fd)
            step = b"joining the service's cgroup"
            for path in self.procs:
                fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(fd, self.zero)
                finally:
                    os.close(fd)
            if self.tmp is not None:
                self._check(self.unshare(_CLONE_NEWNS), b"entering a private mount namespace")
                self._check(self.unshare(_CLONE_NEWIPC), b"entering a private IPC namespace")  # redteam3
                self._check(self.mount(None, b"/", None, _MS_REC | _MS_SLAVE, None), b"making mounts private")
                for hidden in self.hidden:  # before /tmp is replaced: the path may lie under the host's /tmp
                    self._check(self.mount(b"tmpfs", hidden, b"tmpfs", _HIDE_FLAGS, _HIDE_OPTIONS),
                                b"hiding the project's git mirrors")
                self._check(self.mount(self.tmp, b"/tmp", None, _MS_BIND, None), b"mounting the private /tmp")
                for var_tmp in self.var_tmps:  # the same dir: /tmp now is it (the source may lie under /tmp)
                    self._check(self.mount(b"/tmp", var_tmp, None, _MS_BIND, None), b"mounting /var/tmp")
                if self.shm is not None:
                    rc = self.mount(b"tmpfs", self.shm, b"tmpfs", _MS_NOSUID | _MS_NODEV, self.shm_options)
                    self._check(rc, b"mounting a private /dev/shm")
                if self.hide_pids:
                    # A proc instance of our own with hidepid=2: other users' processes (cmdlines, cgroup
                    # paths with service ids, environ) become invisible. Best effort: procfs without
                    # per-mount options would apply it host-wide, so it is only tried on kernels that have them.
                    self.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"hidepid=2")
            if self.ids is not None:
                step = b"switching to the project's user"
                uid, gid = self.ids
                os.setgroups([])
                os.setresgid(gid, gid, gid)
                os.setresuid(uid, uid, uid)
                if self.keyctl is not None and self.keyctl(*self.join_args) < 0:  # --- redteam5: step 4a
                    err = ctypes.get_errno()
                    if err not in (errno.ENOSYS, errno.EPERM):
                        self._fail(b"joining a session keyring of its own", err)
                # No setuid-root or file-capability binary can give the tenant's code more than its own rights
                # (the egress table and the bind guard match the uid; `ping`'s cap_net_raw would be a raw socket).
                self._check(self.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), b"forbidding new privileges")
                if self.scope:  # --- landlock: step 4b (needs no_new_privs, just set)
                    ruleset = self.syscall(*self.scope_args)
                    if ruleset < 0:
                        self._fail(b"scoping abstract unix sockets and signals", ctypes.get_errno())
                    rc = self.syscall(self.restrict, ctypes.c_long(ruleset), self.zero_flags)
                    self._check(rc, b"scoping abstract unix sockets and signals")
                    os.close(ruleset)
                # --- end
                if self.ptrace_domain:  # --- redteam5: step 4b with ABI 2-5
                    step = b"entering a Landlock domain"
                    ruleset = self.ll_syscall(*self.ll_create)
                    if ruleset < 0:
                        self._fail(step, ctypes.get_errno())
                    root = os.open(b"/", _O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                    self.ll_rule.parent_fd = root
                    rc = self.ll_syscall(self.ll_add[0], ctypes.c_long(ruleset), self.ll_add[1],
                                         ctypes.byref(self.ll_rule), ctypes.c_long(0))  # fmt: skip
                    self._check(rc, step)
                    os.close(root)
                    self._check(self.ll_syscall(self.ll_restrict, ctypes.c_long(ruleset), ctypes.c_long(0)), step)
                    os.close(ruleset)
                # --- end
            step = b"entering the working directory " + self.cwd
            os.chdir(self.cwd)
        except OSError as e:
            self._fail(step, e.errno or 0)


async def spawn(
    argv: tuple[str, ...] | list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    sandbox: TenantSandbox,
    protocol: asyncio.subprocess.SubprocessStreamProtocol | None = None,
) -> tuple[asyncio.subprocess.Process, asyncio.SubprocessTransport]:
    """Start one tenant process in `sandbox`: stdin from /dev/null, stdout+stderr merged into a pipe,
    its own session (so its process group can be killed), umask 077 (its files are its own).

    `protocol` lets the caller observe the exit apart from the pipes (the supervisor does). An exit
    code of 126 with an `inkmcp: could not start...` line means the sandbox could not be set up.
    """
    loop = asyncio.get_running_loop()
    proto = protocol or asyncio.subprocess.SubprocessStreamProtocol(limit=65536, loop=loop)
    transport, _ = await loop.subprocess_exec(
        lambda: proto,
        *argv,
        env=sandbox.environment(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        umask=0o077,
        close_fds=True,
        **sandbox.popen_kwargs(cwd),  # type: ignore[arg-type]
    )
    return asyncio.subprocess.Process(transport, proto, loop), transport
