"""Shared helper: load a small hand-assembled BPF program and attach it to a cgroup (v2), through bpf(2) and ctypes.

Written by svcports (2026-12-02) for the bind guard (`bindguard.py`); the egress firewall (or anything else that
needs a cgroup socket hook) is welcome to use it: `Insn` assembles instructions, `load_program` loads one,
`HashMap` is a BPF hash map seen from Python, `link` attaches a program to a cgroup directory for as long as the
caller keeps the returned fd (what the bind guard uses: nothing outlives the InkMCP that maintains it), `attach`/
`detach` are the legacy attachments that stay after the process exits, `attached`/`find_programs` list what is
attached to a cgroup.

No libbpf and no compiler: the programs InkMCP needs are a few dozen instructions, and the wheel-free, root-only
syscall path keeps the install as it is. Everything here needs CAP_BPF (or CAP_SYS_ADMIN) and a cgroup2 hierarchy
(on hybrid hosts the `unified` mount); `available()` says whether that holds and, if not, why.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# bpf(2) commands (include/uapi/linux/bpf.h)
MAP_CREATE, MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY, PROG_LOAD = 0, 1, 2, 3, 4, 5
PROG_ATTACH, PROG_DETACH = 8, 9
PROG_GET_FD_BY_ID, MAP_GET_FD_BY_ID, OBJ_GET_INFO_BY_FD, PROG_QUERY = 13, 14, 15, 16
BTF_LOAD = 18
LINK_CREATE = 28
ENABLE_STATS = 32

MAP_TYPE_HASH = 1
MAP_TYPE_SK_STORAGE = 24
MAP_F_NO_PREALLOC = 1
PROG_TYPE_CGROUP_SOCK = 9
PROG_TYPE_CGROUP_SOCK_ADDR = 18
ATTACH_INET4_BIND, ATTACH_INET6_BIND, ATTACH_INET4_CONNECT, ATTACH_INET6_CONNECT = 8, 9, 10, 11
ATTACH_INET4_POST_BIND, ATTACH_INET6_POST_BIND = 12, 13
ATTACH_UDP4_SENDMSG, ATTACH_UDP6_SENDMSG = 14, 15  # --- redteam4: the loopback guard's datagram hooks
F_ALLOW_MULTI = 2

# helper ids
FUNC_MAP_LOOKUP_ELEM = 1
FUNC_MAP_UPDATE_ELEM = 2
FUNC_GET_CURRENT_UID_GID = 15
FUNC_SK_LOOKUP_TCP = 84
FUNC_SK_LOOKUP_UDP = 85  # --- redteam4
FUNC_SK_RELEASE = 86
FUNC_SK_STORAGE_GET = 107
FUNC_GET_NETNS_COOKIE = 122
SK_STORAGE_GET_F_CREATE = 1
CURRENT_NETNS = -1  # BPF_F_CURRENT_NETNS: the sk_lookup helpers' netns argument

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "riscv64": 280}


class BpfError(OSError):
    """A bpf(2) call failed; `log` holds the verifier's output for a refused program."""

    def __init__(self, errno: int, what: str, log: str = "") -> None:
        super().__init__(errno, f"{what}: {os.strerror(errno)}" + (f"\n{log}" if log else ""))
        self.log = log


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(38, f"{what} (no bpf syscall number known for {platform.machine()})")
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    if ret < 0:
        raise BpfError(ctypes.get_errno(), what)
    return int(ret)


def _attr(size: int = 128) -> ctypes.Array[ctypes.c_char]:
    return ctypes.create_string_buffer(size)


def _addr(buf: ctypes.Array[ctypes.c_char] | ctypes.c_char_p) -> int:
    return ctypes.cast(buf, ctypes.c_void_p).value or 0


@dataclass(frozen=True)
class Insn:
    """One eBPF instruction (8 bytes: opcode, dst/src registers, offset, immediate)."""

    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def ld_map_fd(dst: int, fd: int) -> list[Insn]:
    """`dst = map` (the 16-byte ld_imm64 with BPF_PSEUDO_MAP_FD)."""
    return [Insn(0x18, dst, 1, 0, fd), Insn(0)]


