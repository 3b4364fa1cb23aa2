"""The host-routing reverse proxy in front of every local service: InkMCP's own, in Python.

With the default INKMCP_PROXY_ENGINE=nginx it is the slow path behind nginx (nginx.NginxProxy): it
holds the route table, wakes on_demand services, answers unknown hosts, and takes what nginx could not
hand to a port that a switch just retired. With INKMCP_PROXY_ENGINE=python it faces the clients itself.

It reads only the first request head of a connection (to learn the Host), connects to the
service's current port and then splices bytes both ways. Everything after the head — keep-alive
requests, chunked bodies, WebSocket frames — passes through untouched, which keeps the proxy
small and fast (one task per direction, no thread, no HTTP re-encoding). The price: a kept-alive
client connection stays with the upstream it started on; after a release switch it ends when the
old process stops, and the client's next connection reaches the new one.

Routes carry what idle detection needs (open connections, last byte seen) and, for on_demand
services, a `wake` callback the proxy awaits when the route has no port.

Facing clients itself (`edge=True`, INKMCP_PROXY_ENGINE=python) it sets the forwarded headers an app behind one
proxy trusts, as nginx does (`with_forwarded`): the client's own X-Forwarded-*, X-Real-IP and Forwarded (any
casing, `_` spellings, duplicates) never reach the app. Since it rewrites only the head it reads, it then serves
one request per connection (`Connection: close` to the app, nothing of the client's sent after that request's
body), and an Upgrade request's connection becomes a tunnel only if the app answers 101.

Every route has an `owner` (the service id). A hostname held by one owner is never handed to another:
`set_route` refuses it (RouteConflict) and `remove_route(host, owner)` removes only the caller's own
route, so nothing one tenant's service does (deploy, rename, delete) can move or drop another's URL,
even if the names above ever collided.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

MAX_HEAD_BYTES = 64 * 1024
HEAD_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
CHUNK = 256 * 1024

# --- proxy12: the forwarded headers this proxy owns when it faces clients (nginx.py renders the same names for
# nginx): the ones it sets from the connection, and names a proxy-trusting app may read that it only drops.
FORWARDED_SET = ("X-Forwarded-For", "X-Real-IP", "X-Forwarded-Host", "X-Forwarded-Proto", "X-Forwarded-Port")
FORWARDED_ONLY_DROPPED = ("Forwarded", "X-Forwarded-Server", "X-Forwarded-Uri", "X-Forwarded-Method",
                          "X-Forwarded-Prefix", "X-Forwarded-Ssl", "X-Forwarded-Scheme")  # fmt: skip
_FORWARDED_KEYS = frozenset(n.lower().encode() for n in (*FORWARDED_SET, *FORWARDED_ONLY_DROPPED))
# --- end


class RouteConflict(Exception):
    """The hostname is routed to another owner's service; the route table was left unchanged."""

    def __init__(self, host: str) -> None:
        self.host = host
        super().__init__(f"the hostname {host} is already routed to another service")


class WakeFailed(Exception):
    """The on_demand service could not be started; `reason` is shown to the client."""

    # --- issue 13 (credits): `status` 402 when the service may not wake (its account is out of credits)
    def __init__(self, reason: str, *, status: int = 502, title: str = "Bad Gateway") -> None:
        self.reason = reason
        self.status = status
        self.title = title
        super().__init__(reason)
    # --- end


