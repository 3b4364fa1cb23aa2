"""The kernel firewall: the rendered DOCKER-USER rules, loaded by the apply script in a network namespace
that stands in for a Docker host, decide real TCP connections from a "container" namespace.

Topology (all addresses exist only inside the test namespaces):
  container ns  172.30.9.2/24 --veth-- br-test 172.30.9.1 (host ns: DOCKER-USER hooked from FORWARD)
  host ns --veth /30 from 192.0.2.0/24-- meta ns  169.254.169.254  (tcp 80)
                                    -- smtp ns  198.51.100.25    (tcp 25, 587, 80)
                                    -- peer ns  10.20.0.5 (tcp 5432, 80) + resolver 10.20.0.53 (tcp 53)
                                    -- web ns   203.0.113.80     (tcp 80, 443)
Every probed port has a listener, so a refused connection is the firewall's doing, not a closed port.
"""

from __future__ import annotations

import contextlib
import errno
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from fabric import Connection

from inkmcp.nodes import HostParams, render_host_files
from inkmcp.nodes.apply import apply_host, connect
from inkmcp.nodes.check import check_host
from inkmcp.nodes.render import SCRIPTS_DIR
from tests.hardening.conftest import free_port, in_netns, make_keys, need_netadmin, sshd_config, start_sshd, stop_pid
from tests.netns import link_standin, sh

TARGETS: dict[str, tuple[list[str], list[int]]] = {
    "meta": (["169.254.169.254"], [80]),
    "smtp": (["198.51.100.25"], [25, 587, 80]),
    "peer": (["10.20.0.5", "10.20.0.53", "10.20.0.13"], [5432, 80, 53]),
    "web": (["203.0.113.80"], [80, 443]),
    # Private ranges beyond the configured private_cidrs: RFC 1918, CGNAT, link-local.
    "lan": (["192.168.7.7", "172.20.7.7", "100.64.7.7", "169.254.7.7", "10.99.0.1"], [80]),
}
# The allow-listed private endpoint (egress_allow) and the host's own listeners (container -> host).
ALLOW = "10.20.0.13:5432"
HOST_PORTS = [2222, 443]
PROBES: list[tuple[str, int, str]] = [
    ("203.0.113.80", 80, "open"),  # public web: the internet stays reachable
    ("203.0.113.80", 443, "open"),
    ("198.51.100.25", 80, "open"),  # the mail host itself is reachable, only mail ports are not
    ("10.20.0.53", 53, "open"),  # resolver inside a private range: DNS allowed before the private reject
    ("169.254.169.254", 80, "refused"),  # metadata service
    ("198.51.100.25", 25, "refused"),  # SMTP
    ("198.51.100.25", 587, "refused"),  # submission
    ("10.20.0.5", 5432, "refused"),  # private peer (a platform database)
    ("10.20.0.5", 80, "refused"),
    ("10.20.0.13", 5432, "open"),  # allow-listed private endpoint
    ("10.20.0.13", 80, "refused"),  # ... only that port
    ("192.168.7.7", 80, "refused"),  # RFC 1918 outside private_cidrs
    ("172.20.7.7", 80, "refused"),
    ("10.99.0.1", 80, "refused"),
    ("100.64.7.7", 80, "refused"),  # CGNAT
    ("169.254.7.7", 80, "refused"),  # link-local beyond the metadata IP
    ("172.30.9.1", 2222, "refused"),  # container -> host: bridge gateway (an sshd-like listener)
    ("192.0.2.1", 2222, "refused"),  # container -> host: its uplink address
    ("172.30.9.1", 443, "open"),  # hairpin to the node's own proxy stays
    ("172.30.9.3", 8080, "open"),  # same bridge: proxy -> app untouched
    ("fd00:9::1", 2222, "refused"),  # IPv6 container -> host (ULA on the bridge)
    ("fd00:9::3", 8080, "open"),  # IPv6 same bridge untouched
]


@dataclass
class Topology:
    tag: str
    ns: dict[str, str]
    listeners: list[socket.socket] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.ns["host"]

    def in_host(self, *args: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.host, *args, check=check)

    def save(self) -> str:
        """The filter table without counters or timestamps, for before/after comparison."""
        text = self.in_host("iptables-save", "-t", "filter")
        return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#"))


def probe(ns: str, addr: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    def attempt() -> str:
        with socket.socket(family) as s:
            s.settimeout(0.5)
            code = s.connect_ex((addr, port))
        if code == 0:
            return "open"
        if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES):
            return "refused"
        return "timeout" if code in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINPROGRESS) else f"errno {code}"

    return in_netns(ns, attempt)


