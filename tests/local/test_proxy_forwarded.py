"""The forwarded headers when InkMCP's own Python proxy faces the clients (INKMCP_PROXY_ENGINE=python).

redteam2's attack (tests/security/test_redteam2_forwarded_headers.py) against the other engine: a visitor's
X-Forwarded-Host/-For/-Proto, X-Real-IP and Forwarded reached the app as sent (the Python proxy rewrote nothing).
Now it sets them as nginx does (nginx.py; tests/local/test_nginx_module.py checks nginx with and without InkMCP's
module) and, since it rewrites only the head it reads, lets no second request of the client's through unrewritten:
the app here is the worst case, one that keeps serving a connection after `Connection: close` and serves pipelined
requests, and logs every head it gets (the proof from the app's side that a forged head never arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest

from inkmcp.providers.compute.local.nginx import ProxySettings, make_proxy
from inkmcp.providers.compute.local.proxy import Proxy, Route, with_forwarded

HOST = "alice.p.localhost"
# Every form of the forwarded headers a visitor may forge: duplicates, odd casing, `_` for `-` (a WSGI server maps
# X_Forwarded_Host to the same HTTP_X_FORWARDED_HOST), and the names only dropped (Forwarded, -Prefix, -Ssl...).
FORGED = (b"X-Forwarded-For: 6.6.6.6\r\nx-forwarded-for: 6.6.6.7\r\nX-FORWARDED-HOST: evil.example\r\n"
          b"X_Forwarded_Host: evil.example\r\nX-Forwarded_Proto: https\r\nx-real-ip: 6.6.6.6\r\nX-Real-Ip: 6.6.6.8\r\n"
          b"X_REAL_IP: 6.6.6.9\r\nX-Forwarded-Port: 443\r\nx_forwarded_port: 444\r\n"
          b"Forwarded: for=6.6.6.6;host=evil.example\r\nFORWARDED: host=evil.example\r\n"
          b"X-Forwarded-Prefix: /evil\r\nX-Forwarded-Ssl: on\r\nX_Forwarded_Server: evil.example\r\n"
          b"X-Forwarded-Scheme: https\r\nX-Forwarded-Uri: /evil\r\nX-Forwarded-Method: DELETE\r\n")  # fmt: skip
_OWNED = {b"x-forwarded-for", b"x-real-ip", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port",
          b"forwarded", b"x-forwarded-prefix", b"x-forwarded-ssl", b"x-forwarded-server", b"x-forwarded-scheme",
          b"x-forwarded-uri", b"x-forwarded-method"}  # fmt: skip


def forwarded_view(head: bytes) -> list[tuple[bytes, bytes]]:
    """What an app reads about forwarding from a received head: (name, lowercased with `_` as `-`; value) of each
    line whose name is one the proxy owns, in order."""
    out = []
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower().replace(b"_", b"-")
        if key in _OWNED:
            out.append((key, value.strip()))
    return out


def expected(port: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-forwarded-for", b"127.0.0.1"), (b"x-real-ip", b"127.0.0.1"),
            (b"x-forwarded-host", f"{HOST}:{port}".encode()), (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-port", str(port).encode())]  # fmt: skip


def test_with_forwarded_replaces_every_spelling_and_keeps_the_rest():
    head = b"GET /x HTTP/1.1\r\nHost: alice.p.localhost\r\n" + FORGED + b"Accept: */*\r\nX-Forwarded-Fork: kept\r\n\r\n"
    out = with_forwarded(head, client="10.0.0.7", host=HOST, port=8080)
    assert out.startswith(b"GET /x HTTP/1.1\r\nHost: alice.p.localhost\r\nAccept: */*\r\nX-Forwarded-Fork: kept\r\n")
    assert out.endswith(b"\r\n\r\n") and b"evil" not in out and b"6.6.6" not in out
    assert forwarded_view(out) == [(b"x-forwarded-for", b"10.0.0.7"), (b"x-real-ip", b"10.0.0.7"),
                                   (b"x-forwarded-host", b"alice.p.localhost:8080"), (b"x-forwarded-proto", b"http"),
                                   (b"x-forwarded-port", b"8080")]  # fmt: skip
    port80 = with_forwarded(b"GET / HTTP/1.1\r\nHost: a.b\r\n\r\n", client="::1", host="a.b", port=80)
    assert b"\r\nX-Forwarded-Host: a.b\r\n" in port80 and b"\r\nX-Forwarded-For: ::1\r\n" in port80


class App:
    """A keep-alive app that serves pipelined requests and ignores `Connection: close`; logs every head."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
                self.heads.append(head)
                path = head.split(b" ")[1]
                length = next((int(v) for n, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
                               if n.lower() == b"content-length"), 0)  # fmt: skip
                body = await reader.readexactly(length) if length else b""
                if path == b"/ws":
                    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\n\r\n")
                    while data := await reader.read(4096):
                        writer.write(data)
                    break
                answer = head + b"\n" + body
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        writer.close()

    def paths(self) -> list[bytes]:
        return [h.split(b" ")[1] for h in self.heads]


