"""nginx as the local provider's data plane (nginx.NginxProxy): real nginx, real apps, real sockets.

What the Python proxy did and nginx must keep doing: route by Host, answer unknown hosts itself, wake a
sleeping service on its first request (never a 502), count what idle detection needs, switch versions
without a failed request, keep WebSocket connections, and stop exactly the processes it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect as ws_connect

from inkmcp.errors import InvalidArgument
from inkmcp.providers.compute.local import nginx_module
from inkmcp.providers.compute.local.nginx import NginxProxy, ProxySettings, established_to
from inkmcp.providers.compute.local.proxy import Route, close_after
from tests.local.conftest import PY, WEB_APP, Events, get, key_for, no_record, request_for, web_plan
from tests.local.test_provider_lifecycle import WS_ECHO
from tests.support import free_port

# nginx is not optional: the local provider runs on it (scripts/system-deps.sh installs it), so no skip.


async def until(predicate, timeout: float = 10.0, interval: float = 0.01):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(interval)
    raise AssertionError("condition not met in time")


def alive(process: psutil.Process) -> bool:
    """Running and not a zombie; a process that exits between psutil's two reads counts as gone (CI saw
    NoSuchProcess raised from status() right after is_running() said yes)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class App:
    """A stdlib HTTP app on its own port, answering `name` (a process this test starts and stops)."""

    def __init__(self, name: str) -> None:
        self.port = free_port()
        env = {**os.environ, "PORT": str(self.port), "MESSAGE": name}
        self.proc = subprocess.Popen([PY, "-c", WEB_APP], env=env, stdout=subprocess.DEVNULL)

    async def ready(self) -> App:
        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        await until(up)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
async def nginx_proxy(run_dir: Path) -> AsyncIterator[NginxProxy]:
    proxy = NginxProxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=run_dir / "proxy")
    await proxy.start()
    try:
        assert_module_as_built(proxy)
        yield proxy
    finally:
        await proxy.close()


@pytest.fixture
async def apps() -> AsyncIterator[list[App]]:
    made: list[App] = []
    yield made
    for app in made:
        app.stop()


async def fetch(proxy: NginxProxy, host: str, path: str = "/") -> httpx.Response:
    async with httpx.AsyncClient(timeout=15.0) as client:
        return await client.get(f"http://127.0.0.1:{proxy.port}{path}", headers={"Host": host})


async def test_routes_by_host_answers_unknown_hosts_itself_and_stops_what_it_started(nginx_proxy, apps):
    """The app answers its own hostname through nginx; an unknown host gets InkMCP's 404 naming it; a
    head over 64 KiB gets 431 (as from the Python proxy); close() ends the master and every worker."""
    proxy = nginx_proxy
    apps.append(await App("one").ready())
    proxy.set_route(Route(host="one.p.localhost", port=apps[0].port, owner="svc-one"))
    assert await proxy.settled()
    resp = await fetch(proxy, "ONE.p.localhost:80")
    assert resp.status_code == 200 and resp.text == "one\n"
    assert resp.headers.get("server", "").startswith("BaseHTTP")  # the app's own Server header passes
    missing = await fetch(proxy, "nope.p.localhost")
    assert missing.status_code == 404 and "nope.p.localhost" in missing.text
    assert missing.headers["server"] == "inkmcp"
    async with httpx.AsyncClient() as client:
        big = await client.get(f"http://127.0.0.1:{proxy.port}/", headers={"Host": "one.p.localhost",
                                                                         "X-Big": "a" * 70_000})  # fmt: skip
    assert big.status_code == 431 and big.headers["server"] == "inkmcp"

    master = psutil.Process(proxy.nginx_pid)
    family = [master, *master.children(recursive=True)]
    assert len(family) >= 2 and all("nginx" in p.name() for p in family)
    port = proxy.port
    await proxy.close()
    assert not [p.pid for p in family if alive(p)]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


