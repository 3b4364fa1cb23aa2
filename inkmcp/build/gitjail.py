"""The git jail: every git process InkMCP starts (build/source.py) runs with memory, CPU, file-size and process
limits, at no measurable cost per start.

Why: a tenant chooses the repository a deploy fetches, any URL, a git server it runs itself included. Before this,
git ran in InkMCP's own cgroup with no limit at all: a pack holding one delta that expands to GiBs (a few KB on the
wire) made `git index-pack` allocate all of it, a chain of thousands of deltas took minutes of CPU, and several at
once could take the machine's memory and with it every tenant's server (tests/security/test_git_limits.py performs
these). Limits on a process are inherited (resource limits at fork, the cgroup at fork), and setting them per start
is what costs: `prlimit`/`setpriv` are one more exec per git process, `preexec_fn` forks the ~130 MB server (what
issue 12 removed), and moving a process into a cgroup waits for an RCU grace period (4-11 ms measured here).

So the limits are set once, on a small starter process (`_gitjail_child.py`, a bare Python with no InkMCP module
loaded): InkMCP starts it at the first git process, moves it into a cgroup of its own (`inkmcp-git/git`: memory
limit for all git processes together, pids.max, a low CPU weight; cgroup v1 or v2, via the local provider's
`Cgroups`), and it sets its own RLIMIT_DATA (memory one process may allocate), RLIMIT_CPU, RLIMIT_FSIZE and
RLIMIT_CORE. Every git process is then a child it starts with posix_spawn on request: born in the cgroup with the
limits, in its own session, with the three std fds InkMCP passed it over a socket (SCM_RIGHTS) and nothing else.
InkMCP gets a `JailedProcess` back, used like an asyncio subprocess (streams, wait, communicate, returncode; its
process group killed by pid as before); the exit status comes back over the same socket. One start costs a socket
round trip instead of a vfork of the server (measured in benchmarks/git_jail_cost.py).

Without root there is no cgroup (only the resource limits); with INKMCP_GIT_JAIL=false git starts directly, as
before. If the starter dies it is started again at the next git process.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inkmcp.build.process import TENANT_OOM_SCORE_ADJ
from inkmcp.settings import GitSettings, git_settings

log = logging.getLogger(__name__)

CHILD = Path(__file__).with_name("_gitjail_child.py")
CGROUP_PARENT = "inkmcp-git"
CGROUP = "git"
PIPE, DEVNULL = asyncio.subprocess.PIPE, asyncio.subprocess.DEVNULL


class JailError(RuntimeError):
    """The starter could not start a process (it said why, with the errno), or is gone."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


@dataclass(frozen=True)
class Limits:
    """What one jail applies (from GitSettings)."""

    process_memory: int  # RLIMIT_DATA, bytes
    cpu_seconds: int  # RLIMIT_CPU
    max_file: int  # RLIMIT_FSIZE, bytes
    memory_mb: int  # the cgroup's, all together
    pids_max: int
    cpu_weight: int

    @classmethod
    def of(cls, s: GitSettings) -> Limits:
        return cls(process_memory=s.git_process_memory_mb << 20, cpu_seconds=max(1, int(s.git_timeout * 2)),
                   max_file=s.git_max_file_mb << 20, memory_mb=s.git_memory_mb, pids_max=s.git_pids_max,
                   cpu_weight=s.git_cpu_weight)

    def rlimits(self) -> dict[str, int]:
        return {"RLIMIT_DATA": self.process_memory, "RLIMIT_CPU": self.cpu_seconds, "RLIMIT_FSIZE": self.max_file,
                "RLIMIT_CORE": 0}


class JailedProcess:
    """A process the starter started: the parts of asyncio.subprocess.Process that source.py uses."""

    def __init__(self, pid: int, exited: asyncio.Future[int], stdin: asyncio.StreamWriter | None,
                 stdout: asyncio.StreamReader | None, stderr: asyncio.StreamReader | None) -> None:
        self.pid = pid
        self._exited = exited
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # never signal a pid the starter has reaped (it may be reused)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    async def communicate(self, input: bytes | None = None) -> tuple[bytes | None, bytes | None]:
        async def feed() -> None:
            if self.stdin is None:
                return
            try:
                if input:
                    self.stdin.write(input)
                    await self.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                pass
            finally:
                self.stdin.close()

        async def read(stream: asyncio.StreamReader | None) -> bytes | None:
            return await stream.read() if stream is not None else None

        _, out, err = await asyncio.gather(feed(), read(self.stdout), read(self.stderr))
        await self.wait()
        return out, err