@dataclass(eq=False)
class Route:
    """Where one hostname goes. `port` None means asleep: call `wake` to get one.

    A data plane outside this process (nginx.NginxProxy) must hear when the provider moves a route
    (`port`, `wake`, `host` assigned): it sets `on_change`, called after each such assignment. It also
    sets `counter`, the connections it holds to the route's upstream right now, which `active` adds to
    the connections this process holds (`held`), so idle detection sees both.
    """

    host: str
    port: int | None
    owner: str = field(kw_only=True)
    """Who may change or remove this route: the service id."""
    wake: Callable[[], Awaitable[int]] | None = None
    held: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    on_change: Callable[[], None] | None = field(default=None, repr=False, kw_only=True)
    counter: Callable[[], int] | None = field(default=None, repr=False, kw_only=True)

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in _ROUTING_FIELDS:
            notify = self.__dict__.get("on_change")
            if notify is not None:
                notify()

    @property
    def active(self) -> int:
        """Connections in use: held by this process plus, if a data plane counts its own, those."""
        counter = self.__dict__.get("counter")
        return self.held + (counter() if counter is not None else 0)

    @active.setter
    def active(self, value: int) -> None:
        self.held = value

    def touch(self) -> None:
        self.last_activity = time.monotonic()


_ROUTING_FIELDS = frozenset({"port", "wake", "host"})


