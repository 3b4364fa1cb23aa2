"""Small pieces: log rotation/tails and port allocation."""

from __future__ import annotations

import socket
from pathlib import Path

from inkmcp.providers.compute.local.logs import RotatingLog, tail_lines
from inkmcp.providers.compute.local.ports import PortAllocator
from inkmcp.providers.compute.local.users import project_user_name


def test_log_rotates_and_tail_spans_both_files(tmp_path: Path):
    log = RotatingLog(tmp_path / "runtime.log", max_bytes=1000)
    for i in range(100):
        log.write(f"web | line {i:03d} " + "x" * 20)
    log.close()
    assert (tmp_path / "runtime.log.1").exists()
    assert (tmp_path / "runtime.log").stat().st_size <= 1000
    assert not (tmp_path / "runtime.log.2").exists()
    tail = tail_lines(tmp_path / "runtime.log", 5)
    assert [t.split()[3] for t in tail] == ["095", "096", "097", "098", "099"]
    assert len(tail_lines(tmp_path / "runtime.log", 10_000)) < 100  # capped: older lines are gone


def test_port_allocator_skips_taken_and_reserved():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        alloc = PortAllocator((taken, taken + 3))
        got = {alloc.allocate(), alloc.allocate()}
        assert taken not in got and len(got) == 2
        alloc.release(next(iter(got)))
        assert alloc.allocate() in got | {taken + 1, taken + 2}


def test_project_user_name():
    assert project_user_name("0a1b2c3d-4e5f-6789-abcd-ef0123456789") == "ink-0a1b2c3d4e5f"
    assert project_user_name("x").startswith("ink-") and len(project_user_name("x")) == 16
