"""The build namespace (runbooks/gvisor-decision.md §4.4, review #4 and X2): the rendered
`inkmcp-build-netns up` run in a stand-in for the build server's root namespace (`bhost`) creates the
namespace the build dockerd lives in, and the kernel decides real TCP connections made from inside it.

Every refusal here is shown to be the rules' doing: the same destination answers once the rules are
flushed (and the next `up` puts them back), and every stand-in has a listener."""

from __future__ import annotations

import errno
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inkmcp.nodes.buildnet import BuildNetParams, render_buildnet
from tests.buildpath.conftest import (
    BLOCKED_PUBLIC,
    LINK_CIDR,
    REGISTRY_IP,
    BuildNs,
    Platform,
    _start,
    stop,
    write_files,
)
from tests.hardening.conftest import in_netns
from tests.netns import LISTENER, sh

pytestmark = pytest.mark.slow

BHOST_UPLINK = "192.0.2.10"  # link_standin(rtr, bhost, base 8): the build server's own address
PROBES: list[tuple[str, int, str, str]] = [
    (REGISTRY_IP, 443, "open", "the registry's TLS port"),
    ("203.0.113.80", 443, "open", "public internet (base images, package mirrors)"),
    ("203.0.113.80", 80, "open", "public internet, plain HTTP"),
    ("10.0.1.14", 443, "open", "an allow-listed private endpoint (buildEgressAllow)"),
    ("10.0.1.14", 22, "refused", "... only its listed port"),
    (REGISTRY_IP, 22, "refused", "the registry host's other ports"),
    ("10.0.1.13", 5432, "refused", "control-plane Postgres"),
    ("10.0.1.10", 8000, "refused", "Coolify's API on the private network"),
    (BLOCKED_PUBLIC, 443, "refused", "the Coolify master's public address (its proxy serves the UI/API)"),
    (BLOCKED_PUBLIC, 8000, "refused", "Coolify's API on the master's public address"),
    ("10.0.2.21", 22, "refused", "run-server SSH over the vSwitch"),
    ("169.254.169.254", 80, "refused", "cloud metadata service"),
    ("192.168.7.7", 80, "refused", "RFC 1918 outside the platform's range"),
    ("172.20.7.7", 80, "refused", "RFC 1918"),
    ("100.64.7.7", 80, "refused", "CGNAT"),
    (BHOST_UPLINK, 22, "refused", "the build server itself (sshd in the root namespace)"),
    ("192.168.254.1", 22, "refused", "the build server's end of the link"),
]


def probe(ns: str, addr: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET

    def attempt() -> str:
        with socket.socket(family) as s:
            s.settimeout(1.5)
            code = s.connect_ex((addr, port))
        if code == 0:
            return "open"
        if code in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EACCES):
            return "refused"
        return "timeout" if code in (errno.EAGAIN, errno.ETIMEDOUT, errno.EINPROGRESS) else f"errno {code}"

    return in_netns(ns, attempt)


def test_egress_matrix_from_inside_the_build_namespace(build_ns: BuildNs) -> None:
    got = {(a, p): probe(build_ns.name, a, p) for a, p, _want, _why in PROBES}
    want = {(a, p): w for a, p, w, _why in PROBES}
    assert got == want


def test_first_up_built_the_namespace_and_a_second_up_changes_nothing(build_ns: BuildNs) -> None:
    assert f"network namespace {build_ns.name}" in build_ns.first_up
    assert "egress rules" in build_ns.first_up
    again = build_ns.script("up")
    assert again.stdout == "", again.stdout
    # The namespace's only way out: one link with the rendered addresses and a default route over it.
    routes = subprocess.run(["ip", "-n", build_ns.name, "-4", "route"], capture_output=True, text=True,
                            check=True).stdout
    assert routes.splitlines()[0].startswith("default via 192.168.254.1 dev uplink0"), routes
    links = subprocess.run(["ip", "-n", build_ns.name, "-o", "link"], capture_output=True, text=True,
                           check=True).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()]
    # Besides what the build dockerd makes inside (its bridges and their container veths), only the uplink.
    assert [n for n in names if n != "lo" and not n.startswith(("docker", "br-", "veth"))] == ["uplink0"], names


