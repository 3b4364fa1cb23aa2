"""InkMCP's nginx module (inkmcp/providers/compute/local/nginx_module) against the headers-more config it replaces.

The claim: with the module loaded the proxy answers byte for byte as with the headers-more config (Host check
refusals, Server header, WebSocket upgrade, nginx's own errors), except where noted; without a build for this
nginx, or with a build nginx refuses, the proxy falls back to the headers-more config, says why once, and answers
the same. Everything runs for real: two nginx proxies (module and fallback) in front of one app, raw sockets.
Hostile Host values go through the real proxy; the app's log of what it received is the proof that a refused
request never reached it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.local import nginx_module
from inkmcp.providers.compute.local.nginx import OWN_STATUSES, NginxProxy, ProxySettings
from inkmcp.providers.compute.local.proxy import Route
from tests.local.conftest import PY
from tests.requirements import requires
from tests.support import free_port

_FOUND = nginx_module.find(ProxySettings().nginx)
needs_module = requires("nginx_module", _FOUND.path is not None, _FOUND.reason)

HOST = "alice.p.localhost"
OTHER = "mallory.p.localhost"

# Answers with what it received (so a difference in what the proxy forwards shows), logs every request line to
# $LOG (the proof a refused request never arrived) and an Upgrade's whole head on one line ("WS-HEAD ...");
# /server answers with its own Server header, /bad with a 502 of its own, /ws switches to an echo of raw bytes.
ECHO_APP = r'''
import asyncio, os
LOG = open(os.environ["LOG"], "ab", buffering=0)
class P(asyncio.Protocol):
    def connection_made(self, t): self.t, self.buf, self.raw = t, b"", False
    def data_received(self, data):
        if self.raw:
            self.t.write(data)
            return
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            LOG.write(head.split(b"\r\n", 1)[0] + b"\n")
            path = head.split(b" ", 2)[1]
            if path == b"/ws":
                LOG.write(b"WS-HEAD " + head.replace(b"\r\n", b" | ") + b"\n")
                self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                self.raw = True
                if self.buf:
                    self.t.write(self.buf)
                return
            server = b"Server: app-own/1\r\n" if path in (b"/server", b"/bad") else b""
            status = b"502 Bad Gateway" if path == b"/bad" else b"200 OK"
            self.t.write(b"HTTP/1.1 " + status + b"\r\n" + server + b"Content-Length: %d\r\n\r\n" % (len(head) + 1)
                         + head + b"\n")
async def main():
    server = await asyncio.get_running_loop().create_server(P, "127.0.0.1", int(os.environ["PORT"]))
    await server.serve_forever()
asyncio.run(main())
'''


def _connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `data` on a new connection and read until the proxy closes it (or `timeout` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        out = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                out += chunk
    return out


def normal(answer: bytes, proxy: NginxProxy) -> bytes:
    """An answer with what must differ between two proxies taken out: the Date line and the proxy's own port
    (the app sees `Host: name:PORT`)."""
    answer = re.sub(rb"\r\nDate: [^\r]*", b"\r\nDate: -", answer)
    return answer.replace(str(proxy.port).encode(), b"PORT")


class Pair:
    """The module proxy and the fallback proxy, the same routes, one app behind both."""

    def __init__(self, module: NginxProxy, fallback: NginxProxy, app_log: Path) -> None:
        self.module, self.fallback, self.app_log = module, fallback, app_log

    def both(self, data: bytes) -> tuple[bytes, bytes]:
        return (normal(exchange(self.module.port, data), self.module),
                normal(exchange(self.fallback.port, data), self.fallback))  # fmt: skip

    def received(self) -> list[bytes]:
        return self.app_log.read_bytes().splitlines()


@pytest.fixture
async def pair(run_dir: Path) -> AsyncIterator[Pair]:
    port, log = free_port(), run_dir / "app.log"
    app = subprocess.Popen([PY, "-c", ECHO_APP], env={**os.environ, "PORT": str(port), "LOG": str(log)})
    # the module proxy with the default settings: what the local provider runs (INKMCP_PROXY_MODULE=auto)
    proxies = [NginxProxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=run_dir / "module", settings=ProxySettings()),
               NginxProxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=run_dir / "fallback",
                          settings=ProxySettings(module="off"))]  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not _connects(port):
            assert app.poll() is None and time.monotonic() < deadline, "the app did not start"
            await asyncio.sleep(0.01)
        for proxy in proxies:
            await proxy.start()
            proxy.set_route(Route(host=HOST, port=port, owner="svc-alice"))
            # settled: the new config answers; drain: no worker of the route-less first config takes a request
            # any more (for ~100 ms after a reload they still do, and send it down the slow path)
            assert await proxy.settled() and await proxy.drain(0, 10.0)
        assert proxies[0].module is not None, proxies[0].module_reason
        assert proxies[1].module is None and proxies[1].module_reason == "INKMCP_PROXY_MODULE=off"
        yield Pair(proxies[0], proxies[1], log)
    finally:
        for proxy in proxies:
            await proxy.close()
        app.terminate()
        app.wait(10)


def _get(host: bytes, path: bytes = b"/", extra: bytes = b"") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"Connection: close\r\n\r\n"


# Host values an attacker would try: a routed name with something after its "port", ports that are not ports,
# two ports, an IPv6 literal left open, characters nginx's own validation lets through, bytes outside ASCII,
# a name that routes to someone else after the colon, very long values.
HOSTILE = [
    b"alice.p.localhost:80.mallory.p.localhost", b"alice.p.localhost:", b"alice.p.localhost:123456",
    b"alice.p.localhost:80:81", b"alice.p.localhost:8o", b"alice.p.localhost:+80", b"alice.p.localhost: 80",
    b"alice.p.localhost:-1", b"alice.p.localhost:0x50", b"[::1", b"[::1]x", b"[]", b"[::1]:", b"[g::1]",
    b"alice_p.localhost", b"alice!.p.localhost", b"alice.p.localhost@mallory.p.localhost",
    b"al\xc3\xafce.p.localhost", b"alice.p.localhost\xff", b"alice.p.localhost\x7f", b"alice.p.localhost%00",
    b"alice..p.localhost", b"alice.p.localhost/../x", b"alice.p.localhost\\x", b":80",
    b"alice.p.localhost:" + b"9" * 5000, b"a" * 7000, b"alice.p.localhost:80" + b"0" * 300,
]
# A refused request whose body is another request: the body must be read and dropped, never parsed as the next
# request (it would reach the app past the Host check); then a good request on the same connection.
_INNER = b"GET /smuggled HTTP/1.1\r\nHost: alice.p.localhost\r\n\r\n"
SMUGGLE = [
    b"POST /refused HTTP/1.1\r\nHost: alice.p.localhost:80.x\r\nContent-Length: %d\r\n\r\n" % len(_INNER) + _INNER
    + _get(HOST.encode(), b"/after-smuggle"),
    b"POST /refused HTTP/1.1\r\nHost: x!y\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(_INNER) + _INNER
    + b"\r\n0\r\n\r\n" + _get(HOST.encode(), b"/after-smuggle"),
]
NORMAL = [
    b"alice.p.localhost", b"ALICE.P.LOCALHOST", b"alice.p.localhost:80", b"alice.p.localhost:65535",
    b"alice.p.localhost.", b"alice.p.localhost:00080", b"unknown.p.localhost", b"[::1]:80", b"[::1]", b"127.0.0.1",
    b" alice.p.localhost", b"alice.p.localhost\t",  # whitespace around a value is not part of it
]


@needs_module
async def test_answers_match_the_headers_more_config_byte_for_byte(pair: Pair):
    """Routed and unrouted names, hostile Host values, the app's own Server header and 502, nginx's own errors
    (no Host, two Hosts, NUL, a 40 KiB head, TRACE), a pipelined request after a refusal: the same bytes."""
    cases = [_get(h) for h in NORMAL + HOSTILE] + [
        _get(HOST.encode(), b"/server"), _get(HOST.encode(), b"/bad"),
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",  # no Host: nginx's own 400
        b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 without Host: the slow path's default
        b"GET / HTTP/1.1\r\nHost: alice.p.localhost\r\nHost: alice.p.localhost\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: alice.p.local\x00host\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: alice.p.localhost\r\nX-Nul: a\x00b\r\nConnection: close\r\n\r\n",
        _get(HOST.encode(), extra=b"X-Big: " + b"x" * 40_000 + b"\r\n"),  # past the head limit: 431
        b"TRACE / HTTP/1.1\r\nHost: alice.p.localhost\r\nConnection: close\r\n\r\n",  # nginx's 405
        b"GET http://alice.p.localhost/ HTTP/1.1\r\nHost: alice.p.localhost:80\r\nConnection: close\r\n\r\n",
        # a refusal, then a good request on the same connection
        b"GET / HTTP/1.1\r\nHost: alice.p.localhost:80.x\r\n\r\n" + _get(HOST.encode()),
        b"GET / HTTP/1.1\r\nHost: x!y\r\n\r\n" + _get(HOST.encode()),
        *SMUGGLE,
    ]
    differ = []
    for data in cases:
        module, fallback = await asyncio.to_thread(pair.both, data)
        assert module, data[:80]
        if module != fallback:
            differ.append((data[:100], module[:300], fallback[:300]))
    assert not differ, differ


@needs_module
async def test_random_host_values_get_the_same_answer(pair: Pair):
    """300 Host values drawn (seeded) from the characters a Host check has to get right: the module's C check and
    the config's regexes decide the same for each (same bytes back)."""
    rng = random.Random(12)
    alphabet = b"aZ09.-:[]_!%@/\\ \t\x00\x01\x7f\x80\xff"
    differ = []
    for _ in range(300):
        body = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        host = rng.choice([b"", HOST.encode(), HOST.encode() + b":", b"[::1]"]) + body
        module, fallback = await asyncio.to_thread(pair.both, _get(host))
        if module != fallback:
            differ.append((host, module[:200], fallback[:200]))
    assert not differ, differ[:5]


