"""Contract between the muscle stack, the hardening renderer and the gVisor selector, with the real renderer.

What a run server receives from `pulumi up` (CopyToRemote files + the `harden` command) must be exactly
`render_plan(HostParams)`, the plan `inkmcp nodes harden` applies too; daemon.json must make the selector
Docker's only runtime; DOCKER-USER must reject the platform networks and the metadata service; and the
`harden` command, run for real against a staged root, must converge it and be silent the second time.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pydantic import ValidationError

from inkmcp.infra import muscle
from inkmcp.infra.factory import shell
from inkmcp.infra.factory_config import DockerPool, NetworkStackOutputs
from inkmcp.infra.muscle_config import MuscleConfig, PlatformContainerSpec, host_params
from inkmcp.nodes.cli import load_params
from inkmcp.nodes.render import (
    GVISOR_DIR,
    SELECTOR_CONFIG,
    SELECTOR_PATH,
    GvisorParams,
    HostParams,
    render_plan,
    selector_runtimes,
)
from tests.requirements import require_root
from tests.stacks.pulumi_mocks import RecordingMonitor, install
from tests.stacks.test_muscle_stack import COPY, NETWORK, PROXY_REF, SABLIER_REF, build, make_conf, node

MANAGED = "/etc/inkmcp/hardening/daemon.managed.json"
RULES = "/etc/inkmcp/hardening/docker-user.rules"
RUNTIMES = {"inkmcp": {"path": "/usr/local/lib/inkmcp/inkmcp-runtime",
                       "runtimeArgs": ["--inkmcp-config=/etc/inkmcp/runtime-selector.json"]}}


@pytest.fixture
def monitor() -> RecordingMonitor:
    return install()


def net() -> NetworkStackOutputs:
    return NetworkStackOutputs.parse(NETWORK)


def uploaded(monitor: RecordingMonitor, n: int = 1) -> dict[str, str]:
    """What the stack copies to run server n: remote path -> text."""
    out = {}
    for r in monitor.of_type(COPY):
        if r.name.startswith(f"run-run{n}-"):
            source = r.inputs["source"]
            assert isinstance(source, pulumi.StringAsset)
            out[r.inputs["remotePath"]] = source.text
    return out


def test_uploaded_files_make_the_selector_dockers_only_runtime(monitor: RecordingMonitor) -> None:
    build()
    files = uploaded(monitor)
    assert files == muscle.host_plan(make_conf(), node(1), net()).files
    managed = json.loads(files[MANAGED])  # merged into /etc/docker/daemon.json by the harden command
    assert managed["default-runtime"] == "inkmcp"
    assert managed["runtimes"] == RUNTIMES
    assert "runsc" not in managed["runtimes"]
    assert not any(spec["path"].endswith("runsc") for spec in managed["runtimes"].values())
    assert managed["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}] and managed["mtu"] == 1400
    harden = monitor.by_name("run-run1-harden").inputs["create"]
    assert f"merge {MANAGED} /etc/docker/daemon.json" in harden


def test_docker_user_rules_reject_platform_networks_and_metadata(monitor: RecordingMonitor) -> None:
    build()
    rules = [line for line in uploaded(monitor)[RULES].splitlines() if line.startswith("-A DOCKER-USER")]
    for iface in ("docker0", "br-+"):
        # 10.0.0.0/16 = the Cloud Network, which holds the vSwitch subnet 10.0.2.0/24 (collapsed into it).
        for dest in ("10.0.0.0/16", "169.254.169.254/32"):
            assert f"-A DOCKER-USER -d {dest} -i {iface} -p tcp -j REJECT --reject-with tcp-reset" in rules
            assert f"-A DOCKER-USER -d {dest} -i {iface} -j REJECT --reject-with icmp-admin-prohibited" in rules
    assert rules[0].endswith("--ctstate RELATED,ESTABLISHED -j ACCEPT") and rules[-1] == "-A DOCKER-USER -j RETURN"


def test_egress_settings_reach_the_uploaded_rules(monitor: RecordingMonitor) -> None:
    """egressAllow / hostInputTcpPorts from the stack config end up in what `pulumi up` copies to the node, and in
    the same place of the rules as `inkmcp nodes harden` renders them (one renderer)."""
    conf = make_conf(egress_allow=["10.0.3.40:5432", {"ip": "192.168.5.5", "port": 6379}],
                     host_input_tcp_ports=[443, 8443])
    build(conf)
    files = uploaded(monitor)
    assert files == muscle.host_plan(conf, node(1), net()).files
    rules = [line for line in files[RULES].splitlines() if line.startswith("-A ")]
    for iface in ("docker0", "br-+"):
        allow = f"-A DOCKER-USER -d 10.0.3.40/32 -i {iface} -p tcp -m tcp --dport 5432 -j ACCEPT"
        assert allow in rules
        assert rules.index(allow) < rules.index(f"-A DOCKER-USER -d 10.0.0.0/16 -i {iface} -p tcp -j REJECT "
                                                "--reject-with tcp-reset")
        assert f"-A DOCKER-USER -d 192.168.5.5/32 -i {iface} -p tcp -m tcp --dport 6379 -j ACCEPT" in rules
        assert f"-A INKMCP-INPUT -i {iface} -p tcp -m tcp --dport 8443 -j RETURN" in rules
        assert f"-A INKMCP-INPUT -i {iface} -p tcp -m tcp --dport 80 -j RETURN" not in rules
    # The defaults: nothing allow-listed, hairpin 80/443 only.
    default = muscle.host_plan(make_conf(), node(1), net()).files[RULES]
    assert "--dport 5432 -j ACCEPT" not in default
    assert [p for p in (80, 443, 8443) if f"-p tcp -m tcp --dport {p} -j RETURN" in default] == [80, 443]


@pytest.mark.parametrize(("over", "message"), [
    ({"egress_allow": ["10.0.3.0/24:5432"]}, "one host and one TCP port"),
    ({"egress_allow": ["169.254.169.254:80"]}, "link-local (metadata service) is never allow-listed"),
    ({"egress_allow": ["203.0.113.5:443"]}, "not a private address"),
    ({"host_input_tcp_ports": [22, 443]}, "never 22 (sshd)"),
    ({"host_input_tcp_ports": [0]}, "TCP ports in 1..65535"),
    ({"hardening": {"egress_allow": ["10.0.3.40:5432"]}}, "hardening.egress_allow is set by the muscle stack from "
                                                            "egressAllow"),
    ({"hardening": {"host_input_tcp_ports": [443]}}, "from hostInputTcpPorts"),
])
def test_egress_settings_are_validated_like_the_renderer(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        make_conf(**over)


def test_egress_settings_from_the_yaml_keys() -> None:
    """The camelCase keys of Pulumi.<stack>.yaml, as the stack reads them."""
    raw = {**make_conf().model_dump(by_alias=True), "egressAllow": ["10.0.3.40/32:5432"], "hostInputTcpPorts": [443]}
    conf = MuscleConfig.model_validate(raw)
    params = host_params(conf, node(1), net())
    assert [(str(e.ip), e.port) for e in params.egress_allow] == [("10.0.3.40", 5432)]
    assert params.host_input_tcp_ports == [443]


def test_selector_files_carry_the_allow_list(monitor: RecordingMonitor) -> None:
    build()
    files = uploaded(monitor)
    plan = muscle.host_plan(make_conf(), node(1), net())
    assert files[SELECTOR_PATH] == (GVISOR_DIR / "runtime_selector.py").read_text()
    assert plan.modes[SELECTOR_PATH] == 0o755 and plan.modes[SELECTOR_CONFIG] == 0o644
    cfg = json.loads(files[SELECTOR_CONFIG])
    assert [(e["entry"], e["name"], [i["ref"] for i in e["images"]]) for e in cfg["platform"]] == [
        ("proxy", "coolify-proxy", [PROXY_REF]), ("sablier", "sablier", [SABLIER_REF])]
    # Not resolved on the node yet (the pin step passes `resolved`): the entries admit nothing until then.
    assert all(i["id"] is None for e in cfg["platform"] for i in e["images"])
    assert (cfg["runc"], cfg["runsc"]) == ("/usr/bin/runc", "/usr/bin/runsc")
    assert cfg["runsc_flags"] == ["--network=host", "--host-uds=none"]
    assert files["/usr/local/lib/inkmcp/gvisor/install.sh"] == (GVISOR_DIR / "install.sh").read_text()


def test_harden_runs_the_plan_commands_in_order(monitor: RecordingMonitor) -> None:
    build()
    plan = muscle.host_plan(make_conf(), node(1), net())
    create = monitor.by_name("run-run1-harden").inputs["create"]
    assert create == shell(muscle.harden_script(plan))
    script = muscle.harden_script(plan)
    assert script.startswith("set -e\n")
    positions = [script.index(f"sh -c {shlex.quote(c)}\n") for c in plan.commands]
    assert positions == sorted(positions) and len(plan.commands) >= 8
    # Modes before any command; the selector is installed before daemon.json names it; Docker reload last.
    assert script.index(f"chmod 755 {SELECTOR_PATH}") < positions[0]
    order = [next(i for i, c in enumerate(plan.commands) if key in c)
             for key in ("runsc not found", "gvisor/install.sh", "inkmcp-daemon-json", "reload docker")]
    assert order == sorted(order)


def test_cli_converges_to_the_same_plan(tmp_path: Path) -> None:
    """`inkmcp nodes harden --params FILE` with the stack's parameters renders the identical plan."""
    params = host_params(make_conf(), node(1), net())
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params.model_dump(mode="json")))
    from_cli = render_plan(load_params(path, "/", "root", None, None))
    stack = muscle.host_plan(make_conf(), node(1), net())
    assert (from_cli.files, from_cli.modes, from_cli.commands) == (stack.files, stack.modes, stack.commands)


