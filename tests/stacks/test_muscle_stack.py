"""The muscle plane under Pulumi's mock runtime: per-node SSH steps, Coolify registration, DNS, bad config.

The host files come from the real hardening renderer (`inkmcp.nodes.render.render_plan`); what they must
contain (daemon.json runtimes, DOCKER-USER rules, gVisor selector) is checked in
test_muscle_hardening_contract.py.
"""

from __future__ import annotations

import json
import runpy
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pydantic import ValidationError

from inkmcp.infra import muscle
from inkmcp.infra.factory import gated_network, shell
from inkmcp.infra.factory_config import DockerPool, NetworkStackOutputs
from inkmcp.infra.muscle_config import (
    FactoryStackOutputs,
    MuscleConfig,
    MuscleSecrets,
    PlatformContainerSpec,
    RunServer,
)
from tests.stacks.pulumi_mocks import RecordingMonitor, install, is_secret, run, unwrap_secret

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICoolifyKeyForTestsOnly coolify"
NETWORK = {
    "network_id": 4711.0, "network_cidr": "10.0.0.0/16", "cloud_subnet_cidr": "10.0.1.0/24",
    "vswitch_subnet_cidr": "10.0.2.0/24", "vswitch_id": 99.0, "vlan_id": 4000.0, "zone_name": "example.com",
    "zone_id": "123",
    # What NetworkPlane.outputs() exports for the vSwitch (numbers arrive as floats through the engine).
    "dedicated_servers": [{"number": 1000000.0 + n, "name": f"run{n}", "vswitch_ip": f"10.0.2.{20 + n}"}
                          for n in range(1, 10)],
}
FACTORY = {"master_ipv4": "203.0.113.5", "master_private_ip": "10.0.1.10", "registry_endpoint": "10.0.1.12:5000"}
SSH_KEY, TOKEN = "SENTINEL-ssh-private-key", "SENTINEL-coolify-token"
PROXY_ID, SABLIER_ID = "sha256:" + "1a" * 32, "sha256:" + "2b" * 32
PLATFORM = [PlatformContainerSpec(name="coolify-proxy", image_ids=[PROXY_ID]),
            PlatformContainerSpec(name="sablier", image_ids=[SABLIER_ID])]
COMMAND, COPY, RRSET = "command:remote:Command", "command:remote:CopyToRemote", "hcloud:index/zoneRrset:ZoneRrset"


def node(n: int, **over: Any) -> RunServer:
    base: dict[str, Any] = {"name": f"run{n}", "public_ip": f"198.51.100.{20 + n}", "private_ip": f"10.0.2.{20 + n}",
                            "index": n, "interface": "enp0s31f6", "labels": {"tier": "standard"}}
    base.update(over)
    return RunServer(**base)


def make_conf(servers: list[RunServer] | None = None, **over: Any) -> MuscleConfig:
    base: dict[str, Any] = {
        "network_stack": "acme/inkmcp-network/prod", "factory_stack": "acme/inkmcp-factory/prod",
        "coolify_private_key_uuid": "key-uuid-1", "coolify_public_key": KEY,
        "run_servers": [node(1), node(2)] if servers is None else servers,
        "platform_containers": PLATFORM,
    }
    base.update(over)
    return MuscleConfig(**base)


def build(conf: MuscleConfig | None = None, network: dict[str, Any] | None = None) -> muscle.MusclePlane:
    conf = conf or make_conf()
    holder: dict[str, muscle.MusclePlane] = {}

    def program() -> Any:
        args = muscle.MusclePlaneArgs(
            conf=conf,
            secrets=MuscleSecrets(pulumi.Output.secret(SSH_KEY), pulumi.Output.secret(TOKEN)),
            network=gated_network(network or NETWORK, conf.check_against),
            factory=pulumi.Output.from_input(FACTORY).apply(FactoryStackOutputs.parse),
        )
        holder["plane"] = muscle.MusclePlane("muscle", args)
        return holder["plane"].wildcards

    run(program)
    return holder["plane"]


@pytest.fixture(autouse=True)
def monitor() -> RecordingMonitor:
    return install()


def plan_of(n: int = 1, conf: MuscleConfig | None = None) -> Any:
    return muscle.host_plan(conf or make_conf(), node(n), NetworkStackOutputs.parse(NETWORK))


def file_resource(n: int, path: str) -> str:
    return f"run-run{n}-file{path.replace('/', '-')}"


def short(urn: str) -> str:
    return urn.split("::")[-1]


def deps(r: Any) -> list[str]:
    return [short(d) for d in r.dependencies]


# --- graph ------------------------------------------------------------------------------------------


