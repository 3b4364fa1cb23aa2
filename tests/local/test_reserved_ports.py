"""InkMCP's entries in the kernel's `ip_local_reserved_ports` are given back however their server stopped
(bindguard.reserve_port / hold_port / release_port / repair_reserved_ports), and an operator's entry never is.

The tenant PostgreSQL server's port goes into the machine-wide list while it runs. Before, only
`EmbeddedPostgres.stop` with the port known gave it back: a server killed -9 with the serve that started it, or
stopped another way (`EmbeddedPostgres(pgdata).stop()` without the port, as a harness does), left it reserved until
the next reboot; and `release_port` removed an entry an operator had made before InkMCP reserved the same port.

The first tests run on files of their own (the kernel's list and the record, in tmp_path) with real processes as
holders; the last one kills a real `inkmcp serve` and its tenant server with SIGKILL and starts another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.local import bindguard
from tests.requirements import requires

pytestmark = [requires("root", os.geteuid() == 0, "ip_local_reserved_ports and its lock in /run: root only")]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    reserved, span, record = tmp_path / "reserved", tmp_path / "range", tmp_path / "record.json"
    span.write_text("32768\t60999\n")
    reserved.write_text("40000-40002,50000\n")  # an operator's
    return {"reserved": reserved, "port_range": span, "record": record}


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this test's, standing for a server that holds a reservation (killed by its PID)."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def reserve_in_a_process_that_exits(port: int, owner: str, files: dict[str, Path]) -> None:
    """`reserve_port` called by a process that is gone afterwards (a CLI command, a serve killed -9): a fork of
    this one (a new interpreter would spend seconds importing the provider package)."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        code = 1
        try:
            code = 0 if bindguard.reserve_port(port, owner=owner, **files) else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_release_gives_back_only_what_inkmcp_reserved(files: dict[str, Path]) -> None:
    assert bindguard.reserve_port(45000, owner="/a/pg/tenants", **files)
    assert bindguard.reserve_port(50000, owner="/b/pg/tenants", **files)  # reserved already, by the operator
    assert files["reserved"].read_text() == "40000-40002,45000,50000\n"
    assert set(json.loads(files["record"].read_text())["ports"]) == {"45000"}  # the operator's is not recorded
    bindguard.release_port(50000, owner="/b/pg/tenants", reserved=files["reserved"], record=files["record"])
    bindguard.release_port(40001, reserved=files["reserved"], record=files["record"])
    assert files["reserved"].read_text() == "40000-40002,45000,50000\n"  # the operator's entries stay
    # a server stopped by its pgdata alone (EmbeddedPostgres(pgdata).stop(): no port known)
    bindguard.release_port(owner="/a/pg/tenants", reserved=files["reserved"], record=files["record"])
    assert files["reserved"].read_text() == "40000-40002,50000\n"
    assert not files["record"].exists()


def test_the_next_reservation_gives_back_entries_whose_holders_are_gone(
    files: dict[str, Path], sleeper: subprocess.Popen[bytes]
) -> None:
    """A server killed -9 with the process that started it: its port is given back at the next start; while the
    server itself lives (a serve killed -9 leaves its tenant server running, and the next serve adopts it) it stays."""
    reserve_in_a_process_that_exits(45000, "/a/pg/tenants", files)
    bindguard.hold_port(45000, sleeper.pid, record=files["record"])  # the server's own process
    assert bindguard.reserve_port(46000, owner="/b/pg/tenants", **files)  # another server's start
    assert files["reserved"].read_text() == "40000-40002,45000,46000,50000\n"  # held by the living server
    sleeper.kill()
    sleeper.wait()
    reserve_in_a_process_that_exits(47000, "/c/pg/tenants", files)  # the next start
    assert files["reserved"].read_text() == "40000-40002,46000,47000,50000\n"  # 45000 given back, the operator's kept
    assert set(json.loads(files["record"].read_text())["ports"]) == {"46000", "47000"}
    # 47000's reserving process is gone and nothing else holds it: the repair on its own gives it back
    assert bindguard.repair_reserved_ports(reserved=files["reserved"], record=files["record"]) == [47000]
    assert files["reserved"].read_text() == "40000-40002,46000,50000\n"


