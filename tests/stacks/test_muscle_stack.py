"""The muscle plane under Pulumi's mock runtime: per-node SSH steps, Coolify registration, DNS, bad config.

The host files come from the real hardening renderer (`inkmcp.nodes.render.render_plan`); what they must
contain (daemon.json runtimes, DOCKER-USER rules, gVisor selector) is checked in
test_muscle_hardening_contract.py.
"""

from __future__ import annotations

import hashlib
import json
import re
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pydantic import ValidationError

from inkmcp.infra import muscle
from inkmcp.infra.factory import gated_network, shell
from inkmcp.infra.factory_config import DockerPool, NetworkStackOutputs
from inkmcp.infra.muscle_config import (
    FactoryStackOutputs,
    MuscleConfig,
    MuscleSecrets,
    PlatformContainerSpec,
    RunServer,
)
from inkmcp.nodes.registry import make_ca
from inkmcp.nodes.render import PIN_PLATFORM, SCRIPTS_DIR, SELECTOR_CONFIG
from tests.stacks.pulumi_mocks import RecordingMonitor, install, is_secret, run, unwrap_secret
from tests.support import traversable_tmpdir

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAICoolifyKeyForTestsOnly coolify"
NETWORK = {
    "network_id": 4711.0, "network_cidr": "10.0.0.0/16", "cloud_subnet_cidr": "10.0.1.0/24",
    "vswitch_subnet_cidr": "10.0.2.0/24", "vswitch_id": 99.0, "vlan_id": 4000.0, "zone_name": "example.com",
    "zone_id": "123",
    # What NetworkPlane.outputs() exports for the vSwitch (numbers arrive as floats through the engine).
    "dedicated_servers": [{"number": 1000000.0 + n, "name": f"run{n}", "vswitch_ip": f"10.0.2.{20 + n}"}
                          for n in range(1, 10)],
}
REGISTRY_CA = make_ca("test registry CA")[0]
FACTORY = {"master_ipv4": "203.0.113.5", "master_private_ip": "10.0.1.10", "registry_endpoint": "10.0.1.12",
           "registry_ca_cert": REGISTRY_CA}
SSH_KEY, TOKEN, PULL = "SENTINEL-ssh-private-key", "SENTINEL-coolify-token", "SENTINEL-registry-pull"
PROXY_REF = "traefik:v3.6.23@sha256:" + "1a" * 32
SABLIER_REF = "sablierapp/sablier:1.16.2@sha256:" + "2b" * 32
PLATFORM = [PlatformContainerSpec(profile="proxy", images=[PROXY_REF]),
            PlatformContainerSpec(profile="sablier", images=[SABLIER_REF])]
COMMAND, COPY, RRSET = "command:remote:Command", "command:remote:CopyToRemote", "hcloud:index/zoneRrset:ZoneRrset"
COOLIFY = "pulumi-python:dynamic/coolify:Server"


def node(n: int, **over: Any) -> RunServer:
    base: dict[str, Any] = {"name": f"run{n}", "public_ip": f"198.51.100.{20 + n}", "private_ip": f"10.0.2.{20 + n}",
                            "index": n, "interface": "enp0s31f6", "labels": {"tier": "standard"}}
    base.update(over)
    return RunServer(**base)


def make_conf(servers: list[RunServer] | None = None, **over: Any) -> MuscleConfig:
    base: dict[str, Any] = {
        "network_stack": "acme/inkmcp-network/prod", "factory_stack": "acme/inkmcp-factory/prod",
        "coolify_private_key_uuid": "key-uuid-1", "coolify_public_key": KEY,
        "run_servers": [node(1), node(2)] if servers is None else servers,
        "platform_containers": PLATFORM,
    }
    base.update(over)
    return MuscleConfig(**base)


def build(conf: MuscleConfig | None = None, network: dict[str, Any] | None = None) -> muscle.MusclePlane:
    conf = conf or make_conf()
    holder: dict[str, muscle.MusclePlane] = {}

    def program() -> Any:
        args = muscle.MusclePlaneArgs(
            conf=conf,
            secrets=MuscleSecrets(pulumi.Output.secret(SSH_KEY), pulumi.Output.secret(TOKEN),
                                  pulumi.Output.secret(PULL)),
            network=gated_network(network or NETWORK, conf.check_against),
            factory=pulumi.Output.from_input(FACTORY).apply(FactoryStackOutputs.parse),
        )
        holder["plane"] = muscle.MusclePlane("muscle", args)
        return holder["plane"].wildcards

    run(program)
    return holder["plane"]