class Proxy:
    """Asyncio TCP server routing HTTP/1.x connections by Host header."""

    def __init__(
        self, host: str, port: int, *, wake_timeout: float, one_request: bool = False, edge: bool = False
    ) -> None:
        self.host = host
        self.port = port
        self.wake_timeout = wake_timeout
        self.one_request = one_request or edge
        """Behind nginx (nginx.NginxProxy): ask the app to close after its answer (`Connection: close`), so
        a connection nginx keeps in a pool never stays spliced to an upstream that a switch retired."""
        self.edge = edge
        """Facing clients (INKMCP_PROXY_ENGINE=python): set the forwarded headers (`with_forwarded`) and pass
        one request per connection (module docstring). Behind nginx it is False: nginx set them already."""
        self._routes: dict[str, Route] = {}
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        self._upstreams: dict[int, int] = {}  # upstream port -> connections spliced to it right now

    # -- routing table -------------------------------------------------------------------------

    def connections_to(self, port: int) -> int:
        return self._upstreams.get(port, 0)

    async def drain(self, port: int, timeout: float) -> bool:
        """Wait (at most `timeout` s) until no connection is spliced to upstream `port`; True if none is.

        Called after a route moved off `port` and before its process is stopped, so a request the
        proxy forwarded just before the switch gets its answer instead of a dropped connection.
        Keep-alive connections stay pinned to their first upstream, hence the bound.
        """
        deadline = time.monotonic() + timeout
        while self._upstreams.get(port, 0):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True


    def set_route(self, route: Route) -> None:
        """Route `route.host` to `route`; raises RouteConflict if another owner holds that host."""
        if not route.owner:
            raise ValueError("a route needs an owner (the service id)")
        host = route.host.lower()
        held = self._routes.get(host)
        if held is not None and held is not route and held.owner != route.owner:
            raise RouteConflict(host)
        self._routes[host] = route

    def get_route(self, host: str) -> Route | None:
        return self._routes.get(host.lower())

    def routes(self) -> list[Route]:
        """Every route, for a data plane that renders them (nginx.NginxProxy)."""
        return list(self._routes.values())

    def remove_route(self, host: str, owner: str) -> bool:
        """Remove the route of `host` only if `owner` holds it; returns whether it did."""
        held = self._routes.get(host.lower())
        if held is None or held.owner != owner:
            return False
        del self._routes[host.lower()]
        return True

    def move_route(self, route: Route, new_host: str) -> None:
        """Re-key `route` (a service renamed) to `new_host`, all or nothing: if another owner holds
        `new_host` it raises RouteConflict and the old host keeps routing as before."""
        new = new_host.lower()
        held = self._routes.get(new)
        if held is not None and held is not route and held.owner != route.owner:
            raise RouteConflict(new)
        self.remove_route(route.host, route.owner)
        route.host = new
        self._routes[new] = route

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, self.host, self.port, limit=MAX_HEAD_BYTES, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._conns):
            task.cancel()
        if self._conns:
            await asyncio.gather(*self._conns, return_exceptions=True)

    # -- connections ---------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels connections. Ending normally keeps asyncio's server callback from
            # logging "exception never retrieved" for every connection open at shutdown.
            pass
        finally:
            self._conns.discard(task)
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _nodelay(writer)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            await _respond(writer, 431, "Request Header Fields Too Large", "request head exceeds 64 KiB\n")
            return
        except asyncio.IncompleteReadError:
            return
        host = parse_host(head)
        if host is None:
            await _respond(writer, 400, "Bad Request", "missing or invalid Host header\n")
            return
        route = self._routes.get(host)
        if route is None:
            await _respond(writer, 404, "Not Found", f"no service is deployed at {host}\n")
            return
        route.held += 1
        route.touch()
        try:
            upstream = await self._connect(route, writer, host)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            up_port = up_writer.get_extra_info("peername")[1]
            try:
                if self.edge:
                    await self._edge_exchange(head, host, reader, writer, up_reader, up_writer, route)
                    return
                up_writer.write(close_after(head) if self.one_request else head)
                await _splice(reader, writer, up_reader, up_writer, route)
            finally:
                up_writer.close()
                self._forget(up_port)
        finally:
            route.held -= 1
            route.touch()

    async def _connect(
        self, route: Route, writer: asyncio.StreamWriter, host: str
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """Open the upstream connection, waking the service first if it sleeps."""
        for attempt in range(2):
            port = route.port
            if port is None:
                if route.wake is None:
                    await _respond(writer, 502, "Bad Gateway", f"{host} is not running\n")
                    return None
                try:
                    port = await asyncio.wait_for(route.wake(), self.wake_timeout)
                except TimeoutError:
                    await _respond(
                        writer, 504, "Gateway Timeout",
                        f"{host} did not start within {self.wake_timeout:g}s\n",
                    )  # fmt: skip
                    return None
                except WakeFailed as exc:
                    # --- issue 13 (credits): a refused wake (402) says why, not "failed to start"
                    text = exc.reason if exc.status != 502 else f"{host} failed to start: {exc.reason}"
                    await _respond(writer, exc.status, exc.title, f"{text}\n")
                    # --- end
                    return None
            # Counted from before the connect, so `drain(port)` waits for a connection still being made.
            self._upstreams[port] = self._upstreams.get(port, 0) + 1
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port, limit=CHUNK), CONNECT_TIMEOUT
                )
            except (TimeoutError, OSError):
                self._forget(port)
                # The route moved while we connected (a release switched it and stopped the old port, or
                # the service was put to sleep): retry once on the current port, or via wake.
                if attempt == 0 and route.port != port:
                    continue
                await _respond(writer, 502, "Bad Gateway", f"{host} is not accepting connections\n")
                return None
            _nodelay(up_writer)
            return up_reader, up_writer  # still counted: _handle forgets it when the splice ends
        return None

    # --- proxy12: the forwarded headers when this proxy faces clients
    async def _edge_exchange(
        self,
        head: bytes,
        host: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        up_reader: asyncio.StreamReader,
        up_writer: asyncio.StreamWriter,
        route: Route,
    ) -> None:
        """One request with the proxy's forwarded headers. Only this head is rewritten, so nothing else of the
        client's may reach the app as a request of its own: the app is asked to close after its answer, and of
        the client's bytes after the head only the body the head declares goes up (none, Content-Length bytes,
        or a chunked body as it comes, the app closing after it). An Upgrade request without a body turns
        into a tunnel only once the app answers 101; any other answer is passed and the connection ends."""
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        head = with_forwarded(head, client=str(peer[0]) if peer else "", host=host, port=int(local[1]) if local else 0)
        body, upgrade = _body_of(head)
        if upgrade and body == 0:
            up_writer.write(head)
            first = await _answer_start(up_reader)
            writer.write(first)
            await writer.drain()
            if first[9:12] == b"101" and first.startswith(b"HTTP/1."):
                await _splice(reader, writer, up_reader, up_writer, route)
            else:
                await _answer_only(reader, writer, up_reader, up_writer, route)
            return
        up_writer.write(close_after(_without_upgrade(head) if upgrade else head))
        await _splice(reader, writer, up_reader, up_writer, route, upload_limit=body)

    # --- end

    def _forget(self, port: int) -> None:
        left = self._upstreams[port] - 1
        if left:
            self._upstreams[port] = left
        else:
            del self._upstreams[port]


