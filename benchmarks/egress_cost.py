"""What the tenant egress rules (inkmcp/providers/compute/local/egress.py) cost a tenant's connections: A/B in one run.

A = no rules for the probing user, B = the egress table with that user in its tenant set (a table of the benchmark's
own, `inkmcp_egress_bench`, so the machine's real table is left alone; a uid the real table does not cover, so only
the benchmark's table decides). Rounds alternate A and B so load hits both alike; figures are medians per operation.

The probe runs as a throw-away uid (no login, nothing of its own) through `setpriv`, as a tenant's process would:
1. TCP connect + the server's accept + close, to a loopback listener (what apps do to their database, Redis, proxy);
2. one UDP datagram sent to loopback (sendto);
3. a refused TCP connect to a private address (B: answered by the reset at once; A: the test net refuses).

    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/egress_cost.py --rounds 20 --per-round 2000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading

from inkmcp.providers.compute.local import egress
from inkmcp.settings import TenantEgressSettings

TABLE = "inkmcp_egress_bench"
UID = 64999  # no user of this machine: a uid only the benchmark's table lists

PROBE = r"""
import json, socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
out = {}
t = time.perf_counter()
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port)); s.close()
out["tcp_loopback_connect_us"] = (time.perf_counter() - t) / n * 1e6
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
t = time.perf_counter()
for _ in range(n):
    u.sendto(b"x", ("127.0.0.1", port))
out["udp_loopback_send_us"] = (time.perf_counter() - t) / n * 1e6
k = max(1, n // 10)
t = time.perf_counter()
for _ in range(k):
    s = socket.socket(); s.settimeout(1)
    try:
        s.connect(("10.255.0.9", 9))
    except OSError:
        pass
    s.close()
out["refused_connect_us"] = (time.perf_counter() - t) / k * 1e6
print(json.dumps(out))
"""


def serve(listener: socket.socket) -> None:
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=2000)
    args = parser.parse_args()
    if os.geteuid() != 0 or egress.nft_path() is None:
        sys.exit("run as root with nft installed (the rules and setpriv need it)")
    print(f"load at start: {open('/proc/loadavg').read().strip()}")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(512)
    port = listener.getsockname()[1]
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", port))  # UDP datagrams land here (never read: the queue just drops the overflow)
    threading.Thread(target=serve, args=(listener,), daemon=True).start()
    settings = TenantEgressSettings(tenant_egress="block-private")
    results: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    try:
        for _ in range(args.rounds):
            for variant in ("A", "B"):
                if variant == "B":
                    text = egress.render(settings, [UID], table=TABLE)
                    done = subprocess.run(["nft", "-f", "-"], input=text, text=True, capture_output=True, check=False)
                    if done.returncode != 0:
                        sys.exit(done.stderr)
                else:
                    egress.remove(table=TABLE)
                out = subprocess.run(
                    ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", "/usr/bin/python3", "-c",
                     PROBE, str(port), str(args.per_round)], capture_output=True, text=True, check=True)
                for name, value in json.loads(out.stdout).items():
                    results[variant].setdefault(name, []).append(value)
    finally:
        egress.remove(table=TABLE)
        listener.close()
        sink.close()
    print(f"{'median per operation':32} {'A (no rules)':>14} {'B (rules)':>12} {'B - A':>10}")
    for name in results["A"]:
        a, b = statistics.median(results["A"][name]), statistics.median(results["B"][name])
        print(f"{name:32} {a:12.1f}us {b:10.1f}us {b - a:+9.2f}us")


if __name__ == "__main__":
    main()