def map_update(map_fd: int, key: int, value: int, flags: int = 0) -> list[Insn]:
    """`bpf_map_update_elem(map, fp + key, fp + value, flags)`: key and value on the stack at those offsets (8
    instructions; r0 holds the helper's result)."""
    return [*ld_map_fd(1, map_fd), Insn(0xBF, 2, 10), Insn(0x07, 2, 0, 0, key), Insn(0xBF, 3, 10),
            Insn(0x07, 3, 0, 0, value), Insn(0xB7, 4, 0, 0, flags), Insn(0x85, 0, 0, 0, FUNC_MAP_UPDATE_ELEM)]


@dataclass(frozen=True)
class Jump:
    """A jump to a label (`assemble` fills in the offset): `code` is a BPF_JMP opcode (0x05 = goto)."""

    code: int
    label: str
    dst: int = 0
    src: int = 0
    imm: int = 0


def assemble(items: Sequence[Insn | Jump | str]) -> list[Insn]:
    """Instructions with named jump targets: a str item is a label (the position of the next instruction), a
    `Jump` is resolved to the offset of its label. (The bind guard counts its offsets by hand; longer programs
    (loopguard.py) use this.)"""
    labels: dict[str, int] = {}
    at = 0
    for item in items:
        if isinstance(item, str):
            if item in labels:
                raise ValueError(f"label {item!r} twice")
            labels[item] = at
        else:
            at += 1
    out: list[Insn] = []
    for item in items:
        if isinstance(item, str):
            continue
        if isinstance(item, Jump):
            out.append(Insn(item.code, item.dst, item.src, labels[item.label] - len(out) - 1, item.imm))
        else:
            out.append(item)
    return out


def load_program(insns: Sequence[Insn], *, prog_type: int, attach_type: int, name: str) -> int:
    """Load a program; its fd. A refusal raises BpfError with the verifier's log."""
    code = b"".join(i.encode() for i in insns)
    code_buf = ctypes.create_string_buffer(code, len(code))
    license_buf = ctypes.create_string_buffer(b"GPL")
    log_buf = ctypes.create_string_buffer(65536)
    attr = _attr()
    struct.pack_into("<IIQQIIQII", attr, 0, prog_type, len(insns), _addr(code_buf), _addr(license_buf),
                     1, len(log_buf), _addr(log_buf), 0, 0)
    attr[48:64] = name.encode()[:15].ljust(16, b"\0")
    struct.pack_into("<II", attr, 64, 0, attach_type)
    try:
        return bpf(PROG_LOAD, attr, f"loading BPF program {name}")
    except BpfError as exc:
        raise BpfError(exc.errno or 0, f"loading BPF program {name}",
                       log_buf.value.decode(errors="replace")) from None


