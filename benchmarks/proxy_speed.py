"""The local provider's front proxy against nginx proxying to the same app, in one interleaved run (issue 12 item 1).

Targets, all in front of one small asyncio HTTP/1.1 + WebSocket-echo app (a separate process, so each
target pays the same app cost):

    direct        the app's own port (the floor)
    nginx         Debian's nginx, started here with a plain reverse-proxy config: `worker_processes auto`,
                  an upstream with `keepalive`, HTTP/1.1, the WebSocket Upgrade/Connection headers (nginx's
                  documented setup; the same knobs InkMCP's config uses, nothing InkMCP-specific) and the
                  forwarded headers every edge proxy in front of apps sets, as six `proxy_set_header` lines:
                  X-Forwarded-For/X-Real-IP = $remote_addr, X-Forwarded-Host, -Proto, -Port, `Forwarded` dropped.
                  InkMCP must set them (an app trusting its one proxy hop must not see a visitor's forged values,
                  tests/security/test_redteam2_forwarded_headers.py), so the bar is nginx doing the same job.
    nginx-bare    the same nginx without the forwarded headers (the baseline before 2026-12-02), for
                  information: a --cost row always, a load target when asked for; never the bar
    inkmcp        the proxy `LocalComputeProvider` starts today (`make_proxy`, INKMCP_PROXY_ENGINE's default)
    inkmcp-python InkMCP's asyncio proxy (INKMCP_PROXY_ENGINE=python), the proxy before issue 12
    nginx-again   a second nginx with the baseline's config (not run unless asked): an A/A check, its
                  ratio to nginx shows how far this machine's noise moves a ratio that should be 1.00

Each InkMCP proxy runs in a child process (this script with --serve), with one route for
bench.demo.localhost, so it never shares an event loop or a GIL with the load generator.

Load: HTTP with `wrk` (Debian's package; C, epoll, two threads: it is not the bottleneck, and it reports
latency percentiles), 1 and 32 connections, keep-alive and a new connection per request
(`Connection: close`). WebSocket: wrk cannot, so a small client here (raw sockets, pre-masked frames,
one process per 16 connections, one 16-byte message in flight per connection) measures echo round trips;
it costs the same for every target. Rounds interleave the targets (A B C, C B A, B C A, A C B, ...:
`round_order`) so drift on this 2-core machine hits all alike; figures are medians over rounds, and a ratio
to nginx is the median over rounds of that round's ratio (see `paired_ratios`), printed with the
interquartile range of those per-round ratios ("spread"; each round's ratio is in the saved JSON under
"rounds_ratios").

Placement (--layout, see `Layout`): by default the load generator runs on one CPU and the app with the proxy
under test (one nginx worker, for the baseline and for InkMCP alike) on another, so every target gets the
same placement. --nice N puts the run in a session of its own at autogroup nice N, so other sessions on a
shared machine take less of those CPUs (root for N < 0). `--targets nginx,nginx-again,inkmcp` adds an A/A
pair: a second nginx with the baseline's config, whose ratio to nginx shows this machine's noise. Each
window also reads the CPU time the target's nginx processes spent (/proc/PID/schedstat, user + kernel) and
reports it per request ("nginx CPU µs/req", user + kernel; it too moves with other sessions' load).

    .venv/bin/python benchmarks/proxy_speed.py                  # table on stdout
    .venv/bin/python benchmarks/proxy_speed.py --save benchmarks/baselines/proxy_speed.json
    .venv/bin/python benchmarks/proxy_speed.py --compare benchmarks/baselines/proxy_speed.json
    .venv/bin/python benchmarks/proxy_speed.py --targets nginx,inkmcp --before 6118318   # + inkmcp-before, same run
    .venv/bin/python benchmarks/proxy_speed.py --cost           # instructions and syscalls per request (valgrind)
    .venv/bin/python benchmarks/proxy_speed.py --cost --cost-requests 1000 --targets nginx,inkmcp,inkmcp-fallback
    .venv/bin/python benchmarks/proxy_speed.py --targets nginx,nginx-again,nginx-bare,inkmcp   # + the bare row
    .venv/bin/python benchmarks/proxy_speed.py --targets nginx,nginx-again,inkmcp --rounds 9 --seconds 2 --nice -10

`inkmcp-fallback` (a target, and a --cost row when asked for): InkMCP's proxy with INKMCP_PROXY_MODULE=off, the
config it runs when InkMCP's nginx module is not built for the installed nginx (the Host check as regexes, the
Server rule with headers-more). `inkmcp` loads the module when `make install` built it (its log says otherwise).

--before REV adds the target `inkmcp-before`: the proxy of that revision (its `inkmcp` and this script, from
`git archive`, run with this venv), interleaved with the others, so a change is judged in one run.

--cost answers what a noisy 2-core box cannot: how much work each nginx config does per request. Each config
(the baseline's, InkMCP's as rendered for the benchmark route, and --before's) runs as one nginx process
(`master_process off`) under valgrind's callgrind and under strace, and the same requests are sent to each:
user-space instructions and system calls per kept-alive request, per request on a new connection, and per
WebSocket echo. Deterministic to a few instructions, so it attributes a cost that throughput cannot resolve.
The cost table also has `nginx-bare` (the baseline without the forwarded headers) and `nginx-routed` (see
`routed_baseline`: the baseline routing by Host), for information.
--cost-cache adds callgrind's simulated L1 and last-level cache misses per request: code a config runs that the
baseline does not (the Host check's regex, the Server rule) also costs instruction-cache misses (+48 L1 misses a
request on 2026-12-01, nearly all instruction fetches, +4.5 %), which instruction counts do not show.

With nginx-again among the targets a second table puts each target against both baselines at once (per round, the
target ÷ the geometric mean of nginx and nginx-again; `both_baselines`), which drops one baseline instance's own
luck from the ratio; on 2026-12-02 (load 4-10) the A/A pair read 0.91-1.07 across runs while InkMCP ÷ both stayed
within 0.97-1.06 for the same rows.

Exits 1 when `inkmcp` misses issue 12's bar in a scenario (throughput below nginx's, or p50 above 1.2x
nginx's), unless --no-fail. With nginx-again among the targets, a scenario whose A/A req/s ratio is off by more
than 3 % is reported as "noisy, not judged" instead (benchmarks/summary.py marks its rows the same way).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import re
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROOT = Path(__file__).resolve().parent.parent
HOST = "bench.demo.localhost"
WS_CLIENT_PROCS = 16  # connections per WebSocket client process

APP = r'''
import asyncio, base64, hashlib, sys
BODY = b"hello, world\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\n" + BODY
CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\nConnection: close\r\n\r\n" + BODY
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

class App(asyncio.Protocol):
    def connection_made(self, transport):
        self.t, self.buf, self.ws = transport, b"", False

    def data_received(self, data):
        self.buf += data
        while not self.ws:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end].lower(), self.buf[end + 4:]
            if b"upgrade: websocket" in head:
                key = next(l.split(b":", 1)[1].strip() for l in head.split(b"\r\n")
                           if l.startswith(b"sec-websocket-key"))
                accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
                self.t.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
                self.ws = True
            elif b"connection: close" in head:
                self.t.write(CLOSE)
                self.t.close()
                return
            else:
                self.t.write(RESP)
        b = self.buf
        while len(b) >= 6:  # client frames: masked, payload < 126 bytes
            n = b[1] & 0x7F
            if len(b) < 6 + n:
                break
            mask = b[2:6]
            payload = bytes(c ^ mask[i % 4] for i, c in enumerate(b[6:6 + n]))
            if b[0] & 0x0F == 8:
                self.t.write(b"\x88\x00")
                self.t.close()
                return
            self.t.write(bytes([b[0], n]) + payload)
            b = b[6 + n:]
        self.buf = b

async def main():
    server = await asyncio.get_running_loop().create_server(App, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()

asyncio.run(main())
'''

# The baseline: nginx's documented reverse proxy plus the forwarded headers (NGINX_FORWARDED), as in production.
NGINX_BARE_CONF = """\
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_requests 100000;
    map $http_upgrade $connection_upgrade {{ default upgrade; "" ""; }}
    upstream app {{ server 127.0.0.1:{app_port}; keepalive 32; }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
    }}
}}
"""
NGINX_FORWARDED = """\
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-Host $host:{port};
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-Port $server_port;
            proxy_set_header Forwarded "";
