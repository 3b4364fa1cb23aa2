"""When a freshly started app listens on its port, asked of the kernel instead of knocked at.

The health check used to try a TCP connect every 5 ms doubling to 50 ms: a wake waited on average
half a polling interval too long, and every probe that succeeded was a real connection the app had
to accept and tear down (a single-threaded app serves it before the request that woke it). Here
the kernel's socket table is read through netlink sock_diag (`NETLINK_SOCK_DIAG`, the interface
`ss` uses), which opens nothing, so it can be asked every millisecond (at first: the pause then grows
with the wait, `release.listen_poll_pause`). `ListenProbe.ready` asks for
one socket, not a dump: the listener the kernel would hand a connection to 127.0.0.1:port (the
same hash lookup an incoming SYN gets, ~6 us; a dump of every listening socket walks the whole
listening table, ~20 us per address family, and could not tell whether a listener on another
address is reachable). So a socket on 0.0.0.0, on 127.0.0.1 or a dual-stack [::] counts, and a
socket on ::1 alone or 127.0.0.2 does not (the proxy could not reach it). A listener counts only
when it belongs to the tenant's uid (a socket somebody else opened on the port is not the app).

Without sock_diag (a kernel without it, a seccomp profile refusing netlink) `ListenProbe.open`
returns None and the caller falls back to connecting.

Listening is what a *wake* waits for (a request is waiting; the request itself then tests the app).
A *deploy* asks more before it reports live (`LiveSettings`, `probe_http`): an open port only says
the app got as far as `bind()`. Apps that crash a second later (a Redis client that cannot connect,
an unhandled promise rejection), workers that crash-loop, and webs that answer every request with a
500 (a missing setting) all opened their port or never had one; so every process of the release
must stay up for a stability window and the web must answer one HTTP request with a status below
500 before the release replaces the previous one.
"""

from __future__ import annotations

import contextlib
import html
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_S_EQ = 11
_NLMSG = struct.Struct("=IHHII")
_REQ = struct.Struct("=BBBBI48s")  # inet_diag_req_v2: family, protocol, ext, pad, states, inet_diag_sockid
_MSG_HEAD = struct.Struct("=BBBB")  # inet_diag_msg: family, state, timer, retrans; then the sockid
_V4_LOOPBACK_OR_ANY = (b"\x00\x00\x00\x00", b"\x7f\x00\x00\x01")
_LOOPBACK_V4_16 = b"\x7f\x00\x00\x01" + b"\x00" * 12  # an inet_diag_sockid address field
_NO_COOKIE = 0xFFFFFFFF  # INET_DIAG_NOCOOKIE, both halves
ENOENT = 2


@dataclass(frozen=True)
class Listener:
    family: int
    address: bytes  # 4 or 16 bytes, network order
    port: int
    uid: int
    inode: int = 0  # --- redteam2 (portguard): the socket's inode, to find the process holding it

    @property
    def reaches_loopback_v4(self) -> bool:
        """A connect to 127.0.0.1:port is certain to reach it."""
        return self.family == socket.AF_INET and self.address in _V4_LOOPBACK_OR_ANY