class HashMap:
    """A BPF hash map with fixed-size byte keys and values (the fd is owned: `close`)."""

    def __init__(self, fd: int, key_size: int, value_size: int) -> None:
        self.fd = fd
        self.key_size = key_size
        self.value_size = value_size

    @classmethod
    def create(cls, name: str, key_size: int, value_size: int, max_entries: int) -> HashMap:
        attr = _attr()
        struct.pack_into("<IIIIIII", attr, 0, MAP_TYPE_HASH, key_size, value_size, max_entries, MAP_F_NO_PREALLOC,
                         0, 0)
        attr[28:44] = name.encode()[:15].ljust(16, b"\0")
        return cls(bpf(MAP_CREATE, attr, f"creating BPF map {name}"), key_size, value_size)

    def _elem(self, key: bytes, value: ctypes.Array[ctypes.c_char] | None,
              flags: int = 0) -> ctypes.Array[ctypes.c_char]:
        kbuf = ctypes.create_string_buffer(key, self.key_size)
        attr = _attr()
        struct.pack_into("<IIQQQ", attr, 0, self.fd, 0, _addr(kbuf), _addr(value) if value is not None else 0, flags)
        attr._keep = (kbuf, value)  # type: ignore[attr-defined]
        return attr

    def get(self, key: bytes) -> bytes | None:
        value = ctypes.create_string_buffer(self.value_size)
        try:
            bpf(MAP_LOOKUP_ELEM, self._elem(key, value), "reading a BPF map entry")
        except BpfError as exc:
            if exc.errno == 2:
                return None
            raise
        return value.raw

    def put(self, key: bytes, value: bytes) -> None:
        bpf(MAP_UPDATE_ELEM, self._elem(key, ctypes.create_string_buffer(value, self.value_size)),
            "writing a BPF map entry")

    def delete(self, key: bytes) -> bool:
        try:
            bpf(MAP_DELETE_ELEM, self._elem(key, None), "deleting a BPF map entry")
        except BpfError as exc:
            if exc.errno == 2:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """Every key (a snapshot walk: entries deleted meanwhile may cut it short, which callers tolerate)."""
        nxt = ctypes.create_string_buffer(self.key_size)
        attr = _attr()
        struct.pack_into("<IIQQ", attr, 0, self.fd, 0, 0, _addr(nxt))
        found: list[bytes] = []
        while True:
            try:
                bpf(MAP_GET_NEXT_KEY, attr, "walking a BPF map")
            except BpfError as exc:
                if exc.errno == 2:
                    break
                raise
            found.append(nxt.raw)
            current = ctypes.create_string_buffer(nxt.raw, self.key_size)
            struct.pack_into("<Q", attr, 8, _addr(current))
            attr._keep = current  # type: ignore[attr-defined]
        yield from found

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def load_btf_int() -> int:
    """A BTF object holding one type, `int` (32 bits, id 1); its fd. Socket-local storage maps need key and value
    types in BTF (the kernel checks the key is a 32-bit int), and this is all they need."""
    strings = b"\0int\0"
    types = struct.pack("<IIII", 1, 1 << 24, 4, (1 << 24) | 32)  # name "int", BTF_KIND_INT, 4 bytes, signed, 32 bits
    blob = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings)) + types + strings
    buf = ctypes.create_string_buffer(blob, len(blob))
    log_buf = ctypes.create_string_buffer(4096)
    attr = _attr()
    struct.pack_into("<QQIII", attr, 0, _addr(buf), _addr(log_buf), len(blob), len(log_buf), 1)
    try:
        return bpf(BTF_LOAD, attr, "loading BTF")
    except BpfError as exc:
        raise BpfError(exc.errno or 0, "loading BTF", log_buf.value.decode(errors="replace")) from None


class SkStorage(HashMap):
    """A socket-local storage map (BPF_MAP_TYPE_SK_STORAGE, 5.2+): a 4-byte value per socket, created by a program
    and freed by the kernel with the socket itself (nothing to clean up, nothing stale)."""

    @classmethod
    def create_storage(cls, name: str) -> SkStorage:
        btf = load_btf_int()
        try:
            attr = _attr()
            struct.pack_into("<IIIIIII", attr, 0, MAP_TYPE_SK_STORAGE, 4, 4, 0, MAP_F_NO_PREALLOC, 0, 0)
            attr[28:44] = name.encode()[:15].ljust(16, b"\0")
            struct.pack_into("<III", attr, 48, btf, 1, 1)  # btf_fd, btf_key_type_id, btf_value_type_id
            return cls(bpf(MAP_CREATE, attr, f"creating BPF socket storage {name}"), 4, 4)
        finally:
            os.close(btf)  # the map holds the BTF


def attach(cgroup: Path, prog_fd: int, attach_type: int, flags: int = F_ALLOW_MULTI) -> None:
    """Attach (legacy BPF_PROG_ATTACH: it stays after this process exits, until `detach` or the cgroup goes)."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = _attr()
        struct.pack_into("<IIII", attr, 0, fd, prog_fd, attach_type, flags)
        bpf(PROG_ATTACH, attr, f"attaching a BPF program to {cgroup}")
    finally:
        os.close(fd)


def link(cgroup: Path, prog_fd: int, attach_type: int) -> int:
    """Attach through a BPF link (BPF_LINK_CREATE, 5.7+); the link's fd. The program stays attached exactly as long
    as that fd is open: a process that dies (even by SIGKILL) takes its hooks with it, so nothing it set up outlives
    it on a machine other InkMCPs (or other versions of it) share. Links on a cgroup always run beside the others
    (as BPF_F_ALLOW_MULTI)."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = _attr()
        struct.pack_into("<IIII", attr, 0, prog_fd, fd, attach_type, 0)
        return bpf(LINK_CREATE, attr, f"linking a BPF program to {cgroup}")
    finally:
        os.close(fd)


