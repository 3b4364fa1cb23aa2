"""The platform pin on a real run server (Docker 26.1.5 + containerd 1.7.24 + runsc, `inkmcp nodes sandbox`).

runbooks/gvisor-decision.md §4.1 / §4.5 (3). What the muscle uploads and `nodes harden` installs is the selector
config rendered from `platformContainers` with repo digests only; on a node that config refuses `coolify-proxy`
and `sablier` (their images are not resolved). The pin (hardening/scripts/inkmcp-pin-platform, the plan's command
on a live node, and the muscle's Sablier step) resolves them on the node's own daemon. Proven here on a box of
our own, brought up with a params file that sets exactly the muscle's platform entries by digest (so the box's
own `pin_platform` does not run and the config is what a node has after the harden upload):

* before the pin, Coolify's StartProxy with the compose InkMCP stores in Coolify (same digest) is refused;
* after the pin (the plan's exact command, run as on a node) the genuine proxy runs under runc (host kernel
  inside), while a look-alike under the proxy's name is still refused and leaves nothing on the host;
* a second pin changes nothing (same file, same inode); `nodes check` sees no drift, but does see a wrong ID, an
  unresolved entry and an image missing from the node, and the pin repairs each;
* a digest the registry does not have fails loudly, naming it, and the others are pinned anyway;
* the muscle's Sablier step alone takes a digest-only node to a running Sablier under runc.

The stand-ins' digests come from the session box (tests/runtime/shared_box.py): stand-in builds are
deterministic, so this box's registry holds the same ones.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from inkmcp.coolify.proxy import dump_compose, pinned_compose
from inkmcp.infra import muscle
from inkmcp.infra.factory_config import NetworkStackOutputs
from inkmcp.infra.muscle_config import MuscleConfig, PlatformContainerSpec, host_params
from inkmcp.nodes import sandbox
from inkmcp.nodes.check import Drift, check_host
from inkmcp.nodes.render import PIN_PLATFORM, SELECTOR_CONFIG, HostParams, pin_platform_command, render_plan
from inkmcp.nodes.replay import load_replay
from tests.requirements import is_root, requires
from tests.stacks.test_muscle_stack import NETWORK, make_conf, node

pytestmark = [
    pytest.mark.slow,
    requires("root", is_root(), "the box needs network/mount namespaces, cgroups and iptables"),
]

GVISOR_KERNEL = "4.4.0"


@dataclass
class PinBox:
    box: Path
    params_file: Path
    conf: MuscleConfig
    pinned: dict[str, str]  # platform entry -> repo digest, as platformContainers pins it

    @property
    def config(self) -> Path:
        return self.box / "root" / SELECTOR_CONFIG.lstrip("/")

    def params(self) -> HostParams:
        return sandbox.host_params(self.box, self.params_file)

    def live(self) -> HostParams:
        """The same selector parameters as a node's (root /): inside the box's mount namespace /etc/inkmcp,
        /usr/local/sbin and /var/run/docker.sock are the box's, so the plan's node commands run there as on a node."""
        return HostParams(gvisor=self.params().gvisor)


class BoxConnection:
    """What `inkmcp nodes check` needs of a fabric Connection, running each command inside the box as Coolify's SSH
    session runs there (root, the box's mount and network namespaces). check.py only reads."""

    user = "root"

    def __init__(self, box: Path) -> None:
        self.box, self.host = box, f"box {box.name}"

    def run(self, command: str, *, hide: bool, warn: bool, timeout: float, in_stream: bool) -> SimpleNamespace:
        done = sandbox.exec_in_box(self.box, "", timeout=timeout, command=["sh", "-c", command])
        return SimpleNamespace(exited=done.returncode, stdout=done.stdout, stderr=done.stderr)


def in_box(box: Path, script: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """`bash -se` inside the box, as Coolify (and pulumi-command) run a step over SSH."""
    return sandbox.exec_in_box(box, script, timeout=timeout)


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def pin_box(run_server_box: Path) -> Iterator[PinBox]:
    state = sandbox.load_state(run_server_box)
    assert state is not None
    pinned = {entry: f"{ref}@{state.images[ref]}" for entry, ref in sandbox.PLATFORM_REFS.items()}
    conf = make_conf(platform_containers=[PlatformContainerSpec(profile=e, images=[ref]) for e, ref in pinned.items()])
    # The muscle's own render of the node's platform entries: repo digests only, nothing resolved.
    platform = host_params(conf, node(1), NetworkStackOutputs.parse(NETWORK)).gvisor.platform  # type: ignore[union-attr]
    assert all(i.ref and i.id is None for p in platform for i in p.images)
    tmp = Path(tempfile.mkdtemp(prefix="inkpin-"))
    params_file = tmp / "params.json"
    params_file.write_text(json.dumps({"gvisor": {"platform": [p.selector_entry() for p in platform]}}))
    box = tmp / "box"
    try:
        sandbox.up(box, params_file)
        yield PinBox(box, params_file, conf, pinned)
    finally:
        try:
            sandbox.down(box)
        finally:
            from tests.runtime.conftest import _pids_under, _stop

            for pid in _pids_under(box):  # only if down failed: whatever still names the box's directory
                _stop(pid, wait=5)
            shutil.rmtree(tmp, ignore_errors=True)


def reset(pb: PinBox, params: HostParams | None = None) -> str:
    """The node as the harden upload leaves it: the rendered (digest-only) selector config, root 0644, and no
    proxy or Sablier container. Returns the config's text."""
    params = params or pb.params()
    text = render_plan(params).files[params.host_path(SELECTOR_CONFIG)]
    tmp = pb.config.with_name(pb.config.name + ".test-new")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(pb.config)
    in_box(pb.box, "docker rm -f coolify-proxy sablier >/dev/null 2>&1 || true\n"
                   "docker network rm coolify >/dev/null 2>&1 || true\n")
    return text


def pin(pb: PinBox) -> subprocess.CompletedProcess[str]:
    """The plan's pin command on a live node, run inside the box."""
    command = pin_platform_command(pb.live())
    assert command in render_plan(pb.live()).commands
    return sandbox.exec_in_box(pb.box, "", timeout=300, command=["sh", "-c", command])


def config_images(pb: PinBox) -> dict[str, dict[str, Any]]:
    return {i["ref"]: i for e in json.loads(pb.config.read_text())["platform"] for i in e["images"]}


def image_id(pb: PinBox, ref: str) -> str:
    return ok(in_box(pb.box, f"docker image inspect --format '{{{{.Id}}}}' {ref}\n")).strip()


def start_proxy(pb: PinBox) -> tuple[int, str, str]:
    """Coolify's StartProxy (coolify_replay.yaml `proxy_start`: SaveProxyConfiguration writes the stored compose,
    then pull, stop/rm, `compose up -d --wait`) with the compose InkMCP stores in Coolify: `pinned_compose` of the
    muscle's `proxy_image` (the digest of the `proxy` entry, one value with the selector config).
    (exit code, kernel inside coolify-proxy or "", output)."""
    compose = dump_compose(pinned_compose(None, muscle.pinned_image(pb.conf, "proxy"), pb.conf.sablier_plugin_version))
    data = load_replay()
    rendered = data.render("proxy_start", data.example_values("proxy_start"))
    encoded = base64.b64encode(compose.encode()).decode()
    script = "\n".join(  # proxy.save_config's commands, then StartProxy's
        [f"mkdir -p /data/coolify/proxy/ && echo '{encoded}' | base64 -d > /data/coolify/proxy//docker-compose.yml"]
        + [step.script for step in rendered.steps if step.id == "proxy.start"])
    done = in_box(pb.box, script + "\n")
    kernel = in_box(pb.box, "docker exec coolify-proxy uname -r 2>/dev/null || true\n").stdout.strip()
    return done.returncode, kernel, done.stdout + done.stderr


def pin_view(pb: PinBox) -> list[Drift]:
    """`inkmcp nodes check` against the box (read-only), narrowed to the selector config and the pins."""
    cfg = SELECTOR_CONFIG
    drift = check_host(BoxConnection(pb.box), pb.live(), timeout=60)  # type: ignore[arg-type]
    return [d for d in drift if d.target in (cfg, PIN_PLATFORM) or d.target.startswith("platform ")]


def test_digest_only_refuses_the_proxy_the_pin_admits_the_genuine_one_only(pin_box: PinBox) -> None:
    pb = pin_box
    reset(pb)
    proxy = pb.pinned["proxy"]

    code, kernel, out = start_proxy(pb)
    assert code != 0, "a digest-only selector config admitted the proxy"
    assert "inkmcp-runtime" in out and "not resolved on this node" in out, out[-2000:]
    assert kernel == ""

    done = pin(pb)
    assert done.returncode == 0, done.stderr
    images = config_images(pb)
    for entry, ref in pb.pinned.items():
        assert f"platform {entry} {ref} -> {image_id(pb, ref)}" in done.stdout
        assert images[ref]["id"] == image_id(pb, ref)
    st = pb.config.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (0, 0o644)

    code, kernel, out = start_proxy(pb)
    assert code == 0, out[-2000:]
    assert kernel and kernel != GVISOR_KERNEL, f"the genuine proxy is not a platform container: {kernel!r}"
    running = ok(in_box(pb.box, "docker inspect --format '{{.Image}}' coolify-proxy\n")).strip()
    assert running == image_id(pb, proxy)

    # Look-alikes under the reserved name, after the pin: another pinned image with the proxy's mounts, and the
    # genuine image running a shell. Each would write a marker into the proxy dir on the host if it ran.
    ok(in_box(pb.box, "docker rm -f coolify-proxy >/dev/null\n"))
    marker = pb.box / "coolify" / "proxy" / f"pwned-{secrets.token_hex(4)}"
    mounts = "-v /var/run/docker.sock:/var/run/docker.sock:ro -v /data/coolify/proxy:/traefik"
    for image in (pb.pinned["sablier"], proxy):
        attack = in_box(pb.box, f"docker run -d --name coolify-proxy {mounts} --entrypoint sh {image} "
                                f"-c 'echo pwned > /traefik/{marker.name}; uname -r; sleep 30'\n")
        assert attack.returncode != 0, f"look-alike with {image} ran"
        assert "inkmcp-runtime" in attack.stderr and "reserved for the platform entry 'proxy'" in attack.stderr, \
            attack.stderr
        running = in_box(pb.box, "docker ps -q --filter name=^coolify-proxy$\n").stdout.strip()
        assert running == "" and not marker.exists()
        in_box(pb.box, "docker rm -f coolify-proxy >/dev/null 2>&1 || true\n")

    # A second pin: nothing to do, nothing written; `nodes check` finds neither file nor pin drift.
    text, inode = pb.config.read_text(), pb.config.stat().st_ino
    again = pin(pb)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert (pb.config.read_text(), pb.config.stat().st_ino) == (text, inode)
    assert pin_view(pb) == []


def test_nodes_check_reports_wrong_and_missing_pins_and_the_pin_repairs_them(pin_box: PinBox) -> None:
    pb = pin_box
    reset(pb)
    unresolved = pin_view(pb)
    assert sorted(d.target for d in unresolved) == sorted(f"platform {e} {ref}" for e, ref in pb.pinned.items())
    assert all("not resolved on this node" in d.detail for d in unresolved)
    assert pin(pb).returncode == 0
    assert pin_view(pb) == []

    # The config admits an ID the pinned digest does not resolve to here (another node's, a stale image store).
    proxy, sablier = pb.pinned["proxy"], pb.pinned["sablier"]
    cfg = json.loads(pb.config.read_text())
    for entry in cfg["platform"]:
        for image in entry["images"]:
            if image["ref"] == proxy:
                image["id"] = image_id(pb, sablier)
    pb.config.write_text(json.dumps(cfg, indent=2) + "\n")
    assert [(d.kind, d.target, d.detail) for d in pin_view(pb)] == [
        ("runtime", f"platform proxy {proxy}", f"the config admits image ID {image_id(pb, sablier)}, but the digest "
                                               f"resolves to {image_id(pb, proxy)} on this node")]
    fixed = pin(pb)
    assert fixed.returncode == 0 and f"platform proxy {proxy} -> {image_id(pb, proxy)}" in fixed.stdout
    assert pin_view(pb) == []

    # The pinned image is gone from the node (e.g. pruned): reported, and the pin pulls it back by digest.
    helper = pb.pinned["helper"]
    ok(in_box(pb.box, f"docker image rm {helper} >/dev/null\n"))
    missing = pin_view(pb)
    assert [(d.target, d.detail) for d in missing] == [
        (f"platform helper {helper}", "not on this node (inkmcp nodes harden pulls it)")]
    text = pb.config.read_text()
    back = pin(pb)
    assert (back.returncode, back.stdout) == (0, ""), back.stderr  # same digest, same ID: nothing to rewrite
    assert pb.config.read_text() == text and image_id(pb, helper).startswith("sha256:")
    assert pin_view(pb) == []


def test_a_digest_the_registry_lacks_fails_loudly(pin_box: PinBox) -> None:
    pb = pin_box
    proxy = pb.pinned["proxy"]
    unknown = f"traefik:v3.6@sha256:{secrets.token_hex(32)}"
    params = pb.params()
    assert params.gvisor is not None
    platform = [p.model_copy(update={"images": [*p.images, p.images[0].model_copy(update={"ref": unknown})]})
                if p.entry == "proxy" else p for p in params.gvisor.platform]
    reset(pb, params.model_copy(update={"gvisor": params.gvisor.model_copy(update={"platform": platform})}))

    done = pin(pb)
    assert done.returncode == 1
    assert f"platform image {unknown}: docker pull failed" in done.stderr, done.stderr
    assert "not pinned" in done.stderr
    images = config_images(pb)
    assert images[unknown]["id"] is None, "an image that could not be pulled admits something"
    assert images[proxy]["id"] == image_id(pb, proxy), "the images that resolved were not written"
    code, kernel, out = start_proxy(pb)  # the pinned proxy still starts
    assert code == 0 and kernel not in ("", GVISOR_KERNEL), out[-2000:]
    in_box(pb.box, "docker rm -f coolify-proxy >/dev/null 2>&1 || true\n")


def test_the_sablier_step_takes_a_digest_only_node_to_sablier_under_runc(pin_box: PinBox) -> None:
    """The muscle's `sablier` step right after the harden upload (digest-only config): its pin with `--require`
    resolves the node's images, then Sablier starts as the platform entry (no --runtime flag)."""
    pb = pin_box
    reset(pb)
    try:
        step = ["bash", "-euo", "pipefail", "-s"]  # as pulumi-command runs it
        out = ok(sandbox.exec_in_box(pb.box, muscle.sablier_script(pb.conf, 1400), timeout=300, command=step))
        assert f"changed: sablier runs {pb.pinned['sablier']}" in out
        assert f"platform sablier {pb.pinned['sablier']}" in out
        kernel = ok(in_box(pb.box, "docker exec sablier uname -r\n")).strip()
        assert kernel and kernel != GVISOR_KERNEL, kernel
        second = ok(sandbox.exec_in_box(pb.box, muscle.sablier_script(pb.conf, 1400), timeout=300, command=step))
        assert "changed:" not in second
    finally:
        in_box(pb.box, "docker rm -f sablier >/dev/null 2>&1 || true\n"
                       "docker network rm coolify >/dev/null 2>&1 || true\n")

