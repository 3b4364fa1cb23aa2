"""Tenant egress on a run server: real Docker, real gVisor, the RENDERED hardening, real TCP probes.

The session's private dockerd (conftest `node`, runtime selector as default runtime) gets an uplink to
stand-in hosts in their own namespaces (conftest `uplink`): the metadata service, an SMTP server, a peer
and a resolver inside the platform's private range, and a public web server. The DOCKER-USER rules come
from `render_plan` (private_cidrs = the platform range, dns_resolvers = the DNS stubs, the metadata IP)
and are loaded by the plan's own command (hardening/scripts/inkmcp-docker-user-apply) inside the
daemon's namespace. Containers are started the way Coolify starts them; busybox `nc` connects for real.
Every stand-in port has a listener that answers "<host>:<port>", so "open" means that host answered and
"refused" is the firewall's reset (the same probes all answer before the rules are applied).
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inkmcp.nodes.render import HostParams, HostPlan, render_plan
from tests.netns import LISTENER

from .conftest import (
    DNS_ADDR,
    INTERNAL_ADDR,
    INTERNAL_NAME,
    PLATFORM_CIDR,
    PLATFORM_DNS,
    PROXY_IMAGE,
    PUBLIC_ADDR,
    PUBLIC_NAME,
    STANDINS,
    TENANT_IMAGE,
    Uplink,
    _stop,
)

HOST_KERNEL = os.uname().release
METADATA = "169.254.169.254"
SMTP, PEER = STANDINS["smtp"][0][0], INTERNAL_ADDR
# The node's own uplink address (conftest `uplink`): container -> host goes through INPUT, not FORWARD.
NODE_ADDR = "192.0.2.201"
NODE_PORTS = [2222, 443]  # an sshd-like host listener, and the node's proxy port (hairpin)
BANNER = {addr: name for name, (addrs, _ports) in STANDINS.items() for addr in addrs} | {NODE_ADDR: "node"}
# The private endpoint tenants are explicitly allowed to reach (egress_allow): one host, one port.
ALLOWED = f"{PLATFORM_DNS}:80"

# (address, port, expected). "$ip" is the public web server's address as the container resolved it.
PROBES: list[tuple[str, int, str]] = [
    ("$ip", 80, "open"),  # the public web, by name: the internet stays reachable
    ("$ip", 443, "open"),
    (SMTP, 80, "open"),  # the mail host itself is reachable; only its mail ports are not
    (PLATFORM_DNS, 53, "open"),  # the platform resolver (inside the private range): DNS allowed first
    (METADATA, 80, "refused"),  # cloud metadata service
    (SMTP, 25, "refused"),  # SMTP
    (SMTP, 465, "refused"),  # SMTPS
    (SMTP, 587, "refused"),  # submission
    (PEER, 5432, "refused"),  # a platform database in the private range
    (PEER, 80, "refused"),
    (PEER, 53, "refused"),  # port 53 is allowed only to the listed resolvers, not to any private host
    (PLATFORM_DNS, 80, "open"),  # egress_allow: this private endpoint, explicitly
    (PLATFORM_DNS, 5432, "refused"),  # ... and no other port of that host
    (NODE_ADDR, 2222, "refused"),  # container -> host (INPUT): a host listener
    (NODE_ADDR, 443, "open"),  # hairpin to the node's own proxy port stays
]
EXPECTED = {f"{PUBLIC_ADDR if a == '$ip' else a}:{p}": want for a, p, want in PROBES}
ALL_OPEN = dict.fromkeys(EXPECTED, "open")


def coolify_app_args(network: str | None = "coolify") -> list[str]:
    """What Coolify passes for an application (no --runtime: the node's selector decides)."""
    uuid = secrets.token_hex(12)
    net = ["--network", network] if network else []
    return [
        *net, "--name", f"{uuid}-{secrets.randbelow(10**12):012d}",
        "-l", "coolify.managed=true", "-l", "coolify.type=application", "-l", f"coolify.applicationId={uuid}",
        "-l", "traefik.enable=true", "-l", "coolify.proxy=true",
    ]


def probe_script() -> str:
    lines = [
        "echo kernel=$(uname -r)",
        f"ip=$(nslookup {PUBLIC_NAME} 2>&1 | sed -n 's/^Address: *//p' | tail -1); echo resolved=$ip",
        # -w 2: a DROP would show as a timeout within the test's budget; the rules REJECT, so refusals are instant.
        'probe() { echo "@$1:$2 $(nc -w 2 "$1" "$2" </dev/null 2>&1 | tr "\\n" " ")"; }',
    ]
    lines += [f'probe "{a}" {p}' for a, p, _ in PROBES]
    return "\n".join(lines)


@dataclass
class Result:
    kernel: str
    resolved: str
    seen: dict[str, str]
    raw: str


def parse(out: str) -> Result:
    seen: dict[str, str] = {}
    kernel = resolved = ""
    for line in out.splitlines():
        if line.startswith("kernel="):
            kernel = line.removeprefix("kernel=")
        elif line.startswith("resolved="):
            resolved = line.removeprefix("resolved=")
        elif line.startswith("@"):
            target, _, answer = line[1:].partition(" ")
            addr, _, port = target.rpartition(":")
            if f"{BANNER.get(addr)}:{port}" in answer:
                seen[target] = "open"
            elif "Connection refused" in answer:
                seen[target] = "refused"
            else:
                seen[target] = f"other: {answer.strip()}"
    return Result(kernel, resolved, seen, out)


def run_probes(up: Uplink, *args: str) -> Result:
    run = up.node.docker("run", "--rm", *args, TENANT_IMAGE, "sh", "-c", probe_script(), timeout=90, check=True)
    return parse(run.stdout)


def docker_user(up: Uplink) -> list[str]:
    """DOCKER-USER as iptables-save prints it, without counters."""
    r = up.in_node("iptables-save -t filter")
    assert r.returncode == 0, r.stderr
    return [re.sub(r"\[\d+:\d+\]", "", ln) for ln in r.stdout.splitlines() if "DOCKER-USER" in ln]


def accepted(up: Uplink, rule: str) -> int:
    """Packets that matched one DOCKER-USER rule so far."""
    r = up.in_node("iptables-save -c -t filter")
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        counters, _, text = line.partition(" ")
        if text == rule:
            return int(counters.strip("[]").split(":")[0])
    raise AssertionError(f"rule not loaded: {rule}")


def forward_rules(up: Uplink) -> list[str]:
    r = up.in_node("iptables -w 5 -S FORWARD")
    assert r.returncode == 0, r.stderr
    return [ln for ln in r.stdout.splitlines() if ln.startswith("-A FORWARD")]


@dataclass
class Hardened:
    up: Uplink
    plan: HostPlan
    baseline: Result
    outputs: list[str]

    @property
    def firewall_command(self) -> str:
        (cmd,) = [c for c in self.plan.commands if "inkmcp-docker-user-apply" in c]
        return cmd


# Undo what the rendered apply adds outside DOCKER-USER (conftest resets DOCKER-USER itself), so the
# shared daemon's namespace is left as the other runtime tests expect it.
_UNDO = """
iptables -w 5 -D INPUT -j INKMCP-INPUT 2>/dev/null; iptables -w 5 -F INKMCP-INPUT; iptables -w 5 -X INKMCP-INPUT
for c in INPUT:INKMCP-INPUT FORWARD:INKMCP-FORWARD; do
  ip6tables -w 5 -D ${c%%:*} -j ${c#*:} 2>/dev/null; ip6tables -w 5 -F ${c#*:}; ip6tables -w 5 -X ${c#*:}
done
true
"""


@pytest.fixture(scope="module")
def hardened(uplink: Uplink, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hardened]:
    # Listeners on the node itself (its uplink address), started in the daemon's namespace.
    host = subprocess.Popen(
        ["nsenter", f"--net=/var/run/netns/{uplink.node.netns}", sys.executable, "-c", LISTENER, "node",
         *(f"{NODE_ADDR}:{p}" for p in NODE_PORTS)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert host.stdout is not None and host.stdout.readline().strip() == "ready"
        yield _harden(uplink, tmp_path_factory)
    finally:
        _stop(host.pid, wait=5)
        uplink.in_node(_UNDO)


def _harden(uplink: Uplink, tmp_path_factory: pytest.TempPathFactory) -> Hardened:
    # Before any rule: a tenant reaches every stand-in (so the refusals below are the firewall's).
    baseline = run_probes(uplink, *coolify_app_args())

    root = tmp_path_factory.mktemp("host-root")
    params = HostParams(
        root=str(root), firewall=True, services=False,
        private_cidrs=[PLATFORM_CIDR], dns_resolvers=[DNS_ADDR, PLATFORM_DNS], metadata_ips=[METADATA],
        egress_allow=[ALLOWED],
    )
    plan = render_plan(params)
    for path, content in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
        os.chmod(path, plan.modes[path])
    outputs = []
    for cmd in plan.commands:  # the converge sequence, in the daemon's namespace (no services: staged root)
        r = uplink.in_node(cmd)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
        outputs.append(r.stdout)
    return Hardened(uplink, plan, baseline, outputs)


def test_without_rules_every_stand_in_answers(hardened: Hardened) -> None:
    b = hardened.baseline
    assert b.resolved == PUBLIC_ADDR, b.raw
    assert b.seen == ALL_OPEN, b.raw


def test_rendered_apply_loaded_docker_user(hardened: Hardened) -> None:
    assert os.stat(shlex.split(hardened.firewall_command)[0]).st_mode & stat.S_IXUSR
    idx = hardened.plan.commands.index(hardened.firewall_command)
    assert hardened.outputs[idx].strip() == "changed: DOCKER-USER"
    rules = docker_user(hardened.up)
    assert f"-A DOCKER-USER -d {METADATA}/32 -i br-+ -p tcp -j REJECT --reject-with tcp-reset" in rules
    assert f"-A DOCKER-USER -d {PLATFORM_CIDR} -i docker0 -p tcp -j REJECT --reject-with tcp-reset" in rules
    assert rules[-1] == "-A DOCKER-USER -j RETURN"
    assert forward_rules(hardened.up)[0] == "-A FORWARD -j DOCKER-USER"


def test_coolify_app_on_user_defined_network_under_gvisor(hardened: Hardened) -> None:
    res = run_probes(hardened.up, *coolify_app_args("coolify"))
    assert res.kernel == "4.4.0", res.raw  # sandboxed by the selector's runsc
    assert res.resolved == PUBLIC_ADDR, res.raw  # Docker's DNS -> the stub
    assert res.seen == EXPECTED, res.raw


def test_container_on_default_bridge(hardened: Hardened) -> None:
    res = run_probes(hardened.up, *coolify_app_args(None))
    assert res.kernel == "4.4.0", res.raw
    assert res.resolved == PUBLIC_ADDR, res.raw  # resolv.conf -> the daemon's --dns stub
    assert res.seen == EXPECTED, res.raw


@pytest.mark.parametrize("network", ["coolify", None], ids=["user-defined", "default-bridge"])
def test_dns_through_the_platform_resolver_passes_docker_user(hardened: Hardened, network: str | None) -> None:
    """The resolver sits inside the blocked private range and behind the uplink, so every query crosses
    DOCKER-USER (Docker's DNS forwards from the container's network): the DNS allow must come first."""
    script = f"nslookup {INTERNAL_NAME}; nslookup {PUBLIC_NAME}; nc -w 2 {INTERNAL_ADDR} 5432 </dev/null; uname -r"
    iface = "br-+" if network else "docker0"
    allow = f"-A DOCKER-USER -d {PLATFORM_DNS}/32 -i {iface} -p udp -m udp --dport 53 -j ACCEPT"
    before = accepted(hardened.up, allow)
    run = hardened.up.node.docker("run", "--rm", "--dns", PLATFORM_DNS, *coolify_app_args(network), TENANT_IMAGE,
                                  "sh", "-c", script, timeout=90)
    out = run.stdout + run.stderr
    assert re.search(rf"^Address: *{re.escape(INTERNAL_ADDR)}$", run.stdout, re.M), out
    assert re.search(rf"^Address: *{re.escape(PUBLIC_ADDR)}$", run.stdout, re.M), out
    # Resolving a private name is fine; connecting to it is not.
    assert "Connection refused" in run.stderr and "peer:5432" not in run.stdout, out
    assert run.stdout.splitlines()[-1] == "4.4.0", out
    # The queries really crossed DOCKER-USER and were let through by the rendered DNS allow.
    assert accepted(hardened.up, allow) > before


def test_platform_container_reaches_docker_api(hardened: Hardened) -> None:
    node = hardened.up.node
    run = node.docker(  # the proxy as its §4.3 profile admits it (tests/runtime/conftest.py stand-in)
        "run", "--rm", "--name", "coolify-proxy", "--network", "coolify",
        "-v", f"{node.sock}:/var/run/docker.sock:ro", "-v", f"{node.coolify / 'proxy'}:/traefik",
        "-l", "coolify.managed=true", PROXY_IMAGE, f"--probe={PUBLIC_ADDR}:443", timeout=90, check=True,
    )
    lines = run.stdout.splitlines()
    assert lines[1] == HOST_KERNEL, run.stdout  # runc, chosen by the selector for the platform
    assert "200 OK" in run.stdout and "web:443" in run.stdout, run.stdout


def test_second_apply_changes_nothing(hardened: Hardened) -> None:
    before, fwd = docker_user(hardened.up), forward_rules(hardened.up)
    r = hardened.up.in_node(hardened.firewall_command)
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    assert docker_user(hardened.up) == before
    assert forward_rules(hardened.up) == fwd


def test_rules_survive_docker_network_create(hardened: Hardened) -> None:
    up = hardened.up
    before = docker_user(up)
    net = f"inkeg-{secrets.token_hex(4)}"
    up.node.docker("network", "create", net, check=True)
    try:
        assert docker_user(up) == before  # Docker re-creating its chains did not drop or reorder ours
        assert forward_rules(up)[0] == "-A FORWARD -j DOCKER-USER"
        bridge = "br-" + up.node.docker("network", "inspect", "-f", "{{.Id}}", net, check=True).stdout.strip()[:12]
        assert bridge in "\n".join(forward_rules(up))  # the new bridge exists, and br-+ already covers it
        res = run_probes(up, *coolify_app_args(net))
        assert res.kernel == "4.4.0", res.raw
        assert res.seen == EXPECTED, res.raw
    finally:
        up.node.docker("network", "rm", net, timeout=60)


def test_same_bridge_proxy_to_app_untouched(hardened: Hardened) -> None:
    """Proxy -> app on one Coolify network is bridged east-west traffic: the rules must not touch it,
    although the bridge's addresses sit inside a refused private range (172.16/12 or the pools)."""
    node = hardened.up.node
    app = f"inkeg-app-{secrets.token_hex(4)}"
    node.docker("run", "-d", "--rm", "--name", app, "--network", "coolify", TENANT_IMAGE, "sh", "-c",
                "while true; do echo app:8080 | nc -l -p 8080; done", timeout=90, check=True)
    try:
        script = f"for i in $(seq 50); do out=$(nc -w 2 {app} 8080 </dev/null 2>&1) && [ -n \"$out\" ] && break;" \
                 " sleep 0.2; done; echo \"got=$out\"; uname -r"
        run = node.docker("run", "--rm", *coolify_app_args("coolify"), TENANT_IMAGE, "sh", "-c", script, timeout=90)
        assert "got=app:8080" in run.stdout, run.stdout + run.stderr
        assert run.stdout.splitlines()[-1] == "4.4.0", run.stdout
    finally:
        node.docker("rm", "-f", app, timeout=60)


def test_container_to_host_is_refused_by_the_input_chain(hardened: Hardened) -> None:
    """The probe matrix shows node:2222 refused; here the refusal is pinned on INKMCP-INPUT (jumped first
    from INPUT), and the bridge gateway (another host address) is refused too."""
    rules = hardened.up.in_node("iptables -w 5 -S INPUT").stdout.splitlines()
    assert next(r for r in rules if r.startswith("-A INPUT")) == "-A INPUT -j INKMCP-INPUT"
    gw = hardened.up.node.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Gateway}}", "coolify",
                                 check=True).stdout.strip()
    run = hardened.up.node.docker("run", "--rm", *coolify_app_args("coolify"), TENANT_IMAGE, "sh", "-c",
                                  f"nc -w 2 {gw} 2222 </dev/null; nc -w 2 {NODE_ADDR} 2222 </dev/null", timeout=90)
    out = run.stdout + run.stderr
    assert out.count("Connection refused") == 2 and "node:2222" not in out, out
    reject = "-A INKMCP-INPUT -i br-+ -p tcp -j REJECT --reject-with tcp-reset"
    save = hardened.up.in_node("iptables-save -c -t filter").stdout
    assert any(line.endswith(reject) and not line.startswith("[0:") for line in save.splitlines()), save