@pytest.fixture(autouse=True)
def monitor() -> RecordingMonitor:
    return install()


def plan_of(n: int = 1, conf: MuscleConfig | None = None) -> Any:
    return muscle.host_plan(conf or make_conf(), node(n), NetworkStackOutputs.parse(NETWORK))


def file_resource(n: int, path: str) -> str:
    return f"run-run{n}-file{path.replace('/', '-')}"


def short(urn: str) -> str:
    return urn.split("::")[-1]


def deps(r: Any) -> list[str]:
    return [short(d) for d in r.dependencies]


# --- graph ------------------------------------------------------------------------------------------


def test_graph_per_run_server(monitor: RecordingMonitor) -> None:
    build()
    counts: dict[str, int] = {}
    for t in monitor.types():
        counts[t] = counts.get(t, 0) + 1
    # per node: authorized-key, vswitch, harden, registry-pull, sablier, register (master); Coolify's record of
    # it (API); every file of the plan; 1 DNS record
    files = len(plan_of().files)
    assert files >= 13  # 9 hardening files + 4 of the gVisor selector
    assert counts == {"inkmcp:muscle:Plane": 1, "inkmcp:muscle:RunServer": 2, COMMAND: 12, COPY: 2 * files,
                      COOLIFY: 2, RRSET: 2}
    plane = monitor.by_name("muscle")
    for n in ("run1", "run2"):
        comp = monitor.by_name(f"run-{n}")
        assert comp.parent == plane.urn
        mine = [r for r in monitor.registered if r.name.startswith(f"run-{n}-")]
        assert len(mine) == 8 + files and all(r.parent == comp.urn for r in mine)
        assert not any(r.protect for r in mine)


def test_steps_run_in_order(monitor: RecordingMonitor) -> None:
    build()
    d = {r.name: deps(r) for r in monitor.registered}
    assert "run-run1-authorized-key" in d["run-run1-vswitch"]
    for path in plan_of().files:
        f = file_resource(1, path)
        assert "run-run1-vswitch" in d[f]
        assert f in d["run-run1-harden"]
    # harden, then the node's Sablier and pinned images, then Coolify is told (API), then the wildcard (master)
    assert "run-run1-harden" in d["run-run1-sablier"]
    assert "run-run1-sablier" in d["run-run1-coolify"]
    assert "run-run1-coolify" in d["run-run1-register"]
    # nodes are independent of each other
    assert not any(x.startswith("run-run2") for x in d["run-run1-register"] + d["run-run1-sablier"]
                   + d["run-run1-coolify"])


def test_ssh_targets(monitor: RecordingMonitor) -> None:
    build()
    for r in monitor.of_type(COMMAND) + monitor.of_type(COPY):
        conn = r.inputs["connection"]
        assert is_secret(conn)
        host = unwrap_secret(conn)["host"]
        if r.name.endswith("-register"):
            assert host == FACTORY["master_ipv4"], r.name  # registration runs on the Coolify master
        else:
            assert host == ("198.51.100.21" if r.name.startswith("run-run1") else "198.51.100.22"), r.name


def test_host_files_are_uploaded_and_reapplied_on_change(monitor: RecordingMonitor) -> None:
    build()
    plan = plan_of()
    mine = [r for r in monitor.of_type(COPY) if r.name.startswith("run-run1")]
    copies = {r.inputs["remotePath"]: r.inputs["source"] for r in mine}
    assert set(copies) == set(plan.files)
    for path, source in copies.items():
        assert isinstance(source, pulumi.StringAsset) and source.text == plan.files[path], path
    harden = monitor.by_name("run-run1-harden").inputs
    assert harden["create"] == shell(muscle.harden_script(plan))
    assert harden["triggers"] == [muscle.plan_digest(plan)]
    assert "harden.sh" not in harden["create"]  # the old, never-shipped entry point is gone
    # A changed allow-list (new proxy image) changes the uploaded config and re-triggers harden.
    newer = make_conf(platform_containers=[*PLATFORM, PlatformContainerSpec(
        profile="helper", images=["coollabsio/coolify-helper:1.0.15@sha256:" + "3c" * 32])])
    assert muscle.plan_digest(plan_of(conf=newer)) != muscle.plan_digest(plan)


