"""Where the selector's build mode is switched on (runbooks/gvisor-decision.md §4.4): the factory's build server
parameters, and never a run server's. A run server in build mode would admit `docker build --network host` steps
whenever its dockerd is not in the root network namespace; the build server without it refuses every build."""

from __future__ import annotations

import json
from pathlib import Path

from inkmcp.infra.factory import build_server_host_params
from inkmcp.infra.factory_config import NetworkStackOutputs
from inkmcp.infra.muscle_config import host_params
from inkmcp.nodes.render import SELECTOR_CONFIG, HostParams, PinnedImage, helper_profile, render_plan
from tests.stacks.test_factory_stack import NETWORK as FACTORY_NETWORK
from tests.stacks.test_factory_stack import make_conf as factory_conf
from tests.stacks.test_muscle_stack import NETWORK as MUSCLE_NETWORK
from tests.stacks.test_muscle_stack import make_conf as muscle_conf
from tests.stacks.test_muscle_stack import node

HELPER_REF = "coollabsio/coolify-helper:1.0.15@sha256:" + "3" * 64


def selector_config(root: Path, params: HostParams) -> dict[str, object]:
    """The selector config the hardening plan installs, rendered under `root`."""
    plan = render_plan(params.model_copy(update={"root": str(root)}))
    return json.loads(plan.files[f"{root}{SELECTOR_CONFIG}"])


def test_build_server_renders_build_mode(tmp_path: Path) -> None:
    net = NetworkStackOutputs.parse(FACTORY_NETWORK)
    params = build_server_host_params(factory_conf(), net)
    cfg = selector_config(tmp_path, params)
    assert cfg["build_mode"] is True
    # Docker's egress rules would land in the root namespace, where the build dockerd's bridges are not: off.
    plan = render_plan(params.model_copy(update={"root": str(tmp_path)}))
    assert not any("inkmcp-docker-user-apply" in c for c in plan.commands), plan.commands
    assert [str(c) for c in params.private_cidrs] == [FACTORY_NETWORK["network_cidr"]]


def test_build_server_admits_coolifys_helper_when_given_its_profile(tmp_path: Path) -> None:
    """Coolify's deploy helper runs on the build server (socket, ~/.docker): its profile, pinned by digest."""
    net = NetworkStackOutputs.parse(FACTORY_NETWORK)
    helper = helper_profile([PinnedImage(ref=HELPER_REF)])
    cfg = selector_config(tmp_path, build_server_host_params(factory_conf(), net, [helper]))
    assert [e["entry"] for e in cfg["platform"]] == ["helper"]  # type: ignore[index]


def test_run_servers_never_render_build_mode(tmp_path: Path) -> None:
    net = NetworkStackOutputs.parse(MUSCLE_NETWORK)
    conf = muscle_conf()
    for server in (node(1), node(2)):
        cfg = selector_config(tmp_path / server.name, host_params(conf, server, net))
        assert cfg["build_mode"] is False, server.name
