"""The loopback guard (providers/compute/local/loopguard.py), with the kernel's real hooks and real processes.

Each test opens a bind guard and a loopback guard of its own (linked to the cgroup2 root) and runs the tenants' sides
as real processes under uids no user has (setpriv), so nothing here needs a server: the victim's listener is bound by
the victim's uid (so the kernel stamps it), the attacker connects from its own. The end-to-end attack (two deployed
projects, a forged X-Forwarded-For, the proxy still answering) is tests/security/test_loopback_bypass.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.local import loopguard
from inkmcp.providers.compute.local.bindguard import BindGuard
from inkmcp.providers.compute.local.loopguard import LoopbackGuard
from tests.requirements import requires
from tests.support import free_port, traversable_tmpdir

ROOT = requires("root", os.geteuid() == 0, "the loopback guard loads cgroup BPF programs: root (CAP_BPF) only")
pytestmark = [ROOT]

PY = "/usr/bin/python3"

# A tenant's listener: its $PORT on [::] (dual stack: 127.0.0.1, ::1 and the host's addresses reach it) and a port-0
# one (a worker's); every connection it accepts is written to a file, so "it saw nothing" is read from its side.
LISTENER = r"""
import socket, sys, threading
seen = open(sys.argv[2], "a", buffering=1)
def serve(s, name):
    while True:
        c, peer = s.accept()
        seen.write(f"{name} {peer[0]}\n")
        c.sendall(b"hello")
        c.close()
a = socket.socket(socket.AF_INET6)
a.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
a.bind(("::", int(sys.argv[1])))
a.listen(16)
b = socket.socket()
b.bind(("127.0.0.1", 0))
b.listen(16)
for s, name in ((a, "app"), (b, "worker")):
    threading.Thread(target=serve, args=(s, name), daemon=True).start()
print(b.getsockname()[1], flush=True)
threading.Event().wait()
"""

# The other side: connect() to each target and report errno (0: connected); its own port-0 listener, reached from a
# second process of the same uid (a web process and its worker), and a UDP datagram.
PROBE = r"""
import errno, json, socket, subprocess, sys

def connect(host, port, timeout=2.0):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()

def pending(host, port):
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setblocking(False)
    try:
        s.connect((host, port))
        return 0
    except OSError as e:
        return e.errno
    finally:
        s.close()

targets = json.loads(sys.argv[1])
out = {f"{h} {p}": connect(h, p) for h, p in targets["connect"]}
out.update({f"pending {h} {p}": pending(h, p) for h, p in targets.get("pending", [])})
own = socket.socket()
own.bind(("127.0.0.1", 0))
own.listen(4)
port = own.getsockname()[1]
child = subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 2)"],
                       capture_output=True, text=True)
out["own worker"] = child.returncode
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
out["udp"] = u.sendto(b"x", ("127.0.0.1", targets["udp"])) and 0
print(json.dumps(out))
"""


def _free_uid(after: int = 0) -> int:
    """A uid no user has, in a range of this file's own (the bind guard's tests use 61000-61999 at the same time)."""
    import pwd

    for uid in range(62500 + after, 63000):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
    raise AssertionError("no free uid in 62500-62999")


def _as(uid: int) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]


def _probe(uid: int, connect: list[tuple[str, int]], *, udp: int, pending: list[tuple[str, int]] = ()) -> dict:
    argv = [*_as(uid), PY, "-c", PROBE, json.dumps({"connect": connect, "udp": udp, "pending": list(pending)})]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return json.loads(out.stdout)


def _host_addresses() -> list[str]:
    """This host's own non-loopback addresses, IPv4 and IPv6 (not link-local: they need a scope)."""
    import psutil

    found = []
    for nic in psutil.net_if_addrs().values():
        for a in nic:
            if a.family in (socket.AF_INET, socket.AF_INET6) and not a.address.startswith(("127.", "::1", "fe80")):
                found.append(a.address.split("%")[0])
    return found


@pytest.fixture
def guards() -> Iterator[tuple[BindGuard, LoopbackGuard]]:
    binds = BindGuard.open()
    try:
        loop = LoopbackGuard.open(binds)
        try:
            yield binds, loop
        finally:
            loop.close()
    finally:
        binds.close()


