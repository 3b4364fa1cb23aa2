"""A tenant process may bind only its own services' ports (svcports, 2026-12-02; red team redteam2 #3 and #4).

Why: every tenant shares the host's loopback, and any Unix user may bind any free port above 1023. When a
project's Redis instance or the tenant PostgreSQL server died (a crash, an OOM kill, InkMCP's own restart of it),
another tenant's code spinning on `bind(127.0.0.1:<port>)` took the port within milliseconds; the victim's apps,
reconnecting, handed it their passwords (Redis `AUTH` in clear; libpq answers a cleartext-password request), and
the restart then failed on the taken port. The same bind() let one tenant hold every app port (20000-29999), so
no account could deploy, wake or recover.

How: a cgroup BPF hook on bind() (BPF_CGROUP_INET4_BIND and INET6_BIND, linked to the root of the cgroup2
hierarchy, so it sees every process whatever cgroup it is in) looks the caller up in a hash map keyed by (network
namespace cookie, uid, port):
- no entry (netns, uid, 0): not a tenant of this InkMCP in this network namespace -> allowed (root, nginx, redis,
  postgres, InkMCP, other users, other InkMCPs' tenants; a tenant's process in a private network namespace, whose
  ports nobody else shares);
- port 0 (an ephemeral port the kernel picks), or an entry (netns, uid, port) -> allowed;
- anything else -> EPERM ("Operation not permitted").
Only SOCK_STREAM sockets are checked (TCP, MPTCP): what the attacks used, what apps and every InkMCP server
listen on; UDP binds are untouched. Keyed by uid, not by cgroup: on hybrid hosts (this one) the v1 controllers hold
the services' groups and every process sits in the cgroup2 root, so the uid (a project's user: one tenant) is what
tells tenants apart; the services of one project may bind each other's ports (they are one tenant's).

A project's user is marked (`mark`) before any of its code runs; the provider grants each run's $PORT (`grant`)
before the run starts and withdraws it when the run stopped (`revoke`), so after a crash-restart on a new port
(portguard) the new port works and the old one is refused. A fixed `port` is the service's own the same way.
Procfile workers and build steps get no port (they bind port 0 or nothing); a second listener on a fixed number
(a debug or metrics port) is refused with EPERM: such an app binds port 0, or serves it on $PORT.

Lifetime: each InkMCP (each LocalComputeProvider, from start to close) loads its own program and map and holds
them through BPF links, which the kernel detaches at `close` or when the process exits, however it exits. So
nothing stale outlives it on a machine shared with other InkMCPs, other versions, or deleted users whose uids are
handed out again. (The first version kept a legacy attachment across restarts, then one per process: a test's
deleted user's uid, reused by another server's project, could then bind nothing, since every attached program
must allow a bind.) Tenants' processes do not outlive a clean stop (the provider kills their cgroups) and the
next start kills what a crash left, before any tenant process starts again.

Not covered here: listen() or connect() on an unbound socket takes an ephemeral port without bind(): a service port
inside `ip_local_port_range` (the tenant PostgreSQL server's, chosen with bind(0)) is therefore also put into
`ip_local_reserved_ports` (`reserve_port`), which the kernel's ephemeral choice skips. Without root or cgroup BPF
(`available`), nothing changes and the reason is logged once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from inkmcp.providers.compute.local import cgroup_bpf as cb
from inkmcp.providers.compute.local.cgroup_bpf import Insn

log = logging.getLogger(__name__)

PROG_PREFIX = "inkmcp_bind"
MAP_NAME = "inkmcp_bind"
MAX_ENTRIES = 65536
REFUSED_NAME = "inkmcp_bindno"
MAX_REFUSED = 8192  # one entry per tenant uid: the last port it was refused
LOCK_FILE = Path("/run/inkmcp-reserved-ports.lock")
RESERVED_PORTS = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_ATTACH_TYPES = {cb.ATTACH_INET4_BIND: "4", cb.ATTACH_INET6_BIND: "6"}
_KEY = struct.Struct("<QII")  # netns cookie, uid, port (as bpf_sock_addr.user_port reads it: network order)
_ONE = struct.pack("<I", 1)
SOCK_STREAM = 1


def _key(cookie: int, uid: int, port: int) -> bytes:
    return _KEY.pack(cookie, uid, socket.htons(port) if port else 0)


def take_refused_port(refused: cb.HashMap, cookie: int, uid: int) -> int | None:
    """The port the guard's program last refused `uid` in `refused` (its per-user slot, port 0 of the key), read
    and cleared: the bind and loopback guards note a refusal the same way."""
    key = _key(cookie, uid, 0)
    value = refused.get(key)
    if value is None:
        return None
    refused.delete(key)
    return socket.ntohs(struct.unpack("<I", value)[0] & 0xFFFF)


def program(map_fd: int, refused_fd: int) -> list[Insn]:
    """The bind hook (r1 = struct bpf_sock_addr *): 1 allows, 0 refuses with EPERM. A refusal also records the
    port in `refused` under (netns, uid, 0), so the provider can name it (`take_refused`)."""
    insns = [
        Insn(0xBF, 6, 1),  # 0: r6 = ctx
        Insn(0x61, 2, 6, 32),  # 1: r2 = ctx->type
        Insn(0x55, 2, 0, 0, SOCK_STREAM),  # 2: if r2 != SOCK_STREAM goto allow
        Insn(0x61, 7, 6, 24),  # 3: r7 = ctx->user_port
        Insn(0x15, 7, 0, 0, 0),  # 4: if r7 == 0 goto allow (an ephemeral port)
        Insn(0x85, 0, 0, 0, cb.FUNC_GET_CURRENT_UID_GID),  # 5: r0 = gid << 32 | uid
        Insn(0x63, 10, 0, -8),  # 6: key.uid = (u32) r0
        Insn(0xBF, 1, 6),  # 7: r1 = ctx
        Insn(0x85, 0, 0, 0, cb.FUNC_GET_NETNS_COOKIE),  # 8: r0 = netns cookie
        Insn(0x7B, 10, 0, -16),  # 9: key.netns = r0
        Insn(0x62, 10, 0, -4, 0),  # 10: key.port = 0 (the tenant marker)
        *cb.ld_map_fd(1, map_fd),  # 11-12: r1 = map
        Insn(0xBF, 2, 10),  # 13: r2 = fp
        Insn(0x07, 2, 0, 0, -16),  # 14: r2 = &key
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),  # 15: r0 = lookup
        Insn(0x15, 0, 0, 0, 0),  # 16: if r0 == NULL goto allow (not a tenant here)
        Insn(0x63, 10, 7, -4),  # 17: key.port = user_port
        *cb.ld_map_fd(1, map_fd),  # 18-19
        Insn(0xBF, 2, 10),  # 20
        Insn(0x07, 2, 0, 0, -16),  # 21
        Insn(0x85, 0, 0, 0, cb.FUNC_MAP_LOOKUP_ELEM),  # 22
        Insn(0x15, 0, 0, 0, 0),  # 23: if r0 == NULL goto deny
        Insn(0xB7, 0, 0, 0, 1),  # 24: allow: r0 = 1
        Insn(0x95),  # 25: exit
        Insn(0x62, 10, 0, -4, 0),  # 26: deny: key.port = 0
        Insn(0x63, 10, 7, -20),  # 27: value = user_port
        *cb.map_update(refused_fd, -16, -20),  # 28-35: refused[key] = value (BPF_ANY)
        Insn(0xB7, 0, 0, 0, 0),  # 36: r0 = 0
        Insn(0x95),  # 37: exit
    ]
    allow, deny = 24, 26
    for at, target in ((2, allow), (4, allow), (16, allow), (23, deny)):
        i = insns[at]
        insns[at] = Insn(i.code, i.dst, i.src, target - at - 1, i.imm)
    return insns


def available() -> str | None:
    """None when the guard can run here, else why not. INKMCP_BIND_GUARD=0 turns it off (to compare, or as an
    escape hatch: the hook stays attached for other InkMCPs, and this one's users are then not marked)."""
    if os.environ.get("INKMCP_BIND_GUARD", "1").strip().lower() in ("0", "false", "no", "off"):
        return "INKMCP_BIND_GUARD=0"
    return cb.available()


class BindGuard:
    """The process's handle on the shared hook's map: which ports each project user may bind."""

    def __init__(self, table: cb.HashMap, cookie: int) -> None:
        self._map = table
        self._cookie = cookie
        self._lock = threading.Lock()
        self._grants: Counter[tuple[int, int]] = Counter()
        self._marked: set[int] = set()
        self._links: list[int] = []
        self._refused: cb.HashMap | None = None
        self.program_ids: tuple[int, ...] = ()  # the IPv4 and IPv6 hooks (for `inkmcp doctor` and benchmarks)

    @classmethod
    def open(cls) -> BindGuard:
        """Load the hook with a map of its own and link it to the cgroup2 root; BpfError if the kernel refuses."""
        root = cb.cgroup2_root()
        cookie = cb.netns_cookie()
        if root is None or cookie is None:
            raise cb.BpfError(95, "cgroup BPF bind hook (no cgroup2 hierarchy or no SO_NETNS_COOKIE)")
        table = cb.HashMap.create(MAP_NAME, _KEY.size, 4, MAX_ENTRIES)
        try:
            refused = cb.HashMap.create(REFUSED_NAME, _KEY.size, 4, MAX_REFUSED)
        except OSError:
            table.close()
            raise
        links: list[int] = []
        program_ids: list[int] = []
        try:
            for attach_type, suffix in _ATTACH_TYPES.items():
                fd = cb.load_program(program(table.fd, refused.fd), prog_type=cb.PROG_TYPE_CGROUP_SOCK_ADDR,
                                     attach_type=attach_type, name=f"{PROG_PREFIX}{suffix}")
                try:
                    links.append(cb.link(root, fd, attach_type))
                    program_ids.append(cb.program_info(fd).id)
                finally:
                    os.close(fd)  # the link holds the program
        except OSError:
            for fd in links:
                os.close(fd)
            table.close()
            refused.close()
            raise
        guard = cls(table, cookie)
        guard._refused = refused
        guard.program_ids = tuple(program_ids)
        guard._links = links
        return guard

    def mark(self, uid: int) -> None:
        """From now on `uid` binds only the ports granted to it (in this network namespace)."""
        with self._lock:
            if uid in self._marked or uid == 0:
                return
            self._map.put(_key(self._cookie, uid, 0), _ONE)
            self._marked.add(uid)

    def grant(self, uid: int, port: int) -> None:
        """`uid` may bind `port` (until as many `revoke`s)."""
        if uid == 0 or not port:
            return
        self.mark(uid)
        with self._lock:
            self._grants[(uid, port)] += 1
            self._map.put(_key(self._cookie, uid, port), _ONE)

    def revoke(self, uid: int, port: int) -> None:
        with self._lock:
            held = self._grants.get((uid, port), 0)
            if held > 1:
                self._grants[(uid, port)] = held - 1
                return
            self._grants.pop((uid, port), None)
            if held:
                with contextlib.suppress(OSError):
                    self._map.delete(_key(self._cookie, uid, port))

    def forget(self, uid: int) -> None:
        """The project user is deleted: every entry of `uid` goes (its uid may be given to another user)."""
        with self._lock:
            for key in list(self._map.keys()):
                cookie, owner, _ = _KEY.unpack(key)
                if cookie == self._cookie and owner == uid:
                    self._map.delete(key)
            self._marked.discard(uid)
            for grant in [g for g in self._grants if g[0] == uid]:
                del self._grants[grant]

    def ports(self, uid: int) -> set[int]:
        """The ports `uid` may bind now (for tests and `inkmcp doctor`)."""
        return {socket.ntohs(port) for cookie, owner, port in map(_KEY.unpack, self._map.keys())
                if cookie == self._cookie and owner == uid and port}

    def marked(self, uid: int) -> bool:
        return self._map.get(_key(self._cookie, uid, 0)) is not None

    def take_refused(self, uid: int) -> int | None:
        """The last port a bind() of `uid` was refused since the previous call, if any (then forgotten)."""
        return take_refused_port(self._refused, self._cookie, uid) if self._refused is not None else None

    def close(self) -> None:
        """Detach the hook (the process's exit does the same)."""
        for fd in self._links:
            os.close(fd)
        self._links = []
        self._map.close()
        if self._refused is not None:
            self._refused.close()


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_warned = False


def open_guard() -> BindGuard | None:
    """A new guard (its own program and map, detached by `close` or the process's exit); None where it cannot run,
    with why logged once per process. Each LocalComputeProvider opens one at start and closes it at close."""
    global _warned
    reason = available()
    if reason is None:
        try:
            guard = BindGuard.open()
            log.info("bind guard on: tenant processes bind only their own services' ports")
            return guard
        except OSError as exc:
            reason = str(exc)
    if not _warned:
        _warned = True
        log.warning("bind guard OFF (%s): any tenant process may bind any free port above 1023, so one tenant can "
                    "take a dying Redis or PostgreSQL server's port", reason)
    return None


def _parse_ports(text: str) -> set[int]:
    ports: set[int] = set()
    for part in text.replace("\n", "").split(","):
        part = part.strip()
        if not part:
            continue
        low, _, high = part.partition("-")
        ports.update(range(int(low), int(high or low) + 1))
    return ports


def _format_ports(ports: set[int]) -> str:
    spans: list[str] = []
    for port in sorted(ports):
        if spans and "-" not in spans[-1] and int(spans[-1]) == port - 1:
            spans[-1] = f"{spans[-1]}-{port}"
        elif spans and "-" in spans[-1] and int(spans[-1].split("-")[1]) == port - 1:
            spans[-1] = f"{spans[-1].split('-')[0]}-{port}"
        else:
            spans.append(str(port))
    return ",".join(spans)


# --- suitefast: the reservations InkMCP made, recorded, so every one is given back however its server stopped
RECORD = Path("/run/inkmcp-reserved-ports.json")
"""Which entries of `ip_local_reserved_ports` InkMCP added, for which server (`owner`: its data directory) and which
processes hold them (the process that reserved, the server's own): {"boot": boot id, "ports": {port: {"owner": ...,
"holders": [[pid, start time], ...]}}}. Why: the kernel's list is the whole machine's, and a reservation was given
back only by `EmbeddedPostgres.stop` with the port known: a tenant server killed -9 (with the serve that started it),
or stopped another way (pg_ctl, `EmbeddedPostgres(pgdata).stop()` without its port), left its port reserved until
the next reboot. Each `reserve_port` first gives back the entries no living holder keeps (`repair_reserved_ports`).
Under /run, cleared at boot like the kernel's list; the boot id guards a /run that is not."""
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def _record_for(reserved: Path, record: Path | None) -> Path:
    """The record that goes with `reserved`: RECORD for the kernel's list, a file beside any other (a test's copy),
    so entries recorded for one list never give back ports of another."""
    if record is not None:
        return record
    return RECORD if reserved == RESERVED_PORTS else reserved.with_name(reserved.name + ".inkmcp.json")


def _started(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, /proc/PID/stat field 22): a reused pid is another process.
    None when it is gone or a zombie (a killed postmaster's new parent may never reap it)."""
    try:
        fields = (stat := Path(f"/proc/{pid}/stat").read_text())[stat.rindex(")") + 2:].split()
        return None if fields[0] in ("Z", "X") else int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _alive(holder: list[int]) -> bool:
    pid, started = holder
    return started is not None and _started(pid) == started


def _holder(pid: int) -> list[int] | None:
    started = _started(pid)
    return None if started is None else [pid, started]


def _boot() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def _read_record(record: Path) -> dict[str, dict[str, object]]:
    """The recorded ports of this boot ({} for another boot's or an unreadable record: nothing of it is ours now)."""
    try:
        data = json.loads(record.read_text())
        if data.get("boot") != _boot():
            return {}
        return {str(int(port)): dict(entry) for port, entry in dict(data["ports"]).items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _write_record(record: Path, ports: dict[str, dict[str, object]]) -> None:
    tmp = record.with_name(f".{record.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"boot": _boot(), "ports": ports}))
    tmp.chmod(0o600)
    os.replace(tmp, record)


def _give_back(reserved: Path, ports: set[int]) -> None:
    if not ports:
        return
    current = _parse_ports(reserved.read_text())
    if current & ports:
        reserved.write_text(_format_ports(current - ports) + "\n")


def repair_reserved_ports(*, reserved: Path = RESERVED_PORTS, record: Path | None = None) -> list[int]:
    """Give back the reservations InkMCP recorded whose holders are all gone (a server killed -9 with the process
    that started it, a server stopped without `release_port`); returns those ports. An entry InkMCP did not add (an
    operator's) is never touched. Takes the lock: `reserve_port` calls `_repair` under its own."""
    try:
        with _locked():
            return _repair(reserved, _record_for(reserved, record))
    except (OSError, ValueError) as exc:
        log.warning("could not check the kernel's reserved ports for InkMCP's stale entries: %s", exc)
        return []


def _repair(reserved: Path, record: Path) -> list[int]:
    ports = _read_record(record)
    stale = {port for port, entry in ports.items()
             if not any(_alive(list(h)) for h in entry.get("holders") or ())}  # type: ignore[union-attr]
    if not stale:
        if not ports:
            record.unlink(missing_ok=True)  # another boot's record, or an empty one
        return []
    _give_back(reserved, {int(p) for p in stale})
    for port in stale:
        del ports[port]
    if ports:
        _write_record(record, ports)
    else:
        record.unlink(missing_ok=True)
    log.info("gave back ports %s that an earlier InkMCP reserved for a server no longer running",
             ", ".join(sorted(stale, key=int)))
    return sorted(int(p) for p in stale)
# --- end suitefast


def reserve_port(port: int, *, owner: str = "", reserved: Path = RESERVED_PORTS, port_range: Path = PORT_RANGE,
                 record: Path | None = None) -> bool:
    """Keep the kernel's ephemeral choice (listen/connect on an unbound socket) off `port`, when it lies inside
    `ip_local_port_range`: there no bind() happens, so the hook cannot refuse it. True if it is reserved now.

    suitefast: the entry is recorded as InkMCP's, for `owner` (the server's data directory), held by this process
    (`hold_port` adds the server's own process); an entry that was there already and is not InkMCP's is an
    operator's, left alone by `release_port` and `repair_reserved_ports`. Stale entries go first."""
    try:
        low, high = (int(x) for x in port_range.read_text().split())
        if not low <= port <= high:
            return False
        record = _record_for(reserved, record)
        with _locked():
            _repair(reserved, record)
            current = _parse_ports(reserved.read_text())
            ports = _read_record(record)
            if port in current and str(port) not in ports:
                return True  # an operator's (or another program's) reservation: theirs to give back
            # recorded first: a crash in between leaves a record of a port not reserved (harmless, repaired), never
            # a reservation that looks like an operator's
            entry = ports.get(str(port)) or {}
            kept = [list(h) for h in entry.get("holders") or () if _alive(list(h))] \
                if entry.get("owner") == owner else []  # type: ignore[union-attr]  # a restart: they still hold it
            me = _holder(os.getpid())
            ports[str(port)] = {"owner": owner, "holders": kept + ([me] if me and me not in kept else [])}
            _write_record(record, ports)
            if port not in current:
                reserved.write_text(_format_ports(current | {port}) + "\n")
        return True
    except (OSError, ValueError) as exc:
        log.warning("could not reserve port %d from the kernel's ephemeral ports (%s): a tenant's listen() on an "
                    "unbound socket may get it while its server is down", port, exc)
        return False


def hold_port(port: int, pid: int, *, record: Path = RECORD) -> None:
    """suitefast: the server's own process `pid` holds InkMCP's reservation of `port` too (it outlives the process
    that started it: a CLI command, a serve killed -9 whose successor adopts the server)."""
    try:
        with _locked():
            ports = _read_record(record)
            entry = ports.get(str(port))
            holder = _holder(pid)
            if entry is None or holder is None:
                return
            holders = [list(h) for h in entry.get("holders") or () if _alive(list(h))]  # type: ignore[union-attr]
            if holder not in holders:
                holders.append(holder)
            entry["holders"] = holders
            _write_record(record, ports)
    except (OSError, ValueError) as exc:
        log.warning("could not record the holder of reserved port %d: %s", port, exc)


def release_port(port: int | None = None, *, owner: str | None = None, reserved: Path = RESERVED_PORTS,
                 record: Path | None = None) -> None:
    """Undo `reserve_port` once the server stopped for good (its data dir's next start reserves it again): test
    servers come and go by the hundred, each with a port of its own, and the list is the whole machine's.

    suitefast: only InkMCP's own entries: `port` if InkMCP reserved it (for `owner`, when given), or with no port
    every one reserved for `owner` (a server stopped by its data directory alone). An operator's entry stays."""
    record = _record_for(reserved, record)
    try:
        with _locked():
            ports = _read_record(record)
            mine = {p for p, entry in ports.items()
                    if (port is None or p == str(port)) and (owner is None or entry.get("owner") == owner)}
            if port is None and owner is None:
                mine = set()
            if not mine:
                return
            _give_back(reserved, {int(p) for p in mine})
            for p in mine:
                del ports[p]
            if ports:
                _write_record(record, ports)
            else:
                record.unlink(missing_ok=True)
    except (OSError, ValueError) as exc:
        log.warning("could not give port %s back to the kernel's ephemeral ports: %s", port, exc)
