"""The network plane under Pulumi's mock runtime: resource graph, wiring, outputs, and config validation.

Mocks are process-global (other stack tests share the process), so each test installs its own in an
autouse fixture and builds the component inside the test.
"""

from __future__ import annotations

import asyncio
import json
import runpy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pulumi
import pytest

from inkmcp.infra.network import NetworkPlane
from inkmcp.infra.network_config import NetworkConfig, NetworkConfigError, txt_value
from tests.stacks import pulumi_mocks
from tests.stacks.pulumi_mocks import RecordingMonitor, is_secret, unwrap_secret

STACK_MAIN = Path(__file__).resolve().parents[2] / "stacks" / "network" / "__main__.py"
VSWITCH_TYPE = "pulumi-python:dynamic/robot:VSwitch"
ROBOT_ID = 50042

BASE: dict[str, Any] = {
    "vswitch": {"name": "inkmcp", "vlan": 4010, "servers": [
        {"number": 1234567, "name": "s1", "vswitch_ip": "10.0.2.11"},
        {"number": 1234568, "name": "s2"},
    ]},
    "routes": [{"destination": "10.0.64.0/18", "gateway": "10.0.1.5"}],
    "dns": {"zone": "Example.COM.", "records": [
        {"name": "@", "type": "A", "values": ["203.0.113.10"]},
        {"name": "*.preview", "type": "A", "values": ["203.0.113.21"], "ttl": 300},
        {"name": "@", "type": "TXT", "values": ["v=spf1 -all"]},
    ]},
}


def robot_state(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """What the dynamic provider would report after create (the mock runtime never calls it)."""
    if args.typ == VSWITCH_TYPE:
        return {"vswitch_id": ROBOT_ID, "cloud_networks": []}
    if args.typ == "hcloud:index/zone:Zone":  # computed by Hetzner at creation
        return {"authoritativeNameservers": {"assigneds": ["hydrogen.ns.hetzner.com.", "oxygen.ns.hetzner.com."]}}
    return {}


class NetworkMocks(pulumi_mocks.RecordingMocks):
    """The shared mocks, pinned to numeric ids (hcloud ids are numbers and the components call int() on them)."""

    def __init__(self) -> None:
        super().__init__(extra_state=robot_state)
        self._counter = 7000

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[str, Any]]:
        id_, state = super().new_resource(args)
        if id_ is not None and not id_.isdigit() and args.typ != pulumi_mocks.STACK_REFERENCE:
            self._counter += 1
            id_ = str(self._counter)
        return id_, state