def test_refusals_are_the_rules_doing(build_ns: BuildNs) -> None:
    """Flush the chains: Postgres, metadata and the host's sshd answer; `up` restores the rules and says so."""
    targets = [("10.0.1.13", 5432), ("169.254.169.254", 80), (BHOST_UPLINK, 22)]
    try:
        build_ns.in_host("iptables", "-w", "5", "-F", "INKMCP-BUILD")
        build_ns.in_host("iptables", "-w", "5", "-F", "INKMCP-BUILD-IN")
        assert {t: probe(build_ns.name, *t) for t in targets} == dict.fromkeys(targets, "open")
    finally:
        restored = build_ns.script("up")
    assert "changed: egress rules" in restored.stdout
    assert {t: probe(build_ns.name, *t) for t in targets} == dict.fromkeys(targets, "refused")


def test_a_rule_inserted_before_ours_is_overtaken_by_up(build_ns: BuildNs) -> None:
    """Something later inserting a blanket ACCEPT at the top of FORWARD/INPUT: `up` (run at every boot and
    every `pulumi up`) moves our jumps back to first place."""
    try:
        build_ns.in_host("iptables", "-w", "5", "-I", "FORWARD", "1", "-j", "ACCEPT")
        build_ns.in_host("iptables", "-w", "5", "-I", "INPUT", "1", "-j", "ACCEPT")
        assert probe(build_ns.name, "10.0.1.13", 5432) == "open"
        out = build_ns.script("up").stdout
        assert "FORWARD -> INKMCP-BUILD first" in out and "INPUT -> INKMCP-BUILD-IN first" in out
        assert probe(build_ns.name, "10.0.1.13", 5432) == "refused"
        assert probe(build_ns.name, BHOST_UPLINK, 22) == "refused"
    finally:
        for chain in ("FORWARD", "INPUT"):
            build_ns.in_host("iptables", "-w", "5", "-D", chain, "-j", "ACCEPT", check=False)
    assert probe(build_ns.name, REGISTRY_IP, 443) == "open"


def test_nothing_opens_a_connection_into_the_namespace(build_ns: BuildNs) -> None:
    """Even with a route to it, a host on the network cannot connect to a listener inside the namespace
    (e.g. a RUN step serving something on the build host's network)."""
    rtr, cli = build_ns.platform.ns["rtr"], build_ns.platform.ns["cli"]
    argv = [sys.executable, "-c", LISTENER, "inside", "0.0.0.0:8080"]
    listener = _start(build_ns.platform.procs, build_ns.name, argv, ready_line=True)
    try:
        subprocess.run(["ip", "-n", rtr, "route", "add", LINK_CIDR, "via", BHOST_UPLINK], check=True)
        assert probe(build_ns.host, "192.168.254.2", 8080) == "open"  # the host itself (root) may
        assert probe(cli, "192.168.254.2", 8080) == "refused"
    finally:
        subprocess.run(["ip", "-n", rtr, "route", "del", LINK_CIDR], check=False)
        stop(listener)


def test_ipv6_is_refused_even_when_someone_enables_it(build_ns: BuildNs) -> None:
    """`up` disables IPv6 on the link; undo that and route a ULA through the host: ip6tables still refuses
    the host (INPUT) and everything behind it (FORWARD). The same paths open once the v6 chains are flushed."""
    p = build_ns.platform
    host_if, rtr, ns = build_ns.params.host_if, p.ns["rtr"], build_ns.name
    listener = None
    targets = [("fd00:b::1", 22), ("fd00:1::1", 80)]  # the host's sshd; a ULA service behind the host
    try:
        build_ns.in_host("sysctl", "-q", "-w", f"net.ipv6.conf.{host_if}.disable_ipv6=0",
                         "net.ipv6.conf.all.forwarding=1")
        sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=0",
           "net.ipv6.conf.uplink0.disable_ipv6=0")
        build_ns.in_host("ip", "-6", "addr", "add", "fd00:b::1/64", "dev", host_if, "nodad")
        sh("ip", "-n", ns, "-6", "addr", "add", "fd00:b::2/64", "dev", "uplink0", "nodad")
        sh("ip", "-n", ns, "-6", "route", "add", "default", "via", "fd00:b::1")
        sh("ip", "-n", rtr, "-6", "addr", "add", "fd00:1::1/64", "dev", "vbhost", "nodad")
        build_ns.in_host("ip", "-6", "addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad")
        sh("ip", "-n", rtr, "-6", "route", "add", "fd00:b::/64", "via", "fd00:1::2")
        listener = _start(p.procs, rtr, [sys.executable, "-c", LISTENER, "ula", "fd00:1::1:80"], ready_line=True)
        assert {t: probe(ns, *t) for t in targets} == dict.fromkeys(targets, "refused")
        for chain in ("INKMCP-BUILD", "INKMCP-BUILD-IN"):
            build_ns.in_host("ip6tables", "-w", "5", "-F", chain)
        assert {t: probe(ns, *t) for t in targets} == dict.fromkeys(targets, "open")
    finally:
        if listener is not None:
            stop(listener)
        sh("ip", "-n", rtr, "-6", "route", "del", "fd00:b::/64", check=False)
        sh("ip", "-n", rtr, "-6", "addr", "del", "fd00:1::1/64", "dev", "vbhost", check=False)
        build_ns.in_host("ip", "-6", "addr", "del", "fd00:1::2/64", "dev", "eth0", check=False)
        build_ns.in_host("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=0", check=False)
        out = build_ns.script("up").stdout
    assert "changed: egress rules" in out
    # `up` switched IPv6 off on the link again: the namespace has no v6 address left.
    assert sh("ip", "-n", ns, "-6", "-o", "addr").strip() == ""