@needs_module
async def test_hostile_hosts_never_reach_the_app(pair: Pair):
    """The attacker's side: each hostile Host gets nginx's 400 "invalid Host header" (Server: inkmcp), and the
    app's own log shows none of those requests arrived; a good request right after does arrive."""
    for i, host in enumerate(HOSTILE):
        answer = await asyncio.to_thread(exchange, pair.module.port, _get(host, f"/hostile-{i}".encode()))
        status = answer.split(b"\r\n", 1)[0]
        assert status.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ", b"HTTP/1.1 494 ")), (host[:60], answer[:200])
        assert b"\r\nServer: inkmcp\r\n" in answer, (host[:60], answer[:300])
    answer = await asyncio.to_thread(exchange, pair.module.port, _get(HOST.encode(), b"/after"))
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nServer:" not in answer
    for data in SMUGGLE:  # the refusal, then the good request's answer on the same connection; no smuggled one
        answer = await asyncio.to_thread(exchange, pair.module.port, data)
        assert answer.startswith(b"HTTP/1.1 400 ") and answer.count(b"HTTP/1.1 ") == 2, answer
        assert b"\r\n\r\nGET /after-smuggle HTTP/1.1\r\n" in answer, answer
    received = pair.received()
    assert b"GET /after HTTP/1.1" in received and received.count(b"GET /after-smuggle HTTP/1.1") == 2
    assert not [r for r in received if r.startswith((b"GET /hostile-", b"GET /smuggled", b"POST /refused"))], received