def test_graph_per_run_server(monitor: RecordingMonitor) -> None:
    build()
    counts: dict[str, int] = {}
    for t in monitor.types():
        counts[t] = counts.get(t, 0) + 1
    # per node: authorized-key, vswitch, harden, register, sablier; every file of the plan; 1 DNS record
    files = len(plan_of().files)
    assert files >= 13  # 9 hardening files + 4 of the gVisor selector
    assert counts == {"inkmcp:muscle:Plane": 1, "inkmcp:muscle:RunServer": 2, COMMAND: 10, COPY: 2 * files,
                      RRSET: 2}
    plane = monitor.by_name("muscle")
    for n in ("run1", "run2"):
        comp = monitor.by_name(f"run-{n}")
        assert comp.parent == plane.urn
        mine = [r for r in monitor.registered if r.name.startswith(f"run-{n}-")]
        assert len(mine) == 6 + files and all(r.parent == comp.urn for r in mine)
        assert not any(r.protect for r in mine)


def test_steps_run_in_order(monitor: RecordingMonitor) -> None:
    build()
    d = {r.name: deps(r) for r in monitor.registered}
    assert "run-run1-authorized-key" in d["run-run1-vswitch"]
    for path in plan_of().files:
        f = file_resource(1, path)
        assert "run-run1-vswitch" in d[f]
        assert f in d["run-run1-harden"]
    assert "run-run1-harden" in d["run-run1-register"]
    assert "run-run1-register" in d["run-run1-sablier"]
    # nodes are independent of each other
    assert not any(x.startswith("run-run2") for x in d["run-run1-register"] + d["run-run1-sablier"])


def test_ssh_targets(monitor: RecordingMonitor) -> None:
    build()
    for r in monitor.of_type(COMMAND) + monitor.of_type(COPY):
        conn = r.inputs["connection"]
        assert is_secret(conn)
        host = unwrap_secret(conn)["host"]
        if r.name.endswith("-register"):
            assert host == FACTORY["master_ipv4"], r.name  # registration runs on the Coolify master
        else:
            assert host == ("198.51.100.21" if r.name.startswith("run-run1") else "198.51.100.22"), r.name


def test_host_files_are_uploaded_and_reapplied_on_change(monitor: RecordingMonitor) -> None:
    build()
    plan = plan_of()
    mine = [r for r in monitor.of_type(COPY) if r.name.startswith("run-run1")]
    copies = {r.inputs["remotePath"]: r.inputs["source"] for r in mine}
    assert set(copies) == set(plan.files)
    for path, source in copies.items():
        assert isinstance(source, pulumi.StringAsset) and source.text == plan.files[path], path
    harden = monitor.by_name("run-run1-harden").inputs
    assert harden["create"] == shell(muscle.harden_script(plan))
    assert harden["triggers"] == [muscle.plan_digest(plan)]
    assert "harden.sh" not in harden["create"]  # the old, never-shipped entry point is gone
    # A changed allow-list (new proxy image) changes the uploaded config and re-triggers harden.
    newer = make_conf(platform_containers=[*PLATFORM, PlatformContainerSpec(name="coolify-sentinel",
                                                                           image_ids=["sha256:" + "3c" * 32])])
    assert muscle.plan_digest(plan_of(conf=newer)) != muscle.plan_digest(plan)


def test_dns_record_per_run_server(monitor: RecordingMonitor) -> None:
    plane = build()
    records = {r.inputs["name"]: r.inputs for r in monitor.of_type(RRSET)}
    assert set(records) == {"*.s1.apps", "*.s2.apps"}
    for idx in (1, 2):
        rec = records[f"*.s{idx}.apps"]
        assert rec["zone"] == "example.com" and rec["type"] == "A" and rec["ttl"] == 300
        assert [v["value"] for v in rec["records"]] == [f"198.51.100.{20 + idx}"]
    holder: dict[str, Any] = {}
    run(lambda: plane.wildcards.apply(lambda w: holder.update(w=w)))
    assert holder["w"] == {"run1": "*.s1.apps.example.com", "run2": "*.s2.apps.example.com"}


def test_registration_carries_wildcard_and_labels(monitor: RecordingMonitor) -> None:
    build()
    reg = monitor.by_name("run-run1-register").inputs
    assert "https://s1.apps.example.com" in reg["create"]
    assert '\\"labels\\": {\\"tier\\": \\"standard\\"}' in reg["create"] or '"tier": "standard"' in reg["create"]
    assert '"ip": "10.0.2.21"' in reg["create"] and '"private_key_uuid": "key-uuid-1"' in reg["create"]
    assert "DELETE" in reg["delete"] and "10.0.2.21" in reg["delete"]


