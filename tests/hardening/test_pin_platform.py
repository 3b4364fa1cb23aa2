"""The platform pin (hardening/scripts/inkmcp-pin-platform; runbooks/gvisor-decision.md §4.1, §4.5 (3)).

The selector config is rendered with platform images by repo digest only; the node fills in each image's ID,
entrypoint and cmd from its own daemon. Proven here without a daemon: the plan runs the pin on a live node right
after the selector's install (and not on a staged root, which has no Docker of its own when the plan runs), the
script's config logic (what it writes, what `--check` calls drift, what `--require` refuses), its loud failures
as a real process (the real docker CLI against a daemon that is not there), and, over a real sshd, that
`nodes harden`/`nodes check` leave a node-resolved config alone while still catching any other change.
Against a real Docker 26 daemon: tests/runtime/test_box_pin.py.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fabric import Connection

from inkmcp.nodes import apply as apply_mod
from inkmcp.nodes.apply import apply_host, connect
from inkmcp.nodes.check import Drift, check_host, parse_pin_check, pin_drift, pin_tool
from inkmcp.nodes.render import (
    PIN_PLATFORM,
    REPO_DIGEST_RE,
    SCRIPTS_DIR,
    SELECTOR_CONFIG,
    GvisorParams,
    HostParams,
    PinnedImage,
    pin_platform_command,
    proxy_profile,
    render_plan,
    sablier_profile,
)
from tests.hardening.conftest import SshServer
from tests.requirements import require, require_root

SCRIPT = SCRIPTS_DIR / "inkmcp-pin-platform"
PROXY_REF = "traefik:v3.6.23@sha256:" + "1a" * 32
SABLIER_REF = "sablierapp/sablier:1.16.2@sha256:" + "2b" * 32
PROXY_ID, SABLIER_ID = "sha256:" + "c1" * 32, "sha256:" + "d2" * 32


def gvisor() -> GvisorParams:
    """The muscle's two required entries, by digest only (as rendered before the node pins them)."""
    return GvisorParams(platform=[proxy_profile([PinnedImage(ref=PROXY_REF)]),
                                  sablier_profile([PinnedImage(ref=SABLIER_REF)])])


def live() -> HostParams:
    """A run server's params (root /): only rendered here, never applied."""
    return HostParams(gvisor=gvisor())


def staged(root: Path) -> HostParams:
    return HostParams(root=str(root), dns_resolvers=["198.51.100.53"], private_cidrs=["10.20.0.0/16"], gvisor=gvisor())


def rendered(params: HostParams) -> dict[str, Any]:
    return json.loads(render_plan(params).files[params.host_path(SELECTOR_CONFIG)])


def inspect(image_id: str, repo_digests: list[str], entrypoint: list[str] | None, cmd: list[str] | None) -> dict:
    return {"Id": image_id, "RepoDigests": repo_digests, "Config": {"Entrypoint": entrypoint, "Cmd": cmd}}


FACTS = {PROXY_REF: {"id": PROXY_ID, "entrypoint": ["/entrypoint.sh"], "cmd": ["traefik"]},
         SABLIER_REF: {"id": SABLIER_ID, "entrypoint": ["/bin/sablier"], "cmd": []}}


# --- the plan -------------------------------------------------------------------------------------------------


def test_the_plan_pins_on_a_live_node_right_after_the_selector_install() -> None:
    plan = render_plan(live())
    assert plan.files[PIN_PLATFORM] == SCRIPT.read_text() and plan.modes[PIN_PLATFORM] == 0o755
    pin = pin_platform_command(live())
    assert pin == f"python3 -I {PIN_PLATFORM}" and plan.commands.count(pin) == 1
    at = {key: next(i for i, c in enumerate(plan.commands) if key in c)
          for key in ("gvisor/install.sh", "inkmcp-shim-guard", "inkmcp-pin-platform", "inkmcp-daemon-json")}
    assert at["gvisor/install.sh"] < at["inkmcp-shim-guard"] < at["inkmcp-pin-platform"] < at["inkmcp-daemon-json"]
    # The rendered config admits nothing by itself: the pin is what makes the proxy and Sablier runnable.
    assert all(i["id"] is None for e in rendered(live())["platform"] for i in e["images"])