async def test_a_stale_port_in_nginx_falls_back_to_the_current_route(nginx_proxy, apps):
    """If nginx still sends a host to a port that stopped (the reload not yet in force), the request is
    retried on InkMCP's slow path, which routes by the current table: the client sees the new app, not 502."""
    proxy = nginx_proxy
    old, new = await App("old").ready(), await App("new").ready()
    apps += [old, new]
    route = Route(host="svc.p.localhost", port=old.port, owner="svc")
    proxy.set_route(route)
    assert await proxy.settled()
    old.stop()
    object.__setattr__(route, "port", new.port)  # the table moves; nginx is not told (no reload)
    assert f"127.0.0.1:{old.port}" in (proxy.dir / "nginx.conf").read_text()
    for _ in range(5):
        resp = await fetch(proxy, "svc.p.localhost")
        assert resp.status_code == 200 and resp.text == "new\n"


async def test_first_request_wakes_a_sleeping_service_then_nginx_goes_direct(nginx_proxy, apps):
    """A route without a port goes to the slow path, which awaits `wake` and answers the waking request
    from the app (no 502); the new port is then written into nginx's config."""
    proxy = nginx_proxy
    woken: list[App] = []
    waking: list[asyncio.Task[int]] = []

    async def start() -> int:
        app = await App("awake").ready()
        apps.append(app)
        woken.append(app)
        return app.port

    async def wake() -> int:  # as the provider's _wake: concurrent first requests share one start
        if not waking:
            waking.append(asyncio.create_task(start()))
        return await asyncio.shield(waking[0])

    route = Route(host="lazy.p.localhost", port=None, wake=wake, owner="svc-lazy")
    proxy.set_route(route)
    assert await proxy.settled()
    first, second = await asyncio.gather(fetch(proxy, "lazy.p.localhost"), fetch(proxy, "lazy.p.localhost"))
    assert (first.status_code, first.text, second.text) == (200, "awake\n", "awake\n")
    assert len(woken) == 1
    route.port = woken[0].port  # what the provider does once the wake succeeded
    assert await proxy.settled()
    assert f"server 127.0.0.1:{woken[0].port} max_fails=0;" in (proxy.dir / "nginx.conf").read_text()
    assert (await fetch(proxy, "lazy.p.localhost")).text == "awake\n"


async def test_idle_tracking_sees_requests_and_open_connections(nginx_proxy):
    """For an on_demand route nginx reports each finished request (the route's last_activity moves) and
    a long-lived upgraded connection counts as active until it closes, so the service never sleeps
    under a WebSocket client."""
    proxy = nginx_proxy
    port = free_port()
    ws_app = subprocess.Popen([PY, "-c", WS_ECHO], env={**os.environ, "PORT": str(port)})
    try:
        await until(lambda: _connects(port))

        async def wake() -> int:
            return port

        route = Route(host="ws.p.localhost", port=port, wake=wake, owner="svc-ws")
        proxy.set_route(route)
        assert await proxy.settled()
        before = route.last_activity
        sock = socket.create_connection(("127.0.0.1", proxy.port))
        async with ws_connect(f"ws://ws.p.localhost:{proxy.port}/", sock=sock) as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            assert route.active >= 1 and established_to(port) >= 1  # counted while open, from the kernel
        await until(lambda: route.last_activity > before)  # nginx reported the request when it ended
        await until(lambda: route.active == 0, timeout=5)  # keepalive_timeout 1s for on_demand upstreams
    finally:
        ws_app.terminate()
        ws_app.wait(10)


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


async def test_port_in_use_and_missing_nginx_are_clear_errors(run_dir):
    """The two ways starting fails on a real machine name the setting to change."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        busy = NginxProxy("127.0.0.1", holder.getsockname()[1], wake_timeout=1.0, runtime_dir=run_dir / "a")
        with pytest.raises(InvalidArgument) as exc:
            await busy.start()
        assert exc.value.argument == "INKMCP_PROXY_PORT"
    finally:
        holder.close()
    absent = NginxProxy("127.0.0.1", 0, wake_timeout=1.0, runtime_dir=run_dir / "b",
                        settings=ProxySettings(nginx=run_dir / "no-nginx"))  # fmt: skip
    with pytest.raises(InvalidArgument) as exc:
        await absent.start()
    assert exc.value.argument == "INKMCP_PROXY_NGINX" and "INKMCP_PROXY_ENGINE=python" in str(exc.value.fix)


CHILD = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from inkmcp.providers.compute.local.nginx import NginxProxy
    async def main():
        proxy = NginxProxy("127.0.0.1", 0, wake_timeout=1.0, runtime_dir=Path(sys.argv[1]))
        await proxy.start()
        print(proxy.nginx_pid, proxy.port, flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


async def test_nginx_stops_when_inkmcp_is_killed(run_dir):
    """SIGKILL leaves InkMCP no chance to stop nginx: the parent-death signal does, and the port is freed."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(run_dir / "proxy")], stdout=subprocess.PIPE,
                             text=True, cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        assert child.stdout is not None
        pid_text, port_text = (await asyncio.to_thread(child.stdout.readline)).split()
        master = psutil.Process(int(pid_text))
        family = [master, *master.children(recursive=True)]
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        await until(lambda: not [p for p in family if alive(p)])
        assert not _connects(int(port_text))
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)


