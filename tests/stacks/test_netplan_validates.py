"""What the muscle stack writes on a run server, checked by the real consumers instead of by reading YAML/JSON.

- The vSwitch netplan file (`muscle.netplan_vswitch`) goes through netplan's own parser and generator:
  `netplan generate --root-dir <tmp>` (Debian's netplan.io, installed by scripts/test-netplan.sh when
  missing), which writes systemd-networkd units only under that directory. The host's own netplan file
  (what Hetzner's installimage writes for the NIC) sits next to it, as on a real node.
- The daemon.json that `render_plan` converges to (the managed keys merged over what Coolify's installer
  wrote) goes through dockerd's own config loader. `dockerd --validate` exists only from Docker 23; Debian
  12's docker.io is 20.10 and lacks it, so there the file is loaded by a dockerd whose --pidfile cannot
  be created: the loader parses, type-checks and validates the file (unknown keys, wrong types, a
  default runtime that is not registered) and then stops before starting anything. A JSON + key/type
  whitelist check runs everywhere, with or without dockerd.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from inkmcp.infra import muscle
from inkmcp.infra.factory_config import NetworkStackOutputs
from inkmcp.infra.muscle_config import VSWITCH_MTU, RunServer
from inkmcp.nodes.render import HostParams, render_plan
from tests.requirements import require, require_root

ROOT = Path(__file__).resolve().parents[2]
NETWORK = {
    "network_id": 4711, "network_cidr": "10.0.0.0/16", "cloud_subnet_cidr": "10.0.1.0/24",
    "vswitch_subnet_cidr": "10.0.2.0/24", "vswitch_id": 99, "vlan_id": 4000, "zone_name": "example.com",
    "zone_id": "123",
}
# What Hetzner's installimage writes for the main NIC on Ubuntu (addresses from documentation ranges).
HOST_NETPLAN = """\
network:
  version: 2
  renderer: networkd
  ethernets:
    {nic}:
      addresses:
        - {public_ip}/32
      routes:
        - on-link: true
          to: 0.0.0.0/0
          via: 198.51.100.1
      nameservers:
        addresses: [185.12.64.1, 185.12.64.2]
