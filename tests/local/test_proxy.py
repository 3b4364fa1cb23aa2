"""The proxy on its own: status codes for the failure cases, keep-alive and chunked pass-through."""

from __future__ import annotations

import asyncio

import httpx

from inkmcp.providers.compute.local.proxy import Proxy, Route, WakeFailed, parse_host


def test_parse_host():
    assert parse_host(b"GET / HTTP/1.1\r\nHost: Web.Demo.localhost:8080\r\n\r\n") == "web.demo.localhost"
    assert parse_host(b"GET http://a.b.localhost/x HTTP/1.1\r\nHost: other\r\n\r\n") == "a.b.localhost"
    assert parse_host(b"GET / HTTP/1.1\r\nhOsT:x.y.z\r\n\r\n") == "x.y.z"
    assert parse_host(b"GET / HTTP/1.0\r\n\r\n") is None
    assert parse_host(b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n") is None


async def _upstream() -> tuple[asyncio.base_events.Server, int]:
    """Keep-alive HTTP/1.1 server answering every request with a chunked echo of its path."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ")[1]
                chunks = [b"path=", path, b"\n"]
                body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_status_codes_and_passthrough():
    proxy = Proxy("127.0.0.1", 0, wake_timeout=0.3)
    await proxy.start()
    server, port = await _upstream()

    async def never() -> int:
        await asyncio.sleep(10)
        return 0

    async def broken() -> int:
        raise WakeFailed("process 'web' exited with code 1")

    proxy.set_route(Route(host="ok.p.localhost", port=port))
    proxy.set_route(Route(host="down.p.localhost", port=1))
    proxy.set_route(Route(host="slow.p.localhost", port=None, wake=never))
    proxy.set_route(Route(host="broken.p.localhost", port=None, wake=broken))
    base = f"http://127.0.0.1:{proxy.port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            responses = [await client.get(f"/n{i}", headers={"Host": "ok.p.localhost"}) for i in range(3)]
            assert [r.text for r in responses] == ["path=/n0\n", "path=/n1\n", "path=/n2\n"]
            assert proxy.get_route("ok.p.localhost").active == 1  # one kept-alive connection, reused

        async def fresh(host: str) -> httpx.Response:
            async with httpx.AsyncClient(base_url=base, timeout=5) as client:
                return await client.get("/", headers={"Host": host})

        assert (await fresh("down.p.localhost")).status_code == 502
        assert (await fresh("slow.p.localhost")).status_code == 504
        resp = await fresh("broken.p.localhost")
        assert resp.status_code == 502 and "exited with code 1" in resp.text
        resp = await fresh("missing.p.localhost:8080")
        assert resp.status_code == 404 and "missing.p.localhost" in resp.text
    finally:
        await proxy.close()
        server.close()
        await server.wait_closed()
    assert proxy.get_route("ok.p.localhost").active == 0