# -- through the provider --------------------------------------------------------------------------------


# WEB_APP plus a POST that reads its body and answers its length (http.server's default 501 would close
# the connection before reading the body, which no proxy can turn into an answer).
POST_APP = WEB_APP.replace("    def log_message", """    def do_POST(self):
        size = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = f"{os.environ.get('MESSAGE', 'hello')} got {size}\\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message""")


def assert_module_as_built(proxy: object) -> None:
    """The provider's proxy runs InkMCP's nginx module exactly when it is built for this nginx (and not switched off):
    these tests then check the module's answers (tests/local/test_nginx_module.py compares them with the fallback's)."""
    settings = ProxySettings()
    want = nginx_module.find(settings.nginx).path if settings.module == "auto" else None
    assert getattr(proxy, "module", None) == want, getattr(proxy, "module_reason", "")


@pytest.mark.slow
async def test_hammered_service_redeployed_three_times_fails_no_request(make_provider, checkouts, project_ids):
    """Eight clients hammer a service while it is redeployed three times: three GET and two POST (20 kB
    body) clients on a new connection per request, three GET clients on kept-alive connections. Every
    request gets its answer from some version of the app, and after each switch the new version answers.

    Kept-alive clients may retry a GET once when the server closed their idle connection as they reused
    it (RFC 9112 9.3.1; browsers do): a reload makes nginx's old workers close idle keep-alive
    connections. Nothing else is retried. The Python proxy failed this test (pinned connections cut when
    the old version stopped: 'Server disconnected without sending a response').
    """
    provider = await make_provider()
    key = key_for(project_ids())
    host = provider.host_for(key)
    url = f"http://127.0.0.1:{provider.proxy.port}/"
    await provider.release(request_for(key, checkouts({"app.py": POST_APP}), web_plan(), env={"MESSAGE": "v0"}),
                           Events(), no_record)  # fmt: skip
    assert_module_as_built(provider.proxy)
    failures: list[str] = []
    seen: set[str] = set()
    counts = {"requests": 0, "retries": 0}
    stop = asyncio.Event()

    async def client(keepalive: bool, post: bool) -> None:
        limits = httpx.Limits(max_keepalive_connections=1 if keepalive else 0)
        async with httpx.AsyncClient(timeout=15.0, limits=limits) as http:
            while not stop.is_set():
                try:
                    if post:
                        r = await http.post(url, headers={"Host": host}, content=b"x" * 20_000)
                        ok = r.status_code == 200 and r.text.endswith(" got 20000\n")
                    else:
                        try:
                            r = await http.get(url, headers={"Host": host})
                        except (httpx.RemoteProtocolError, httpx.ReadError):
                            if not keepalive:
                                raise
                            counts["retries"] += 1
                            r = await http.get(url, headers={"Host": host})
                        ok = r.status_code == 200
                        seen.add(r.text)
                    counts["requests"] += 1
                    if not ok:
                        failures.append(f"{r.status_code} {r.text[:80]!r}")
                except httpx.HTTPError as exc:
                    failures.append(f"{'keep-alive' if keepalive else 'new'} {'POST' if post else 'GET'}: {exc!r}")

    kinds = [(False, False)] * 3 + [(False, True)] * 2 + [(True, False)] * 3
    tasks = [asyncio.create_task(client(keepalive, post)) for keepalive, post in kinds]
    try:
        for version in ("v1", "v2", "v3"):
            req = request_for(key, checkouts({"app.py": POST_APP}), web_plan(),
                              env={"MESSAGE": version, "START_DELAY": "0.3"})  # fmt: skip
            await provider.release(req, Events(), no_record)
            await until(lambda v=version: f"{v}\n" in seen, timeout=15)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    nginx_log = getattr(provider.proxy, "dir", Path("/nonexistent")) / "error.log"
    notes = nginx_log.read_text()[-3000:] if failures and nginx_log.exists() else ""
    assert counts["requests"] > 200 and not failures, (counts, failures[:10], notes)
    assert counts["retries"] <= 3 * 3, counts  # at most one per kept-alive client and switch


