"""The bind guard (providers/compute/local/bindguard.py), with the kernel's real hook and real processes.

Each test opens a guard of its own (its own program and map, linked to the cgroup2 root) and runs the tenant's side
as a real process under a uid no user has (setpriv), so nothing here depends on a server. The end-to-end attacks
(a squatter in a deployed app, a crash-restart on a new port through the provider) are in
tests/security/test_redteam2_service_port_squat.py.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.local import bindguard, cgroup_bpf
from inkmcp.providers.compute.local.bindguard import BindGuard
from tests.requirements import requires
from tests.support import free_port

ROOT = requires("root", os.geteuid() == 0, "the bind guard loads a cgroup BPF program: root (CAP_BPF) only")
pytestmark = [ROOT]

PY = "/usr/bin/python3"
PROBE = r"""
import json, socket, sys

def bind(port, family=socket.AF_INET, host="127.0.0.1", kind=socket.SOCK_STREAM):
    s = socket.socket(family, kind)
    try:
        s.bind((host, port))
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()

out = {}
for port in json.loads(sys.argv[1]):
    out[f"{port}/4"] = bind(port)
    out[f"{port}/6"] = bind(port, socket.AF_INET6, "::")
    out[f"{port}/udp"] = bind(port, kind=socket.SOCK_DGRAM)
print(json.dumps(out))
"""


def _free_uid(after: int = 0) -> int:
    for uid in range(61000 + after, 62000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in 61000-61999")


def _probe(uid: int, ports: list[int], *, netns: bool = False) -> dict[str, int]:
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PY, "-c", PROBE, json.dumps(ports)]
    if netns:
        argv = ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=True)
    return {k: int(v) for k, v in json.loads(out.stdout).items()}


@pytest.fixture
def guard() -> Iterator[BindGuard]:
    g = BindGuard.open()
    try:
        yield g
    finally:
        g.close()


def test_a_tenant_binds_its_granted_port_and_port_0_and_nothing_else(guard: BindGuard) -> None:
    uid, other_uid = _free_uid(), _free_uid(1)
    own, foreign = free_port(), free_port()
    guard.grant(uid, own)
    got = _probe(uid, [own, foreign, 0, 16400])
    assert got[f"{own}/4"] == 0 and got[f"{own}/6"] == 0, got
    assert got[f"{foreign}/4"] == errno.EPERM and got[f"{foreign}/6"] == errno.EPERM, got  # [::] takes v4 too
    assert got["16400/4"] == errno.EPERM, got  # a Redis instance's port
    assert got["0/4"] == 0 and got["0/6"] == 0, got  # the kernel's ephemeral choice
    assert got[f"{foreign}/udp"] == 0, got  # UDP is not checked
    assert guard.ports(uid) == {own} and guard.marked(uid)
    # a uid this guard never marked (root, nginx, redis, another InkMCP's tenant) is not touched
    other = _probe(other_uid, [foreign])
    assert other[f"{foreign}/4"] == 0 and other[f"{foreign}/6"] == 0, other
    assert not guard.marked(other_uid)


def test_a_marked_tenant_without_a_port_binds_only_port_0(guard: BindGuard) -> None:
    """A Procfile worker or a build step: its project user is marked before any of its code runs."""
    uid = _free_uid()
    guard.mark(uid)
    port = free_port()
    got = _probe(uid, [port, 0])
    assert got[f"{port}/4"] == errno.EPERM and got["0/4"] == 0, got


def test_a_restart_on_a_new_port_moves_what_the_tenant_may_bind(guard: BindGuard) -> None:
    """portguard's crash recovery: the new run's port is granted before it starts, the old one revoked after."""
    uid = _free_uid()
    old, new = free_port(), free_port()
    guard.grant(uid, old)
    guard.grant(uid, new)  # the new run starts while the crashed one still holds its port
    both = _probe(uid, [old, new])
    assert both[f"{old}/4"] == 0 and both[f"{new}/4"] == 0, both
    guard.revoke(uid, old)  # the crashed run stopped
    got = _probe(uid, [old, new])
    assert got[f"{old}/4"] == errno.EPERM and got[f"{new}/4"] == 0, got
    guard.grant(uid, new)  # counted: two runs granted the same (fixed) port, one stopped
    guard.revoke(uid, new)
    assert _probe(uid, [new])[f"{new}/4"] == 0
    guard.revoke(uid, new)
    assert _probe(uid, [new])[f"{new}/4"] == errno.EPERM


def test_forget_drops_a_deleted_users_entries(guard: BindGuard) -> None:
    """A deleted project's uid may go to another user next: nothing of it stays."""
    uid = _free_uid()
    port, other = free_port(), free_port()
    guard.grant(uid, port)
    guard.forget(uid)
    assert not guard.marked(uid) and guard.ports(uid) == set()
    got = _probe(uid, [port, other])
    assert got[f"{port}/4"] == 0 and got[f"{other}/4"] == 0, got