class Listener:
    def __init__(self, uid: int, port: int, seen: Path) -> None:
        seen.touch()
        os.chown(seen, uid, uid)
        self.proc = subprocess.Popen([*_as(uid), PY, "-c", LISTENER, str(port), str(seen)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.worker = int(self.proc.stdout.readline())
        self.seen = seen

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def seen() -> Iterator[Path]:
    """A file the victim's listener (a tenant uid) appends to: in a dir tenants traverse (pytest's are 0700)."""
    d = traversable_tmpdir("inkmcp-loopguard-")
    try:
        yield d / "seen"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_another_tenants_listeners_are_refused_on_every_local_address(guards, seen: Path) -> None:
    binds, _ = guards
    victim, attacker = _free_uid(), _free_uid(1)
    app = free_port()
    binds.grant(victim, app)
    binds.grant(attacker, free_port())
    listener = Listener(victim, app, seen)
    try:
        targets = [("127.0.0.1", app), ("::1", app), ("::ffff:127.0.0.1", app), ("0.0.0.0", app), ("::", app),
                   ("127.0.0.2", app), ("127.0.0.1", listener.worker)]
        targets += [(a, app) for a in _host_addresses()]  # the listener is on all addresses
        got = _probe(attacker, targets, udp=listener.worker)
        for host_, port in targets:
            assert got[f"{host_} {port}"] == errno.EPERM, (host_, port, got)
        assert listener.seen.read_text() == "", "the victim's listener accepted a connection"
        assert got["own worker"] == 0, got  # its own port-0 listener, from another of its processes
        assert got["udp"] == 0, got  # a datagram to a port no UDP socket holds (UDP: test_..._datagram_listeners_...)
        # the victim reaches its own (app and worker), and a uid no guard marked reaches both (root, nginx, ...)
        for uid in (victim, _free_uid(2)):
            mine = _probe(uid, [("127.0.0.1", app), ("::1", app), ("127.0.0.1", listener.worker)], udp=app)
            assert set(mine.values()) == {0}, (uid, mine)
        assert len(listener.seen.read_text().splitlines()) == 6
    finally:
        listener.stop()


def test_a_non_tenant_listener_is_reached_only_on_ports_given(guards) -> None:
    """Root's, nginx's, PostgreSQL's, Redis's listeners: refused unless open to every tenant (the proxy, the tenant
    PostgreSQL server) or given to this project (its Redis); its own runs' ports are its own."""
    binds, loop = guards
    uid, other = _free_uid(), _free_uid(1)
    binds.mark(other)
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(4)]
    try:
        mcp, proxy, redis, own = (s.getsockname()[1] for s in servers)
        binds.grant(uid, own)  # its $PORT, here held by root (as InkMCP holds a crashed app's socket)
        loop.open_ports([proxy])
        loop.give(uid, [redis])
        targets = [("127.0.0.1", p) for p in (mcp, proxy, redis, own)]
        got = _probe(uid, targets, udp=mcp)
        assert [got[f"127.0.0.1 {p}"] for p in (mcp, proxy, redis, own)] == [errno.EPERM, 0, 0, 0], got
        theirs = _probe(other, targets, udp=mcp)
        assert [theirs[f"127.0.0.1 {p}"] for p in (mcp, proxy, redis, own)] == [errno.EPERM, 0, errno.EPERM,
                                                                                  errno.EPERM], theirs
        assert loop.take_refused(other) in (mcp, redis, own) and loop.take_refused(other) is None
        loop.give(uid, [])  # a dropped Redis: taken back
        loop.close_port(proxy)
        again = _probe(uid, targets[:3], udp=mcp)
        assert [again[f"127.0.0.1 {p}"] for p in (mcp, proxy, redis)] == [errno.EPERM] * 3, again
        assert loop.given(uid) == set()
    finally:
        for s in servers:
            s.close()


def test_a_remote_destination_is_not_judged_by_a_local_listener_on_all_addresses(guards) -> None:
    """A listener on 0.0.0.0:N matches any destination address in the kernel's lookup: a connect() to a remote
    host's port N (git over ssh while sshd listens here) is the egress table's business, never refused here."""
    binds, _ = guards
    uid = _free_uid()
    binds.mark(uid)
    server = socket.create_server(("0.0.0.0", 0))
    try:
        port = server.getsockname()[1]
        got = _probe(uid, [("127.0.0.1", port)], udp=port, pending=[("198.51.100.7", port)])
        assert got[f"127.0.0.1 {port}"] == errno.EPERM, got
        assert got[f"pending 198.51.100.7 {port}"] != errno.EPERM, got  # EINPROGRESS (or unreachable)
    finally:
        server.close()


def test_the_hooks_go_with_their_guard_and_are_off_when_asked(monkeypatch) -> None:
    from inkmcp.providers.compute.local import cgroup_bpf as cb

    root = cb.cgroup2_root()
    assert root is not None
    binds = BindGuard.open()
    try:
        loop = LoopbackGuard.open(binds)
        ids = set(loop.program_ids)
        types = (cb.ATTACH_INET4_CONNECT, cb.ATTACH_INET6_CONNECT, cb.ATTACH_INET4_POST_BIND,
                 cb.ATTACH_INET6_POST_BIND, cb.ATTACH_UDP4_SENDMSG, cb.ATTACH_UDP6_SENDMSG)
        assert ids <= {i for t in types for i in cb.attached(root, t)}
        loop.close()
        assert not ids & {i for t in types for i in cb.attached(root, t)}
        monkeypatch.setenv("INKMCP_LOOPBACK_GUARD", "0")
        assert loopguard.open_guard(binds) is None
    finally:
        binds.close()
    assert loopguard.open_guard(None) is None


def test_the_default_mode_opens_other_listeners_but_inkmcps_own_ports(guards) -> None:
    """INKMCP_LOOPBACK_GUARD=on (the default): a listener of no tenant (the operator's package mirror) is open,
    InkMCP's own ports (MCP, the slow path, Redis instances) are not, but a project's own Redis is given back."""
    binds, loop = guards
    uid = _free_uid()
    binds.mark(uid)
    servers = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    try:
        mirror, mcp, redis = (s.getsockname()[1] for s in servers)
        loop.open_others()
        loop.close_ports([mcp, redis])
        loop.give(uid, [redis])
        got = _probe(uid, [("127.0.0.1", p) for p in (mirror, mcp, redis)], udp=mcp)
        assert [got[f"127.0.0.1 {p}"] for p in (mirror, mcp, redis)] == [0, errno.EPERM, 0], got
        assert loop.take_refused(uid) == mcp
        loop.open_others(False)  # strict
        got = _probe(uid, [("127.0.0.1", mirror)], udp=mcp)
        assert got[f"127.0.0.1 {mirror}"] == errno.EPERM, got
    finally:
        for s in servers:
            s.close()


def test_mode_reads_the_setting(monkeypatch) -> None:
    for value, want in (("", "on"), ("1", "on"), ("on", "on"), ("strict", "strict"), ("0", "off"), ("off", "off")):
        monkeypatch.setenv("INKMCP_LOOPBACK_GUARD", value)
        assert loopguard.mode() == want, value


def test_doctor_rows_say_whether_the_serving_inkmcps_guards_are_attached(guards, tmp_path: Path) -> None:
    """`inkmcp doctor` reads the program ids `serve` wrote (compute/guards.json) and checks each is still linked to
    the cgroup2 root: ok while they are, fail once they are gone or the kernel refused them, warn when turned off,
    not serving, or no state was written."""
    from inkmcp.doctor import DoctorReport, Status
    from inkmcp.doctor_local import check_port_guards
    from inkmcp.settings import Settings

    binds, loop = guards
    settings = Settings(data_dir=tmp_path)
    (tmp_path / "compute").mkdir()
    state = tmp_path / "compute" / "guards.json"

    def rows(serving: bool = True) -> dict[str, tuple[Status, str]]:
        report = DoctorReport()
        check_port_guards(report, settings, serving=serving)
        return {c.name: (c.status, c.detail) for c in report.checks}

    state.write_text(json.dumps({"bind": {"programs": list(binds.program_ids), "why": ""},
                                 "loopback": {"programs": list(loop.program_ids), "mode": "on", "why": ""}}))
    got = rows()
    assert got["bind guard"][0] == Status.ok and got["loopback guard"][0] == Status.ok, got
    assert "MCP port" in got["loopback guard"][1] and "strict" in got["loopback guard"][1], got
    state.write_text(json.dumps({"bind": {"programs": [], "why": "INKMCP_BIND_GUARD=0"},
                                 "loopback": {"programs": [2**31 - 1], "mode": "on", "why": ""}}))
    got = rows()
    assert got["bind guard"][0] == Status.warn and "OFF (INKMCP_BIND_GUARD=0)" in got["bind guard"][1], got
    assert got["loopback guard"][0] == Status.fail and "not attached" in got["loopback guard"][1], got
    state.unlink()  # an older serve, or not the local provider: said, not failed
    assert {s for s, _ in rows().values()} == {Status.warn}
    assert {s for s, _ in rows(serving=False).values()} == {Status.warn}


# --- redteam4: UDP. A tenant's datagram listener (its $PORT on [::], and a port-0 one) writes each datagram it gets.
UDP_LISTENER = r"""
import socket, sys, threading
seen = open(sys.argv[2], "a", buffering=1)
def serve(s, name):
    while True:
        data, peer = s.recvfrom(512)
        seen.write(f"{name} {data.decode(errors='replace')}\n")
a = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
a.bind(("::", int(sys.argv[1])))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
b.bind(("127.0.0.1", 0))
for s, name in ((a, "app"), (b, "worker")):
    threading.Thread(target=serve, args=(s, name), daemon=True).start()
print(b.getsockname()[1], flush=True)
threading.Event().wait()
"""

# sendto() each target from an unbound socket, and send() on a socket connect()ed to it: errno each (0: sent).
UDP_PROBE = r"""
import json, socket, sys

def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET

def sendto(host, port):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        s.sendto(b"sendto from " + sys.argv[2].encode(), (host, port))
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()

def connected(host, port):
    s = socket.socket(family(host), socket.SOCK_DGRAM)
    try:
        s.connect((host, port))
        s.send(b"send from " + sys.argv[2].encode())
        return 0
    except OSError as e:
        return e.errno or -1
    finally:
        s.close()

out = {}
for host, port in json.loads(sys.argv[1]):
    out[f"sendto {host} {port}"] = sendto(host, port)
    out[f"connect {host} {port}"] = connected(host, port)
print(json.dumps(out))
"""


def _udp_probe(uid: int, targets: list[tuple[str, int]], who: str) -> dict:
    argv = [*_as(uid), PY, "-c", UDP_PROBE, json.dumps(targets), who]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True).stdout)