async def _splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    route: Route,
    upload_limit: int | None = None,
) -> None:
    """Copy both directions until the upstream is done.

    The client may half-close after its request (we pass the EOF on and keep reading the
    response); once the upstream side ends nothing more can be answered, so everything closes.
    `upload_limit`: copy at most that many of the client's bytes up (None: all), then stop reading them.
    """
    upload = asyncio.create_task(_pipe(reader, up_writer, route) if upload_limit is None
                                 else _pipe_exactly(reader, up_writer, route, upload_limit))  # fmt: skip
    try:
        await _pipe(up_reader, writer, route)
    finally:
        upload.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await upload


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, route: Route) -> None:
    try:
        while True:
            data = await src.read(CHUNK)
            if not data:
                break
            route.last_activity = time.monotonic()
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        return
    with contextlib.suppress(OSError, RuntimeError):
        if dst.can_write_eof():
            dst.write_eof()


# --- proxy12: the edge's request handling (Proxy._edge_exchange)
async def _pipe_exactly(src: asyncio.StreamReader, dst: asyncio.StreamWriter, route: Route, n: int) -> None:
    """Copy `n` bytes (a body of declared length), then nothing more: a pipelined request after it never goes up
    with headers this proxy did not rewrite. The client's EOF before that is passed on, as `_pipe` does."""
    try:
        while n > 0:
            data = await src.read(min(n, CHUNK))
            if not data:
                with contextlib.suppress(OSError, RuntimeError):
                    if dst.can_write_eof():
                        dst.write_eof()
                return
            n -= len(data)
            route.last_activity = time.monotonic()
            dst.write(data)
            await dst.drain()
    except (ConnectionError, OSError):
        return
    await asyncio.Event().wait()  # until the answer ends (the splice cancels this)


async def _answer_start(up_reader: asyncio.StreamReader) -> bytes:
    """The first bytes of the app's answer, at least its status line's code (or all there is before EOF)."""
    data = b""
    while len(data) < 12:
        more = await asyncio.wait_for(up_reader.read(CHUNK), HEAD_TIMEOUT)
        if not more:
            break
        data += more
    return data


async def _answer_only(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
    route: Route,
) -> None:
    """An Upgrade the app did not accept: its answer passes, nothing more of the client's goes up. If the client
    sends anything more (its next request) the connection ends (clients retry on a new one); its EOF is passed
    on and the answer finishes."""
    download = asyncio.create_task(_pipe(up_reader, writer, route))
    watch = asyncio.create_task(reader.read(1))
    try:
        await asyncio.wait({download, watch}, return_when=asyncio.FIRST_COMPLETED)
        if watch.done() and not watch.exception() and watch.result() == b"" and not download.done():
            with contextlib.suppress(OSError, RuntimeError):
                up_writer.write_eof()
            await download
    finally:
        for task in (download, watch):
            task.cancel()
        await asyncio.gather(download, watch, return_exceptions=True)


def _header_lines(head: bytes) -> list[bytes]:
    return [line for line in head.split(b"\r\n")[1:] if line]


def with_forwarded(head: bytes, *, client: str, host: str, port: int, scheme: str = "http") -> bytes:
    """`head` with the proxy's forwarded headers, as nginx sets them (nginx.py): every client line whose name, in any
    casing and with `_` for `-`, is one of FORWARDED_SET or FORWARDED_ONLY_DROPPED removed, then X-Forwarded-For and
    X-Real-IP = the connecting address (replaced, never appended: nothing in front of this proxy is trusted),
    X-Forwarded-Host = the routed host (with the proxy's port unless 80), -Proto and -Port from the connection.
    `head` passed `parse_host` (no obs-fold, no space before a colon), so each line's name is what precedes ":"."""
    lines = head.split(b"\r\n")
    kept = [line for line in lines[1:]
            if line and line.split(b":", 1)[0].lower().replace(b"_", b"-") not in _FORWARDED_KEYS]  # fmt: skip
    fwd_host = host if port == 80 else f"{host}:{port}"
    added = (f"X-Forwarded-For: {client}\r\nX-Real-IP: {client}\r\nX-Forwarded-Host: {fwd_host}\r\n"
             f"X-Forwarded-Proto: {scheme}\r\nX-Forwarded-Port: {port}").encode("latin-1")  # fmt: skip
    return b"\r\n".join([lines[0], *kept, added, b"", b""])