def run_harden(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)


def test_harden_script_converges_a_staged_root(tmp_path: Path) -> None:
    """The stack's harden command for real, against a root prefix (no kernel or service steps there)."""
    require_root("the harden command makes files root-owned (chown 0:0), as on a node")
    root = tmp_path / "node"
    plan = render_plan(host_params(make_conf(), node(1), net(), root=str(root)))
    for path, content in plan.files.items():  # what CopyToRemote leaves: right content, no particular mode
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
        os.chmod(path, 0o600)
    daemon_json = root / "etc/docker/daemon.json"
    coolify = {"default-address-pools": [{"base": "10.0.0.0/8", "size": 24}],
               "runtimes": {"runsc": {"path": "/usr/bin/runsc"}}, "registry-mirrors": ["https://mirror.example"]}
    daemon_json.parent.mkdir(parents=True)
    daemon_json.write_text(json.dumps(coolify))

    first = run_harden(muscle.harden_script(plan))
    assert first.returncode == 0, first.stderr + first.stdout
    assert "removed runtimes runsc" in first.stdout and f"changed: {daemon_json}" in first.stdout
    merged = json.loads(daemon_json.read_text())
    assert merged["default-runtime"] == "inkmcp" and merged["runtimes"] == RUNTIMES
    assert merged["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]
    assert merged["registry-mirrors"] == ["https://mirror.example"]  # foreign keys stay
    assert os.readlink(root / "usr/local/sbin/runc") == "../lib/inkmcp/inkmcp-runtime"
    for path, mode in plan.modes.items():
        st = os.stat(path)
        assert (st.st_mode & 0o777, st.st_uid) == (mode, 0), path

    second = run_harden(muscle.harden_script(plan))
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    check = subprocess.run(["bash", str(root / "usr/local/lib/inkmcp/gvisor/install.sh"), "--check",
                            str(root / SELECTOR_CONFIG.lstrip("/")), str(root)], capture_output=True, text=True,
                           timeout=30, check=False)
    assert check.returncode == 0, check.stdout


# --- bad combinations fail before anything is touched ------------------------------------------------------


@pytest.mark.parametrize(("entry", "message"), [
    ({"profile": "proxy", "images": []}, "at least 1 item"),
    ({"profile": "proxy", "images": ["traefik:v3.6.23@sha256:" + "0" * 64]}, "placeholder"),
    ({"profile": "proxy", "images": ["sha256:" + "a" * 64]}, "is not a repo digest"),
    ({"profile": "proxy", "images": ["traefik:v3.6"]}, "is not a repo digest"),
    ({"profile": "sentinel", "images": ["coollabsio/sentinel@sha256:" + "a" * 64]}, "'proxy', 'sablier' or 'helper'"),
])
def test_platform_entry_needs_a_real_repo_digest(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PlatformContainerSpec(**entry)


def test_renderer_refuses_an_entry_without_images_and_extra_runtimes() -> None:
    with pytest.raises(ValidationError, match="at least 1 item"):
        GvisorParams(platform=[{"entry": "sablier", "name": "sablier", "images": [], "args": {"kind": "image"}}])
    with_runsc = {**selector_runtimes(), "runsc": {"path": "/usr/bin/runsc"}}
    with pytest.raises(ValidationError, match="lets a tenant skip the selector"):
        HostParams(gvisor=GvisorParams(), runtimes=with_runsc, default_runtime="inkmcp")
    with pytest.raises(ValidationError, match="lets a tenant skip the selector"):
        HostParams(gvisor=GvisorParams(), runtimes=selector_runtimes(), default_runtime="runc")
    with pytest.raises(ValidationError, match="not the selector"):
        GvisorParams(runc_path="/usr/local/sbin/runc")


def test_pools_overlapping_platform_networks_fail_with_both_ranges_named() -> None:
    conf = make_conf(docker_address_pools=[DockerPool(base="10.0.128.0/20", size=24)])
    with pytest.raises(ValueError, match=r"docker_address_pools\[0\] \(10.0.128.0/20\) overlaps network_cidr"):
        conf.check_against(net())
    # The renderer's own last line of defence says the same for a hand-written HostParams.
    with pytest.raises(ValidationError, match="overlaps"):
        HostParams(private_cidrs=["10.0.0.0/16"], address_pools=[{"base": "10.0.128.0/20", "size": 24}])


def test_renderer_rejection_names_the_run_server() -> None:
    conf = make_conf(hardening={"smtp_ports": list(range(1, 20))})
    with pytest.raises(ValueError, match=r"(?s)run server run1: hardening parameters rejected: .*smtp_ports"):
        conf.check_against(net())
