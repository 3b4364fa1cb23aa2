"""Issue 7 item 4: attacks on a run server, performed against the box, judged from inside the container.

Each attack of `inkmcp.nodes.attacks.catalogue()` is a docker request a tenant could make. A refused one must
be refused by the InkMCP runtime selector (its message names it) and leave no container and no file on the
host; a sandboxed one must show gVisor's kernel inside, fail to read the secret planted on the host, fail
to write next to it and find no Docker API.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest

from inkmcp.coolify.proxy import default_traefik_compose, dump_compose, pinned_compose
from inkmcp.nodes.attacks import ATTACKER_IMAGE, GVISOR_KERNEL, build_attacker_image, catalogue, run_attack, target_for
from inkmcp.nodes.replay import load_replay
from inkmcp.nodes.sandbox import REGISTRY, exec_in_box, load_state

pytestmark = pytest.mark.slow

ATTACKS = {a.id: a for a in catalogue()}
# Who must refuse: the selector, except the shim attack, where the node's shim guard (dpkg-divert, run by the
# apt hook after the "package" planted the shim) leaves containerd no binary to start (or, when containerd had
# already resolved that runtime name earlier in the box's life, no binary at the cached path).
REFUSED_BY = {"A1": ('binary not installed "containerd-shim-evil-v1"', "containerd-shim-evil-v1: no such file")}


@pytest.fixture(scope="module")
def target(run_server_box):
    t = target_for(run_server_box)
    build_attacker_image(t)
    return t


@pytest.mark.parametrize("attack_id", sorted(ATTACKS))
def test_attack_is_refused_or_sandboxed(target, attack_id):
    attack = ATTACKS[attack_id]
    result = run_attack(target, attack)
    print(f"\n{result.id} {result.title}: {result.outcome}: {result.evidence}")
    assert result.outcome == attack.expected, result.evidence
    assert not target.drop.exists(), "the attack left a file on the host"
    if result.outcome == "refused":
        by = REFUSED_BY.get(attack_id, ("inkmcp-runtime",))
        assert any(b in result.evidence for b in by), f"refused, but not by {by!r}: {result.evidence}"
    if result.outcome == "sandboxed":
        assert result.evidence.startswith(f"kernel {GVISOR_KERNEL},"), result.evidence
    leftover = target.docker("ps", "-aq", "--filter", "name=^ink-attack-").stdout.split()
    assert leftover == [], f"attack containers left behind: {leftover}"


def _retag_proxy(box, source: str) -> None:
    """Point the box registry's `traefik:v3.6` at `source` (what a new Traefik release does upstream)."""
    script = (f"docker tag {source} {REGISTRY}/library/traefik:v3.6\n"
              f"docker push -q {REGISTRY}/library/traefik:v3.6\n"
              f"docker rmi {REGISTRY}/library/traefik:v3.6\n")
    done = exec_in_box(box, script, timeout=120)
    assert done.returncode == 0, done.stderr


def _proxy_start(box, target, compose: str) -> tuple[int, str, str]:
    """Coolify's StartProxy on the node (coolify_replay.yaml `proxy_start`: SaveProxyConfiguration writes the
    stored compose, then pull, stop/rm, `compose up -d --wait`), with `compose` as Coolify's stored copy.
    (exit code, kernel inside coolify-proxy or "", output)."""
    data = load_replay()
    rendered = data.render("proxy_start", data.example_values("proxy_start"))
    encoded = base64.b64encode(compose.encode()).decode()
    script = "\n".join(
        [f"mkdir -p /data/coolify/proxy/ && echo '{encoded}' | base64 -d > /data/coolify/proxy//docker-compose.yml"]
        + [step.script for step in rendered.steps if step.id == "proxy.start"])
    done = exec_in_box(box, script + "\n", timeout=180)
    kernel = target.docker("exec", "coolify-proxy", "uname", "-r").stdout.strip()
    return done.returncode, kernel, done.stdout + done.stderr


def test_proxy_tag_moving_under_coolify_is_refused_and_the_digest_pin_holds(target, run_server_box):
    """Review #5 / attack A13: Coolify pulls `traefik:v3.6` on every proxy start (StartProxy.php:63). When the
    tag moves, the proxy Coolify starts from its default compose is an image the node never pinned: refused
    under the reserved name (loud), never run as a tenant with the socket. The compose InkMCP stores through
    Coolify's API (image = the pinned digest) keeps starting the pinned proxy, same image ID."""
    box = run_server_box
    state = load_state(box)
    assert state is not None and "proxy" in state.platform
    pinned = state.platform["proxy"]
    original = f"traefik:v3.6@{state.images['traefik:v3.6']}"
    try:
        _retag_proxy(box, ATTACKER_IMAGE)  # the tag now names other bytes
        pinned_id = target.docker("image", "inspect", "-f", "{{.Id}}", pinned).stdout.strip()
        code, kernel, out = _proxy_start(box, target, dump_compose(pinned_compose(None, pinned, "v1.3.0")))
        assert code == 0, out[-2000:]
        assert kernel not in ("", GVISOR_KERNEL), f"the pinned proxy is not a platform container: {kernel!r}"
        running = target.docker("inspect", "-f", "{{.Image}}", "coolify-proxy").stdout.strip()
        assert running == pinned_id

        code, kernel, out = _proxy_start(box, target, default_traefik_compose())
        assert code != 0, "Coolify's default compose started a proxy from a tag the node never pinned"
        assert "reserved" in out and "inkmcp-runtime" in out, out[-2000:]
        assert kernel == "", f"a proxy runs from the moved tag (kernel {kernel!r})"
        assert target.docker("ps", "-q", "--filter", "name=^coolify-proxy$").stdout.strip() == ""
    finally:
        exec_in_box(box, f"docker pull -q {original} >/dev/null", timeout=120)
        _retag_proxy(box, original)
        # the proxy starts above pulled the moved tag into the box's own image store too: put the local
        # `traefik:v3.6` back on the stand-in, or a later test of the same box runs the attacker's image under it
        # (CI run 50: test_box_standins' proxy failed with `error finding executable "--ping=true"`)
        exec_in_box(box, f"docker tag {original} traefik:v3.6", timeout=60)
        target.docker("rm", "-f", "coolify-proxy")


def test_operator_cli_prints_the_matrix_and_fails_on_unknown_ids(target, run_server_box):
    inkmcp = str(Path(sys.executable).parent / "inkmcp")
    ok = subprocess.run([inkmcp, "nodes", "attack", "--box", str(run_server_box), "A7a", "A2a"],
                        capture_output=True, text=True, timeout=300, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rows = [line for line in ok.stdout.splitlines() if line.startswith("| A")]
    outcomes = {r.split("|")[1].strip(): r.split("|")[4].strip() for r in rows}
    assert outcomes == {"A7a": "refused", "A2a": "sandboxed"}, ok.stdout
    bad = subprocess.run([inkmcp, "nodes", "attack", "--box", str(run_server_box), "A99"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert bad.returncode == 1 and "unknown attack id(s) ['A99']" in bad.stderr, bad.stderr