def test_a_staged_root_gets_the_script_but_no_pin_command(tmp_path: Path) -> None:
    """A staged root (tests, the box) has no Docker of its own while the plan runs; the script is installed so
    whoever runs its daemon can pin it (`--config` names the staged file)."""
    params = staged(tmp_path / "r")
    plan = render_plan(params)
    assert plan.files[params.host_path(PIN_PLATFORM)] == SCRIPT.read_text()
    assert not any("inkmcp-pin-platform" in c for c in plan.commands)
    assert pin_platform_command(params, check=True).split()[-3:] == [
        "--check", "--config", params.host_path(SELECTOR_CONFIG)]
    assert pin_platform_command(live(), require=[("proxy", PROXY_REF)]).endswith(
        f"--require {shlex.quote('proxy=' + PROXY_REF)}")


def test_the_script_pins_digests_by_the_renderers_rule() -> None:
    tool = pin_tool()
    assert tool.REPO_DIGEST_RE.pattern == REPO_DIGEST_RE.pattern
    assert tool.DEFAULT_CONFIG == SELECTOR_CONFIG


# --- what the script writes and judges (pure functions, imported as check.py imports them) ---------------------


def test_facts_need_the_pinned_digest() -> None:
    tool = pin_tool()
    digest = PROXY_REF.rsplit("@", 1)[1]
    got = tool.facts_from_inspect(PROXY_REF, inspect(PROXY_ID, [f"traefik@{digest}"], ["/entrypoint.sh"], ["traefik"]))
    assert got == FACTS[PROXY_REF]
    # containerd image store: the ID is the pinned digest itself; no entrypoint means [] (not None: resolved).
    assert tool.facts_from_inspect(PROXY_REF, inspect(digest, [], None, None)) == {
        "id": digest, "entrypoint": [], "cmd": []}
    with pytest.raises(tool.PinError, match="does not carry digest"):
        tool.facts_from_inspect(PROXY_REF, inspect(PROXY_ID, ["traefik@sha256:" + "99" * 32], [], []))
    with pytest.raises(tool.PinError, match="not sha256"):
        tool.facts_from_inspect(PROXY_REF, inspect("traefik", [f"traefik@{digest}"], [], []))


def test_apply_facts_fills_each_image_once_and_reports_it() -> None:
    tool = pin_tool()
    cfg = rendered(live())
    new, changes = tool.apply_facts(cfg, FACTS, "/etc/inkmcp/runtime-selector.json")
    assert changes == [f"changed: /etc/inkmcp/runtime-selector.json: platform proxy {PROXY_REF} -> {PROXY_ID}",
                       f"changed: /etc/inkmcp/runtime-selector.json: platform sablier {SABLIER_REF} -> {SABLIER_ID}"]
    images = {i["ref"]: i for e in new["platform"] for i in e["images"]}
    assert images[PROXY_REF] == {"ref": PROXY_REF, **FACTS[PROXY_REF]}
    assert all(i["id"] is None for e in cfg["platform"] for i in e["images"]), "the input is not modified"
    assert tool.apply_facts(new, FACTS, "x") == (new, [])  # already pinned: nothing to write
    # Only the resolved fields differ from the render: that is what check/apply compare.
    assert tool.unresolved_view(new) == tool.unresolved_view(cfg) == cfg
    # A wrong ID in the file (another node's, a stale store) is corrected.
    wrong = json.loads(json.dumps(new))
    wrong["platform"][0]["images"][0]["id"] = SABLIER_ID
    fixed, changes = tool.apply_facts(wrong, FACTS, "x")
    assert fixed == new and changes == [f"changed: x: platform proxy {PROXY_REF} -> {PROXY_ID}"]


def test_check_lines_name_every_image_the_node_does_not_admit_as_pinned() -> None:
    tool = pin_tool()
    cfg, _ = tool.apply_facts(rendered(live()), FACTS, "x")
    assert tool.drift_lines(cfg, FACTS, {}) == []
    assert tool.drift_lines(rendered(live()), FACTS, {}) == [
        f"drift: proxy {PROXY_REF}: not resolved on this node, the entry admits nothing for it (inkmcp nodes "
        "harden pins it)",
        f"drift: sablier {SABLIER_REF}: not resolved on this node, the entry admits nothing for it (inkmcp nodes "
        "harden pins it)"]
    other = {**FACTS, PROXY_REF: {**FACTS[PROXY_REF], "id": SABLIER_ID}}
    assert tool.drift_lines(cfg, other, {}) == [
        f"drift: proxy {PROXY_REF}: the config admits image ID {PROXY_ID}, but the digest resolves to {SABLIER_ID} "
        "on this node"]
    moved_cmd = {**FACTS, SABLIER_REF: {**FACTS[SABLIER_REF], "cmd": ["start"]}}
    assert "entrypoint/cmd in the config" in tool.drift_lines(cfg, moved_cmd, {})[0]
    absent = tool.drift_lines(cfg, {SABLIER_REF: FACTS[SABLIER_REF]}, {PROXY_REF: "not on this node (x)"})
    assert absent == [f"drift: proxy {PROXY_REF}: not on this node (x)"]