def install(monitor_cls: type[RecordingMonitor] = RecordingMonitor) -> RecordingMonitor:
    """Fresh mocks; a loop set first if none is (as tests/stacks/pulumi_mocks.install: a pytest-asyncio test that
    ran before on the same worker leaves none, and Pulumi's mocks need one: CI run 58, three workers)."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    mon = monitor_cls(NetworkMocks())
    pulumi.runtime.set_mocks(mon.mocks, project="inkmcp", stack="test", preview=False, monitor=mon)
    return mon


@pytest.fixture(autouse=True)
def monitor() -> Iterator[RecordingMonitor]:
    mon = install()
    pulumi.runtime.set_all_config({})
    yield mon
    pulumi.runtime.set_all_config({})


def run(build: Callable[[], Any]) -> Any:
    """Run ``build`` inside the mock runtime; return what its returned Output resolved to."""
    box: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> Any:
        result = build()
        if isinstance(result, dict):
            return pulumi.Output.all(**result).apply(lambda v: box.update(value=v))
        box["value"] = result
        return None

    program()
    return box.get("value")


def build_plane(raw: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    plane = NetworkPlane("inkmcp", NetworkConfig.parse(BASE if raw is None else raw), **kw)
    return plane.outputs()


# --- the graph ------------------------------------------------------------------------------------


def test_resource_graph_types_counts_and_parents(monitor):
    run(lambda: build_plane(robot_user="u", robot_password="p"))

    types = monitor.types()
    assert types.count("inkmcp:network:NetworkPlane") == 1
    assert types.count("inkmcp:network:PrivateNetwork") == 1
    assert types.count("inkmcp:network:DnsZone") == 1
    assert types.count(VSWITCH_TYPE) == 1
    assert types.count("hcloud:index/network:Network") == 1
    assert types.count("hcloud:index/networkSubnet:NetworkSubnet") == 2
    assert types.count("hcloud:index/networkRoute:NetworkRoute") == 1
    assert types.count("hcloud:index/zone:Zone") == 1
    assert types.count("hcloud:index/zoneRrset:ZoneRrset") == 3
    assert len(types) == 12

    plane = monitor.of_type("inkmcp:network:NetworkPlane")[0]
    private = monitor.of_type("inkmcp:network:PrivateNetwork")[0]
    dns = monitor.of_type("inkmcp:network:DnsZone")[0]
    assert monitor.of_type(VSWITCH_TYPE)[0].parent == plane.urn
    assert private.parent == plane.urn and dns.parent == plane.urn
    for r in monitor.registered:
        if r.type.startswith("hcloud:index/network"):
            assert r.parent == private.urn, r.name
        if r.type.startswith("hcloud:index/zone"):
            assert r.parent == dns.urn, r.name


def test_protect_flags_follow_config(monitor):
    run(build_plane)
    protected = sorted(r.type for r in monitor.registered if r.protect)
    assert protected == sorted([VSWITCH_TYPE, "hcloud:index/network:Network", "hcloud:index/zone:Zone"])
    assert monitor.of_type("hcloud:index/network:Network")[0].inputs["deleteProtection"] is True

    unprotected = install()
    run(lambda: build_plane({**BASE, "protect": False}))
    assert not any(r.protect for r in unprotected.registered)


def test_cidr_edits_replace_subnets_and_routes_delete_first(monitor):
    """Review #15: every subnet and route input is replace-forcing (terraform-provider-hcloud v1.68.0
    internal/network/resource_subnet.go, resource_route.go); create-before-delete would put an overlapping range
    (or a second coupling of the vSwitch) next to the old one, which the Cloud API refuses."""
    run(build_plane)
    replaced = monitor.of_type("hcloud:index/networkSubnet:NetworkSubnet") + \
        monitor.of_type("hcloud:index/networkRoute:NetworkRoute")
    assert len(replaced) == 3
    for r in replaced:
        assert r.delete_before_replace and not r.protect and not r.ignore_changes, r.name
    # The protected network, zone and vSwitch ignore nothing: their replace-forcing inputs are what they are,
    # so an edit there must stay a replacement that protect refuses.
    for t in ("hcloud:index/network:Network", "hcloud:index/zone:Zone", VSWITCH_TYPE):
        (r,) = monitor.of_type(t)
        assert r.protect and not r.ignore_changes and not r.delete_before_replace, t


def test_network_in_eu_central_with_cloud_and_vswitch_subnets_wired_to_the_robot_id(monitor):
    run(build_plane)
    network = monitor.of_type("hcloud:index/network:Network")[0]
    assert network.inputs["ipRange"] == "10.0.0.0/16" and network.inputs["exposeRoutesToVswitch"] is True
    subnets = {r.inputs["type"]: r for r in monitor.of_type("hcloud:index/networkSubnet:NetworkSubnet")}
    assert set(subnets) == {"cloud", "vswitch"}
    assert {s.inputs["networkZone"] for s in subnets.values()} == {"eu-central"}
    assert subnets["cloud"].inputs["ipRange"] == "10.0.1.0/24"
    assert "vswitchId" not in subnets["cloud"].inputs
    vswitch_subnet = subnets["vswitch"]
    assert vswitch_subnet.inputs["ipRange"] == "10.0.2.0/24"
    assert int(vswitch_subnet.inputs["vswitchId"]) == ROBOT_ID
    robot = monitor.of_type(VSWITCH_TYPE)[0]
    assert robot.urn in vswitch_subnet.dependencies, "the coupling must wait for the vSwitch and its servers"
    assert network.urn in vswitch_subnet.dependencies
    assert int(subnets["cloud"].inputs["networkId"]) == int(vswitch_subnet.inputs["networkId"])


def test_vswitch_inputs_vlan_servers_and_secret_credentials(monitor):
    run(lambda: build_plane(robot_user="robot-user", robot_password="hunter2"))
    robot = monitor.of_type(VSWITCH_TYPE)[0].inputs
    assert int(robot["vlan"]) == 4010 and 4000 <= int(robot["vlan"]) <= 4091
    assert [int(s) for s in robot["servers"]] == [1234567, 1234568]
    assert is_secret(robot["robot_password"]) and unwrap_secret(robot["robot_password"]) == "hunter2"
    assert is_secret(robot["robot_user"])
    assert "hunter2" not in json.dumps(robot["__provider"], default=str)


class SecretOutputsMonitor(RecordingMonitor):
    """Also keeps additionalSecretOutputs, which RecordingMonitor does not record."""

    def __init__(self, mocks: pulumi_mocks.RecordingMocks) -> None:
        super().__init__(mocks)
        self.secret_outputs: dict[str, list[str]] = {}

    def RegisterResource(self, request: Any) -> Any:  # gRPC method name
        self.secret_outputs[request.type] = list(request.additionalSecretOutputs)
        return super().RegisterResource(request)


def test_robot_credentials_stay_secret_in_state():
    mon = install(SecretOutputsMonitor)
    assert isinstance(mon, SecretOutputsMonitor)
    run(lambda: build_plane(robot_user="u", robot_password="p"))
    assert sorted(mon.secret_outputs[VSWITCH_TYPE]) == ["robot_password", "robot_user"]


def test_routes_depend_on_both_subnets(monitor):
    run(build_plane)
    (route,) = monitor.of_type("hcloud:index/networkRoute:NetworkRoute")
    assert route.inputs["destination"] == "10.0.64.0/18" and route.inputs["gateway"] == "10.0.1.5"
    subnet_urns = {s.urn for s in monitor.of_type("hcloud:index/networkSubnet:NetworkSubnet")}
    assert subnet_urns <= set(route.dependencies)


def test_dns_zone_and_rrsets(monitor):
    run(build_plane)
    zone = monitor.of_type("hcloud:index/zone:Zone")[0].inputs
    assert zone["name"] == "example.com" and zone["mode"] == "primary" and int(zone["ttl"]) == 3600
    rrsets = {(r.inputs["name"], r.inputs["type"]): r.inputs
              for r in monitor.of_type("hcloud:index/zoneRrset:ZoneRrset")}
    assert set(rrsets) == {("@", "A"), ("*.preview", "A"), ("@", "TXT")}
    assert rrsets[("*.preview", "A")]["records"] == [{"value": "203.0.113.21"}]
    assert int(rrsets[("*.preview", "A")]["ttl"]) == 300
    assert rrsets[("@", "TXT")]["records"] == [{"value": '"v=spf1 -all"'}]
    assert {r["zone"] for r in rrsets.values()} == {"example.com"}


def test_no_dns_section_means_no_zone(monitor):
    raw = {k: v for k, v in BASE.items() if k != "dns"}
    outputs = run(lambda: build_plane(raw))
    assert not monitor.of_type("hcloud:index/zone:Zone")
    assert outputs["zone_id"] is None and outputs["zone_name"] is None


def test_outputs_for_other_stacks(monitor):
    outputs = run(build_plane)
    assert outputs["network_zone"] == "eu-central"
    assert outputs["vswitch_id"] == ROBOT_ID and outputs["vlan_id"] == 4010
    assert (outputs["cloud_subnet_cidr"], outputs["vswitch_subnet_cidr"]) == ("10.0.1.0/24", "10.0.2.0/24")
    assert outputs["network_cidr"] == "10.0.0.0/16"
    assert outputs["vswitch_gateway"] == "10.0.2.1" and outputs["cloud_gateway"] == "10.0.0.1"
    assert isinstance(outputs["network_id"], int)
    assert outputs["zone_name"] == "example.com" and outputs["zone_id"]
    assert outputs["dedicated_servers"][0] == {"number": 1234567, "name": "s1", "vswitch_ip": "10.0.2.11"}
    assert outputs["routes"] == [{"destination": "10.0.64.0/18", "gateway": "10.0.1.5"}]
    # What the runbook tells the operator to delegate the domain to.
    assert outputs["zone_nameservers"] == ["hydrogen.ns.hetzner.com.", "oxygen.ns.hetzner.com."]


# --- the stack program ------------------------------------------------------------------------------


def run_stack(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Run stacks/network/__main__.py under the mocks; return its exports, resolved."""
    exported: dict[str, Any] = {}
    monkeypatch.setattr(pulumi, "export", lambda key, value: exported.__setitem__(key, value))

    def program() -> dict[str, Any]:
        runpy.run_path(str(STACK_MAIN))
        return exported

    return run(program)


