"""Per-project Unix users: the isolation boundary between tenants on one machine.

When InkMCP runs as root, every project gets its own system user (`ink-<12 hex of project id>`).
Builds and processes of that project run as it, and its files are owned by it with mode 0700, so
one project's code cannot read another project's source, venvs or environment. When InkMCP is not
root there is nobody to switch to: tenant code runs as the current user (RunAs None) and the layout
still uses 0700 directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from inkmcp.build.plan import RunAs
from inkmcp.build.process import (  # --- redteam5
    KEY_SPEC_USER_KEYRING,
    KEY_SPEC_USER_SESSION_KEYRING,
    KEYCTL_CLEAR,
    SYS_KEYCTL,
)
from inkmcp.errors import ProviderError
from inkmcp.providers.compute.local import egress  # --- egress
from inkmcp.providers.compute.local.diskquota import is_mounted, unmount
from inkmcp.providers.compute.local.spawn import find_wrapper
from inkmcp.safefs import ensure_owned_dir

USER_PREFIX = "ink-"
_USERADD = "/usr/sbin/useradd"
_USERDEL = "/usr/sbin/userdel"
_NOLOGIN = "/usr/sbin/nologin"

_locks: dict[str, asyncio.Lock] = {}


def running_as_root() -> bool:
    return os.geteuid() == 0


SCHEDULER_ALLOW_FILES = ("cron.allow", "at.allow")


def restrict_schedulers(etc: Path = Path("/etc")) -> list[Path]:
    """Make `cron.allow` and `at.allow` admit root and never a tenant user; the files changed.

    With cron or at on the host, a tenant's code could run `crontab -` or `at now` as its project user:
    the job then runs from the cron/at daemon, outside the service's cgroups and sandbox (no memory,
    CPU or pids cap, not killed with the service, alive after its removal). Both tools admit only the
    users listed in their allow file once it exists. A missing file is created with "root" alone (also
    when neither tool is installed: harmless, and it already holds if one is installed later); an
    operator's existing file keeps its entries but loses any tenant user's (`ink-...`). Written
    atomically, root-owned, 0644 (crontab(1) reads it as the calling user).
    """
    changed = []
    for name in SCHEDULER_ALLOW_FILES:
        path = etc / name
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = None
        kept = ["root"] if current is None else [
            line for line in current.splitlines() if not line.strip().startswith(USER_PREFIX)]
        text = "\n".join(kept or ["root"]) + "\n"
        if text == current:
            continue
        tmp = path.with_name(f".{name}.inkmcp-{os.getpid()}")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        changed.append(path)
    return changed


def project_user_name(project_id: str) -> str:
    """`ink-` + the first 12 hex digits of the project id (a hash of it if it has fewer)."""
    digits = re.sub(r"[^0-9a-f]", "", project_id.lower())
    if len(digits) < 12:
        digits = hashlib.sha256(project_id.encode()).hexdigest()
    return USER_PREFIX + digits[:12]


def _lookup(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None


def _flock(path: Path) -> int:
    """Blocking exclusive lock across processes (two InkMCP workers creating the same user)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


