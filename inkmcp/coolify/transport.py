"""A lean HTTP/1.1 transport for the Coolify client: httpx's API above, asyncio streams below.

Why: httpx's default transport (httpcore over anyio, h11 parsing each event) costs ~1-1.5 ms of CPU per request on
the 2-core VM we measure on, ~0.3 ms with this one (benchmarks/coolify_deploy.py, issue 8: a first web + worker
deploy sends 12 requests, and InkMCP's overhead per deploy is counted against a 50 ms target). Coolify's API is
plain JSON over HTTP/1.1 with small bodies, so the transport needs only: keep-alive connections per origin,
Content-Length / chunked / read-until-close bodies, TLS, timeouts, and httpx's exceptions, so that the client's
retry rules (`CoolifyClient.request`: not sent → safe to repeat; sent without an answer → only idempotent calls)
see exactly what they saw before:

- `httpx.ConnectError` / `ConnectTimeout` / `PoolTimeout`: nothing was sent.
- `httpx.WriteError` / `WriteTimeout` / `ReadError` / `ReadTimeout` / `RemoteProtocolError`: the request may have
  reached Coolify.

A connection goes back to the pool only after a whole answer was read that does not say `Connection: close`; one
idle longer than `keepalive_expiry` (5 s, httpx's default and uvicorn's keep-alive timeout) or that the server
closed meanwhile (EOF seen by the event loop) is closed instead of reused, as httpcore does. A request cancelled
in flight (the client's attempt timeout, a sibling step's failure) closes its connection: its state is unknown.
Response decoding (gzip etc.) stays httpx's (`httpx.Response` decodes by the headers).

Proxies: an origin the environment sends through a proxy (`HTTP_PROXY` / `HTTPS_PROXY` / `ALL_PROXY`, either case,
minus `NO_PROXY`; read when the transport is made, as httpx reads them when a client is made) goes through httpx's
own transport with that proxy (httpcore's forwarding and CONNECT tunnels, its exceptions). Only direct origins take
the lean path: an operator who reaches Coolify through a proxy gets it, at httpx's CPU cost per request.

Why not a library instead (issue 8, measured 2026-12-01 with benchmarks/coolify_client.py `--transports`, CPU per
request): `httpx-aiohttp` 0.2.0 (aiohttp's C parser under httpx) 0.62 ms against this transport's 0.49 ms and
httpx's own 1.09 ms at load 2.6 (1.48 / 0.79 / 1.92 at load 6); per first deploy (coolify_deploy.py `--transport`)
~6 ms more CPU. Close, but it maps aiohttp's `ServerDisconnectedError` (the server hung up after the request was
sent) and `ClientOSError` (a failed write) to `httpx.ConnectTimeout`, which the client's retry rules read as
"nothing was sent": a create could be sent twice. It would need an exception mapping of our own on top and eight
more packages, so the plumbing would not go away.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.request
from collections.abc import Iterable, Mapping

import httpx

_MAX_HEADER_BYTES = 64 * 1024
_MAX_CHUNK_LINE = 1024


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.idle_since = 0.0

    def usable(self, now: float, expiry: float) -> bool:
        return not (self.reader.at_eof() or self.reader.exception() is not None or self.writer.is_closing()
                    or now - self.idle_since > expiry)

    def close(self) -> None:
        self.writer.close()


def env_proxy(url: httpx.URL, proxies: Mapping[str, str] | None = None) -> str | None:
    """The proxy the environment names for `url` (`proxies`: `urllib.request.getproxies_environment()`, i.e.
    `http_proxy`, `https_proxy`, `all_proxy`, `no_proxy` in either case), or None when it goes direct: no proxy
    for its scheme, or its host (with or without port) matches a `NO_PROXY` entry (`*`, a name and its
    subdomains, an address)."""
    proxies = urllib.request.getproxies_environment() if proxies is None else proxies
    proxy = proxies.get(url.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = url.host if url.port is None else f"{url.host}:{url.port}"
    if urllib.request.proxy_bypass_environment(host, dict(proxies)):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    t = request.extensions.get("timeout") or {}
    return {k: t.get(k) for k in ("connect", "read", "write", "pool")}


class LeanTransport(httpx.AsyncBaseTransport):
    """HTTP/1.1 with keep-alive over asyncio streams (module docstring). `max_connections` per origin: a request
    waits for a free one up to the pool timeout (`httpx.PoolTimeout`, nothing sent)."""

    def __init__(self, *, verify: ssl.SSLContext | bool = True, max_connections: int = 100,
                 max_keepalive: int = 20, keepalive_expiry: float = 5.0, trust_env: bool = True) -> None:  # fmt: skip
        """`trust_env`: honour the environment's proxy settings (module docstring), as httpx's clients do."""
        self._verify = verify
        self._proxies: dict[str, str] = urllib.request.getproxies_environment() if trust_env else {}
        self._via: dict[tuple[bytes, bytes, int], httpx.AsyncBaseTransport | None] = {}
        self._proxied: dict[str, httpx.AsyncBaseTransport] = {}
        self._ssl: ssl.SSLContext | None = None
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self.keepalive_expiry = keepalive_expiry
        self._idle: dict[tuple[bytes, bytes, int], list[_Conn]] = {}
        self._slots: dict[tuple[bytes, bytes, int], asyncio.Semaphore] = {}
        self.connects = 0
        """Connections opened so far (tests: keep-alive reuse)."""

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = self._verify if isinstance(self._verify, ssl.SSLContext) else \
                httpx.create_ssl_context(verify=self._verify)
        return self._ssl

    async def _connect(self, scheme: bytes, host: bytes, port: int, timeout: float | None) -> _Conn:
        name = host.decode("ascii")
        tls = self._ssl_context() if scheme == b"https" else None
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    name, port, ssl=tls, server_hostname=name if tls is not None else None,
                    limit=_MAX_HEADER_BYTES)  # fmt: skip
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {name}:{port} timed out") from None
        except (OSError, ssl.SSLError) as e:
            raise httpx.ConnectError(f"cannot connect to {name}:{port}: {e}") from e
        self.connects += 1
        return _Conn(reader, writer)

    def _take_idle(self, key: tuple[bytes, bytes, int]) -> _Conn | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.usable(now, self.keepalive_expiry):
                return conn
            conn.close()
        return None

    def _put_idle(self, key: tuple[bytes, bytes, int], conn: _Conn) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self._max_keepalive:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"the URL's scheme must be http or https, not {url.scheme!r}")
        port = url.port or (443 if scheme == b"https" else 80)
        key = (scheme, url.raw_host, port)
        via = self._via.get(key, self) if self._proxies else None
        if via is self:
            via = self._via[key] = self._proxy_transport(url)
        if via is not None:
            return await via.handle_async_request(request)
        timeouts = _timeouts(request)
        slots = self._slots.get(key)
        if slots is None:
            slots = self._slots[key] = asyncio.Semaphore(self._max_connections)
        if slots.locked():  # a timer only when there is a wait (each costs the event loop a heap entry)
            try:
                async with asyncio.timeout(timeouts["pool"]):
                    await slots.acquire()
            except TimeoutError:
                raise httpx.PoolTimeout("no free connection to Coolify within the pool timeout") from None
        else:
            await slots.acquire()  # free: taken at once, no suspension
        try:
            conn = self._take_idle(key) or await self._connect(scheme, url.raw_host, port, timeouts["connect"])
            body = await request.aread()
            head = _head(request, body)
            try:
                status, reason, headers, content, reusable = await self._exchange(
                    conn, head, body, request.method == "HEAD", timeouts)  # fmt: skip
            except BaseException:
                conn.close()  # unknown state: never reused
                raise
            if reusable:
                self._put_idle(key, conn)
            else:
                conn.close()
        finally:
            slots.release()
        return httpx.Response(status, headers=headers, content=content, request=request,
                              extensions={"http_version": b"HTTP/1.1", "reason_phrase": reason})

    async def _exchange(self, conn: _Conn, head: bytes, body: bytes, is_head: bool,
                        timeouts: dict[str, float | None]) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
        try:
            conn.writer.write(head + body if len(body) < 65536 else head)
            if len(body) >= 65536:
                conn.writer.write(body)
            if conn.writer.transport.get_write_buffer_size():  # the kernel did not take it all: wait, bounded
                async with asyncio.timeout(timeouts["write"]):
                    await conn.writer.drain()
            elif conn.writer.is_closing():  # the write failed at once (asyncio closed the transport)
                raise OSError("the connection to Coolify closed while sending")
        except TimeoutError:
            raise httpx.WriteTimeout("sending the request to Coolify timed out") from None
        except OSError as e:
            raise httpx.WriteError(f"sending the request to Coolify failed: {e}") from e
        try:
            async with asyncio.timeout(timeouts["read"]):
                return await _read_response(conn.reader, is_head)
        except TimeoutError:
            raise httpx.ReadTimeout("Coolify's answer did not come in time") from None
        except asyncio.IncompleteReadError as e:
            if not e.partial and not getattr(e, "in_body", False):
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
            raise httpx.RemoteProtocolError("Coolify's answer ended early") from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("Coolify's answer has a header section over 64 KiB") from None
        except (ValueError, IndexError) as e:
            raise httpx.RemoteProtocolError(f"Coolify's answer is not valid HTTP/1.1: {e}") from None
        except OSError as e:
            raise httpx.ReadError(f"reading Coolify's answer failed: {e}") from e

    def _proxy_transport(self, url: httpx.URL) -> httpx.AsyncBaseTransport | None:
        """httpx's own transport through the proxy the environment names for `url`'s origin; None: go direct."""
        proxy = env_proxy(url, self._proxies)
        if proxy is None:
            return None
        if proxy not in self._proxied:
            self._proxied[proxy] = httpx.AsyncHTTPTransport(
                proxy=httpx.Proxy(proxy), verify=self._ssl_context(), trust_env=False,
                limits=httpx.Limits(max_connections=self._max_connections,
                                    max_keepalive_connections=self._max_keepalive,
                                    keepalive_expiry=self.keepalive_expiry))  # fmt: skip
        return self._proxied[proxy]

    async def aclose(self) -> None:
        for proxied in self._proxied.values():
            await proxied.aclose()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


def _head(request: httpx.Request, body: bytes) -> bytes:
    """The request line and headers (httpx built them: Host, Accept, Content-Type, Content-Length, ...)."""
    raw: Iterable[tuple[bytes, bytes]] = request.headers.raw
    lines = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    has_length = False
    for name, value in raw:
        if b"\r" in name or b"\n" in name or b"\r" in value or b"\n" in value:
            raise httpx.LocalProtocolError("a header contains a line break")
        has_length = has_length or name.lower() in (b"content-length", b"transfer-encoding")
        lines += [name, b": ", value, b"\r\n"]
    if body and not has_length:
        lines += [b"Content-Length: ", str(len(body)).encode("ascii"), b"\r\n"]
    lines.append(b"\r\n")
    return b"".join(lines)


async def _read_response(reader: asyncio.StreamReader,
                         is_head: bool) -> tuple[int, bytes, list[tuple[bytes, bytes]], bytes, bool]:
    """One answer: (status, reason, headers, body, whether the connection can carry another request)."""
    while True:
        raw = await reader.readuntil(b"\r\n\r\n")
        lines = raw[:-4].split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        status = int(code)
        if not version.startswith(b"HTTP/1.") or not 100 <= status <= 999:
            raise ValueError(f"status line {lines[0][:80]!r}")
        if 100 <= status < 200 and status != 101:
            continue  # an interim answer (e.g. 100 Continue): the real one follows
        break
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    chunked = False
    close = version == b"HTTP/1.0"
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"header line {line[:80]!r}")
        value = value.strip()
        headers.append((name, value))
        lname = name.strip().lower()
        if lname == b"content-length":
            length = int(value)
            if length < 0:
                raise ValueError("negative Content-Length")
        elif lname == b"transfer-encoding":
            chunked = value.lower().endswith(b"chunked")
        elif lname == b"connection":
            tokens = {t.strip().lower() for t in value.split(b",")}
            close = b"close" in tokens or (close and b"keep-alive" not in tokens)
    if is_head or status in (204, 304):
        return status, reason, headers, b"", not close
    try:
        if chunked:
            body = await _read_chunked(reader)
        elif length is not None:
            body = await reader.readexactly(length)
        else:  # delimited by the end of the connection
            body = await reader.read(-1)
            close = True
    except asyncio.IncompleteReadError as e:
        e.in_body = True  # type: ignore[attr-defined]
        raise
    return status, reason, headers, body, not close


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = await reader.readuntil(b"\r\n")
        if len(line) > _MAX_CHUNK_LINE:
            raise ValueError("chunk size line too long")
        size = int(line[:-2].split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers, ignored
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise ValueError("chunk not followed by CRLF")