def test_another_tenants_datagram_listeners_are_refused(guards, seen: Path) -> None:
    """UDP was left open (the guard judged stream sockets only): any tenant's code sent datagrams to another
    tenant's UDP listener on loopback or the host's addresses (a metrics or syslog collector, a QUIC or game
    server, anything that trusts 127.0.0.1). Now a datagram to a listener another project bound is refused with
    EPERM, sent to an address or on a connected socket; its own, root's and the open ports' are not. Read from the
    victim's side: it got only its own and root's datagrams."""
    binds, loop = guards
    victim, attacker = _free_uid(), _free_uid(1)
    app = free_port()
    binds.grant(victim, app)
    binds.grant(attacker, free_port())
    seen.touch()
    os.chown(seen, victim, victim)
    proc = subprocess.Popen([*_as(victim), PY, "-c", UDP_LISTENER, str(app), str(seen)], stdout=subprocess.PIPE,
                            text=True)
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a root listener on a port open to every tenant
    mcp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # ... and one on a port closed to them
    try:
        assert proc.stdout is not None
        worker = int(proc.stdout.readline())
        dns.bind(("127.0.0.1", 0))
        mcp.bind(("127.0.0.1", 0))
        loop.open_ports([dns.getsockname()[1]])
        loop.close_ports([mcp.getsockname()[1]])
        targets = [("127.0.0.1", app), ("::1", app), ("::ffff:127.0.0.1", app), ("127.0.0.1", worker)]
        targets += [(a, app) for a in _host_addresses()]
        got = _udp_probe(attacker, targets, "mallory")
        assert set(got.values()) == {errno.EPERM}, got
        roots = _udp_probe(attacker, [("127.0.0.1", dns.getsockname()[1]), ("127.0.0.1", mcp.getsockname()[1])],
                           "mallory")
        assert list(roots.values()) == [0, 0, errno.EPERM, errno.EPERM], roots
        assert loop.take_refused(attacker) is not None
        # its own processes and an unmarked uid (root's, nginx's) still reach it
        for uid, who in ((victim, "alice"), (_free_uid(2), "root")):
            mine = _udp_probe(uid, [("127.0.0.1", app), ("127.0.0.1", worker)], who)
            assert set(mine.values()) == {0}, (who, mine)
        deadline = time.monotonic() + 10
        while len(seen.read_text().splitlines()) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        lines = seen.read_text().splitlines()
        assert not [line for line in lines if "mallory" in line], lines
        assert len(lines) == 8, lines
    finally:
        proc.kill()
        proc.wait(10)
        dns.close()
        mcp.close()
# --- end
