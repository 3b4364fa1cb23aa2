"""The three example configs (`stacks/*/Pulumi.prod.yaml`) describe one platform, not three.

Review #11: the network and muscle examples both created `*.s1.apps`/`*.s2.apps` (Hetzner keeps one RRSet per
zone+name+type, so the second create fails), with different values, and the vSwitch addresses disagreed
(network .11/.12, muscle .21/.22); nothing cross-checked them. Here the three stack programs run under the
mocks on the shipped examples, chained through their real exports (tests/stacks/stack_chain.py), so every
cross-stack gate runs; then what no gate can see is compared directly. The negative tests put the old
inconsistencies back and show that they are refused.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from inkmcp.infra.factory_config import FactoryConfig
from inkmcp.infra.muscle_config import MuscleConfig
from inkmcp.infra.network_config import NetworkConfigError
from tests.stacks.pulumi_mocks import install
from tests.stacks.stack_chain import STACKS, example_config, example_configs, project_name, run_chain, run_stack

RRSET = "hcloud:index/zoneRrset:ZoneRrset"
#: Locations of the one network zone a Cloud Network can couple to a vSwitch in (docs.hetzner.com/cloud/networks).
EU_CENTRAL = {"fsn1", "nbg1", "hel1"}


@pytest.fixture(autouse=True)
def fresh_mocks() -> None:
    install()  # process-global: leave no other module's mocks behind


@pytest.fixture(scope="module")
def chain() -> dict[str, Any]:
    return run_chain(example_configs())


def key(stack: str, name: str) -> str:
    return f"{project_name(stack)}:{name}"


def test_the_examples_compose_into_one_platform(chain: dict[str, Any]) -> None:
    """All three programs run on the shipped examples, each gate passing on the previous stack's exports."""
    network, factory, muscle = chain["network"], chain["factory"], chain["muscle"]
    assert network.exports["zone_name"] == "example.com" and network.exports["network_zone"] == "eu-central"
    assert {s.name for s in factory.monitor.of_type("hcloud:index/server:Server")} == {
        "inkmcp-master", "inkmcp-build", "inkmcp-registry", "inkmcp-postgres"}
    assert muscle.exports["wildcards"] == {"run1": "*.s1.apps.example.com", "run2": "*.s2.apps.example.com"}


def test_one_owner_per_dns_record(chain: dict[str, Any]) -> None:
    """Review #11: no RRSet (zone, name, type) is created by two stacks; the muscle writes into the network's zone."""
    owners: dict[tuple[str, str, str], list[str]] = {}
    for stack in ("network", "muscle"):
        for r in chain[stack].monitor.of_type(RRSET):
            owners.setdefault((r.inputs["zone"], r.inputs["name"], r.inputs["type"]), []).append(stack)
    assert {k: v for k, v in owners.items() if len(v) > 1} == {}
    muscle_zones = {r.inputs["zone"] for r in chain["muscle"].monitor.of_type(RRSET)}
    assert muscle_zones == {chain["network"].exports["zone_name"]}
    assert {(n, t) for (_, n, t), v in owners.items() if v == ["muscle"]} == {("*.s1.apps", "A"), ("*.s2.apps", "A")}


def test_run_servers_are_the_attached_dedicated_servers(chain: dict[str, Any]) -> None:
    """Each run server is on the vSwitch under the same name and address; nothing attached is left unused."""
    attached = {(s["name"], s["vswitch_ip"]) for s in chain["network"].exports["dedicated_servers"]}
    run_servers = {(s["name"], s["privateIp"]) for s in example_config("muscle")[key("muscle", "runServers")]}
    assert run_servers == attached
    vswitch = ipaddress.ip_network(chain["network"].exports["vswitch_subnet_cidr"])
    assert all(ipaddress.ip_address(ip) in vswitch for _, ip in run_servers)


def test_factory_hosts_sit_in_the_cloud_subnet_and_location(chain: dict[str, Any]) -> None:
    cloud = ipaddress.ip_network(chain["network"].exports["cloud_subnet_cidr"])
    for name in ("master_private_ip", "build_private_ip"):
        assert ipaddress.ip_address(chain["factory"].exports[name]) in cloud, name
    registry_ip = chain["factory"].exports["registry_endpoint"].rsplit(":", 1)[0]
    assert ipaddress.ip_address(registry_ip) in cloud
    config = example_config("factory")
    assert chain["network"].exports["network_zone"] == "eu-central"
    assert config[key("factory", "location")] in EU_CENTRAL
    assert config[key("factory", "storageBox")]["location"] in EU_CENTRAL


def test_run_servers_get_no_operator_access_to_the_master() -> None:
    """The master's firewall admits operatorCidrs and controlPlaneCidrs to SSH and Coolify's API: a run server
    (tenant code runs there) inside those ranges would get both."""
    factory, muscle = example_config("factory"), example_config("muscle")
    trusted = [ipaddress.ip_network(c) for c in
               factory[key("factory", "operatorCidrs")] + factory[key("factory", "controlPlaneCidrs")]]
    for server in muscle[key("muscle", "runServers")]:
        ip = ipaddress.ip_address(server["publicIp"])
        assert not any(ip in net for net in trusted), (server["name"], ip)


