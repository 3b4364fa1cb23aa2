"""InkMCP's own cgroups: the CPU weight `Cgroups.set_weight` writes, parent groups a tenant cannot list, and
tests that remove the groups they made.

The weight tests work in a parent group of their own (`inkmcp-test-<hex>`, beside the provider's `inkmcp`) and
remove exactly the directories they created; the provider tests' groups go with their data dir
(tests/cgroup_cleanup.py), so nothing is left under /sys/fs/cgroup.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.base import Resources
from inkmcp.providers.compute.local.limits import CGROUP_ROOT, PARENT_MODE, Cgroups
from tests.cgroup_cleanup import remove_service_cgroups, service_cgroups
from tests.local.conftest import WEB_APP, Events, get, key_for, no_record, request_for, web_plan
from tests.requirements import is_root, require, requires

pytestmark = requires("root", is_root(), "cgroups are written as root")


def _remove_tree(cg: Cgroups, groups: list[str]) -> None:
    """rmdir the test's groups, then its parent, in every controller (exact paths; empty dirs only)."""
    for group in groups:
        cg.remove(group)
    parents = [CGROUP_ROOT / cg.parent] if cg.version == 2 else [CGROUP_ROOT / c / cg.parent for c in cg.controllers]
    for d in parents:
        if d.is_dir():
            d.rmdir()


@pytest.fixture
def cg() -> Iterator[Cgroups]:
    groups = Cgroups(f"inkmcp-test-{uuid.uuid4().hex[:10]}")
    require("cgroups", groups.available, f"cgroups unavailable: {groups.reason}")
    yield groups
    _remove_tree(groups, ["w"])


def _cpu_dir(cg: Cgroups, group: str) -> Path:
    return CGROUP_ROOT / cg.parent / group if cg.version == 2 else CGROUP_ROOT / "cpu" / cg.parent / group


def test_set_weight_writes_the_kernels_weight(cg: Cgroups) -> None:
    """The weight on v2's scale lands in cpu.weight (v2) or as cpu.shares on v1's scale (50 -> 512): the tenant
    Postgres group's share of a busy CPU (tenant_server.confine_tenant_server) depends on it."""
    cg.ensure("w", Resources(memory_mb=256, cpus=0.5))
    cg.set_weight("w", 50)
    if cg.version == 2:
        assert (_cpu_dir(cg, "w") / "cpu.weight").read_text().strip() == "50"
    else:
        assert (_cpu_dir(cg, "w") / "cpu.shares").read_text().strip() == "512"
    cg.set_weight("w", 1)  # the lowest weight: 1024 * 1 // 100 shares on v1
    expected = "1" if cg.version == 2 else "10"
    assert (_cpu_dir(cg, "w") / ("cpu.weight" if cg.version == 2 else "cpu.shares")).read_text().strip() == expected


def test_set_weight_refuses_a_weight_outside_the_kernels_range(cg: Cgroups) -> None:
    cg.ensure("w", Resources(memory_mb=256, cpus=0.5))
    before = (_cpu_dir(cg, "w") / ("cpu.weight" if cg.version == 2 else "cpu.shares")).read_text()
    for bad in (0, 10_001):
        with pytest.raises(ValueError, match=r"outside 1\.\.10000"):
            cg.set_weight("w", bad)
    assert (_cpu_dir(cg, "w") / ("cpu.weight" if cg.version == 2 else "cpu.shares")).read_text() == before


# --- the parent groups are not listable by tenants ------------------------------------------------------------------

