"""A new mirror's first fetch over http(s), spoken by InkMCP's own process (git protocol v2), not by `git fetch`.

Why (issue 8): a `git fetch` over https starts `git` and its `git-remote-https` child, and libcurl/GnuTLS parse the
whole CA bundle again in every one of them before a full TLS handshake and three HTTP exchanges. For a deploy's first
fetch that start-up was most of InkMCP's overhead per deploy_app over Coolify (benchmarks/fetch_inprocess.py, a
same-run A/B on the GitHub stand-in over TLS: git fetch 60.7 ms p50, this path 28.1 ms). Here the TLS context (the
bundle parsed once per process) and the connections to a git host are kept, and the protocol takes two POSTs:
`ls-refs`, then `fetch` with every advertised tip wanted. The pack is not parsed here: it streams into `git
index-pack --stdin` in the git jail (the caller's `index_pack`), with the limits every git process of InkMCP has.

Only the happy path is handled here. Anything else — a server that does not speak protocol v2 over HTTP, an answer
that is not exactly what the protocol says, a ref name git would have to judge, a redirect, an HTTP error, a sha-256
repository, index-pack failing, the deadline — answers `None`, and the caller runs `git fetch` as before into a
fresh mirror, so every error an agent sees is still git's, worded as before (`source._fetch_error`). Only for a
mirror InkMCP owns (the Coolify provider: no tenant uid), without credentials and without an auth proxy: a private
repository's fetch keeps git's path. The caller's address pin (the checked IP of the host, `http.curloptResolve`)
is kept: the connection goes to that address, with the host's name for TLS (SNI, certificate) and `Host`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
import ssl
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from inkmcp.build.process import kill_process_group

MAX_REFS_BYTES = 8 << 20  # an ls-refs answer larger than this goes to git (it has its own ways with huge repos)
USER_AGENT = "git/2 (inkmcp)"  # git hosts serve the smart protocol to git/* agents
_HEADERS = {"Content-Type": "application/x-git-upload-pack-request", "Accept": "application/x-git-upload-pack-result",
            "Git-Protocol": "version=2", "User-Agent": USER_AGENT}
_RESULT_TYPE = "application/x-git-upload-pack-result"
_OID = re.compile(rb"[0-9a-f]{40}")
_REF_LINE = re.compile(rb"([0-9a-f]{40}) (HEAD|refs/[^ \n]+)((?: symref-target:[^ \n]+)?)"
                       rb"((?: peeled:[0-9a-f]{40})?)\n?")
_REF_NAME = re.compile(r"refs/(?:heads|tags)/[A-Za-z0-9_+-][A-Za-z0-9._+@/-]{0,250}")


class _NotHere(Exception):
    """This fetch goes to git instead (the reason is for the debug log only)."""


@dataclass(frozen=True)
class Target:
    """Where the requests go: `url` (the repository's URL, or with the pinned IP in place of the host), and the
    host's own name for TLS and `Host` when pinned."""

    url: str
    host_header: str | None = None
    sni: str | None = None

    @property
    def pool_key(self) -> tuple[str, str | None]:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}", self.sni


def target_of(fetch_url: str, config: tuple[str, ...]) -> Target | None:
    """The request target of an http(s) source with no credentials in its URL and at most the resolve pin in its
    `-c` settings; None for any other (git's path)."""
    try:
        parts = urlsplit(fetch_url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or "@" in parts.netloc or not parts.hostname or parts.query \
            or parts.fragment:
        return None
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    if not config:
        return Target(url=base)
    if len(config) != 1 or not config[0].startswith("http.curloptResolve="):
        return None
    host, _, rest = config[0].removeprefix("http.curloptResolve=").partition(":")
    pin_port, _, addresses = rest.partition(":")
    default = 443 if parts.scheme == "https" else 80
    if host != parts.hostname or pin_port != str(port or default) or not addresses:
        return None
    address = addresses.split(",")[0]  # as curl: the first of the checked addresses
    netloc = f"{address}:{port or default}"
    return Target(url=urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")),
                  host_header=parts.netloc, sni=parts.hostname if parts.scheme == "https" else None)


# ----------------------------------------------------------------------------------------------- clients
_CONTEXT: tuple[tuple[str | None, float], ssl.SSLContext] | None = None


def _context(ca_bundle: str | None) -> ssl.SSLContext:
    """The TLS context: the CA bundle git is given (`source.CA_BUNDLE`), parsed once per process (again if it
    changes on disk: update-ca-certificates), or the system's defaults without one."""
    global _CONTEXT
    try:
        stamp = os.stat(ca_bundle).st_mtime if ca_bundle else 0.0
    except OSError:
        stamp = -1.0
    if _CONTEXT is None or _CONTEXT[0] != (ca_bundle, stamp):
        context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle and stamp >= 0 \
            else ssl.create_default_context()
        _CONTEXT = ((ca_bundle, stamp), context)
    return _CONTEXT[1]


async def prepare(ca_bundle: str | None) -> None:
    """Parse the CA bundle now, in a thread (a server's start): the first deploy does not pay it (~35 ms with
    OpenSSL 3.0 and Debian's bundle), nor does the event loop wait on it."""
    await asyncio.to_thread(_context, ca_bundle)


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, httpx.AsyncClient]] = \
    weakref.WeakKeyDictionary()
