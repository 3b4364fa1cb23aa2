"""redteam4: another tenant's service id is in /proc/self/mountinfo, and with it its cgroup's counters were readable.

InkMCP's parent cgroups are 0711 (mender6) so that a tenant cannot list every service id there. But the sandbox's
mount namespace is a copy of the host's, so every project's image mounts, with their project and service ids, are in
any tenant's /proc/self/mountinfo; and each service's own cgroup dir was the kernel's 0755. So mallory's app read,
for alice's service: its pids (cgroup.procs, which hidepid hides in /proc), its memory use and page-cache pattern
(memory.stat, memory.usage_in_bytes), its CPU time (cpuacct.usage, cpu.stat): a side channel on alice's activity
(when she serves requests, how much).

Fix (`limits.Cgroups.ensure`, gid): a service's cgroup dirs are root:<its project's group> 0750: its own processes
still read their limits and usage (apps size their heaps from them), nobody else's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session, whoami
from tests.support import ServerProc

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys two labs on the shared server

PEEK = r'''
import os, re
mine = {line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup")}
ids = set(re.findall(r"/services/([0-9a-f-]{36})", open("/proc/self/mountinfo").read()))
roots = [r for r in ("/sys/fs/cgroup/memory/inkmcp", "/sys/fs/cgroup/cpu/inkmcp", "/sys/fs/cgroup/pids/inkmcp",
                     "/sys/fs/cgroup/inkmcp") if os.path.isdir(r)]
def read(path):
    with open(path) as f:
        return f.read()[:200]
seen = {}
for sid in sorted(ids):
    for root in roots:
        for name in ("cgroup.procs", "memory.usage_in_bytes", "memory.current", "memory.stat", "cpuacct.usage",
                     "cpu.stat", "pids.current"):
            path = f"{root}/{sid}/{name}"
            got = attempt(read, path)
            if got[0] != "ENOENT":
                seen[path] = got
result = {"ids": sorted(ids), "mine": sorted(mine), "seen": seen}
'''


@pytest.fixture(scope="module")
async def labs(server: ServerProc, repos: Path) -> dict[str, Any]:
    async with session(server, "alice") as a:
        alice = await lab_live(a, lab_repo(repos, "rt4-cg-alice-lab"), "alice", project_name="rt4-cg-alice")
    async with session(server, "mallory") as m:
        mallory = await lab_live(m, lab_repo(repos, "rt4-cg-mallory-lab"), "mallory", project_name="rt4-cg-mallory")
    return {"alice": alice, "mallory": mallory}


def service_id(server: ServerProc, url: str) -> str:
    cgroup = whoami(server, url)["cgroup"]
    found = {line.rsplit("/", 1)[-1] for line in cgroup.splitlines() if "/inkmcp/" in line}
    assert len(found) == 1, cgroup
    return found.pop()


async def test_another_tenants_cgroup_counters_are_unreadable(server: ServerProc, labs: dict[str, Any]) -> None:
    """mallory's app finds alice's service id in its mountinfo and tries her cgroup's files: every one EACCES (before
    the fix: alice's pids, memory and CPU counters). Her own service's counters still read."""
    alice, mallory = service_id(server, labs["alice"]["url"]), service_id(server, labs["mallory"]["url"])
    got = lab_exec(server, labs["mallory"]["url"], PEEK)
    assert alice in got["ids"], got["ids"]  # control: the id is there to find (mountinfo)
    # (the ids of other InkMCPs' services on this machine are there too: other test servers, maybe older code)
    hers = {p: v for p, v in got["seen"].items() if f"/{alice}/" in p}
    read = {p: v for p, v in hers.items() if v[0] != "EACCES"}
    assert hers and not read, f"mallory read alice's cgroup files: {read}"
    own = {p: v for p, v in got["seen"].items() if f"/{mallory}/" in p}
    assert own and all(v[0] == "ok" for v in own.values()), own  # her own: readable
