"""`inkmcp nodes check` judges every chain the rules files declare (v4 DOCKER-USER and INKMCP-INPUT, v6
INKMCP-FORWARD and INKMCP-INPUT) and the jumps into them, against a real kernel firewall in the stand-in
host namespace of test_firewall.py, over a real sshd: each injected drift reopens a path a tenant can use
(proved with a TCP probe from the container namespace), is reported as its own line, and a re-apply
converges so check is silent again and the path is closed."""

from __future__ import annotations

from pathlib import Path

from inkmcp.nodes import HostParams
from inkmcp.nodes.apply import apply_host
from inkmcp.nodes.check import check_host, rules_files
from inkmcp.nodes.render import render_plan
from tests.hardening.test_firewall import (  # noqa: F401 - topo is a fixture
    Topology,
    probe,
    rules_params,
    ssh_into_host,
    topo,
)


def firewall_lines(conn: object, params: HostParams) -> list[str]:
    return [str(d) for d in check_host(conn, params, timeout=10) if d.kind == "firewall"]  # type: ignore[arg-type]


def test_every_declared_chain_is_compared(tmp_path: Path) -> None:
    """The chains check compares are read from the rendered files, so a chain added to a template is
    checked without touching check.py."""
    files = rules_files(render_plan(rules_params(tmp_path)))
    assert [(f.tool, sorted(f.chains)) for f in files] == [
        ("iptables", ["DOCKER-USER", "INKMCP-INPUT"]),
        ("ip6tables", ["INKMCP-FORWARD", "INKMCP-INPUT"]),
    ]
    for f in files:
        for chain, rules in f.chains.items():
            assert rules and all(r.startswith(f"-A {chain} ") for r in rules)
            assert rules[-1] == f"-A {chain} -j RETURN"


def test_check_reports_input_and_ipv6_drift_and_reapply_fixes_it(topo: Topology, tmp_path: Path) -> None:  # noqa: F811
    ctr = topo.ns["ctr"]
    with ssh_into_host(topo, tmp_path) as (c, params):
        before = firewall_lines(c, params)
        # Nothing applied yet: our chains and their jumps are all reported missing (Docker's hook is there).
        for missing in ("INKMCP-INPUT: chain missing", "INKMCP-FORWARD (IPv6): chain missing",
                        "INKMCP-INPUT (IPv6): chain missing", "INPUT: jump missing: -A INPUT -j INKMCP-INPUT",
                        "FORWARD (IPv6): jump missing: -A FORWARD -j INKMCP-FORWARD",
                        "INPUT (IPv6): jump missing: -A INPUT -j INKMCP-INPUT"):
            assert any(line.startswith(f"firewall: {missing}") for line in before), (missing, before)
        assert not any(line.startswith("firewall: FORWARD:") for line in before), before

        apply_host(c, params, timeout=10)
        assert firewall_lines(c, params) == []
        assert probe(ctr, "172.30.9.1", 2222) == "refused"
        assert probe(ctr, "fd00:9::1", 2222) == "refused"

        # The drifts: an ACCEPT ahead of our v4 INPUT jump, a deleted reject in v4 INKMCP-INPUT, the v6
        # FORWARD jump gone, an ACCEPT slipped into the v6 INKMCP-INPUT chain.
        deleted = "-A INKMCP-INPUT -i br-+ -p tcp -j REJECT --reject-with tcp-reset"
        topo.in_host("iptables", "-w", "5", "-I", "INPUT", "1", "-s", "172.30.9.0/24", "-j", "ACCEPT")
        topo.in_host("iptables", "-w", "5", *deleted.replace("-A", "-D", 1).split())
        topo.in_host("ip6tables", "-w", "5", "-D", "FORWARD", "-j", "INKMCP-FORWARD")
        topo.in_host("ip6tables", "-w", "5", "-I", "INKMCP-INPUT", "1", "-p", "tcp", "--dport", "2222",
                     "-j", "ACCEPT")
        # Each drift is a real hole: the container reaches the host's listener over v4 and v6.
        assert probe(ctr, "172.30.9.1", 2222) == "open"
        assert probe(ctr, "fd00:9::1", 2222) == "open"

        drift = firewall_lines(c, params)
        assert sorted(drift) == sorted([
            "firewall: INPUT: jump not first: -A INPUT -s 172.30.9.0/24 -j ACCEPT comes before "
            "-A INPUT -j INKMCP-INPUT and sees container traffic first",
            f"firewall: INKMCP-INPUT: rule missing: {deleted}",
            "firewall: FORWARD (IPv6): jump missing: -A FORWARD -j INKMCP-FORWARD (our rules are never reached)",
            "firewall: INKMCP-INPUT (IPv6): unexpected rule: -A INKMCP-INPUT -p tcp -m tcp --dport 2222 -j ACCEPT",
        ]), drift

        assert apply_host(c, params, timeout=10).changes == ["DOCKER-USER"]
        assert firewall_lines(c, params) == []
        assert probe(ctr, "172.30.9.1", 2222) == "refused"
        assert probe(ctr, "fd00:9::1", 2222) == "refused"

        # Rules reordered inside a chain (the final RETURN moved to the top disables the chain) are
        # reported too and converge the same way.
        topo.in_host("ip6tables", "-w", "5", "-D", "INKMCP-FORWARD", "-j", "RETURN")
        topo.in_host("ip6tables", "-w", "5", "-I", "INKMCP-FORWARD", "1", "-j", "RETURN")
        drift = firewall_lines(c, params)
        assert drift == ["firewall: INKMCP-FORWARD (IPv6): rules out of order"], drift
        apply_host(c, params, timeout=10)
        assert firewall_lines(c, params) == []