def test_no_plaintext_secret_in_logged_commands(monitor: RecordingMonitor) -> None:
    build()
    for r in monitor.of_type(COMMAND) + monitor.of_type(COPY):
        for field in ("create", "update", "delete", "triggers", "source"):
            text = json.dumps(r.inputs.get(field), default=str)
            assert TOKEN not in text and SSH_KEY not in text, (r.name, field)
    stdin = monitor.by_name("run-run1-register").inputs["stdin"]
    assert is_secret(stdin) and unwrap_secret(stdin) == f"COOLIFY_API_TOKEN={TOKEN}\n"


def test_adding_a_node_leaves_the_others_alone(monitor: RecordingMonitor) -> None:
    build(make_conf([node(1)]))
    def snapshot(m: RecordingMonitor) -> dict[tuple[str, str], str]:
        return {(r.type, r.name): json.dumps(r.inputs, sort_keys=True, default=lambda a: getattr(a, "text", str(a)))
                for r in m.registered if r.name.startswith("run-run1")}

    one = snapshot(monitor)
    monitor2 = install()
    build(make_conf([node(1), node(3)]))
    two = snapshot(monitor2)
    assert one == two
    assert {r.inputs["name"] for r in monitor2.of_type(RRSET)} == {"*.s1.apps", "*.s3.apps"}


def test_no_run_servers_is_a_valid_plane(monitor: RecordingMonitor) -> None:
    build(make_conf([]))
    assert monitor.types() == ["inkmcp:muscle:Plane"]


# --- what this module renders ---------------------------------------------------------------------------


def test_netplan_vlan_fits_the_vswitch() -> None:
    net = NetworkStackOutputs.parse(NETWORK)
    doc = yaml.safe_load(muscle.netplan_vswitch(node(1), net))
    vlan = doc["network"]["vlans"]["vlan4000"]
    assert doc["network"]["version"] == 2
    assert vlan == {"id": 4000, "link": "enp0s31f6", "mtu": 1400, "addresses": ["10.0.2.21/24"],
                    "routes": [{"to": "10.0.0.0/16", "via": "10.0.2.1"}]}


def test_host_params_tell_the_renderer_the_plan() -> None:
    conf = make_conf()
    params = muscle.host_params(conf, node(1), NetworkStackOutputs.parse(NETWORK))
    assert params.root == "/" and params.apply_firewall and params.manage_services
    assert params.mtu == 1400
    assert params.daemon_address_pools() == [{"base": "172.30.0.0/16", "size": 24}]
    # The vSwitch subnet lies inside the Cloud Network: one blocked range, not two overlapping ones.
    assert [str(c) for c in params.private_cidrs] == ["10.0.0.0/16"]
    assert [str(a) for a in params.dns_resolvers] == ["185.12.64.1", "185.12.64.2"]
    assert params.ssh_allow_users == ["root"] and params.default_runtime == "inkmcp"
    assert params.gvisor is not None
    assert [(p.name, p.image_ids) for p in params.gvisor.platform] == [("coolify-proxy", [PROXY_ID]),
                                                                       ("sablier", [SABLIER_ID])]
    tuned = muscle.host_params(make_conf(hardening={"auto_reboot": True}, ssh_allow_users=["root", "ops"],
                                         runsc_flags=["--network=host", "--host-uds=none", "--platform=kvm"]),
                               node(1), NetworkStackOutputs.parse(NETWORK))
    assert tuned.auto_reboot and tuned.ssh_allow_users == ["root", "ops"]
    assert tuned.gvisor is not None and tuned.gvisor.runsc_flags[-1] == "--platform=kvm"


def test_sablier_script_adds_the_plugin_once(tmp_path: Path) -> None:
    """Run the proxy-editing part of the script for real against a Coolify-shaped compose file."""
    compose = tmp_path / "docker-compose.yml"
    compose.write_text(
        "services:\n  traefik:\n    command:\n      - '--providers.file.directory=/traefik/dynamic/'\n"
        "      - '--providers.file.watch=true'\n"
        "      - '--certificatesresolvers.letsencrypt.acme.httpchallenge=true'\n")
    script = muscle.sablier_script(make_conf())
    part = script[script.index("compose="):script.index('if [ "$changed" = 1 ]')]
    part = part.replace("compose=/data/coolify/proxy/docker-compose.yml", f"compose={compose}")
    for _ in range(2):  # idempotent: the second run changes nothing
        subprocess.run(["bash", "-euo", "pipefail", "-c", part], check=True, timeout=10)
    doc = yaml.safe_load(compose.read_text())
    cmd = doc["services"]["traefik"]["command"]
    assert cmd.count("--experimental.plugins.sablier.version=v1.3.0") == 1
    assert "--experimental.plugins.sablier.modulename=github.com/sablierapp/sablier-traefik-plugin" in cmd
    assert cmd.index("--providers.file.watch=true") < cmd.index("--experimental.plugins.sablier.version=v1.3.0")
    assert "--runtime runc" in script and "-v /var/run/docker.sock:/var/run/docker.sock" in script