def test_a_pid_reused_by_another_process_holds_nothing(files: dict[str, Path]) -> None:
    reserve_in_a_process_that_exits(45000, "/a/pg/tenants", files)
    record = json.loads(files["record"].read_text())
    [[_gone_pid, started]] = record["ports"]["45000"]["holders"]
    record["ports"]["45000"]["holders"] = [[os.getpid(), started]]  # this pid, with the gone process's start time
    files["record"].write_text(json.dumps(record))
    assert bindguard.repair_reserved_ports(reserved=files["reserved"], record=files["record"]) == [45000]


def test_another_boots_record_touches_nothing(files: dict[str, Path]) -> None:
    """After a reboot the kernel's list is the boot's own (sysctl.conf): an old record's ports may be an operator's."""
    files["reserved"].write_text("40000-40002,45000,50000\n")
    files["record"].write_text(json.dumps({"boot": "another boot", "ports": {"45000": {"owner": "/a", "holders": []}}}))
    assert bindguard.repair_reserved_ports(reserved=files["reserved"], record=files["record"]) == []
    assert files["reserved"].read_text() == "40000-40002,45000,50000\n"
    assert not files["record"].exists()


# --- a real serve and its tenant server, killed -9 ------------------------------------------------------------------

def _kernel_reserved() -> set[int]:
    return bindguard._parse_ports(bindguard.RESERVED_PORTS.read_text())


def _tenant_port(data_dir: Path) -> int:
    return int((data_dir / "pg" / "tenants.port").read_text().strip())


@pytest.mark.slow
def test_a_serve_and_its_tenant_server_killed_9_leave_no_reservation_after_the_next_start() -> None:
    """Before: the killed server's port stayed in the kernel's list for good. Now the next serve's start gives it
    back; an operator's entry (made under the same lock, a port of the ephemeral range) stays; the new server's
    own port is reserved while it runs and given back at its stop."""
    from tests.support import dispose_server, free_port, make_server

    low, high = (int(x) for x in bindguard.PORT_RANGE.read_text().split())
    operator = free_port()  # an ephemeral port (bind(0)): inside the range
    assert low <= operator <= high
    with bindguard._locked():
        before = _kernel_reserved()
        assert operator not in before
        bindguard.RESERVED_PORTS.write_text(bindguard._format_ports(before | {operator}) + "\n")
    first = make_server("inkmcp-resv-a-")
    second = make_server("inkmcp-resv-b-")
    try:
        first.start()
        killed = _tenant_port(first.data_dir)
        assert killed in _kernel_reserved()
        postmaster = int((first.data_dir / "pg" / "tenants" / "postmaster.pid").read_text().split()[0])
        assert first.proc is not None
        first.proc.kill()  # SIGKILL to the serve this test started, then to its tenant server (by their PIDs)
        first.proc.wait(10)
        first.proc = None
        os.kill(postmaster, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{postmaster}") and "Z" not in _state(postmaster):
            assert time.monotonic() < deadline, "the killed postmaster is still there"
            time.sleep(0.05)
        assert killed in _kernel_reserved()  # nothing gave it back yet (what stayed for good before)

        second.start()
        mine = _tenant_port(second.data_dir)
        reserved = _kernel_reserved()
        assert killed not in reserved, reserved
        assert operator in reserved and mine in reserved
        assert second.stop() == 0, second.log()
        assert mine not in _kernel_reserved() and operator in _kernel_reserved()
    finally:
        for srv in (second, first):
            dispose_server(srv, clean_stop=False)
        with bindguard._locked():  # the test's own entry, by its exact value
            bindguard.RESERVED_PORTS.write_text(bindguard._format_ports(_kernel_reserved() - {operator}) + "\n")


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "gone"
    return stat[stat.rindex(")") + 2:].split()[0]