def test_dns_record_per_run_server(monitor: RecordingMonitor) -> None:
    plane = build()
    records = {r.inputs["name"]: r.inputs for r in monitor.of_type(RRSET)}
    assert set(records) == {"*.s1.apps", "*.s2.apps"}
    for idx in (1, 2):
        rec = records[f"*.s{idx}.apps"]
        assert rec["zone"] == "example.com" and rec["type"] == "A" and rec["ttl"] == 300
        assert [v["value"] for v in rec["records"]] == [f"198.51.100.{20 + idx}"]
    holder: dict[str, Any] = {}
    run(lambda: plane.wildcards.apply(lambda w: holder.update(w=w)))
    assert holder["w"] == {"run1": "*.s1.apps.example.com", "run2": "*.s2.apps.example.com"}


def test_registration_goes_through_coolifys_api(monitor: RecordingMonitor) -> None:
    """Review #5/#7/#9: the node is registered by the Coolify dynamic provider (inkmcp.coolify.registration),
    with the proxy pinned to the proxy entry's first digest; the master step only sets the wildcard domain."""
    build()
    reg = monitor.by_name("run-run1-coolify").inputs
    assert reg["ip"] == "10.0.2.21" and reg["name"] == "run1" and reg["private_key_uuid"] == "key-uuid-1"
    assert json.loads(reg["description"].removeprefix("inkmcp:")) == {"index": 1, "labels": {"tier": "standard"}}
    assert reg["proxy_image"] == PROXY_REF and reg["sablier_plugin_version"] == "v1.3.0"
    assert reg["api_url"] == "http://10.0.1.10:8000"  # the master's private address unless configured
    assert reg["port"] == 22 and reg["user"] == "root"
    wildcard = monitor.by_name("run-run1-register").inputs
    assert "https://s1.apps.example.com" in wildcard["create"] and "UPDATE server_settings" in wildcard["create"]
    assert "curl" not in wildcard["create"] and wildcard.get("delete") is None  # the old DELETE-by-IP is gone
    assert "rm -f /root/.inkmcp/coolify-api-token" in wildcard["create"]  # the token the old step left there


def test_coolify_api_url_is_configurable_and_never_public_http(monitor: RecordingMonitor) -> None:
    build(make_conf(coolify_api_url="https://coolify.example.com/api/v1"))
    assert monitor.by_name("run-run1-coolify").inputs["api_url"] == "https://coolify.example.com"
    with pytest.raises(ValidationError, match=r"coolifyApiUrl .* public address 203\.0\.113\.5 \(review finding 14\)"):
        make_conf(coolify_api_url="http://203.0.113.5:8000")


def test_no_plaintext_secret_in_logged_commands(monitor: RecordingMonitor) -> None:
    build()
    for r in monitor.of_type(COMMAND) + monitor.of_type(COPY):
        for field in ("create", "update", "delete", "triggers", "source", "stdin"):
            text = json.dumps(r.inputs.get(field), default=str)
            assert TOKEN not in text and SSH_KEY not in text, (r.name, field)
    coolify = monitor.by_name("run-run1-coolify")
    assert is_secret(coolify.inputs["api_token"]) and unwrap_secret(coolify.inputs["api_token"]) == TOKEN
    assert all(TOKEN not in json.dumps(v, default=str) for k, v in coolify.inputs.items() if k != "api_token")


def test_adding_a_node_leaves_the_others_alone(monitor: RecordingMonitor) -> None:
    build(make_conf([node(1)]))
    def snapshot(m: RecordingMonitor) -> dict[tuple[str, str], str]:
        # The mocks number ids in registration order; Coolify's uuid of run1 would not change.
        uuid = re.compile(rf"(?<![0-9a-z]){m.by_name('run-run1-coolify').id}(?![0-9a-z])")
        return {(r.type, r.name): uuid.sub("<uuid>", json.dumps(r.inputs, sort_keys=True,
                                                               default=lambda a: getattr(a, "text", str(a))))
                for r in m.registered if r.name.startswith("run-run1")}

    one = snapshot(monitor)
    monitor2 = install()
    build(make_conf([node(1), node(3)]))
    two = snapshot(monitor2)
    assert one == two
    assert {r.inputs["name"] for r in monitor2.of_type(RRSET)} == {"*.s1.apps", "*.s3.apps"}