@needs_module
async def test_absolute_form_target_with_a_bad_host_header_is_refused(pair: Pair):
    """The one place the module is stricter than the headers-more config: a request whose target names the host
    (absolute form) is routed by the target, and the config's check on a routed name looks only at a port after a
    colon, so `Host: x!y` passed there. RFC 9112 3.2 says any invalid Host value is a 400; the module checks the
    whole value wherever nginx routed the request."""
    data = b"GET http://alice.p.localhost/abs HTTP/1.1\r\nHost: x!y\r\nConnection: close\r\n\r\n"
    module, fallback = await asyncio.to_thread(pair.both, data)
    assert module.startswith(b"HTTP/1.1 400 ") and module.endswith(b"invalid Host header\n")
    assert fallback.startswith(b"HTTP/1.1 200 ")  # today's config: routed by the target's host
    assert pair.received().count(b"GET /abs HTTP/1.1") == 1  # the fallback's; the module's never arrived


@needs_module
async def test_websocket_upgrade_and_echo_are_the_same(pair: Pair):
    """An Upgrade through either proxy: the same 101 head, then bytes both ways on the upgraded connection."""
    head = (b"GET /ws HTTP/1.1\r\nHost: alice.p.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")  # fmt: skip

    def talk(proxy: NginxProxy) -> tuple[bytes, bytes]:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(head)
            got = b""
            while b"\r\n\r\n" not in got:
                got += sock.recv(4096)
            answer, _, rest = got.partition(b"\r\n\r\n")
            echoed = rest
            for n in range(3):
                sock.sendall(b"ping-%d;" % n)
            while len(echoed) < 21:
                echoed += sock.recv(4096)
            return normal(answer, proxy), echoed

    module = await asyncio.to_thread(talk, pair.module)
    fallback = await asyncio.to_thread(talk, pair.fallback)
    assert module == fallback
    assert module[0].startswith(b"HTTP/1.1 101 ") and module[1] == b"ping-0;ping-1;ping-2;"