PROBE_APP = """
import os, json, http.server
def probe():
    groups = {}
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        for c in (controllers.split(",") if controllers else [""]):
            groups[c] = path
    listed = {}
    for base in ("/sys/fs/cgroup/inkmcp", "/sys/fs/cgroup/memory/inkmcp", "/sys/fs/cgroup/pids/inkmcp",
                 "/sys/fs/cgroup/cpu/inkmcp", "/sys/fs/cgroup/freezer/inkmcp", "/sys/fs/cgroup/pids/inkmcp-tenant-pg"):
        try:
            listed[base] = sorted(os.listdir(base))
        except OSError as e:
            listed[base] = type(e).__name__
    mem = ("/sys/fs/cgroup" + groups[""] + "/memory.max") if "memory" not in groups else \\
        ("/sys/fs/cgroup/memory" + groups["memory"] + "/memory.limit_in_bytes")
    try:
        own = open(mem).read().strip()
    except OSError as e:
        own = type(e).__name__
    return {"uid": os.getuid(), "groups": groups, "listed": listed, "own_limit": own}
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(probe()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


async def test_a_tenant_cannot_list_other_tenants_service_ids(make_provider, checkouts, project_ids) -> None:
    """From inside a deployed service (its own uid, its own cgroup): listing InkMCP's parent groups, which are
    named after every service id on the machine, is refused; its own group, named in /proc/self/cgroup, still
    works for it (the memory limit reads back) and the kernel still holds it there."""
    provider = await make_provider()
    require("cgroups", provider.limits.available, f"cgroups unavailable: {provider.limits.reason}")
    victim = key_for(project_ids(), service="victim")
    await provider.release(request_for(victim, checkouts({"app.py": WEB_APP}), web_plan()), Events(), no_record)
    attacker = key_for(project_ids(), service="probe")
    await provider.release(request_for(attacker, checkouts({"app.py": PROBE_APP}), web_plan()), Events(), no_record)

    seen = (await get(provider, attacker)).json()
    assert seen["uid"] != 0  # a tenant's uid, not InkMCP's
    for base, result in seen["listed"].items():
        if Path(base).is_dir():  # the parents this host has (v1 per controller, or v2's one)
            assert result == "PermissionError", (base, result)
    assert victim.service_id not in json.dumps(seen), seen  # nothing the probe could read names the victim
    own = {c: p for c, p in seen["groups"].items() if p.startswith("/inkmcp/")}
    assert own and all(p == f"/inkmcp/{attacker.service_id}" for p in own.values()), seen["groups"]
    assert seen["own_limit"] == str(Resources().memory_mb * 2**20), seen  # traversal to its own group works
    for d in _parents(provider.limits):
        assert d.stat().st_mode & 0o777 == PARENT_MODE, d


def _parents(cg: Cgroups) -> list[Path]:
    return [CGROUP_ROOT / cg.parent] if cg.version == 2 else [CGROUP_ROOT / c / cg.parent for c in cg.controllers]


# --- tests remove the groups they made -----------------------------------------------------------------------------


async def test_the_groups_a_test_made_are_removed_and_nothing_else(make_provider, checkouts, project_ids,
                                                                  data_dir) -> None:
    """tests/cgroup_cleanup.remove_service_cgroups (the data_dir fixture's teardown, dispose_server's): after the
    provider closed, every group of the data dir's services is gone, in every controller; another group beside
    them (another test's, another server's) is left alone, and a group with a process in it is never removed."""
    provider = await make_provider()
    require("cgroups", provider.limits.available, f"cgroups unavailable: {provider.limits.reason}")
    key = key_for(project_ids())
    await provider.release(request_for(key, checkouts({"app.py": WEB_APP}), web_plan()), Events(), no_record)
    made = service_cgroups(data_dir)
    parents = _parents(provider.limits)
    assert sorted(made) == sorted(p / n for p in parents for n in (key.service_id, f"{key.service_id}.build"))

    other = f"not-this-test-{uuid.uuid4().hex[:8]}"
    provider.limits.ensure(other, Resources(memory_mb=64, cpus=0.1))
    # while the service runs, its process is in its group: rmdir refuses it, the service keeps serving
    busy = remove_service_cgroups(data_dir)
    assert key.service_id in {d.name for d in busy}, busy
    assert all(d.is_dir() for d in busy) and (await get(provider, key)).status_code == 200
    await provider.close()  # what the make_provider fixture does first (closing twice is harmless)
    assert remove_service_cgroups(data_dir) == []
    assert service_cgroups(data_dir) == [] and not any(d.exists() for d in made)
    assert all((p / other).is_dir() for p in parents)  # not this data dir's: untouched
    provider.limits.remove(other)
