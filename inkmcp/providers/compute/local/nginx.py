"""nginx (Debian's package) as the local provider's data plane; InkMCP keeps the route table and wakes.

Why: the Python proxy (proxy.py) serves 0.33-0.45x of nginx's requests per second and adds 2-10x its
latency on new connections (benchmarks/proxy_speed.py, baselines in benchmarks/baselines/). Rather
than chase a C event loop in Python, the bytes go through nginx itself, configured by InkMCP:

- One `server` block per routed hostname (`server_name` hash lookup, as fast as nginx gets), whose
  upstream is the service's current port with InkMCP's own proxy (the "slow path", a `Proxy` on an
  ephemeral loopback port) as `backup`. A sleeping on_demand service routes to the slow path only.
- The slow path is today's Python proxy with the same route objects: it wakes a sleeping service
  and answers the waking request once the app is ready (never a 502), answers 404 for unknown hosts
  and 400 for an ambiguous Host (the default server). Because it is nginx's `backup`, a request that
  nginx could not hand to a port that just stopped (a release switch, a service put to sleep before
  the reload took effect) is retried there, where the route table is always current: nginx's
  `proxy_next_upstream error timeout` retries only what the app never received (no non-idempotent
  request is sent twice).
- A route change (deploy, switch, wake, sleep, rename, removal) re-renders the config and sends
  SIGHUP; changes coalesce, and `drain` waits until the new generation answers on a control socket
  and no connection to the old port is left. A reload lets the old workers finish what they carry.
- Idle tracking: for on_demand hosts only, nginx logs each finished request's hostname to a unix
  datagram socket (syslog) that InkMCP reads to `touch` the route; open connections to the app's port
  (a WebSocket, a long request) are counted from the kernel's table when idle detection asks
  (`Route.counter`). Always-on hosts log nothing, so they pay nothing.
- The listening socket is bound by InkMCP (port 0 works, "address in use" is InkMCP's error) and
  inherited by nginx through the NGINX environment variable, as nginx's own binary upgrade does
  (INKMCP_PROXY_REUSEPORT=true: one SO_REUSEPORT socket per worker instead).
- nginx stays in InkMCP's session: with the kernel's autogroup scheduling, a session of its own gave
  nginx one group's CPU share against everything else and 0.4-0.7x nginx's throughput in the benchmark.
- Responses nginx generates itself say `Server: inkmcp`, as the Python proxy's do; an app's own `Server`
  header passes unchanged. InkMCP's own nginx module (nginx_module/, built for the installed nginx by
  `make install`) does that, the Host check, the client sockets' TCP_NODELAY and the forwarded headers
  (X-Forwarded-*, X-Real-IP from the connection; a client's own never reach the app) in C: 0.88x the
  instructions a request of an nginx setting the same forwarded headers, 0.99x of one setting none. Without
  a build for this nginx (INKMCP_PROXY_MODULE=off, a new nginx from apt, no compiler), the same rules run
  as directives with the headers-more module (0.99x), the reason logged once at start and shown by
  `inkmcp doctor`.
- What nginx does per request is measured, not guessed: `benchmarks/proxy_speed.py --cost` counts each
  config's user-space instructions (callgrind) and syscalls (strace) per request against the baseline's;
  the comments in the template below give each choice's measured cost (docs/serving.md, "The front proxy").

`make_proxy` chooses nginx or the Python proxy from `ProxySettings` (INKMCP_PROXY_ENGINE).
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Literal

import jinja2
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from inkmcp.errors import InvalidArgument
from inkmcp.providers.compute.local import nginx_module
from inkmcp.providers.compute.local.proxy import (
    FORWARDED_ONLY_DROPPED,
    FORWARDED_SET,
    HEAD_TIMEOUT,
    MAX_HEAD_BYTES,
    Proxy,
    Route,
    RouteConflict,
)

log = logging.getLogger(__name__)

HEADERS_MORE = "/usr/lib/nginx/modules/ngx_http_headers_more_filter_module.so"
RELOAD_TIMEOUT = 10.0
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
WAKE_RELOAD_WAIT = 0.05  # --- wake: see _reload_loop
# What nginx itself answers with here (parse errors, the Host check, 431, upstream failures, TRACE's 405).
OWN_STATUSES = (400, 404, 405, 408, 411, 413, 414, 416, 421, 431, 494, 500, 501, 502, 503, 504, 505, 507)
_HOST = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\Z")
# --- proxy12: the forwarded headers the proxy owns (see the template): it sets proxy.FORWARDED_SET and drops every
# other spelling of those and of proxy.FORWARDED_ONLY_DROPPED (the Python proxy, facing clients, drops the same).


def _spellings(name: str) -> list[str]:
    """`name` with each `-` as `-` or `_` (X-Real-IP, X_Real-IP, X-Real_IP, X_Real_IP)."""
    parts = name.split("-")
    return ["".join(p + s for p, s in zip(parts, (*seps, ""), strict=True))
            for seps in itertools.product("-_", repeat=len(parts) - 1)]  # fmt: skip


# The fallback's X-Forwarded-For value (a quoted nginx string: `\r\n` is CR LF) with the four lines after it; the
# module's $inkmcp_forwarded is the same bytes (tests/local/test_nginx_module.py compares them). {suffix}: the port.
FORWARDED_VALUE = (r"$remote_addr\r\nX-Real-IP: $remote_addr\r\nX-Forwarded-Host: $host{suffix}\r\n"
                   r"X-Forwarded-Proto: $scheme\r\nX-Forwarded-Port: $server_port")
FORWARDED_DROP = tuple(
    s for name in (*FORWARDED_SET, *FORWARDED_ONLY_DROPPED) for s in _spellings(name) if s not in FORWARDED_SET
)
# --- end


class ProxySettings(BaseSettings):
    """Which data plane serves the local provider's routes (env INKMCP_PROXY_ENGINE, INKMCP_PROXY_NGINX...)."""

    model_config = SettingsConfigDict(env_prefix="INKMCP_PROXY_", extra="ignore")

    engine: Literal["nginx", "python"] = Field(
        "nginx",
        description="nginx: Debian's nginx carries the traffic, InkMCP configures it and wakes on_demand services "
        "(installed by `make install` / scripts/system-deps.sh). python: InkMCP's own asyncio proxy, slower, "
        "no system package needed; it sets the same forwarded headers and so serves one request per client "
        "connection (no keep-alive).",
    )
    nginx: Path = Field(Path("/usr/sbin/nginx"), description="The nginx binary (engine=nginx).")
    headers_more: Path = Field(
        Path(HEADERS_MORE),
        description="nginx's headers-more module (Debian: libnginx-mod-http-headers-more-filter), which lets the "
        "responses nginx makes itself say `Server: inkmcp`.",
    )
    module: Literal["auto", "off"] = Field(
        "auto",
        description="auto: load InkMCP's nginx module when `make install` built it for this nginx (the Host check "
        "and the Server rule in C), else the headers-more config, with the reason logged at start. off: always "
        "the headers-more config.",
    )
    workers: int = Field(0, ge=0, le=64, description="nginx worker processes; 0 = one per CPU (`auto`).")
    reuseport: bool = Field(
        False,
        description="One listening socket per nginx worker (SO_REUSEPORT) instead of one shared queue. Measured "
        "here (benchmarks/proxy_speed.py): better for many kept-alive connections, worse for a new connection "
        "per request (a busy worker's queue waits while the other idles), so off by default.",
    )


