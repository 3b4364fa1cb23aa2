"""The socket guard (providers/compute/local/sockguard.py), with the kernel's real hooks and real processes.

Each test opens a guard of its own (its own programs and maps, linked to the cgroup2 root) and runs the tenant's side
as a real process under a uid no user has (setpriv), so nothing here depends on a server. The full-scale attack (the
whole ephemeral range) runs in a private network namespace, whose ports nobody else on this shared machine uses; the
attack from inside a deployed app is tests/security/test_redteam6_ephemeral_ports.py.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from inkmcp.providers.compute.local import sockguard
from inkmcp.providers.compute.local.sockguard import SocketGuard
from tests.requirements import requires

ROOT = requires("root", os.geteuid() == 0, "the socket guard loads cgroup BPF programs: root (CAP_BPF) only")
pytestmark = [ROOT]

PY = "/usr/bin/python3"
# What the tenant (or, with uid 0, the victim) does; one JSON line out, then (with "wait") it keeps its sockets
# until its stdin closes.
PROBE = r"""
import json, resource, socket, sys, time
args = json.loads(sys.argv[1])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 20,000 here, as a tenant's
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
out = {"ok": 0, "errno": 0, "errors": {}}
held = []

def note(e):
    out["errno"] = e.errno
    out["errors"][str(e.errno)] = out["errors"].get(str(e.errno), 0) + 1

do = args["do"]
start = time.monotonic()
if do == "hold":
    for _ in range(args["n"]):
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if args["kind"] == "udp" else socket.SOCK_STREAM)
        except OSError as e:
            note(e)
            break
        try:
            if args["kind"] == "udp":
                s.sendto(b"x", ("127.0.0.1", 9))
            elif args["kind"] == "listen":
                s.listen()
            else:
                s.bind(("127.0.0.1", 0))
        except OSError as e:
            s.close()
            note(e)
            break
        held.append(s)
        out["ok"] += 1
elif do in ("churn", "connect"):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    for _ in range(args["n"]):
        s = socket.socket()
        try:
            if do == "churn":
                s.bind(("127.0.0.1", 0))
            s.connect(listener.getsockname())
        except OSError as e:
            s.close()
            note(e)
            continue
        conn, _ = listener.accept()
        s.close()  # the client closes first: its port goes to TIME_WAIT
        conn.close()
        out["ok"] += 1
elif do == "victim":
    listener = socket.socket()
    listener.bind(("127.0.0.1", args["port"]))
    listener.listen(16)
    for what in ("tcp", "udp"):
        try:
            if what == "tcp":
                c = socket.create_connection(("127.0.0.1", args["port"]), timeout=5)
            else:
                c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                c.sendto(b"q", ("127.0.0.1", 53))
            c.close()
            out[what] = "ok"
        except OSError as e:
            out[what] = e.errno
out["seconds"] = round(time.monotonic() - start, 3)
print(json.dumps(out), flush=True)
if args.get("wait"):
    sys.stdin.read()