def _body_of(head: bytes) -> tuple[int | None, bool]:
    """(the body's length as the head declares it: 0 for none, None for chunked, odd or conflicting lengths;
    whether it asks for an Upgrade)."""
    lengths: set[bytes] = set()
    chunked = upgrade = False
    for line in _header_lines(head):
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"transfer-encoding":
            chunked = True
        elif name == b"content-length":
            lengths.add(value.strip(b" \t"))
        elif name == b"upgrade":
            upgrade = True
    if chunked or len(lengths) > 1 or (lengths and not next(iter(lengths)).isdigit()):
        return None, upgrade  # the app reads it and closes after its answer
    return (int(lengths.pop()) if lengths else 0), upgrade


def _without_upgrade(head: bytes) -> bytes:
    lines = head.split(b"\r\n")
    kept = [line for line in lines[1:] if line and line.split(b":", 1)[0].lower() != b"upgrade"]
    return b"\r\n".join([lines[0], *kept, b"", b""])


# --- end


_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_HOST_VALUE = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(?P<port>[0-9]{1,5}))?\Z")


def parse_host(head: bytes) -> str | None:
    """Hostname (lowercase, without port) the request is for; None when the head is ambiguous (answer 400).

    Strict as RFC 9112 asks of a server, because a front proxy or WAF that reads the head by the
    RFC must never see another tenant's hostname than the one we route on: a folded line (obs-fold),
    whitespace between a field name and its colon, more than one Host, or a Host value that is not
    `host[:port]` (userinfo, junk after the port) are all refused. An absolute-form target names the
    host itself; its Host header is then ignored, as RFC 9112 section 3.2.2 says.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes anything
        return None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    parts = lines[0].split(" ")
    if len(parts) != 3:
        return None
    hosts: list[str] = []
    for line in lines[1:]:
        if not line or line[0] in " \t":
            return None  # obs-fold: a continuation line, or an empty line inside the head
        name, sep, rest = line.partition(":")
        if not sep or not _TOKEN.match(name):
            return None  # no colon, or whitespace before it
        if name.lower() == "host":
            hosts.append(rest.strip(" \t"))
    if len(hosts) > 1:
        return None
    target = parts[1]
    if "://" in target:
        value = target.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
    elif hosts:
        value = hosts[0]
    else:
        return None
    match = _HOST_VALUE.match(value)
    if match is None:
        return None
    port = match.group("port")
    if port is not None and not 0 < int(port) < 65536:
        return None
    host = match.group("host").rstrip(".").lower()
    if not host or len(host) > 253 or host.startswith(("-", ".")) or ".." in host:
        return None
    return host


def close_after(head: bytes) -> bytes:
    """`head` asking the server to close after its answer: Connection and Keep-Alive lines replaced by
    `Connection: close`. A head with an Upgrade line is left as it is (the connection becomes the tunnel)."""
    lines = head.split(b"\r\n")
    fields = [line for line in lines[1:] if line]
    if any(line[:8].lower() == b"upgrade:" for line in fields):
        return head
    kept = [line for line in fields if line.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")]
    return b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])


async def _respond(writer: asyncio.StreamWriter, status: int, reason: str, body: str) -> None:
    payload = body.encode()
    writer.write(
        (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\nServer: inkmcp\r\n\r\n"
        ).encode()
        + payload
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