_MAX_CLIENTS = 32


def _client(target: Target, ca_bundle: str | None) -> httpx.AsyncClient:
    """One kept-alive client per (origin, TLS name, CA bundle) and event loop: a connection verified for one host
    name never carries another's requests. No proxy from the environment, no redirect."""
    pools = _POOLS.setdefault(asyncio.get_running_loop(), {})
    key = (*target.pool_key, ca_bundle)
    client = pools.get(key)
    if client is None or client.is_closed:
        if len(pools) >= _MAX_CLIENTS:
            _, oldest = pools.popitem()  # any: they are cheap to make again
            _background(oldest.aclose())
        verify: ssl.SSLContext | bool = _context(ca_bundle) if target.url.startswith("https:") else False
        client = httpx.AsyncClient(verify=verify, trust_env=False, follow_redirects=False, http2=False,
                                   timeout=httpx.Timeout(30.0), limits=httpx.Limits(max_keepalive_connections=4,
                                                                                     keepalive_expiry=60.0))
        pools[key] = client
    return client


async def close_clients() -> None:
    """Close this event loop's kept-alive clients (a server's shutdown, a test's end): their connections end now, not
    when the loop is collected."""
    pools = _POOLS.pop(asyncio.get_running_loop(), {})
    for client in pools.values():
        await client.aclose()


_tasks: set[asyncio.Task[Any]] = set()


def _background(coro: Awaitable[Any]) -> None:
    task = asyncio.ensure_future(coro)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


# ----------------------------------------------------------------------------------------------- protocol
def _pkt(line: bytes) -> bytes:
    return b"%04x" % (len(line) + 4) + line


_AGENT = _pkt(b"agent=" + USER_AGENT.split(" ")[0].encode() + b"\n")
_LS_REFS = (_pkt(b"command=ls-refs\n") + _AGENT + b"0001"
            + _pkt(b"peel\n") + _pkt(b"symrefs\n") + _pkt(b"ref-prefix HEAD\n") + _pkt(b"ref-prefix refs/heads/\n")
            + _pkt(b"ref-prefix refs/tags/\n") + b"0000")


def _packets(data: bytes) -> list[bytes | None]:
    """Every pkt-line of a whole answer (None: flush, delim or response-end); an answer that is not exactly a
    sequence of pkt-lines is not v2's."""
    out: list[bytes | None] = []
    i = 0
    while i < len(data):
        size = _size(data[i:i + 4])
        out.append(None if size < 4 else data[i + 4:i + size])
        i += 4 if size < 4 else size
        if i > len(data):
            raise _NotHere("a truncated pkt-line")
    return out


def _size(head: bytes) -> int:
    if len(head) != 4 or not re.fullmatch(rb"[0-9a-f]{4}", head):
        raise _NotHere("not a pkt-line")
    size = int(head, 16)
    if size == 3 or size > 65520:  # 0 flush, 1 delim, 2 response-end
        raise _NotHere("a pkt-line of a length v2 never sends")
    return size


@dataclass(frozen=True)
class Refs:
    """What the fetch writes: branch and tag tips (with a tag's peeled object), and the remote HEAD's commit."""

    tips: dict[str, str]
    peeled: dict[str, str]
    head: str | None


