"""The GitHub token never enters a tenant's process: private fetches go through a loopback proxy in InkMCP's own
process, which adds the Authorization header itself (issue 11).

Why: the git processes that fetch a project's sources run as the project's Unix user (build/source.py). Any process
of that same uid can read another's `/proc/PID/environ` and `cmdline`, its open pipes (`/proc/PID/fd/N`) and, without
Yama's ptrace restriction (this Debian kernel has none), its memory. So a token handed to git in any way (argv,
environment, GIT_ASKPASS over a pipe, a credential helper) is readable by the tenant's own app during the fetch, and
the token's `repo` scope reaches every repository of the user, not just this one.

How: `register(upstream, header)` returns a one-off base URL `http://127.0.0.1:PORT/<random 32 bytes>`, and git gets
only `url.<that>.insteadOf=<repo URL>` (environment, so not in the world-readable argv). The proxy accepts, under
that secret and until it expires, nothing but the smart-HTTP *read* requests of that one repository
(`GET info/refs?service=git-upload-pack`, `POST git-upload-pack`), forwards them to the registered upstream with the
header, follows no redirect, and streams the answer back. What the secret gives whoever reads it (only that uid can:
it is in the git process's environment) is a read of this repository for a couple of minutes: the code the project
is deploying anyway. Other uids on the machine cannot read the environment, so they cannot use it.

One proxy per event loop, started on first use (a coroutine server on 127.0.0.1, port chosen by the kernel).

Any local process of any uid can connect to the port, so a request is judged on its request line alone: without a
live secret (or for another path) it is answered 404 and the connection closed *before* its body is read (no 100
Continue, nothing buffered), and a connection idle for IDLE_S is dropped. Only a holder of a live secret can make the
proxy hold a body (up to MAX_REQUEST) or an upstream request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
import weakref
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import h11
import httpx

from inkmcp.github.client import tls_context

log = logging.getLogger(__name__)

FORWARDED_REQUEST_HEADERS = ("content-type", "accept", "git-protocol", "content-encoding", "accept-encoding",
                             "user-agent")
FORWARDED_RESPONSE_HEADERS = ("content-type", "cache-control", "expires", "pragma", "content-encoding")
MAX_REQUEST = 64 << 20  # an upload-pack request (wants/haves) is small; a bound against a flood
IDLE_S = 60.0  # a connection that sends nothing this long is closed (git's requests are back to back)


@dataclass
class _Grant:
    upstream: str  # the repository's https URL, without a trailing slash or .git normalisation (as git uses it)
    header: str = field(repr=False)  # "Authorization: Basic ..."
    expires: float


class GitCredentialProxy:
    def __init__(self) -> None:
        self._grants: dict[str, _Grant] = {}
        self._server: asyncio.Server | None = None
        self._starting: asyncio.Lock = asyncio.Lock()
        self._http = httpx.AsyncClient(follow_redirects=False, timeout=httpx.Timeout(60.0, connect=15.0),
                                       verify=tls_context())  # the shared one: no CA bundle load on the loop
        self.port = 0
        # (method, path without the secret, status) of the latest requests, for tests and debugging (bounded)
        self.requests: collections.deque[tuple[str, str, int]] = collections.deque(maxlen=256)

    async def start(self) -> None:
        async with self._starting:
            if self._server is None:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
                self.port = self._server.sockets[0].getsockname()[1]
                from inkmcp.providers.compute.local import loopguard  # --- loopback: tenants' git reaches it

                loopguard.share_port(self.port)

    async def register(self, upstream: str, header: str, ttl: float) -> str:
        """A base URL that reads `upstream` with `header` for `ttl` seconds (module docstring)."""
        await self.start()
        now = time.monotonic()
        self._grants = {k: g for k, g in self._grants.items() if g.expires > now}
        secret = secrets.token_urlsafe(32)
        self._grants[secret] = _Grant(upstream.rstrip("/"), header, now + ttl)
        return f"http://127.0.0.1:{self.port}/{secret}"

    def revoke(self, base_url: str) -> None:
        self._grants.pop(urlsplit(base_url).path.strip("/"), None)

    # -- one connection (git's libcurl keeps it alive across its requests) -----------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, grant, body = await self._read_request(conn, reader, writer)
                if request is None:
                    return
                await self._answer(conn, writer, request, grant, body)
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except (h11.RemoteProtocolError, ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            return
        except Exception:
            log.exception("git credential proxy: a request failed")
        finally:
            writer.close()

    def _grant(self, request: h11.Request) -> tuple[_Grant, str, str] | None:
        """(grant, path after the secret, query) when the request line names a live secret and one of the two
        upload-pack reads; None otherwise (answered 404 without reading the body)."""
        method = request.method.decode()
        path, _, query = request.target.decode("latin-1").partition("?")
        secret, _, rest = path.lstrip("/").partition("/")
        rest = rest.lstrip("/")  # a repo URL given with a trailing slash: git asks for <base>//info/refs
        grant = self._grants.get(secret)
        allowed = (method == "GET" and rest == "info/refs" and query == "service=git-upload-pack") or \
            (method == "POST" and rest == "git-upload-pack" and not query)
        if grant is None or grant.expires < time.monotonic() or not allowed:
            return None
        return grant, rest, query

    async def _read_request(self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                            ) -> tuple[h11.Request | None, tuple[_Grant, str, str] | None, bytes]:
        request: h11.Request | None = None
        grant: tuple[_Grant, str, str] | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                async with asyncio.timeout(IDLE_S):
                    data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None, None, b""
                continue
            if isinstance(event, h11.Request):
                request = event
                grant = self._grant(request)
                if grant is None:  # judged on the request line: no body of a stranger is read or held
                    return request, None, b""
                if conn.they_are_waiting_for_100_continue:  # libcurl's `Expect: 100-continue` on a big POST
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_REQUEST:
                    raise h11.RemoteProtocolError("request body too large")
            elif isinstance(event, h11.EndOfMessage):
                return request, grant, bytes(body)
            elif isinstance(event, h11.ConnectionClosed):
                return None, None, b""

    async def _answer(self, conn: h11.Connection, writer: asyncio.StreamWriter, request: h11.Request,
                      granted: tuple[_Grant, str, str] | None, body: bytes) -> None:
        method = request.method.decode()
        if granted is None:
            path = request.target.decode("latin-1").partition("?")[0].lstrip("/")
            self.requests.append((method, path.partition("/")[2].lstrip("/"), 404))  # never the secret part
            await self._send(conn, writer, 404, [("content-type", "text/plain"), ("connection", "close")],
                             [b"Not found\n"])
            return
        grant, rest, query = granted
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in request.headers}
        forward = {k: headers[k] for k in FORWARDED_REQUEST_HEADERS if k in headers}
        name, _, value = grant.header.partition(": ")
        forward[name] = value
        url = f"{grant.upstream}/{rest}" + (f"?{query}" if query else "")
        try:
            upstream = self._http.build_request(method, url, headers=forward,
                                                content=body if method == "POST" else None)
            response = await self._http.send(upstream, stream=True)
        except httpx.HTTPError as e:
            self.requests.append((method, rest, 502))
            await self._send(conn, writer, 502, [("content-type", "text/plain")],
                             [f"upstream unreachable: {type(e).__name__}\n".encode()])
            return
        try:
            out = [(k, response.headers[k]) for k in FORWARDED_RESPONSE_HEADERS if k in response.headers]
            if 300 <= response.status_code < 400:  # never followed, never passed on (it could lead anywhere)
                self.requests.append((method, rest, 502))
                await self._send(conn, writer, 502, [("content-type", "text/plain")], [b"upstream redirected\n"])
                return
            self.requests.append((method, rest, response.status_code))
            await self._send(conn, writer, response.status_code, out, response.aiter_raw())
        finally:
            await response.aclose()

    @staticmethod
    async def _send(conn: h11.Connection, writer: asyncio.StreamWriter, status: int,
                    headers: list[tuple[str, str]], chunks: object) -> None:
        writer.write(conn.send(h11.Response(status_code=status, headers=[
            *headers, ("transfer-encoding", "chunked")])) or b"")
        if hasattr(chunks, "__aiter__"):
            async for chunk in chunks:  # type: ignore[attr-defined]
                if chunk:
                    writer.write(conn.send(h11.Data(data=chunk)) or b"")
                    await writer.drain()
        else:
            for chunk in chunks:  # type: ignore[attr-defined]
                writer.write(conn.send(h11.Data(data=chunk)) or b"")
        writer.write(conn.send(h11.EndOfMessage()) or b"")
        await writer.drain()


_PROXIES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, GitCredentialProxy] = weakref.WeakKeyDictionary()


def proxy() -> GitCredentialProxy:
    """This event loop's proxy (made on first use; started by `register`)."""
    loop = asyncio.get_running_loop()
    found = _PROXIES.get(loop)
    if found is None:
        found = _PROXIES[loop] = GitCredentialProxy()
    return found


async def git_env(fetch_url: str, header: str, ttl: float) -> tuple[tuple[tuple[str, str], ...], str]:
    """The git environment that fetches `fetch_url` through the proxy (git's URL rewriting, `insteadOf`), and the
    secret base URL (to scrub from git's messages). The header stays in this process."""
    base = await proxy().register(fetch_url, header, ttl)
    return (("GIT_CONFIG_COUNT", "1"), ("GIT_CONFIG_KEY_0", f"url.{base}.insteadOf"),
            ("GIT_CONFIG_VALUE_0", fetch_url.rstrip("/"))), base
