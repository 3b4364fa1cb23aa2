"""The muscle's `sablier` step (inkmcp.infra.muscle.sablier_script) on the run-server box (Docker 26 + the
selector v2): it pulls the pinned proxy and Sablier digests, creates Coolify's `coolify` network with the vSwitch
MTU, and runs the Sablier server by digest, which the selector admits as the `sablier` platform entry (runc, so
its socket works) without any `--runtime` flag; a second run changes nothing (issue 7 item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inkmcp.infra import muscle
from inkmcp.infra.muscle_config import PlatformContainerSpec
from inkmcp.nodes import sandbox
from tests.requirements import is_root, requires
from tests.stacks.test_muscle_stack import make_conf

pytestmark = [
    pytest.mark.slow,
    requires("root", is_root(), "the box needs network/mount namespaces, cgroups and iptables"),
]


def in_box(box: Path, script: str) -> str:
    """As pulumi-command runs the step (`bash -euo pipefail`), inside the box; fails the test on a non-zero exit."""
    done = sandbox.exec_in_box(box, script, command=["bash", "-euo", "pipefail", "-s"])
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_sablier_step_runs_the_pinned_sablier_under_the_selector(run_server_box: Path) -> None:
    box = run_server_box
    state = sandbox.load_state(box)
    assert state is not None and {"proxy", "sablier"} <= set(state.platform)
    conf = make_conf(platform_containers=[PlatformContainerSpec(profile="proxy", images=[state.platform["proxy"]]),
                                          PlatformContainerSpec(profile="sablier",
                                                                images=[state.platform["sablier"]])])
    script = muscle.sablier_script(conf, 1400)
    # A clean start: no Sablier, no `coolify` network (the box is shared; nothing else uses these names).
    in_box(box, "docker rm -f sablier >/dev/null 2>&1 || true\ndocker network rm coolify >/dev/null 2>&1 || true\n")
    try:
        first = in_box(box, script)
        assert f"changed: sablier runs {state.platform['sablier']}" in first
        facts = in_box(box, f"""
docker network inspect coolify --format '{{{{index .Options "com.docker.network.driver.mtu"}}}}'
docker inspect sablier --format '{{{{.Image}}}} {{{{.State.Running}}}} {{{{.HostConfig.Runtime}}}}'
docker image inspect --format '{{{{.Id}}}}' {state.platform['sablier']}
docker image inspect --format '{{{{.Id}}}}' {state.platform['proxy']}
docker inspect sablier --format '{{{{.Id}}}}'
""").split("\n")
        mtu, container, sablier_id, proxy_id, container_id = facts[:5]
        assert mtu == "1400"
        image, running, runtime = container.split()
        assert image == sablier_id and running == "true"
        assert runtime != "runc"  # no --runtime flag: the daemon's default (the selector) decides
        assert proxy_id.startswith("sha256:")  # the pinned proxy is on the node before Coolify restarts it
        # The selector admitted it as the platform entry: runc, so the host kernel, not gVisor's 4.4.0.
        kernel = in_box(box, "docker exec sablier uname -r").strip()
        assert kernel and not kernel.startswith("4.4.0"), kernel

        second = in_box(box, script)
        assert "changed:" not in second
        assert in_box(box, "docker inspect sablier --format '{{.Id}}'").strip() == container_id
    finally:
        in_box(box, "docker rm -f sablier >/dev/null 2>&1 || true\ndocker network rm coolify >/dev/null 2>&1 || true\n")