# --- bad config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("servers", "message"), [
    ([node(1), node(1, public_ip="198.51.100.99", private_ip="10.0.2.99", index=9)], "share name run1"),
    ([node(1), node(2, public_ip="198.51.100.21")], "share public_ip 198.51.100.21"),
    ([node(1), node(2, private_ip="10.0.2.21")], "share private_ip 10.0.2.21"),
    ([node(1), node(2, index=1)], "share index 1"),
])
def test_run_server_listed_twice(servers: list[RunServer], message: str, monitor: RecordingMonitor) -> None:
    with pytest.raises(ValidationError, match=f"run server listed twice: run_servers.0. and run_servers.1. {message}"):
        make_conf(servers)
    assert monitor.registered == []


@pytest.mark.parametrize(("over", "message"), [
    ({"docker_mtu": 1500}, "less than or equal to 1400"),
    ({"docker_address_pools": [DockerPool(base="198.51.100.0/24", size=26)]}, "overlaps run1.public_ip"),
    ({"coolify_public_key": "nope"}, "OpenSSH public key"),
    ({"apps_subdomain": "Apps_"}, "DNS labels"),
    ({"platform_containers": PLATFORM[:1]}, "platformContainers lacks sablier"),
    ({"hardening": {"mtu": 1500}}, r"hardening.mtu is set by the muscle stack from dockerMtu"),
    ({"hardening": {"auto_rebot": True}}, r"hardening.auto_rebot is not a HostParams field"),
    ({"ssh_allow_users": ["ops"]}, "must include root"),
    ({"dns_resolvers": ["dns.example"]}, "valid IPv4"),
    ({"hardening_apply": "bash harden.sh"}, "Extra inputs"),  # the dead entry point is gone
])
def test_bad_config_fails_in_the_schema(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_conf(**over)


def test_bad_node_fields() -> None:
    with pytest.raises(ValidationError, match="lowercase DNS label"):
        node(1, name="Run_1")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        node(0)
    with pytest.raises(ValidationError, match="valid IPv4"):
        node(1, private_ip="10.0.2.300")


@pytest.mark.parametrize(("conf_over", "servers", "message"), [
    ({}, [node(1, private_ip="10.0.1.50")], "lies outside vswitch_subnet_cidr"),
    ({}, [node(1, private_ip="10.0.2.1")], "is the vSwitch subnet's gateway"),
    ({}, [node(1, private_ip="10.0.2.255")], "network/broadcast"),
    ({"docker_address_pools": [DockerPool(base="10.0.0.0/8")]}, [], "overlaps network_cidr"),
])
def test_bad_plan_across_stacks_creates_nothing(conf_over: dict[str, Any], servers: list[RunServer] | None,
                                                message: str, monitor: RecordingMonitor) -> None:
    conf = make_conf(servers, **conf_over)
    with pytest.raises(Exception):  # noqa: B017 - the engine wraps the ValueError; the message is checked below
        build(conf)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match=message):
        conf.check_against(NetworkStackOutputs.parse(NETWORK))


@pytest.mark.parametrize(("attached", "message"), [
    ([{"number": 1000001, "name": "run1", "vswitch_ip": "10.0.2.41"}],
     r"run server run1: privateIp 10.0.2.21 is no vswitch_ip of the network stack's dedicated servers "
     r"\(run1=10.0.2.41\); add the server"),
    ([{"number": 1000001, "name": "s1", "vswitch_ip": "10.0.2.21"}],
     r"privateIp 10.0.2.21 belongs to dedicated server 's1' \(Robot #1000001\) in the network stack"),
    ([], r"\(none with a vswitch_ip\)"),
    (None, "exports no dedicated_servers"),
])
def test_run_servers_must_be_attached_to_the_vswitch(attached: Any, message: str, monitor: RecordingMonitor) -> None:
    """Review #11: the muscle reads the network stack's dedicated_servers; a run server the vSwitch does not
    carry (or carries under another name) is refused before anything is created."""
    network = {**NETWORK, "dedicated_servers": attached}
    conf = make_conf([node(1)])
    with pytest.raises(Exception):  # noqa: B017 - wrapped by the engine
        build(conf, network)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match=message):
        conf.check_against(NetworkStackOutputs.parse(network))
    make_conf([]).check_against(NetworkStackOutputs.parse(network))  # no run servers: nothing to check


