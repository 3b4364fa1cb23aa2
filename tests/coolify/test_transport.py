"""The Coolify client's HTTP/1.1 transport (inkmcp/coolify/transport.py) against real sockets: a small asyncio
server per test that answers as told (Content-Length, chunked, until close, gzip, a close of an idle connection,
silence), so each framing rule and each error the client's retry rules depend on is seen on the wire."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from inkmcp.coolify.transport import LeanTransport

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]
"""Gets a request's head (its body is read by the server loop), writes an answer; False ends the connection."""


class Server:
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.connections = 0
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)  # fmt: skip
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                if not await self.answer(head, reader, writer):
                    return
        finally:
            writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Server]]]:
    servers: list[Server] = []

    async def start(answer: Answer) -> Server:
        s = Server(answer)
        s.server = await asyncio.start_server(s._serve, "127.0.0.1", 0)
        servers.append(s)
        return s

    yield start
    for s in servers:
        assert s.server is not None
        s.server.close()


def json_answer(payload: object, status: int = 200, extra: bytes = b"") -> Answer:
    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        body = json.dumps(payload).encode()
        writer.write(b"HTTP/1.1 %d OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n"
                     % (status, len(body), extra) + body)
        await writer.drain()
        return b"close" not in extra.lower()

    return answer


async def test_keep_alive_one_connection_for_many_requests_with_bodies_and_headers_as_sent(serve) -> None:
    s = await serve(json_answer({"uuid": "u1"}))
    transport = LeanTransport()
    async with httpx.AsyncClient(base_url=s.url, transport=transport) as c:
        for i in range(5):
            r = await c.post("/api/v1/projects", json={"name": f"p{i}"}, params={"a": "b c"},
                             headers={"Authorization": "Bearer t"})
            assert r.status_code == 200 and r.json() == {"uuid": "u1"}
    assert s.connections == 1 and transport.connects == 1
    assert [json.loads(b) for b in s.bodies] == [{"name": f"p{i}"} for i in range(5)]
    first = s.heads[0].split(b"\r\n")
    assert first[0] == b"POST /api/v1/projects?a=b+c HTTP/1.1"
    assert b"Authorization: Bearer t" in first and any(h.lower().startswith(b"host: 127.0.0.1:") for h in first)


async def test_chunked_gzip_and_until_close_bodies_are_read_whole(serve) -> None:
    payload = {"data": ["x" * 100] * 50}
    raw = gzip.compress(json.dumps(payload).encode())

    async def chunked(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(raw), 700):
            part = raw[i:i + 700]
            writer.write(b"%x;ext=1\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\nX-Trailer: y\r\n\r\n")
        await writer.drain()
        return True

    s = await serve(chunked)
    transport = LeanTransport()
    async with httpx.AsyncClient(base_url=s.url, transport=transport) as c:
        assert (await c.get("/a")).json() == payload
        assert (await c.get("/b")).json() == payload
    assert s.connections == 1  # a chunked answer read to its end leaves the connection usable

    async def until_close(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + json.dumps(payload).encode())
        await writer.drain()
        return False  # the end of the connection ends the body

    s2 = await serve(until_close)
    async with httpx.AsyncClient(base_url=s2.url, transport=LeanTransport()) as c:
        assert (await c.get("/a")).json() == payload
        assert (await c.get("/b")).json() == payload
    assert s2.connections == 2  # never reused


