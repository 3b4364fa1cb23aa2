"""redteam4: a tenant's socket buffers were kernel memory outside its memory limit (cgroup v1 hosts).

On cgroup v1 (this box: hybrid, every controller v1) the kernel charges a socket's send and receive queues to a
memory cgroup only when that cgroup has a TCP limit (`memory.kmem.tcp.limit_in_bytes`); InkMCP set none. So
mallory's app, limited to 64 MiB, opened loopback connections to a listener of her own (port 0, which the bind
guard allows), raised their buffers (8 MiB each, `net.core.rmem_max`/`wmem_max` doubled) and never read: 16
connections held ~150 MiB of kernel memory while her cgroup's usage moved by 2 MiB. A few hundred connections
(her RLIMIT_NOFILE is 20,000) reach `net.ipv4.tcp_mem`'s maximum (2.2 GiB here), past which no TCP socket on the
machine gets memory: every tenant's connections, the proxy's, PostgreSQL's and InkMCP's own stall or drop. UDP
queues are the same (`udp_mem`, DNS for everyone). Not performed at that scale here (it would take the box's
other servers with it): the test shows the memory is outside her limit, which is all the exhaustion needs.

Fix (`limits.Cgroups.ensure`, v1): each service group gets a kmem.tcp limit as large as its memory limit, which
makes the kernel charge its sockets' buffers (TCP's and UDP's) to it: past the limit only its own sockets are
throttled. cgroup v2 charges socket memory to memory.max already.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys a lab on the shared server

PROJECT = "rt4-sockmem"
LIMIT_MB = 64
CONNECTIONS = 24  # 24 x (8 MiB receive + 8 MiB send) of room: ~3x the limit if nothing charges it

# Inside mallory's app: connections to her own port-0 listener, big buffers, the sender writes until the kernel
# takes no more, nobody reads. What the kernel accepted is memory it holds for her.
FILL = r'''
import socket
n = ARGS["connections"]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30)  # capped at rmem_max, doubled
listener.bind(("127.0.0.1", 0))
listener.listen(n)
held, queued = [listener], 0
chunk = b"x" * (1 << 20)
try:
    for _ in range(n):
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
        held += [client, server]
        client.setblocking(False)
        while True:
            try:
                queued += client.send(chunk)
            except BlockingIOError:
                break
    cgroup = [line.split(":", 2)[2].strip() for line in open("/proc/self/cgroup") if ":memory:" in line]
    limit = int(open(f"/sys/fs/cgroup/memory{cgroup[0]}/memory.limit_in_bytes").read()) if cgroup else None
    result = {"queued": queued, "limit": limit}
finally:
    for s in held:
        s.close()
'''


@pytest.fixture(scope="module")
async def lab(server: Any, repos: Path) -> dict[str, Any]:
    async with session(server, "mallory") as m:
        return await lab_live(m, lab_repo(repos, "rt4-sockmem-lab"), "mallory", project_name=PROJECT,
                              resources={"memory_mb": LIMIT_MB, "cpus": 0.5})


async def test_socket_buffers_count_against_the_tenants_memory_limit(server: Any, lab: dict[str, Any]) -> None:
    """mallory (memory_mb=64) fills 24 loopback connections of her own that nobody reads: the kernel takes no
    more than about her limit from her (before the fix it took ~3x: ~200 MiB, charged to no cgroup)."""
    seen = lab_exec(server, lab["url"], FILL, connections=CONNECTIONS)
    assert seen["limit"] in (None, LIMIT_MB << 20), seen
    queued_mb = seen["queued"] / (1 << 20)
    assert queued_mb <= LIMIT_MB * 1.25, (
        f"mallory's sockets held {queued_mb:.0f} MiB of kernel memory, her limit is {LIMIT_MB} MiB")
    assert queued_mb > 1, seen  # control: the connections did carry data