@needs_module
async def test_forged_forwarded_headers_are_replaced_by_both_configs(pair: Pair):
    """redteam2's attack in every form (tests/local/test_proxy_forwarded.FORGED: duplicates, odd casing, `_` for `-`,
    Forwarded, X-Forwarded-Prefix/-Ssl/...), on two kept-alive requests and on a WebSocket upgrade, through the
    module's `$inkmcp_forwarded` and through the fallback's directives: the app gets exactly the proxy's five
    headers (X-Forwarded-For = the connecting address, replaced), the same bytes from both, nothing forged."""
    from tests.local.test_proxy_forwarded import FORGED, expected, forwarded_view

    two = (b"GET /fwd1 HTTP/1.1\r\nHost: alice.p.localhost\r\n" + FORGED + b"\r\n"
           + _get(HOST.encode(), b"/fwd2", FORGED))  # fmt: skip
    ws = (b"GET /ws HTTP/1.1\r\nHost: alice.p.localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" + FORGED
          + b"\r\n")  # fmt: skip
    module, fallback = await asyncio.to_thread(pair.both, two)
    assert module == fallback
    for proxy in (pair.module, pair.fallback):
        answer = await asyncio.to_thread(exchange, proxy.port, two)
        heads = [part.partition(b"\r\n\r\n")[2].rstrip(b"\n") for part in answer.split(b"HTTP/1.1 200 OK\r\n")[1:]]
        assert [h.split(b" ", 2)[1] for h in heads] == [b"/fwd1", b"/fwd2"], answer[:500]
        for head in heads:
            assert forwarded_view(head) == expected(proxy.port), head
            assert b"evil" not in head and b"6.6.6" not in head, head
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(ws)
            assert sock.recv(4096).startswith(b"HTTP/1.1 101 ")
        upgraded = [ln for ln in pair.received() if ln.startswith(b"WS-HEAD ")][-1][8:].replace(b" | ", b"\r\n")
        assert forwarded_view(upgraded) == expected(proxy.port), upgraded
        assert b"evil" not in upgraded and b"6.6.6" not in upgraded


@needs_module
async def test_forwarded_headers_of_an_ipv6_client_are_the_same_from_both_configs(run_dir: Path):
    """The proxy on [::1]: `$inkmcp_forwarded` writes the client's IPv6 address (nginx's text form, as
    `$remote_addr`) and the port it was reached on, byte for byte as the fallback's directives do."""
    from tests.local.test_proxy_forwarded import FORGED, forwarded_view

    port, log = free_port(), run_dir / "v6-app.log"
    app = subprocess.Popen([PY, "-c", ECHO_APP], env={**os.environ, "PORT": str(port), "LOG": str(log)})
    proxies = [NginxProxy("::1", 0, wake_timeout=10.0, runtime_dir=run_dir / name, settings=ProxySettings(module=m))
               for name, m in (("v6-module", "auto"), ("v6-fallback", "off"))]  # fmt: skip
    try:
        while not _connects(port):
            assert app.poll() is None
            await asyncio.sleep(0.01)
        answers = []
        for proxy in proxies:
            await proxy.start()
            proxy.set_route(Route(host=HOST, port=port, owner="svc-alice"))
            assert await proxy.settled() and await proxy.drain(0, 10.0)

            def ask(proxy: NginxProxy = proxy) -> bytes:
                with socket.create_connection(("::1", proxy.port), timeout=5) as sock:
                    sock.sendall(_get(HOST.encode(), b"/v6", FORGED))
                    out = b""
                    while chunk := sock.recv(65536):
                        out += chunk
                return out

            answer = await asyncio.to_thread(ask)
            head = answer.partition(b"\r\n\r\n")[2].rstrip(b"\n")
            assert forwarded_view(head) == [
                (b"x-forwarded-for", b"::1"), (b"x-real-ip", b"::1"),
                (b"x-forwarded-host", f"{HOST}:{proxy.port}".encode()), (b"x-forwarded-proto", b"http"),
                (b"x-forwarded-port", str(proxy.port).encode())], head  # fmt: skip
            answers.append(normal(answer, proxy))
        assert proxies[0].module is not None and proxies[1].module is None
        assert answers[0] == answers[1]
    finally:
        for proxy in proxies:
            await proxy.close()
        app.terminate()
        app.wait(10)