async def test_connection_close_and_a_server_closed_idle_connection_get_a_fresh_connection(serve) -> None:
    s = await serve(json_answer({"ok": 1}, extra=b"Connection: close\r\n"))
    transport = LeanTransport()
    async with httpx.AsyncClient(base_url=s.url, transport=transport) as c:
        for _ in range(3):
            assert (await c.get("/x")).json() == {"ok": 1}
    assert s.connections == 3

    answered = 0

    async def once(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal answered
        answered += 1
        await json_answer({"n": answered})(head, reader, writer)
        return False  # the server closes the kept-alive connection right after answering (its idle timeout)

    s2 = await serve(once)
    transport = LeanTransport()
    async with httpx.AsyncClient(base_url=s2.url, transport=transport) as c:
        assert (await c.get("/x")).json() == {"n": 1}
        await asyncio.sleep(0.05)  # the EOF reaches the client's event loop
        assert (await c.post("/y", json={})).json() == {"n": 2}  # not sent on the dead connection: no error
    assert s2.connections == 2 and transport.connects == 2


async def test_idle_connections_past_keepalive_expiry_are_not_reused(serve) -> None:
    s = await serve(json_answer({}))
    transport = LeanTransport(keepalive_expiry=0.05)
    async with httpx.AsyncClient(base_url=s.url, transport=transport) as c:
        await c.get("/a")
        await asyncio.sleep(0.1)
        await c.get("/b")
    assert transport.connects == 2


async def test_errors_are_httpx_errors_the_client_retry_rules_know(serve) -> None:
    # nothing listens: ConnectError (nothing sent)
    probe = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = probe.sockets[0].getsockname()[1]
    probe.close()
    await probe.wait_closed()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", transport=LeanTransport()) as c:
        with pytest.raises(httpx.ConnectError):
            await c.get("/")

    async def silent(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await reader.read(1)  # until the client gives up and closes
        return False

    s = await serve(silent)
    async with httpx.AsyncClient(base_url=s.url, transport=LeanTransport(), timeout=httpx.Timeout(5, read=0.2)) as c:
        with pytest.raises(httpx.ReadTimeout):
            await c.get("/")

    # an answer that is no whole HTTP answer: RemoteProtocolError (the request may have been processed)
    for method, answer, match in (
        ("POST", b"", "without sending a response"),  # closes without a byte
        ("GET", b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"a":', "ended early"),
        ("GET", b"SSH-2.0-OpenSSH\r\n\r\n", "not valid HTTP"),
    ):
        async def reply(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        answer: bytes = answer) -> bool:  # fmt: skip
            writer.write(answer)
            await writer.drain()
            return False

        server = await serve(reply)
        async with httpx.AsyncClient(base_url=server.url, transport=LeanTransport()) as c:
            with pytest.raises(httpx.RemoteProtocolError, match=match):
                await c.request(method, "/deploy", json={} if method == "POST" else None)


async def test_a_cancelled_request_closes_its_connection_and_the_next_one_works(serve) -> None:
    slow = asyncio.Event()

    async def answer(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if b"/slow" in head:
            slow.set()
            await asyncio.sleep(1)
        return await json_answer({"path": head.split(b" ")[1].decode()})(head, reader, writer)

    s = await serve(answer)
    transport = LeanTransport()
    async with httpx.AsyncClient(base_url=s.url, transport=transport) as c:
        task = asyncio.ensure_future(c.get("/slow"))
        await slow.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # the answer to /slow, arriving later, must never be read as the answer to /next
        assert (await c.get("/next")).json() == {"path": "/next"}
    assert transport.connects == 2


async def test_the_coolify_client_over_it_against_the_stand_in(standin, token: str) -> None:  # type: ignore[no-untyped-def]
    from inkmcp.coolify.client import CoolifyClient
    from inkmcp.providers.compute.coolify import policy

    transport = policy.PolicyTransport()
    assert isinstance(transport.inner, LeanTransport)  # what `from_settings` wires in production
    async with CoolifyClient(standin.url, token, transport=transport) as c:
        servers = await c.list_servers()
        projects = [await c.list_projects() for _ in range(3)]
    assert servers is not None and all(p == projects[0] for p in projects)
    assert transport.inner.connects == 1


def test_env_proxy_follows_the_proxy_variables_and_no_proxy() -> None:
    from inkmcp.coolify.transport import env_proxy

    url = httpx.URL("https://coolify.example.com/api/v1/projects")
    assert env_proxy(url, {}) is None
    assert env_proxy(url, {"http": "http://p:3128"}) is None  # no proxy for https
    assert env_proxy(url, {"https": "p:3128"}) == "http://p:3128"
    assert env_proxy(url, {"all": "socks5://p:1080"}) == "socks5://p:1080"
    assert env_proxy(url, {"https": "http://a:1", "all": "http://b:2"}) == "http://a:1"
    for no in ("*", "coolify.example.com", "example.com", ".example.com", "other.org, example.com"):
        assert env_proxy(url, {"https": "http://p:3128", "no": no}) is None, no
    for no in ("other.org", "ample.com.evil", "coolify.example.com:8000"):
        assert env_proxy(url, {"https": "http://p:3128", "no": no}) == "http://p:3128", no
    private = httpx.URL("http://10.0.1.10:8000/api/v1/projects")
    assert env_proxy(private, {"http": "http://p:3128", "no": "10.0.1.10"}) is None
    assert env_proxy(private, {"http": "http://p:3128", "no": "10.0.1.11"}) == "http://p:3128"


async def test_the_coolify_url_goes_through_the_environments_proxy_unless_no_proxy_names_it(
        serve, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The provider as `inkmcp serve` builds it (`from_settings`: PolicyTransport over LeanTransport): with
    HTTP_PROXY set, the request reaches the proxy in absolute form and Coolify sees no connection; with NO_PROXY
    naming Coolify's host it goes direct, on the lean path."""
    from pydantic import SecretStr

    from inkmcp.providers.compute.coolify.provider import CoolifyComputeProvider
    from inkmcp.providers.compute.coolify.settings import CoolifySettings

    coolify, proxy = await serve(json_answer([])), await serve(json_answer([]))
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", proxy.url)

    async def list_projects() -> None:
        settings = CoolifySettings(url=coolify.url, token=SecretStr("1|proxytest"))
        provider = CoolifyComputeProvider.from_settings(settings, tmp_path)
        try:
            assert await provider.client.list_projects() == []
        finally:
            await provider.client.aclose()

    await list_projects()
    assert coolify.connections == 0 and len(proxy.heads) == 1
    assert proxy.heads[0].startswith(f"GET {coolify.url}/api/v1/projects HTTP/1.1\r\n".encode())

    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    await list_projects()
    assert len(proxy.heads) == 1 and coolify.connections == 1
    assert coolify.heads[0].startswith(b"GET /api/v1/projects HTTP/1.1\r\n")


async def test_an_https_coolify_url_is_tunnelled_and_a_refused_tunnel_is_not_sent(
        serve, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """HTTPS_PROXY: a CONNECT to Coolify's host (the name, never resolved here); a proxy that refuses the tunnel
    is "nothing sent" to the client (CoolifyUnavailable naming the proxy), so even a create may be tried again."""
    from inkmcp.coolify.client import CoolifyClient, CoolifyUnavailable, RetryPolicy
    from inkmcp.coolify.models import ProjectCreate
    from inkmcp.providers.compute.coolify import policy

    async def refuse(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return False

    proxy = await serve(refuse)
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    async with CoolifyClient("https://coolify.invalid", "1|proxytest", transport=policy.PolicyTransport(),
                             retry=RetryPolicy(attempts=1)) as c:  # fmt: skip
        with pytest.raises(CoolifyUnavailable, match="through the proxy"):
            await c.create_project(ProjectCreate(name="p-1", description="d"))
    assert len(proxy.heads) == 1
    assert proxy.heads[0].startswith(b"CONNECT coolify.invalid:443 HTTP/1.1\r\n")


async def test_a_send_or_a_free_connection_that_does_not_come_in_time_is_still_bounded() -> None:
    """Issue 8 (overhead7): the transport sets a write timer only when the kernel did not take the whole request at
    once, and a pool timer only when every connection is busy (one heap entry each on the event loop otherwise);
    both waits stay bounded: a peer that never reads gives WriteTimeout, a pool that stays busy PoolTimeout."""
    release = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.close()

    server = await asyncio.start_server(never_reads, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport(),
                                     timeout=httpx.Timeout(5, write=0.3)) as c:  # fmt: skip
            with pytest.raises(httpx.WriteTimeout):
                await c.post("/big", content=b"x" * (64 << 20))  # far more than the socket buffers hold
        async with httpx.AsyncClient(base_url=url, transport=LeanTransport(max_connections=1),
                                     timeout=httpx.Timeout(5, pool=0.3)) as c:  # fmt: skip
            first = asyncio.ensure_future(c.get("/first"))  # holds the only connection: nobody answers
            await asyncio.sleep(0.1)
            with pytest.raises(httpx.PoolTimeout):
                await c.get("/second")
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
    finally:
        release.set()
        server.close()
        await server.wait_closed()
