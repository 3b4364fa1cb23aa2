"""Keep a routed app's listening port bound while its process is dead (red team redteam2, 2026-12-02).

Why: every tenant shares the host's loopback, and any Unix user may bind any free port above 1023. The
proxy (nginx, and the slow path) connects to a routed service at 127.0.0.1:<port>. When the routed process
died (a crash, an OOM kill), the kernel freed that port at once, while the route kept pointing at it until
the same process was restarted in place on the same port. Another tenant's code spinning on
`bind(127.0.0.1:<port>)` (SO_REUSEADDR; the port and the owner's uid are in /proc/net/tcp) took it within
milliseconds: every request for the victim's hostname, cookies and bodies included, reached the attacker,
and the victim's restarted process then failed with EADDRINUSE in a loop.

The fix has two halves:
- `hold`: once a release goes live, InkMCP (root) takes a duplicate of the routed process's own listening
  socket with pidfd_getfd(2). The socket is one kernel object: while InkMCP holds it, it stays bound and
  listening after the process died, so no other socket can bind the port; connections arriving meanwhile
  wait in its backlog.
- the provider never restarts a guarded routed process in place (that would need the held port): it starts
  the release again on a fresh port, health-checks it, moves the route, and only then closes the held
  socket (`ReleaseRun.stop`).

Not covered: a service with a fixed `port` (it cannot move, so it restarts in place, as before); an app that
closes and re-binds its own listener while it runs gets EADDRINUSE (the held duplicate keeps the old one).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import socket
from collections.abc import Iterable

from inkmcp.providers.compute.local.readiness import ListenProbe

log = logging.getLogger(__name__)

_SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (asm-generic table, 5.6+)
_LISTEN = "0A"
_LOOPBACK_V4 = {"0100007F", "00000000"}  # /proc/net/tcp spells 127.0.0.1 and 0.0.0.0 in host byte order
_V6_ANY = (b"\0" * 16, b"\0" * 10 + b"\xff\xff\x7f\0\0\x01")  # [::] and ::ffff:127.0.0.1, as sock_diag gives them
_LOOPBACK_V6 = {"00000000000000000000000000000000", "0000000000000000FFFF00000100007F"}  # :: and ::ffff:127.0.0.1


def _listening_inodes(port: int, uid: int) -> set[str]:
    """Socket inodes of TCP listeners of `uid` on `port` that a connection to 127.0.0.1:`port` can reach.

    Asked of the kernel for this one port (sock_diag, as readiness does: ~0.1 ms); /proc/net/tcp, which formats
    every socket of the machine (~5 ms here), only if sock_diag is unavailable."""
    probe = ListenProbe.open()
    if probe is not None:
        with probe:
            try:
                return {str(x.inode) for x in probe.listeners(port)
                        if x.uid == uid and (x.reaches_loopback_v4 or x.address in _V6_ANY)}
            except OSError:
                pass
    found: set[str] = set()
    for table, addresses in (("/proc/net/tcp", _LOOPBACK_V4), ("/proc/net/tcp6", _LOOPBACK_V6)):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            address, _, hexport = fields[1].partition(":")
            if int(hexport, 16) == port and int(fields[7]) == uid and address in addresses:
                found.add(fields[9])
    return found


def _family(pids: Iterable[int]) -> list[int]:
    """`pids` and all their descendants (a gunicorn master's workers, a shell's child)."""
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen or pid <= 0:
            continue
        seen.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return seen


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _pidfd_getfd(pid: int, target: int) -> int:
    libc = _libc()
    pidfd = os.pidfd_open(pid)
    try:
        fd = libc.syscall(_SYS_PIDFD_GETFD, pidfd, target, 0)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return int(fd)
    finally:
        os.close(pidfd)


def hold(port: int, uid: int, pids: Iterable[int]) -> socket.socket | None:
    """A duplicate of the listening socket of `uid` on `port` held by one of `pids` (or a descendant), or None.

    None when there is no such socket (the app listens on ::1 only, or through another user) or the kernel
    refuses pidfd_getfd (before 5.6, no CAP_SYS_PTRACE): the caller then restarts in place, as before.
    """
    inodes = _listening_inodes(port, uid)
    if not inodes:
        return None
    for pid in _family(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for name in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{name}")
            except OSError:
                continue
            if not (link.startswith("socket:[") and link[8:-1] in inodes):
                continue
            try:
                fd = _pidfd_getfd(pid, int(name))
            except OSError as exc:
                log.warning("could not hold the listening socket of port %s (pid %s): %s", port, pid, exc)
                return None
            try:  # the tenant may have reused the fd number between readlink and getfd: check what we got
                sock = socket.socket(fileno=fd)
            except OSError:
                os.close(fd)
                continue
            try:
                ok = sock.type == socket.SOCK_STREAM and sock.getsockname()[1] == port
            except (OSError, IndexError):
                ok = False
            if not ok:
                sock.close()
                continue
            return sock
    return None