def _accept_forever(srv: socket.socket) -> None:
    while True:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        conn.close()


@pytest.fixture
def topo() -> Iterator[Topology]:
    need_netadmin()
    tag = uuid.uuid4().hex[:5]
    ns = {name: f"ink{tag}{name}" for name in ("host", "ctr", "ctr2", *TARGETS)}
    t = Topology(tag=tag, ns=ns)
    try:
        for name in ns.values():
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        h = ns["host"]
        # The stand-in Docker bridge and one container on it.
        sh("ip", "-n", h, "link", "add", "br-test", "type", "bridge")
        sh("ip", "-n", h, "addr", "add", "172.30.9.1/24", "dev", "br-test")
        sh("ip", "-n", h, "link", "set", "br-test", "up")
        sh("ip", "-n", h, "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", ns["ctr"])
        sh("ip", "-n", h, "link", "set", "vc", "master", "br-test", "up")
        sh("ip", "-n", ns["ctr"], "addr", "add", "172.30.9.2/24", "dev", "eth0")
        sh("ip", "-n", ns["ctr"], "link", "set", "eth0", "up")
        sh("ip", "-n", ns["ctr"], "route", "add", "default", "via", "172.30.9.1")
        # A second "container" on the same bridge (the app behind the proxy), and IPv6 on the bridge.
        sh("ip", "-n", h, "link", "add", "vc2", "type", "veth", "peer", "name", "eth0", "netns", ns["ctr2"])
        sh("ip", "-n", h, "link", "set", "vc2", "master", "br-test", "up")
        sh("ip", "-n", ns["ctr2"], "addr", "add", "172.30.9.3/24", "dev", "eth0")
        sh("ip", "-n", ns["ctr2"], "link", "set", "eth0", "up")
        sh("ip", "-n", h, "addr", "add", "fd00:9::1/64", "dev", "br-test", "nodad")
        sh("ip", "-n", ns["ctr"], "addr", "add", "fd00:9::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", ns["ctr2"], "addr", "add", "fd00:9::3/64", "dev", "eth0", "nodad")
        # One routed /30 link per target, addresses from 192.0.2.0/24 (documentation range).
        for i, (name, (addrs, _ports)) in enumerate(TARGETS.items()):
            link_standin(h, ns[name], name, 4 * i, addrs)
        # What Docker does in the host: forwarding on, FORWARD policy DROP, DOCKER-USER first, then its
        # own accepts for traffic leaving a bridge and replies coming back.
        t.in_host("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        docker_like = "\n".join(
            [
                "*filter",
                ":FORWARD DROP [0:0]",
                ":DOCKER-USER - [0:0]",
                "-A FORWARD -j DOCKER-USER",
                "-A FORWARD -i br-test ! -o br-test -j ACCEPT",
                "-A FORWARD -i br-test -o br-test -j ACCEPT",  # inter-container traffic (icc)
                "-A FORWARD -o br-test -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                "-A DOCKER-USER -j RETURN",
                "COMMIT",
                "",
            ]
        )
        subprocess.run(
            ["ip", "netns", "exec", h, "iptables-restore"], input=docker_like, text=True, check=True, timeout=15
        )
        listeners = [(ns[n], a, p) for n, (addrs, ports) in TARGETS.items() for a in addrs for p in ports]
        listeners += [(h, "::", p) for p in HOST_PORTS]  # dual-stack: every host address, v4 and v6
        listeners += [(ns["ctr2"], "::", 8080)]
        for where, addr, port in listeners:

            def listen(a: str = addr, p: int = port) -> socket.socket:
                s = socket.socket(socket.AF_INET6 if ":" in a else socket.AF_INET)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((a, p))
                s.listen(16)
                return s

            srv = in_netns(where, listen)
            t.listeners.append(srv)
            threading.Thread(target=_accept_forever, args=(srv,), daemon=True).start()
        yield t
    finally:
        for srv in t.listeners:
            srv.close()
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=15)


def rules_params(root: Path, **kw: object) -> HostParams:
    return HostParams(
        root=str(root),
        dns_resolvers=["10.20.0.53"],
        private_cidrs=["10.20.0.0/16"],
        container_interfaces=["docker0", "br-+"],
        egress_allow=[ALLOW],
        **kw,
    )