def test_no_run_servers_is_a_valid_plane(monitor: RecordingMonitor) -> None:
    build(make_conf([]))
    assert monitor.types() == ["inkmcp:muscle:Plane"]


# --- what this module renders ---------------------------------------------------------------------------


def test_netplan_vlan_fits_the_vswitch() -> None:
    net = NetworkStackOutputs.parse(NETWORK)
    doc = yaml.safe_load(muscle.netplan_vswitch(node(1), net))
    vlan = doc["network"]["vlans"]["vlan4000"]
    assert doc["network"]["version"] == 2
    assert vlan == {"id": 4000, "link": "enp0s31f6", "mtu": 1400, "addresses": ["10.0.2.21/24"],
                    "routes": [{"to": "10.0.0.0/16", "via": "10.0.2.1"}]}


def test_host_params_tell_the_renderer_the_plan() -> None:
    conf = make_conf()
    params = muscle.host_params(conf, node(1), NetworkStackOutputs.parse(NETWORK))
    assert params.root == "/" and params.apply_firewall and params.manage_services
    assert params.mtu == 1400
    assert params.daemon_address_pools() == [{"base": "172.30.0.0/16", "size": 24}]
    # The vSwitch subnet lies inside the Cloud Network: one blocked range, not two overlapping ones.
    assert [str(c) for c in params.private_cidrs] == ["10.0.0.0/16"]
    assert [str(a) for a in params.dns_resolvers] == ["185.12.64.1", "185.12.64.2"]
    assert params.ssh_allow_users == ["root"] and params.default_runtime == "inkmcp"
    assert params.gvisor is not None
    assert [(p.name, [i.ref for i in p.images]) for p in params.gvisor.platform] == [
        ("coolify-proxy", [PROXY_REF]), ("sablier", [SABLIER_REF])]
    tuned = muscle.host_params(make_conf(hardening={"auto_reboot": True}, ssh_allow_users=["root", "ops"],
                                         runsc_flags=["--network=host", "--host-uds=none", "--platform=kvm"]),
                               node(1), NetworkStackOutputs.parse(NETWORK))
    assert tuned.auto_reboot and tuned.ssh_allow_users == ["root", "ops"]
    assert tuned.gvisor is not None and tuned.gvisor.runsc_flags[-1] == "--platform=kvm"


FAKE_DOCKER = r"""#!/bin/sh
# A docker CLI that keeps containers, networks and pulled images as files under $STATE, logging every call. An
# image's ID is the sha256 of its ref; `image inspect REF` prints what the pin script reads (RepoDigests, Config).
echo "$*" >> "$STATE/calls"
digest() { printf 'sha256:%s\n' "$(printf %s "$1" | sha256sum | cut -c1-64)"; }
case "$1" in
  version) echo 26.1.5 ;;
  pull) [ "$2" = -q ] || exit 2; echo "$3" >> "$STATE/pulled"; echo "$3" ;;
  image)
    [ "$2" = inspect ] || exit 2
    if [ "$3" = --format ]; then grep -qxF "$5" "$STATE/pulled" || exit 1; digest "$5"; exit 0; fi
    grep -qxF "$3" "$STATE/pulled" || { echo "Error: No such image: $3" >&2; exit 1; }
    printf '[{"Id": "%s", "RepoDigests": ["%s@%s"], "Config": {"Entrypoint": ["/entry"], "Cmd": ["run"]}}]\n' \
      "$(digest "$3")" "${3%%[:@]*}" "${3##*@}" ;;
  network)
    case "$2" in
      inspect) [ -e "$STATE/net-$3" ] ;;
      create) for last in "$@"; do :; done; echo "$*" > "$STATE/net-$last" ;;
      *) exit 2 ;;
    esac ;;
  inspect) [ -e "$STATE/ctr-$4" ] && cat "$STATE/ctr-$4" ;;
  rm) [ "$2" = -f ] && rm -f "$STATE/ctr-$3" ;;
  run) for a in "$@"; do case "$a" in *@sha256:*) ref=$a ;; esac; done; digest "$ref" > "$STATE/ctr-sablier" ;;
  *) exit 2 ;;
esac
"""