@pytest.fixture
async def edge(tmp_path) -> AsyncIterator[tuple[Proxy, App]]:
    app = App()
    app.server = await asyncio.start_server(app.handle, "127.0.0.1", 0)
    proxy = make_proxy("127.0.0.1", 0, wake_timeout=5, runtime_dir=tmp_path, settings=ProxySettings(engine="python"))
    assert isinstance(proxy, Proxy) and proxy.edge
    await proxy.start()
    proxy.set_route(Route(host=HOST, port=app.server.sockets[0].getsockname()[1], owner="svc-alice"))
    try:
        yield proxy, app
    finally:
        await proxy.close()
        app.server.close()
        await app.server.wait_closed()


def _talk(port: int, data: bytes, *, then: bytes = b"", linger: float = 0.3) -> tuple[bytes, bool]:
    """Send `data`, read the first answer (by its Content-Length), send `then`, and read for `linger` seconds
    more; returns everything read and whether the proxy closed the connection by then."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        out = b""
        while b"\r\n\r\n" not in out or len(out.partition(b"\r\n\r\n")[2]) < int(
                out.partition(b"Content-Length: ")[2].split(b"\r\n", 1)[0] or 0):
            chunk = sock.recv(65536)
            if not chunk:
                return out, True
            out += chunk
        with contextlib.suppress(OSError):
            sock.sendall(then)
        sock.settimeout(linger)
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except TimeoutError:
            return out, False
        except ConnectionResetError:
            pass
        return out, True


def _get(path: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n" + extra + b"\r\n"


async def test_the_app_sees_the_proxys_forwarded_headers_never_the_visitors(edge):
    proxy, app = edge
    answer, _ = await asyncio.to_thread(_talk, proxy.port, _get(b"/reset", FORGED))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:200]
    assert app.paths() == [b"/reset"]
    assert forwarded_view(app.heads[0]) == expected(proxy.port), app.heads[0]
    assert b"evil" not in app.heads[0] and b"6.6.6" not in app.heads[0]
    assert b"\r\nConnection: close" in app.heads[0]  # one request per connection (only this head was rewritten)


async def test_a_pipelined_forged_request_never_reaches_the_app(edge):
    """A request, a POST with a body, and an Upgrade the app refuses, each followed on the same connection by a
    request with forged headers: the app (which would serve it) never gets it; each first request is answered."""
    proxy, app = edge
    forged = _get(b"/forged", FORGED)
    cases = [_get(b"/one") + forged,
             b"POST /two HTTP/1.1\r\nHost: alice.p.localhost\r\nContent-Length: 5\r\n\r\nhello" + forged]  # fmt: skip
    for data in cases:
        answer, _ = await asyncio.to_thread(_talk, proxy.port, data)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert answer.endswith(b"\n\nhello") or answer.endswith(b"\nhello"), answer[-100:]  # the body went up whole
    # an Upgrade the app does not accept (it answers 200 and would go on): the client's next request ends the
    # connection instead of reaching the app
    refused = _get(b"/no-upgrade", b"Upgrade: websocket\r\nConnection: Upgrade\r\n")
    answer, closed = await asyncio.to_thread(_talk, proxy.port, refused, then=forged)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.count(b"HTTP/1.1 ") == 1, answer[:300]
    assert closed  # by the proxy, on the client's next bytes
    assert app.paths() == [b"/one", b"/two", b"/no-upgrade"], app.paths()
    assert all(forwarded_view(h) == expected(proxy.port) for h in app.heads), app.heads


async def test_websocket_upgrade_through_the_edge_is_a_tunnel_with_the_proxys_headers(edge):
    proxy, app = edge
    head = _get(b"/ws", b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" + FORGED)

    def talk() -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(head)
            got = b""
            while b"\r\n\r\n" not in got:
                got += sock.recv(4096)
            answer, _, echoed = got.partition(b"\r\n\r\n")
            for n in range(3):
                sock.sendall(b"ping-%d;" % n)
            while len(echoed) < 21:
                echoed += sock.recv(4096)
            return answer, echoed

    answer, echoed = await asyncio.to_thread(talk)
    assert answer.startswith(b"HTTP/1.1 101 ") and echoed == b"ping-0;ping-1;ping-2;"
    assert forwarded_view(app.heads[0]) == expected(proxy.port) and b"Connection: close" not in app.heads[0]
