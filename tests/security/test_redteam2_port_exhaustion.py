"""Red team redteam2 (2026-12-02): one tenant holds every app port of the machine.

The attack, as mallory (code in her own app, by hand on a real root server): raise her soft RLIMIT_NOFILE to its hard
limit (20,000) and bind() a TCP socket (no listen) on every free port of 20000-29999, InkMCP's range for apps' $PORT:
9,982 sockets. Then alice's `update_env_vars` (a restart on a new port) answered only "Error executing tool
update_env_vars" (the allocator's RuntimeError "no free port in 20000-29999" in the server log); every account's
deploy, env restart, on_demand wake and crash recovery failed the same way until mallory let go.

Prevented since svcports (2026-12-02) where InkMCP runs as root with cgroup BPF: the bind guard
(`providers/compute/local/bindguard.py`) refuses a project user's bind() of any port but its own runs' $PORT (and
port 0) with EPERM, so mallory's loop holds nothing: checked from inside her deployed app in
`test_redteam2_service_port_squat.py::test_a_tenant_binds_its_own_port_and_nothing_else` (200 free ports of the
app range: none held). Still true where the guard cannot run (not root) or for a process that is not a project user:
the allocator's refusal is a ProviderError that says what happened and what to do, so the agent gets it instead of a
bare error, and a crash recovery waiting for a port keeps retrying instead of dying. This test holds a small range
itself, as root (not a tenant: the guard lets it; holding the real range would stop every other test's deploys on
this machine), and checks what the allocator says.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from inkmcp.errors import InkError
from inkmcp.providers.compute.local.ports import NoFreePort, PortAllocator
from tests.support import free_port


@pytest.fixture
def held_range() -> Iterator[tuple[int, int]]:
    """Four consecutive ports, each bound without listening (what mallory's sockets were)."""
    for _ in range(50):
        low = free_port()
        socks: list[socket.socket] = []
        try:
            for port in range(low, low + 4):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", port))
        except OSError:
            for s in socks:
                s.close()
            continue
        try:
            yield low, low + 4
        finally:
            for s in socks:
                s.close()
        return
    pytest.fail("found no four consecutive free ports")


def test_a_range_bound_by_another_process_is_refused_with_an_actionable_error(held_range: tuple[int, int]) -> None:
    low, high = held_range
    with pytest.raises(NoFreePort) as refused:
        PortAllocator((low, high)).allocate()
    err = refused.value
    assert isinstance(err, InkError), type(err)  # reaches the agent as a tool error, not "Error executing tool"
    assert f"every port of {low}-{high - 1} is bound" in err.message and "could be started" in err.message
    assert err.fix is not None and "retry" in err.fix and "operator" in err.fix