def fake_digest(ref: str) -> str:
    """The image ID FAKE_DOCKER gives `ref`."""
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def run_sablier_script(script: str, tmp_path: Path, conf: MuscleConfig | None = None,
                       check: bool = True) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """The script under `bash -euo pipefail` (as pulumi-command runs it) with FAKE_DOCKER first on PATH and the
    node's selector config at tmp_path/selector.json: the one the harden step installed, i.e. rendered from
    `conf` (default make_conf()) when the file is not there yet. The pin command runs the repository's
    hardening/scripts/inkmcp-pin-platform against that file. Returns the docker calls of this run and the run."""
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    (bin_dir / "docker").write_text(FAKE_DOCKER)
    (bin_dir / "docker").chmod(0o755)
    (state / "calls").write_text("")
    config = tmp_path / "selector.json"
    if not config.exists():
        config.write_text(plan_of(conf=conf).files[SELECTOR_CONFIG])
    node_script = script.replace(PIN_PLATFORM, f"{SCRIPTS_DIR / 'inkmcp-pin-platform'} --config {config}")
    assert node_script != script, "the Sablier step does not run the pin script"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE": str(state)}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", node_script], capture_output=True, text=True, timeout=30,
                          env=env, check=False)
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return (state / "calls").read_text().splitlines(), done