def test_an_unnamed_attachment_at_the_right_address_is_enough() -> None:
    network = {**NETWORK, "dedicated_servers": [{"number": 1000001, "name": None, "vswitch_ip": "10.0.2.21"}]}
    make_conf([node(1)]).check_against(NetworkStackOutputs.parse(network))


def test_runsc_path_reaches_the_selector_config() -> None:
    """Review #18: runsc installed outside /usr/bin (a manual install) is configurable, and the harden step's
    presence check and the selector both use it."""
    plan = plan_of(conf=make_conf(runsc_path="/usr/local/bin/runsc"))
    assert json.loads(plan.files["/etc/inkmcp/runtime-selector.json"])["runsc"] == "/usr/local/bin/runsc"
    assert any("[ -x /usr/local/bin/runsc ]" in c for c in plan.commands)
    with pytest.raises(ValueError, match="not the selector"):
        muscle.host_params(make_conf(runsc_path="/usr/local/sbin/runc"), node(1), NetworkStackOutputs.parse(NETWORK))


def test_run_servers_need_the_dns_zone(monitor: RecordingMonitor) -> None:
    conf, no_zone = make_conf(), {**NETWORK, "zone_name": None, "zone_id": None}
    with pytest.raises(Exception):  # noqa: B017 - wrapped by the engine
        build(conf, no_zone)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match="exports no zone_name"):
        conf.check_against(NetworkStackOutputs.parse(no_zone))
    make_conf([]).check_against(NetworkStackOutputs.parse(no_zone))  # no nodes, no zone needed


def test_factory_outputs_missing_is_named() -> None:
    with pytest.raises(ValueError, match="factory stack outputs lack"):
        FactoryStackOutputs.parse({"master_ipv4": "203.0.113.5"})


# --- the stack program -----------------------------------------------------------------------------------


def test_stack_program_composes_from_config(monitor: RecordingMonitor) -> None:
    monitor.mocks.stack_outputs.update({  # type: ignore[attr-defined]
        "acme/inkmcp-network/prod": NETWORK, "acme/inkmcp-factory/prod": FACTORY})
    values = {
        "networkStack": "acme/inkmcp-network/prod", "factoryStack": "acme/inkmcp-factory/prod",
        "coolifyPrivateKeyUuid": "key-uuid-1", "coolifyPublicKey": KEY,
        "runServers": [{"name": "run1", "publicIp": "198.51.100.21", "privateIp": "10.0.2.21", "index": 1,
                        "interface": "enp0s31f6", "labels": {"tier": "standard"}}],
        "platformContainers": [{"name": "coolify-proxy", "imageIds": [PROXY_ID]},
                               {"name": "sablier", "imageIds": [SABLIER_ID]}],
        "sshPrivateKey": SSH_KEY, "coolifyApiToken": TOKEN,
    }
    pulumi.runtime.set_all_config(
        {f"inkmcp:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()},
        ["inkmcp:sshPrivateKey", "inkmcp:coolifyApiToken"])
    run(lambda: runpy.run_path(str(ROOT / "stacks/muscle/__main__.py")))
    assert len([r for r in monitor.registered if r.type == "pulumi:pulumi:StackReference"]) == 2
    assert [r.inputs["name"] for r in monitor.of_type(RRSET)] == ["*.s1.apps"]
    assert PROXY_ID in json.dumps(monitor.by_name(file_resource(1, "/etc/inkmcp/runtime-selector.json")).inputs,
                                  default=lambda a: getattr(a, "text", str(a)))


def test_every_muscle_script_passes_shellcheck(tmp_path: Path) -> None:
    from tests.stacks.test_factory_stack import assert_shellcheck_clean

    conf, net = make_conf(), NetworkStackOutputs.parse(NETWORK)
    assert_shellcheck_clean({
        "authorized_key": muscle.authorized_key_script(KEY),
        "vswitch": muscle.vswitch_script(muscle.netplan_vswitch(node(1), net)),
        "register": muscle.register_script(conf, node(1), "example.com"),
        "unregister": muscle.unregister_script(node(1)),
        "sablier": muscle.sablier_script(conf),
        "harden": muscle.harden_script(plan_of()),
    }, tmp_path)
    # The plan's commands, which harden_script wraps in `sh -c` strings shellcheck cannot see into.
    assert_shellcheck_clean({f"cmd{i}": c for i, c in enumerate(plan_of().commands)}, tmp_path)