def test_the_same_docker_pools_and_mtu_everywhere() -> None:
    """One address plan: the factory hosts and the run servers use the same Docker pools (outside the Cloud
    Network, checked by the gates), and the run servers' Docker MTU fits the vSwitch."""
    factory, muscle = example_config("factory"), example_config("muscle")
    assert factory[key("factory", "dockerAddressPools")] == muscle[key("muscle", "dockerAddressPools")]
    assert muscle[key("muscle", "dockerMtu")] <= 1400


def test_stack_references_name_the_projects() -> None:
    """The factory and muscle read the network stack, and the muscle the factory, by `<org>/<project>/<stack>`:
    the project parts must be the Pulumi.yaml names, and all three references the same org and stack."""
    factory, muscle = example_config("factory"), example_config("muscle")
    refs = [factory[key("factory", "networkStack")], muscle[key("muscle", "networkStack")],
            muscle[key("muscle", "factoryStack")]]
    parts = [r.split("/") for r in refs]
    assert all(len(p) == 3 for p in parts), refs
    assert [p[1] for p in parts] == [project_name("network"), project_name("network"), project_name("factory")]
    assert len({(p[0], p[2]) for p in parts}) == 1, refs


@pytest.mark.parametrize("stack", STACKS)
def test_every_example_key_is_one_the_program_reads(stack: str, chain: dict[str, Any]) -> None:
    """A key the program never reads (a typo, a removed setting) would be silently ignored by `pulumi up`."""
    config = example_config(stack)
    own = {k for k in config if k.startswith(project_name(stack) + ":")}
    assert own - chain[stack].keys_read == set()
    assert {k.split(":", 1)[0] for k in config} == {project_name(stack), "hcloud"}
    assert set(config["hcloud:token"]) == {"secure"}


def test_the_muscle_example_refuses_its_placeholder_image_ids() -> None:
    """The zero digests are placeholders: used as shipped, the stack stops and names the fix."""
    configs = example_configs(real_image_ids=False)
    with pytest.raises(Exception, match="is a placeholder; put the pinned image's real digest"):
        run_stack("muscle", configs["muscle"])


def test_example_models_are_the_documented_ones() -> None:
    """The examples pass the same models the programs use, without the engine (fast feedback for editors)."""
    factory, muscle = example_configs()["factory"], example_configs()["muscle"]

    def fields(config: dict[str, Any], stack: str) -> dict[str, Any]:
        prefix = project_name(stack) + ":"
        return {k.removeprefix(prefix): v for k, v in config.items()
                if k.startswith(prefix) and not (isinstance(v, dict) and set(v) == {"secure"})}

    FactoryConfig.model_validate(fields(factory, "factory"))
    MuscleConfig.model_validate(fields(muscle, "muscle"))


# --- the old inconsistencies are refused ---------------------------------------------------------------------


def test_a_run_server_wildcard_in_the_network_example_is_refused() -> None:
    configs = example_configs()
    network = configs["network"][key("network", "network")]
    network["dns"]["records"].append({"name": "*.s1.apps", "type": "A", "values": ["203.0.113.21"]})
    with pytest.raises(NetworkConfigError, match=r"'\*\.s1\.apps' is a run-server wildcard: the muscle stack owns it"):
        run_stack("network", configs["network"])


@pytest.mark.parametrize(("servers", "message"), [
    # The review's finding: network attached .11/.12 as s1/s2, the muscle used .21/.22.
    ([{"number": 1234567, "name": "s1", "vswitch_ip": "10.0.2.11"},
      {"number": 1234568, "name": "s2", "vswitch_ip": "10.0.2.12"}],
     r"run server run1: privateIp 10.0.2.21 is no vswitch_ip of the network stack's dedicated servers"),
    ([{"number": 1234567, "name": "s1", "vswitch_ip": "10.0.2.21"},
      {"number": 1234568, "name": "s2", "vswitch_ip": "10.0.2.22"}],
     r"run server run1: privateIp 10.0.2.21 belongs to dedicated server 's1'"),
])
def test_a_run_server_the_network_does_not_attach_is_refused(servers: list[dict[str, Any]], message: str) -> None:
    configs = example_configs()
    configs["network"][key("network", "network")]["vswitch"]["servers"] = servers
    with pytest.raises(Exception, match=message):
        run_chain(configs)


@pytest.mark.parametrize(("stack", "name", "message"), [
    ("factory", "networkStack", "network stack outputs break the contract"),
    ("muscle", "networkStack", "network stack outputs break the contract"),
    ("muscle", "factoryStack", "factory stack outputs lack what the muscle stack needs"),
])
def test_a_reference_to_another_stack_is_refused(stack: str, name: str, message: str) -> None:
    """A reference that names a different stack resolves to nothing, and the reader's gate says so."""
    configs = example_configs()
    configs[stack][key(stack, name)] = configs[stack][key(stack, name)].replace("/prod", "/staging")
    with pytest.raises(Exception, match=message):
        run_chain(configs)