"""


def _free_uid(after: int = 0) -> int:
    for uid in range(61100 + after, 62000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in 61100-61999")


def _argv(uid: int, args: dict[str, Any], netns: int | None) -> list[str]:
    argv = [PY, "-c", PROBE, json.dumps(args)]
    if uid:
        argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]
    if netns is not None:
        argv = ["nsenter", f"--net=/proc/{netns}/ns/net", *argv]
    return argv


def _run(uid: int, netns: int | None = None, **args: Any) -> dict[str, Any]:
    out = subprocess.run(_argv(uid, args, netns), capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


class _Holder:
    """A tenant process that keeps what it took until `release` (stopped by its PID)."""

    def __init__(self, uid: int, netns: int | None = None, **args: Any) -> None:
        self.proc = subprocess.Popen(_argv(uid, {**args, "wait": True}, netns), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.seen = json.loads(self.proc.stdout.readline())

    def release(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def guard() -> Iterator[SocketGuard]:
    g = SocketGuard.open(limit=40, per_s=5, burst=10)
    try:
        yield g
    finally:
        g.close()


def _counted_down(guard: SocketGuard, uid: int) -> int:
    deadline = time.monotonic() + 5
    while guard.count(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return guard.count(uid)


@pytest.mark.parametrize("kind", ["bind0", "listen", "udp"])
def test_a_tenants_open_sockets_stop_at_its_cap(guard: SocketGuard, kind: str) -> None:
    """bind(0), listen() on an unbound socket and sendto() on an unbound UDP socket each take an ephemeral port: the
    tenant gets 40 (the cap), the 41st socket() fails with EPERM, and closing them gives the share back."""
    uid = _free_uid()
    guard.assign(uid, "acct-a")
    got = _run(uid, do="hold", kind=kind, n=100)
    assert got["ok"] == 40 and got["errno"] == errno.EPERM, got
    assert guard.take_refused(uid) == sockguard.REFUSED_SOCKET and guard.take_refused(uid) is None
    assert _counted_down(guard, uid) == 0
    again = _run(uid, do="hold", kind=kind, n=100)
    assert again["ok"] == 40, again


def test_an_accounts_projects_share_one_cap_and_nobody_else_is_touched(guard: SocketGuard) -> None:
    first, second, other, unknown = (_free_uid(i) for i in range(4))
    guard.assign(first, "acct-a")
    guard.assign(second, "acct-a")  # another project of the same account
    guard.assign(other, "acct-b")
    holder = _Holder(first, do="hold", kind="bind0", n=30)
    try:
        assert holder.seen["ok"] == 30, holder.seen
        assert guard.count(second) == 30
        rest = _run(second, do="hold", kind="bind0", n=100)
        assert rest["ok"] == 10 and rest["errno"] == errno.EPERM, rest
        assert _run(other, do="hold", kind="bind0", n=100)["ok"] == 40  # another account: its own share
        assert _run(unknown, do="hold", kind="bind0", n=100)["ok"] == 100  # not a tenant of this InkMCP
        assert _run(0, do="hold", kind="bind0", n=100)["ok"] == 100  # root
    finally:
        holder.release()
    assert _counted_down(guard, first) == 0


def test_connects_from_a_port_bound_beforehand_are_paced(guard: SocketGuard) -> None:
    """bind(0) + connect() + close() leaves the port in TIME_WAIT for 60 s after the socket is gone (outside the
    count): those connect()s are paced (here 5 a second, bursts of 10); a plain connect() is not."""
    uid = _free_uid()
    guard.assign(uid, "acct-a")
    churn = _run(uid, do="churn", n=60)
    allowed = 10 + 5 * churn["seconds"] + 2
    assert 10 <= churn["ok"] <= allowed and churn["errno"] == errno.EPERM, churn
    assert guard.take_refused(uid) == sockguard.REFUSED_CONNECT
    plain = _run(uid, do="connect", n=60)
    assert plain["ok"] == 60 and not plain["errors"], plain


def test_forget_stops_counting_a_deleted_users_sockets(guard: SocketGuard) -> None:
    uid = _free_uid()
    guard.assign(uid, "acct-a")
    guard.forget(uid)
    assert _run(uid, do="hold", kind="bind0", n=100)["ok"] == 100


NS_RANGE = (40000, 43999)  # 4,000 ports: filled in a second or two (the default 28,232 take a minute, ~O(n^2))


@pytest.fixture
def netns() -> Iterator[int]:
    """A private network namespace (ports nobody else uses, a range of 4,000), held by a process of ours."""
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "ip link set lo up && sysctl -qw "
                               f"net.ipv4.ip_local_port_range='{NS_RANGE[0]} {NS_RANGE[1]}' && exec sleep 600"])
    try:
        deadline = time.monotonic() + 5
        while not os.readlink(f"/proc/{holder.pid}/exe").endswith("/sleep"):  # lo is up
            assert time.monotonic() < deadline, "the namespace holder did not start"
            time.sleep(0.02)
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()


def _cookie(netns: int) -> int:
    code = ("import socket, struct; s = socket.socket(); "
            "print(struct.unpack('<Q', s.getsockopt(socket.SOL_SOCKET, 71, 8))[0])")
    return int(subprocess.run(["nsenter", f"--net=/proc/{netns}/ns/net", PY, "-c", code], capture_output=True,
                              text=True, timeout=30, check=True).stdout)


def test_a_tenant_cannot_take_the_whole_ephemeral_range(netns: int) -> None:
    """The attack to the end (a namespace of its own, so the machine's ports stay everyone's: a range of 4,000 there,
    and the guard's share of this machine's range, 3,529 of 28,232). Without the guard the tenant's bind(0) loop holds
    every port and root's connect() there fails (EADDRNOTAVAIL), as does a DNS-like sendto() (EAGAIN); with it the
    tenant stops at its share with EPERM and root connects."""
    uid = _free_uid()
    span = NS_RANGE[1] - NS_RANGE[0] + 1
    tcp = {"do": "hold", "kind": "bind0", "n": span + 10}
    udp = {"do": "hold", "kind": "udp", "n": span + 10}  # sendto() on unbound UDP sockets: UDP's ports
    before = [_Holder(uid, netns, **tcp), _Holder(uid, netns, **udp)]  # no guard: what the attack does
    try:
        assert [h.seen["ok"] for h in before] == [span, span], [h.seen for h in before]
        broken = _run(0, netns, do="victim", port=5000)
        assert broken["tcp"] == errno.EADDRNOTAVAIL and broken["udp"] == errno.EAGAIN, broken
    finally:
        for h in before:
            h.release()
    guard = SocketGuard.open()
    try:
        guard._cookie = _cookie(netns)  # the namespace's tenant, as the provider's own namespace's
        guard.assign(uid, "acct-a")
        after = [_Holder(uid, netns, **tcp), _Holder(uid, netns, **udp)]
        try:
            assert after[0].seen["ok"] == guard.cap == min(4096, sockguard.port_range() // 8) < span, after[0].seen
            assert after[1].seen["ok"] == 0, after[1].seen  # the account's share is used up
            assert after[0].seen["errno"] == after[1].seen["errno"] == errno.EPERM, [h.seen for h in after]
            served = _run(0, netns, do="victim", port=5000)
            assert served["tcp"] == "ok" and served["udp"] == "ok", served
        finally:
            for h in after:
                h.release()
    finally:
        guard.close()


# --- the tenant PostgreSQL server's slots (redteam6 #2)
HOLD_CONNECTIONS = r"""
import json, socket, sys
args = json.loads(sys.argv[1])
held, out = [], {"ok": 0, "errno": 0}
for _ in range(args["n"]):
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", args["port"]))
    except OSError as e:
        s.close()
        out["errno"] = e.errno
        break
    held.append(s)
    out["ok"] += 1