async def test_websocket_survives_another_services_deploy(make_provider, checkouts, project_ids):
    """A route change reloads nginx: the WebSocket connection a client holds to another service keeps
    working across it (old workers finish what they carry), and new connections reach the new routes."""
    provider = await make_provider()
    ws_key, other = key_for(project_ids(), service="ws"), key_for(project_ids(), service="web")
    await provider.release(request_for(ws_key, checkouts({"app.py": WS_ECHO}), web_plan()), Events(), no_record)
    assert_module_as_built(provider.proxy)
    sock = socket.create_connection(("127.0.0.1", provider.proxy.port))
    async with ws_connect(f"ws://{provider.host_for(ws_key)}:{provider.proxy.port}/", sock=sock) as ws:
        await ws.send("before")
        assert await ws.recv() == "before"
        await provider.release(request_for(other, checkouts({"app.py": WEB_APP}), web_plan()), Events(), no_record)
        assert (await get(provider, other)).text == "hello\n"
        for message in ("after", "y" * 50_000):
            await ws.send(message)
            assert await ws.recv() == message


def test_slow_path_asks_the_app_to_close_after_each_answer_behind_nginx():
    """Behind nginx the slow path rewrites Connection to close (a pooled nginx connection must never stay
    spliced to a retired upstream), but leaves an upgrade head alone (that connection becomes the tunnel)."""
    plain = b"GET / HTTP/1.1\r\nHost: a.p.localhost\r\nConnection: keep-alive\r\nKeep-Alive: 5\r\nX-A: 1\r\n\r\n"
    assert close_after(plain) == b"GET / HTTP/1.1\r\nHost: a.p.localhost\r\nX-A: 1\r\nConnection: close\r\n\r\n"
    upgrade = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    assert close_after(upgrade) == upgrade


# A raw app whose answers carry exactly the headers it writes: no Server header on "/", its own Server
# header on its own 502 ("/bad"). http.server always adds one, so it cannot show "none stays none".
RAW_APP = r'''
import asyncio, os
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nbare\n"
BAD = b"HTTP/1.1 502 Bad Gateway\r\nServer: app-own/1\r\nContent-Length: 4\r\n\r\nbad\n"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.t.write(BAD if head.startswith(b"GET /bad ") else OK)
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
'''