def test_up_refuses_a_loopback_only_resolver(build_ns: BuildNs) -> None:
    """dockerd in the namespace reads the host's resolv.conf; 127.0.0.53 does not exist in there."""
    resolv = Path(build_ns.params.resolv_conf)
    original = resolv.read_text()
    try:
        resolv.write_text("nameserver 127.0.0.53\noptions edns0\n")
        r = build_ns.script("up", check=False)
    finally:
        resolv.write_text(original)
    assert r.returncode == 1
    assert "no non-loopback nameserver" in r.stderr and "185.12.64.1" in r.stderr


def _tables(host: str) -> str:
    """Both families' rules and user-defined chains (what `up` adds), without counters."""
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        text = sh("nsenter", f"--net=/run/netns/{host}", tool)
        for line in text.splitlines():
            if line.startswith("-A") or re.match(r"^:\S+ - ", line):
                out.append(tool + " " + re.sub(r"\[\d+:\d+\]", "", line))
    return "\n".join(out)


def test_down_removes_everything_up_made(platform: Platform, tmp_path: Path) -> None:
    """On a fresh stand-in host: `up` then `down` leaves no chain, jump, NAT rule, link or namespace."""
    host = f"ibp{platform.tag}h2"
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 185.12.64.1\n")
    params = BuildNetParams(root=str(tmp_path), netns=f"ibp{platform.tag}dn", host_if=f"ib{platform.tag}d0",
                            registry=[f"{REGISTRY_IP}:443"], resolv_conf=str(resolv))
    write_files(render_buildnet(params))
    sh("ip", "netns", "add", host)
    try:
        sh("ip", "-n", host, "link", "set", "lo", "up")
        before = _tables(host)
        script = ["nsenter", f"--net=/run/netns/{host}", "bash", params.path("script")]
        up = subprocess.run([*script, "up"], capture_output=True, text=True, timeout=30, check=True)
        assert "INKMCP-BUILD" in _tables(host) and params.netns in sh("ip", "netns", "list")
        down = subprocess.run([*script, "down"], capture_output=True, text=True, timeout=30, check=True)
        assert f"network namespace {params.netns}" in down.stdout, up.stdout + down.stdout
        assert _tables(host) == before
        assert params.netns not in sh("ip", "netns", "list")
        assert params.host_if not in sh("ip", "-n", host, "-o", "link")
        again = subprocess.run([*script, "down"], capture_output=True, text=True, timeout=30, check=True)
        assert again.stdout == ""
        # An `up` straight after a `down` builds the whole link again (a host end left behind by the kernel's
        # asynchronous namespace cleanup used to make `up` skip the pair and leave the namespace unlinked).
        for _ in range(3):
            subprocess.run([*script, "up"], capture_output=True, text=True, timeout=30, check=True)
            assert params.ns_if in sh("ip", "-n", params.netns, "-o", "link")
            assert "state UP" in sh("ip", "-n", host, "-o", "link", "show", params.host_if)
            subprocess.run([*script, "down"], capture_output=True, text=True, timeout=30, check=True)
            assert params.host_if not in sh("ip", "-n", host, "-o", "link")
    finally:
        sh("ip", "netns", "del", params.netns, check=False)
        sh("ip", "netns", "del", host, check=False)
