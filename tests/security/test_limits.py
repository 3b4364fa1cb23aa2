"""Capacity: findings 6 (builds and release commands outside the cgroup), 6c (no pids limit), 7 (daemons
survive delete), 25 (no size cap: a small repo expanded to hundreds of MB); held item 6b (runtime memory).

#6: a build_command allocated 900 MiB under a 512 MiB limit, and build and release commands printed the
server's own cgroup. #6c: a runtime process forked 300 children; nothing but the shared per-uid ulimit
bounded it. #7: a double-forked `setsid` daemon kept running as the tenant after `delete`, and the
project's Unix user could not be removed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.requirements import requires
from tests.security.conftest import (
    ROOT,
    deploy,
    deploy_failure,
    deploy_live,
    lab_exec,
    lab_live,
    lab_repo,
    session,
    whoami,
)
from tests.support import ServerProc, ToolFailed, call

CGROUP = Path("/sys/fs/cgroup")


def _controllers() -> set[str]:
    unified = CGROUP / "cgroup.controllers"
    if unified.exists():
        return set(unified.read_text().split())
    return {c for c in ("memory", "cpu", "pids") if (CGROUP / c / "cgroup.procs").exists()}


pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.slow,
    ROOT,
    requires("cgroups", {"memory", "cpu", "pids"} <= _controllers(),
             f"memory, cpu and pids cgroup controllers needed, found {sorted(_controllers())}"),
]

HOG = r'''
import sys
for line in open("/proc/self/cgroup"):
    print("BUILD-CGROUP " + line.strip(), flush=True)
blocks = []
for mib in range(10, 910, 10):
    blocks.append(b"x" * (10 << 20))  # written, so really resident
    if mib % 100 == 0:
        print(f"allocated {mib} MiB", flush=True)
print("build allocated 900 MiB", flush=True)
'''

FORK = r'''
import os, signal
children, error = [], None
try:
    for _ in range(ARGS["n"]):
        children.append(os.posix_spawn("/bin/sleep", ["sleep", "60"], {}))
except OSError as e:
    error = f"{type(e).__name__}: {e}"
for pid in children:
    os.kill(pid, signal.SIGKILL)
for pid in children:
    os.waitpid(pid, 0)
result = {"started": len(children), "error": error}
'''

OOM = r'''
import subprocess, sys
hog = "b = [b'x' * (10 << 20) for _ in range(150)]; print('allocated 1500 MiB', flush=True)"
proc = subprocess.run([sys.executable, "-c", hog], capture_output=True, text=True, timeout=120)
result = {"returncode": proc.returncode, "stdout": proc.stdout}
'''

DAEMON = r'''
import os
r, w = os.pipe()
child = os.fork()
if child == 0:  # the review's daemon: fork, setsid, fork, exec; reparented to init, in no process group of ours
    try:
        os.setsid()
        if os.fork() == 0:
            os.write(w, str(os.getpid()).encode())
            os.execv("/bin/sleep", ["sleep", "301"])
    finally:
        os._exit(0)
os.close(w)
os.waitpid(child, 0)
result = {"daemon": int(os.read(r, 32)), **whoami()}
os.close(r)
'''


def cgroup_path(text: str, controller: str) -> str:
    """The path of `controller` in a /proc/<pid>/cgroup text (v1 `N:memory:/x`; else the v2 `0::/x`)."""
    entries = [line.split(":", 2) for line in text.strip().splitlines()]
    for _, names, path in entries:
        if controller in names.split(","):
            return path
    for _, names, path in entries:
        if names == "":
            return path
    raise AssertionError(f"no {controller} cgroup in {text!r}")


def inside(path: str, group: str) -> bool:
    return path == group or path.startswith(group.rstrip("/") + "/")


@pytest.fixture(scope="module")
async def limited(server: ServerProc, repos: Path) -> dict[str, Any]:
    """mallory's memory hog (its build must fail) and a lab with a release command, 1 GiB, 0.5 CPU."""
    hog = lab_repo(repos, "mhog", {"hog.py": HOG})
    lab = lab_repo(repos, "mlimits", {"Procfile": "release: sed 's/^/RELEASE-CGROUP /' /proc/self/cgroup\n"
                                                  "web: python3 lab.py\n"})
    async with session(server, "mallory") as m:
        try:
            hog_dep = await deploy(m, repo_url=str(hog), build_command="python3 hog.py", start_command="python3 lab.py",
                                   resources={"memory_mb": 256, "cpus": 0.5})
            hog_status, hog_error = hog_dep["status"], str(hog_dep["error"])
        except ToolFailed as e:
            hog_status, hog_error = "refused", str(e)
        hog_log = (await call(m, "get_logs", project_name="mhog", scope="build", tail=500))["lines"]
        dep = await deploy_live(m, repo_url=str(lab), build_command="sed 's/^/BUILD-CGROUP /' /proc/self/cgroup",
                                mode="persistent", env_vars={"LAB_OWNER": "mallory"},
                                resources={"memory_mb": 1024, "cpus": 0.5})
        build_log = (await call(m, "get_logs", project_name="mlimits", scope="build", tail=500))["lines"]
    assert server.proc is not None
    return {"hog_status": hog_status, "hog_error": hog_error, "hog_log": hog_log, "lab": dep, "build_log": build_log,
            "who": whoami(server, dep["url"]), "server_cgroup": Path(f"/proc/{server.proc.pid}/cgroup").read_text()}


