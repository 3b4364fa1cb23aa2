"""A tenant's process connects on this machine only to its own listeners and what InkMCP gives it (loopback, 12-02).

Why: tenants share the host's network namespace, so a process of one project could connect to another project's app
port directly (127.0.0.1:<port>, [::1]:<port>, the host's own address when the app listens on all addresses; every
listener and its owner's uid are in /proc/net/tcp), bypassing the front proxy: with X-Forwarded-For, X-Real-IP and
X-Forwarded-Host of its own choosing (apps that trust their one proxy hop for IP allow-lists, rate limits, "internal
only" paths or audit logs), to routes the proxy does not route, and to services that are never routed at all (a
`backend` service, a worker's port). It also reached every other listener on loopback: InkMCP's MCP port and
/metrics, the proxy's slow path (InkMCP's own Python proxy behind nginx, which passes forwarded headers through and
wakes any service by Host), other projects' Redis instances, and the operator's own services.

How: three cgroup BPF hooks linked to the cgroup2 root (so they see every process, in whatever v1 cgroup), keyed
like the bind guard (`bindguard.py`, whose map marks the project users of this InkMCP and holds their ports):
- post_bind (BPF_CGROUP_INET4/6_POST_BIND): a marked user's bound TCP socket is stamped with its uid, in socket-local
  storage (the stamp lives and dies with the socket: nothing to clean up, nothing stale; a port-0 listener is
  stamped with the port the kernel gave it; a duplicate InkMCP holds (portguard) is the same socket);
- connect (BPF_CGROUP_INET4/6_CONNECT): for a marked user's TCP connect(), the kernel's own listener lookup for the
  destination (`bpf_sk_lookup_tcp`, as an arriving SYN would be matched) finds what would answer on this machine:
  * the destination is neither loopback nor one of this machine's own addresses (`refresh_addresses`), or nothing
    listens there: not this hook's business (the egress table's, egress.py), and no lookup is made for a remote
    address (a listener on all addresses here would match any address with its port: git over ssh while sshd runs);
  * a listener stamped by a project user: allowed only if it is the caller's own uid (its project's processes: a
    web process and its worker on a port-0 socket, its services' ports), else refused;
  * any other listener (root, nginx, PostgreSQL, Redis, the operator's services, another InkMCP's tenants):
    allowed on a port the caller may bind (its runs' ports), a port given to it (its project's Redis instance),
    or a port open to every tenant (the proxy's ports, the tenant PostgreSQL server, DNS, the GitHub fetch proxy,
    the operator's loopback entries of INKMCP_TENANT_EGRESS_ALLOW); refused on InkMCP's own ports (`close_ports`:
    the MCP port, the proxy's slow path, every Redis instance); any other: allowed in the default mode
    (INKMCP_LOOPBACK_GUARD=on: the operator's own loopback services stay as reachable as before), refused with
    INKMCP_LOOPBACK_GUARD=strict.
  A refusal is connect() -> EPERM, before any packet: the victim's process sees nothing. The port is noted so the
  provider can write one line to the project's log (`take_refused`).
Destinations that mean loopback are normalised as connect() would: 0.0.0.0 -> 127.0.0.1, :: -> ::1, and
IPv4-mapped IPv6 addresses are looked up as IPv4.

Why this and not the alternatives (measured, benchmarks/loopguard_cost.py):
- a per-project (uid . port) set in the egress table's loopback rule: nftables sees the caller's uid but not the
  listener's, so a port-0 listener (a web process talking to its worker, a test server in a build) would be either
  refused to its own project or open to every project; and the set would change with every deploy of every project;
- a network namespace per tenant: every app, build step, database and Redis connection and the proxy's upstreams
  would go through veths and addresses of their own: a rebuild of the provider's networking, not a guard.
Cost (`flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/loopguard_cost.py --rounds 5 --per-round 3000`,
load 7-11 on 2 cores, three runs, kernel-counted run time per call): a tenant's connect() to a remote address 0.43
us, on this machine 0.6-1.4 us (nothing listening / a given root listener / its own listener / refused), root's
0.2 us, the stamp at a tenant's bind() 1.6-1.7 us (it allocates the socket's storage); against a loopback
connect+accept+close of 180-290 us the same-run wall-clock A/B is within noise (0.90-1.02x with the hooks,
0.92-1.24x for the nftables set). Loading and linking the four programs: 8-37 ms per start.
Stream sockets (TCP, MPTCP) and, since redteam4, datagram sockets (UDP): a UDP socket a project user binds is stamped
the same way, and a datagram it sends to an address (the UDP sendmsg hooks) or a connect() of a UDP socket is judged
by the UDP socket that would receive it (`bpf_sk_lookup_udp`): another tenant's UDP listener (a metrics or syslog
collector, a QUIC or game server, anything that trusts 127.0.0.1) was open to every tenant
(tests/local/test_loopguard.py::test_another_tenants_datagram_listeners_are_refused). Binding a UDP port is not
guarded (the bind guard judges stream sockets only): a tenant may hold a UDP port number, it reaches only its own.

Lifetime: as the bind guard's (each LocalComputeProvider holds its own programs and maps through BPF links; they go
with it). It needs the bind guard (its marks and ports): INKMCP_BIND_GUARD=0 turns both off, INKMCP_LOOPBACK_GUARD=0
this one only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import threading
from collections.abc import Iterable

from inkmcp.providers.compute.local import cgroup_bpf as cb
from inkmcp.providers.compute.local.bindguard import _KEY, SOCK_STREAM, BindGuard, _key, take_refused_port
from inkmcp.providers.compute.local.cgroup_bpf import Insn, Jump

log = logging.getLogger(__name__)

SOCK_DGRAM = 2  # --- redteam4: UDP

PROG_STAMP = "inkmcp_own"
PROG_CONNECT = "inkmcp_conn"
GRANTS_NAME = "inkmcp_conn"
STAMP_NAME = "inkmcp_owner"
REFUSED_NAME = "inkmcp_connno"
MAX_GRANTS = 16384
MAX_REFUSED = 8192
LOCAL_NAME = "inkmcp_local"
MAX_ADDRESSES = 4096
EVERYONE = 0  # the uid in a grant's key that means "every tenant" (root is never a marked tenant)
CLOSED = 0xFFFFFFFF  # ... and "no tenant": InkMCP's own ports, closed even where other listeners are open
_ONE = struct.pack("<I", 1)
_LOOPBACK4 = 0x0100007F  # 127.0.0.1 as a 32-bit load of its network-order bytes (little-endian hosts)
_LOOPBACK6_LAST = 0x01000000  # the last word of ::1, likewise
_MAPPED = 0xFFFF0000  # the third word of ::ffff:a.b.c.d

# Stack layout of the programs (offsets from r10)
_K = -16  # the bind guard's key: u64 netns cookie, u32 uid, u32 port (as the bind guard's own program)
_VALUE = -20  # a refused port
_TUPLE = -64  # struct bpf_sock_tuple: 12 bytes (IPv4) or 36 (IPv6)
_LOOP = -72  # u64: the destination is loopback
_OWNED = -76  # u32: the listener has a stamp
_OWNER = -80  # u32: its uid


def _prologue(bind_fd: int, *, ctx_type_off: int) -> list[Insn | Jump | str]:
    """r6 = ctx; neither a stream nor a datagram socket, or not a tenant of this InkMCP here -> allow; r8 = uid, the
    key at _K."""
    return [
        Insn(0xBF, 6, 1),  # r6 = ctx
        Insn(0x61, 2, 6, ctx_type_off),  # r2 = ctx->type
        Jump(0x15, "stream_or_dgram", 2, imm=SOCK_STREAM),
        Jump(0x55, "allow", 2, imm=SOCK_DGRAM),  # --- redteam4: UDP too
        "stream_or_dgram",
        Insn(0x85, 0, 0, 0, cb.FUNC_GET_CURRENT_UID_GID),
        Insn(0xBC, 8, 0),  # r8 = (u32) uid
        Insn(0x63, 10, 8, _K + 8),  # key.uid
        Insn(0xBF, 1, 6),
        Insn(0x85, 0, 0, 0, cb.FUNC_GET_NETNS_COOKIE),
        Insn(0x7B, 10, 0, _K),  # key.netns
        Insn(0x62, 10, 0, _K + 12, 0),  # key.port = 0: the tenant marker
        *_lookup(bind_fd),
        Jump(0x15, "allow", 0, imm=0),  # not marked: none of this InkMCP's tenants
    ]


def _lookup(map_fd: int) -> list[Insn]:
    return [*cb.ld_map_fd(1, map_fd), Insn(0xBF, 2, 10), Insn(0x07, 2, 0, 0, _K),
            Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM)]


def stamp_program(bind_fd: int, stamp_fd: int) -> list[Insn]:
    """post_bind (r1 = struct bpf_sock *): a marked user's bound stream or datagram socket gets its uid in `stamp`."""
    return cb.assemble([
        *_prologue(bind_fd, ctx_type_off=8),
        *cb.ld_map_fd(1, stamp_fd),
        Insn(0xBF, 2, 6),  # r2 = the socket
        Insn(0xB7, 3, 0, 0, 0),  # no initial value
        Insn(0xB7, 4, 0, 0, cb.SK_STORAGE_GET_F_CREATE),
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_STORAGE_GET),
        Jump(0x15, "allow", 0, imm=0),
        Insn(0x63, 0, 8, 0),  # *stamp = uid
        "allow",
        Insn(0xB7, 0, 0, 0, 1),  # post_bind never refuses
        Insn(0x95),
    ])


