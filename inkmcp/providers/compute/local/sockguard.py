"""One account's processes hold a bounded share of the machine's ephemeral ports (redteam6, 2026-12-03).

Why: every tenant shares the host's network namespace and so its ephemeral port range (`ip_local_port_range`,
32768-60999 here: 28,232 ports). bind() to port 0, listen() or a UDP sendto() on an unbound socket each take a port
of that range for the socket alone, and connect() skips every port a bound socket holds. Measured on this box: in a
private network namespace (so the shared machine kept its ports) a project user's two bind(0) loops held the whole
default range in ~60 s (each bind(0) slows as the range fills; load 5 on 2 cores), with a range of 4,000 in ~1 s,
after which every TCP connect() there failed with EADDRNOTAVAIL (root's; on the host that is nginx's to every app,
InkMCP's git fetches and health checks; its control plane is on a unix socket) and, with UDP ports held the same way
(sendto() on unbound sockets), every UDP sendto() on an unbound socket with EAGAIN (DNS). The sockets need not even
stay open: bind(0), connect() to a listener of its own and close() leaves the port in TIME_WAIT for 60 s, still
skipped by everyone's connect(); a deployed app did 1,000 of those in 0.06 s (at that rate, the range in ~2 s).

How: cgroup BPF hooks linked to the cgroup2 root (so they see every process, in whatever v1 cgroup), for the uids
InkMCP assigned to a group (`assign`: a project's user to its account):
- sock_create (BPF_CGROUP_INET_SOCK_CREATE): the group's count of open INET sockets (TCP, UDP, any other) goes up, and
  the socket is stamped with the group (socket-local storage: the stamp lives and dies with the socket); past the cap
  (`cap`) socket() fails with EPERM. Every socket holds at most one port, so an account's open sockets bound the
  ports it takes by bind(0), listen() and sendto() (and a connect()'s, which other destinations share anyway);
  accepted connections are the kernel's sockets on the listener's port and are not counted.
- sock_release (BPF_CGROUP_INET_SOCK_RELEASE): a stamped socket's close() counts it down (whoever closes it: a socket
  passed to another process counts against the group that made it).
- connect (BPF_CGROUP_INET4/6_CONNECT): a TCP socket that already holds a port (bind(0) first; the bind guard lets a
  tenant bind nothing else but its own $PORT) keeps it after close() (TIME_WAIT, FIN_WAIT), outside the count; such
  connect()s are paced per group (GCRA: `BOUND_CONNECTS_PER_S` a second, bursts of `BOUND_CONNECT_BURST`), so a group
  holds at most about BOUND_CONNECT_BURST + 60 x BOUND_CONNECTS_PER_S ports that way. Past it: connect() -> EPERM.
  A plain connect() (no bind() first, what every client library does) is never paced: the kernel shares its port with
  connections to every other destination.
- --- redteam6 #2: connect to a limited port (`limit_ports`: the tenant PostgreSQL server's): the group's open
  connections there are counted (the socket is stamped; its release counts it down) and refused past
  INKMCP_TENANT_PG_CONNECTIONS (default 40). PostgreSQL gives a connection one of its max_connections slots (a PGPROC)
  when its startup packet arrives, before the password exchange, and keeps it for authentication_timeout (60 s): no
  role's CONNECTION LIMIT counts it yet. One tenant's 200 connections that sent a startup packet and never answered
  the password request held every slot: every tenant's login and InkMCP's own (provision_database) got "sorry, too
  many clients already" for as long as she kept reopening them.
A refusal is noted per uid (`take_refused`) so the provider can say it in the project's log.

The cap (INKMCP_TENANT_SOCKETS, per account: default the smaller of 4096 and an eighth of the range; 0 turns the
guard off) leaves the range to everyone else even when a few accounts hold their whole share; an app holding more
open outgoing sockets than that pools them (an HTTP server's accepted connections are not counted).

Lifetime: as the bind guard's (each LocalComputeProvider holds its own programs and maps through BPF links; they go
with it, and sockets stamped by an earlier InkMCP are not counted by this one: their processes were killed at start).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading

from inkmcp.providers.compute.local import cgroup_bpf as cb
from inkmcp.providers.compute.local.bindguard import _KEY, PORT_RANGE, SOCK_STREAM, _key
from inkmcp.providers.compute.local.cgroup_bpf import Insn, Jump

log = logging.getLogger(__name__)

ATTACH_INET_SOCK_CREATE = 2
ATTACH_INET_SOCK_RELEASE = 34
FUNC_KTIME_GET_NS = 5
ATOMIC_ADD, ATOMIC_FETCH_ADD = 0x00, 0x01
NOEXIST = 1

PROG_PREFIX = "inkmcp_sock"
OWNERS_NAME = "inkmcp_sockown"
COUNTS_NAME = "inkmcp_sockcnt"
PACE_NAME = "inkmcp_sockpace"
STAMP_NAME = "inkmcp_sockgrp"
REFUSED_NAME = "inkmcp_sockno"
MAX_OWNERS = 16384
MAX_GROUPS = 16384
MAX_REFUSED = 8192
DEFAULT_CAP = 4096
BOUND_CONNECTS_PER_S = 10
BOUND_CONNECT_BURST = 256
REFUSED_SOCKET, REFUSED_CONNECT, REFUSED_DATABASE = 1, 2, 3
CONNS_NAME = "inkmcp_sockdb"
CONN_STAMP_NAME = "inkmcp_sockdbs"
LIMITED_NAME = "inkmcp_socklim"
MAX_LIMITED = 64
DEFAULT_DATABASE_CONNECTIONS = 40
UID_GROUP = 0x80000000  # a uid with no account given: a group of its own (account groups count from 1)

# Stack layout (offsets from r10)
_K = -16  # the owners' key: u64 netns cookie, u32 uid, u32 port (0)
_GROUP = -20  # u32: the group, the counts' and pace's key
_ZERO = -32  # u64: a new counter
_WHAT = -36  # u32: what was refused
_PORT = -40  # u32: the destination port (network order, as user_port holds it): the limited ports' key


def _ld64(dst: int, value: int) -> list[Insn]:
    """`dst = value` (the 16-byte ld_imm64; each half as the signed 32-bit immediate Insn packs)."""
    low, high = value & 0xFFFFFFFF, (value >> 32) & 0xFFFFFFFF
    return [Insn(0x18, dst, 0, 0, low - (1 << 32) if low >= 1 << 31 else low),
            Insn(0, 0, 0, 0, high - (1 << 32) if high >= 1 << 31 else high)]


def _owner(owners_fd: int) -> list[Insn | Jump | str]:
    """r6 = ctx; the caller's group at _GROUP and in r7, or -> allow (not a tenant of this InkMCP here)."""
    return [
        Insn(0x85, 0, 0, 0, cb.FUNC_GET_CURRENT_UID_GID),
        Insn(0x63, 10, 0, _K + 8),  # key.uid = (u32) r0
        Insn(0xBF, 1, 6),
        Insn(0x85, 0, 0, 0, cb.FUNC_GET_NETNS_COOKIE),
        Insn(0x7B, 10, 0, _K),  # key.netns
        Insn(0x62, 10, 0, _K + 12, 0),  # key.port = 0
        *cb.ld_map_fd(1, owners_fd),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, _K),
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),
        Jump(0x15, "allow", 0, imm=0),
        Insn(0x61, 7, 0, 0),  # r7 = group
        Insn(0x63, 10, 7, _GROUP),
    ]