"""
SAMPLES = [
    pytest.param(
        NETWORK,
        {"name": "run1", "public_ip": "198.51.100.21", "private_ip": "10.0.2.21", "index": 1, "interface": "enp0s31f6"},
        id="vlan4000-enp0s31f6",
    ),
    pytest.param(
        {**NETWORK, "network_cidr": "10.40.0.0/16", "cloud_subnet_cidr": "10.40.0.0/24",
         "vswitch_subnet_cidr": "10.40.8.0/25", "vlan_id": 4091},
        {"name": "run7", "public_ip": "198.51.100.27", "private_ip": "10.40.8.77", "index": 7, "interface": "eno1"},
        id="vlan4091-eno1",
    ),
]


@pytest.fixture(scope="module")
def netplan() -> str:
    r = subprocess.run(["bash", str(ROOT / "scripts/test-netplan.sh")], capture_output=True, text=True,
                       timeout=300, check=False)
    path = shutil.which("netplan")
    after = "after scripts/test-netplan.sh"
    if r.returncode != 0:
        after += f" (it exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()})"
    require("netplan", path is not None, f"no netplan command on PATH {after}")
    assert path is not None
    return path


def generate(netplan: str, root: Path, files: dict[str, str]) -> subprocess.CompletedProcess:
    conf = root / "etc/netplan"
    conf.mkdir(parents=True)
    for name, text in files.items():
        (conf / name).write_text(text)
        (conf / name).chmod(0o600)  # as the stack installs it; netplan warns about readable files
    env = {k: v for k, v in os.environ.items() if k != "SNAP"}  # SNAP would make netplan call D-Bus instead
    return subprocess.run([netplan, "generate", "--root-dir", str(root)], capture_output=True, text=True,
                          timeout=60, check=False, env=env)


def ini(text: str) -> dict[str, list[tuple[str, str]]]:
    """systemd unit files: section -> [(key, value)] (keys repeat, so no dict)."""
    out: dict[str, list[tuple[str, str]]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            out.setdefault(section, [])
        elif "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[section].append((key, value))
    return out


@pytest.mark.parametrize(("network", "server"), SAMPLES)
def test_vswitch_netplan_generates_networkd_units(netplan: str, tmp_path: Path, network: dict[str, Any],
                                                   server: dict[str, Any]) -> None:
    net, node = NetworkStackOutputs.parse(network), RunServer(**server)
    rendered = muscle.netplan_vswitch(node, net)
    result = generate(netplan, tmp_path, {
        "01-netcfg.yaml": HOST_NETPLAN.format(nic=node.interface, public_ip=node.public_ip),
        Path(muscle.NETPLAN_PATH).name: rendered,
    })
    assert result.returncode == 0, result.stderr
    assert "too open" not in result.stderr, result.stderr

    units = tmp_path / "run/systemd/network"
    vlan = f"vlan{net.vlan_id}"
    netdev = ini((units / f"10-netplan-{vlan}.netdev").read_text())
    assert ("Kind", "vlan") in netdev["NetDev"] and ("Name", vlan) in netdev["NetDev"]
    assert netdev["VLAN"] == [("Id", str(net.vlan_id))]
    assert ("MTUBytes", str(VSWITCH_MTU)) in netdev["NetDev"] and VSWITCH_MTU == 1400

    network_unit = ini((units / f"10-netplan-{vlan}.network").read_text())
    assert network_unit["Match"] == [("Name", vlan)]
    assert ("MTUBytes", "1400") in network_unit["Link"]
    prefix = ipaddress.ip_network(network["vswitch_subnet_cidr"]).prefixlen
    assert ("Address", f"{node.private_ip}/{prefix}") in network_unit["Network"]
    assert ("Destination", network["network_cidr"]) in network_unit["Route"]
    assert ("Gateway", str(net.vswitch_gateway_ip)) in network_unit["Route"]
    # The VLAN hangs off the NIC the host already configures: networkd attaches it there.
    parent = ini((units / f"10-netplan-{node.interface}.network").read_text())
    assert ("VLAN", vlan) in parent["Network"]


def test_vswitch_netplan_alone_is_rejected_when_the_host_does_not_declare_the_nic(netplan: str,
                                                                                   tmp_path: Path) -> None:
    """netplan resolves `link:` only against interfaces defined in netplan itself. A node whose NIC is not
    in any /etc/netplan file (ifupdown, cloud-init elsewhere) cannot take the vSwitch file as is."""
    node = RunServer(name="run1", public_ip="198.51.100.21", private_ip="10.0.2.21", index=1, interface="enp0s31f6")
    rendered = muscle.netplan_vswitch(node, NetworkStackOutputs.parse(NETWORK))
    result = generate(netplan, tmp_path, {Path(muscle.NETPLAN_PATH).name: rendered})
    assert result.returncode != 0
    assert "interface 'enp0s31f6' is not defined" in result.stderr, result.stderr


# --------------------------------------------------------------------------------------------------
# daemon.json
# --------------------------------------------------------------------------------------------------

# What Coolify's installer writes (install.sh, v4): the 10.0.0.0/8 pool the merge must replace.
COOLIFY_DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "default-address-pools": [{"base": "10.0.0.0/8", "size": 24}],
}
SELECTOR = {"path": "/usr/local/lib/inkmcp/inkmcp-runtime",
            "runtimeArgs": ["--inkmcp-config=/etc/inkmcp/runtime-selector.json"]}
# Docker 20.10's daemon.json keys that InkMCP or Coolify write, with the JSON type dockerd unmarshals.
KNOWN_KEYS: dict[str, type | tuple[type, ...]] = {
    "iptables": bool, "no-new-privileges": bool, "log-driver": str, "log-opts": dict, "live-restore": bool,
    "default-address-pools": list, "mtu": int, "runtimes": dict, "default-runtime": str,
}


def merged_daemon_json(tmp_path: Path, **params: Any) -> Path:
    """Run the plan's own merge command on a staged root that holds Coolify's daemon.json."""
    plan = render_plan(HostParams(root=str(tmp_path / "root"), firewall=False, services=False, **params))
    for path, content in plan.files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
    target = Path(plan.daemon_json)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(COOLIFY_DAEMON_JSON))
    (merge,) = [c for c in plan.commands if "inkmcp-daemon-json" in c]
    r = subprocess.run(["sh", "-c", merge], capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"changed: {target}"
    return target


def whitelist_errors(doc: dict[str, Any]) -> list[str]:
    errors = [f"unknown key {k!r}" for k in doc if k not in KNOWN_KEYS]
    errors += [f"{k}: {type(v).__name__}" for k, v in doc.items()
               if k in KNOWN_KEYS and (not isinstance(v, KNOWN_KEYS[k]) or (KNOWN_KEYS[k] is int and v is True))]
    errors += [f"log-opts.{k} must be a string" for k, v in doc.get("log-opts", {}).items() if not isinstance(v, str)]
    for pool in doc.get("default-address-pools", []):
        if set(pool) != {"base", "size"} or not isinstance(pool["size"], int):
            errors.append(f"bad pool {pool}")
        ipaddress.ip_network(pool["base"])
    for name, rt in doc.get("runtimes", {}).items():
        if not set(rt) <= {"path", "runtimeArgs", "runtimeType", "options"}:
            errors.append(f"runtime {name}: unknown fields {set(rt)}")
    if doc.get("default-runtime") not in (None, "runc", *doc.get("runtimes", {})):
        errors.append(f"default-runtime {doc['default-runtime']!r} is not registered")
    return errors


def dockerd_check(path: Path, scratch: Path) -> tuple[bool, str]:
    """(accepted, output) from dockerd's own config loader; `require`s dockerd and root (skip or fail)."""
    require_root("dockerd's config loader runs only as root")
    dockerd = shutil.which("dockerd")
    require("dockerd", dockerd is not None, "no dockerd on PATH (Debian's docker.io)")
    assert dockerd is not None
    helptext = subprocess.run([dockerd, "--help"], capture_output=True, text=True, timeout=30, check=False).stdout
    if "--validate" in helptext:  # Docker 23+
        r = subprocess.run([dockerd, "--validate", "--config-file", str(path)], capture_output=True, text=True,
                           timeout=30, check=False)
        return r.returncode == 0 and "configuration OK" in r.stdout + r.stderr, r.stdout + r.stderr
    # Docker 20.10: load the file, then fail at the pidfile (under /proc, which cannot be created), before
    # containerd, networks or the API socket are touched. Data and exec roots point at scratch dirs anyway,
    # and a private mount namespace takes the bind mount 20.10 puts on its data root away when it exits.
    require("dockerd", shutil.which("unshare") is not None,
            "unshare (util-linux) missing: dockerd's config check would leave a mount behind")
    r = subprocess.run(
        ["unshare", "--mount", "--propagation", "private",
         dockerd, "--config-file", str(path), "--data-root", str(scratch / "data"), "--exec-root",
         str(scratch / "exec"), "--pidfile", "/proc/inkmcp-config-check/docker.pid", "-H",
         f"unix://{scratch}/docker.sock"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    out = r.stdout + r.stderr
    loaded = "failed to start daemon: mkdir /proc/inkmcp-config-check" in out
    return loaded and "unable to configure the Docker daemon" not in out, out


@pytest.mark.parametrize("gvisor", [False, True], ids=["hardening-only", "with-gvisor-selector"])
def test_rendered_daemon_json_passes_dockerd_and_whitelist(tmp_path: Path, gvisor: bool) -> None:
    params: dict[str, Any] = {"runtimes": {"inkmcp": SELECTOR}, "default_runtime": "inkmcp"} if gvisor else {}
    target = merged_daemon_json(tmp_path, **params)
    doc = json.loads(target.read_text())
    assert whitelist_errors(doc) == []
    assert doc["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]  # Coolify's 10/8 replaced
    assert doc["mtu"] == 1400 and doc["iptables"] is True and doc["live-restore"] is True
    assert (doc.get("default-runtime") == "inkmcp") is gvisor

    ok, out = dockerd_check(target, tmp_path)
    assert ok, out

    # The same check rejects what dockerd would refuse at boot (so "accepted" above means something).
    for bad in ({**doc, "inkmcp-unknown-key": 1}, {**doc, "log-opts": {"max-file": 3}},
                {**doc, "default-runtime": "runsc-missing"}):
        broken = tmp_path / "broken.json"
        broken.write_text(json.dumps(bad))
        assert whitelist_errors(bad) != []
        ok, out = dockerd_check(broken, tmp_path)
        assert not ok and "unable to configure the Docker daemon" in out, out
