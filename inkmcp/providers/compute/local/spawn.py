"""Start a confined tenant process without copying the server's memory (issue 12 item 2).

`inkmcp.build.process.spawn` confines the child in a Python `preexec_fn`; CPython must then
`fork()` the whole server (~130 MB: its page tables are copied, and every page it touches before
exec is copied again), which costs ~15-25 ms per spawn and grows with the server. Here the server
starts `inkmcp-spawn` (inkspawn.c, a small static program) through `subprocess` with no
`preexec_fn` and no `user=`/`group=`, so CPython uses `vfork()`: the child borrows the server's
memory until it execs the wrapper. The wrapper performs the sandbox's steps in the same order as
the preexec path (rlimits, cgroups, private /tmp, /var/tmp, /dev/shm and /proc, drop to the tenant,
chdir) and execs the tenant's command. The session, umask 077, closed fds and the std streams are
set by `subprocess` itself, before the wrapper runs.

The wrapper is started with an empty environment (the tenant's environment travels in a memfd that
it reads and closes), so nothing the tenant put in its env (LD_PRELOAD, GLIBC_TUNABLES...) touches
a program running as root; it is linked statically besides.

A start can be prepared ahead of need (`prepare_start`, called when an on_demand service goes to
sleep): the wrapper runs its confinement steps at once and then waits for the command, its working
directory and environment on a pipe (`--wait-fd`); the next `spawn` with the same sandbox sends them
and the process execs at once. Joining the service's cgroups is what this moves off the wake: the
kernel makes every cgroup migration wait for an RCU grace period (4-11 ms measured here, while the
request waits), and a prepared process has waited it before the request arrived. The process is
confined exactly as a direct start is (the same program, the same steps in the same order; only the
pause is new), and while it waits it is already the tenant's but not dumpable, so nothing of the
tenant can trace it or read its pipe; if InkMCP goes away the pipe closes and it exits, running
nothing.

The wrapper is compiled from its source the first time it is needed (or by `make install`, or
`python -m inkmcp.providers.compute.local.wrapper_build`) into a root-owned directory, named by the
hash of its source, so a changed source is rebuilt. Without a C compiler, or without root, the
preexec path is used (`available()` says which, and why).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.build.process import (
    DEV_SHM,
    ExitAwareProtocol,
    TenantSandbox,
    _proc_has_private_options,
    shared_writable_dirs,  # --- quota
)
from inkmcp.build.process import spawn as preexec_spawn

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("inkspawn.c")
PACKAGE_BIN = Path(__file__).with_name("_bin")  # where `make install` puts the compiled wrapper
CFLAGS = ("-static", "-O2", "-Wall")



class StartSettings(BaseSettings):
    """How the local provider starts tenant processes and detects that they listen.

    Read from the environment at first use (INKMCP_TENANT_SPAWN, INKMCP_TENANT_READINESS); the
    defaults are the fast paths, the alternatives are today's previous behaviour, kept to compare
    them (benchmarks/wake_speed.py) and as an escape hatch.
    """

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    tenant_spawn: Literal["wrapper", "preexec"] = Field(
        default="wrapper",
        description="wrapper: vfork + the inkmcp-spawn exec wrapper (falls back to preexec without a C "
        "compiler); preexec: fork the server and confine the child in a Python preexec_fn",
    )
    tenant_prespawn: bool = Field(
        default=True,
        description="prepare the next start of a sleeping on_demand service (confined, waiting for its command) "
        "so a wake skips the cgroup join's wait; one small waiting process per sleeping service",
    )
    tenant_readiness: Literal["sock_diag", "connect"] = Field(
        default="sock_diag",
        description="sock_diag: ask the kernel for the app's listening socket (every millisecond at first, then "
        "2 % of the time waited); connect: "
        "try a TCP connect every 5 ms doubling to 50 ms",
    )


@lru_cache(maxsize=1)
def start_settings() -> StartSettings:
    return StartSettings()


_lock = threading.Lock()
_state: dict[str, Path | str | None] = {"wrapper": None, "reason": "not looked for yet"}
_extra_dirs: list[Path] = []


def source_hash() -> str:
    digest = hashlib.sha256(SOURCE.read_bytes())
    digest.update(" ".join(CFLAGS).encode())
    return digest.hexdigest()[:16]


def wrapper_name() -> str:
    return f"inkmcp-spawn-{source_hash()}"


def _trusted(path: Path) -> bool:
    """Only a binary owned by us (root) and writable by nobody else may run as root with tenant input."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022
            and bool(st.st_mode & stat.S_IXUSR))  # fmt: skip


