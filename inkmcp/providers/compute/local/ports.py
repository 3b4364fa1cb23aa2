"""Free TCP ports for tenant processes.

Ports come from a dedicated range below the kernel's ephemeral range (32768+), so a tenant's
listening port never collides with the source port of some outgoing connection. Ports handed out
are remembered until released: two releases starting at the same moment never get the same port,
even before either process has bound it.
"""

from __future__ import annotations

import random
import socket

from inkmcp.errors import ProviderError

DEFAULT_RANGE = (20000, 30000)


class NoFreePort(ProviderError):
    """Every port of the range is bound (redteam2: one tenant's app bound all 9,982 free ones with plain bind()
    calls, and every account's deploy, env restart and wake then failed with a bare "Error executing tool"). The
    loopback is shared, so that is not preventable here; the agent and the operator are told what happened."""


def port_is_free(port: int, *, reuse: bool = False) -> bool:
    """True if nothing listens on `port` on loopback or the wildcard address (apps may bind either).

    `reuse` (a fixed port the previous release just left): bind with SO_REUSEADDR, as servers do, so
    connections it closed, lingering in TIME_WAIT on the port for a minute, do not count (a listener
    still does). Without it, ports handed out fresh are clean even for an app binding without it."""
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if reuse:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


class PortAllocator:
    """Hands out unused ports from a range; not thread-safe (used from the event loop only)."""

    def __init__(self, port_range: tuple[int, int] = DEFAULT_RANGE) -> None:
        low, high = port_range
        if not 1024 <= low < high <= 65536:
            raise ValueError(f"invalid port range {port_range}")
        self._low = low
        self._high = high
        self._reserved: set[int] = set()

    def allocate(self) -> int:
        """A port nobody listens on and that this allocator has not handed out yet."""
        span = self._high - self._low
        start = random.randrange(span)
        for offset in range(span):
            port = self._low + (start + offset) % span
            if port in self._reserved:
                continue
            if port_is_free(port):
                self._reserved.add(port)
                return port
        raise NoFreePort(
            f"no free port for the app's $PORT on this machine: every port of {self._low}-{self._high - 1} is bound "
            "by some process, so no process of the service could be started",
            fix="retry in a few minutes; if it persists, ask the operator: some process on the machine holds the "
            "whole range (list them with `ss -tanp state bound-inactive`, iproute2 6.5+)",
        )

    def reserve(self, port: int) -> None:
        """Mark a fixed port (BuildPlan.port) as taken by us."""
        self._reserved.add(port)

    def release(self, port: int | None) -> None:
        if port is not None:
            self._reserved.discard(port)
