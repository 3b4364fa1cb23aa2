"""Measure the proxy's overhead and on_demand wake latency (not a test; run it by hand).

    .venv/bin/python -m tests.local.bench_proxy

Requests are sent from a separate process with blocking sockets so the client does not compete
with the proxy for the event loop or the GIL; overhead = (through proxy) - (direct to the app's port).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import socket
import statistics
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from inkmcp.build.plan import Mode
from inkmcp.providers.compute.base import RuntimeState
from inkmcp.providers.compute.local import LocalComputeProvider
from tests.local.conftest import WEB_APP, Events, key_for, no_record, request_for, web_plan

# http.server writes headers and body separately; without TCP_NODELAY Nagle + delayed ACK add 40 ms.
BENCH_APP = WEB_APP.replace(
    'protocol_version = "HTTP/1.1"', 'protocol_version = "HTTP/1.1"\n    disable_nagle_algorithm = True'
)


def _request(sock: socket.socket, host: str) -> None:
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += sock.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)


def keepalive_latencies(port: int, host: str, n: int) -> list[float]:
    out = []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(n):
            t = time.perf_counter()
            _request(sock, host)
            out.append(time.perf_counter() - t)
    return out


def fresh_latencies(port: int, host: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _request(sock, host)
        out.append(time.perf_counter() - t)
    return out


def first_byte(port: int, host: str) -> float:
    t = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        sock.recv(1)
    return time.perf_counter() - t


def ms(values: list[float], q: float = 0.5) -> str:
    values = sorted(values)
    return f"{values[int(q * (len(values) - 1))] * 1000:.3f} ms"


async def main() -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="inkmcp-bench-", dir="/tmp"))
    data_dir.chmod(0o711)
    checkout_root = Path(tempfile.mkdtemp(prefix="inkmcp-bench-co-", dir="/tmp"))
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    loop = asyncio.get_running_loop()
    provider = LocalComputeProvider(data_dir, proxy_port=0, idle_timeout=0.3, stop_grace=2.0)
    project = uuid.uuid4().hex
    try:
        await provider.start()
        key = key_for(project)
        lazy = key_for(project, service="lazy")
        for k, mode in ((key, Mode.persistent), (lazy, Mode.on_demand)):
            co = checkout_root / k.service_name
            co.mkdir()
            (co / "app.py").write_text(BENCH_APP)
            await provider.release(request_for(k, co, web_plan(), mode=mode), Events(), no_record)
        route = provider.proxy.get_route(provider.host_for(key))
        assert route is not None and route.port is not None
        host, pport, aport = provider.host_for(key), provider.proxy.port, route.port
        for label, fn, n in (("keep-alive", keepalive_latencies, 3000), ("new connection", fresh_latencies, 1000)):
            await loop.run_in_executor(pool, fn, aport, host, 200)  # warm up
            direct = await loop.run_in_executor(pool, fn, aport, host, n)
            proxied = await loop.run_in_executor(pool, fn, pport, host, n)
            overhead = statistics.median(proxied) - statistics.median(direct)
            print(
                f"{label:15} direct p50 {ms(direct)} p99 {ms(direct, 0.99)} | proxy p50 {ms(proxied)} "
                f"p99 {ms(proxied, 0.99)} | overhead p50 {overhead * 1000:.3f} ms"
            )
        wakes = []
        lazy_host = provider.host_for(lazy)
        for _ in range(10):
            while (await provider.runtime(lazy)).state != RuntimeState.sleeping:
                await asyncio.sleep(0.05)
            wakes.append(await loop.run_in_executor(pool, first_byte, pport, lazy_host))
        print(f"wake-to-first-byte p50 {ms(wakes)} max {ms(wakes, 1.0)} (n={len(wakes)})")
    finally:
        pool.shutdown()
        await provider.close()
        await provider.remove(key_for(project))
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.rmtree(checkout_root, ignore_errors=True)
        from inkmcp.providers.compute.local.users import delete_project_user

        await delete_project_user(project)


if __name__ == "__main__":
    asyncio.run(main())