"""
NGINX_CONF = NGINX_BARE_CONF.replace("            proxy_set_header Upgrade $http_upgrade;\n",
                                     NGINX_FORWARDED + "            proxy_set_header Upgrade $http_upgrade;\n")
assert NGINX_CONF != NGINX_BARE_CONF
BASELINES = {"nginx": NGINX_CONF, "nginx-again": NGINX_CONF, "nginx-bare": NGINX_BARE_CONF}

FIGURES = ("rps", "p50", "p99", "errors", "cpu")
SCENARIOS = [(c, mode) for c in (1, 32) for mode in ("keep-alive", "new connection", "websocket")]


class Layout:
    """Which CPUs the load generator and the servers run on; the same for every target.

    split (the default on 2+ CPUs): the load generator (wrk, the WebSocket clients, this script) on one CPU,
    the app and the proxy under test (its master and one worker) on another. Unpinned, the scheduler placed
    wrk, nginx's two workers and the app differently in each 3 s window (same core or not, which worker
    took the one connection), and a single row's same-run ratio swung +-10 % between runs on this 2-core
    box. Pinned, each target gets the same placement, and the proxy's own CPU per request shows: it shares
    its core with the app, as on a small server, so a proxy that works more per request leaves the app less.
    One worker because the proxy has one core; the baseline nginx gets exactly the same (worker_processes 1,
    same CPU), which is what `worker_processes auto` gives a one-CPU machine.

    free: nothing pinned, worker_processes auto for both (the layout before 2026-12-01's fifth session).
    """

    def __init__(self, name: str) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        if name == "split" and len(cpus) < 2:
            raise SystemExit("--layout split needs two CPUs; use --layout free")
        self.name = name
        self.load_cpu = cpus[0] if name == "split" else None
        self.server_cpu = cpus[1] if name == "split" else None
        self.workers = "1" if name == "split" else "auto"

    def server(self, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(self.server_cpu), *argv] if self.server_cpu is not None else argv

    def load(self, argv: list[str]) -> list[str]:
        return ["taskset", "-c", str(self.load_cpu), *argv] if self.load_cpu is not None else argv

    def pin_load_here(self) -> None:
        """This process (and the WebSocket client processes it forks later) on the load generator's CPU."""
        if self.load_cpu is not None:
            os.sched_setaffinity(0, {self.load_cpu})

    def describe(self) -> str:
        if self.server_cpu is None:
            return "layout free: nothing pinned, worker_processes auto for nginx and InkMCP's nginx"
        return (f"layout split: load generator on CPU {self.load_cpu}; app + proxy on CPU {self.server_cpu}, "
                "worker_processes 1 for both nginx configs")


def own_session(nice: int) -> None:
    """This process (re-executed under setsid(1) if it leads a process group) in a session of its own, and
    that session's autogroup at `nice`. Why: with autogroup scheduling (Debian's default) every session is
    one scheduling group, so on a shared box a busy test session takes half a CPU from the whole benchmark
    (generator, proxy, app: one session) whatever their nice values; the group's own nice is what moves that.
    Everything this script starts inherits the session, so every target runs at the same priority."""
    if os.getsid(0) != os.getpid():
        try:
            os.setsid()
        except PermissionError:  # a process-group leader (started from a shell): setsid(1) forks first
            os.execvp("setsid", ["setsid", "--wait", sys.executable, *sys.argv])  # noqa: S606 - argv, no shell
    try:
        Path("/proc/self/autogroup").write_text(str(nice))
    except OSError as exc:
        raise SystemExit(f"--nice {nice}: cannot set the autogroup nice ({exc}); run as root, or no --nice") from exc


def cpu_stat() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: the share of time the hypervisor gave to other guests
    while this VM wanted to run. Printed with the run (steal bursts on this Firecracker VM moved whole runs'
    baseline from ~6,300 to ~1,000 req/s while the load average read under 1)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[7], sum(fields[:8])
    return 0, 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {port}")


# -- the InkMCP proxy in its own process --------------------------------------------------------------


async def serve_proxy(engine: str, app_port: int, port_file: Path, runtime_dir: Path) -> None:
    """Child process: the proxy `make_proxy` gives for `engine`, routing HOST to the app, until SIGTERM."""
    from inkmcp.providers.compute.local.nginx import ProxySettings, make_proxy
    from inkmcp.providers.compute.local.proxy import Route

    proxy = make_proxy("127.0.0.1", 0, wake_timeout=10.0, runtime_dir=runtime_dir,
                       settings=ProxySettings(engine=engine))  # type: ignore[arg-type]  # fmt: skip
    await proxy.start()
    proxy.set_route(Route(host=HOST, port=app_port, owner="bench"))
    settled = getattr(proxy, "settled", None)
    if settled is not None:
        await settled()
    # nginx's master tells the workers of the route-less first config to quit ~100 ms after the reload; until
    # then one may still accept a connection, and closes it unanswered when told to quit (seen: the first
    # request to a restarted target, --fresh, got an empty close). Port 0: nothing is connected to it.
    await proxy.drain(0, 5.0)
    port_file.write_text(str(proxy.port))
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await proxy.close()


def servers(args: argparse.Namespace, targets: list[str], work: Path) -> list[tuple[str, str, Path]]:
    """(target, engine, the proxy_speed.py whose --serve runs it) for the InkMCP targets asked for."""
    out = [(name, engine, Path(__file__)) for name, engine in
           (("inkmcp", os.environ.get("INKMCP_PROXY_ENGINE", "nginx")), ("inkmcp-python", "python"),
            ("inkmcp-fallback", "nginx"))
           if name in targets or (args.cost and name == "inkmcp")]  # fmt: skip
    if args.before:
        src = work / "before-src"  # `inkmcp` and `benchmarks` of that revision; .git is left alone (no worktree)
        src.mkdir()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "inkmcp", "benchmarks"],
                             capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(src)], input=tar, check=True)
        out.append(("inkmcp-before", "nginx", src / "benchmarks" / "proxy_speed.py"))
    return out