def _counter(map_fd: int, deny: str = "deny") -> list[Insn | Jump | str]:
    """r0 = the group's u64 in `map_fd` (made 0 if missing), or -> `deny` if the kernel has no memory for it."""
    return [
        *cb.ld_map_fd(1, map_fd),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, _GROUP),
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),
        Jump(0x55, f"have{map_fd}", 0, imm=0),
        Insn(0x7A, 10, 0, _ZERO, 0),
        *cb.map_update(map_fd, _GROUP, _ZERO, NOEXIST),  # another CPU may have made it meanwhile: that one is used
        *cb.ld_map_fd(1, map_fd),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, _GROUP),
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),
        Jump(0x15, deny, 0, imm=0),
        f"have{map_fd}",
    ]


def _deny(refused_fd: int, what: int, label: str = "deny") -> list[Insn | Jump | str]:
    """Note the refusal under (netns, uid, 0) (the key is still at _K) and refuse."""
    return [
        label,
        Insn(0x62, 10, 0, _WHAT, what),
        *cb.map_update(refused_fd, _K, _WHAT),
        Insn(0xB7, 0, 0, 0, 0),
        Insn(0x95),
    ]


_ALLOW: list[Insn | Jump | str] = ["allow", Insn(0xB7, 0, 0, 0, 1), Insn(0x95)]


