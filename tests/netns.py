"""Network-namespace plumbing shared by the kernel-firewall tests (tests/hardening) and the
real-Docker egress tests (tests/runtime): stand-in hosts behind a router namespace."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable


def sh(*args: str, check: bool = True) -> str:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=15, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r.stdout


def link_standin(router: str, target: str, name: str, base: int, addrs: Iterable[str]) -> None:
    """A routed /30 from `router` to the stand-in host namespace `target` (192.0.2.<base+1>/<base+2>,
    documentation range), with the host's own addresses on its loopback and routes to them via the link."""
    sh("ip", "-n", router, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0", "netns", target)
    sh("ip", "-n", router, "addr", "add", f"192.0.2.{base + 1}/30", "dev", f"v{name}")
    sh("ip", "-n", router, "link", "set", f"v{name}", "up")
    sh("ip", "-n", target, "addr", "add", f"192.0.2.{base + 2}/30", "dev", "eth0")
    sh("ip", "-n", target, "link", "set", "eth0", "up")
    sh("ip", "-n", target, "route", "add", "default", "via", f"192.0.2.{base + 1}")
    for addr in addrs:
        sh("ip", "-n", target, "addr", "add", f"{addr}/32", "dev", "lo")
        sh("ip", "-n", router, "route", "add", f"{addr}/32", "via", f"192.0.2.{base + 2}")


# A stand-in host: listens on every ADDR:PORT given after its name and answers each connection with
# "<name>:<port>", so an answer names who answered and a refusal is the firewall's, not a closed port.
LISTENER = """
import socket, sys, threading
def serve(s, banner):
    while True:
        conn, _ = s.accept()
        try:
            conn.sendall(banner)
        except OSError:
            pass
        conn.close()
for spec in sys.argv[2:]:
    addr, port = spec.rsplit(":", 1)
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    threading.Thread(target=serve, args=(s, f"{sys.argv[1]}:{port}\\n".encode()), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