def set_stack_config(network: dict[str, Any] | None, secrets: bool = True) -> None:
    project = pulumi.get_project()
    config = {f"{project}:network": json.dumps(network)} if network is not None else {}
    if secrets:
        config |= {f"{project}:robotUser": "robot-user", f"{project}:robotPassword": "hunter2"}
    pulumi.runtime.set_all_config(config, [f"{project}:robotUser", f"{project}:robotPassword"])


def test_stack_program_composes_the_plane_from_config(monitor, monkeypatch):
    set_stack_config(BASE)
    exports = run_stack(monkeypatch)
    assert len(monitor.of_type("inkmcp:network:NetworkPlane")) == 1
    robot = monitor.of_type(VSWITCH_TYPE)[0].inputs
    assert is_secret(robot["robot_password"]) and unwrap_secret(robot["robot_password"]) == "hunter2"
    assert {"network_id", "network_cidr", "cloud_subnet_cidr", "vswitch_subnet_cidr", "vswitch_id", "vlan_id",
            "zone_id", "zone_name", "network_zone"} <= set(exports)
    assert exports["vswitch_id"] == ROBOT_ID and exports["vlan_id"] == 4010 and exports["zone_name"] == "example.com"
    assert "hunter2" not in json.dumps(exports, default=str) and "robot-user" not in json.dumps(exports, default=str)


