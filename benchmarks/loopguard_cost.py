"""What the loopback guard (inkmcp/providers/compute/local/loopguard.py) costs, against its nftables alternative.

Root only (cgroup BPF programs, nftables). Same-run comparison, rounds rotating three arms, each with the bind guard
loaded (the loopback guard needs it):
- off: the bind guard only (what a tenant's connect() paid before);
- bpf: the loopback guard's post_bind and connect hooks (a listener lookup and a socket-storage read per connect());
- nft: the alternative the guard was chosen over: a per-project (uid . port) set in an nftables output rule for
  loopback SYNs (1,000 elements, as many app ports as a busy machine has), without the BPF hooks. (It cannot tell a
  project's port-0 listeners apart from another's: the reason it was not chosen; here it only gives the cost.)
Measured:
- connect: a tenant process binds its granted port, listens, and connects to it and accepts N times (loopback TCP
  handshake + close): wall time per connection;
- bind: the same process binding port 0 N times (the post_bind stamp);
- the hooks' own run time per call as the kernel counts it (BPF_ENABLE_STATS), for a tenant reaching its own
  listener, a root listener on a port given to it, a port nothing listens on, and root (not a tenant): load-independent.

Run under the shared lock: flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/loopguard_cost.py --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

from inkmcp.providers.compute.local import cgroup_bpf
from inkmcp.providers.compute.local.bindguard import BindGuard
from inkmcp.providers.compute.local.loopguard import LoopbackGuard

UID = 61778
PY = "/usr/bin/python3"
TABLE = "inkmcp_lbbench"
CONNECTS = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port))
srv.listen(128)
t = time.perf_counter()
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    a, _ = srv.accept()
    a.close()
    c.close()
connect = (time.perf_counter() - t) / n * 1e6
t = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.close()
print(connect, (time.perf_counter() - t) / n * 1e6)
"""
TRY = r"""
import socket, sys
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    s.setblocking(False)  # the hook runs in connect() itself; nobody accepts these
    try:
        port = int(sys.argv[1])
        s.connect(("127.0.0.1", port) if port > 0 else ("198.51.100.7", -port))
    except OSError:
        pass
    s.close()
"""
NFT = """table inet {table} {{
  set allowed {{ type uid . inet_service; elements = {{ {elements} }} }}
  chain output {{
    type filter hook output priority filter; policy accept;
    meta skuid {uid} tcp flags & (syn | ack) == syn ip daddr 127.0.0.0/8 meta skuid . tcp dport @allowed accept
    meta skuid {uid} tcp flags & (syn | ack) == syn ip daddr 127.0.0.0/8 reject with tcp reset
  }}
}}
"""


def _as(uid: int | None) -> list[str]:
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def run(port: int, n: int) -> tuple[float, float]:
    out = subprocess.run([*_as(UID), PY, "-S", "-c", CONNECTS, str(port), str(n)], capture_output=True, text=True,
                         check=True)
    connect, bind = out.stdout.split()
    return float(connect), float(bind)


def nft(text: str | None) -> None:
    subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, check=False)
    if text is not None:
        subprocess.run(["nft", "-f", "-"], input=text, text=True, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--per-round", type=int, default=3000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("root only (cgroup BPF programs, nftables)")
    print("loadavg at start:", open("/proc/loadavg").read().strip())
    port = 28779
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    elements = ", ".join(f"{60000 + i} . {20000 + i}" for i in range(999)) + f", {UID} . {port}"
    binds = BindGuard.open()
    binds.grant(UID, port)
    try:
        for _ in range(args.rounds):
            for arm in ("off", "bpf", "nft"):
                loop = None
                if arm == "bpf":
                    t = time.perf_counter()
                    loop = LoopbackGuard.open(binds)
                    add("open (load 4 programs + link) ms", (time.perf_counter() - t) * 1e3)
                if arm == "nft":
                    nft(NFT.format(table=TABLE, elements=elements, uid=UID))
                try:
                    connect, bind = run(port, args.per_round)
                    add(f"connect+accept+close, tenant, {arm} us", connect)
                    add(f"bind port 0, tenant, {arm} us", bind)
                    if loop is not None:
                        _hook_times(loop, port, add)
                finally:
                    if loop is not None:
                        loop.close()
                    if arm == "nft":
                        nft(None)
    finally:
        binds.close()
    summary = {name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3)} for name, v in rows.items()}
    for name, v in summary.items():
        print(f"{name:62s} median {v['median']:9.3f}  min {v['min']:9.3f}")
    for what in ("connect+accept+close, tenant", "bind port 0, tenant"):
        off = summary[f"{what}, off us"]["median"]
        for arm in ("bpf", "nft"):
            on = summary[f"{what}, {arm} us"]["median"]
            print(f"ratio {arm}/off {what}: {on / off:.3f} ({on - off:+.2f} us)")
    print("loadavg at end:", open("/proc/loadavg").read().strip())
    print(json.dumps(summary))


def _hook_times(loop: LoopbackGuard, port: int, add) -> None:  # type: ignore[no-untyped-def]
    """The connect4 program's own time per run (and post_bind4's), counted by the kernel."""
    stats_fd = cgroup_bpf.enable_stats()
    stamp4, connect4 = (cgroup_bpf.program_fd(loop.program_ids[i]) for i in (0, 2))
    root_listener, other = socket.create_server(("127.0.0.1", 0)), socket.create_server(("127.0.0.1", 0))
    given, not_given = root_listener.getsockname()[1], other.getsockname()[1]
    loop.give(UID, [given])
    try:
        closed = socket.create_server(("127.0.0.1", 0))
        nothing = closed.getsockname()[1]
        closed.close()
        for label, uid, p in (("tenant to a root listener given to it", UID, given),
                              ("tenant to a port nothing listens on", UID, nothing),
                              ("tenant to a root listener not given (refused)", UID, not_given),
                              ("root (not a tenant)", None, given),
                              ("tenant to a remote address (no lookup)", UID, -given)):
            ns0, n0 = cgroup_bpf.program_stats(connect4)
            subprocess.run([*_as(uid), PY, "-S", "-c", TRY, str(p), "1000"], check=True)
            ns1, n1 = cgroup_bpf.program_stats(connect4)
            add(f"connect hook run time, {label} ns", (ns1 - ns0) / max(1, n1 - n0))
        ns0, n0 = cgroup_bpf.program_stats(stamp4)
        ns2, n2 = cgroup_bpf.program_stats(connect4)
        run(port, 500)  # its own listener: stamped at bind, then 500 own connects and 500 port-0 binds
        ns1, n1 = cgroup_bpf.program_stats(stamp4)
        ns3, n3 = cgroup_bpf.program_stats(connect4)
        add("post_bind hook run time, tenant (stamp) ns", (ns1 - ns0) / max(1, n1 - n0))
        add("connect hook run time, tenant to its own listener ns", (ns3 - ns2) / max(1, n3 - n2))
    finally:
        loop.give(UID, [])
        root_listener.close()
        other.close()
        for fd in (stamp4, connect4):
            os.close(fd)
        os.close(stats_fd)


if __name__ == "__main__":
    main()