def write_rules(root: Path) -> Path:
    """Both rendered files side by side (the apply script finds the IPv6 one as RULES_FILE + "6")."""
    files = render_host_files(rules_params(root))
    path = root / "docker-user.rules"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(next(v for k, v in files.items() if k.endswith("docker-user.rules")))
    (root / "docker-user.rules6").write_text(next(v for k, v in files.items() if k.endswith("docker-user.rules6")))
    return path


def test_egress_rules_with_real_tcp_probes(topo: Topology, tmp_path: Path) -> None:
    ctr = topo.ns["ctr"]
    # Without our rules everything answers: the topology works and refusals below are the firewall's.
    assert {(a, p): probe(ctr, a, p) for a, p, _ in PROBES} == {(a, p): "open" for a, p, _ in PROBES}

    rules = write_rules(tmp_path)
    script = str(SCRIPTS_DIR / "inkmcp-docker-user-apply")
    assert topo.in_host("sh", script, str(rules)).strip() == "changed: DOCKER-USER"
    seen = {(a, p): probe(ctr, a, p) for a, p, _ in PROBES}
    assert seen == {(a, p): want for a, p, want in PROBES}

    # Idempotent: a second run reports nothing and leaves the filter table byte-identical.
    before = topo.save()
    assert topo.in_host("sh", script, str(rules)) == ""
    assert topo.save() == before
    # Docker's own hook and rules are untouched; only DOCKER-USER is ours.
    assert "-A FORWARD -j DOCKER-USER" in before and "-A FORWARD -i br-test ! -o br-test -j ACCEPT" in before


def test_apply_rebuilds_a_tampered_chain_atomically(topo: Topology, tmp_path: Path) -> None:
    rules = write_rules(tmp_path)
    script = str(SCRIPTS_DIR / "inkmcp-docker-user-apply")
    topo.in_host("sh", script, str(rules))
    good = topo.save()
    # Someone (or a Docker restart) leaves an accept-all at the top of the chain.
    topo.in_host("iptables", "-w", "5", "-I", "DOCKER-USER", "1", "-j", "ACCEPT")
    assert probe(topo.ns["ctr"], "169.254.169.254", 80) == "open"
    assert topo.in_host("sh", script, str(rules)).strip() == "changed: DOCKER-USER"
    assert topo.save() == good
    assert probe(topo.ns["ctr"], "169.254.169.254", 80) == "refused"
    # A broken rules file fails as a whole and leaves the working chain in place.
    broken = tmp_path / "broken.rules"
    broken.write_text(rules.read_text().replace("-j RETURN", "-j NO-SUCH-TARGET"))
    r = subprocess.run(["ip", "netns", "exec", topo.host, "sh", script, str(broken)], capture_output=True, timeout=15)
    assert r.returncode != 0
    assert topo.save() == good


@contextlib.contextmanager
def ssh_into_host(topo: Topology, tmp_path: Path) -> Iterator[tuple[Connection, HostParams]]:
    """A fabric connection to a real sshd running inside the stand-in host namespace, and the firewall
    params to apply there; the sshd is stopped by pid on exit."""
    host_key, client_key = make_keys(tmp_path)
    port = free_port()
    topo.in_host("ip", "link", "set", "lo", "up")
    server = start_sshd(tmp_path, sshd_config(tmp_path, port, host_key), port, client_key, netns=topo.host)
    try:
        sock = in_netns(topo.host, lambda: socket.create_connection(("127.0.0.1", port), timeout=5))
        c = connect("127.0.0.1", port=port, key_filename=client_key)
        c.connect_kwargs["sock"] = sock  # the TCP connection lives in the host namespace
        with c:
            yield c, rules_params(tmp_path / "root", firewall=True)
    finally:
        stop_pid(server.pid)


def test_ssh_path_with_live_firewall_in_a_namespace(topo: Topology, tmp_path: Path) -> None:
    """fabric over a real sshd that runs inside the host namespace: apply loads the rules there, check
    reports the chain's rules missing after a flush, apply restores them, a second apply is silent."""
    with ssh_into_host(topo, tmp_path) as (c, params):
        drift = check_host(c, params, timeout=10)
        assert any(d.kind == "firewall" and d.detail.startswith("rule missing") for d in drift)
        first = apply_host(c, params, timeout=10)
        assert "DOCKER-USER" in first.changes
        assert check_host(c, params, timeout=10) == []
        assert probe(topo.ns["ctr"], "10.20.0.5", 5432) == "refused"

        topo.in_host("iptables", "-w", "5", "-F", "DOCKER-USER")
        drift = [str(d) for d in check_host(c, params, timeout=10)]
        assert drift and all(d.startswith("firewall: DOCKER-USER: rule missing") for d in drift), drift
        assert apply_host(c, params, timeout=10).changes == ["DOCKER-USER"]
        assert apply_host(c, params, timeout=10).changes == []
        assert probe(topo.ns["ctr"], "10.20.0.5", 5432) == "refused"