def _local(map_fd: int, key_off: int, p: str) -> list[Insn | Jump | str]:
    """Not loopback: the destination is this machine if it is one of its addresses (`local`, kept by the provider)."""
    return [
        Insn(0x79, 1, 10, _LOOP),
        Jump(0x55, f"{p}local", 1, imm=0),
        *cb.ld_map_fd(1, map_fd),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, key_off),
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),
        Jump(0x15, f"{p}local", 0, imm=0),
        Insn(0x7A, 10, 0, _LOOP, 1),
        f"{p}local",
        Insn(0x79, 1, 10, _LOOP),
        Jump(0x15, "allow", 1, imm=0),  # not this machine: the egress table's business, no lookup
    ]


def _v4_lookup(addr_reg: int, p: str, local4_fd: int) -> list[Insn | Jump | str]:
    """The IPv4 destination in `addr_reg`: loopback flag, 0.0.0.0 -> 127.0.0.1, the 12-byte tuple, the lookup."""
    return [
        Insn(0x7A, 10, 0, _LOOP, 0),
        Insn(0xBC, 2, addr_reg),  # r2 = (u32) address
        Jump(0x56, f"{p}any", 2, imm=0),  # jne32: not 0.0.0.0
        Insn(0xB4, 2, 0, 0, _LOOPBACK4),  # connect(0.0.0.0) reaches 127.0.0.1
        Insn(0x7A, 10, 0, _LOOP, 1),
        Jump(0x05, f"{p}tuple"),
        f"{p}any",
        Insn(0xBC, 3, 2),
        Insn(0x54, 3, 0, 0, 0xFF),  # the first octet
        Jump(0x56, f"{p}tuple", 3, imm=127),
        Insn(0x7A, 10, 0, _LOOP, 1),
        f"{p}tuple",
        Insn(0x7A, 10, 0, _TUPLE, 0),  # saddr, daddr
        Insn(0x62, 10, 0, _TUPLE + 8, 0),  # sport, dport
        Insn(0x63, 10, 2, _TUPLE + 4),  # daddr
        Insn(0x6B, 10, 7, _TUPLE + 10),  # dport (network order, as user_port holds it)
        *_local(local4_fd, _TUPLE + 4, p),
        Insn(0xB7, 3, 0, 0, 12),
        Jump(0x05, "lookup"),
    ]