def start_server(
    script: Path, name: str, engine: str, app_port: int, work: Path, layout: Layout, run: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    """A --serve child of `script` (its own tree's `inkmcp` comes first on its sys.path); its port.

    On the layout's server CPU (nginx inherits it), with the layout's worker count (INKMCP_PROXY_WORKERS,
    which any revision's ProxySettings reads, so --before gets the same)."""
    port_file = work / f"{name}{run}.port"
    env = {**os.environ, "INKMCP_PROXY_WORKERS": "0" if layout.workers == "auto" else layout.workers}
    if name == "inkmcp-fallback":
        env["INKMCP_PROXY_MODULE"] = "off"
    child = subprocess.Popen(layout.server([sys.executable, str(script), "--serve", engine, str(app_port),
                                            str(port_file), str(work / f"{name}{run}")]), env=env)  # fmt: skip
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if child.poll() is not None or time.monotonic() > deadline:
            child.kill()
            raise RuntimeError(f"the {name} proxy did not start")
        time.sleep(0.02)
    return child, int(port_file.read_text())


# -- cost per request (--cost): one nginx process under callgrind / strace ------------------------------


def routed_baseline(conf: str) -> str:
    """--cost's informational row `nginx-routed`: the baseline config as it would be in front of more than one
    site, its server named HOST beside a default server for other hosts. Routing by Host (the virtual-server
    lookup, which nginx skips when an address has one server) is work every multi-tenant proxy does and the
    baseline does not; the bar stays the baseline itself, this row only says how much of InkMCP's extra work is
    routing (2026-12-01: +373 instructions kept-alive, +435 on a new connection)."""
    listen = "        listen 127.0.0.1:{port} backlog=1024;\n"
    assert listen in conf
    return conf.replace(listen, f"{listen}        server_name {HOST};\n").replace(
        "    server {\n", '    server {\n        listen 127.0.0.1:{port} default_server;\n        server_name "";\n'
        "        return 404;\n    }\n    server {\n", 1)


def _cost_configs(work: Path, app_port: int, ports: dict[str, int]) -> dict[str, str]:
    """Each nginx config to cost, rewritten for one process on a port of its own in a directory of its own."""
    configs = {"nginx": NGINX_CONF.format(dir="{dir}", app_port=app_port, port="{port}", workers=1),
               "nginx-bare": NGINX_BARE_CONF.format(dir="{dir}", app_port=app_port, port="{port}", workers=1)}
    configs["nginx-routed"] = routed_baseline(configs["nginx"])
    for name in ("inkmcp", "inkmcp-fallback", "inkmcp-before"):
        conf = work / name / "nginx.conf"
        if name not in ports or not conf.exists():
            continue
        text = conf.read_text().replace(str(work / name), "{dir}").replace(f":{ports[name]}", ":{port}")
        text = re.sub(r"\n    server \{\n        listen unix:.*?\n    \}", "", text, flags=re.S)  # its control socket
        text = re.sub(r"^user .*\n", "", text, flags=re.M)
        configs[name] = text
    return {name: re.sub(r"worker_processes \S+;", "worker_processes 1; master_process off;", text)
            for name, text in configs.items()}  # fmt: skip


def _cost_load(port: int, mode: str, n: int) -> None:
    """`n` kept-alive requests, `n` requests on new connections, or `n` WebSocket echoes of one connection."""
    def answer(sock: socket.socket, until_close: bool) -> None:
        buf = b""
        while not buf.endswith(b"hello, world\n"):
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"the connection closed: {buf[:200]!r}")
            buf += data
        if until_close:
            while sock.recv(65536):
                pass

    head = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: bench\r\nAccept: */*\r\n".encode()
    if mode == "new connection":
        for _ in range(n):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(head + b"Connection: close\r\n\r\n")
                answer(s, True)
        return
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode == "keep-alive":
            for _ in range(n):
                s.sendall(head + b"\r\n")
                answer(s, False)
            return
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        got = b""
        while b"\r\n\r\n" not in got:
            got += s.recv(4096)
        for _ in range(n):
            s.sendall(_FRAME)
            echoed = 0
            while echoed < _ECHO_LEN:
                echoed += len(s.recv(4096))


COST_MODES = ("keep-alive", "new connection", "websocket")


def _cost_of(
    conf: str, run_dir: Path, tool: str, n: int, keep: Path | None = None, cache: bool = False
) -> dict[str, float]:
    """Per request of each mode: callgrind's instruction count (tool "callgrind") or strace's syscall count.

    cache (--cost-cache): callgrind also simulates the caches; "<mode> L1" and "<mode> LL" are its first-level
    (instruction + data) and last-level misses per request, a deterministic stand-in for the cache footprint
    that instruction counts miss (a bigger config's code paths can cost more than their instructions)."""
    run_dir.mkdir()
    (run_dir / "tmp").mkdir()
    port = free_port()
    (run_dir / "nginx.conf").write_text(conf.replace("{dir}", str(run_dir)).replace("{port}", str(port)))
    nginx = [shutil.which("nginx") or "/usr/sbin/nginx", "-p", str(run_dir), "-c", str(run_dir / "nginx.conf"),
             "-e", str(run_dir / "error.log"), "-g", "daemon off;"]  # fmt: skip
    out = run_dir / "callgrind.out"
    grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *(["--cache-sim=yes"] if cache else [])]
    cmd = [*grind, *nginx] if tool == "callgrind" else nginx
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result: dict[str, float] = {}
    try:
        wait_port(port, proc, timeout=60)
        for mode in COST_MODES:  # warm: the upstream keepalive pool, allocator caches
            _cost_load(port, mode, 50)
        for mode in COST_MODES:
            if tool == "callgrind":
                subprocess.run(["callgrind_control", "-z", str(proc.pid)], capture_output=True, check=True)
                _cost_load(port, mode, n)
                subprocess.run(["callgrind_control", "-d", str(proc.pid)], capture_output=True, check=True)
                total = 0
                events: dict[str, int] = {}
                deadline = time.monotonic() + 30
                while not total and time.monotonic() < deadline:
                    time.sleep(0.2)
                    for dump in run_dir.glob("callgrind.out.*"):
                        text = dump.read_text(errors="replace")
                        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
                        if m:
                            total += int(m.group(1))
                            names = re.search(r"^events: (.*)$", text, re.M)
                            sums = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
                            if names and sums:
                                for name, value in zip(names.group(1).split(), sums.group(1).split(), strict=False):
                                    events[name] = events.get(name, 0) + int(value)
                            if keep is not None:  # --cost-keep: for callgrind_annotate
                                keep.mkdir(parents=True, exist_ok=True)
                                shutil.copy(dump, keep / f"{run_dir.name}-{mode.replace(' ', '-')}.callgrind")
                            dump.unlink()
                result[mode] = total / n
                if cache:
                    result[f"{mode} L1"] = sum(events.get(k, 0) for k in ("I1mr", "D1mr", "D1mw")) / n
                    result[f"{mode} LL"] = sum(events.get(k, 0) for k in ("ILmr", "DLmr", "DLmw")) / n
            else:
                log = run_dir / f"strace-{mode.replace(' ', '-')}.txt"
                st = subprocess.Popen(["strace", "-c", "-o", str(log), "-p", str(proc.pid)], stderr=subprocess.DEVNULL)
                time.sleep(0.5)  # attached
                _cost_load(port, mode, n)
                time.sleep(0.2)
                st.send_signal(signal.SIGINT)
                st.wait(30)
                if keep is not None:  # --cost-keep: strace -c's table per system call
                    keep.mkdir(parents=True, exist_ok=True)
                    shutil.copy(log, keep / f"{run_dir.name}-{log.name}")
                m = re.search(r"^100\.00\s+\S+\s+\S+\s+(\d+)", log.read_text(), re.M)
                result[mode] = int(m.group(1)) / n if m else float("nan")
    finally:
        proc.terminate()
        proc.wait(30)
    return result


def cost_report(
    work: Path, app_port: int, ports: dict[str, int], n: int, keep: Path | None = None, cache: bool = False,
    save: Path | None = None,
) -> str:
    """The --cost table; with `save`, its figures as JSON too ({"cost": {config: {tool: {mode: per request}}}})."""
    missing = [tool for tool in ("valgrind", "callgrind_control", "strace") if shutil.which(tool) is None]
    if missing:
        return f"--cost needs {', '.join(missing)} (apt-get install valgrind strace)"
    configs = _cost_configs(work, app_port, ports)
    rows = {name: {tool: _cost_of(conf, work / f"cost-{name}-{tool}", tool, n, keep, cache)
                   for tool in ("callgrind", "strace")} for name, conf in configs.items()}  # fmt: skip
    if save is not None:
        save.parent.mkdir(parents=True, exist_ok=True)
        save.write_text(json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                    "requests": n, "cost": rows}, indent=2) + "\n")  # fmt: skip
    base = rows["nginx"]["callgrind"]
    extra = " | L1 misses | ÷ nginx | LL misses" if cache else ""
    lines = [f"Work per request of one nginx worker ({n} requests per mode; user-space instructions by callgrind, "
             f"system calls by strace{'; simulated cache misses by callgrind --cache-sim' if cache else ''})", "",
             f"| config | mode | instructions | ÷ nginx | syscalls{extra} |",
             "|---|---|---:|---:|---:" + ("|---:|---:|---:" if cache else "") + "|"]  # fmt: skip
    for name, r in rows.items():
        for mode in COST_MODES:
            ir = r["callgrind"][mode]
            row = f"| {name} | {mode} | {ir:,.0f} | {ir / base[mode]:.2f} | {r['strace'][mode]:.1f} |"
            if cache:
                l1, b1 = r["callgrind"][f"{mode} L1"], base[f"{mode} L1"]
                row += f" {l1:,.1f} | {l1 / b1 if b1 else float('nan'):.2f} | {r['callgrind'][f'{mode} LL']:,.1f} |"
            lines.append(row)
    return "\n".join(lines)


# -- load ---------------------------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"wrk latency {text!r}")
    return float(m.group(1)) * _UNIT[m.group(2)]


def run_wrk(port: int, conns: int, keepalive: bool, seconds: float, layout: Layout) -> dict[str, float]:
    args = ["wrk", f"-t{min(conns, 2)}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--latency",
            "-H", f"Host: {HOST}"]
    if not keepalive:
        args += ["-H", "Connection: close"]
    out = subprocess.run(layout.load([*args, f"http://127.0.0.1:{port}/"]), capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "errors": errors + (int(bad.group(1)) if bad else 0)}


_MASK = (1, 2, 3, 4)
_FRAME = bytes([0x81, 0x80 | 16, *_MASK]) + bytes(c ^ _MASK[i % 4] for i, c in enumerate(b"0123456789abcdef"))
_ECHO_LEN = 2 + 16


def _ws_worker(port: int, conns: int, seconds: float, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """One client process: `conns` upgraded connections, one message in flight each, for `seconds`."""
    sel = selectors.DefaultSelector()
    socks = []
    for i in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {HOST}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZS{i:02d}==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"no upgrade: {head[:200]!r}")
        s.setblocking(False)
        socks.append(s)
    lat: list[float] = []
    sent: dict[socket.socket, float] = {}
    got: dict[socket.socket, int] = {}
    end = time.monotonic() + seconds
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
        sent[s], got[s] = time.perf_counter(), 0
        s.send(_FRAME)
    while time.monotonic() < end:
        for key, _ in sel.select(0.5):
            s = key.fileobj  # type: ignore[assignment]
            data = s.recv(65536)  # type: ignore[attr-defined]
            if not data:
                raise RuntimeError("the WebSocket connection closed")
            got[s] += len(data)  # type: ignore[index]
            while got[s] >= _ECHO_LEN:  # type: ignore[index]
                got[s] -= _ECHO_LEN  # type: ignore[index]
                now = time.perf_counter()
                lat.append((now - sent[s]) * 1000)  # type: ignore[index]
                sent[s] = now  # type: ignore[index]
                s.send(_FRAME)  # type: ignore[attr-defined]
    for s in socks:
        s.close()
    queue.put(lat)


def run_ws(port: int, conns: int, seconds: float) -> dict[str, float]:
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    split = [WS_CLIENT_PROCS] * (conns // WS_CLIENT_PROCS)
    if conns % WS_CLIENT_PROCS:
        split.append(conns % WS_CLIENT_PROCS)
    procs = [ctx.Process(target=_ws_worker, args=(port, n, seconds, queue)) for n in split]
    for p in procs:
        p.start()
    lat: list[float] = []
    for _ in procs:
        lat += queue.get(timeout=seconds + 30)
    for p in procs:
        p.join()
    if not lat:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "errors": 1}
    lat.sort()
    return {"rps": len(lat) / seconds, "p50": lat[len(lat) // 2], "p99": lat[int(0.99 * (len(lat) - 1))], "errors": 0}


# -- the run ------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def nginx_cpu_ns(root: int | None) -> int:
    """CPU time (ns, the scheduler's own account in /proc/PID/schedstat) of every nginx process under `root`."""
    total = 0
    for pid in _descendants(root) if root else []:
        with contextlib.suppress(OSError, ValueError, IndexError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "nginx":
                total += int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])
    return total


def measure(
    port: int, conns: int, mode: str, seconds: float, layout: Layout, root: int | None = None
) -> dict[str, float]:
    """One window of load; with `root` (the target's process) also "cpu": its nginx processes' CPU time per
    request in µs, user and kernel, which tells a proxy that works more per request from one that waits
    more. It is not load-proof: on a contended CPU nginx gets fewer events per wakeup and more cache misses
    (2026-12-01, load 6-9: 16 µs at 36k req/s, 24 µs at 26k req/s in one round), so compare it round by round
    as the other figures."""
    before = nginx_cpu_ns(root)
    if mode == "websocket":
        r = run_ws(port, conns, seconds)  # forked from this process: on the load generator's CPU
    else:
        r = run_wrk(port, conns, mode == "keep-alive", seconds, layout)
    spent = nginx_cpu_ns(root) - before
    r["cpu"] = spent / 1000 / (r["rps"] * seconds) if spent and r["rps"] else 0.0
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--targets", default="direct,nginx,inkmcp,inkmcp-python")
    ap.add_argument("--scenarios", default="", help="e.g. '32 keep-alive,1 websocket' (default: all six)")
    ap.add_argument("--save", type=Path, help="write the figures (JSON) here, e.g. benchmarks/baselines/...")
    ap.add_argument("--compare", type=Path, help="a file --save wrote earlier: print its inkmcp figures next to these")
    ap.add_argument("--label", default="", help="stored with --save (e.g. the commit measured)")
    ap.add_argument("--no-fail", action="store_true")
    ap.add_argument("--nice", type=int, default=0, metavar="N",
                    help="run in a session of its own whose autogroup has this nice value (-20..19; root for < 0), "
                    "so other sessions' work on a shared machine takes less of the measured CPUs; the same for every "
                    "target")
    ap.add_argument("--layout", choices=("split", "free"), default="split" if len(os.sched_getaffinity(0)) >= 2
                    else "free", help="split: load generator on one CPU, app + proxy (1 worker) on another, "
                    "the same for every target (default on 2+ CPUs); free: nothing pinned, worker_processes auto")
    ap.add_argument("--fresh", type=int, default=0, metavar="K",
                    help="start every target anew (new processes, ports, memory) every K rounds: one process's "
                    "placement biased a whole run by up to 19 %% in the A/A pair (2026-12-01), so more instances "
                    "average it out; 0 = one instance per target for the whole run")
    ap.add_argument("--before", metavar="REV", help="also run the InkMCP proxy of this git revision (inkmcp-before)")
    ap.add_argument("--cost", action="store_true", help="work per request under valgrind/strace instead of load")
    ap.add_argument("--cost-requests", type=int, default=300, help=argparse.SUPPRESS)
    ap.add_argument("--cost-keep", type=Path, metavar="DIR",
                    help="--cost: keep each config's callgrind dump (for callgrind_annotate) and strace -c table "
                    "per mode here")
    ap.add_argument("--cost-cache", action="store_true",
                    help="--cost: also simulate the caches (callgrind --cache-sim): L1 and LL misses per request")
    ap.add_argument("--serve", nargs=4, metavar=("ENGINE", "APP_PORT", "PORT_FILE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        engine, app_port, port_file, run_dir = args.serve
        asyncio.run(serve_proxy(engine, int(app_port), Path(port_file), Path(run_dir)))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is missing: apt-get install wrk", file=sys.stderr)
        return 2
    if args.nice and not args.cost:
        own_session(args.nice)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    layout = Layout("free" if args.cost else args.layout)
    load_at_start = os.getloadavg()
    stat_at_start = cpu_stat()
    print(f"load average at the start: {' '.join(f'{v:.2f}' for v in load_at_start)}; {layout.describe()}",
          file=sys.stderr)  # fmt: skip
    targets = args.targets.split(",")
    if args.before and "inkmcp-before" not in targets:
        targets.append("inkmcp-before")
    work = Path(tempfile.mkdtemp(prefix="inkmcp-proxy-bench-", dir="/tmp"))
    work.chmod(0o711)
    procs: list[subprocess.Popen[bytes]] = []
    ports: dict[str, int] = {}
    roots: dict[str, int] = {}  # target -> the process its nginx processes descend from
    try:
        (work / "app.py").write_text(APP)
        app_port = free_port()
        app = subprocess.Popen(layout.server([sys.executable, str(work / "app.py"), str(app_port)]))
        procs.append(app)
        wait_port(app_port, app)
        ports["direct"] = app_port
        inkmcp_servers = servers(args, targets, work)

        def start_targets(run: str) -> list[subprocess.Popen[bytes]]:
            """Every target but the app, in directories (and on ports) of their own for this `run`."""
            started: list[subprocess.Popen[bytes]] = []
            for name, conf in BASELINES.items():  # nginx-again: a second baseline, the noise floor (A/A)
                if name not in targets:
                    continue
                ngx_dir = work / f"{name}{run}"
                ngx_dir.mkdir()
                ports[name] = free_port()
                (ngx_dir / "nginx.conf").write_text(conf.format(dir=ngx_dir, app_port=app_port,
                                                                port=ports[name], workers=layout.workers))
                ngx = subprocess.Popen(layout.server([nginx, "-p", str(ngx_dir), "-c", str(ngx_dir / "nginx.conf"),
                                                      "-e", str(ngx_dir / "error.log"), "-g", "daemon off;"]))
                started.append(ngx)
                roots[name] = ngx.pid  # taskset execs nginx: the same pid
                wait_port(ports[name], ngx)
            for name, engine, script in inkmcp_servers:
                child, ports[name] = start_server(script, name, engine, app_port, work, layout, run)
                started.append(child)
                roots[name] = child.pid
            return started

        targets_procs = start_targets("")
        procs += targets_procs
        if args.cost:
            print(cost_report(work, app_port, ports, args.cost_requests, args.cost_keep, args.cost_cache,
                              args.save))
            return 0
        layout.pin_load_here()
        order = [t for t in targets if t in ports]
        wanted = {w.strip() for w in args.scenarios.split(",") if w.strip()}
        scenarios = [(c, m) for c, m in SCENARIOS if not wanted or f"{c} {m}" in wanted]
        results: dict[str, dict[str, list[dict[str, float]]]] = {}
        for conns, mode in scenarios:  # warm-up: connections, pools, caches
            for t in order:
                measure(ports[t], conns, mode, 1.0, layout)
        for rnd in range(args.rounds):
            if args.fresh and rnd and rnd % args.fresh == 0:  # new processes: another instance of each target
                stop_all(targets_procs, nginx)
                targets_procs = start_targets(f"-{rnd}")
                procs += targets_procs
                for t in order:
                    _cost_load(ports[t], "keep-alive", 50)
            seq = round_order(order, rnd)
            for conns, mode in scenarios:
                for t in seq:
                    r = measure(ports[t], conns, mode, args.seconds, layout, roots.get(t))
                    results.setdefault(f"{conns} {mode}", {}).setdefault(t, []).append(r)
                    print(f"round {rnd + 1} {conns:>2} {mode:14} {t:14} {r['rps']:9.0f} req/s  p50 {r['p50']:.3f} ms"
                          f"  p99 {r['p99']:.3f} ms  nginx CPU {r['cpu']:.1f} µs/request  errors {r['errors']:.0f}",
                          file=sys.stderr)  # fmt: skip
    finally:
        stop_all(procs, nginx)
        shutil.rmtree(work, ignore_errors=True)

    summary = {
        scenario: {t: {k: statistics.median(r.get(k, 0.0) for r in runs) for k in FIGURES}
                   for t, runs in by_target.items()}
        for scenario, by_target in results.items()
    }  # fmt: skip
    rounds = round_ratios(results)
    paired = paired_ratios(results)
    before = json.loads(args.compare.read_text())["figures"] if args.compare else {}
    stat_at_end = cpu_stat()
    elapsed = stat_at_end[1] - stat_at_start[1]
    steal = 100 * (stat_at_end[0] - stat_at_start[0]) / elapsed if elapsed > 0 else float("nan")
    print(report(summary, paired, before, args, rounds, layout, load_at_start))
    print(both_report(rounds))
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; steal time during the run: "
          f"{steal:.1f} % of CPU time (/proc/stat)")  # fmt: skip
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps({"label": args.label, "rounds": args.rounds, "seconds": args.seconds,
                                         "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                         "load_at_start": load_at_start, "load_at_end": os.getloadavg(),
                                         "steal_pct": steal, "fresh": args.fresh, "layout": layout.describe(),
                                         "figures": summary, "paired": paired, "rounds_ratios": rounds,
                                         "rounds_ratios_both": both_baselines(rounds)},
                                        indent=2) + "\n")  # fmt: skip
    # With an A/A pair (nginx-again) in the run, a scenario whose pair strays more than 3 %, or whose pair's
    # median is itself less sure than 3 %, is not judged (`aa_noisy`; benchmarks/summary.py does the same).
    noisy = [s for s, f in paired.items()
             if "nginx-again" in f and aa_noisy(f["nginx-again"], rounds.get(s, {}).get("nginx-again", {}))]
    missed = [s for s, f in paired.items() if "inkmcp" in f and s not in noisy
              and (f["inkmcp"]["rps"] < 0.97 or f["inkmcp"]["p50"] > 1.2)]  # fmt: skip
    if noisy:
        print(f"noisy, not judged (A/A req/s off by more than 3 %, or its median's error above 3 %): "
              f"{', '.join(noisy)}", file=sys.stderr)
    if missed:
        print(f"issue 12 bar missed in: {', '.join(missed)} (3 % noise allowed on throughput)", file=sys.stderr)
    return 1 if missed and not args.no_fail else 0


def stop_all(procs: list[subprocess.Popen[bytes]], nginx: str) -> None:
    """Stop the processes this script started (by their Popen), last started first."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT if nginx in p.args else signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def round_order(order: list[str], rnd: int) -> list[str]:
    """The targets' order in round `rnd`: rotated by one every two rounds, reversed every other round. With
    three targets, forward/backward alone always put the middle one in the middle (a second baseline placed
    there read 0.90 of the first in one run); this way, over 2 x len(order) rounds, each target takes each
    place equally often and each runs before each other as often as after."""
    k = (rnd // 2) % len(order)
    seq = order[k:] + order[:k]
    return seq[::-1] if rnd % 2 else seq


def round_ratios(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Per scenario and target: each round's (target ÷ nginx), in round order (see `paired_ratios`)."""
    out: dict[str, dict[str, dict[str, list[float]]]] = {}
    for scenario, by_target in results.items():
        ngx = by_target.get("nginx")
        if not ngx:
            continue
        out[scenario] = {t: {k: [r[k] / n[k] for r, n in zip(runs, ngx, strict=True) if n.get(k) and r.get(k)]
                             for k in ("rps", "p50", "cpu")}
                         for t, runs in by_target.items() if t != "nginx"}  # fmt: skip
    return out


AA_NOISE = 0.03  # issue 12's throughput bar allows 3 % of noise; a run whose A/A pair is less sure cannot judge it


def median_error(values: list[float]) -> float:
    """Standard error of the median of per-round ratios, from their interquartile range: 1.25 x sigma / sqrt(n),
    sigma = IQR / 1.349 (normal). Why: a run's A/A median can land within 3 % of 1.00 by chance while its rounds
    spread +-8 % (2026-12-01: 0.90-1.07 over 12 rounds, median 1.00, and InkMCP's verdicts in such rows flipped
    from run to run); the median's own error says whether a 3 % bar can be resolved at all."""
    if len(values) < 4:
        return float("inf")
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return 1.25 * (q3 - q1) / 1.349 / len(values) ** 0.5


def aa_noisy(paired_aa: dict[str, float], rounds_aa: dict[str, list[float]]) -> bool:
    """Whether the A/A pair (nginx-again ÷ nginx) says this scenario's req/s ratio cannot be judged against a 3 %
    bar: its median off by more than 3 %, or the median's standard error (`median_error`) above 3 %."""
    rps = paired_aa.get("rps")
    if rps is None:
        return False
    return abs(rps - 1) > AA_NOISE or median_error(rounds_aa.get("rps", [])) > AA_NOISE


def spread(values: list[float]) -> str:
    """The interquartile range of per-round ratios ("q1-q3"), or the one value."""
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else ""
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return f"{q1:.2f}-{q3:.2f}"


def paired_ratios(results: dict[str, dict[str, list[dict[str, float]]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per scenario and target: the median over rounds of (target ÷ nginx) within the same round.

    Why not the ratio of the two medians: on a shared box the load moves between rounds (other sessions'
    tests), so each target's median can come from a different round, and that ratio then compares two
    loads. Within a round the targets run back to back (`round_order`), so a round's ratio compares like
    with like, and the median over rounds drops the rounds a burst hit. Seen on 2026-12-01: 32 new
    connections, per-round ratios 1.04 0.82 1.10 1.07 0.99 (median 1.04) while the medians' ratio said 0.82.
    """
    return {scenario: {t: {k: statistics.median(v) for k, v in ratios.items() if v} for t, ratios in by_target.items()}
            for scenario, by_target in round_ratios(results).items()}  # fmt: skip


Rounds = dict[str, dict[str, dict[str, list[float]]]]  # scenario -> target -> figure -> one ratio per round


def both_baselines(rounds: Rounds) -> Rounds:
    """Per scenario and target: each round's (target ÷ the geometric mean of nginx and nginx-again in that round),
    when the run has the A/A pair. Why: each baseline instance carries its own placement luck (which worker, which
    cache lines, the other sessions of the moment), so a ratio to one instance moves with that instance's luck; the
    A/A pair itself read 0.91-1.07 between runs on 2026-12-02 (load 4-10 from other helpers' tests) while a target's
    ratio to both baselines stayed within 0.97-1.06 for the same rows. Computed from the same rounds as
    `round_ratios` ((target ÷ nginx) ÷ sqrt(nginx-again ÷ nginx))."""
    out: Rounds = {}
    for scenario, by_target in rounds.items():
        again = by_target.get("nginx-again")
        if not again:
            continue
        out[scenario] = {t: {k: [r / a ** 0.5 for r, a in zip(v, again.get(k, []), strict=False)]
                             for k, v in ratios.items()}
                         for t, ratios in by_target.items() if t != "nginx-again"}  # fmt: skip
    return out


def both_report(rounds: Rounds) -> str:
    """The table of `both_baselines`: median over rounds, the rounds' interquartile range, the median's error."""
    both = both_baselines(rounds)
    if not both:
        return ""
    lines = ["", "Each target ÷ both baselines (the geometric mean of nginx and nginx-again in the same round; "
             "median over rounds, its interquartile range, the median's standard error)", "",
             "| scenario | target | req/s ÷ both | spread | error | p50 ÷ both | spread "
             "| A/A req/s (nginx-again ÷ nginx) | A/A error |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for scenario, by_target in both.items():
        aa = rounds[scenario]["nginx-again"]["rps"]
        for t, r in by_target.items():
            if t == "nginx" or not r.get("rps"):
                continue
            lines.append(f"| {scenario} | {t} | {statistics.median(r['rps']):.2f} | {spread(r['rps'])} | "
                         f"{median_error(r['rps']):.3f} | {statistics.median(r['p50']):.2f} | {spread(r['p50'])} | "
                         f"{statistics.median(aa):.2f} | {median_error(aa):.3f} |")  # fmt: skip
    return "\n".join(lines)


def report(
    summary: dict[str, dict[str, dict[str, float]]],
    paired: dict[str, dict[str, dict[str, float]]],
    before: dict,  # type: ignore[type-arg]
    args: argparse.Namespace,
    rounds: dict[str, dict[str, dict[str, list[float]]]] | None = None,
    layout: Layout | None = None,
    load: tuple[float, ...] = (),
) -> str:
    rounds = rounds or {}
    lines = [
        f"Proxy speed ({args.rounds} interleaved rounds x {args.seconds:g} s"
        f"{f', every target started anew every {args.fresh} rounds' if getattr(args, 'fresh', 0) else ''}, "
        "medians; latency in ms; "
        "÷ nginx: median over rounds of the same round's ratio, its interquartile range in the next column)",
        f"{layout.describe() if layout else ''}; load average at the start "
        f"{' '.join(f'{v:.2f}' for v in load)}; {os.cpu_count()} CPUs",
        "",
        "| scenario | target | req/s | p50 | p99 | req/s ÷ nginx | spread | p50 ÷ nginx | spread "
        "| nginx CPU µs/req | ÷ nginx | spread | errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, by_target in summary.items():
        ngx = by_target.get("nginx")
        rows = list(by_target.items())
        if scenario in before and "inkmcp" in before[scenario]:
            rows.append((f"inkmcp (saved: {args.compare.name})", before[scenario]["inkmcp"]))
        for t, f in rows:
            per_round = rounds.get(scenario, {}).get(t, {})
            spreads = (spread(per_round.get("rps", [])), spread(per_round.get("p50", [])))
            cpu = (f"{f['cpu']:.1f}" if f.get("cpu") else "", "", spread(per_round.get("cpu", [])))
            if t == "nginx":
                ratio = ("1.00", "1.00")
            elif ngx is not None and t in paired.get(scenario, {}):
                ratio = (f"{paired[scenario][t]['rps']:.2f}", f"{paired[scenario][t]['p50']:.2f}")
                if "cpu" in paired[scenario][t]:
                    cpu = (cpu[0], f"{paired[scenario][t]['cpu']:.2f}", cpu[2])
            elif ngx is not None and "saved" not in t:
                ratio = (f"{f['rps'] / ngx['rps']:.2f}", f"{f['p50'] / ngx['p50']:.2f}")
            else:
                ratio = ("", "")
            lines.append(f"| {scenario} | {t} | {f['rps']:.0f} | {f['p50']:.3f} | {f['p99']:.3f} | {ratio[0]} | "
                         f"{spreads[0]} | {ratio[1]} | {spreads[1]} | {cpu[0]} | "
                         f"{'1.00' if t == 'nginx' else cpu[1]} | {cpu[2]} | {f['errors']:.0f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