def test_own_statuses_are_the_configs():
    """The C module's list of nginx's own statuses (Server: inkmcp) is nginx.OWN_STATUSES, the fallback's `-s` list."""
    source = (nginx_module.HERE / "ngx_http_inkmcp_module.c").read_text()
    switch = source[source.index("switch (r->headers_out.status)"):source.index("default:", source.index("switch ("))]
    assert sorted(map(int, re.findall(r"case (\d+):", switch))) == sorted(OWN_STATUSES)


async def _serve_one(proxy: NginxProxy, run_dir: Path) -> bytes:
    """Start `proxy`, route HOST to a small app, return its answer to a hostile Host and to a good request."""
    port, log = free_port(), run_dir / "fb-app.log"
    app = subprocess.Popen([PY, "-c", ECHO_APP], env={**os.environ, "PORT": str(port), "LOG": str(log)})
    try:
        while not _connects(port):
            assert app.poll() is None
            await asyncio.sleep(0.01)
        await proxy.start()
        proxy.set_route(Route(host=HOST, port=port, owner="svc-alice"))
        assert await proxy.settled() and await proxy.drain(0, 10.0)
        bad = await asyncio.to_thread(exchange, proxy.port, _get(b"alice.p.localhost:80.evil"))
        good = await asyncio.to_thread(exchange, proxy.port, _get(HOST.encode(), b"/server"))
        return normal(bad, proxy) + b"|" + normal(good, proxy)
    finally:
        await proxy.close()
        app.terminate()
        app.wait(10)


EXPECTED_FALLBACK = (b"HTTP/1.1 400 Bad Request\r\n", b"\r\nServer: inkmcp\r\n\r\ninvalid Host header\n|",
                     b"|HTTP/1.1 200 OK\r\n", b"\r\nServer: app-own/1\r\n")  # fmt: skip


async def test_falls_back_to_headers_more_when_not_built(run_dir: Path, monkeypatch, caplog):
    """No build for this nginx (here: an empty build directory): the headers-more config, the reason logged once
    at start, and the same answers (the Host check and the Server rule hold)."""
    empty = run_dir / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(nginx_module, "PACKAGE_BIN", empty)
    proxy = NginxProxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=run_dir / "p")
    with caplog.at_level(logging.WARNING, logger="inkmcp.providers.compute.local.nginx"):
        answers = await _serve_one(proxy, run_dir)
    assert proxy.module is None and "no build of InkMCP's nginx module" in proxy.module_reason
    assert "none built" in proxy.module_reason and str(empty) in proxy.module_reason
    warned = [r for r in caplog.records if "nginx module is not used" in r.getMessage()]
    assert len(warned) == 1 and proxy.module_reason in warned[0].getMessage()
    conf = (run_dir / "p" / "nginx.conf").read_text()
    assert "headers_more" in conf and "inkmcp_host_check" not in conf
    for part in EXPECTED_FALLBACK:
        assert part in answers, answers