class _Starter:
    """One starter process and the thread that reads its answers (loop-independent: futures are resolved on the
    loop that asked, so one starter serves every event loop of the process, tests' included)."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.lock = threading.Lock()
        self.pending: collections.deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[int], asyncio.Future[int]]] \
            = collections.deque()
        self.exits: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = {}
        self.dead = False
        self.closing = False
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.cgroup, self.group_dirs = "", []
        # The starter is started by the thread that then reads its answers, for as long as it lives: its
        # PR_SET_PDEATHSIG fires when the *thread* that started it exits (a pool thread of asyncio.to_thread
        # would end it with the pool, with git processes still running).
        ready: list[BaseException | None] = []
        started = threading.Event()

        def run() -> None:
            try:
                self.proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(CHILD), str(theirs.fileno()), json.dumps(limits.rlimits()),
                     str(TENANT_OOM_SCORE_ADJ)],
                    pass_fds=(theirs.fileno(),), env={}, cwd="/", stdin=subprocess.DEVNULL, start_new_session=True)
                # moved into its cgroup before it is asked anything: every child is born there
                self.cgroup, self.group_dirs = _join_cgroup(self.proc.pid, limits)
                ready.append(None)
            except BaseException as e:
                ready.append(e)
            finally:
                theirs.close()
                started.set()
            if ready[0] is None:
                self._read()

        self.reader = threading.Thread(target=run, name="gitjail-starter", daemon=True)
        self.reader.start()
        started.wait()
        if ready[0] is not None:
            self.sock.close()
            os.close(self.devnull)
            raise ready[0]

    def send(self, request: bytes, fds: list[int], loop: asyncio.AbstractEventLoop) -> tuple[
            asyncio.Future[int], asyncio.Future[int]]:
        started: asyncio.Future[int] = loop.create_future()
        exited: asyncio.Future[int] = loop.create_future()
        with self.lock:
            if self.dead:
                raise JailError("the git starter is gone")
            self.pending.append((loop, started, exited))
            try:  # never blocks the event loop: a starter that stopped reading fails the start instead
                self.sock.sendmsg([request], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))],
                                  socket.MSG_DONTWAIT)
            except OSError as e:
                self.pending.pop()
                raise JailError(f"could not reach the git starter: {e.strerror}") from None
        return started, exited

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self.lock:
                if "exit" in message:
                    loop, fut = self.exits.pop(message["exit"], (None, None))
                    if loop is not None and fut is not None:
                        _resolve(loop, fut, os.waitstatus_to_exitcode(message["status"]))
                    continue
                loop, started, exited = self.pending.popleft()
                if "pid" in message:
                    self.exits[message["pid"]] = (loop, exited)
                    _resolve(loop, started, message["pid"])
                else:
                    _resolve(loop, started, JailError(message.get("error", "could not start"), message.get("errno", 0)))
        with self.lock:  # the starter is gone: nobody will report these exits
            self.dead = True
            for loop, started, _ in self.pending:
                _resolve(loop, started, JailError("the git starter exited"))
            for loop, exited in self.exits.values():
                _resolve(loop, exited, -signal.SIGKILL)
            self.pending.clear()
            self.exits.clear()
        if not self.closing:
            log.warning("the git starter (pid %s) exited; the next git process starts a new one", self.proc.pid)

    def close(self) -> None:
        """End the starter (its running children finish on their own); tests and process exit."""
        self.closing = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=5)
        self.reader.join(timeout=5)
        self.sock.close()
        os.close(self.devnull)
        for d in self.group_dirs:  # refused while a git it started still runs: swept by the next server then
            with contextlib.suppress(OSError):
                d.rmdir()


def _resolve(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: object) -> None:
    def apply() -> None:
        if fut.done():
            return
        if isinstance(value, BaseException):
            fut.set_exception(value)
        else:
            fut.set_result(value)

    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
        loop.call_soon_threadsafe(apply)


def _join_cgroup(pid: int, limits: Limits) -> tuple[str, list[Path]]:
    """Put the starter into this server's git cgroup (`inkmcp-git/git-<server pid>`, made or updated here; one per
    InkMCP process, so replicas or test servers on one machine never share or overwrite each other's limits);
    "" when cgroups cannot be used (not root, no controllers: the resource limits still hold), else the memory
    group's path. Groups of servers that are gone (empty) are removed on the way."""
    if os.geteuid() != 0:
        return "", []
    from inkmcp.providers.compute.base import Resources
    from inkmcp.providers.compute.local.limits import Cgroups

    try:
        groups = Cgroups(CGROUP_PARENT, pids_max=limits.pids_max)
        if not groups.available:
            log.warning("git processes run without a cgroup: %s", groups.reason)
            return "", []
        group = f"{CGROUP}-{os.getpid()}"
        _sweep(groups, keep=group)
        cpus = float(min(16, os.cpu_count() or 1))  # no quota: the weight decides under contention
        groups.ensure(group, Resources(memory_mb=max(64, min(limits.memory_mb, 16384)), cpus=cpus))
        if limits.memory_mb > 16384:  # Resources caps a service at 16 GiB; the git group may be larger
            _write_memory(groups, group, limits.memory_mb)
        groups.set_weight(group, limits.cpu_weight)
        groups.attach(group, pid)
        return str(groups._dir("memory", group)), groups._dirs(group)
    except (OSError, ValueError) as e:
        log.warning("git processes run without a cgroup: %s", e)
        return "", []


