"""Real kernel cgroups: memory, CPU and pids limits of a group, what they report, and killing a whole group.

Processes join the group the way every tenant process does, through `TenantSandbox` in the forked
child before exec, so nothing they fork starts outside it.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inkmcp.build.process import SANDBOX_EXIT, TenantSandbox
from inkmcp.providers.compute.base import Resources
from inkmcp.providers.compute.local.limits import Cgroups, LimitEvents
from tests.requirements import requires

cg = Cgroups(parent="inkmcp-test", pids_max=64)
pytestmark = requires("cgroups", cg.available, f"cgroups unavailable: {cg.reason}")


@pytest.fixture
def group() -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    yield name
    cg.kill_all(name)
    cg.remove(name)
    assert not any(d.exists() for d in cg._dirs(name))


def run_in(group: str, argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    sandbox = TenantSandbox(run_as=None, cgroup_procs=cg.procs_files(group))
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False,
                          **sandbox.popen_kwargs(Path("/")))  # type: ignore[call-overload]  # fmt: skip


def test_memory_limit_kills_a_hog_and_cpu_and_pids_limits_are_set(group: str) -> None:
    cg.ensure(group, Resources(memory_mb=64, cpus=0.5))
    before = cg.events(group)
    hog = run_in(group, [sys.executable, "-c", "x = b'x' * (300 * 2**20); print('survived')"])
    assert hog.returncode == -9 and "survived" not in hog.stdout  # OOM-killed by the kernel
    assert cg.events(group).oom_kills == before.oom_kills + 1
    hit = cg.explain(group, before, Resources(memory_mb=64, cpus=0.5), "the build")
    assert hit is not None and hit.argument == "resources"
    assert hit.message == "the build ran out of memory: the service's limit is 64 MiB (resources.memory_mb)"
    assert "deploy_app(resources={'memory_mb': 128})" in hit.fix

    ok = run_in(group, [sys.executable, "-c", "b = b'x' * (8 * 2**20); print('fine')"])
    assert ok.stdout.strip() == "fine" and ok.returncode == 0
    assert cg.explain(group, cg.events(group), Resources(), "the build") is None  # nothing bit since

    if cg.version == 2:
        d = cg.root / cg.parent / group
        assert (d / "cpu.max").read_text().split() == ["50000", "100000"]
        assert (d / "pids.max").read_text().strip() == "64"
    else:
        assert (cg.root / "cpu" / cg.parent / group / "cpu.cfs_quota_us").read_text().strip() == "50000"
        assert (cg.root / "pids" / cg.parent / group / "pids.max").read_text().strip() == "64"


def test_memory_limit_can_grow_and_shrink(group: str) -> None:
    """v1 needs memory <= memory+swap after every write: raising the limit must not fail with EINVAL."""
    for mb in (64, 256, 128):
        cg.ensure(group, Resources(memory_mb=mb))
        limit = "memory.max" if cg.version == 2 else "memory.limit_in_bytes"
        assert int((cg._dirs(group)[0] / limit).read_text()) == mb * 2**20


def test_pids_limit_refuses_forks_and_says_so(group: str) -> None:
    cg.ensure(group, Resources())
    before = cg.events(group)
    forker = (
        "import os, sys\nkids = []\ntry:\n    for _ in range(100):\n        pid = os.fork()\n"
        "        if pid == 0:\n            os.execv('/bin/sleep', ['sleep', '30'])\n        kids.append(pid)\n"
        "except OSError as e:\n    print('REFUSED', len(kids))\nfinally:\n    for k in kids:\n        os.kill(k, 9)\n"
        "        os.waitpid(k, 0)\n"
    )
    out = run_in(group, [sys.executable, "-c", forker])
    refused = out.stdout.split()
    assert refused[0] == "REFUSED" and int(refused[1]) < 64, out.stdout + out.stderr
    assert cg.events(group).pids_refused > before.pids_refused
    hit = cg.explain(group, before, Resources(), "the build")
    assert hit is not None and "the build hit the service's limit of 64 processes and threads (INKMCP_PIDS_MAX)" in (
        hit.message
    )


def test_kill_all_ends_a_forking_storm_and_double_forked_daemons(group: str) -> None:
    """The attack of finding 7 and a fork loop racing the kill: every member dies, the group empties."""
    cg.ensure(group, Resources(memory_mb=256))
    sandbox = TenantSandbox(run_as=None, cgroup_procs=cg.procs_files(group))
    daemon = (
        "import os\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
        "        os.execv('/bin/sleep', ['sleep', '301'])\n    os._exit(0)\nos.wait()\n"
    )
    subprocess.run([sys.executable, "-c", daemon], check=True, timeout=30, **sandbox.popen_kwargs(Path("/")))  # type: ignore[call-overload]
    storm = subprocess.Popen(["/bin/sh", "-c", "while :; do (sleep 1000 &) ; done"], start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             **sandbox.popen_kwargs(Path("/")))  # type: ignore[call-overload]  # fmt: skip

    def sleepers() -> list[tuple[psutil.Process, list[str]]]:
        found = []
        for pid in cg.pids(group):
            with contextlib.suppress(psutil.NoSuchProcess):  # the storm's subshells come and go
                proc = psutil.Process(pid)
                if (cmd := proc.cmdline())[:1] == ["sleep"]:
                    found.append((proc, cmd))
        return found

    deadline = time.monotonic() + 10
    while len(found := sleepers()) < 20 and time.monotonic() < deadline:
        time.sleep(0.01)
    members = [proc for proc, _ in found]
    assert len(members) >= 20
    assert ["sleep", "301"] in [cmd for _, cmd in found]  # the double-forked daemon is in the group
    killed = cg.kill_all(group, timeout=10)
    storm.wait(timeout=10)
    assert killed >= len(members) and cg.pids(group) == set()
    for m in members:
        assert not m.is_running() or m.status() == psutil.STATUS_ZOMBIE
    cg.remove(group)
    assert not any(d.exists() for d in cg._dirs(group))


def test_sandbox_refuses_to_run_outside_its_cgroup() -> None:
    """Fail closed: when the child cannot join its cgroup, nothing of the tenant runs."""
    sandbox = TenantSandbox(run_as=None, cgroup_procs=("/sys/fs/cgroup/no-such-controller/x/cgroup.procs",))
    marker = Path(f"/var/lib/inkmcp-never-{uuid.uuid4().hex}")
    done = subprocess.run(["/bin/touch", str(marker)], capture_output=True, text=True, check=False,
                          **sandbox.popen_kwargs(Path("/")))  # type: ignore[call-overload]  # fmt: skip
    assert done.returncode == SANDBOX_EXIT
    assert "could not start the process in its sandbox: joining the service's cgroup" in done.stderr
    assert not marker.exists()


def test_events_are_zero_for_a_missing_group() -> None:
    assert cg.events(f"absent-{uuid.uuid4().hex[:6]}") == LimitEvents()
    assert cg.kill_all(f"absent-{uuid.uuid4().hex[:6]}") == 0