def _raw_exchange(port: int, head: bytes, *, pause: float = 0.0) -> bytes:
    """One request on a new connection (after `pause` s of silence), the whole answer (nginx closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        time.sleep(pause)
        sock.sendall(head)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
    return out


@contextlib.asynccontextmanager
async def routed_app(proxy: NginxProxy, code: str, host: str, **env: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    """An app run from `code` on a free $PORT, routed at `host` once it accepts connections; stopped by its PID
    afterwards unless the test stopped it already."""
    port = free_port()
    app = subprocess.Popen([PY, "-c", code], env={**os.environ, "PORT": str(port), **env})
    try:
        await until(lambda: _connects(port))
        proxy.set_route(Route(host=host, port=port, owner=f"svc-{host.split('.')[0]}"))
        assert await proxy.settled()
        yield app
    finally:
        if app.poll() is None:
            app.terminate()
            app.wait(10)


async def test_server_header_and_host_check_on_a_routed_name(nginx_proxy):
    """The per-request work nginx does for a routed name was cut (issue 12: a cheaper Server-header rule,
    a cheaper Host check); what it decides is the same: an app's answer without a Server header gets none,
    an app's own 502 keeps the app's Server header, nginx's own refusals say `Server: inkmcp`, and a Host
    whose "port" is not a port is refused with 400 before it reaches the app (RFC 9112 3.2)."""
    proxy = nginx_proxy
    async with routed_app(proxy, RAW_APP, "raw.p.localhost") as app:

        def ask(host: str, path: str = "/") -> tuple[int, str | None, bytes]:
            head = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            data = _raw_exchange(proxy.port, head.encode())
            head, _, body = data.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            server = [v.strip() for k, _, v in (h.partition(":") for h in lines[1:]) if k.lower() == "server"]
            assert len(server) <= 1, lines
            return int(lines[0].split()[1]), (server[0] if server else None), body

        for host in ("raw.p.localhost", f"raw.p.localhost:{proxy.port}", "RAW.p.localhost:80", "raw.p.localhost."):
            assert await asyncio.to_thread(ask, host) == (200, None, b"bare\n"), host
        assert await asyncio.to_thread(ask, "raw.p.localhost", "/bad") == (502, "app-own/1", b"bad\n")
        for host in ("raw.p.localhost:80.evil.example", "raw.p.localhost:", "raw.p.localhost:123456",
                     "raw.p.localhost:80:81"):  # fmt: skip
            status, server, _ = await asyncio.to_thread(ask, host)
            assert (status, server) == (400, "inkmcp"), host
        # the app gone: the 502 comes from the slow path (nginx's backup) and says so, never "nginx"
        app.terminate()
        app.wait(10)
        status, server, _ = await asyncio.to_thread(ask, "raw.p.localhost")
        assert status == 502 and server == "inkmcp"


async def test_a_253_character_hostname_is_served_by_nginx_itself(nginx_proxy, apps):
    """DNS allows 253 characters and project/service names 63 each; nginx's default server-name hash
    buckets hold ~46, and such a name made every reload fail ("could not build server_names_hash"):
    nginx kept serving the old config and every later route change waited out RELOAD_TIMEOUT."""
    proxy = nginx_proxy
    apps.append(await App("long").ready())
    long_host = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 51, "localhost"])
    assert len(long_host) == 253
    proxy.set_route(Route(host=long_host, port=apps[0].port, owner="svc-long"))
    proxy.set_route(Route(host="short.p.localhost", port=apps[0].port, owner="svc-short"))
    assert await proxy.settled(timeout=5)  # the generation nginx confirmed is the one with both names
    conf = (proxy.dir / "nginx.conf").read_text()
    assert f"server_name {long_host};" in conf
    assert f"server 127.0.0.1:{apps[0].port} max_fails=0;" in conf
    for host in (long_host, "short.p.localhost"):
        resp = await fetch(proxy, f"{host}:{proxy.port}")
        assert resp.status_code == 200 and resp.text == "long\n"


async def test_a_client_that_waits_before_sending_is_still_served(nginx_proxy, apps):
    """A client that connects, stays silent, then sends, is answered. The socket InkMCP bound and nginx
    inherited accepts at once (no TCP_DEFER_ACCEPT): deferring put the kernel's connection setup and
    nginx's accept on each new connection's request path (p50 1.15-1.29x the baseline nginx's in
    benchmarks/proxy_speed.py, 0.98x without), so `listen ... deferred` must not come back unmeasured."""
    proxy = nginx_proxy
    assert proxy._listener is not None
    assert proxy._listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
    apps.append(await App("patient").ready())
    proxy.set_route(Route(host="patient.p.localhost", port=apps[0].port, owner="svc-patient"))
    assert await proxy.settled()
    head = b"GET / HTTP/1.1\r\nHost: patient.p.localhost\r\nConnection: close\r\n\r\n"
    data = await asyncio.to_thread(_raw_exchange, proxy.port, head, pause=1.5)
    assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"patient\n")


# A raw app that answers with what it received: the number of header lines and the head's length.
ECHO_HEAD_APP = r'''
import asyncio, os
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")[1:]
            cookie = sum(len(l) for l in lines if l.lower().startswith(b"cookie:"))
            body = f"{len(lines)} {cookie}\n".encode()
            self.t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
'''


async def test_a_head_larger_than_a_request_pool_reaches_the_app_whole(nginx_proxy):
    """nginx's per-request memory pool is sized for a common request (request_pool_size 16k, one block);
    a request whose head needs several (60 headers, 20 KB of cookies) still reaches the app with every
    header line and every cookie byte, on a kept-alive connection and again on the next request."""
    proxy = nginx_proxy
    async with routed_app(proxy, ECHO_HEAD_APP, "heads.p.localhost"):
        headers = {f"X-Extra-{i}": "v" * 40 for i in range(57)}
        headers["Cookie"] = "; ".join(f"c{i}={'k' * 190}" for i in range(100))
        async with httpx.AsyncClient(timeout=15.0) as client:
            for _ in range(2):
                resp = await client.get(f"http://127.0.0.1:{proxy.port}/", headers={"Host": "heads.p.localhost",
                                                                                    **headers})  # fmt: skip
                lines, cookie = map(int, resp.text.split())
                # the app sees ours, plus Host, Connection, and httpx's Accept, Accept-Encoding, User-Agent
                assert resp.status_code == 200 and lines >= len(headers) + 2
                assert cookie == len("cookie: ") + len(headers["Cookie"])


# A raw app whose answer has a head of HEAD_BYTES bytes (one long header).
BIG_HEAD_APP = r'''
import asyncio, os
filler = int(os.environ["HEAD_BYTES"]) - 60
R = b"HTTP/1.1 200 OK\r\nX-Big: " + b"c" * filler + b"\r\nContent-Length: 3\r\n\r\nok\n"
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf = t, b""
    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.t.write(R)
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
'''


async def test_an_answer_with_a_12_kb_head_passes(nginx_proxy):
    """nginx reads an answer's head into one buffer; at its default (4k) an app answering with a 5 KB head
    (cookies, a CSP) got nginx's 502 where the Python proxy passed it. 12 KB passes whole now."""
    proxy = nginx_proxy
    async with routed_app(proxy, BIG_HEAD_APP, "bighead.p.localhost", HEAD_BYTES="12000"):
        resp = await fetch(proxy, "bighead.p.localhost")
        assert resp.status_code == 200 and resp.text == "ok\n"
        assert resp.headers["x-big"] == "c" * (12000 - 60)