def test_sablier_script_runs_the_pinned_sablier_once(tmp_path: Path) -> None:
    """The pin (§4.5 (3)) pulls both pinned digests the node lacks and writes their IDs on this node into the
    installed selector config, `coolify` is created with the vSwitch MTU only when missing, Sablier starts by
    digest without a runtime flag, and a second run changes nothing (no pull of what the node has, no write). No
    edit of Coolify's proxy file: that configuration lives in Coolify now (tests/coolify/test_registration.py)."""
    script = muscle.sablier_script(make_conf(), 1400)
    first, done = run_sablier_script(script, tmp_path)
    assert f"pull -q {PROXY_REF}" in first and f"pull -q {SABLIER_REF}" in first
    config = tmp_path / "selector.json"
    pinned = {i["ref"]: i for e in json.loads(config.read_text())["platform"] for i in e["images"]}
    assert {ref: (i["id"], i["entrypoint"], i["cmd"]) for ref, i in pinned.items()} == {
        ref: (fake_digest(ref), ["/entry"], ["run"]) for ref in (PROXY_REF, SABLIER_REF)}
    assert f"platform proxy {PROXY_REF} -> {fake_digest(PROXY_REF)}" in done.stdout
    assert "network create --attachable -o com.docker.network.driver.mtu=1400 coolify" in first
    run_call = next(c for c in first if c.startswith("run "))
    assert first.index(run_call) > max(first.index(f"pull -q {r}") for r in (PROXY_REF, SABLIER_REF))
    assert run_call.endswith(f"/var/run/docker.sock:/var/run/docker.sock {SABLIER_REF} start --provider.name=docker")
    assert "--runtime" not in run_call and "--network coolify" in run_call

    before = config.stat()
    second, done = run_sablier_script(script, tmp_path)
    assert not any(c.startswith(("run ", "rm ", "network create", "pull ")) for c in second), second
    assert "changed:" not in done.stdout
    assert (config.stat().st_ino, config.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A new pinned digest (first in the entry): the harden step uploads the new render (by digest only), this
    # step pins the new digest and replaces the container.
    newer = "sablierapp/sablier:1.17.0@sha256:" + "3d" * 32
    conf = make_conf(platform_containers=[PLATFORM[0], PlatformContainerSpec(profile="sablier",
                                                                             images=[newer, SABLIER_REF])])
    config.write_text(plan_of(conf=conf).files[SELECTOR_CONFIG])
    third, _ = run_sablier_script(muscle.sablier_script(conf, 1400), tmp_path)
    assert f"pull -q {newer}" in third and f"pull -q {SABLIER_REF}" not in third
    assert "rm -f sablier" in third and any(c.startswith("run ") and newer in c for c in third)
    assert "docker-compose.yml" not in script and "sed " not in script


def test_sablier_step_fails_when_the_nodes_selector_config_pins_another_proxy(tmp_path: Path) -> None:
    """§4.5: the pin and the proxy configuration read one value. A node whose installed selector config came
    from another `platformContainers` (a harden step that did not run, a hand edit) would be given a proxy digest
    it refuses: the step stops before Sablier or Coolify, naming the digest, and nothing is started."""
    other = "traefik:v3.6.24@sha256:" + "4e" * 32
    installed = make_conf(platform_containers=[PlatformContainerSpec(profile="proxy", images=[other]), PLATFORM[1]])
    calls, done = run_sablier_script(muscle.sablier_script(make_conf(), 1400), tmp_path, conf=installed, check=False)
    assert done.returncode == 1
    assert f"platform entry 'proxy' of {tmp_path / 'selector.json'} does not pin {PROXY_REF}" in done.stderr
    assert not any(c.startswith(("run ", "network create")) for c in calls), calls


def test_pin_in_the_sablier_step_reads_the_value_coolify_gets(monitor: RecordingMonitor) -> None:
    """The digests the Sablier step requires on the node are those of the `coolify` step's proxy configuration and
    of the selector config uploaded by the plan: one `platformContainers` value feeds all three."""
    build()
    reg = next(r for r in monitor.of_type(COOLIFY) if r.name == "run-run1-coolify").inputs
    step = monitor.by_name("run-run1-sablier").inputs["create"]
    assert f"--require proxy={reg['proxy_image']} --require sablier={SABLIER_REF}" in step
    selector = json.loads(plan_of().files[SELECTOR_CONFIG])
    assert [i["ref"] for e in selector["platform"] if e["entry"] == "proxy" for i in e["images"]] == [
        reg["proxy_image"]]


def test_register_script_sets_the_wildcard_in_coolifys_database(tmp_path: Path) -> None:
    """The master step against a real PostgreSQL (psql through a `docker exec coolify-db` shim): the wildcard lands
    on the server's settings row; an unknown uuid fails the step by name instead of updating nothing."""
    from inkmcp.store.embedded import EmbeddedPostgres

    pgdir = traversable_tmpdir("muscle-wildcard-")
    pg = EmbeddedPostgres(pgdir / "data")
    pg.start()
    try:
        url = pg.url(driver=None).get_secret_value()
        subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qc",
                        "CREATE TABLE servers (id serial PRIMARY KEY, uuid text UNIQUE);"
                        "CREATE TABLE server_settings (server_id int, wildcard_domain text);"
                        "INSERT INTO servers (uuid) VALUES ('k4bq9z0v3x8m2n7p5r1t6w0y');"
                        "INSERT INTO server_settings (server_id) VALUES (1);"], check=True, timeout=30)
        shim = tmp_path / "bin"
        shim.mkdir()
        (shim / "docker").write_text(
            '#!/bin/sh\n[ "$1 $2 $3 $4 $5 $6 $7" = "exec coolify-db psql -U coolify -d coolify" ] || exit 97\n'
            'shift 7\nexec psql "$PGURL" "$@"\n')
        (shim / "docker").chmod(0o755)
        env = {"PATH": f"{shim}:/usr/bin:/bin", "PGURL": url, "HOME": str(tmp_path)}
        script = shell(muscle.register_script(make_conf(), node(1), "example.com", "k4bq9z0v3x8m2n7p5r1t6w0y"))
        done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        got = subprocess.run(["psql", url, "-tAc", "SELECT wildcard_domain FROM server_settings"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
        assert got == "https://s1.apps.example.com"
        missing = shell(muscle.register_script(make_conf(), node(1), "example.com", "zzzzzzzzzzzzzzzzzzzzzzzz"))
        failed = subprocess.run(["bash", "-c", missing], env=env, capture_output=True, text=True, timeout=30)
        assert failed.returncode == 1 and "no Coolify server zzzzzzzzzzzzzzzzzzzzzzzz (run1)" in failed.stderr
    finally:
        pg.stop()
        shutil.rmtree(pgdir, ignore_errors=True)
    with pytest.raises(ValueError, match="not lowercase alphanumerics"):
        muscle.register_script(make_conf(), node(1), "example.com", "x'; DROP TABLE servers; --")


# --- bad config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("servers", "message"), [
    ([node(1), node(1, public_ip="198.51.100.99", private_ip="10.0.2.99", index=9)], "share name run1"),
    ([node(1), node(2, public_ip="198.51.100.21")], "share public_ip 198.51.100.21"),
    ([node(1), node(2, private_ip="10.0.2.21")], "share private_ip 10.0.2.21"),
    ([node(1), node(2, index=1)], "share index 1"),
])
def test_run_server_listed_twice(servers: list[RunServer], message: str, monitor: RecordingMonitor) -> None:
    with pytest.raises(ValidationError, match=f"run server listed twice: run_servers.0. and run_servers.1. {message}"):
        make_conf(servers)
    assert monitor.registered == []


