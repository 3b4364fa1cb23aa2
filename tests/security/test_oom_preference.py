"""When the host runs out of memory, the kernel kills a tenant's process, not InkMCP, its PostgreSQL or the proxy.

Each service's memory is capped by its cgroup, but all services of all accounts together may be promised more than the
host has. The host OOM killer then picks the process with the highest `oom_score` (by default: the largest), which
could be InkMCP's server, the control-plane PostgreSQL or nginx: everyone's outage. Every tenant process (app, build
step, release command) now starts with `oom_score_adj` TENANT_OOM_SCORE_ADJ (inkmcp/build/process.py step 1b).

Not performed: filling the host's memory would take this machine's other servers (and the CI run) with it. The
tests read what the kernel would decide on: the attacker's own adjustment and what it can do to it (from inside her
app and her build step), and the kernel's `oom_score` of her process against InkMCP's, as root sees them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psutil
import pytest

from inkmcp.build.process import TENANT_OOM_SCORE_ADJ
from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session
from tests.support import ServerProc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys a lab on the shared server

PROJECT = "oom-pref-mallory"

LOWER = r'''
import subprocess, sys
def lower(value):  # in a child of the app, so the app keeps its own adjustment for the other reads
    code = (f"import os; fd = os.open('/proc/self/oom_score_adj', os.O_WRONLY); os.write(fd, b'{value}'); "
            "print(open('/proc/self/oom_score_adj').read().strip())")  # unbuffered: the kernel's answer, read back
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return f"now {run.stdout.strip()}" if run.returncode == 0 else run.stderr.strip().splitlines()[-1]
result = {"pid": whoami()["pid"], "own": int(open("/proc/self/oom_score_adj").read()),
          "build": open("oom-build.txt").read().strip(), "to_minus_1000": lower(-1000), "to_0": lower(0),
          "to_900": lower(900)}
'''


def _control_plane(server: ServerProc) -> list[int]:
    """This server's PostgreSQL and nginx processes (found by its data dir on their command lines)."""
    found = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if p.info["name"] in ("postgres", "nginx") and str(server.data_dir) in " ".join(p.info["cmdline"] or ()):
            found.append(p.pid)
    return found


def _has_cap_sys_resource(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> 24 & 1)  # CAP_SYS_RESOURCE = 24
    return False


@pytest.fixture(scope="module")
async def seen(server: ServerProc, repos: Path) -> dict[str, Any]:
    """What mallory's app saw of its own OOM adjustment (and its build step's, written at build time)."""
    repo = lab_repo(repos, PROJECT)
    async with session(server, "mallory") as m:
        lab = await lab_live(m, repo, "mallory", project_name=PROJECT,
                             build_command="cat /proc/self/oom_score_adj > oom-build.txt")
    return lab_exec(server, lab["url"], LOWER) | {"url": lab["url"]}


async def test_every_tenant_process_starts_as_the_oom_killers_first_choice(seen: dict[str, Any]) -> None:
    assert seen["own"] == TENANT_OOM_SCORE_ADJ, seen  # the app, as its own code reads it
    assert seen["build"] == str(TENANT_OOM_SCORE_ADJ), seen  # a build step
    assert seen["to_900"] == "now 900", seen  # more is always hers to choose


async def test_a_tenant_cannot_make_itself_preferred_to_inkmcp(server: ServerProc, seen: dict[str, Any]) -> None:
    """Below 0 (where it would be spared before InkMCP's processes) is refused from her side; back to 0 is refused
    too when InkMCP holds CAP_SYS_RESOURCE (the kernel then keeps TENANT_OOM_SCORE_ADJ as her floor), and allowed
    without it (some containers: the limit of what an unprivileged raise can do; at 0 she is at best InkMCP's
    equal, chosen by size)."""
    assert "Permission denied" in seen["to_minus_1000"], seen
    assert server.proc is not None
    if _has_cap_sys_resource(server.proc.pid):
        assert "Permission denied" in seen["to_0"], seen
    else:
        assert seen["to_0"] == "now 0", seen


async def test_the_kernel_scores_her_app_above_inkmcp_and_its_postgres(server: ServerProc,
                                                                       seen: dict[str, Any]) -> None:
    """Root's view of what the host OOM killer would compare: her app's oom_score against the server's and the
    control-plane PostgreSQL's (both far larger in memory than her lab)."""
    assert server.proc is not None
    ours = [server.proc.pid, *_control_plane(server)]
    app = int(Path(f"/proc/{seen['pid']}/oom_score").read_text())
    assert len(ours) >= 3, ours  # the server, its PostgreSQL and its proxy
    for pid in ours:
        theirs = int(Path(f"/proc/{pid}/oom_score").read_text())
        assert app > theirs, (pid, psutil.Process(pid).name(), theirs, app)
    assert int(Path(f"/proc/{server.proc.pid}/oom_score_adj").read_text()) == 0  # InkMCP's own is untouched