def connect_program(bind_fd: int, grants_fd: int, stamp_fd: int, refused_fd: int, local4_fd: int, local6_fd: int,
                    *, v6: bool) -> list[Insn]:
    """connect, or a UDP sendmsg to an address (r1 = struct bpf_sock_addr *): 1 allows, 0 refuses with EPERM
    (module docstring)."""
    items: list[Insn | Jump | str] = [
        *_prologue(bind_fd, ctx_type_off=32),
        Insn(0x61, 7, 6, 24),  # r7 = user_port
    ]
    if not v6:
        items += [Insn(0x61, 5, 6, 4), *_v4_lookup(5, "a", local4_fd)]  # user_ip4
    else:
        items += [
            Insn(0x61, 2, 6, 8), Insn(0x61, 3, 6, 12), Insn(0x61, 4, 6, 16), Insn(0x61, 5, 6, 20),  # user_ip6
            Insn(0xBF, 1, 2),
            Insn(0x4F, 1, 3),  # r1 = word0 | word1
            Jump(0x55, "six", 1, imm=0),
            Jump(0x16, "mapped", 4, imm=_MAPPED - 2**32),  # jeq32: ::ffff:a.b.c.d goes out as IPv4
            "six",
            Insn(0x7A, 10, 0, _LOOP, 0),
            Insn(0x4F, 1, 4),
            Jump(0x55, "tuple6", 1, imm=0),
            Jump(0x56, "not_any6", 5, imm=0),
            Insn(0xB4, 5, 0, 0, _LOOPBACK6_LAST),  # connect(::) reaches ::1
            "not_any6",
            Jump(0x56, "tuple6", 5, imm=_LOOPBACK6_LAST),
            Insn(0x7A, 10, 0, _LOOP, 1),
            "tuple6",
            Insn(0x7A, 10, 0, _TUPLE, 0), Insn(0x7A, 10, 0, _TUPLE + 8, 0),  # saddr
            Insn(0x7A, 10, 0, _TUPLE + 32, 0),  # sport, dport (and 4 bytes beyond the tuple)
            Insn(0x63, 10, 2, _TUPLE + 16), Insn(0x63, 10, 3, _TUPLE + 20),
            Insn(0x63, 10, 4, _TUPLE + 24), Insn(0x63, 10, 5, _TUPLE + 28),  # daddr
            Insn(0x6B, 10, 7, _TUPLE + 34),  # dport
            *_local(local6_fd, _TUPLE + 16, "six"),
            Insn(0xB7, 3, 0, 0, 36),
            Jump(0x05, "lookup"),
            "mapped",
            *_v4_lookup(5, "m", local4_fd),
        ]
    items += [
        "lookup",  # r3 = the tuple's size
        Insn(0xBF, 1, 6),
        Insn(0xBF, 2, 10),
        Insn(0x07, 2, 0, 0, _TUPLE),
        Insn(0xB7, 4, 0, 0, cb.CURRENT_NETNS),
        Insn(0xB7, 5, 0, 0, 0),
        Insn(0x61, 0, 6, 32),  # r0 = ctx->type  --- redteam4: a datagram goes to the UDP socket that would get it
        Jump(0x15, "udp", 0, imm=SOCK_DGRAM),
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_LOOKUP_TCP),
        Jump(0x05, "found"),
        "udp",
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_LOOKUP_UDP),
        "found",
        Jump(0x15, "allow", 0, imm=0),  # nothing listens there on this machine
        Insn(0xBF, 9, 0),  # r9 = the listener (released on every path below)
        Insn(0x62, 10, 0, _OWNED, 0),
        *cb.ld_map_fd(1, stamp_fd),
        Insn(0xBF, 2, 9),
        Insn(0xB7, 3, 0, 0, 0),
        Insn(0xB7, 4, 0, 0, 0),
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_STORAGE_GET),
        Jump(0x15, "release", 0, imm=0),
        Insn(0x61, 2, 0, 0),
        Insn(0x63, 10, 2, _OWNER),
        Insn(0x62, 10, 0, _OWNED, 1),
        "release",
        Insn(0xBF, 1, 9),
        Insn(0x85, 0, 0, 0, cb.FUNC_SK_RELEASE),
        Insn(0x61, 2, 10, _OWNED),
        Jump(0x15, "unowned", 2, imm=0),
        Insn(0x61, 2, 10, _OWNER),
        Jump(0x1D, "allow", 2, 8),  # its own project's listener
        Jump(0x05, "deny"),
        "unowned",  # root's, a system user's, the operator's: the ports it was given
        Insn(0x63, 10, 7, _K + 12),  # key.port = the destination port
        *_lookup(bind_fd),
        Jump(0x55, "allow", 0, imm=0),  # a port it may bind: its own runs'
        *_lookup(grants_fd),
        Jump(0x55, "allow", 0, imm=0),  # granted to it: its Redis
        Insn(0x62, 10, 0, _K + 8, EVERYONE),
        *_lookup(grants_fd),
        Jump(0x55, "allow", 0, imm=0),  # open to every tenant: the proxy, the tenant PostgreSQL server, DNS
        Insn(0x62, 10, 0, _K + 8, CLOSED - 2**32),
        *_lookup(grants_fd),
        Jump(0x55, "restore", 0, imm=0),  # InkMCP's own: the MCP port, the slow path, other projects' Redis
        Insn(0x62, 10, 0, _K + 8, EVERYONE),
        Insn(0x62, 10, 0, _K + 12, 0),
        *_lookup(grants_fd),
        Jump(0x55, "allow", 0, imm=0),  # the default mode: other listeners of no tenant are open
        "restore",
        Insn(0x63, 10, 8, _K + 8),
        "deny",
        Insn(0x62, 10, 0, _K + 12, 0),
        Insn(0x63, 10, 7, _VALUE),
        *cb.map_update(refused_fd, _K, _VALUE),
        Insn(0xB7, 0, 0, 0, 0),
        Insn(0x95),
        "allow",
        Insn(0xB7, 0, 0, 0, 1),
        Insn(0x95),
    ]
    return cb.assemble(items)