def test_a_private_network_namespace_is_not_restricted(guard: BindGuard) -> None:
    """Its ports are its own (a build's or a test's namespace): the entries are per network namespace."""
    uid = _free_uid()
    guard.mark(uid)
    port = free_port()
    got = _probe(uid, [port], netns=True)
    assert got[f"{port}/4"] == 0, got
    assert _probe(uid, [port])[f"{port}/4"] == errno.EPERM


def test_the_hook_goes_with_its_guard_even_when_its_process_is_killed() -> None:
    """Nothing outlives the InkMCP that maintains the entries (uids are reused; other servers share the box)."""
    root = cgroup_bpf.cgroup2_root()
    assert root is not None
    g = BindGuard.open()
    mine = set(cgroup_bpf.attached(root, cgroup_bpf.ATTACH_INET4_BIND)) | set(
        cgroup_bpf.attached(root, cgroup_bpf.ATTACH_INET6_BIND))
    g.close()
    after = set(cgroup_bpf.attached(root, cgroup_bpf.ATTACH_INET4_BIND)) | set(
        cgroup_bpf.attached(root, cgroup_bpf.ATTACH_INET6_BIND))
    assert mine - after and len(mine - after) == 2, (mine, after)  # its two programs, and only those, went

    uid = _free_uid()
    port = free_port()
    code = ("import sys, time\nfrom inkmcp.providers.compute.local.bindguard import BindGuard\n"
            f"g = BindGuard.open(); g.mark({uid}); print('ready', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        assert _probe(uid, [port])[f"{port}/4"] == errno.EPERM
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        deadline = time.monotonic() + 10
        while _probe(uid, [port])[f"{port}/4"] != 0:  # links are released with the dead process's files
            assert time.monotonic() < deadline, "the killed process's bind hook is still attached"
            time.sleep(0.1)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


def test_without_root_the_guard_is_off_and_says_why() -> None:
    """A non-root InkMCP has no project users to tell apart: nothing changes, and the log says why."""
    code = ("import logging\nlogging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
            "from inkmcp.providers.compute.local import bindguard\n"
            "print(bindguard.available()); print(bindguard.open_guard())\n")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=60, cwd="/", check=True)
    assert out.stdout.splitlines() == ["InkMCP is not running as root", "None"], out
    assert "bind guard OFF (InkMCP is not running as root)" in out.stderr, out.stderr


def test_reserve_port_keeps_the_ephemeral_choice_off_a_service_port(tmp_path: Path) -> None:
    """The tenant PostgreSQL port was chosen with bind(0): listen() on an unbound socket could get it (no bind).
    (Which entries are InkMCP's to give back, however the server stopped: tests/local/test_reserved_ports.py.)"""
    reserved, span, record = tmp_path / "reserved", tmp_path / "range", tmp_path / "record.json"
    span.write_text("32768\t60999\n")
    reserved.write_text("40000-40002,50000\n")
    assert bindguard.reserve_port(40003, reserved=reserved, port_range=span, record=record)
    assert reserved.read_text() == "40000-40003,50000\n"
    assert bindguard.reserve_port(50000, reserved=reserved, port_range=span, record=record)  # already: unchanged
    assert reserved.read_text() == "40000-40003,50000\n"
    assert not bindguard.reserve_port(16400, reserved=reserved, port_range=span, record=record)  # outside
    assert reserved.read_text() == "40000-40003,50000\n"
    reserved.write_text("\n")
    assert bindguard.reserve_port(45000, reserved=reserved, port_range=span, record=record)
    assert reserved.read_text() == "45000\n"
    bindguard.release_port(45000, reserved=reserved, record=record)  # the server stopped for good
    assert reserved.read_text() == "\n"
    reserved.write_text("40000,40002-40003,45000,50000\n")
    assert bindguard.reserve_port(40001, reserved=reserved, port_range=span, record=record)
    bindguard.release_port(40001, reserved=reserved, record=record)
    assert reserved.read_text() == "40000,40002-40003,45000,50000\n"