def _logged(lines: list[str], tag: str) -> str:
    return "\n".join(m.group(1) for line in lines if (m := re.search(tag + r" (\d+:[^:]*:\S*)", line)))


async def test_build_over_its_memory_limit_fails_naming_the_limit(limited: dict[str, Any]) -> None:
    """#6: `build_command` allocating 900 MiB with memory_mb=256 is stopped, and the error says why."""
    log = "\n".join(limited["hog_log"])
    assert limited["hog_status"] == "failed", (limited["hog_status"], log[-2000:])
    assert "build allocated 900 MiB" not in log, log[-2000:]
    assert "BUILD-CGROUP" in log, log[-2000:]  # the hog ran (mallory's own build log shows it)
    error = limited["hog_error"]
    assert "memory" in error.lower() and "256" in error, error


async def test_build_and_release_run_in_the_service_cgroup(limited: dict[str, Any]) -> None:
    """#6: build and release commands print the service's build cgroup (`<runtime group>.build`, the same limits,
    so a build never competes with the live release), not InkMCP's own."""
    runtime = limited["who"]["cgroup"]
    build = _logged(limited["build_log"], "BUILD-CGROUP")
    release = _logged(limited["build_log"], "RELEASE-CGROUP")
    assert build and release, limited["build_log"]
    for controller in ("memory", "cpu", "pids"):
        group = cgroup_path(runtime, controller)
        assert group not in ("/", cgroup_path(limited["server_cgroup"], controller)), (controller, runtime)
        for name, text in (("build", build), ("release", release)):
            assert cgroup_path(text, controller) == f"{group}.build", (name, controller, text, runtime)


async def test_runtime_cannot_fork_past_the_pids_limit(server: ServerProc, limited: dict[str, Any]) -> None:
    """#6c: 700 processes from one runtime process: the pids limit (default 512) refuses the rest."""
    seen = lab_exec(server, limited["lab"]["url"], FORK, n=700)
    assert seen["error"] is not None and seen["started"] < 700, seen
    assert seen["started"] <= 512, seen
    assert "Resource temporarily unavailable" in seen["error"] or "EAGAIN" in seen["error"], seen
    assert whoami(server, limited["lab"]["url"])["pid"] == limited["who"]["pid"]  # the app itself survived


async def test_runtime_memory_limit_kills_the_hog(server: ServerProc, limited: dict[str, Any]) -> None:
    """#6b (held): a runtime child allocating 1500 MiB under the 1024 MiB limit is OOM-killed; the app lives on."""
    seen = lab_exec(server, limited["lab"]["url"], OOM)
    assert seen["returncode"] == -signal.SIGKILL and "allocated" not in seen["stdout"], seen
    assert whoami(server, limited["lab"]["url"])["pid"] == limited["who"]["pid"]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _processes_of(uid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["uids", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
    return out


async def test_delete_ends_double_forked_daemons_and_removes_the_user(server: ServerProc, repos: Path) -> None:
    """#7: a fork+setsid+fork daemon is gone after delete(project), and so are the Unix user and its home."""
    async with session(server, "mallory") as m:
        dep = await lab_live(m, lab_repo(repos, "mdaemon"), "mallory")
        seen = lab_exec(server, dep["url"], DAEMON)
        daemon, uid = seen["daemon"], seen["uid"]
        try:
            proc = psutil.Process(daemon)
            assert proc.uids().real == uid and proc.ppid() != seen["pid"], (proc, seen)
            await call(m, "delete", project_name="mdaemon", confirm="mdaemon")
            deadline = time.monotonic() + 15
            while _alive(daemon) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not _alive(daemon), f"daemon {daemon} survived delete"
            assert _processes_of(uid) == [], f"processes of the deleted project's user: {_processes_of(uid)}"
            with pytest.raises(KeyError):
                pwd.getpwnam(seen["user"])
            assert not os.path.exists(seen["home"]), seen["home"]
        finally:
            if _alive(daemon) and psutil.Process(daemon).uids().real == uid:
                os.kill(daemon, signal.SIGKILL)  # only the daemon this test made, if delete left it


def _bytes_under(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).lstat().st_blocks * 512
    return total


def checkout_bomb(path: Path, entries: int = 1100) -> Path:
    """A repo of a few MB whose commit holds `entries` copies of one 1 MiB blob: 1.1 GiB once checked out."""
    repo = lab_repo(path.parent, path.name)
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-C", str(repo)]
    blob = subprocess.run([*git, "hash-object", "-w", "--stdin"], input=os.urandom(1 << 20), check=True,
                          capture_output=True).stdout.decode().strip()
    index = "".join(f"100644 {blob}\tbomb/{i:04d}.bin\n" for i in range(entries))
    subprocess.run([*git, "update-index", "--add", "--index-info"], input=index.encode(), check=True)
    subprocess.run([*git, "commit", "-q", "-m", "1.1 GiB of files from one blob"], check=True)
    return repo


async def test_checkout_size_is_capped(server: ServerProc, repos: Path) -> None:
    """#25: a commit whose files add up to 1.1 GiB is refused with a clear error, before it fills the disk."""
    bomb = checkout_bomb(repos / "mbomb")
    before = _bytes_under(server.data_dir)
    async with session(server, "mallory") as m:
        text = await deploy_failure(m, repo_url=str(bomb), start_command="python3 lab.py", mode="persistent")
    grown = _bytes_under(server.data_dir) - before
    assert "cap" in text and "repo_url" in text, text
    assert grown < 200 << 20, f"the data dir grew by {grown >> 20} MiB"