def test_input_and_ipv6_jumps_are_moved_back_to_the_top(topo: Topology, tmp_path: Path) -> None:
    """Something inserted ahead of our INPUT/v6 jumps (an accept-all, a second copy) would let container
    traffic reach the host: the next apply puts exactly one jump back at the top, in one transaction."""
    rules = write_rules(tmp_path)
    script = str(SCRIPTS_DIR / "inkmcp-docker-user-apply")
    topo.in_host("sh", script, str(rules))
    good = topo.save(), topo.in_host("ip6tables-save", "-t", "filter")
    assert probe(topo.ns["ctr"], "172.30.9.1", 2222) == "refused"
    assert probe(topo.ns["ctr"], "fd00:9::1", 2222) == "refused"
    topo.in_host("iptables", "-w", "5", "-I", "INPUT", "1", "-j", "ACCEPT")
    topo.in_host("ip6tables", "-w", "5", "-I", "INPUT", "1", "-j", "ACCEPT")
    topo.in_host("ip6tables", "-w", "5", "-A", "INPUT", "-j", "INKMCP-INPUT")  # a stray second copy
    assert probe(topo.ns["ctr"], "172.30.9.1", 2222) == "open"
    assert probe(topo.ns["ctr"], "fd00:9::1", 2222) == "open"
    assert topo.in_host("sh", script, str(rules)).strip() == "changed: DOCKER-USER"
    v4 = topo.in_host("iptables", "-S", "INPUT").splitlines()
    v6 = topo.in_host("ip6tables", "-S", "INPUT").splitlines()
    assert v4[1] == "-A INPUT -j INKMCP-INPUT" and v6[1] == "-A INPUT -j INKMCP-INPUT"
    assert v6.count("-A INPUT -j INKMCP-INPUT") == 1
    assert probe(topo.ns["ctr"], "172.30.9.1", 2222) == "refused"
    assert probe(topo.ns["ctr"], "fd00:9::1", 2222) == "refused"
    assert good[0] != topo.save()  # the operator's ACCEPT stays (not ours), behind our jump


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("10.0.1.0/24:5432", "one host and one TCP port"),
        ("10.0.1.13", "one host and one TCP port"),
        ("169.254.169.254:80", "link-local (metadata service) is never allow-listed"),
        ("203.0.113.5:443", "not a private address"),
        ("10.0.1.13:70000", "less than or equal to 65535"),
    ],
)
def test_egress_allow_rejects_what_it_cannot_mean(entry: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        HostParams(root=str(tmp_path), egress_allow=[entry])


def test_egress_allow_renders_before_every_private_reject(tmp_path: Path) -> None:
    files = render_host_files(
        HostParams(root=str(tmp_path), egress_allow=["10.0.1.13/32:5432", {"ip": "192.168.5.5", "port": 6379}])
    )
    rules = [ln for ln in files[f"{tmp_path}/etc/inkmcp/hardening/docker-user.rules"].splitlines()
             if ln.startswith("-A DOCKER-USER")]
    allow = "-A DOCKER-USER -d 10.0.1.13/32 -i br-+ -p tcp -m tcp --dport 5432 -j ACCEPT"
    assert allow in rules
    assert "-A DOCKER-USER -d 192.168.5.5/32 -i docker0 -p tcp -m tcp --dport 6379 -j ACCEPT" in rules
    first_private_reject = min(
        i for i, r in enumerate(rules) if r.startswith("-A DOCKER-USER -d 10.") and "REJECT" in r
    )
    assert rules.index(allow) < first_private_reject
    for cidr in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16"):
        assert f"-A DOCKER-USER -d {cidr} -i br-+ -j REJECT --reject-with icmp-admin-prohibited" in rules
    # Same-bridge RETURN precedes every reject; IPv6 is refused from every container interface.
    same = rules.index("-A DOCKER-USER -i br-+ -o br-+ -j RETURN")
    assert same < min(i for i, r in enumerate(rules) if "REJECT" in r)
    v6 = files[f"{tmp_path}/etc/inkmcp/hardening/docker-user.rules6"]
    assert "-A INKMCP-FORWARD -i br-+ -j REJECT --reject-with icmp6-adm-prohibited" in v6
    assert "-A INKMCP-INPUT -i docker0 -j REJECT --reject-with icmp6-adm-prohibited" in v6