def test_require_refuses_a_config_from_another_value() -> None:
    tool = pin_tool()
    cfg, _ = tool.apply_facts(rendered(live()), FACTS, "x")
    assert tool.required_problems(cfg, [("proxy", PROXY_REF), ("sablier", SABLIER_REF)], "C") == []
    newer = "traefik:v3.6.24@sha256:" + "4e" * 32
    assert tool.required_problems(cfg, [("proxy", newer)], "C") == [
        f"platform entry 'proxy' of C does not pin {newer} (it pins ['{PROXY_REF}']): the selector config on this "
        "node was rendered from another platformContainers value than this step's; re-run the harden step"]
    # A digest of the proxy is not the Sablier entry's, even when pinned.
    assert "does not pin" in tool.required_problems(cfg, [("sablier", PROXY_REF)], "C")[0]
    assert tool.required_problems(rendered(live()), [("proxy", PROXY_REF)], "C") == [
        f"platform entry 'proxy': {PROXY_REF} is not resolved on this node"]


# --- the script as a process -------------------------------------------------------------------------------------


def pin(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/usr/bin/python3", "-I", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env=env, check=False)


def test_no_daemon_fails_loudly_and_writes_nothing(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    require("dockerd", docker is not None, "no docker CLI on PATH")
    assert docker is not None
    config = tmp_path / "runtime-selector.json"
    text = render_plan(live()).files[SELECTOR_CONFIG]
    config.write_text(text)
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": f"unix://{tmp_path}/no-such.sock", "HOME": str(tmp_path)}
    for check in ([], ["--check"]):
        done = pin(*check, "--config", str(config), "--docker", docker, env=env)
        assert done.returncode == 1, done
        assert "the Docker daemon is not reachable" in done.stderr and "start it" in done.stderr
        assert config.read_text() == text


def test_bad_input_names_the_argument(tmp_path: Path) -> None:
    config = tmp_path / "runtime-selector.json"
    done = pin("--config", str(config))
    assert done.returncode == 1 and f"cannot read the selector config {config}" in done.stderr
    config.write_text(render_plan(live()).files[SELECTOR_CONFIG])
    done = pin("--config", str(config), "--require", "proxy=traefik:v3.6")
    assert done.returncode == 1 and "--require 'proxy=traefik:v3.6': write ENTRY=name[:tag]@sha256:" in done.stderr
    done = pin("--config", str(config), "--docker", str(tmp_path / "nodocker"))
    assert done.returncode == 1 and "docker CLI" in done.stderr and "not found" in done.stderr


def test_a_config_without_pinned_images_needs_no_docker(tmp_path: Path) -> None:
    """Images configured by ID only (stand-ins, tests) are not the node's to resolve: nothing to do, silently."""
    config = tmp_path / "runtime-selector.json"
    params = HostParams(gvisor=GvisorParams(platform=[proxy_profile([PinnedImage(id=PROXY_ID, entrypoint=[],
                                                                                   cmd=[])])]))
    config.write_text(render_plan(params).files[SELECTOR_CONFIG])
    for check in ([], ["--check"]):
        done = pin(*check, "--config", str(config), "--docker", str(tmp_path / "nodocker"))
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_written_config_is_atomic_root_0644(tmp_path: Path) -> None:
    require_root("the pinned config is root:root 0644, as the selector requires")
    tool = pin_tool()
    config = tmp_path / "runtime-selector.json"
    config.write_text("{}")
    os.chown(config, 1000, 1000)
    config.chmod(0o666)
    tool.write_atomic(str(config), tool.render({"platform": []}))
    st = config.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o644)
    assert json.loads(config.read_text()) == {"platform": []}
    assert [p.name for p in tmp_path.iterdir()] == ["runtime-selector.json"], "no temp file left"


# --- check.py's reading of the script's output --------------------------------------------------------------------


def test_parse_pin_check() -> None:
    out = f"drift: proxy {PROXY_REF}: the config admits image ID a, but the digest resolves to b on this node\n__rc=2\n"
    assert parse_pin_check(out) == [Drift(kind="runtime", target=f"platform proxy {PROXY_REF}",
                                          detail="the config admits image ID a, but the digest resolves to b on this "
                                                 "node")]
    assert parse_pin_check("__rc=0\n") == []
    failed = parse_pin_check("inkmcp-pin-platform: the Docker daemon is not reachable (x)\n__rc=1\n")
    assert [(d.kind, d.target) for d in failed] == [("runtime", PIN_PLATFORM)]
    assert "pin check failed (exit 1)" in failed[0].detail and "not reachable" in failed[0].detail
    assert "pin script missing" in parse_pin_check("__missing\n")[0].detail


def test_pin_drift_runs_the_check_only_where_the_plan_pins(tmp_path: Path) -> None:
    """`nodes check` asks the node only where `nodes harden` pins (the same render decides both)."""
    calls: list[str] = []

    class Recorder:
        user, host = "root", "node"

        def run(self, command: str, **_: Any) -> SimpleNamespace:
            calls.append(command)
            return SimpleNamespace(exited=0, stdout="__rc=0\n", stderr="")

    assert pin_drift(Recorder(), staged(tmp_path), 5) == []  # type: ignore[arg-type]
    assert calls == []
    assert pin_drift(Recorder(), live(), 5) == []  # type: ignore[arg-type]
    assert len(calls) == 1 and f"python3 -I {PIN_PLATFORM} --check 2>&1" in calls[0]


def test_apply_gives_the_pin_time_to_pull() -> None:
    assert apply_mod._pin_timeout(live(), 60) == 60 + 2 * apply_mod.PULL_TIMEOUT
    assert apply_mod._pin_timeout(HostParams(gvisor=GvisorParams()), 60) == 60


# --- over SSH: harden and check leave the node's resolution alone ---------------------------------------------------


@pytest.fixture
def conn(sshd_server: SshServer) -> Iterator[Connection]:
    c = connect("127.0.0.1", user="root", port=sshd_server.port, key_filename=sshd_server.client_key)
    yield c
    c.close()


@pytest.mark.slow
def test_harden_and_check_keep_the_nodes_pins_and_catch_other_changes(conn: Connection, tmp_path: Path) -> None:
    require_root("the selector install makes its files root-owned")
    root = tmp_path / "root"
    params = staged(root)
    config = Path(params.host_path(SELECTOR_CONFIG))
    first = apply_host(conn, params, timeout=30)
    assert str(config) in first.changes
    assert check_host(conn, params, timeout=10) == []

    # What the pin leaves on a node: the same render with the node's IDs filled in, rewritten by the script.
    tool = pin_tool()
    pinned, _ = tool.apply_facts(json.loads(config.read_text()), FACTS, str(config))
    tool.write_atomic(str(config), tool.render(pinned))
    text = config.read_text()
    assert check_host(conn, params, timeout=10) == [], "the node's own resolution is not drift"
    again = apply_host(conn, params, timeout=30)
    assert again.changes == [], again.changes
    assert config.read_text() == text, "harden re-uploaded the unresolved render over the node's pins"

    # Anything else in the file is drift and is repaired (the pin later in the plan resolves it again on a node).
    tampered = json.loads(text)
    tampered["platform"][0]["mounts"].append({"source": "/", "destination": "/host", "read_only": False,
                                              "optional": False})
    tool.write_atomic(str(config), tool.render(tampered))
    assert [(d.kind, d.target, d.detail) for d in check_host(conn, params, timeout=10)] == [
        ("file", str(config), "content differs")]
    swapped = json.loads(text)
    swapped["platform"][0]["images"][0]["ref"] = "traefik:v3.6.24@sha256:" + "4e" * 32
    tool.write_atomic(str(config), tool.render(swapped))
    assert [d.target for d in check_host(conn, params, timeout=10)] == [str(config)]
    fixed = apply_host(conn, params, timeout=30)
    assert str(config) in fixed.changes
    assert config.read_text() == render_plan(params).files[str(config)]
    assert check_host(conn, params, timeout=10) == []
