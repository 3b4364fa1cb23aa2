"""Tenant egress on the local provider (egress.py): the attack from the tenant's side, with the kernel's real rules.

A deployed app (the provider's real release path: its project user, its cgroup, the inkspawn sandbox) is asked over
HTTP to open connections; listeners this test owns stand where an attacker aims: the cloud metadata address and a
private address of this host (IPv4 and IPv6, TCP and UDP), put on the host end of a veth the test makes (this
kernel has no dummy interfaces). Every refused attempt must fail at once and the listener must have seen nothing,
while the same connection from the test (root) gets through. The app still reaches loopback (where its database,
Redis and the proxy are), the host's resolver on port 53 (a private address on this machine), and a public-like
address: one in a network namespace behind that veth, since an address on an interface here would be one of this
host's own addresses, which the policy refuses by design.

The table is machine-wide and this file switches it (allow-list, off): those tests hold the machine's egress lock
(`egress.exclusive`), so another worker's provider start waits instead of putting the default back in the middle.
A start with the default policy while the default is in force changes nothing but the uid set, so the other tests
need no lock. (The file is also in tests/conftest.py SERIAL, from before the lock; it would run safely beside others.)
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.providers.compute.base import LogScope
from inkmcp.providers.compute.local import egress
from inkmcp.providers.compute.local.users import project_user_name
from inkmcp.settings import TenantEgressSettings, parse_egress_allow
from tests.hardening.conftest import stop_pid
from tests.local.conftest import PY, Events, get, key_for, no_record, request_for, web_plan
from tests.requirements import require

NETNS = "inkeg-pub"
VETH_HOST, VETH_NS = "inkegh0", "inkegn0"
METADATA4, METADATA6 = "169.254.169.254", "fd00:ec2::254"
PRIVATE4, PRIVATE6 = "10.199.77.1", "fd00:199::1"
PUBLIC4, PUBLIC6 = "198.51.100.2", "2001:db8:ee::2"  # documentation ranges: outside every refused range
REMOTE4, REMOTE6 = "10.199.88.2", "fd00:199:88::2"  # private hosts elsewhere on the network (in the namespace)
HOST_PUBLIC4 = "198.51.100.1"  # the veth's host end: one of this host's own addresses, not a special one

PROBE_APP = r"""
import errno, json, os, random, socket, struct, time, http.server, urllib.parse

