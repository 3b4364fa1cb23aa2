"""The proxy on its own: status codes for the failure cases, keep-alive and chunked pass-through,
route ownership (one account's service never takes or drops another's hostname)."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from inkmcp.providers.compute.base import ReleaseFailed, ServiceKey, Step
from inkmcp.providers.compute.local.proxy import Proxy, Route, RouteConflict, WakeFailed, parse_host
from tests.local.conftest import WEB_APP, Events, get, no_record, request_for, web_plan


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

    proxy.set_route(Route(host="ok.p.localhost", port=port, owner="svc-ok"))
    proxy.set_route(Route(host="down.p.localhost", port=1, owner="svc-down"))
    proxy.set_route(Route(host="slow.p.localhost", port=None, wake=never, owner="svc-slow"))
    proxy.set_route(Route(host="broken.p.localhost", port=None, wake=broken, owner="svc-broken"))
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


async def _named_upstream(text: bytes) -> tuple[asyncio.base_events.Server, int]:
    """One-shot HTTP server answering every request with `text`, closing the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(text), text))
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_a_route_is_never_taken_or_removed_by_another_owner():
    """Red-team #3/#3b at the proxy: mallory's service cannot take alice's hostname, nor drop it."""
    proxy = Proxy("127.0.0.1", 0, wake_timeout=1)
    await proxy.start()
    alice_srv, alice_port = await _named_upstream(b"alice")
    mallory_srv, mallory_port = await _named_upstream(b"mallory")
    host = "web.shop.localhost"

    async def fetch(h: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=5) as client:
            return await client.get(f"http://127.0.0.1:{proxy.port}/", headers={"Host": h})

    try:
        alice = Route(host=host, port=alice_port, owner="svc-alice")
        proxy.set_route(alice)
        hijack = Route(host=host.upper(), port=mallory_port, owner="svc-mallory")
        with pytest.raises(RouteConflict):
            proxy.set_route(hijack)
        assert (await fetch(host)).text == "alice"
        assert proxy.remove_route(host, "svc-mallory") is False  # delete of a homonym
        assert (await fetch(host)).text == "alice"
        own = Route(host="web.mallory.localhost", port=mallory_port, owner="svc-mallory")
        proxy.set_route(own)
        with pytest.raises(RouteConflict):  # rename onto alice's host: refused, the old host keeps working
            proxy.move_route(own, host)
        assert own.host == "web.mallory.localhost" and (await fetch("web.mallory.localhost")).text == "mallory"
        assert (await fetch(host)).text == "alice"
        proxy.set_route(Route(host=host, port=alice_port, owner="svc-alice"))  # the owner may replace it
        proxy.move_route(own, "web.mallory2.localhost")
        assert (await fetch("web.mallory.localhost")).status_code == 404
        assert (await fetch("web.mallory2.localhost")).text == "mallory"
        assert proxy.remove_route(host, "svc-alice") is True
        assert (await fetch(host)).status_code == 404
        with pytest.raises(ValueError, match="owner"):
            proxy.set_route(Route(host="x.y.localhost", port=1, owner=""))
    finally:
        await proxy.close()
        for srv in (alice_srv, mallory_srv):
            srv.close()
            await srv.wait_closed()


async def test_another_accounts_homonym_service_cannot_take_or_drop_the_url(make_provider, checkouts, project_ids):
    """Same hostname, two accounts (the store forbids it; this is the proxy's own line of defence):
    the second release fails at the switch, and deleting it leaves the first one serving."""
    provider = await make_provider()
    alice = ServiceKey(account_id="alice", project_id=project_ids(), service_id="svc-alice-web",
                       project_name="shop", service_name="web")
    mallory = ServiceKey(account_id="mallory", project_id=project_ids(), service_id="svc-mallory-web",
                         project_name="shop", service_name="web")
    await provider.release(request_for(alice, checkouts({"app.py": WEB_APP}), web_plan(), env={"MESSAGE": "alice"}),
                           Events(), no_record)
    with pytest.raises(ReleaseFailed) as err:
        await provider.release(
            request_for(mallory, checkouts({"app.py": WEB_APP}), web_plan(), env={"MESSAGE": "mallory"}),
            Events(), no_record,
        )
    assert err.value.step == Step.switching and "routed to another service" in err.value.reason
    assert (await get(provider, alice)).text == "alice\n"
    await provider.remove(mallory)
    assert (await get(provider, alice)).text == "alice\n"
    # alice redeploys: still hers
    await provider.release(request_for(alice, checkouts({"app.py": WEB_APP}), web_plan(), env={"MESSAGE": "v2"}),
                           Events(), no_record)
    assert (await get(provider, alice)).text == "v2\n"
    await provider.remove(alice)
    assert (await get(provider, alice)).status_code == 404



@pytest.mark.parametrize(
    ("head", "host"),
    [
        (b"GET / HTTP/1.1\r\nHost: Web.App.localhost.:8080\r\n\r\n", "web.app.localhost"),
        (b"GET / HTTP/1.1\r\nhost:web.app.localhost\r\n\r\n", "web.app.localhost"),
        (b"GET http://web.app.localhost:8080/x HTTP/1.1\r\nHost: other.localhost\r\n\r\n", "web.app.localhost"),
        (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "[::1]"),
        (b"GET / HTTP/1.1\r\nX-Pad: x\r\n Host: a.localhost\r\nHost: b.localhost\r\n\r\n", None),  # obs-fold
        (b"GET / HTTP/1.1\r\nHost : a.localhost\r\n\r\n", None),  # whitespace before the colon
        (b"GET / HTTP/1.1\r\nHost: a.localhost\r\nHost: b.localhost\r\n\r\n", None),  # two Hosts
        (b"GET / HTTP/1.1\r\nHost: a.localhost:80.b.localhost\r\n\r\n", None),  # junk after the port
        (b"GET / HTTP/1.1\r\nHost: a.localhost:99999\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\nHost: x@a.localhost\r\n\r\n", None),  # userinfo
        (b"GET / HTTP/1.1\r\nHost: a.localhost, b.localhost\r\n\r\n", None),
        (b"GET / HTTP/1.1\r\n\r\n", None),
        (b"GET /\r\nHost: a.localhost\r\n\r\n", None),
    ],
)
def test_parse_host_refuses_every_head_an_rfc_parser_would_read_differently(head: bytes, host: str | None) -> None:
    assert parse_host(head) == host


async def test_drain_waits_for_requests_already_forwarded_to_an_upstream():
    """A blue/green switch stops the old version only after the requests the proxy already forwarded to it
    are answered (a test hammering the switch saw 'Server disconnected' without this)."""
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nold")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    proxy = Proxy("127.0.0.1", 0, wake_timeout=1)
    await proxy.start()
    try:
        route = Route(host="d.p.localhost", port=port, owner="svc-d")
        proxy.set_route(route)
        async with httpx.AsyncClient(timeout=10) as client:
            pending = asyncio.create_task(
                client.get(f"http://127.0.0.1:{proxy.port}/", headers={"Host": "d.p.localhost"})
            )
            for _ in range(400):  # until the proxy has forwarded it
                if proxy.connections_to(port):
                    break
                await asyncio.sleep(0.005)
            assert proxy.connections_to(port) == 1
            route.port = 1  # the switch: new requests go elsewhere
            assert await proxy.drain(port, 0.05) is False  # still in flight: the old version must not stop
            release.set()
            assert await proxy.drain(port, 5) is True
            assert (await pending).text == "old"
            assert proxy.connections_to(port) == 0
    finally:
        await proxy.close()
        server.close()