def create_program(owners_fd: int, counts_fd: int, stamp_fd: int, refused_fd: int, cap: int) -> list[Insn]:
    """sock_create (r1 = struct bpf_sock *): count the socket against its group, or refuse it past `cap`."""
    return cb.assemble([
        Insn(0xBF, 6, 1),
        *_owner(owners_fd),
        *cb.ld_map_fd(1, stamp_fd),  # the stamp first: a socket that cannot be stamped is never counted
        Insn(0xBF, 2, 6),
        Insn(0xB7, 3, 0, 0, 0),
        Insn(0xB7, 4, 0, 0, cb.SK_STORAGE_GET_F_CREATE),
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_STORAGE_GET),
        Jump(0x15, "deny", 0, imm=0),
        Insn(0xBF, 8, 0),  # r8 = the stamp
        *_counter(counts_fd),
        Insn(0xB7, 1, 0, 0, 1),
        Insn(0xDB, 0, 1, 0, ATOMIC_FETCH_ADD),  # r1 = count, count += 1
        Jump(0x35, "over", 1, imm=cap),
        Insn(0x63, 8, 7, 0),  # stamp = group: counted, so its release counts it down
        Jump(0x05, "allow"),
        "over",
        Insn(0xB7, 1, 0, 0, -1),
        Insn(0xDB, 0, 1, 0, ATOMIC_ADD),  # not this one
        *_deny(refused_fd, REFUSED_SOCKET),
        *_ALLOW,
    ])


def release_program(counts_fd: int, stamp_fd: int, conns_fd: int, conn_stamp_fd: int) -> list[Insn]:
    """sock_release (r1 = struct bpf_sock *): a socket counted at its creation is counted down, once; so is its
    connection to a limited port."""
    items: list[Insn | Jump | str] = [Insn(0xBF, 6, 1)]
    for storage, counter, label in ((stamp_fd, counts_fd, "sockets"), (conn_stamp_fd, conns_fd, "out")):
        items += [
            *cb.ld_map_fd(1, storage),
            Insn(0xBF, 2, 6),
            Insn(0xB7, 3, 0, 0, 0),
            Insn(0xB7, 4, 0, 0, 0),
            Insn(0x85, 0, 0, 0, cb.FUNC_SK_STORAGE_GET),
            Jump(0x15, label, 0, imm=0),
            Insn(0x61, 7, 0, 0),
            Jump(0x15, label, 7, imm=0),
            Insn(0x62, 0, 0, 0, 0),  # stamp = 0
            Insn(0x63, 10, 7, _GROUP),
            *cb.ld_map_fd(1, counter),
            Insn(0xBF, 2, 10),
            Insn(0x07, 2, 0, 0, _GROUP),
            Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),
            Jump(0x15, label, 0, imm=0),
            Insn(0xB7, 1, 0, 0, -1),
            Insn(0xDB, 0, 1, 0, ATOMIC_ADD),
            label,
        ]
    return cb.assemble([*items, Insn(0xB7, 0, 0, 0, 1), Insn(0x95)])