def probe(host, port, proto):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    t = time.monotonic()
    try:
        s.connect((host, port))
        if proto == "tcp":
            data = s.recv(64)
        elif proto == "dns":  # one real query (pypi.org, A) to a resolver
            qid = random.randrange(65536)
            s.send(struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x04pypi\x03org\x00\x00\x01\x00\x01")
            data = s.recv(512)
            data = b"dns-answer" if struct.unpack(">H", data[:2])[0] == qid else b"wrong id"
        else:
            s.send(b"ping")
            data = s.recv(64)
        return {"ok": True, "data": data.decode(), "t": time.monotonic() - t}
    except OSError as e:
        return {"ok": False, "err": errno.errorcode.get(e.errno, str(e)), "t": time.monotonic() - t}
    finally:
        s.close()

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/probe":
            targets = json.loads(urllib.parse.parse_qs(url.query)["t"][0])
            body = json.dumps([probe(*t) for t in targets]).encode()
        else:
            body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""

# The release command runs before the app, through the same path: it reports what the metadata address answered.
RELEASE_PROBE = r"""
import errno, socket, sys, time
s = socket.socket(); s.settimeout(3); t = time.monotonic()
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("release probe: reached", flush=True)
except OSError as e:
    print(f"release probe: {errno.errorcode.get(e.errno, e)} after {time.monotonic() - t:.3f}s", flush=True)
"""

NS_LISTENER = r"""
import socket, sys, threading
log = open(sys.argv[1], "a", buffering=1)  # one line per connection or datagram: who was reached
def tcp(s, addr):
    while True:
        c, _ = s.accept(); log.write(f"tcp {addr}\n"); c.sendall(b"public"); c.close()
def udp(s, addr):
    while True:
        _, peer = s.recvfrom(64); log.write(f"udp {addr}\n"); s.sendto(b"public", peer)
for addr in sys.argv[3:]:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    t = socket.socket(fam, socket.SOCK_STREAM); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, int(sys.argv[2]))); t.listen(16)
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((addr, int(sys.argv[2])))
    threading.Thread(target=tcp, args=(t, addr), daemon=True).start()
    threading.Thread(target=udp, args=(u, addr), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=15, check=False)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


class Listener:
    """TCP and UDP on one address and port, owned by the test: records every peer that reached it."""

    def __init__(self, addr: str, port: int = 0) -> None:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.tcp = socket.socket(fam, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.tcp.bind((addr, port))
        self.tcp.listen(16)
        self.addr, self.port = addr, self.tcp.getsockname()[1]
        self.udp = socket.socket(fam, socket.SOCK_DGRAM)
        self.udp.bind((addr, self.port))
        self.seen: list[tuple[str, str]] = []
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._datagrams, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, peer = self.tcp.accept()
            except OSError:
                return
            self.seen.append(("tcp", peer[0]))
            conn.sendall(b"listener")
            conn.close()

    def _datagrams(self) -> None:
        while True:
            try:
                _, peer = self.udp.recvfrom(64)
            except OSError:
                return
            if not peer:  # the socket was shut down
                return
            self.seen.append(("udp", peer[0]))
            self.udp.sendto(b"listener", peer)

    def close(self) -> None:
        for s in (self.tcp, self.udp):
            with_shutdown(s)


def with_shutdown(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


def _remove_topology() -> None:
    sh("ip", "link", "del", VETH_HOST, check=False)
    sh("ip", "netns", "del", NETNS, check=False)


@pytest.fixture
def topology() -> Iterator[dict[str, Listener | int]]:
    """The attack targets as this host's addresses, loopback listeners, and a public-like host in a namespace."""
    require("root", os.geteuid() == 0, "the kernel firewall and per-project users need root")
    require("netns", egress.nft_path() is not None and shutil.which("ip") is not None,
            "nft (Debian's nftables, scripts/system-deps.sh) and ip (iproute2) are needed")
    _remove_topology()  # a crashed earlier run's, by name
    listeners: list[Listener] = []
    pid = None
    reached: Path | None = None
    try:
        sh("ip", "netns", "add", NETNS)
        sh("ip", "link", "add", VETH_HOST, "type", "veth", "peer", "name", VETH_NS, "netns", NETNS)
        for addr in (METADATA4, PRIVATE4):
            sh("ip", "addr", "add", f"{addr}/32", "dev", VETH_HOST)
        for addr in (METADATA6, PRIVATE6):
            sh("ip", "addr", "add", f"{addr}/128", "dev", VETH_HOST, "nodad")
        sh("ip", "addr", "add", "198.51.100.1/30", "dev", VETH_HOST)
        sh("ip", "addr", "add", "2001:db8:ee::1/64", "dev", VETH_HOST, "nodad")
        sh("ip", "link", "set", VETH_HOST, "up")
        sh("ip", "-n", NETNS, "addr", "add", f"{PUBLIC4}/30", "dev", VETH_NS)
        sh("ip", "-n", NETNS, "addr", "add", f"{PUBLIC6}/64", "dev", VETH_NS, "nodad")
        sh("ip", "-n", NETNS, "link", "set", VETH_NS, "up")
        sh("ip", "-n", NETNS, "link", "set", "lo", "up")
        sh("ip", "-n", NETNS, "addr", "add", f"{REMOTE4}/32", "dev", "lo")
        sh("ip", "-n", NETNS, "addr", "add", f"{REMOTE6}/128", "dev", "lo")
        sh("ip", "route", "add", f"{REMOTE4}/32", "via", PUBLIC4, "src", HOST_PUBLIC4)
        sh("ip", "-6", "route", "add", f"{REMOTE6}/128", "via", PUBLIC6, "src", "2001:db8:ee::1")
        named = {name: Listener(addr) for name, addr in (
            ("metadata4", METADATA4), ("metadata6", METADATA6), ("private4", PRIVATE4), ("private6", PRIVATE6),
            ("loop4", "127.0.0.1"), ("loop6", "::1"))}
        listeners.extend(named.values())
        named["private4_other"] = Listener(PRIVATE4)  # a second port on the private address (allow-list: only one)
        named["host_https"] = Listener(HOST_PUBLIC4, 443)  # this host's own public address: its HTTPS port is open
        named["host_other"] = Listener(HOST_PUBLIC4)  # ... and nothing else of it
        listeners.extend((named["private4_other"], named["host_https"], named["host_other"]))
        public_port = named["loop4"].port  # any port: the namespace is empty
        reached = Path(tempfile.mkdtemp(prefix="inkmcp-egress-")) / "reached"
        reached.touch()
        argv = [str(reached), str(public_port), PUBLIC4, PUBLIC6, REMOTE4, REMOTE6]
        proc = subprocess.Popen(["ip", "netns", "exec", NETNS, sys.executable, "-c", NS_LISTENER, *argv],
                                stdout=subprocess.PIPE, text=True)
        pid = proc.pid
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield {**named, "public_port": public_port, "reached": reached}
    finally:
        if reached is not None:
            shutil.rmtree(reached.parent, ignore_errors=True)
        for listener in listeners:
            listener.close()
        if pid is not None:
            stop_pid(pid)
        _remove_topology()


async def deploy_probe(provider, project_ids, checkouts, *, release_target: tuple[str, int] | None = None):
    key = key_for(project_ids())
    files = {"app.py": PROBE_APP, "release_probe.py": RELEASE_PROBE}
    release = f"{PY} release_probe.py {release_target[0]} {release_target[1]}" if release_target else None
    await provider.release(request_for(key, checkouts(files), web_plan(release_command=release)), Events(), no_record)
    return key


async def probe(provider, key, targets: list[tuple[str, int, str]]) -> list[dict]:
    resp = await get(provider, key, "/probe?t=" + json.dumps(targets))
    assert resp.status_code == 200, resp.text
    return resp.json()


def root_reaches(addr: str, port: int, proto: str) -> bool:
    """The same connection from the test (root, not a tenant): proof the listener was there to be reached."""
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET,
                      socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.settimeout(3)
    try:
        s.connect((addr, port))
        if proto == "udp":
            s.send(b"ping")
        return s.recv(64) in (b"listener", b"public")
    finally:
        s.close()


def refused_fast(result: dict) -> bool:
    return result["ok"] is False and result["err"] in ("ECONNREFUSED", "EPERM") and result["t"] < 0.5


def chain_rules(table: str = egress.TABLE) -> list[str]:
    items = json.loads(sh("nft", "-j", "list", "table", "inet", table).stdout)["nftables"]
    return [json.dumps(i["rule"]["expr"], sort_keys=True) for i in items if "rule" in i]


async def wait_for_line(provider, key, needle: str, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = await provider.logs(key, LogScope.runtime, deployment_id=None, tail=200)
        if any(needle in line for line in lines) or time.monotonic() > deadline:
            return lines
        await asyncio.sleep(0.3)


async def test_tenant_cannot_reach_metadata_or_private_addresses_but_loopback_dns_and_public_work(
    topology, make_provider, checkouts, project_ids, monkeypatch
):
    monkeypatch.delenv("INKMCP_TENANT_EGRESS", raising=False)
    monkeypatch.delenv("INKMCP_TENANT_EGRESS_ALLOW", raising=False)
    provider = await make_provider()
    assert egress.state().active
    meta4 = topology["metadata4"]
    key = await deploy_probe(provider, project_ids, checkouts, release_target=(METADATA4, meta4.port))
    uid = pwd.getpwnam(project_user_name(key.project_id)).pw_uid
    assert uid in {int(e) for e in _set_elements("tenants")}, "the new project user is in the tenant set at once"

    attacks = [(topology[n].addr, topology[n].port, proto)
               for n in ("metadata4", "metadata6", "private4", "private6") for proto in ("tcp", "udp")]
    pub = topology["public_port"]
    attacks += [(REMOTE4, pub, "tcp"), (REMOTE4, pub, "udp"), (REMOTE6, pub, "tcp"), (REMOTE6, pub, "udp")]
    attacks += [(f"::ffff:{PRIVATE4}", topology["private4"].port, "tcp"),  # IPv4-mapped, from an IPv6 socket
                (HOST_PUBLIC4, topology["host_other"].port, "tcp"), (HOST_PUBLIC4, topology["host_other"].port, "udp")]
    results = await probe(provider, key, attacks)
    for target, result in zip(attacks, results, strict=True):
        assert refused_fast(result), (target, result)
    for n in ("metadata4", "metadata6", "private4", "private6", "host_other"):
        assert topology[n].seen == [], f"{n} was reached by the tenant: {topology[n].seen}"
    assert topology["reached"].read_text() == "", "a private host elsewhere on the network was reached"
    # The release command (same user, same path) was refused too, and said so in the build log.
    build = await provider.logs(key, LogScope.build, deployment_id=None, tail=100)
    assert any("release probe: ECONNREFUSED after 0.0" in line for line in build), build

    # The listeners were there: root (InkMCP, the test) reaches every one of them.
    for addr, port, proto in attacks:
        assert root_reaches(addr, port, proto), (addr, port, proto)
    assert sorted(topology["reached"].read_text().split("\n")[:-1]) == sorted(
        f"{proto} {addr}" for addr in (REMOTE4, REMOTE6) for proto in ("tcp", "udp"))

    # What the app legitimately uses keeps working: loopback (database, Redis, proxy), its resolver, the public net.
    resolvers = egress.host_resolvers()
    loop4, loop6 = topology["loop4"], topology["loop6"]
    allowed = [(loop4.addr, loop4.port, "tcp"), (loop6.addr, loop6.port, "tcp"), (loop4.addr, loop4.port, "udp"),
               (PUBLIC4, pub, "tcp"), (PUBLIC4, pub, "udp"), (PUBLIC6, pub, "tcp"), (PUBLIC6, pub, "udp")]
    allowed += [(str(r), 53, "dns") for r in resolvers]
    allowed.append((HOST_PUBLIC4, 443, "tcp"))  # an app calling a public URL that resolves to this host
    results = await probe(provider, key, allowed)
    for target, result in zip(allowed, results, strict=True):
        assert result["ok"], (target, result)
        assert result["data"] in ("listener", "public", "dns-answer"), (target, result)
    # Port 53 is open to the resolvers only, not to any private address.
    assert refused_fast((await probe(provider, key, [(PRIVATE4, 53, "udp")]))[0])

    # The service's log says why, once per destination, with the setting that opens it.
    needle = f"egress to {PRIVATE4}:{topology['private4'].port}/tcp is blocked by the platform"
    lines = await wait_for_line(provider, key, needle)
    hits = [line for line in lines if needle in line]
    assert len(hits) == 1, lines
    assert f"INKMCP_TENANT_EGRESS_ALLOW={PRIVATE4}:{topology['private4'].port}" in hits[0]
    assert hits[0].startswith("web | [inkmcp] ")
    await probe(provider, key, attacks[:2])  # again: no second line
    await asyncio.sleep(egress.POLL_SECONDS * 2)
    lines = await provider.logs(key, LogScope.runtime, deployment_id=None, tail=200)
    assert len([line for line in lines if needle in line]) == 1
    assert any(f"egress to [{METADATA6}]:" in line for line in lines)

    # Another tool flushes the table (`nft flush ruleset`, a firewall reload): the running provider puts it back.
    egress.remove()
    deadline = time.monotonic() + egress.POLL_SECONDS * 3
    while not egress.state().active and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert egress.state().active
    assert refused_fast((await probe(provider, key, attacks[:1]))[0])


def _set_elements(name: str, table: str = egress.TABLE) -> list[str]:
    items = json.loads(sh("nft", "-j", "list", "set", "inet", table, name).stdout)["nftables"]
    return [str(e) for i in items if "set" in i for e in i["set"].get("elem", [])]


async def test_rules_survive_restart_once_allow_list_opens_exactly_one_port_and_off_removes_them(
    topology, make_provider, checkouts, project_ids, monkeypatch
):
    with egress.exclusive():  # other processes' starts wait: they would put the default policy back
        monkeypatch.delenv("INKMCP_TENANT_EGRESS", raising=False)
        monkeypatch.delenv("INKMCP_TENANT_EGRESS_ALLOW", raising=False)
        private, other = topology["private4"], topology["private4_other"]
        first = await make_provider()
        rules = chain_rules()
        key = await deploy_probe(first, project_ids, checkouts)
        uid = pwd.getpwnam(project_user_name(key.project_id)).pw_uid
        await first.close()

        # InkMCP stopped: the kernel still refuses the project's user (a daemon that outlived it stays confined).
        assert egress.state().active
        outside = subprocess.run(
            ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", PY, "-c",
             f"import socket; s = socket.socket(); s.settimeout(3); s.connect(('{PRIVATE4}', {private.port}))"],
            capture_output=True, text=True, timeout=10, check=False)
        assert "ConnectionRefusedError" in outside.stderr, outside.stderr
        assert private.seen == []

        # A restart converges to the same table: same rules, nothing duplicated.
        await (await make_provider()).close()
        assert chain_rules() == rules

        # The operator opens one private port: exactly that one (TCP and UDP), nothing next to it.
        monkeypatch.setenv("INKMCP_TENANT_EGRESS_ALLOW", f"{PRIVATE4}:{private.port}")
        opened = await make_provider()
        key = await deploy_probe(opened, project_ids, checkouts)
        meta4 = topology["metadata4"]
        results = await probe(opened, key, [(PRIVATE4, private.port, "tcp"), (PRIVATE4, private.port, "udp"),
                                            (PRIVATE4, other.port, "tcp"), (METADATA4, meta4.port, "tcp")])
        assert results[0]["ok"] and results[0]["data"] == "listener", results
        assert results[1]["ok"] and results[1]["data"] == "listener", results
        assert refused_fast(results[2]) and refused_fast(results[3]), results
        assert other.seen == [] and topology["metadata4"].seen == []
        assert len(chain_rules()) == len(rules) + 1
        await opened.close()

        # Off: the table goes (the next start of a provider with the default puts it back).
        monkeypatch.setenv("INKMCP_TENANT_EGRESS", "off")
        unrestricted = await make_provider()
        assert not egress.state().active
        assert sh("nft", "list", "table", "inet", egress.TABLE, check=False).returncode != 0
        key = await deploy_probe(unrestricted, project_ids, checkouts)
        results = await probe(unrestricted, key, [(PRIVATE4, other.port, "tcp")])
        assert results[0]["ok"], results  # proof that "off" means no restriction, not a leftover rule


def test_allow_list_entries_parse_or_say_what_to_write():
    assert str(parse_egress_allow("10.0.1.13:5432")) == "10.0.1.13/32:5432"
    assert str(parse_egress_allow("10.0.2.0/24")) == "10.0.2.0/24"
    assert str(parse_egress_allow("[fd00:1::5]:6379")) == "[fd00:1::5/128]:6379"
    for bad, says in (("169.254.169.254:80", "never opened"), ("fe80::1", "never opened"),
                      ("db.internal:5432", "not an IP address"), ("0.0.0.0/0", "INKMCP_TENANT_EGRESS=off"),
                      ("10.0.0.1:99999", "outside 1..65535"), ("10.0.0.1:x", "not a port")):
        with pytest.raises(ValueError, match=says):
            parse_egress_allow(bad)
    settings = TenantEgressSettings(tenant_egress_allow="10.0.1.13:5432, 10.0.2.0/24", tenant_egress_smtp_ports="")
    assert settings.tenant_egress_allow == ["10.0.1.13/32:5432", "10.0.2.0/24"]
    assert settings.tenant_egress_smtp_ports == []


def test_refused_ranges_cover_the_run_servers_and_the_rendered_rules_name_them():
    from inkmcp.nodes.render import BLOCKED_RANGES

    assert set(BLOCKED_RANGES) <= set(egress.BLOCKED_V4)
    text = egress.render(TenantEgressSettings(tenant_egress_allow="10.0.1.13:5432"), [1234, 1234, 99],
                         resolvers=[], endpoints=[])
    assert "elements = { 99, 1234 }" in text
    assert "ip daddr 10.0.1.13/32 meta l4proto { tcp, udp } th dport 5432 accept" in text
    assert text.index("10.0.1.13/32") < text.index("goto deny")  # the allow-list comes before every refusal
    assert "fd00:ec2::254" not in text and "fc00::/7" in text  # AWS's IPv6 metadata lies in the ULA range


def test_doctor_says_whether_the_policy_is_active(monkeypatch):
    from inkmcp.doctor import DoctorReport, Status
    from inkmcp.doctor_local import check_tenant_egress

    require("root", os.geteuid() == 0, "the kernel firewall needs root")
    require("netns", egress.nft_path() is not None, "nft (Debian's nftables, scripts/system-deps.sh) is needed")
    monkeypatch.delenv("INKMCP_TENANT_EGRESS", raising=False)

    def row(serving: bool) -> tuple[Status, str]:
        report = DoctorReport()
        check_tenant_egress(report, serving=serving)
        (check,) = report.checks
        return check.status, check.detail

    with egress.exclusive():  # other processes' starts wait: they would put the table back
        egress.apply(TenantEgressSettings())
        status, detail = row(serving=True)
        assert status == Status.ok and "project users refused private addresses" in detail, detail
        egress.remove()
        status, detail = row(serving=True)
        assert status == Status.fail and "metadata" in detail, detail
        assert row(serving=False)[0] == Status.warn  # not serving yet: the next start applies it
        monkeypatch.setenv("INKMCP_TENANT_EGRESS", "off")
        status, detail = row(serving=True)
        assert status == Status.warn and "INKMCP_TENANT_EGRESS=off" in detail
        egress.apply(TenantEgressSettings(tenant_egress="block-private"))  # the default, as the next start would


def test_apps_keep_a_private_database_or_redis_the_operator_configured(monkeypatch):
    """INKMCP_TENANT_DATABASE_URL / INKMCP_REDIS_URL on another machine of the private network: InkMCP hands apps
    that host in DATABASE_URL / REDIS_URL, so it is opened (that host and port only); a public one needs nothing."""
    monkeypatch.setenv("INKMCP_TENANT_DATABASE_URL", "postgresql://admin:pw@10.0.3.4:6432/postgres")
    monkeypatch.setenv("INKMCP_REDIS_URL", "redis://admin:pw@198.51.100.7:6380")
    assert [str(e) for e in egress.platform_endpoints()] == ["10.0.3.4/32:6432"]
    text = egress.render(TenantEgressSettings(), [], resolvers=[])
    assert "ip daddr 10.0.3.4/32 meta l4proto { tcp, udp } th dport 6432 accept" in text


def test_a_deleted_project_users_uid_leaves_the_set():
    """A uid in the set that is no project user any more (userdel'd; a package's system user may get it next) is
    dropped at the next start's sync; a new project user's uid is added at once by track_uid."""
    require("root", os.geteuid() == 0, "the kernel firewall needs root")
    require("netns", egress.nft_path() is not None, "nft (Debian's nftables, scripts/system-deps.sh) is needed")
    stale = 64998
    assert stale not in egress.tenant_uids()
    with egress.exclusive():
        egress.apply(TenantEgressSettings(tenant_egress="block-private"))
        egress.track_uid(stale)
        assert stale in egress.covered_uids()
        users = set(egress.tenant_uids())
        egress.apply(TenantEgressSettings(tenant_egress="block-private"))  # same policy: only the set is synced
        covered = set(egress.covered_uids())
        assert stale not in covered
        assert users - covered <= users - set(egress.tenant_uids())  # every project user covered (bar one deleted)
