"""InkMCP's own cgroups: the CPU weight `Cgroups.set_weight` writes.

Each test works in a parent group of its own (`inkmcp-test-<hex>`, beside the provider's `inkmcp`) and removes
exactly the directories it created, so nothing is left under /sys/fs/cgroup.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.base import Resources
from inkmcp.providers.compute.local.limits import CGROUP_ROOT, Cgroups
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