def connect_program(owners_fd: int, pace_fd: int, refused_fd: int, conns_fd: int, conn_stamp_fd: int,
                    limited_fd: int, *, per_s: int, burst: int, conn_cap: int) -> list[Insn]:
    """connect (r1 = struct bpf_sock_addr *), for a tenant's TCP socket:
    - to a limited port (the tenant PostgreSQL server's): the group's open connections there are counted (the socket
      is stamped; its release counts it down) and refused past `conn_cap`;
    - from a port it holds before it connects: paced per group (GCRA on the group's theoretical arrival time, ns)."""
    interval = 1_000_000_000 // max(1, per_s)
    tolerance = interval * max(0, burst - 1)
    return cb.assemble([
        Insn(0xBF, 6, 1),
        Insn(0x61, 2, 6, 32),  # ctx->type
        Jump(0x55, "allow", 2, imm=SOCK_STREAM),
        *_owner(owners_fd),
        Insn(0x61, 2, 6, 24),  # ctx->user_port
        Insn(0x63, 10, 2, _PORT),
        *cb.ld_map_fd(1, limited_fd),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, _PORT),
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),
        Jump(0x15, "pace", 0, imm=0),  # not a limited port
        *cb.ld_map_fd(1, conn_stamp_fd),
        Insn(0x79, 2, 6, 64),  # ctx->sk
        Insn(0xB7, 3, 0, 0, 0),
        Insn(0xB7, 4, 0, 0, cb.SK_STORAGE_GET_F_CREATE),
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_STORAGE_GET),
        Jump(0x15, "full", 0, imm=0),
        Insn(0xBF, 9, 0),  # r9 = the socket's stamp
        Insn(0x61, 1, 9, 0),
        Jump(0x55, "pace", 1, imm=0),  # counted already (a second connect() of the same socket)
        *_counter(conns_fd, "full"),
        Insn(0xB7, 1, 0, 0, 1),
        Insn(0xDB, 0, 1, 0, ATOMIC_FETCH_ADD),  # r1 = open connections, += 1
        Jump(0x35, "over", 1, imm=conn_cap),
        Insn(0x63, 9, 7, 0),  # stamp = group
        "pace",
        Insn(0x79, 2, 6, 64),  # ctx->sk
        Insn(0x61, 3, 2, 44),  # sk->src_port
        Jump(0x15, "allow", 3, imm=0),  # no port yet: connect() picks one it shares
        Insn(0x85, 0, 0, 0, FUNC_KTIME_GET_NS),
        Insn(0xBF, 8, 0),  # r8 = now
        *_counter(pace_fd),
        Insn(0x79, 1, 0, 0),  # r1 = tat
        Jump(0x3D, "late", 1, 8),  # tat >= now
        Insn(0xBF, 1, 8),  # tat = now
        "late",
        Insn(0xBF, 2, 1),
        Insn(0x1F, 2, 8),  # r2 = tat - now
        *_ld64(3, tolerance),
        Jump(0x2D, "deny", 2, 3),
        *_ld64(3, interval),
        Insn(0x0F, 1, 3),
        Insn(0x7B, 0, 1, 0),  # tat += interval
        Jump(0x05, "allow"),
        "over",
        Insn(0xB7, 1, 0, 0, -1),
        Insn(0xDB, 0, 1, 0, ATOMIC_ADD),  # not this one
        *_deny(refused_fd, REFUSED_DATABASE, "full"),
        *_deny(refused_fd, REFUSED_CONNECT),
        *_ALLOW,
    ])


def port_range(path: os.PathLike[str] | str = PORT_RANGE) -> int:
    try:
        low, high = (int(x) for x in open(path).read().split())
        return max(0, high - low + 1)
    except (OSError, ValueError):
        return 28232


