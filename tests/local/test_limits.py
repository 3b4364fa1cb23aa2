"""Real kernel cgroups: a service over its memory limit is killed, and its CPU quota is set."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest

from inkmcp.providers.compute.base import Resources
from inkmcp.providers.compute.local.limits import Cgroups

cg = Cgroups(parent="inkmcp-test")
pytestmark = pytest.mark.skipif(not cg.available, reason=f"cgroups unavailable: {cg.reason}")


def test_memory_limit_kills_a_hog_and_cpu_quota_is_set() -> None:
    group = f"t-{uuid.uuid4().hex[:8]}"
    cg.ensure(group, Resources(memory_mb=64, cpus=0.5))
    try:
        hog = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5); b = bytearray(300 * 2**20); "
                                "b[::4096] = b'x' * len(b[::4096]); print('survived')"],
                               stdout=subprocess.PIPE, text=True)
        cg.attach(group, hog.pid)
        out, _ = hog.communicate(timeout=60)
        assert hog.returncode == -9 and "survived" not in out  # OOM-killed by the kernel

        ok = subprocess.Popen([sys.executable, "-c", "b = bytearray(8 * 2**20); print('fine')"],
                              stdout=subprocess.PIPE, text=True)
        cg.attach(group, ok.pid)
        assert ok.communicate(timeout=60)[0].strip() == "fine" and ok.returncode == 0

        if cg.version == 2:
            assert (cg.root / cg.parent / group / "cpu.max").read_text().split() == ["50000", "100000"]
        else:
            assert (cg.root / "cpu" / cg.parent / group / "cpu.cfs_quota_us").read_text().strip() == "50000"
    finally:
        cg.remove(group)
    assert not any(d.exists() for d in cg._dirs(group))