# A raw app that tells each request which port nginx's connection to it came from ("peer N"): after a 101
# (raw bytes, nginx relays them as an upgraded connection), or as the answer to a request whose body it read
# whole (Content-Length or chunked).
PEER_APP = r'''
import asyncio, os
class P(asyncio.Protocol):
    def connection_made(self, t):
        self.t, self.buf, self.up, self.peer = t, b"", False, t.get_extra_info("peername")[1]
    def data_received(self, data):
        self.buf += data
        while not self.up and b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            low = head.lower()
            if b"\r\nupgrade:" in low:
                self.up = True
                self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: raw\r\nConnection: Upgrade\r\n\r\n"
                             b"peer %d\n" % self.peer)
                return
            if b"transfer-encoding: chunked" in low:
                end = rest.find(b"\r\n0\r\n\r\n")
                if end < 0:
                    return
                rest = rest[end + 7:]
            elif b"content-length:" in low:
                n = int(low.split(b"content-length:")[1].split(b"\r\n")[0])
                if len(rest) < n:
                    return
                rest = rest[n:]
            self.buf = rest
            # an answer that never ends (one chunk, no last chunk): nginx holds its connection to the app open
            # until the test has read its TCP_NODELAY (a finished answer let nginx close it first on a busy box)
            body = b"peer %d\n" % self.peer
            self.t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n" % (len(body), body))
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
'''
_PIDFD_GETFD = 438  # Linux >= 5.6, the same number on every architecture