def detach(cgroup: Path, prog_fd: int, attach_type: int) -> None:
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        attr = _attr()
        struct.pack_into("<III", attr, 0, fd, prog_fd, attach_type)
        bpf(PROG_DETACH, attr, f"detaching a BPF program from {cgroup}")
    finally:
        os.close(fd)


def attached(cgroup: Path, attach_type: int) -> list[int]:
    """Ids of the programs attached to `cgroup` itself for `attach_type`."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = (ctypes.c_uint32 * 64)()
        attr = _attr()
        struct.pack_into("<IIIIQI", attr, 0, fd, attach_type, 0, 0, _addr(ids), 64)  # type: ignore[arg-type]
        bpf(PROG_QUERY, attr, f"listing the BPF programs of {cgroup}")
        count = struct.unpack_from("<I", attr, 24)[0]
        return list(ids[: min(count, 64)])
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ProgramInfo:
    id: int
    name: str
    map_ids: tuple[int, ...]


def program_fd(prog_id: int) -> int:
    attr = _attr()
    struct.pack_into("<I", attr, 0, prog_id)
    return bpf(PROG_GET_FD_BY_ID, attr, f"opening BPF program {prog_id}")


def map_fd(map_id: int) -> int:
    attr = _attr()
    struct.pack_into("<I", attr, 0, map_id)
    return bpf(MAP_GET_FD_BY_ID, attr, f"opening BPF map {map_id}")


def program_info(fd: int) -> ProgramInfo:
    info = ctypes.create_string_buffer(256)
    maps = (ctypes.c_uint32 * 8)()
    struct.pack_into("<IQ", info, 52, 8, _addr(maps))  # type: ignore[arg-type]
    attr = _attr()
    struct.pack_into("<IIQ", attr, 0, fd, len(info), _addr(info))
    bpf(OBJ_GET_INFO_BY_FD, attr, "reading a BPF program's info")
    prog_id = struct.unpack_from("<I", info, 4)[0]
    count = struct.unpack_from("<I", info, 52)[0]
    name = info.raw[64:80].split(b"\0", 1)[0].decode(errors="replace")
    return ProgramInfo(prog_id, name, tuple(maps[: min(count, 8)]))


def program_stats(fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a program: counted only while some process holds `enable_stats()`'s fd."""
    info = ctypes.create_string_buffer(256)
    attr = _attr()
    struct.pack_into("<IIQ", attr, 0, fd, len(info), _addr(info))
    bpf(OBJ_GET_INFO_BY_FD, attr, "reading a BPF program's info")
    return struct.unpack_from("<QQ", info, 192)


def enable_stats() -> int:
    """BPF_ENABLE_STATS (run time): the kernel counts every program's runs and time while the fd is open."""
    attr = _attr()
    struct.pack_into("<I", attr, 0, 0)
    return bpf(ENABLE_STATS, attr, "enabling BPF run-time statistics")


def find_programs(cgroup: Path, attach_type: int, prefix: str) -> list[tuple[int, ProgramInfo]]:
    """(fd, info) of the programs attached to `cgroup` whose name starts with `prefix` (fds owned by the caller)."""
    found = []
    for prog_id in attached(cgroup, attach_type):
        try:
            fd = program_fd(prog_id)
        except BpfError:
            continue  # detached meanwhile
        info = program_info(fd)
        if info.name.startswith(prefix):
            found.append((fd, info))
        else:
            os.close(fd)
    return found


def cgroup2_root(mounts: Path = Path("/proc/self/mounts")) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts)."""
    try:
        for line in mounts.read_text().splitlines():
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    except OSError:
        return None
    return None


def netns_cookie() -> int | None:
    """The calling process's network namespace cookie (SO_NETNS_COOKIE, 5.14+), as bpf_get_netns_cookie sees it."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            return int(struct.unpack("<Q", s.getsockopt(socket.SOL_SOCKET, 71, 8))[0])
        except OSError:
            return None


def available() -> str | None:
    """None when cgroup BPF programs can be used here, else why not (for a log line)."""
    if os.geteuid() != 0:
        return "InkMCP is not running as root"
    if platform.machine() not in _SYS_BPF:
        return f"no bpf syscall number known for {platform.machine()}"
    if cgroup2_root() is None:
        return "no cgroup2 hierarchy is mounted"
    if netns_cookie() is None:
        return "the kernel has no SO_NETNS_COOKIE (Linux 5.14+ needed)"
    return None