class ListenProbe:
    """One netlink socket asking the kernel which TCP sockets listen on a port (blocking, microseconds)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._seq = 0

    @classmethod
    def open(cls) -> ListenProbe | None:
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_SOCK_DIAG)
            sock.bind((0, 0))
        except OSError:
            return None
        probe = cls(sock)
        try:
            probe.listeners(0)
        except OSError:
            probe.close()
            return None
        return probe

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> ListenProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def listeners(self, port: int) -> list[Listener]:
        """TCP sockets in LISTEN state on `port`, IPv4 and IPv6 (port 0: none match; used as a self-test)."""
        found: list[Listener] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            found += self._dump(family, port)
        return found

    def _dump(self, family: int, port: int) -> list[Listener]:
        self._seq += 1
        seq = self._seq
        req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN, b"\0" * 48)
        # The kernel filters by port itself (INET_DIAG_BC_S_EQ, the bytecode `ss sport = :P` sends), so only
        # the matching sockets cross into Python.
        code = struct.pack("=BBHBBH", INET_DIAG_BC_S_EQ, 8, 12, 0, 0, port)
        req += struct.pack("=HH", 4 + len(code), INET_DIAG_REQ_BYTECODE) + code
        header = _NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
        self._sock.send(header + req)
        found: list[Listener] = []
        for kind, data, body in self._answers(seq):
            if kind == NLMSG_DONE:
                return found
            if kind == NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", data, body)
                if errno:
                    raise OSError(-errno, "sock_diag refused the request")
                return found
            if kind == SOCK_DIAG_BY_FAMILY:
                listener = _parse(data, body)
                if listener.port == port:
                    found.append(listener)
        raise AssertionError("unreachable")  # _answers never ends

    def _answers(self, seq: int) -> Iterator[tuple[int, bytes, int]]:
        """(message type, datagram, offset of the body) of each netlink message answering request `seq`,
        reading datagrams until the caller stops; answers to other requests are skipped."""
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, got_seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise OSError("malformed sock_diag answer")
                if got_seq == seq:
                    yield kind, data, offset + _NLMSG.size
                offset += (length + 3) & ~3

    def ready(self, port: int, uid: int | None) -> tuple[bool, bool]:
        """(something of `uid` listens on `port`, and a connect to 127.0.0.1 is certain to reach it).

        The kernel's own lookup for a connection to 127.0.0.1:`port` (`reachable`): the answer is the
        listener that connection would reach, so whenever it belongs to `uid` both are True. A kernel
        refusing the single-socket request (never seen) falls back to the dump of every listener.
        """
        try:
            found = self.reachable(port)
        except OSError:
            mine = [x for x in self.listeners(port) if uid is None or x.uid == uid]
            return bool(mine), any(x.reaches_loopback_v4 for x in mine)
        yes = found is not None and (uid is None or found.uid == uid)
        return yes, yes

    def reachable(self, port: int) -> Listener | None:
        """The TCP socket in LISTEN state that a connection to 127.0.0.1:`port` would reach, or None.

        One SOCK_DIAG_BY_FAMILY request without NLM_F_DUMP for the exact socket id (source
        127.0.0.1:port, peer 127.0.0.1:0): the kernel runs its inet lookup for it, so a listener on
        0.0.0.0, on 127.0.0.1 or on a dual-stack [::] is found, one on ::1 only is not. The peer port
        0 matches no established connection. Raises OSError for any refusal other than "none".
        """
        self._seq += 1
        seq = self._seq
        sockid = (struct.pack("!HH", port, 0) + _LOOPBACK_V4_16 + _LOOPBACK_V4_16
                  + struct.pack("=III", 0, _NO_COOKIE, _NO_COOKIE))  # fmt: skip
        req = _REQ.pack(socket.AF_INET, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN, sockid)
        self._sock.send(_NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + req)
        for kind, data, body in self._answers(seq):
            if kind == NLMSG_ERROR:
                (errno,) = struct.unpack_from("=i", data, body)
                if errno in (0, -ENOENT):
                    return None
                raise OSError(-errno, "sock_diag refused the request")
            if kind == SOCK_DIAG_BY_FAMILY:
                listener = _parse(data, body)
                state = data[body + 1]
                return listener if state == TCP_LISTEN and listener.port == port else None
        raise AssertionError("unreachable")  # _answers never ends


def _parse(data: bytes, body: int) -> Listener:
    family = data[body]
    # inet_diag_sockid: sport, dport (big-endian), src[16], dst[16], if, cookie[2]
    sport = struct.unpack_from("!H", data, body + 4)[0]
    address = bytes(data[body + 8 : body + 8 + (4 if family == socket.AF_INET else 16)])
    # after the sockid (48 bytes): expires, rqueue, wqueue, uid, inode
    uid, inode = struct.unpack_from("=II", data, body + 4 + 48 + 12)
    return Listener(family=family, address=address, port=sport, uid=uid, inode=inode)


class LiveSettings(BaseSettings):
    # --- firstlive: a first deploy (nothing serving to protect) waits a short settle, not the whole window
    """When a deploy (or an env restart) of the local provider counts as live.

    Read from the environment when a provider is made without explicit values (env
    INKMCP_STABILITY_WINDOW, INKMCP_FIRST_DEPLOY_SETTLE). Wakes of on_demand services wait for neither.

    The window protects a previous version that serves: it keeps serving while the new one proves
    itself, so the wait costs no downtime. With nothing serving (a service's first deploy, or one whose
    live version is crash-looping or stopped) the wait would protect nothing and only delay the URL, so
    the release goes live once the web answers and every process has stayed up `first_deploy_settle`.
    A process that crashes after that is restarted with backoff like any crash of a live service
    (list_services shows it failing, get_logs the crash).
    """

    model_config = SettingsConfigDict(env_prefix="INKMCP_", extra="ignore")

    stability_window: float = Field(
        default=3.0,
        ge=0,
        le=600,
        description="Seconds every process of a new release (web and workers) must stay up, counted from its "
        "start, before the release replaces a previous version that is serving; a process exiting sooner fails "
        "the deploy at health_check and the previous version keeps serving. Also how long a web answering 5xx is "
        "asked again (any deploy). 0 checks only that the processes run and the web answers HTTP.",
    )
    first_deploy_settle: float = Field(
        # 1 s, measured on the 2-core dev box (load 2-4): a worker that imports Flask and then dies on a
        # missing setting exits 0.5-0.8 s after its start (p50; max 1.3 s), so 0.5 s would miss it half the
        # time; a Node app on a missing module or an unhandled rejection right after listen 0.1-0.4 s; a
        # Python import error 0.02-0.04 s. gunicorn's "Worker failed to boot" takes 0.7-1.3 s but never
        # answers HTTP meanwhile, so it fails whatever the settle. A gunicorn + Flask web answers 0.6-1.1 s
        # after its start on the same box, so the settle adds 0-0.4 s to its first deploy.
        default=1.0,
        ge=0,
        le=600,
        description="Seconds every process of a FIRST deploy (no previous version serving) must stay up, counted "
        "from its start, before it goes live (capped at the stability window): long enough to catch a crash on "
        "start (import error, missing setting, 'Worker failed to boot'), which fails the deploy at health_check "
        "with its output. A crash after going live restarts with backoff and shows in list_services and get_logs.",
    )
    # --- end


PROBE_BODY_BYTES = 32768  # of an error answer read: a framework's debug page puts its exception after its CSS
QUOTED_CHARS = 600  # of it quoted in the error
_DROPPED = re.compile(r"<(script|style|svg)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class HttpAnswer:
    """What one `GET /` to the app got: a status (None: no HTTP answer at all) and what to quote."""

    status: int | None
    detail: str  # the start of the body of an error answer, or why there was no answer

    @property
    def healthy(self) -> bool:
        """Below 500: the app works. A 404 on `/` is an API without a root page, a 401/403 a login wall,
        a 3xx a redirect to HTTPS or /login; a 5xx is the app failing (or its own proxy finding nothing)."""
        return self.status is not None and self.status < 500


async def probe_http(port: int, host: str | None, timeout: float, path: str = "/") -> HttpAnswer:
    """One `GET <path>` (`/` unless the plan names its health path) to 127.0.0.1:`port` with the public Host header,
    as the proxy will send it.

    Redirects are not followed (a 301 to https is an answer). No proxy from the environment, no TLS.
    """
    headers = {"User-Agent": "inkmcp-health-check", "Accept": "*/*"}
    if host:
        headers["Host"] = host
    try:
        async with (
            # Plain HTTP to loopback: no TLS happens; verify=False only skips loading CA files (~30 ms).
            httpx.AsyncClient(verify=False, trust_env=False, timeout=timeout, follow_redirects=False) as client,  # noqa: S501
            client.stream("GET", f"http://127.0.0.1:{port}{path}", headers=headers) as response,
        ):
            if response.status_code < 500:
                return HttpAnswer(response.status_code, "")
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= PROBE_BODY_BYTES:
                    break
            return HttpAnswer(response.status_code, readable(body[:PROBE_BODY_BYTES].decode(errors="replace")))
    except httpx.TimeoutException:
        return HttpAnswer(None, f"no answer within {timeout:.1f}s")
    except httpx.HTTPError as exc:
        return HttpAnswer(None, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def readable(body: str) -> str:
    """The start of an error body as text: an HTML page (Django's or Werkzeug's debug page, an nginx error
    page) loses its scripts, styles and tags, so the quote reaches the exception instead of the CSS."""
    if "<" in body and ">" in body:
        body = _TAG.sub(" ", _DROPPED.sub(" ", body))
        body = html.unescape(body)
    return " ".join(body.split())[:QUOTED_CHARS]
