"""No config edit may send a protected resource into a replacement by accident (review #15, #20).

A replace-forcing input (ForceNew in the Terraform schema pulumi-hcloud bridges) that changes makes Pulumi
replace the resource; on a protected resource `pulumi up` then stops ("cannot replace protected resource").
That is right for what a resource *is* (its location, its range, its domain) and wrong for what changes
routinely (an operator's SSH key, the default image). So every registered resource is walked under the mocks,
with the options the engine would get (pulumi_mocks.RecordingMonitor records `ignoreChanges`,
`deleteBeforeReplace`, `replaceOnChanges` and `protect` from the RegisterResource request), and:

- a protected resource that sets a replace-forcing input must list it in `ignore_changes`, or the input must
  be in IDENTITY below with the reason the replacement is to stay refused;
- resources whose replacement is intended but cannot be create-before-delete (DELETE_FIRST) must set
  `delete_before_replace` and must not be protected;
- every resource type must be classified here, so a new resource cannot slip past;
- `ignore_changes` names only replace-forcing inputs (a misspelt path silently ignores nothing).

Where the table comes from. pulumi-hcloud 1.43.3 (requirements.lock) bridges terraform-provider-hcloud v1.68.0
(commit 93291f4960a2): its SDK has v1.68.0's load-balancer-type deprecation fields (44a81e1) and v1.67.0's
"datacenter ... marked for removal" text, and v1.68.0 is the newest release in the provider repository's
stored snapshot (2026-08-17); pulumi-hcloud's own snapshot (2026-07-24) still pinned v1.66.1, so 1.43.3 is
later. File:line below are ForceNew (SDKv2) or RequiresReplace (plugin framework) at that tag; between
v1.66.1 and v1.68.0 the only change was `Server.datacenter` losing ForceNew (we never set it).
pulumi-command 1.2.1 declares `triggers[*]` replace-on-changes in its SDK (remote/command.py,
copy_to_remote.py), recorded from the request. The Robot vSwitch is our dynamic provider: its
replace-forcing inputs are `vswitch_provider.REPLACE_ON`.
`test_table_matches_the_pinned_sdks` checks the table against the installed SDKs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pulumi_hcloud as hcloud
import pytest
from pulumi_command import remote

from inkmcp.infra import coolify_server_provider, factory
from inkmcp.infra.vswitch_provider import REPLACE_ON, VSwitchInputs
from tests.stacks.pulumi_mocks import Registered, install
from tests.stacks.stack_chain import example_configs, project_name, run_chain

TF = "terraform-provider-hcloud v1.68.0 internal/"
SERVER = "hcloud:index/server:Server"
VOLUME = "hcloud:index/volume:Volume"
NETWORK = "hcloud:index/network:Network"
SUBNET = "hcloud:index/networkSubnet:NetworkSubnet"
ROUTE = "hcloud:index/networkRoute:NetworkRoute"
SSH_KEY = "hcloud:index/sshKey:SshKey"
STORAGE_BOX = "hcloud:index/storageBox:StorageBox"
ZONE = "hcloud:index/zone:Zone"
VSWITCH = "pulumi-python:dynamic/robot:VSwitch"
COOLIFY_SERVER = "pulumi-python:dynamic/coolify:Server"
COMMAND, COPY = "command:remote:Command", "command:remote:CopyToRemote"

#: type -> {replace-forcing input (Pulumi name): where the provider says so}. Every type the stacks register.
REPLACE_FORCING: dict[str, dict[str, str]] = {
    SERVER: {"image": TF + "server/resource.go:58", "location": TF + "server/resource.go:70",
             "userData": TF + "server/resource.go:90", "sshKeys": TF + "server/resource.go:113"},
    VOLUME: {"location": TF + "volume/resource.go:46"},
    "hcloud:index/volumeAttachment:VolumeAttachment": {
        "volumeId": TF + "volume/resource_attachment.go:34", "serverId": TF + "volume/resource_attachment.go:39"},
    NETWORK: {"ipRange": TF + "network/resource.go:40"},
    SUBNET: {"networkId": TF + "network/resource_subnet.go:38", "type": TF + "network/resource_subnet.go:43",
             "networkZone": TF + "network/resource_subnet.go:53", "ipRange": TF + "network/resource_subnet.go:58",
             "vswitchId": TF + "network/resource_subnet.go:67"},
    ROUTE: {"networkId": TF + "network/resource_route.go:37", "destination": TF + "network/resource_route.go:42",
            "gateway": TF + "network/resource_route.go:47"},
    SSH_KEY: {"publicKey": TF + "sshkey/resource.go:72"},
    STORAGE_BOX: {"location": TF + "storagebox/resource.go:105", "sshKeys": TF + "storagebox/resource.go:121"},
    ZONE: {"name": TF + "zone/resource.go:81", "mode": TF + "zone/resource.go:88"},
    "hcloud:index/zoneRrset:ZoneRrset": {"zone": TF + "zonerrset/resource.go:88",
                                         "name": TF + "zonerrset/resource.go:102",
                                         "type": TF + "zonerrset/resource.go:109"},
    "hcloud:index/firewall:Firewall": {},  # internal/firewall/resource.go: nothing ForceNew
    "hcloud:index/placementGroup:PlacementGroup": {},  # internal/placementgroup/resource.go: nothing ForceNew
    VSWITCH: {k: "inkmcp/infra/vswitch_provider.py REPLACE_ON" for k in REPLACE_ON},
    # Coolify's record of a run server: nothing replaces it (a new IP is patched, so its apps stay on it).
    COOLIFY_SERVER: {k: "inkmcp/infra/coolify_server_provider.py REPLACE_ON"
                     for k in coolify_server_provider.REPLACE_ON},
    COMMAND: {"triggers": "pulumi-command 1.2.1 remote/command.py replace_on_changes=['triggers[*]']"},
    COPY: {"triggers": "pulumi-command 1.2.1 remote/copy_to_remote.py replace_on_changes=['triggers[*]']"},
}

#: Replace-forcing inputs of protected resources that stay replace-forcing on purpose: they are what the resource
#: is, a change means a different resource, and protect's refusal is the loud stop an operator must see.
IDENTITY: dict[str, dict[str, str]] = {
    SERVER: {"location": "a host in another location is a new host (and its volumes cannot follow)"},
    VOLUME: {"location": "volumes attach only within their location; moving one is copying the data"},
    NETWORK: {"ipRange": "a new network would detach every server and run server; the plan is decided once"},
    STORAGE_BOX: {"location": "a new box in another location starts without the backup history"},
    ZONE: {"name": "another domain is another zone (delegation at the registrar changes too)",
           "mode": "primary/secondary is how the zone is served, chosen at creation"},
    VSWITCH: {"base_url": "which Robot API; a different endpoint holds a different vSwitch"},
}

#: Replacement intended, but the old resource must go first: Hetzner refuses the new one beside the old.
DELETE_FIRST: dict[str, str] = {
    SUBNET: "the new range overlaps the old one, and a vSwitch couples to one subnet only",
    ROUTE: "a route to an overlapping destination is refused while the old one exists",
    SSH_KEY: "key names and fingerprints are unique per project",
}


def top(path: str) -> str:
    """The top-level property of a Pulumi property path (`triggers[*]` -> `triggers`, `a.b` -> `a`)."""
    return re.split(r"[.\[]", path, maxsplit=1)[0]


def violations(registered: Iterable[Registered]) -> list[str]:
    """Every way a registration breaks the rules in the module docstring, one readable line each."""
    found: list[str] = []
    for r in registered:
        if not r.custom or r.read:
            continue
        if r.type not in REPLACE_FORCING:
            found.append(f"{r.name}: type {r.type} is not classified in REPLACE_FORCING; add its replace-forcing "
                         "inputs from the provider schema")
            continue
        forcing = set(REPLACE_FORCING[r.type]) | {top(p) for p in r.replace_on_changes}
        ignored = {top(p) for p in r.ignore_changes}
        given = {k for k, v in r.inputs.items() if v is not None}
        if r.protect:
            for name in sorted(forcing & given - ignored - set(IDENTITY.get(r.type, {}))):
                where = REPLACE_FORCING[r.type].get(name, "replaceOnChanges")
                found.append(f"{r.name} ({r.type}) is protected and sets replace-forcing input {name!r} ({where}) "
                             "without ignore_changes: a change would try to replace it and pulumi up would stop")
        for name in sorted(ignored - forcing):
            found.append(f"{r.name}: ignore_changes names {name!r}, not a replace-forcing input of {r.type}")
        if r.type in DELETE_FIRST:
            if not r.delete_before_replace:
                found.append(f"{r.name} ({r.type}) needs delete_before_replace: {DELETE_FIRST[r.type]}")
            if r.protect:
                found.append(f"{r.name} ({r.type}) is replaced by design and must not be protected")
    return found


def chain_registrations(configs: dict[str, dict[str, Any]]) -> list[Registered]:
    runs = run_chain(configs)
    return [r for run in runs.values() for r in run.monitor.registered]


def with_routes_and_no_protect(protect: bool) -> dict[str, dict[str, Any]]:
    configs = example_configs()
    network = configs["network"][f"{project_name('network')}:network"]
    network["routes"] = [{"destination": "10.0.64.0/18", "gateway": "10.0.1.5"}]
    network["protect"] = protect
    configs["factory"][f"{project_name('factory')}:protect"] = protect
    return configs


@pytest.fixture(autouse=True)
def fresh_mocks() -> None:
    install()


@pytest.mark.parametrize("variant", ["examples", "with-routes", "unprotected"])
def test_no_config_edit_replaces_a_protected_resource(variant: str) -> None:
    """The walk over all three stacks, as shipped and with every optional resource (routes)."""
    configs = {"examples": example_configs, "with-routes": lambda: with_routes_and_no_protect(True),
               "unprotected": lambda: with_routes_and_no_protect(False)}[variant]()
    registered = chain_registrations(configs)
    types = {r.type for r in registered if r.custom}
    assert {SERVER, VOLUME, NETWORK, SUBNET, SSH_KEY, STORAGE_BOX, ZONE, VSWITCH, COMMAND, COPY} <= types
    assert (ROUTE in types) == (variant != "examples")
    protected = {r.type for r in registered if r.protect}
    assert protected == (set() if variant == "unprotected" else
                         {SERVER, VOLUME, NETWORK, STORAGE_BOX, ZONE, VSWITCH,
                          "hcloud:index/placementGroup:PlacementGroup"})
    assert violations(registered) == []


def test_the_walk_sees_the_options_the_engine_gets() -> None:
    """The rules are only as good as the recording: the request fields arrive, translated to schema names."""
    registered = chain_registrations(example_configs())
    servers = [r for r in registered if r.type == SERVER]
    assert servers and all(sorted(s.ignore_changes) == ["image", "sshKeys", "userData"] for s in servers)
    assert sorted(factory.SERVER_IGNORE_CHANGES) == ["image", "sshKeys", "userData"]
    assert all(r.delete_before_replace for r in registered if r.type == SUBNET)
    commands = [r for r in registered if r.type == COMMAND]
    assert commands and all(r.replace_on_changes == ["triggers[*]"] for r in commands)


# --- the guard itself fails on what it is meant to catch -----------------------------------------------------


def fake(type_: str, inputs: dict[str, Any], **opts: Any) -> Registered:
    return Registered(type=type_, name="r", urn=f"urn:{type_}::r", inputs=inputs, custom=True, **opts)


@pytest.mark.parametrize(("registration", "message"), [
    # Review #15: adding an operator key to a protected server.
    (fake(SERVER, {"sshKeys": ["1"], "image": "debian-12"}, protect=True, ignore_changes=["image"]),
     "is protected and sets replace-forcing input 'sshKeys' (terraform-provider-hcloud v1.68.0 "
     "internal/server/resource.go:113) without ignore_changes"),
    # Review #20: rotating the backup key of the protected Storage Box.
    (fake(STORAGE_BOX, {"sshKeys": ["ssh-ed25519 AAAA"], "location": "fsn1"}, protect=True),
     "sets replace-forcing input 'sshKeys'"),
    (fake(SUBNET, {"ipRange": "10.0.1.0/24"}), "needs delete_before_replace"),
    (fake(ROUTE, {"destination": "10.0.64.0/18"}, delete_before_replace=True, protect=True),
     "is replaced by design and must not be protected"),
    (fake(COMMAND, {"triggers": ["x"]}, protect=True, replace_on_changes=["triggers[*]"]),
     "sets replace-forcing input 'triggers'"),
    (fake("hcloud:index/floatingIp:FloatingIp", {"type": "ipv4"}), "is not classified in REPLACE_FORCING"),
    (fake(SERVER, {"sshKeys": ["1"]}, protect=True, ignore_changes=["ssh_keys", "sshKeys"]),
     "ignore_changes names 'ssh_keys', not a replace-forcing input"),
])
def test_the_guard_flags(registration: Registered, message: str) -> None:
    found = violations([registration])
    assert any(message in line for line in found), found


def test_the_guard_accepts_identity_and_unset_inputs() -> None:
    assert violations([fake(SERVER, {"location": "fsn1", "sshKeys": ["1"], "userData": None}, protect=True,
                            ignore_changes=["sshKeys"])]) == []
    assert violations([fake(SERVER, {"sshKeys": ["1"], "image": "debian-12"})]) == []  # not protected


# --- the table against the pinned SDKs -----------------------------------------------------------------------


def sdk_inputs(type_: str) -> dict[str, str]:
    """Pulumi input names of a type -> their SDK docstring, from the installed (pinned) SDK."""
    if type_ == VSWITCH:
        return {name: field.description or "" for name, field in VSwitchInputs.model_fields.items()}
    if type_ == COOLIFY_SERVER:
        fields = coolify_server_provider.CoolifyServerInputs.model_fields
        return {name: field.description or "" for name, field in fields.items()}
    args = getattr(remote if type_.startswith("command:") else hcloud, type_.rsplit(":", 1)[1] + "Args")
    return {prop.fget._pulumi_name: prop.fget.__doc__ or ""  # type: ignore[attr-defined]
            for prop in vars(args).values() if isinstance(prop, property) and hasattr(prop.fget, "_pulumi_name")}


@pytest.mark.parametrize("type_", sorted(REPLACE_FORCING))
def test_table_matches_the_pinned_sdks(type_: str) -> None:
    """Every listed input exists in the SDK, and every input whose SDK docstring says it replaces is listed."""
    inputs = sdk_inputs(type_)
    assert set(REPLACE_FORCING[type_]) <= set(inputs), set(REPLACE_FORCING[type_]) - set(inputs)
    says_replace = re.compile(r"forces? a replace|destroy and recreate", re.IGNORECASE)
    documented = {name for name, doc in inputs.items() if says_replace.search(doc)}
    assert documented <= set(REPLACE_FORCING[type_]), documented
    assert set(IDENTITY.get(type_, {})) <= set(REPLACE_FORCING[type_])
    assert set(REPLACE_FORCING[VSWITCH]) == set(REPLACE_ON)


def test_the_sdk_docstrings_still_name_the_two_documented_cases() -> None:
    """If an SDK upgrade drops these sentences, the docstring half of the check above goes blind: look again."""
    assert "destroy and recreate" in sdk_inputs(SERVER)["sshKeys"]
    assert "forces a replace" in sdk_inputs(STORAGE_BOX)["sshKeys"]