def make_proxy(
    host: str, port: int, *, wake_timeout: float, runtime_dir: Path, settings: ProxySettings | None = None
) -> Proxy | NginxProxy:
    """The data plane `ProxySettings` asks for; both have the same routing API (see `Proxy`)."""
    settings = settings or ProxySettings()
    if settings.engine == "python":
        return Proxy(host, port, wake_timeout=wake_timeout, edge=True)  # --- proxy12: it faces the clients
    return NginxProxy(host, port, wake_timeout=wake_timeout, runtime_dir=runtime_dir, settings=settings)


# -- the kernel's view of connections ----------------------------------------------------------------


def established_to(port: int) -> int:
    """Established TCP connections whose peer is 127.0.0.1:`port` (clients of the app listening there)."""
    want = f"0100007F:{port:04X}"
    count = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp", "rb") as fh:
        fh.readline()
        for line in fh:
            fields = line.split(None, 4)
            if len(fields) > 3 and fields[3] == b"01" and fields[2].decode() == want:
                count += 1
    return count


# -- configuration -----------------------------------------------------------------------------------

_CONF = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True).from_string(  # noqa: S701 - an nginx config
    """\
# Written by InkMCP (inkmcp/providers/compute/local/nginx.py); every change is overwritten.
{% if user %}user {{ user }};
{% endif %}worker_processes {{ workers }};
pid {{ dir }}/nginx.pid;
# The Host checks' regexes (below; one runs for every request) compiled to machine code.
pcre_jit on;
# --- redteam3: crit, not warn. Every request an app fails (it closes without answering, sends a bad head) was
# an `error` line of up to 2 KiB, the request's path and all, in a file nothing rotates, on the data dir's
# filesystem (the control plane's): anyone could grow it by sending requests to a failing app (4 KiB a request
# measured; tests/security/test_redteam3_proxy_log.py). What is left is nginx's own trouble: start-up,
# configuration, resources. An app's failures are its visitors' 502s and its own runtime log.
error_log {{ dir }}/error.log crit;
# --- end
load_module {{ module or headers_more }};
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    # Sized for the longest routed name (a DNS name may have 253 characters; nginx's default buckets hold
    # ~46, and a longer name made every reload fail with "could not build server_names_hash").
    server_names_hash_bucket_size {{ hash_bucket }};
    server_names_hash_max_size {{ hash_max }};
    client_body_temp_path {{ dir }}/tmp/body;
    proxy_temp_path {{ dir }}/tmp/proxy;
    fastcgi_temp_path {{ dir }}/tmp/fastcgi;
    uwsgi_temp_path {{ dir }}/tmp/uwsgi;
    scgi_temp_path {{ dir }}/tmp/scgi;
    # What the Python proxy allowed: any body size, a {{ head_kb }} KiB head read within {{ head_timeout }} s,
    # no header rewritten or dropped but X-Forwarded-* (below), no timeout on a quiet upgraded connection.
    client_max_body_size 0;
    client_header_timeout {{ head_timeout }}s;
    # nginx's default (1k, what the baseline nginx in benchmarks/proxy_speed.py uses): a buffer malloc'd and
    # freed for every request on a kept-alive connection; 4k cost ~400 instructions a request more (past
    # glibc's per-thread cache). A longer head moves into one of the large buffers, up to {{ head_kb }} KiB.
    client_header_buffer_size 1k;
    large_client_header_buffers 4 {{ head_kb }}k;
    # Each request's memory pool (nginx's default: 4k) in one piece: a proxied request here needs 6-8k for
    # the small benchmark request and ~12k for a browser's (16 headers, a 1.3 KB cookie), so with 4k nginx
    # malloc'd one to three more blocks a request. 16k: one malloc and free a request, ~1,250 instructions
    # fewer for the small request and ~1,500 for the browser's (callgrind, proxy_speed.py --cost); memory per
    # request in flight 16k instead of 8-12k. Buffers of a page or more (the upstream buffer) are separate.
    request_pool_size 16k;
    client_body_timeout 1h;
    send_timeout 1h;
    keepalive_timeout 75s;
    keepalive_requests 100000;
    underscores_in_headers on;
    ignore_invalid_headers off;
    # Kept on, measured (proxy_speed.py --cost, 2026-12-01): with proxy_buffering off nginx sets TCP_NODELAY on
    # each new client connection (13 syscalls a request on a new connection, the baseline's 12). `tcp_nodelay
    # off` would save it (the listening socket's flag, which accepted sockets inherit, covers the client side),
    # but nginx's connection to the app must keep TCP_NODELAY for an upgrade (WebSocket) and for a body streamed
    # to the app (proxy_request_buffering off), or Nagle holds the next small write until the app's delayed ACK
    # (up to 40 ms); sending those requests to a `tcp_nodelay on` location took three server-level `if`s
    # ($http_upgrade, $content_length, $http_transfer_encoding): +452 instructions on every request (+2.3 %,
    # kept-alive ones included) for one ~0.4 us syscall per connection. A map over the three headers cost
    # +1,136, the `if`s inside the location +589. tests/local/test_nginx_proxy.py checks every such socket.
    tcp_nodelay on;
    proxy_http_version 1.1;
    proxy_buffering off;
    # An answer's head must fit this one buffer (nginx's default is a page, 4k: an app answering with a 5 KB
    # head, e.g. a few cookies and a CSP, got nginx's 502 "upstream sent too big header"; the Python proxy
    # passed any). 16k: heads up to 16 KiB; with buffering off it also carries the body, so fewer reads and
    # writes for large answers. Per request the same one malloc (callgrind: no more instructions); an
    # upgraded (WebSocket) connection holds two, 32k instead of 8k. busy_buffers must stay below the unused
    # proxy_buffers' total for nginx to accept the config.
    proxy_buffer_size 16k;
    proxy_busy_buffers_size 16k;
    proxy_request_buffering off;
    proxy_connect_timeout 5s;
    proxy_read_timeout 1d;
    proxy_send_timeout 1d;
    proxy_next_upstream error timeout;
    # A client that half-closes after its request (shutdown(SHUT_WR)) still gets its answer, as from the
    # Python proxy, which passed the EOF on and kept reading the response.
    proxy_ignore_client_abort on;
    proxy_next_upstream_tries 2;
    proxy_set_header Host $host{{ port_suffix }};
    # --- redteam2: the X-Forwarded-* an app reads are the proxy's, never the client's (nginx passed a client's
    # X-Forwarded-Host/-Proto/-For through untouched and added none: an app trusting its one proxy hop, as on the
    # Coolify path, where Traefik overwrites them for untrusted clients, took an attacker's X-Forwarded-Host into
    # its password-reset links). This proxy is the edge: the client's own values are replaced, `Forwarded` dropped.
    # --- proxy12: X-Forwarded-For is the connecting address alone (replaced, not appended: nothing in front of
    # this proxy is trusted, so a client's list would be the client's word). Every name set here, with an empty
    # value or not, is in the proxy module's hash of names it never copies from the client: any casing, every
    # duplicate. The `_` spellings are dropped too: WSGI/CGI servers map `X_Forwarded_For` to the same
    # HTTP_X_FORWARDED_FOR (nginx would pass them: underscores_in_headers on), and names a proxy-trusting app
    # may read (Traefik's X-Forwarded-Server/-Uri/-Method, Werkzeug's X-Forwarded-Prefix) are dropped as well.
    # Static empty values cost nothing a request (no script runs; the names only join the hash it looks up anyway).
    # X-Forwarded-For's value carries the four lines after it (X-Real-IP, X-Forwarded-Host, -Proto, -Port), whose
    # own names are set to "" below so the client's are dropped: one header script instead of five. With InkMCP's
    # module the whole value is one variable of its own ($inkmcp_forwarded, the same bytes): ~2,400 instructions
    # a request fewer than five `proxy_set_header` lines with variables (benchmarks/proxy_speed.py --cost).
{% if module %}    proxy_set_header X-Forwarded-For $inkmcp_forwarded;
{% else %}    proxy_set_header X-Forwarded-For "{{ forwarded_value }}";
{% endif %}{% for name in forwarded_set %}    proxy_set_header {{ name }} "";
{% endfor %}{% for name in forwarded_drop %}    proxy_set_header {{ name }} "";
{% endfor %}    # --- end
    proxy_set_header Upgrade $http_upgrade;
    proxy_set_header Connection $inkmcp_connection;
    proxy_pass_header Date;
    map $http_upgrade $inkmcp_connection { default upgrade; "" ""; }
    # nginx's own answers say "Server: inkmcp"; an app's (or the slow path's) Server header passes as is
    # (none stays none). Cost per request, measured with callgrind (benchmarks/proxy_speed.py --cost): the
    # $upstream_status map on every response was ~1,900 instructions of ~24,000; here the common path reads
    # only $upstream_http_server, and the map runs only for the statuses nginx itself can answer with.
    # `proxy_pass_header Server`: an app's header is copied by nginx itself into the answer's Server slot, which
    # the rule below then rewrites in place; measured ~100 instructions a request fewer even for the benchmark's
    # app, which sends no Server header (callgrind, 2026-12-01). The answer is the same.
    # Together the two rules still cost ~830 a request and the Host check ~700 (of ~19,700): InkMCP's module
    # (nginx_module/, built by `make install`) does all three in C when it is built for this nginx.
    proxy_pass_header Server;
{% if module %}    # InkMCP's module (nginx_module/): the Server rule, the Host check (RFC 9112 3.2: a Host that is not
    # host[:port] is answered 400, never routed on what nginx makes of it) and the client sockets' TCP_NODELAY
    # taken from the listening socket, in C (and $inkmcp_forwarded, above): 0.88x the instructions a request
    # of an nginx that sets the same forwarded headers (--cost).
    inkmcp_server_header on;
    inkmcp_host_check on;
    inkmcp_inherited_nodelay on;
{% else %}    map $upstream_status $inkmcp_server { "" inkmcp; default $upstream_http_server; }
    more_set_headers "Server: $upstream_http_server";
    more_set_headers -s "{{ own_statuses }}" "Server: $inkmcp_server";
    # RFC 9112 3.2: a Host that is not host[:port] is answered 400, never routed on what nginx makes of it
    # (it would read "alice:80.mallory" as alice). Empty: HTTP/1.0 without Host, or an absolute-form target.
    # (The default server's check; a routed name's server needs less, see there.)
    map $http_host $inkmcp_bad_host {
        default 1;
        "" 0;
        "~^[A-Za-z0-9.-]+(:[0-9]{1,5})?$" 0;
        "~^\\[[0-9A-Fa-f:.]+\\](:[0-9]{1,5})?$" 0;
    }
{% endif %}    log_format inkmcp_idle '$server_name';

    upstream inkmcp_slow { server 127.0.0.1:{{ slow_port }}; }
{% for r in routes %}{% if r.port %}
    upstream {{ r.name }} {
        server 127.0.0.1:{{ r.port }} max_fails=0;
        server 127.0.0.1:{{ slow_port }} backup;
        keepalive 32;
        keepalive_timeout {{ "1s" if r.track else "60s" }};
    }
{% endif %}{% endfor %}
    server {
        # Not `deferred` (TCP_DEFER_ACCEPT), though it saves 2 of 13 syscalls a new connection: it moves the
        # kernel's creation of the connection and nginx's accept behind the request's first bytes, onto the
        # request's own path. Measured (load generator and nginx on separate CPUs, 10 alternating rounds, as
        # proxy_speed.py --layout split): p50 of a request on a new connection 1.15x the baseline nginx's with
        # it (1.16-1.29x in three benchmark runs), 0.98x without; requests/s equal within noise at 1 and 32.
        listen {{ listen }} default_server backlog=1024{{ " reuseport" if reuseport else "" }};
        server_name "";
        error_page 494 =431 @inkmcp_431;
{% if not module %}        if ($inkmcp_bad_host) { return 400 "invalid Host header\\n"; }
{% endif %}        location / { proxy_pass http://inkmcp_slow; }
        location @inkmcp_431 { default_type text/plain; return 431 "request head exceeds {{ head_kb }} KiB\\n"; }
    }
{% for r in routes %}
    server {
        listen {{ listen }};
        server_name {{ r.host }};
        error_page 494 =431 @inkmcp_431;
        # The map's check for a Host nginx matched to this name: what precedes its first ":" is the name,
        # so only a port that is not 1-5 digits is left to refuse (~700 instructions a request fewer than
        # the map's lowercase-and-hash, callgrind). With an absolute-form target (routed by the target's
        # host), a Host with a colon not followed by a port is refused: stricter than the map for "[::1]".
{% if not module %}        if ($http_host ~ ":(?![0-9]{1,5}$)") { return 400 "invalid Host header\\n"; }
{% endif %}        location / {
            proxy_pass http://{{ r.name if r.port else "inkmcp_slow" }};
{% if r.track %}            access_log syslog:server=unix:{{ dir }}/idle.sock,nohostname,tag=inkmcp inkmcp_idle;
{% endif %}        }
        location @inkmcp_431 { default_type text/plain; return 431 "request head exceeds {{ head_kb }} KiB\\n"; }
    }
{% endfor %}
    server {
        listen unix:{{ dir }}/ctl.sock;
        location = /generation { return 200 "{{ generation }}"; }
        location / { return 404; }
    }
}
"""
)