def cap() -> int:
    """INKMCP_TENANT_SOCKETS (open INET sockets per account), or the smaller of 4096 and an eighth of the range."""
    raw = os.environ.get("INKMCP_TENANT_SOCKETS", "").strip()
    if raw:
        with contextlib.suppress(ValueError):
            return max(0, int(raw))
    return min(DEFAULT_CAP, port_range() // 8)


def database_cap() -> int:
    """INKMCP_TENANT_PG_CONNECTIONS: open connections one account may have to the tenant PostgreSQL server, logged in
    or not (default 40: the 25 its five free-tier databases may use, and room for a pool's reconnects)."""
    with contextlib.suppress(ValueError):
        return max(1, int(os.environ.get("INKMCP_TENANT_PG_CONNECTIONS", "").strip()))
    return DEFAULT_DATABASE_CONNECTIONS


def available() -> str | None:
    if cap() == 0:
        return "INKMCP_TENANT_SOCKETS=0"
    return cb.available()


class SocketGuard:
    """The process's handle on its socket hooks: which group each project user counts against."""

    def __init__(self, maps: dict[str, cb.HashMap], links: list[int], program_ids: tuple[int, ...], cookie: int,
                 limit: int, conn_cap: int = DEFAULT_DATABASE_CONNECTIONS) -> None:
        self._maps = maps
        self._links = links
        self.program_ids = program_ids
        self._cookie = cookie
        self.cap = limit
        self.database_cap = conn_cap
        self._limited: set[int] = set()
        self._lock = threading.Lock()
        self._groups: dict[str, int] = {}
        self._owners: dict[int, int] = {}

    @classmethod
    def open(cls, *, limit: int | None = None, per_s: int = BOUND_CONNECTS_PER_S,
             burst: int = BOUND_CONNECT_BURST, conn_cap: int | None = None) -> SocketGuard:
        root = cb.cgroup2_root()
        cookie = cb.netns_cookie()
        if root is None or cookie is None:
            raise cb.BpfError(95, "cgroup BPF socket hooks (no cgroup2 hierarchy or no SO_NETNS_COOKIE)")
        limit = cap() if limit is None else limit
        conn_cap = database_cap() if conn_cap is None else conn_cap
        maps: dict[str, cb.HashMap] = {}
        links: list[int] = []
        try:
            maps["owners"] = cb.HashMap.create(OWNERS_NAME, _KEY.size, 4, MAX_OWNERS)
            maps["counts"] = cb.HashMap.create(COUNTS_NAME, 4, 8, MAX_GROUPS)
            maps["pace"] = cb.HashMap.create(PACE_NAME, 4, 8, MAX_GROUPS)
            maps["refused"] = cb.HashMap.create(REFUSED_NAME, _KEY.size, 4, MAX_REFUSED)
            maps["stamp"] = cb.SkStorage.create_storage(STAMP_NAME)
            maps["conns"] = cb.HashMap.create(CONNS_NAME, 4, 8, MAX_GROUPS)
            maps["conn_stamp"] = cb.SkStorage.create_storage(CONN_STAMP_NAME)
            maps["limited"] = cb.HashMap.create(LIMITED_NAME, 4, 4, MAX_LIMITED)
            owners, counts, pace, refused, stamp, conns, conn_stamp, limited = (
                maps[k].fd for k in ("owners", "counts", "pace", "refused", "stamp", "conns", "conn_stamp",
                                     "limited"))
            connect = connect_program(owners, pace, refused, conns, conn_stamp, limited, per_s=per_s, burst=burst,
                                      conn_cap=conn_cap)
            programs = [
                (release_program(counts, stamp, conns, conn_stamp), cb.PROG_TYPE_CGROUP_SOCK,
                 ATTACH_INET_SOCK_RELEASE, "rel"),
                (create_program(owners, counts, stamp, refused, limit), cb.PROG_TYPE_CGROUP_SOCK,
                 ATTACH_INET_SOCK_CREATE, "new"),
                (connect, cb.PROG_TYPE_CGROUP_SOCK_ADDR, cb.ATTACH_INET4_CONNECT, "c4"),
                (connect, cb.PROG_TYPE_CGROUP_SOCK_ADDR, cb.ATTACH_INET6_CONNECT, "c6"),
            ]  # the release hook first: no socket is counted up that its close() would not count down
            ids: list[int] = []
            for insns, prog_type, attach_type, suffix in programs:
                fd = cb.load_program(insns, prog_type=prog_type, attach_type=attach_type,
                                     name=f"{PROG_PREFIX}{suffix}")
                try:
                    links.append(cb.link(root, fd, attach_type))
                    ids.append(cb.program_info(fd).id)
                finally:
                    os.close(fd)
        except OSError:
            for fd in links:
                os.close(fd)
            for m in maps.values():
                m.close()
            raise
        return cls(maps, links, tuple(ids), cookie, limit, conn_cap)

    def assign(self, uid: int, account: str | None) -> None:
        """From now on the INET sockets `uid` opens count against `account`'s share (its own, without one)."""
        if uid == 0:
            return
        with self._lock:
            if account is None:
                group = UID_GROUP | uid
            else:
                group = self._groups.setdefault(account, len(self._groups) + 1)
            if self._owners.get(uid) == group:
                return
            self._maps["owners"].put(_key(self._cookie, uid, 0), struct.pack("<I", group))
            self._owners[uid] = group

    def forget(self, uid: int) -> None:
        """The project user is deleted (its uid may be given to another user): its sockets are no longer counted."""
        with self._lock:
            self._owners.pop(uid, None)
            for name in ("owners", "refused"):
                with contextlib.suppress(OSError):
                    self._maps[name].delete(_key(self._cookie, uid, 0))

    def limit_ports(self, ports: set[int]) -> None:
        """Each account's open connections to these ports (the tenant PostgreSQL server's) count against
        `database_cap`: its unfinished logins hold the server's slots as well as its sessions do. Replaces the set."""
        with self._lock:
            for port in ports - self._limited:
                self._maps["limited"].put(struct.pack("<I", socket.htons(port)), struct.pack("<I", 1))
            for port in self._limited - ports:
                with contextlib.suppress(OSError):
                    self._maps["limited"].delete(struct.pack("<I", socket.htons(port)))
            self._limited = set(ports)

    def connections(self, uid: int) -> int:
        """The open connections of `uid`'s group to the limited ports (for tests)."""
        group = self._owners.get(uid)
        value = self._maps["conns"].get(struct.pack("<I", group)) if group is not None else None
        return struct.unpack("<q", value)[0] if value else 0

    def count(self, uid: int) -> int:
        """The open INET sockets of `uid`'s group (for tests and `inkmcp doctor`)."""
        group = self._owners.get(uid)
        value = self._maps["counts"].get(struct.pack("<I", group)) if group is not None else None
        return struct.unpack("<q", value)[0] if value else 0

    def take_refused(self, uid: int) -> int | None:
        """REFUSED_SOCKET or REFUSED_CONNECT if a socket() or a bound connect() of `uid` was refused since the last
        call, else None."""
        key = _key(self._cookie, uid, 0)
        refused = self._maps["refused"]
        value = refused.get(key)
        if value is None:
            return None
        refused.delete(key)
        return struct.unpack("<I", value)[0]

    def close(self) -> None:
        for fd in self._links:
            os.close(fd)
        self._links = []
        for m in self._maps.values():
            m.close()


_warned = False


def open_guard() -> SocketGuard | None:
    """A new guard (detached by `close` or the process's exit); None where it cannot run, with why logged once."""
    global _warned
    reason = available()
    if reason is None:
        try:
            guard = SocketGuard.open()
            log.info("socket guard on: an account's processes hold at most %d open INET sockets", guard.cap)
            return guard
        except OSError as exc:
            reason = str(exc)
    if not _warned:
        _warned = True
        log.warning("socket guard OFF (%s): one tenant can hold every ephemeral port of this machine, and every "
                    "outgoing connection (the proxy's to every app) fails", reason)
    return None