def _dir_trusted(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def build(dest_dir: Path) -> Path:
    """Compile the wrapper into `dest_dir` (created 0755) atomically; returns its path.

    Raises RuntimeError naming the missing compiler or the compiler's error.
    """
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler (cc/gcc) to build inkmcp-spawn: install gcc (scripts/system-deps.sh does)")
    dest_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    target = dest_dir / wrapper_name()
    fd, tmp = tempfile.mkstemp(prefix=".inkmcp-spawn.", dir=dest_dir)
    os.close(fd)
    try:
        done = subprocess.run([cc, *CFLAGS, "-o", tmp, str(SOURCE)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed ({cc}): {done.stderr.strip()[-2000:]}")
        os.chmod(tmp, 0o755)  # noqa: S103 - root-owned, written by nobody else; running it unprivileged is harmless
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
    # Earlier versions stay: a server started before an upgrade still execs the one it found.
    return target


def use_dir(path: Path) -> None:
    """Where the provider may build the wrapper when the package has none (its root-owned data_dir/bin)."""
    with _lock:
        if path not in _extra_dirs:
            _extra_dirs.append(path)
        if _state["wrapper"] is None:
            _state["reason"] = "not looked for yet"


def find_wrapper() -> Path | None:
    """The compiled wrapper, building it on first use; None (see `unavailable_reason`) when it cannot be.

    Only used as root: without root there is nothing to confine, and subprocess already vforks.
    """
    with _lock:
        found = _state["wrapper"]
        if isinstance(found, Path):
            return found
        if _state["reason"] != "not looked for yet":
            return None
        name = wrapper_name()
        dirs = [PACKAGE_BIN, *_extra_dirs]
        for d in dirs:
            candidate = d / name
            if _trusted(candidate) and _dir_trusted(d):
                _state["wrapper"] = candidate
                return candidate
        errors = []
        for d in dirs:  # the package's dir first: one build shared by every data dir
            try:
                built = build(d)
            except (OSError, RuntimeError) as exc:
                errors.append(f"{d}: {exc}")
                continue
            if _trusted(built) and _dir_trusted(d):
                _state["wrapper"] = built
                return built
            errors.append(f"{d}: not root-owned or writable by others")
        _state["reason"] = "; ".join(errors) or "no directory to build inkmcp-spawn in"
        log.warning("tenant processes start through fork + preexec_fn (slower): %s", _state["reason"])
        return None


def prepare(fallback_dir: Path) -> str:
    """At provider start: find or build the wrapper now (not on the first wake); `fallback_dir` is a
    root-owned dir to build it in if the package's is not usable. Returns why it is unavailable, or ""."""
    if os.geteuid() != 0 or start_settings().tenant_spawn != "wrapper":
        return ""
    use_dir(fallback_dir)
    find_wrapper()
    return unavailable_reason()


def unavailable_reason() -> str:
    return str(_state["reason"]) if _state["wrapper"] is None else ""


def available() -> bool:
    """True when processes start through vfork + the wrapper (root, wrapper built)."""
    return os.geteuid() == 0 and find_wrapper() is not None


def wrapper_argv(wrapper: Path, sandbox: TenantSandbox, cwd: Path, env_fd: int | None) -> list[str]:
    """The wrapper's options for `sandbox`: the same decisions `_ChildSetup` makes for the preexec path."""
    argv = [str(wrapper)]
    if env_fd is not None:
        argv += ["--env-fd", str(env_fd)]
    return [*argv, *confinement(sandbox), "--chdir", str(cwd), "--"]


def confinement(sandbox: TenantSandbox) -> list[str]:
    """The wrapper's confinement options for `sandbox` (also the key of a prepared start)."""
    argv = ["--fsize", str(sandbox.max_file_bytes)]
    if sandbox.run_as is not None:
        argv += ["--oom-score-adj", str(sandbox.oom_score_adj)]
    for procs in sandbox.cgroup_procs:
        argv += ["--cgroup", procs]
    if sandbox.tmp_dir is not None:
        for hidden in sandbox.hidden_dirs:
            argv += ["--hide", str(hidden)]
        argv += ["--tmp", str(sandbox.tmp_dir)]
        for shared in shared_writable_dirs():  # --- quota: /var/tmp and the host's other world-writable dirs
            argv += ["--var-tmp", shared]
        if os.path.isdir(DEV_SHM):
            argv += ["--shm", DEV_SHM, "--shm-options", f"size={sandbox.shm_bytes},mode=1777"]
        if sandbox.run_as is not None and _proc_has_private_options():
            argv.append("--hide-pids")
    if sandbox.run_as is not None:
        argv += ["--ids", f"{sandbox.run_as.uid}:{sandbox.run_as.gid}"]
    return argv


def env_memfd(env: dict[str, str]) -> int:
    """A memfd holding `env` as NUL-terminated KEY=VALUE entries, positioned at 0 (secrets never hit disk)."""
    fd = os.memfd_create("inkmcp-env", os.MFD_CLOEXEC)
    data = b"".join(os.fsencode(k) + b"=" + os.fsencode(v) + b"\0" for k, v in env.items())
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return fd


async def spawn(
    argv: tuple[str, ...] | list[str],
    *,
    cwd: Path,
    env: dict[str, str],
    sandbox: TenantSandbox,
    protocol: asyncio.subprocess.SubprocessStreamProtocol | None = None,
) -> tuple[asyncio.subprocess.Process, asyncio.SubprocessTransport]:
    """`inkmcp.build.process.spawn` with the same contract, without forking the server's memory.

    As root with the wrapper: vfork + exec of the wrapper, which confines and execs `argv`. Without
    root: a plain vfork + exec (nothing to confine). Root without a wrapper: the preexec path.
    A start prepared for the same confinement (`prepare_start`) is used instead when one waits and
    `protocol` is None or an ExitAwareProtocol: the process then comes with its own protocol (an
    ExitAwareProtocol), which `transport.get_protocol()` returns.
    """
    if not sandbox.enforced:
        if sandbox.run_as is not None and sandbox.run_as.uid != os.geteuid():
            raise PermissionError(f"only root can run processes as {sandbox.run_as.user}")
        return await _exec(list(argv), cwd=str(cwd), env=sandbox.environment(env), pass_fds=(), protocol=protocol)
    wrapper: Path | None = None
    if start_settings().tenant_spawn == "wrapper":
        known = _state["wrapper"]  # found once; the thread hop is only for the first lookup (it may compile)
        wrapper = known if isinstance(known, Path) else await asyncio.to_thread(find_wrapper)
    if wrapper is None:
        return await preexec_spawn(argv, cwd=cwd, env=env, sandbox=sandbox, protocol=protocol)
    if _prepared and (protocol is None or isinstance(protocol, ExitAwareProtocol)):
        started = _start_prepared(tuple(confinement(sandbox)), argv, cwd, sandbox.environment(env))
        if started is not None:
            return started
    fd = env_memfd(sandbox.environment(env))
    try:
        full = [*wrapper_argv(wrapper, sandbox, cwd, fd), *argv]
        # cwd=None: the wrapper chdirs after dropping to the tenant; root never resolves tenant paths.
        return await _exec(full, cwd=None, env={}, pass_fds=(fd,), protocol=protocol)
    finally:
        os.close(fd)


async def _exec(
    argv: list[str],
    *,
    cwd: str | None,
    env: dict[str, str],
    pass_fds: tuple[int, ...],
    protocol: asyncio.subprocess.SubprocessStreamProtocol | None,
) -> tuple[asyncio.subprocess.Process, asyncio.SubprocessTransport]:
    loop = asyncio.get_running_loop()
    proto = protocol or asyncio.subprocess.SubprocessStreamProtocol(limit=65536, loop=loop)
    transport, _ = await loop.subprocess_exec(
        lambda: proto,
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
        umask=0o077,
        close_fds=True,
        pass_fds=pass_fds,
    )
    return asyncio.subprocess.Process(transport, proto, loop), transport


# -- starts prepared ahead of need -------------------------------------------------------------------


@dataclass
class _Prepared:
    proc: asyncio.subprocess.Process
    transport: asyncio.SubprocessTransport
    start_fd: int  # our end of the pipe the wrapper reads its command from


_prepared: dict[tuple[str, ...], _Prepared] = {}
START_PIPE_BYTES = 1 << 20  # the largest start message sent through a prepared start's pipe (else: a direct start)


def start_message(argv: tuple[str, ...] | list[str], cwd: Path, env: dict[str, str]) -> bytes:
    """What a prepared wrapper reads (inkspawn.c `read_start`): length, cwd, argv, "", environment."""
    parts = [os.fsencode(cwd), *(os.fsencode(a) for a in argv), b""]
    parts += [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
    body = b"".join(part + b"\0" for part in parts)
    return struct.pack("<I", len(body)) + body


async def prepare_start(sandbox: TenantSandbox) -> bool:
    """Start a wrapper for `sandbox` that confines itself now and waits for its command (see the module
    docstring); the next `spawn` with this sandbox uses it. True if one waits (already, or now)."""
    if os.geteuid() != 0 or not sandbox.enforced:
        return False
    settings = start_settings()
    if not settings.tenant_prespawn or settings.tenant_spawn != "wrapper":
        return False
    known = _state["wrapper"]
    wrapper = known if isinstance(known, Path) else await asyncio.to_thread(find_wrapper)
    if wrapper is None:
        return False
    key = tuple(confinement(sandbox))
    held = _prepared.get(key)
    if held is not None and held.proc.returncode is None:
        return True
    loop = asyncio.get_running_loop()
    protocol = ExitAwareProtocol(loop)
    read_end, write_end = os.pipe()
    try:
        with contextlib.suppress(OSError):  # room for a large environment without blocking either side
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, START_PIPE_BYTES)
        os.set_blocking(write_end, False)
        proc, transport = await _exec([str(wrapper), *key, "--wait-fd", str(read_end)], cwd=None, env={},
                                      pass_fds=(read_end,), protocol=protocol)  # fmt: skip
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    entry = _Prepared(proc, transport, write_end)
    previous = _prepared.get(key)
    if previous is not None and previous.proc.returncode is None:  # another call prepared one meanwhile
        _discard(entry)
        return True
    _prepared[key] = entry

    def gone() -> None:  # it exited while waiting (killed, a failed confinement step): forget it
        if _prepared.get(key) is entry:
            del _prepared[key]
        _close(entry)

    protocol.on_exit.append(gone)
    return True


def _start_prepared(
    key: tuple[str, ...], argv: tuple[str, ...] | list[str], cwd: Path, env: dict[str, str]
) -> tuple[asyncio.subprocess.Process, asyncio.SubprocessTransport] | None:
    """Hand the waiting wrapper for `key` its command; None when there is none (or it cannot take it)."""
    entry = _prepared.pop(key, None)
    if entry is None:
        return None
    protocol = entry.transport.get_protocol()
    if entry.proc.returncode is not None or not isinstance(protocol, ExitAwareProtocol):
        _discard(entry)
        return None
    message = start_message(argv, cwd, env)
    try:
        # Never blocks: the pipe holds the whole message or it is not sent (a stopped wrapper cannot stall us).
        sent = os.write(entry.start_fd, message) if len(message) <= START_PIPE_BYTES else 0
    except OSError:
        sent = 0
    if sent != len(message):
        _discard(entry)
        return None
    protocol.on_exit.clear()  # the caller owns it now
    os.close(entry.start_fd)
    entry.start_fd = -1
    return entry.proc, entry.transport


def _close(entry: _Prepared) -> None:
    if entry.start_fd >= 0:
        os.close(entry.start_fd)
        entry.start_fd = -1
    entry.transport.close()


def _discard(entry: _Prepared) -> None:
    """Kill a prepared wrapper that will not be used (it has run nothing of the tenant's)."""
    protocol = entry.transport.get_protocol()
    if isinstance(protocol, ExitAwareProtocol):
        protocol.on_exit.clear()
    if entry.proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(entry.proc.pid, signal.SIGKILL)
    _close(entry)


async def discard_prepared(
    sandboxes: list[TenantSandbox] | None = None, *, keys: list[tuple[str, ...]] | None = None
) -> None:
    """Kill the starts prepared for `sandboxes` and `keys` (`confinement` tuples; neither given: all) and wait
    for them. Each is the process `prepare_start` started, killed by its own pid (process group)."""
    if sandboxes is None and keys is None:
        wanted = list(_prepared)
    else:
        wanted = [tuple(confinement(s)) for s in sandboxes or []] + list(keys or [])
    entries = [e for e in (_prepared.pop(k, None) for k in dict.fromkeys(wanted)) if e is not None]
    for entry in entries:
        _discard(entry)
    for entry in entries:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(entry.proc.wait(), 5.0)


def prepared_pid(sandbox: TenantSandbox) -> int | None:
    """The pid of the start prepared for `sandbox`, if one waits (tests, diagnostics)."""
    entry = _prepared.get(tuple(confinement(sandbox)))
    return entry.proc.pid if entry is not None and entry.proc.returncode is None else None