def parse_ls_refs(body: bytes) -> Refs:
    packets = _packets(body)
    if not packets or packets[-1] is not None or any(p is None for p in packets[:-1]):
        raise _NotHere("ls-refs answer not one list ended by a flush")
    tips: dict[str, str] = {}
    peeled: dict[str, str] = {}
    head = None
    for line in packets[:-1]:
        assert line is not None
        m = _REF_LINE.fullmatch(line)
        if m is None:
            raise _NotHere("an ls-refs line v2 does not send (sha-256, or not v2)")
        oid, name = m.group(1).decode(), m.group(2).decode()
        if name == "HEAD":
            head = oid
            continue
        if not _REF_NAME.fullmatch(name) or ".." in name or "//" in name or "/." in name or name.endswith(
                (".lock", "/", ".")) or "@{" in name:
            raise _NotHere("a ref name for git to judge")
        tips[name] = oid
        if m.group(4):
            peeled[name] = m.group(4).decode().removeprefix(" peeled:")
    if not tips:
        raise _NotHere("no branch or tag (git says what an empty repository means)")
    return Refs(tips=tips, peeled=peeled, head=head)


def fetch_request(wants: list[str]) -> bytes:
    return (_pkt(b"command=fetch\n") + _AGENT + b"0001"
            + _pkt(b"ofs-delta\n") + _pkt(b"no-progress\n") + b"".join(_pkt(f"want {w}\n".encode()) for w in wants)
            + _pkt(b"done\n") + b"0000")


class _PackStream:
    """Demultiplexes a v2 fetch answer sent after `done`: the `packfile` section's band 1 to `write`; band 2
    (progress) dropped; band 3, another section or bytes after the final flush end this path."""

    def __init__(self) -> None:
        self._buf = b""
        self._in_pack = False
        self.ended = False

    def feed(self, chunk: bytes) -> list[bytes]:
        if self.ended and chunk:
            raise _NotHere("bytes after the fetch answer's end")
        self._buf += chunk
        out: list[bytes] = []
        while len(self._buf) >= 4 and not self.ended:
            size = _size(self._buf[:4])
            if size < 4:
                self._buf = self._buf[4:]
                if size != 0 or not self._in_pack:
                    raise _NotHere("a section other than packfile")
                self.ended = True
                if self._buf:
                    raise _NotHere("bytes after the fetch answer's end")
                break
            if len(self._buf) < size:
                break
            line, self._buf = self._buf[4:size], self._buf[size:]
            if not self._in_pack:
                if line != b"packfile\n":
                    raise _NotHere("a section other than packfile")
                self._in_pack = True
            elif line[:1] == b"\x01":
                out.append(line[1:])
            elif line[:1] != b"\x02":
                raise _NotHere("the git host reported an error in the pack stream")
        return out


def _idx_lacks(idx: Path, oids: set[str]) -> bool:
    """Whether the version-2 pack index `idx` lacks any of `oids`: a binary search in its sorted names, within the
    range its fan-out table gives for the first byte."""
    data = idx.read_bytes()
    if data[:8] != b"\xfftOc\x00\x00\x00\x02":
        raise _NotHere("not a version 2 pack index")
    names = 8 + 256 * 4

    def fanout(i: int) -> int:
        return int.from_bytes(data[8 + 4 * i:12 + 4 * i], "big") if i >= 0 else 0

    for oid in oids:
        raw = bytes.fromhex(oid)
        lo, hi = fanout(raw[0] - 1), fanout(raw[0])
        while lo < hi:
            mid = (lo + hi) // 2
            name = data[names + 20 * mid:names + 20 * mid + 20]
            if name == raw:
                break
            lo, hi = (mid + 1, hi) if name < raw else (lo, mid)
        else:
            return True
    return False


def _write_refs(mirror: Path, refs: Refs, head_ref: str) -> None:
    """`packed-refs`, written whole and renamed in: what `git fetch` would have stored (tips, the tags' peeled
    objects, the remote HEAD under `head_ref`)."""
    lines = ["# pack-refs with: peeled fully-peeled sorted "]
    entries = dict(refs.tips)
    if refs.head is not None:
        entries[head_ref] = refs.head
    for name in sorted(entries):
        lines.append(f"{entries[name]} {name}")
        if name in refs.peeled:
            lines.append(f"^{refs.peeled[name]}")
    tmp = mirror / "packed-refs.inkmcp-tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, mirror / "packed-refs")