def _sweep(groups: Any, keep: str) -> None:
    """rmdir every other `git-*` group under inkmcp-git: the kernel refuses a group that still has a process (a
    running server's starter, a git still running), so only the groups of servers that are gone go."""
    for controller in groups.controllers:
        parent = groups._dir(controller, "")
        with contextlib.suppress(OSError):
            for d in parent.iterdir():
                if d.name.startswith(f"{CGROUP}-") and d.name != keep and d.is_dir():
                    with contextlib.suppress(OSError):
                        d.rmdir()


def _write_memory(groups: Any, group: str, memory_mb: int) -> None:
    d = groups._dir("memory", group)
    value = str(memory_mb << 20)
    names = ("memory.max",) if groups.version == 2 else ("memory.memsw.limit_in_bytes", "memory.limit_in_bytes")
    for name in names:
        with contextlib.suppress(OSError):
            (d / name).write_text(value)


_starter: _Starter | None = None
_start_lock = threading.Lock()
_which: dict[tuple[str, str], str | None] = {}


def enabled() -> bool:
    return git_settings().git_jail


def _current() -> _Starter:
    global _starter
    with _start_lock:
        if _starter is None or _starter.dead or _starter.proc.poll() is not None:
            if _starter is not None:
                _starter.close()
            if _starter is None:
                import atexit

                atexit.register(shutdown)
            _starter = _Starter(Limits.of(git_settings()))
        return _starter


def shutdown() -> None:
    """Stop the starter (tests that change the settings; the next start uses the new ones)."""
    global _starter
    with _start_lock:
        if _starter is not None:
            _starter.close()
            _starter = None


def starter_pid() -> int | None:
    return _starter.proc.pid if _starter is not None and not _starter.dead else None


def oom_kills() -> int:
    """How many git processes the kernel killed so far for the git group's memory limit (0 without a group)."""
    cg = _starter.cgroup if _starter is not None else ""
    if not cg:
        return 0
    for name in ("memory.events", "memory.oom_control"):  # v2, v1 (Linux 4.13+)
        with contextlib.suppress(OSError, ValueError):
            for line in (Path(cg) / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    return 0


def cgroup_dir() -> str:
    """The memory cgroup git processes run in ("" when none)."""
    return _starter.cgroup if _starter is not None else ""


def _resolve_exe(name: str, env: dict[str, str]) -> str:
    if "/" in name:
        return name
    key = (name, env.get("PATH", os.defpath))
    if key not in _which:
        _which[key] = shutil.which(name, path=key[1])
    found = _which[key]
    if found is None:
        raise FileNotFoundError(f"{name}: not found on {key[1]}")
    return found


async def spawn(argv: list[str], env: dict[str, str], *, stdin: int = DEVNULL, stdout: int = PIPE,
                stderr: int = PIPE) -> JailedProcess:
    """Start `argv` through the starter (see the module docstring); stdin/stdout/stderr are PIPE or DEVNULL."""
    loop = asyncio.get_running_loop()
    starter = _starter if _starter is not None and not _starter.dead else await asyncio.to_thread(_current)
    exe = _resolve_exe(argv[0], env)
    theirs: list[int] = []
    ours: list[int | None] = []
    try:
        for i, how in enumerate((stdin, stdout, stderr)):
            if how == PIPE:
                r, w = os.pipe2(os.O_CLOEXEC)
                mine, child = (w, r) if i == 0 else (r, w)
                ours.append(mine)
                theirs.append(child)
            elif how == DEVNULL:
                ours.append(None)
                theirs.append(os.dup(starter.devnull))
            else:
                raise ValueError(f"unsupported stdio {how!r}")
        request = json.dumps({"argv": [exe, *argv[1:]], "env": env}).encode()
        started, exited = starter.send(request, theirs, loop)
    except BaseException:
        for fd in (*theirs, *(f for f in ours if f is not None)):
            os.close(fd)
        raise
    for fd in theirs:
        os.close(fd)
    try:
        pid = await asyncio.shield(started)
    except BaseException as exc:
        for fd in ours:
            if fd is not None:
                os.close(fd)
        if isinstance(exc, JailError):
            raise OSError(exc.errno, f"could not start {argv[0]}: {exc}") from None
        started.add_done_callback(_kill_unowned)  # cancelled while it started: nobody will own it
        raise
    return JailedProcess(pid, exited, await _writer(loop, ours[0]), await _reader(loop, ours[1]),
                         await _reader(loop, ours[2]))


def _kill_unowned(started: asyncio.Future[int]) -> None:
    if not started.cancelled() and started.exception() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(started.result(), signal.SIGKILL)


async def _reader(loop: asyncio.AbstractEventLoop, fd: int | None) -> asyncio.StreamReader | None:
    if fd is None:
        return None
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    return reader


async def _writer(loop: asyncio.AbstractEventLoop, fd: int | None) -> asyncio.StreamWriter | None:
    if fd is None:
        return None
    protocol = asyncio.StreamReaderProtocol(asyncio.StreamReader(loop=loop), loop=loop)
    transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(fd, "wb", 0))
    return asyncio.StreamWriter(transport, protocol, None, loop)