async def test_falls_back_when_nginx_refuses_the_build(run_dir: Path, monkeypatch, caplog):
    """A file under the build's name that nginx cannot load (a corrupt build): nginx is started again with the
    headers-more config instead of leaving the provider without a proxy."""
    fake = run_dir / "bin"
    fake.mkdir(mode=0o755)
    nginx = ProxySettings().nginx
    (fake / nginx_module.module_name(nginx)).write_bytes(b"\x7fELF not really")
    (fake / nginx_module.module_name(nginx)).chmod(0o644)
    monkeypatch.setattr(nginx_module, "PACKAGE_BIN", fake)
    proxy = NginxProxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=run_dir / "p")
    with caplog.at_level(logging.WARNING, logger="inkmcp.providers.compute.local.nginx"):
        answers = await _serve_one(proxy, run_dir)
    assert proxy.module is None and proxy.module_reason.startswith("nginx did not start with ngx_http_inkmcp_module-")
    for part in EXPECTED_FALLBACK:
        assert part in answers, answers
    assert proxy.nginx_pid is None


def test_a_build_others_can_write_is_not_loaded(run_dir: Path, monkeypatch):
    """nginx's master loads the module as root: a build (or its directory) writable by others is refused, with
    the reason, instead of being loaded."""
    nginx = ProxySettings().nginx
    loose = run_dir / "loose"
    loose.mkdir(mode=0o755)
    build = loose / nginx_module.module_name(nginx)
    build.write_bytes(b"x")
    build.chmod(0o666)
    found = nginx_module.find(nginx, (loose,))
    assert found.path is None and "writable by others" in found.reason
    build.chmod(0o644)
    assert nginx_module.find(nginx, (loose,)).path == build
    loose.chmod(0o777)
    assert nginx_module.find(nginx, (loose,)).path is None
    loose.chmod(0o755)


def test_a_build_for_another_nginx_is_not_found(run_dir: Path):
    """The build's name hashes the module's source and the binary's `nginx -V`: a build left from an older nginx
    (or an older module source) is not loaded, and the reason names it."""
    old = run_dir / "old"
    old.mkdir(mode=0o755)
    (old / "ngx_http_inkmcp_module-0123456789abcdef.so").write_bytes(b"x")
    found = nginx_module.find(ProxySettings().nginx, (old,))
    assert found.path is None and "ngx_http_inkmcp_module-0123456789abcdef.so" in found.reason
    assert "another nginx or an older module source" in found.reason


def test_the_two_configs_differ_only_in_the_rules(tmp_path: Path):
    """The config with the module and the fallback's differ in the rules the module replaces (the load_module, the
    Server rule, the Host map and the Host checks' `if`s) and in nothing else: routing, the wake path's backup,
    the idle log of an on_demand host, buffers and timeouts are one template."""

    async def wake() -> int:
        return 1

    proxy = NginxProxy("127.0.0.1", 0, wake_timeout=1.0, runtime_dir=tmp_path / "run")
    proxy._listener = socket.socket()
    try:
        proxy._listener.bind(("127.0.0.1", 0))
        proxy.port = proxy._listener.getsockname()[1]
        proxy.set_route(Route(host="awake.p.localhost", port=4321, owner="svc-awake"))
        proxy.set_route(Route(host="asleep.p.localhost", port=None, owner="svc-asleep", wake=wake))
        fallback = proxy._config()
        proxy.module = Path("/nowhere/ngx_http_inkmcp_module-x.so")
        with_module = proxy._config()
    finally:
        proxy._listener.close()

    def rules(text: str) -> list[str]:
        return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]

    mod, fb = rules(with_module), rules(fallback)
    assert "load_module /nowhere/ngx_http_inkmcp_module-x.so;" in mod
    assert {"inkmcp_server_header on;", "inkmcp_inherited_nodelay on;", "inkmcp_host_check on;"} <= set(mod)
    assert not [r for r in mod if r.startswith(("if ", "more_set_headers", "map $http_host", "map $upstream_status"))
                or "headers_more" in r]  # fmt: skip
    only_fb = [r for r in fb if r not in mod]
    only_mod = [r for r in mod if r not in fb]
    assert only_mod == ["load_module /nowhere/ngx_http_inkmcp_module-x.so;",
                        "proxy_set_header X-Forwarded-For $inkmcp_forwarded;", "inkmcp_server_header on;",
                        "inkmcp_host_check on;", "inkmcp_inherited_nodelay on;"]  # fmt: skip
    assert all(r.startswith(("load_module ", "map ", "more_set_headers", "default 1;", '"" 0;', '"~^', "}", "if (",
                             'proxy_set_header X-Forwarded-For "$remote_addr\\r\\nX-Real-IP: $remote_addr'))
               for r in only_fb), only_fb  # fmt: skip
    assert len([r for r in fb if r.startswith("proxy_set_header X-Forwarded-For ")]) == 1
    assert len([r for r in fb if r.startswith("if (")]) == 3  # the default server's and each routed name's
    for kept in ("server_name awake.p.localhost;", "server_name asleep.p.localhost;", "proxy_pass_header Server;",
                 "server 127.0.0.1:4321 max_fails=0;", "error_page 494 =431 @inkmcp_431;"):  # fmt: skip
        assert kept in mod, kept
    assert any(r.startswith("access_log syslog:") for r in mod)