def _nginx_tcp_sockets(proxy: NginxProxy) -> dict[tuple[int, int], int]:
    """(local port, peer port) -> TCP_NODELAY of every connected TCP socket nginx's workers hold, read from
    the workers' own file descriptors (pidfd_getfd gives this test a duplicate; closing it leaves nginx's)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    out: dict[tuple[int, int], int] = {}
    for pid in proxy._workers():
        pidfd = os.pidfd_open(pid)
        try:
            for entry in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if not os.readlink(entry).startswith("socket:"):
                        continue
                fd = libc.syscall(_PIDFD_GETFD, pidfd, int(entry.name), 0)
                if fd < 0:
                    raise OSError(ctypes.get_errno(), f"pidfd_getfd({pid}, {entry.name})")
                with socket.socket(fileno=fd) as sock:
                    if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                        continue
                    with contextlib.suppress(OSError):  # a listening socket has no peer
                        peer = sock.getpeername()[1]
                        out[(sock.getsockname()[1], peer)] = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            os.close(pidfd)
    return out


@pytest.mark.parametrize("reuseport", [False, True], ids=["inherited-listener", "reuseport"])
async def test_nodelay_on_every_client_socket_and_where_the_app_gets_small_writes(run_dir, reuseport):
    """TCP_NODELAY where Nagle would hold a small write back until the peer's delayed ACK (up to 40 ms): on
    every client connection (streamed answers), and on nginx's connection to the app for an upgraded
    (WebSocket) connection and for a request body streamed to the app, chunked or with a length.

    Why it can break: nginx sets TCP_NODELAY itself only under `tcp_nodelay on`, and a change that saves its
    setsockopt per new connection (issue 12: `tcp_nodelay off`, the client side covered by the listening
    socket's flag, which Linux copies to accepted sockets) must still route every request with an Upgrade or
    a body to a location with `tcp_nodelay on`. Read here from nginx's own descriptors; the version with
    `tcp_nodelay off` and three `if`s failed this test when any one `if` was missing."""
    settings = ProxySettings(reuseport=reuseport)
    proxy = NginxProxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=run_dir / "proxy", settings=settings)
    await proxy.start()
    try:
        async with routed_app(proxy, PEER_APP, "plain.p.localhost"):
            # a route (so an upstream pool) of its own per kind: no request reuses a connection to the app that
            # another kind's request left with TCP_NODELAY on
            route = proxy.get_route("plain.p.localhost")
            assert route is not None
            for kind in ("upgrade", "chunked", "length"):
                proxy.set_route(Route(host=f"{kind}.p.localhost", port=route.port, owner=f"svc-{kind}"))
            assert await proxy.settled()
            # settled: the new workers run; an old config's worker still takes connections for ~100 ms, and it
            # sends the new hosts to the slow path (whose own connection to the app this test would then read)
            deadline = time.monotonic() + 10
            while proxy._old_workers_serving():
                assert time.monotonic() < deadline, "an old nginx worker still serves 10 s after the reload"
                await asyncio.sleep(0.005)

            def read_peer(sock: socket.socket) -> int:
                got = b""
                while not got.endswith(b"\n") or b"peer " not in got:
                    chunk = sock.recv(4096)
                    assert chunk, got
                    got += chunk
                return int(got.rsplit(b"peer ", 1)[1])

            def exchange() -> dict[str, tuple[int, int]]:
                """Per kind of request: (the client's own port, the port nginx's connection to the app came from),
                each connection left open."""
                conns: dict[str, tuple[int, int]] = {}
                kinds = {
                    "plain": [b"GET / HTTP/1.1\r\nHost: plain.p.localhost\r\n\r\n"],
                    "upgrade": [b"GET /ws HTTP/1.1\r\nHost: upgrade.p.localhost\r\nUpgrade: websocket\r\n"
                                b"Connection: Upgrade\r\n\r\n"],
                    "chunked": [b"POST / HTTP/1.1\r\nHost: chunked.p.localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                                b"5\r\nhello\r\n", b"5\r\nworld\r\n0\r\n\r\n"],
                    "length": [b"POST / HTTP/1.1\r\nHost: length.p.localhost\r\nContent-Length: 10\r\n\r\nhello",
                               b"world"],
                }  # fmt: skip
                for kind, parts in kinds.items():
                    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                    held.append(sock)
                    for i, part in enumerate(parts):
                        if i:
                            time.sleep(0.05)  # the body's second part after nginx has sent the first on
                        sock.sendall(part)
                    conns[kind] = (sock.getsockname()[1], read_peer(sock))
                return conns

            held: list[socket.socket] = []
            try:
                conns = await asyncio.to_thread(exchange)
                nodelay = await asyncio.to_thread(_nginx_tcp_sockets, proxy)
                for kind, (client_port, upstream_port) in conns.items():
                    assert nodelay[(proxy.port, client_port)] == 1, f"{kind}: client side without TCP_NODELAY"
                    if kind != "plain":
                        upstream = [v for (local, _), v in nodelay.items() if local == upstream_port]
                        assert upstream == [1], f"{kind}: nginx -> app without NODELAY: {upstream} {conns} {nodelay}"
            finally:
                for sock in held:
                    sock.close()
    finally:
        await proxy.close()

