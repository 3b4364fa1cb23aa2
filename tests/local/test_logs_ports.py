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


def _busy_port_with_free_neighbours(n: int) -> socket.socket:
    """A listening socket on port P such that P+1..P+n are free right now: on a busy machine a random
    port's neighbours may be in use by someone else, which this test must not mistake for the allocator's doing."""
    for _ in range(50):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        base = busy.getsockname()[1]
        free = True
        for port in range(base + 1, base + n + 1):
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    free = False
                    break
        if free and base + n < 65536:
            busy.listen()
            return busy
        busy.close()
    raise AssertionError("no port with 3 free neighbours found in 50 tries")


def test_port_allocator_skips_taken_and_reserved():
    with _busy_port_with_free_neighbours(3) as busy:
        taken = busy.getsockname()[1]
        alloc = PortAllocator((taken, taken + 3))
        got = {alloc.allocate(), alloc.allocate()}
        assert taken not in got and len(got) == 2
        alloc.release(next(iter(got)))
        assert alloc.allocate() in got | {taken + 1, taken + 2}


def test_project_user_name():
    assert project_user_name("0a1b2c3d-4e5f-6789-abcd-ef0123456789") == "ink-0a1b2c3d4e5f"
    assert project_user_name("x").startswith("ink-") and len(project_user_name("x")) == 16