IndexPack = Callable[[], Awaitable[Any]]
"""Starts `git index-pack --stdin` for the mirror in the git jail (an asyncio-like process: stdin, communicate)."""


async def first_fetch(target: Target, mirror: Path, index_pack: IndexPack, *, ca_bundle: str | None,
                      seconds: float, head_ref: str) -> bool:
    """Fetch every branch, tag and the remote HEAD into the new, empty `mirror`; False where git must do it (the
    mirror is then as empty as it was: its directory stays, for a `git cat-file` already started on it)."""
    try:
        await asyncio.wait_for(_first_fetch(target, mirror, index_pack, ca_bundle, head_ref), max(seconds, 0.01))
        return True
    except (_NotHere, httpx.HTTPError, ssl.SSLError, OSError, TimeoutError, ValueError) as e:
        logging.getLogger(__name__).debug("fetch of %s left to git: %s", target.host_header or target.url,
                                          type(e).__name__ if not isinstance(e, _NotHere) else e)
        with contextlib.suppress(OSError):  # git fetches into it either way (a stray pack costs it nothing)
            _empty_again(mirror)
        return False


def _empty_again(mirror: Path) -> None:
    """Remove what an attempt may have written (index-pack's pack, index and temporary files; the refs file), so the
    mirror is the empty one `git fetch` expects."""
    for leftover in (mirror / "packed-refs", mirror / "packed-refs.inkmcp-tmp"):
        leftover.unlink(missing_ok=True)
    objects = mirror / "objects"
    for entry in objects.iterdir() if objects.is_dir() else ():
        if entry.name == "pack":
            for item in entry.iterdir():
                shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
        elif entry.name != "info":
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


async def _first_fetch(target: Target, mirror: Path, index_pack: IndexPack, ca_bundle: str | None,
                       head_ref: str) -> None:
    client = _client(target, ca_bundle)
    headers = dict(_HEADERS)
    extensions: dict[str, Any] = {}
    if target.host_header:
        headers["Host"] = target.host_header
    if target.sni:
        extensions["sni_hostname"] = target.sni
    url = f"{target.url}/git-upload-pack"
    async with client.stream("POST", url, content=_LS_REFS, headers=headers, extensions=extensions) as answer:
        _check_answer(answer)
        body = b""
        async for chunk in answer.aiter_bytes():
            body += chunk
            if len(body) > MAX_REFS_BYTES:
                raise _NotHere("an ls-refs answer over MAX_REFS_BYTES")
    refs = parse_ls_refs(body)
    wants = sorted({*refs.tips.values(), *([refs.head] if refs.head else [])})  # HEAD: a detached one's too
    proc = await index_pack()
    try:
        assert proc.stdin is not None
        stream = _PackStream()
        async with client.stream("POST", url, content=fetch_request(wants), headers=headers,
                                 extensions=extensions) as answer:
            _check_answer(answer)
            async for chunk in answer.aiter_bytes():
                for data in stream.feed(chunk):
                    proc.stdin.write(data)
                await proc.stdin.drain()
        if not stream.ended:
            raise _NotHere("the fetch answer ended early")
        out, _ = await proc.communicate()  # closes its stdin: the pack is all there
        if proc.returncode != 0:
            raise _NotHere("index-pack refused the pack")
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                await kill_process_group(proc)
    name = (out or b"").decode(errors="replace").split()
    if len(name) < 2 or name[0] != "pack" or not _OID.fullmatch(name[1].encode()):
        raise _NotHere("index-pack named no pack")
    if _idx_lacks(mirror / "objects" / "pack" / f"pack-{name[1]}.idx", {*wants, *refs.peeled.values()}):
        raise _NotHere("the pack lacks a tip it was asked for")
    _write_refs(mirror, refs, head_ref)


def _check_answer(answer: httpx.Response) -> None:
    if answer.status_code != 200:
        raise _NotHere(f"HTTP {answer.status_code}")
    if answer.headers.get("content-type", "").split(";")[0].strip() != _RESULT_TYPE:
        raise _NotHere("not a smart-HTTP answer")