def test_doctor_says_which_config_the_proxy_runs(run_dir: Path, monkeypatch):
    """`inkmcp doctor`'s local proxy row: ok with the module's path when built; a warning with the reason and how
    to build it when not; ok when switched off on purpose."""
    from inkmcp.doctor import DoctorReport, Status, check_local_proxy

    if _FOUND.path is not None:
        check = check_local_proxy(DoctorReport())
        assert check.status == Status.ok and str(_FOUND.path) in check.detail
    empty = run_dir / "empty-bin"
    empty.mkdir()
    monkeypatch.setattr(nginx_module, "PACKAGE_BIN", empty)
    check = check_local_proxy(DoctorReport())
    assert check.status == Status.warn and "headers-more config" in check.detail and "none built" in check.detail
    assert check.fix == nginx_module.HOW_TO_BUILD
    monkeypatch.setenv("INKMCP_PROXY_MODULE", "off")
    check = check_local_proxy(DoctorReport())
    assert check.status == Status.ok and "INKMCP_PROXY_MODULE=off" in check.detail


@needs_module
def test_the_build_is_hardened_like_the_binary_and_loads(run_dir: Path):
    """The build takes the binary's own compiler and linker flags (`nginx -V`): the .so nginx's root master loads
    has the stack protector, full RELRO and no executable stack; `nginx -t` loads it, and refuses a file that is
    not a module (the check the build runs before installing it)."""
    assert _FOUND.path is not None
    opts = " ".join(nginx_module._binary_opts(nginx_module.nginx_version_output(ProxySettings().nginx)))
    assert "-fstack-protector-strong" in opts and "-D_FORTIFY_SOURCE=2" in opts and "-z,now" in opts
    dynamic = subprocess.run(["readelf", "-d", str(_FOUND.path)], capture_output=True, text=True, check=True).stdout
    segments = subprocess.run(["readelf", "-lW", str(_FOUND.path)], capture_output=True, text=True, check=True).stdout
    symbols = subprocess.run(["nm", "-D", str(_FOUND.path)], capture_output=True, text=True, check=True).stdout
    assert "BIND_NOW" in dynamic and "GNU_RELRO" in segments and "__stack_chk_fail" in symbols
    stack = next(line for line in segments.splitlines() if "GNU_STACK" in line)
    assert " RW " in stack and "RWE" not in stack
    nginx_module.check_loads(ProxySettings().nginx, _FOUND.path, run_dir)
    junk = run_dir / "junk.so"
    junk.write_bytes(b"\x7fELF junk")
    with pytest.raises(RuntimeError, match="loading the module"):
        nginx_module.check_loads(ProxySettings().nginx, junk, run_dir)


def test_the_doctor_command_prints_the_local_proxy_row(monkeypatch):
    """`inkmcp doctor` prints the local proxy's row after Coolify's checks (those replaced here by an empty report:
    they need a Coolify; tests/coolify/test_doctor.py runs them against the stand-in)."""
    from typer.testing import CliRunner

    import inkmcp.doctor
    from inkmcp.cli import app
    from inkmcp.doctor import DoctorReport

    async def no_coolify_checks(client, *, probe=None):  # type: ignore[no-untyped-def]
        return DoctorReport()

    monkeypatch.setattr(inkmcp.doctor, "run_doctor", no_coolify_checks)
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, ["doctor", "--url", "http://127.0.0.1:9", "--token", "1|x", "--no-probe"])
    assert result.exit_code == 0, result.output
    row = next(line for line in result.output.splitlines() if "local proxy (nginx module)" in line)
    if _FOUND.path is not None:
        assert " ok " in row and "InkMCP's nginx module loaded" in row
    else:
        assert " warn " in row and "headers-more config" in row
