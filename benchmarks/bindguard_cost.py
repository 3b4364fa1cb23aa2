"""What the bind guard (inkmcp/providers/compute/local/bindguard.py) costs: per bind(), per tenant start, at start.

Root only (the hook is a cgroup BPF program). Same-run comparison, rounds alternating "hook off" and "hook on":
- bind(): a child process binds and closes a TCP socket N times, as a tenant uid whose port is granted (its own
  port, and port 0), and as root (not a tenant: one map lookup); off = no guard attached by this script;
- start: a tenant process is spawned (setpriv, python3 -S), binds its $PORT and exits, wall time per process;
- the provider's calls per run start/stop: take_refused + grant + revoke (three bpf(2) map syscalls);
- open/close: loading the two programs and linking them (once per provider start);
- the hook's own run time per bind() as the kernel counts it (BPF_ENABLE_STATS): what a bind pays, independent of
  the machine's load (the wall-clock bind() rows above are dominated by noise on a busy 2-core box).

Run under the shared lock: flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/bindguard_cost.py --rounds 5
Other InkMCPs' hooks on the machine (their own programs) run in both arms alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from inkmcp.providers.compute.local import cgroup_bpf
from inkmcp.providers.compute.local.bindguard import BindGuard

UID = 61777
PY = "/usr/bin/python3"
BINDS = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
t = time.perf_counter()
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.close()
print((time.perf_counter() - t) / n * 1e6)
"""
ONE_BIND = r"""
import socket, sys
for _ in range(int(sys.argv[2])):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", int(sys.argv[1])))
    except OSError:
        pass
    s.close()
"""
START = "import socket, sys; s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.close()"


def _as(uid: int | None) -> list[str]:
    return [] if uid is None else ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def bind_us(uid: int | None, port: int, n: int) -> float:
    out = subprocess.run([*_as(uid), PY, "-S", "-c", BINDS, str(port), str(n)], capture_output=True, text=True,
                         check=True)
    return float(out.stdout)


def start_ms(port: int, n: int) -> float:
    took = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([*_as(UID), PY, "-S", "-c", START, str(port)], check=True)
        took.append((time.perf_counter() - t) * 1e3)
    return statistics.median(took)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--binds", type=int, default=20000)
    ap.add_argument("--starts", type=int, default=20)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("root only (the hook is a cgroup BPF program)")
    print("loadavg at start:", open("/proc/loadavg").read().strip())
    port = 28777
    rows: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for _ in range(args.rounds):
        for on in (False, True):
            guard = None
            if on:
                t = time.perf_counter()
                guard = BindGuard.open()
                add("open (load 2 programs + link) ms", (time.perf_counter() - t) * 1e3)
                guard.grant(UID, port)
            arm = "on " if on else "off"
            add(f"bind own port, tenant, hook {arm} us", bind_us(UID, port, args.binds))
            add(f"bind port 0, tenant, hook {arm} us", bind_us(UID, 0, args.binds))
            add(f"bind port 0, root, hook {arm} us", bind_us(None, 0, args.binds))
            add(f"tenant start+bind+exit, hook {arm} ms", start_ms(port, args.starts))
            if guard is not None:  # the program's own time per run, counted by the kernel (load-independent)
                stats_fd = cgroup_bpf.enable_stats()
                prog = cgroup_bpf.program_fd(guard.program_ids[0])
                try:
                    for label, uid, p in (("tenant own port (2 lookups)", UID, port),
                                          ("tenant other port (2 lookups + record)", UID, port + 2),
                                          ("root (1 lookup)", None, port + 3)):
                        ns0, n0 = cgroup_bpf.program_stats(prog)
                        subprocess.run([*_as(uid), PY, "-S", "-c", ONE_BIND, str(p), "2000"], check=True)
                        ns1, n1 = cgroup_bpf.program_stats(prog)
                        add(f"hook run time, {label} ns", (ns1 - ns0) / max(1, n1 - n0))
                finally:
                    os.close(prog)
                    os.close(stats_fd)
                t = time.perf_counter()
                for _ in range(2000):
                    guard.take_refused(UID)
                    guard.grant(UID, port + 1)
                    guard.revoke(UID, port + 1)
                add("provider calls per run (take_refused+grant+revoke) us", (time.perf_counter() - t) / 2000 * 1e6)
                t = time.perf_counter()
                guard.close()
                add("close (detach) ms", (time.perf_counter() - t) * 1e3)
    summary = {name: {"median": round(statistics.median(v), 3), "min": round(min(v), 3)} for name, v in rows.items()}
    for name, v in summary.items():
        print(f"{name:58s} median {v['median']:9.3f}  min {v['min']:9.3f}")
    for what in ("bind own port, tenant", "bind port 0, tenant", "bind port 0, root"):
        off, on = summary[f"{what}, hook off us"]["median"], summary[f"{what}, hook on  us"]["median"]
        print(f"ratio on/off {what}: {on / off:.3f} (+{on - off:.2f} us)")
    off, on = summary["tenant start+bind+exit, hook off ms"]["median"], summary["tenant start+bind+exit, hook on  ms"][
        "median"]
    print(f"ratio on/off tenant start: {on / off:.3f} (+{on - off:.2f} ms)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