def mode() -> str:
    """INKMCP_LOOPBACK_GUARD: "on" (the default: other tenants' listeners and InkMCP's own ports refused), "strict"
    (every listener of no tenant refused too, but those given), "off"."""
    value = os.environ.get("INKMCP_LOOPBACK_GUARD", "on").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    return "strict" if value == "strict" else "on"


def available() -> str | None:
    """None when the guard can run here, else why not. INKMCP_LOOPBACK_GUARD=0 turns it off."""
    if mode() == "off":
        return "INKMCP_LOOPBACK_GUARD=0"
    return None


class LoopbackGuard:
    """The process's handle on its connect hooks: which listeners on this machine each project user may reach."""

    def __init__(self, binds: BindGuard, grants: cb.HashMap, stamp: cb.SkStorage, refused: cb.HashMap,
                 local: tuple[cb.HashMap, cb.HashMap], links: list[int], program_ids: tuple[int, ...]) -> None:
        self._binds = binds
        self._cookie = binds._cookie
        self._grants = grants
        self._stamp = stamp
        self._refused = refused
        self._local4, self._local6 = local
        self._addresses: set[bytes] = set()
        self._links = links
        self.program_ids = program_ids  # post_bind 4/6, connect 4/6, UDP sendmsg 4/6 (`inkmcp doctor`, benchmarks)
        self._lock = threading.Lock()
        self._open: set[int] = set()
        self._closed: set[int] = set()
        self._given: dict[int, set[int]] = {}  # uid -> ports granted to it (its Redis)

    @classmethod
    def open(cls, binds: BindGuard) -> LoopbackGuard:
        """Load the hooks with maps of their own and link them to the cgroup2 root; BpfError if the kernel refuses."""
        root = cb.cgroup2_root()
        if root is None:
            raise cb.BpfError(95, "cgroup BPF connect hook (no cgroup2 hierarchy)")
        made: list[cb.HashMap] = []
        links: list[int] = []
        try:
            grants = cb.HashMap.create(GRANTS_NAME, _KEY.size, 4, MAX_GRANTS)
            made.append(grants)
            refused = cb.HashMap.create(REFUSED_NAME, _KEY.size, 4, MAX_REFUSED)
            made.append(refused)
            stamp = cb.SkStorage.create_storage(STAMP_NAME)
            made.append(stamp)
            local4 = cb.HashMap.create(LOCAL_NAME + "4", 4, 4, MAX_ADDRESSES)
            made.append(local4)
            local6 = cb.HashMap.create(LOCAL_NAME + "6", 16, 4, MAX_ADDRESSES)
            made.append(local6)
            bind_fd = binds._map.fd
            maps = (bind_fd, grants.fd, stamp.fd, refused.fd, local4.fd, local6.fd)
            programs = [
                (stamp_program(bind_fd, stamp.fd), cb.PROG_TYPE_CGROUP_SOCK, cb.ATTACH_INET4_POST_BIND, "4"),
                (stamp_program(bind_fd, stamp.fd), cb.PROG_TYPE_CGROUP_SOCK, cb.ATTACH_INET6_POST_BIND, "6"),
                (connect_program(*maps, v6=False), cb.PROG_TYPE_CGROUP_SOCK_ADDR, cb.ATTACH_INET4_CONNECT, "4"),
                (connect_program(*maps, v6=True), cb.PROG_TYPE_CGROUP_SOCK_ADDR, cb.ATTACH_INET6_CONNECT, "6"),
                # --- redteam4: a datagram sent to an address (an unconnected UDP socket's sendto/sendmsg)
                (connect_program(*maps, v6=False), cb.PROG_TYPE_CGROUP_SOCK_ADDR, cb.ATTACH_UDP4_SENDMSG, "u4"),
                (connect_program(*maps, v6=True), cb.PROG_TYPE_CGROUP_SOCK_ADDR, cb.ATTACH_UDP6_SENDMSG, "u6"),
            ]  # the stamps first: a listener bound while the connect hooks go in is already known
            ids: list[int] = []
            for insns, prog_type, attach_type, suffix in programs:
                prefix = PROG_STAMP if prog_type == cb.PROG_TYPE_CGROUP_SOCK else PROG_CONNECT
                fd = cb.load_program(insns, prog_type=prog_type, attach_type=attach_type, name=f"{prefix}{suffix}")
                try:
                    links.append(cb.link(root, fd, attach_type))
                    ids.append(cb.program_info(fd).id)
                finally:
                    os.close(fd)
        except OSError:
            for fd in links:
                os.close(fd)
            for m in made:
                m.close()
            raise
        guard = cls(binds, grants, stamp, refused, (local4, local6), links, tuple(ids))
        guard.refresh_addresses()
        return guard

    def refresh_addresses(self, addresses: Iterable[str] | None = None) -> None:
        """This machine's own addresses (every interface's, as psutil lists them), so a connect() to one of them is
        judged as one to loopback is: an app listening on all addresses is reached on each. The provider calls this
        every few seconds (an address added meanwhile is still refused to other tenants' private ranges by the egress
        table, but for 80, 443 and 8080)."""
        if addresses is None:
            import psutil

            addresses = [a.address for nic in psutil.net_if_addrs().values() for a in nic
                         if a.family in (socket.AF_INET, socket.AF_INET6)]
        want: set[bytes] = set()
        for text in addresses:
            with contextlib.suppress(OSError, ValueError):
                text = text.split("%", 1)[0]
                want.add(socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text))
        with self._lock:
            for raw in want - self._addresses:
                (self._local6 if len(raw) == 16 else self._local4).put(raw, _ONE)
            for raw in self._addresses - want:
                with contextlib.suppress(OSError):
                    (self._local6 if len(raw) == 16 else self._local4).delete(raw)
            self._addresses = want

    def open_ports(self, ports: Iterable[int]) -> None:
        """Every tenant may connect to these ports when a non-tenant listens there (the proxy, PostgreSQL, DNS)."""
        with self._lock:
            for port in ports:
                if port and port not in self._open:
                    self._grants.put(_key(self._cookie, EVERYONE, port), _ONE)
                    self._open.add(port)

    def open_others(self, on: bool = True) -> None:
        """Whether every other listener of no tenant is open too (the default mode; INKMCP_LOOPBACK_GUARD=strict
        leaves it off): the operator's own services, a local package mirror or git server. Other tenants'
        listeners and the ports `close_ports` named stay refused either way."""
        with self._lock:
            if on:
                self._grants.put(_key(self._cookie, EVERYONE, 0), _ONE)
            else:
                with contextlib.suppress(OSError):
                    self._grants.delete(_key(self._cookie, EVERYONE, 0))

    def close_ports(self, ports: Iterable[int]) -> None:
        """Refused to every tenant even where other listeners are open (InkMCP's MCP port, its slow path, the
        projects' Redis instances: each project's own is given back to it by `give`); the set replaces the last."""
        want = {p for p in ports if p}
        with self._lock:
            for port in want - self._closed:
                self._grants.put(_key(self._cookie, CLOSED, port), _ONE)
            for port in self._closed - want:
                with contextlib.suppress(OSError):
                    self._grants.delete(_key(self._cookie, CLOSED, port))
            self._closed = want

    def close_port(self, port: int) -> None:
        with self._lock:
            if port in self._open:
                self._open.discard(port)
                with contextlib.suppress(OSError):
                    self._grants.delete(_key(self._cookie, EVERYONE, port))

    def give(self, uid: int, ports: Iterable[int]) -> None:
        """`uid` may connect to exactly these ports of non-tenant listeners beside its own (its project's Redis):
        the ports given before and not named now are taken back."""
        if uid == 0:
            return
        want = {p for p in ports if p}
        with self._lock:
            have = self._given.get(uid, set())
            for port in want - have:
                self._grants.put(_key(self._cookie, uid, port), _ONE)
            for port in have - want:
                with contextlib.suppress(OSError):
                    self._grants.delete(_key(self._cookie, uid, port))
            self._given[uid] = want

    def given(self, uid: int) -> set[int]:
        return {socket.ntohs(port) for cookie, owner, port in map(_KEY.unpack, self._grants.keys())
                if cookie == self._cookie and owner == uid and port}

    def forget(self, uid: int) -> None:
        """The project user is deleted: its grants go (its uid may be given to another user)."""
        self.give(uid, ())
        with self._lock:
            self._given.pop(uid, None)
            with contextlib.suppress(OSError):
                self._refused.delete(_key(self._cookie, uid, 0))

    def take_refused(self, uid: int) -> int | None:
        """The last port a connect() of `uid` was refused since the previous call, if any (then forgotten)."""
        return take_refused_port(self._refused, self._cookie, uid)

    def close(self) -> None:
        """Detach the hooks (the process's exit does the same)."""
        with contextlib.suppress(ValueError):
            _live.remove(self)
        for fd in self._links:
            os.close(fd)
        self._links = []
        for m in (self._grants, self._refused, self._stamp, self._local4, self._local6):
            m.close()


_live: list[LoopbackGuard] = []  # this process's guards (one per provider), for `share_port`
_shared: set[int] = set()


def share_port(port: int) -> None:
    """A port of InkMCP's own that every tenant's processes use (the GitHub fetch proxy their git goes through,
    github/git_proxy.py): open in this process's guards, and in those opened later."""
    _shared.add(port)
    for guard in list(_live):
        guard.open_ports([port])


_warned = False


def open_guard(binds: BindGuard | None) -> LoopbackGuard | None:
    """A new guard beside the provider's bind guard; None where it cannot run, with why logged once per process."""
    global _warned
    reason = "the bind guard is off" if binds is None else available()
    if reason is None and binds is not None:
        try:
            guard = LoopbackGuard.open(binds)
            guard.open_ports(_shared)
            _live.append(guard)
            log.info("loopback guard on: tenant processes connect on this machine only to their own listeners and "
                     "the ports InkMCP gives them")
            return guard
        except OSError as exc:
            reason = str(exc)
    if not _warned:
        _warned = True
        log.warning("loopback guard OFF (%s): a tenant's process can connect to another tenant's app port directly "
                    "(bypassing the proxy's forwarded headers) and to every other listener on this machine", reason)
    return None