async def _run(*argv: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env={"PATH": "/usr/sbin:/usr/bin"}
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace").strip()


def _ensure_home(home: Path, run_as: RunAs) -> None:
    """The home lives in root's `homes/` dir: created and chowned through a no-follow fd."""
    home.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    ensure_owned_dir(home.parent, home.name, run_as, 0o700)


async def ensure_project_user(project_id: str, homes_dir: Path) -> RunAs | None:
    """The identity the project's code runs as; creates the system user on first use.

    Idempotent and safe under concurrency: an in-process lock serialises callers for one name,
    a file lock serialises InkMCP processes, and useradd's "already exists" (exit 9) counts as done.
    Returns None when InkMCP is not root (tenant code then runs as the current user).
    """
    if not running_as_root():
        return None
    name = project_user_name(project_id)
    home = homes_dir / name
    lock = _locks.setdefault(name, asyncio.Lock())
    async with lock:
        entry = _lookup(name)
        if entry is None:
            homes_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
            fd = await asyncio.to_thread(_flock, homes_dir / ".users.lock")
            try:
                entry = _lookup(name)
                if entry is None:
                    code, out = await _run(
                        _USERADD, "--system", "--user-group", "--no-create-home",
                        "--home-dir", str(home), "--shell", _NOLOGIN, name,
                    )  # fmt: skip
                    if code not in (0, 9):
                        raise ProviderError(f"could not create system user {name}: {out or f'exit {code}'}")
                    entry = _lookup(name)
                    if entry is not None:  # --- redteam5: nothing a former holder of the uid left in its keyrings
                        await asyncio.to_thread(clear_user_keyrings, entry.pw_uid, entry.pw_gid)
                    if entry is not None:  # --- egress: restricted before any of its code runs (egress.py)
                        try:
                            await asyncio.to_thread(egress.track_uid, entry.pw_uid)
                        except egress.EgressError as e:
                            raise ProviderError(f"could not restrict the connections of new user {name}: {e}") from e
            finally:
                os.close(fd)
        if entry is None:
            raise ProviderError(f"system user {name} is missing after useradd")
        run_as = RunAs(user=name, uid=entry.pw_uid, gid=entry.pw_gid, home=str(home))
        await asyncio.to_thread(_ensure_home, home, run_as)
        return run_as


async def delete_project_user(project_id: str, homes_dir: Path | None = None, *, timeout: float = 10.0) -> None:
    """Remove the project's system user and its home (call after every service of the project is removed).

    In order: every process still running as the user is killed (the services' cgroups were killed
    already; this catches anything that ran outside them, e.g. a git fetch), then `userdel` (which
    refuses a user with live processes), then the home directory. The home is removed with
    `shutil.rmtree`, which on Linux works through directory fds and never follows a symlink the
    tenant planted; the home's parent (`homes/`) is root's, so the home entry itself cannot be swapped.
    Without root there is no user: only the home (created by the provider) is removed.
    """
    name = project_user_name(project_id)
    home = homes_dir / name if homes_dir is not None else None
    if running_as_root():
        entry = _lookup(name)
        if entry is not None:
            await asyncio.to_thread(kill_user_processes, entry.pw_uid, entry.pw_gid, timeout)
            await asyncio.to_thread(clear_user_keyrings, entry.pw_uid, entry.pw_gid)  # --- redteam5
            code, out = await _run(_USERDEL, name)
            if code not in (0, 6):  # 6: user does not exist
                raise ProviderError(f"could not delete system user {name}: {out or f'exit {code}'}")
            await asyncio.to_thread(egress.untrack_uid, entry.pw_uid)  # --- egress: the uid may be reused
    if home is not None:
        await asyncio.to_thread(_remove_home, home)


def _remove_home(home: Path) -> None:
    if not shutil.rmtree.avoids_symlink_attacks:  # not Linux: refuse rather than follow tenant symlinks
        raise ProviderError(f"cannot remove {home} safely on this platform (shutil.rmtree follows symlinks)")
    if is_mounted(home):  # on the project's own filesystem (diskquota.py): its files go with its image
        try:
            unmount(home)
        except OSError as e:
            raise ProviderError(f"could not unmount the project's home {home}: {e.strerror}") from e
    try:
        shutil.rmtree(home)
    except FileNotFoundError:
        pass
    except OSError as e:
        raise ProviderError(f"could not remove the project's home {home}: {e.strerror}") from e


# --- redteam5
def _clear_keyrings_as(uid: int, gid: int) -> Callable[[], None]:
    """preexec_fn: become the user, then empty its user keyring and user session keyring (KEYCTL_CLEAR)."""
    syscall = ctypes.CDLL(None, use_errno=True).syscall
    calls = [(ctypes.c_long(SYS_KEYCTL or 0), ctypes.c_long(KEYCTL_CLEAR), ctypes.c_long(spec))
             for spec in (KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING)]  # fmt: skip

    def run() -> None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        for args in calls:
            syscall(*args)  # ENOSYS/EPERM: no keys here at all

    return run


def clear_user_keyrings(uid: int, gid: int) -> None:
    """Empty the keyrings the kernel keeps per uid, as that uid (root may not clear them; the user possesses them).

    A tenant's user keyring (`@u`) and user session keyring (`@us`, its `@s` before the sandbox gave each process
    one of its own) outlive its processes and its `userdel`: the kernel keeps them per uid for as long as the
    machine runs. So the next project given the same uid (useradd hands freed uids out again) found the keys the
    last one left there, a secret or a planted value, and inherited its key quota (200 keys, 20,000 bytes). Run
    when a project's user is deleted (after its processes are killed) and when one is created (a uid freed by an
    older InkMCP, or by hand). A forked child, like `_kill_all_as` without the wrapper: twice per project.
    """
    if SYS_KEYCTL is None:
        return
    subprocess.run(["/bin/true"], preexec_fn=_clear_keyrings_as(uid, gid), env={}, cwd="/",
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, close_fds=True)  # fmt: skip
# --- end


def _processes_of(uid: int) -> list[psutil.Process]:
    """Processes whose real, effective or saved uid is `uid` (zombies included: userdel counts them)."""
    found = []
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info["uids"]
        if uids is not None and uid in (uids.real, uids.effective, uids.saved):
            found.append(proc)
    return found


def _kill_everything_as(uid: int, gid: int) -> Callable[[], None]:
    """preexec_fn: become the user, then kill(-1, SIGKILL), which signals every process the user may
    signal in one pass inside the kernel, so a process forking in a loop cannot outrun it."""

    def run() -> None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        with contextlib.suppress(OSError):  # ESRCH: nothing left
            os.kill(-1, signal.SIGKILL)
        os._exit(0)

    return run


def _kill_all_as(uid: int, gid: int) -> None:
    """kill(-1, SIGKILL) as the user: through the exec wrapper (vfork, the server is not copied) when it
    is built, else in a forked child's preexec_fn."""
    wrapper = find_wrapper()
    if wrapper is not None:
        argv: list[str] = [str(wrapper), "--ids", f"{uid}:{gid}", "--kill-all"]
        subprocess.run(argv, env={}, cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False, close_fds=True)  # fmt: skip
        return
    subprocess.run(["/bin/true"], preexec_fn=_kill_everything_as(uid, gid), env={}, cwd="/",
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   check=False, close_fds=True)  # fmt: skip


def kill_user_processes(uid: int, gid: int, timeout: float = 10.0) -> int:
    """SIGKILL every process of `uid` until none is left (blocking); returns how many were seen.

    Raises ProviderError if some survive `timeout` seconds (stuck in the kernel).
    """
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    pause = 0.005
    while True:
        procs = _processes_of(uid)
        if not procs:
            return len(seen)
        if time.monotonic() > deadline:
            pids = sorted(p.pid for p in procs)
            raise ProviderError(f"processes {pids} of uid {uid} are still alive {timeout:g}s after SIGKILL")
        seen.update(p.pid for p in procs)
        live = []
        for p in procs:
            with contextlib.suppress(psutil.Error):
                if p.status() != psutil.STATUS_ZOMBIE:
                    live.append(p)
        if live:
            _kill_all_as(uid, gid)
            for p in live:  # and by pid from root, should the user have been unable to signal something
                with contextlib.suppress(psutil.Error):
                    p.kill()
        time.sleep(pause)  # zombies: init reaps them; killed processes need a moment to exit
        pause = min(pause * 2, 0.1)