def test_stack_program_with_defaults_only(monitor, monkeypatch):
    set_stack_config(None, secrets=False)
    exports = run_stack(monkeypatch)
    assert exports["network_zone"] == "eu-central" and exports["zone_id"] is None
    robot = monitor.of_type(VSWITCH_TYPE)[0].inputs
    assert "robot_password" not in robot, "no secret input: the provider reads the env vars at call time"
    assert int(robot["vlan"]) == 4000


def test_exports_satisfy_the_consumers_contract(monitor):
    """The factory/muscle stacks validate these outputs with NetworkStackOutputs; keep the two in step."""
    factory_config = pytest.importorskip("inkmcp.infra.factory_config")
    outputs = run(build_plane)
    # Through a StackReference integers arrive as floats.
    wire = {k: float(v) if isinstance(v, int) and not isinstance(v, bool) else v for k, v in outputs.items()}
    parsed = factory_config.NetworkStackOutputs.model_validate(wire)
    assert (parsed.vswitch_id, parsed.vlan_id, parsed.zone_name) == (ROBOT_ID, 4010, "example.com")


BAD_CONFIGS = {
    "overlapping subnets": ({"vswitch_subnet": "10.0.1.128/25"}, "cloud_subnet (10.0.1.0/24) overlaps vswitch_subnet"),
    "subnet outside network": ({"cloud_subnet": "10.1.0.0/24"}, "cloud_subnet (10.1.0.0/24) must lie inside ip_range"),
    "route overlapping subnet": ({"routes": [{"destination": "10.0.2.0/23", "gateway": "10.0.1.5"}]},
                                 "overlaps routes[0].destination"),
    "route gateway outside": ({"routes": [{"destination": "10.0.64.0/18", "gateway": "192.168.1.1"}]},
                              "routes[0].gateway"),
    "public ip range": ({"ip_range": "100.64.0.0/16"}, "private IPv4"),
    "vlan too low": ({"vswitch": {"vlan": 3999}}, "network.vswitch.vlan: VLAN must be 4000-4091"),
    "vlan too high": ({"vswitch": {"vlan": 4092}}, "got 4092"),
    "wrong zone": ({"network_zone": "us-east"}, "network zone must be 'eu-central'"),
    "server twice": ({"vswitch": {"servers": [{"number": 7}, {"number": 8}, {"number": 7}]}},
                     "server 7 listed more than once"),
    "server ip outside vswitch subnet": ({"vswitch": {"servers": [{"number": 7, "vswitch_ip": "10.0.1.9"}]}},
                                         "must be a host address inside vswitch_subnet"),
    "server ip is the gateway": ({"vswitch": {"servers": [{"number": 7, "vswitch_ip": "10.0.2.1"}]}},
                                 "other than its gateway 10.0.2.1"),
    "not a cidr": ({"ip_range": "10.0.0.1/16"}, "is not a network CIDR"),
    "typo key": ({"vswich": {}}, "network.vswich: Extra inputs are not permitted"),
    "duplicate rrset": ({"dns": {"zone": "example.com", "records": [
        {"name": "a", "type": "A", "values": ["203.0.113.1"]}, {"name": "a", "type": "A", "values": ["203.0.113.2"]}]}},
        "a A given more than once"),
    "bad zone": ({"dns": {"zone": "localhost"}}, "is not a domain name"),
    # Review #11: the muscle stack owns *.sN.<appsSubdomain>; the same RRSet here makes one of the creates fail.
    "run-server wildcard": ({"dns": {"zone": "example.com", "records": [
        {"name": "*.s1.apps", "type": "A", "values": ["203.0.113.21"]}]}},
        "'*.s1.apps' is a run-server wildcard: the muscle stack owns it"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_fails_clearly_before_anything_is_created(monitor, monkeypatch, case):
    override, message = BAD_CONFIGS[case]
    set_stack_config({**BASE, **override})
    with pytest.raises(NetworkConfigError) as err:
        run_stack(monkeypatch)
    assert message in str(err.value)
    assert monitor.registered == [], "validation must fail before any resource is registered"


def test_config_defaults_are_valid_and_coupleable():
    config = NetworkConfig.parse({})
    assert config.network_zone == "eu-central" and 4000 <= config.vswitch.vlan <= 4091
    assert config.vswitch_gateway == "10.0.2.1"


def test_txt_values_are_quoted_in_255_char_strings():
    assert txt_value("hello") == '"hello"'
    assert txt_value('"already"') == '"already"'
    long = txt_value("x" * 300)
    assert long == '"' + "x" * 255 + '" "' + "x" * 45 + '"'
