"""Run the three stack programs (`stacks/*/__main__.py`) under the mocks, chained through their exports.

Why: each stack reads the one before it through a StackReference. Feeding the network program's real exports
into the factory's StackReference, and both into the muscle's, is what a `pulumi up` of the example configs
would see, short of the Pulumi CLI (not installable here). Every cross-stack gate (`gated_network`,
`check_against`, `FactoryStackOutputs.parse`) runs on the way. Used by test_example_configs.py and
test_replacement_guard.py.
"""

from __future__ import annotations

import copy
import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi.config
import yaml

from tests.stacks.pulumi_mocks import RecordingMocks, RecordingMonitor, run

ROOT = Path(__file__).resolve().parents[2]
STACKS = ("network", "factory", "muscle")
VSWITCH_TYPE = "pulumi-python:dynamic/robot:VSwitch"
ROBOT_ID = 50042
#: Stand-ins for the muscle example's placeholder image IDs, which the config refuses on purpose.
FAKE_PROXY_DIGEST, FAKE_SABLIER_DIGEST = "sha256:" + "1a" * 32, "sha256:" + "2b" * 32


@dataclass
class StackRun:
    """One stack program's run: its project, resolved exports, registrations and the config keys it read."""

    stack: str
    project: str
    exports: dict[str, Any]
    monitor: RecordingMonitor
    keys_read: set[str] = field(default_factory=set)


def project_name(stack: str) -> str:
    """The project name in `stacks/<stack>/Pulumi.yaml`: the namespace of its config keys."""
    return str(yaml.safe_load((ROOT / "stacks" / stack / "Pulumi.yaml").read_text())["name"])


def example_config(stack: str) -> dict[str, Any]:
    """The `config:` block of `stacks/<stack>/Pulumi.prod.yaml`, as shipped."""
    return dict(yaml.safe_load((ROOT / "stacks" / stack / "Pulumi.prod.yaml").read_text())["config"])


def example_configs(*, real_image_ids: bool = True) -> dict[str, dict[str, Any]]:
    """All three examples; `real_image_ids` swaps the muscle's zero placeholder digests for well-formed fakes."""
    configs = {stack: example_config(stack) for stack in STACKS}
    if real_image_ids:
        key = f"{project_name('muscle')}:platformContainers"
        fakes = {"proxy": FAKE_PROXY_DIGEST, "sablier": FAKE_SABLIER_DIGEST}
        configs["muscle"][key] = [{**entry, "images": [ref.rsplit("@", 1)[0] + "@" + fakes[entry["profile"]]
                                                       for ref in entry["images"]]}
                                  for entry in configs["muscle"][key]]
    return copy.deepcopy(configs)


def engine_config(config: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """Pulumi.<stack>.yaml values as the engine hands them to a program: strings as they are, everything else
    as JSON; `secure:` values become secret config (their placeholder text stands in for the ciphertext)."""
    values: dict[str, str] = {}
    secrets: list[str] = []
    for key, value in config.items():
        if isinstance(value, dict) and set(value) == {"secure"}:
            values[key] = str(value["secure"])
            secrets.append(key)
        else:
            values[key] = value if isinstance(value, str) else json.dumps(value)
    return values, secrets


def wire(value: Any) -> Any:
    """A value as it arrives through a StackReference: integers become floats."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        return {k: wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire(v) for v in value]
    return value


def _robot_state(args: pulumi.runtime.MockResourceArgs) -> dict[str, Any]:
    """What the Robot vSwitch provider would report after create (the mock runtime never calls it)."""
    return {"vswitch_id": ROBOT_ID, "cloud_networks": []} if args.typ == VSWITCH_TYPE else {}


def run_stack(stack: str, config: dict[str, Any], references: dict[str, dict[str, Any]] | None = None) -> StackRun:
    """Run `stacks/<stack>/__main__.py` with `config` (Pulumi.<stack>.yaml shape) and StackReference outputs
    `references` (fully qualified stack name -> exports); return what it exported, resolved."""
    project = project_name(stack)
    mocks = RecordingMocks({name: wire(out) for name, out in (references or {}).items()}, extra_state=_robot_state)
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project=project, stack="prod", preview=False, monitor=monitor)
    values, secrets = engine_config(config)
    pulumi.runtime.set_all_config(values, secrets)

    exported: dict[str, Any] = {}
    keys_read: set[str] = set()
    box: dict[str, Any] = {}
    original_export, original_get_config = pulumi.export, pulumi.config.get_config

    def record_read(full_key: str) -> Any:
        keys_read.add(full_key)
        return original_get_config(full_key)

    def program() -> Any:
        runpy.run_path(str(ROOT / "stacks" / stack / "__main__.py"))
        return pulumi.Output.from_input(exported).apply(lambda v: box.update(exports=v))

    pulumi.export = lambda key, value: exported.__setitem__(key, value)  # type: ignore[assignment]
    pulumi.config.get_config = record_read  # type: ignore[assignment]
    try:
        run(program)
    finally:
        pulumi.export = original_export  # type: ignore[assignment]
        pulumi.config.get_config = original_get_config  # type: ignore[assignment]
        pulumi.runtime.set_all_config({})
    return StackRun(stack, project, box["exports"], monitor, keys_read)


def run_chain(configs: dict[str, dict[str, Any]], org: str = "acme", stack: str = "prod") -> dict[str, StackRun]:
    """network, then factory (reading network), then muscle (reading both). Each stack's exports are published
    under its own fully qualified name `<org>/<project>/<stack>` (the examples' org is `acme`, their stack
    `prod`); a reader whose config names anything else gets an empty StackReference and its gate fails."""
    network = run_stack("network", configs["network"])
    network_name = f"{org}/{project_name('network')}/{stack}"
    factory = run_stack("factory", configs["factory"], {network_name: network.exports})
    factory_name = f"{org}/{project_name('factory')}/{stack}"
    muscle = run_stack("muscle", configs["muscle"], {network_name: network.exports, factory_name: factory.exports})
    return {"network": network, "factory": factory, "muscle": muscle}