@pytest.mark.parametrize(("over", "message"), [
    ({"docker_mtu": 1500}, "less than or equal to 1400"),
    ({"docker_address_pools": [DockerPool(base="198.51.100.0/24", size=26)]}, "overlaps run1.public_ip"),
    ({"coolify_public_key": "nope"}, "OpenSSH public key"),
    ({"apps_subdomain": "Apps_"}, "DNS labels"),
    ({"platform_containers": PLATFORM[:1]}, "platformContainers lacks sablier"),
    ({"hardening": {"mtu": 1500}}, r"hardening.mtu is set by the muscle stack from dockerMtu"),
    ({"hardening": {"auto_rebot": True}}, r"hardening.auto_rebot is not a HostParams field"),
    ({"ssh_allow_users": ["ops"]}, "must include root"),
    ({"dns_resolvers": ["dns.example"]}, "valid IPv4"),
    ({"hardening_apply": "bash harden.sh"}, "Extra inputs"),  # the dead entry point is gone
])
def test_bad_config_fails_in_the_schema(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_conf(**over)


def test_bad_node_fields() -> None:
    with pytest.raises(ValidationError, match="lowercase DNS label"):
        node(1, name="Run_1")
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        node(0)
    with pytest.raises(ValidationError, match="valid IPv4"):
        node(1, private_ip="10.0.2.300")


@pytest.mark.parametrize(("conf_over", "servers", "message"), [
    ({}, [node(1, private_ip="10.0.1.50")], "lies outside vswitch_subnet_cidr"),
    ({}, [node(1, private_ip="10.0.2.1")], "is the vSwitch subnet's gateway"),
    ({}, [node(1, private_ip="10.0.2.255")], "network/broadcast"),
    ({"docker_address_pools": [DockerPool(base="10.0.0.0/8")]}, [], "overlaps network_cidr"),
])
def test_bad_plan_across_stacks_creates_nothing(conf_over: dict[str, Any], servers: list[RunServer] | None,
                                                message: str, monitor: RecordingMonitor) -> None:
    conf = make_conf(servers, **conf_over)
    with pytest.raises(Exception):  # noqa: B017 - the engine wraps the ValueError; the message is checked below
        build(conf)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match=message):
        conf.check_against(NetworkStackOutputs.parse(NETWORK))


@pytest.mark.parametrize(("attached", "message"), [
    ([{"number": 1000001, "name": "run1", "vswitch_ip": "10.0.2.41"}],
     r"run server run1: privateIp 10.0.2.21 is no vswitch_ip of the network stack's dedicated servers "
     r"\(run1=10.0.2.41\); add the server"),
    ([{"number": 1000001, "name": "s1", "vswitch_ip": "10.0.2.21"}],
     r"privateIp 10.0.2.21 belongs to dedicated server 's1' \(Robot #1000001\) in the network stack"),
    ([], r"\(none with a vswitch_ip\)"),
    (None, "exports no dedicated_servers"),
])
def test_run_servers_must_be_attached_to_the_vswitch(attached: Any, message: str, monitor: RecordingMonitor) -> None:
    """Review #11: the muscle reads the network stack's dedicated_servers; a run server the vSwitch does not
    carry (or carries under another name) is refused before anything is created."""
    network = {**NETWORK, "dedicated_servers": attached}
    conf = make_conf([node(1)])
    with pytest.raises(Exception):  # noqa: B017 - wrapped by the engine
        build(conf, network)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match=message):
        conf.check_against(NetworkStackOutputs.parse(network))
    make_conf([]).check_against(NetworkStackOutputs.parse(network))  # no run servers: nothing to check


def test_an_unnamed_attachment_at_the_right_address_is_enough() -> None:
    network = {**NETWORK, "dedicated_servers": [{"number": 1000001, "name": None, "vswitch_ip": "10.0.2.21"}]}
    make_conf([node(1)]).check_against(NetworkStackOutputs.parse(network))