print(json.dumps(out), flush=True)
if args.get("wait"):
    sys.stdin.read()
"""


def _connections(uid: int, port: int, n: int, *, wait: bool = False) -> subprocess.Popen[str] | dict[str, Any]:
    argv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PY, "-c", HOLD_CONNECTIONS,
            json.dumps({"port": port, "n": n, "wait": wait})]
    if not wait:
        return json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout)
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_an_accounts_connections_to_the_database_server_stop_at_its_share() -> None:
    """Connections that never log in hold the tenant PostgreSQL server's slots as sessions do: an account's open
    connections to its port are capped (here 12), other ports are not, and closing them gives the share back."""
    import socket

    guard = SocketGuard.open(limit=400, conn_cap=12)
    server, other = socket.socket(), socket.socket()
    try:
        for s in (server, other):
            s.bind(("127.0.0.1", 0))
            s.listen(512)
        port, other_port = server.getsockname()[1], other.getsockname()[1]
        guard.limit_ports({port})
        first, second, stranger = _free_uid(), _free_uid(1), _free_uid(2)
        guard.assign(first, "acct-a")
        guard.assign(second, "acct-a")
        guard.assign(stranger, "acct-b")
        holder = _connections(first, port, 8, wait=True)
        assert isinstance(holder, subprocess.Popen) and holder.stdout is not None
        try:
            assert json.loads(holder.stdout.readline())["ok"] == 8
            assert guard.connections(first) == 8
            rest = _connections(second, port, 50)
            assert rest["ok"] == 4 and rest["errno"] == errno.EPERM, rest  # the account's 12 together
            assert guard.take_refused(second) == sockguard.REFUSED_DATABASE
            assert _connections(stranger, port, 50)["ok"] == 12  # another account: its own share
            assert _connections(first, other_port, 50)["ok"] == 50  # not a limited port
        finally:
            assert holder.stdin is not None
            holder.stdin.close()
            holder.wait(timeout=30)
        assert _counted_down_connections(guard, first) == 0
        again = _connections(first, port, 50)
        assert again["ok"] == 12, again
    finally:
        server.close()
        other.close()
        guard.close()


def _counted_down_connections(guard: SocketGuard, uid: int) -> int:
    deadline = time.monotonic() + 5
    while guard.connections(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return guard.connections(uid)