class _IdleLog(asyncio.DatagramProtocol):
    """Reads nginx's syslog lines ("<pri>... inkmcp: <host>") and touches the route of each host."""

    def __init__(self, proxy: NginxProxy) -> None:
        self.proxy = proxy

    def datagram_received(self, data: bytes, addr: object) -> None:
        host = data.rsplit(b" ", 1)[-1].strip().decode("latin-1")
        route = self.proxy.get_route(host)
        if route is not None:
            route.touch()


class NginxProxy:
    """The routing API of `Proxy`, served by an nginx master this object starts, reloads and stops."""

    def __init__(
        self, host: str, port: int, *, wake_timeout: float, runtime_dir: Path, settings: ProxySettings | None = None
    ) -> None:
        self.host = host
        self.port = port
        self.wake_timeout = wake_timeout
        self.dir = Path(runtime_dir)
        self.settings = settings or ProxySettings()
        self.slow = Proxy("127.0.0.1", 0, wake_timeout=wake_timeout, one_request=True)
        self._names: dict[int, str] = {}  # id(route) -> its upstream's name, stable for the route's life
        self._seq = itertools.count(1)
        self._generation = 0  # last config written
        self._applied = 0  # last config nginx confirmed serving
        self._dirty = False
        self._old_workers: set[int] = set()  # workers of earlier configs not yet told to quit
        self._reloader: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._listener: socket.socket | None = None
        self._idle: asyncio.DatagramTransport | None = None
        self._started = False
        self.module: Path | None = None  # InkMCP's nginx module while it is loaded
        self.module_reason = "not started"  # why it is not, when it is not

    # -- routing table (the slow path's table is the one table) ---------------------------------------

    def set_route(self, route: Route) -> None:
        self.slow.set_route(route)
        self._adopt(route)
        self._changed()

    def get_route(self, host: str) -> Route | None:
        return self.slow.get_route(host)

    def remove_route(self, host: str, owner: str) -> bool:
        route = self.slow.get_route(host)
        removed = self.slow.remove_route(host, owner)
        if removed and route is not None:
            route.on_change = None
            route.counter = None
            self._names.pop(id(route), None)
            self._changed()
        return removed

    def move_route(self, route: Route, new_host: str) -> None:
        try:
            self.slow.move_route(route, new_host)
        except RouteConflict:
            raise
        self._adopt(route)
        self._changed()

    def connections_to(self, port: int) -> int:
        """Connections carrying traffic to upstream `port`: through the slow path, and any other client's."""
        return max(self.slow.connections_to(port), established_to(port))

    async def drain(self, port: int, timeout: float) -> bool:
        """Wait (at most `timeout` s) until nginx serves the current routes, every worker of an older
        config has been told to quit, and nothing is connected to `port`.

        The middle step matters: after a reload nginx's master starts the new workers, sleeps 100 ms and
        only then tells the old ones to quit; until then they still take requests for the old port.
        """
        deadline = time.monotonic() + timeout
        await self.settled(timeout)
        while self._old_workers_serving() or self.connections_to(port):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    # --- redteam2 (portguard): what a crashed run's held port waits for before it is let go
    async def switched(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) until nginx serves the current routes and no worker of an older config
        takes new requests; unlike `drain`, connections already made to the old port are not waited for (a
        crashed process's held socket has them queued, unanswered: they are reset when it closes)."""
        deadline = time.monotonic() + timeout
        await self.settled(timeout)
        while self._old_workers_serving():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)
        return True
    # --- end

    def _old_workers_serving(self) -> bool:
        """Whether a worker of a config before the last reload still takes new requests."""
        for pid in list(self._old_workers):
            try:
                title = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                title = b""
            if not title or b"shutting down" in title:
                self._old_workers.discard(pid)
        return bool(self._old_workers)

    def _workers(self) -> set[int]:
        if self._proc is None:
            return set()
        try:
            children = Path(f"/proc/{self._proc.pid}/task/{self._proc.pid}/children").read_text()
        except OSError:
            return set()
        return {int(pid) for pid in children.split()}

    async def settled(self, timeout: float = RELOAD_TIMEOUT) -> bool:
        """Wait until nginx serves the latest route table; False if it did not within `timeout`."""
        deadline = time.monotonic() + timeout
        while self._dirty or (self._reloader is not None and not self._reloader.done()):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.002)
        return self._applied == self._generation

    def _adopt(self, route: Route) -> None:
        if id(route) not in self._names:
            self._names[id(route)] = f"inkmcp_r{next(self._seq)}"
        route.on_change = self._changed
        route.counter = lambda: established_to(route.port) if route.port else 0

    def _changed(self) -> None:
        self._dirty = True
        if self._started and (self._reloader is None or self._reloader.done()):
            self._reloader = asyncio.get_running_loop().create_task(self._reload_loop(), name="nginx-reload")

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> None:
        nginx, more = self.settings.nginx, self.settings.headers_more
        if not os.access(nginx, os.X_OK):
            raise InvalidArgument(
                f"nginx is not installed at {nginx}; the local provider's proxy runs on it",
                argument="INKMCP_PROXY_NGINX",
                fix="run `make install` (or `apt-get install nginx libnginx-mod-http-headers-more-filter`), "
                "point INKMCP_PROXY_NGINX at the binary, or set INKMCP_PROXY_ENGINE=python",
            )
        found = await asyncio.to_thread(self._find_module)
        self.module, self.module_reason = found.path, found.reason
        if self.module is None and not more.is_file():
            raise InvalidArgument(
                f"nginx's headers-more module is missing at {more} (and {found.reason})",
                argument="INKMCP_PROXY_HEADERS_MORE",
                fix="run `make install` (or `apt-get install libnginx-mod-http-headers-more-filter`), "
                "or set INKMCP_PROXY_ENGINE=python",
            )
        await asyncio.to_thread(self._prepare_dir)
        await self.slow.start()
        try:
            self._listener = _listen(self.host, self.port, reuseport=self.settings.reuseport)
            self.port = self._listener.getsockname()[1]
            self._idle = await self._open_idle_socket()
            self._write_config()
            try:
                await self._spawn()
            except RuntimeError as exc:
                if self.module is None or not more.is_file():
                    raise
                # A build nginx refuses (it should not happen: the build's name is its nginx's `nginx -V`): the
                # same rules as directives, rather than no proxy.
                self.module, self.module_reason = None, f"nginx did not start with {self.module.name}: {exc}"
                proc, self._proc = self._proc, None
                if proc is not None and proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                self._write_config()
                await self._spawn()
            if self.module is None:
                log.log(logging.INFO if self.settings.module == "off" else logging.WARNING,
                        "nginx proxy: InkMCP's nginx module is not used (%s); the same rules run as "
                        "directives with headers-more (~2,500 instructions a request more). To build it: %s",
                        self.module_reason, nginx_module.HOW_TO_BUILD)  # fmt: skip
            self._started = True
            if self._dirty:
                self._changed()
        except BaseException:
            await self.close()
            raise

    def _find_module(self) -> nginx_module.Found:
        if self.settings.module == "off":
            return nginx_module.Found(None, "INKMCP_PROXY_MODULE=off")
        return nginx_module.find(self.settings.nginx)

    def _prepare_dir(self) -> None:
        root = os.geteuid() == 0
        self.dir.mkdir(mode=0o711 if root else 0o700, parents=True, exist_ok=True)
        (self.dir / "tmp").mkdir(mode=0o700, exist_ok=True)
        _reap_stale(self.dir)
        for name in ("idle.sock", "ctl.sock"):
            (self.dir / name).unlink(missing_ok=True)

    async def _open_idle_socket(self) -> asyncio.DatagramTransport:
        path = self.dir / "idle.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(path))
        if os.geteuid() == 0:  # nginx's workers (nobody:nogroup) may send to it; tenant users may not
            os.chown(path, 0, grp.getgrnam("nogroup").gr_gid)
            path.chmod(0o660)
        else:
            path.chmod(0o600)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: _IdleLog(self), sock=sock)
        return transport

    def _config(self) -> str:
        routes = []
        for route in self.slow.routes():
            host = route.host.lower()
            if not _HOST.match(host):  # never written into the config: the slow path still routes it
                continue
            routes.append({"name": self._names.get(id(route)) or "inkmcp_slow", "host": host, "port": route.port,
                           "track": route.wake is not None})  # fmt: skip
        return _CONF.render(
            hash_bucket=_hash_bucket(max((len(r["host"]) for r in routes), default=0)),
            hash_max=max(512, 4 * len(routes)),
            own_statuses=" ".join(map(str, OWN_STATUSES)),
            user="nobody nogroup" if os.geteuid() == 0 else "",
            workers=self.settings.workers or "auto",
            dir=str(self.dir),
            headers_more=str(self.settings.headers_more),
            module=str(self.module) if self.module else "",
            forwarded_set=FORWARDED_SET[1:],
            forwarded_value=FORWARDED_VALUE.format(suffix="" if self.port == 80 else f":{self.port}"),
            forwarded_drop=FORWARDED_DROP,
            head_kb=MAX_HEAD_BYTES // 1024,
            head_timeout=int(HEAD_TIMEOUT),
            port_suffix="" if self.port == 80 else f":{self.port}",
            listen=_listen_address(self._listener),
            reuseport=self.settings.reuseport,
            slow_port=self.slow.port,
            routes=routes,
            generation=self._generation + 1,
        )

    def _write_config(self) -> None:
        text = self._config()
        path = self.dir / "nginx.conf"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        self._generation += 1

    async def _spawn(self) -> None:
        assert self._listener is not None
        fds = () if self.settings.reuseport else (self._listener.fileno(),)
        stderr = await asyncio.to_thread(open, self.dir / "nginx.stderr", "ab")  # handed to the child
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *_die_with_parent(), str(self.settings.nginx), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
                "-e", str(self.dir / "error.log"), "-g", "daemon off;",
                stdin=asyncio.subprocess.DEVNULL, stdout=stderr, stderr=stderr, pass_fds=fds,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **({"NGINX": f"{fds[0]};"} if fds else {})},
                # Same session as InkMCP: with the kernel's autogroup scheduling a session of its own would
                # give nginx one group's CPU share against everything else (measured: 0.4-0.7x throughput).
                start_new_session=False,
            )  # fmt: skip
        finally:
            stderr.close()
        if not await self._wait_generation(self._generation, START_TIMEOUT):
            raise RuntimeError(f"nginx did not start serving within {START_TIMEOUT:g}s: {self._error_tail()}")
        self._applied = self._generation

    async def _reload_loop(self) -> None:
        # --- wake: a route that just woke changes while the slow path still carries the waking request; a
        # reload then (new config rendered, nginx re-reads it and forks workers) competes for the CPU with the
        # woken app's first answer (~3 ms of a ~100 ms wake, measured). The slow path routes correctly in the
        # meantime, so the reload waits until no request is in it for an awake route (at most WAKE_RELOAD_WAIT).
        deadline = time.monotonic() + WAKE_RELOAD_WAIT
        while any(r.held and r.port for r in self.slow.routes()) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)  # (a Route's `held` has no event to await)
        # --- end
        while self._dirty:
            self._dirty = False
            if self._proc is None or self._proc.returncode is not None:
                log.error("nginx is not running; routes cannot change: %s", self._error_tail())
                return
            try:
                await asyncio.to_thread(self._write_config)
            except OSError as exc:
                log.error("could not write nginx.conf: %s", exc)
                return
            generation = self._generation
            self._old_workers |= self._workers()
            self._proc.send_signal(signal.SIGHUP)
            if await self._wait_generation(generation, RELOAD_TIMEOUT):
                self._applied = generation
            else:
                log.error("nginx did not load the new routes within %ss: %s", RELOAD_TIMEOUT, self._error_tail())

    async def _wait_generation(self, generation: int, timeout: float) -> bool:
        """Poll the control socket until nginx's new workers answer with `generation`."""
        deadline = time.monotonic() + timeout
        path = str(self.dir / "ctl.sock")
        delay = 0.001
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                return False
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                reader, writer = await asyncio.open_unix_connection(path)
                try:
                    writer.write(b"GET /generation HTTP/1.0\r\nHost: ctl\r\n\r\n")
                    data = await asyncio.wait_for(reader.read(), 2.0)
                finally:
                    writer.close()
                if data.partition(b"\r\n\r\n")[2].strip() == str(generation).encode():
                    return True
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)
        return False

    def _error_tail(self, lines: int = 5) -> str:
        """The last lines of nginx's error log and stderr, read from the last 64 KiB of each (redteam3: the
        whole file was read into memory, and a log grown by requests can be gigabytes)."""
        out: list[str] = []
        for name in ("error.log", "nginx.stderr"):
            with contextlib.suppress(OSError), open(self.dir / name, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
                out += f.read().decode(errors="replace").splitlines()[-lines:]
        return " | ".join(out[-lines:]) or "nothing in its error log"

    async def close(self) -> None:
        self._started = False
        if self._reloader is not None and not self._reloader.done():
            self._reloader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reloader
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # a ^C in a terminal reached nginx too
                proc.send_signal(signal.SIGTERM)  # fast shutdown: workers close their connections
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._idle is not None:
            self._idle.close()
            self._idle = None
        for name in ("idle.sock", "ctl.sock"):
            (self.dir / name).unlink(missing_ok=True)
        await self.slow.close()

    @property
    def nginx_pid(self) -> int | None:
        """The master's pid while it runs (tests check it is gone after close)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None


def _hash_bucket(longest: int) -> int:
    """nginx's hash bucket size (bytes) that holds a key of `longest` characters: a pointer and the key
    rounded up to 8 per entry, plus the bucket's end marker; a power of two, at least nginx's default 64."""
    need = 8 + ((longest + 2 + 7) // 8) * 8 + 8
    size = 64
    while size < need:
        size *= 2
    return size


def _die_with_parent() -> list[str]:
    """`setpriv --pdeathsig TERM`: if InkMCP dies without closing (SIGKILL, a crash), nginx stops too and
    frees the port, instead of serving a stale route table to nobody's benefit."""
    setpriv = shutil.which("setpriv", path="/usr/bin:/bin")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def _listen(host: str, port: int, *, reuseport: bool) -> socket.socket:
    """The proxy's address, bound here so port 0 works and "address in use" is InkMCP's error.

    reuseport: bound only (never listening, so it takes no connection) with SO_REUSEPORT, which keeps
    the port while nginx's workers bind one listening socket each beside it; else listening, for nginx
    to inherit.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if not reuseport:
            # Every accepted socket inherits it (Linux): a client connection has TCP_NODELAY from its first byte,
            # whatever nginx writes before (or instead of) a proxied answer. nginx still sets it again on the
            # first answer (`tcp_nodelay on`): dropping that setsockopt per connection needs `tcp_nodelay off`
            # plus a check of every request for an Upgrade or a body (those need TCP_NODELAY towards the app),
            # which costs more per request than the one syscall per connection (see `tcp_nodelay` in the template).
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise InvalidArgument(
            f"the proxy cannot listen on {host}:{port}: {exc.strerror}",
            argument="INKMCP_PROXY_PORT",
            fix="stop what uses that port or choose another INKMCP_PROXY_PORT / INKMCP_PROXY_HOST",
        ) from exc
    sock.set_inheritable(True)
    sock.setblocking(False)
    return sock


def _listen_address(sock: socket.socket | None) -> str:
    """nginx's `listen` for the bound socket, spelled so nginx matches it to the inherited one."""
    assert sock is not None
    host, port = sock.getsockname()[:2]
    ip = ipaddress.ip_address(host)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _reap_stale(run_dir: Path) -> None:
    """Stop an nginx a crashed InkMCP left running with this directory's config (it holds the port)."""
    pid_file = run_dir / "nginx.pid"
    try:
        pid = int(pid_file.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"nginx" not in cmdline or str(run_dir / "nginx.conf").encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