def test_runsc_path_reaches_the_selector_config() -> None:
    """Review #18: runsc installed outside /usr/bin (a manual install) is configurable, and the harden step's
    presence check and the selector both use it."""
    plan = plan_of(conf=make_conf(runsc_path="/usr/local/bin/runsc"))
    assert json.loads(plan.files["/etc/inkmcp/runtime-selector.json"])["runsc"] == "/usr/local/bin/runsc"
    assert any("[ -x /usr/local/bin/runsc ]" in c for c in plan.commands)
    with pytest.raises(ValueError, match="not the selector"):
        muscle.host_params(make_conf(runsc_path="/usr/local/sbin/runc"), node(1), NetworkStackOutputs.parse(NETWORK))


def test_run_servers_need_the_dns_zone(monitor: RecordingMonitor) -> None:
    conf, no_zone = make_conf(), {**NETWORK, "zone_name": None, "zone_id": None}
    with pytest.raises(Exception):  # noqa: B017 - wrapped by the engine
        build(conf, no_zone)
    assert [r for r in monitor.registered if r.custom] == []
    with pytest.raises(ValueError, match="exports no zone_name"):
        conf.check_against(NetworkStackOutputs.parse(no_zone))
    make_conf([]).check_against(NetworkStackOutputs.parse(no_zone))  # no nodes, no zone needed


def test_factory_outputs_missing_is_named() -> None:
    with pytest.raises(ValueError, match="factory stack outputs lack"):
        FactoryStackOutputs.parse({"master_ipv4": "203.0.113.5"})


# --- the stack program -----------------------------------------------------------------------------------


def test_stack_program_composes_from_config(monitor: RecordingMonitor) -> None:
    monitor.mocks.stack_outputs.update({  # type: ignore[attr-defined]
        "acme/inkmcp-network/prod": NETWORK, "acme/inkmcp-factory/prod": FACTORY})
    values = {
        "networkStack": "acme/inkmcp-network/prod", "factoryStack": "acme/inkmcp-factory/prod",
        "coolifyPrivateKeyUuid": "key-uuid-1", "coolifyPublicKey": KEY,
        "runServers": [{"name": "run1", "publicIp": "198.51.100.21", "privateIp": "10.0.2.21", "index": 1,
                        "interface": "enp0s31f6", "labels": {"tier": "standard"}}],
        "platformContainers": [{"profile": "proxy", "images": [PROXY_REF]},
                               {"profile": "sablier", "images": [SABLIER_REF]}],
        "sshPrivateKey": SSH_KEY, "coolifyApiToken": TOKEN, "registryPullPassword": PULL,
    }
    pulumi.runtime.set_all_config(
        {f"inkmcp:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in values.items()},
        ["inkmcp:sshPrivateKey", "inkmcp:coolifyApiToken", "inkmcp:registryPullPassword"])
    run(lambda: runpy.run_path(str(ROOT / "stacks/muscle/__main__.py")))
    assert len([r for r in monitor.registered if r.type == "pulumi:pulumi:StackReference"]) == 2
    assert [r.inputs["name"] for r in monitor.of_type(RRSET)] == ["*.s1.apps"]
    assert [(r.name, r.inputs["proxy_image"]) for r in monitor.of_type(COOLIFY)] == [("run-run1-coolify", PROXY_REF)]
    assert PROXY_REF in json.dumps(monitor.by_name(file_resource(1, "/etc/inkmcp/runtime-selector.json")).inputs,
                                  default=lambda a: getattr(a, "text", str(a)))


def test_every_muscle_script_passes_shellcheck(tmp_path: Path) -> None:
    from tests.stacks.test_factory_stack import assert_shellcheck_clean

    conf, net = make_conf(), NetworkStackOutputs.parse(NETWORK)
    assert_shellcheck_clean({
        "authorized_key": muscle.authorized_key_script(KEY),
        "vswitch": muscle.vswitch_script(muscle.netplan_vswitch(node(1), net)),
        "register": muscle.register_script(conf, node(1), "example.com", "k4bq9z0v3x8m2n7p5r1t6w0y"),
        "sablier": muscle.sablier_script(conf, 1400),
        "harden": muscle.harden_script(plan_of()),
    }, tmp_path)
    # The plan's commands, which harden_script wraps in `sh -c` strings shellcheck cannot see into.
    assert_shellcheck_clean({f"cmd{i}": c for i, c in enumerate(plan_of().commands)}, tmp_path)
