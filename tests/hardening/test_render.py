"""Rendering: key lines of every file, valid JSON, parameter validation, shellcheck, `sshd -t`, and the
daemon.json merge logic the host runs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from inkmcp.nodes import HostParams, render_host_files, render_plan
from inkmcp.nodes.check import daemon_json_tool
from inkmcp.nodes.render import SCRIPTS_DIR
from tests.hardening.conftest import make_keys, need_sshd, sshd_config

REPO = Path(__file__).resolve().parents[2]
SHELLCHECK = REPO / ".venv" / "bin" / "shellcheck"


def params(**kw: object) -> HostParams:
    base: dict[str, object] = {
        "root": "/srv/stage",
        "dns_resolvers": ["198.51.100.53"],
        "private_cidrs": ["10.20.0.0/16", "192.168.40.0/24"],
        "address_pools": [{"base": "172.30.0.0/16", "size": 24}],
        "ssh_allow_users": ["root", "deploy"],
    }
    base.update(kw)
    return HostParams(**base)


def file(p: HostParams, suffix: str) -> str:
    files = render_host_files(p)
    (path,) = [k for k in files if k.endswith(suffix)]
    return files[path]


def test_paths_are_under_the_root_prefix() -> None:
    files = render_host_files(params())
    assert files and all(p.startswith("/srv/stage/") for p in files)
    assert "/srv/stage/etc/ssh/sshd_config.d/50-inkmcp-hardening.conf" in files
    live = render_host_files(params(root="/"))
    assert "/etc/inkmcp/hardening/docker-user.rules" in live


def test_docker_user_rules_order_and_content() -> None:
    rules = [line for line in file(params(), "docker-user.rules").splitlines() if line.startswith("-A DOCKER-USER")]
    assert rules[0] == "-A DOCKER-USER -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    assert rules[-1] == "-A DOCKER-USER -j RETURN"
    dns = "-A DOCKER-USER -d 198.51.100.53/32 -i br-+ -p udp -m udp --dport 53 -j ACCEPT"
    meta = "-A DOCKER-USER -d 169.254.169.254/32 -i br-+ -p tcp -j REJECT --reject-with tcp-reset"
    smtp = "-A DOCKER-USER -i docker0 -p tcp -m multiport --dports 25,465,587 -j REJECT --reject-with tcp-reset"
    priv = "-A DOCKER-USER -d 192.168.40.0/24 -i br-+ -j REJECT --reject-with icmp-admin-prohibited"
    for line in (dns, meta, smtp, priv):
        assert line in rules
    # DNS must be allowed before any reject (a resolver may sit in a private range).
    first_reject = next(i for i, r in enumerate(rules) if "REJECT" in r)
    assert max(i for i, r in enumerate(rules) if "--dport 53" in r) < first_reject
    # Every reject is limited to container bridges, never the host's own traffic.
    assert all(" -i docker0 " in r or " -i br-+ " in r for r in rules if "REJECT" in r)
    assert not any("DROP" in r for r in rules)
    text = file(params(), "docker-user.rules")
    assert text.index("*filter") < text.index(":DOCKER-USER") < text.index("-F DOCKER-USER") < text.index("COMMIT")


def test_daemon_managed_json() -> None:
    runtimes = {"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}}
    data = json.loads(file(params(runtimes=runtimes, default_runtime="runsc", mtu=1400), "daemon.managed.json"))
    assert data["no-new-privileges"] is True and data["live-restore"] is True and data["iptables"] is True
    assert data["log-driver"] == "json-file"
    assert data["log-opts"] == {"max-size": "10m", "max-file": "3"}  # daemon.json wants strings here
    assert data["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]
    assert data["mtu"] == 1400
    assert data["runtimes"] == runtimes and data["default-runtime"] == "runsc"
    plain = json.loads(file(params(), "daemon.managed.json"))
    assert "runtimes" not in plain and "default-runtime" not in plain  # never wipe what runsc install wrote


def test_sshd_sysctl_apt_unit_lines() -> None:
    sshd = file(params(), "50-inkmcp-hardening.conf").splitlines()
    for line in (
        "PasswordAuthentication no",
        "PermitRootLogin prohibit-password",
        "AllowUsers root deploy",
        "MaxAuthTries 3",
        "KbdInteractiveAuthentication no",
    ):
        assert line in sshd
    assert not any(line.startswith("Ciphers") and "cbc" in line for line in sshd)
    sysctl = file(params(), "60-inkmcp-hardening.conf").splitlines()
    for line in ("net.ipv4.ip_forward = 1", "net.ipv4.conf.all.rp_filter = 1", "net.ipv4.conf.all.send_redirects = 0"):
        assert line in sysctl
    assert 'APT::Periodic::Unattended-Upgrade "1";' in file(params(), "20auto-upgrades")
    assert 'Automatic-Reboot "false"' in file(params(), "52inkmcp-unattended-upgrades")
    unit = file(params(), "inkmcp-docker-user.service").splitlines()
    for line in ("After=docker.service", "PartOf=docker.service", "WantedBy=docker.service", "Type=oneshot"):
        assert line in unit
    assert (
        "ExecStart=/usr/local/sbin/inkmcp-docker-user-apply /etc/inkmcp/hardening/docker-user.rules" in unit
    ), "the unit names real host paths even when staged under a root prefix"


def test_every_setting_is_commented() -> None:
    """Each managed config file explains itself: at least as many comment lines as setting blocks."""
    p = params()
    for suffix in ("50-inkmcp-hardening.conf", "60-inkmcp-hardening.conf", "docker-user.rules"):
        text = file(p, suffix)
        assert sum(1 for line in text.splitlines() if line.startswith("#")) >= 8, suffix


def test_plan_commands_depend_on_root() -> None:
    staged = render_plan(params())
    assert len(staged.commands) == 1 and "inkmcp-daemon-json" in staged.commands[0]
    assert "/srv/stage/etc/docker/daemon.json" in staged.commands[0]
    live = render_plan(params(root="/"))
    assert any("inkmcp-docker-user-apply" in c for c in live.commands)
    assert any("sshd -t && systemctl reload ssh" in c for c in live.commands)
    assert staged.modes["/srv/stage/usr/local/sbin/inkmcp-docker-user-apply"] == 0o755


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"address_pools": [{"base": "10.20.128.0/20", "size": 24}]}, "overlaps"),
        ({"default_runtime": "runsc"}, "neither 'runc'"),
        ({"runtimes": {"runsc": {"runtimeArgs": []}}}, "needs a 'path'"),
        ({"ssh_allow_users": []}, "at least 1"),
        ({"ssh_allow_users": ["root; rm"]}, "not a valid user"),
        ({"container_interfaces": ["br-+ -j ACCEPT"]}, "interface name"),
        ({"root": "relative/dir"}, "absolute"),
        ({"mtu": 100}, "greater than or equal"),
        ({"address_pools": [{"base": "172.30.0.0/16", "size": 12}]}, "larger than its base"),
        ({"private_cidrs": ["10.0.0.1/8"]}, "not a valid IPv4 network"),
        ({"unknown": 1}, "Extra inputs"),
    ],
)
def test_bad_params_fail_before_rendering(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        params(**change)


def shell_scripts() -> list[Path]:
    """Every shell script we own: hardening/ (except gvisor/, another owner) and the test deps script."""
    found = [REPO / "scripts" / "test-system-deps.sh"]
    for path in sorted((REPO / "hardening").rglob("*")):
        if not path.is_file() or "gvisor" in path.relative_to(REPO / "hardening").parts:
            continue
        first = path.read_text(errors="replace").split("\n", 1)[0]
        interpreter = first.split("/")[-1] if first.startswith("#!") else ""
        if path.suffix == ".sh" or interpreter.split()[-1:] in (["sh"], ["bash"]) or interpreter in ("sh", "bash"):
            found.append(path)
    return found


def test_shell_scripts_found() -> None:
    names = {p.name for p in shell_scripts()}
    assert {"inkmcp-docker-user-apply", "test-system-deps.sh"} <= names


@pytest.mark.parametrize("script", shell_scripts(), ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    r = subprocess.run([str(SHELLCHECK), "-x", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_rendered_sshd_config_passes_sshd_t(tmp_path: Path) -> None:
    """The drop-in inside a full sshd_config (Include first, like Debian's) is accepted by `sshd -t`."""
    need_sshd()
    host_key, _client = make_keys(tmp_path)
    dropin_dir = tmp_path / "sshd_config.d"
    dropin_dir.mkdir()
    (dropin_dir / "50-inkmcp-hardening.conf").write_text(file(params(), "50-inkmcp-hardening.conf"))
    cfg = tmp_path / "sshd_config"
    cfg.write_text(sshd_config(tmp_path, 2222, host_key, include=f"{dropin_dir}/*.conf"))
    r = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(cfg)], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    # And the values in force are ours (sshd -T prints the effective config).
    r = subprocess.run(["/usr/sbin/sshd", "-T", "-f", str(cfg)], capture_output=True, text=True, timeout=10)
    effective = r.stdout.splitlines()
    assert "passwordauthentication no" in effective
    assert "permitrootlogin without-password" in effective  # sshd's spelling of prohibit-password
    assert "maxauthtries 3" in effective
    # A broken drop-in is caught by the same check (what apply relies on before reloading sshd).
    (dropin_dir / "50-inkmcp-hardening.conf").write_text("Ciphers nonsense-cipher\n")
    r = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(cfg)], capture_output=True, text=True, timeout=10)
    assert r.returncode != 0


# --- the daemon.json merge the host runs ---

COOLIFY_DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "default-address-pools": [{"base": "10.0.0.0/8", "size": 24}],
}


def test_merge_keeps_foreign_keys_and_enforces_ours() -> None:
    tool = daemon_json_tool()
    managed = json.loads(file(params(runtimes={"runsc": {"path": "/usr/bin/runsc"}}), "daemon.managed.json"))
    current = {
        **COOLIFY_DAEMON_JSON,
        "registry-mirrors": ["https://mirror.example"],
        "runtimes": {"kata": {"path": "/usr/bin/kata"}},
        "firewall-backend": "nftables",
    }
    merged = tool.converge(current, managed)
    assert merged["registry-mirrors"] == ["https://mirror.example"]
    assert merged["runtimes"] == {"kata": {"path": "/usr/bin/kata"}, "runsc": {"path": "/usr/bin/runsc"}}
    assert merged["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]
    assert "firewall-backend" not in merged
    drift = tool.drift(current, managed)
    assert any(d.startswith("default-address-pools is") and "10.0.0.0/8" in d for d in drift)
    assert any(d.startswith("firewall-backend") for d in drift)
    assert tool.drift(merged, managed) == []
    assert tool.converge(merged, managed) == merged


def test_merge_script_cli(tmp_path: Path) -> None:
    managed = tmp_path / "managed.json"
    managed.write_text(file(params(), "daemon.managed.json"))
    target = tmp_path / "docker" / "daemon.json"
    script = str(SCRIPTS_DIR / "inkmcp-daemon-json")

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, script, mode, str(managed), str(target)], capture_output=True, text=True, timeout=10
        )

    r = run("check")
    assert r.returncode == 1 and "missing" in r.stdout
    assert run("merge").stdout.strip() == f"changed: {target}"
    assert run("merge").stdout == ""  # idempotent
    assert run("check").returncode == 0
    target.write_text(json.dumps(COOLIFY_DAEMON_JSON))  # what Coolify's installer writes
    r = run("check")
    assert r.returncode == 1 and "10.0.0.0/8" in r.stdout
    assert run("merge").stdout.strip() == f"changed: {target}"
    assert json.loads((tmp_path / "docker" / "daemon.json.before-inkmcp").read_text()) == COOLIFY_DAEMON_JSON
    target.write_text("{not json")
    r = run("merge")
    assert r.returncode != 0 and target.read_text() == "{not json"  # never overwrite what we cannot parse


# --- gVisor: platform profiles, the pin resolver, the shim guard in the plan ---

PIN = "traefik:v3.6.23@sha256:" + "12" * 32


def gvisor_params(**kw: object) -> HostParams:
    from inkmcp.nodes.render import GvisorParams, PinnedImage, proxy_profile

    gvisor = GvisorParams(platform=[proxy_profile([PinnedImage(ref=PIN)])])
    return params(gvisor=gvisor, **kw)


def test_plan_carries_the_shim_guard_and_its_apt_hook() -> None:
    staged = render_plan(gvisor_params())
    guard, hook = "/srv/stage/usr/local/sbin/inkmcp-shim-guard", "/srv/stage/etc/apt/apt.conf.d/53inkmcp-shim-guard"
    assert staged.files[guard] == (SCRIPTS_DIR / "inkmcp-shim-guard").read_text() and staged.modes[guard] == 0o755
    assert staged.modes[hook] == 0o644
    # The hook names the real host path even when staged, and does not swallow a failure.
    assert ('DPkg::Post-Invoke { "if [ -x /usr/local/sbin/inkmcp-shim-guard ]; then '
            '/usr/local/sbin/inkmcp-shim-guard; fi"; };') in staged.files[hook]
    install = next(i for i, c in enumerate(staged.commands) if "install.sh" in c)
    assert staged.commands[install + 1] == f"bash {guard} --root /srv/stage"  # staged: never this machine's shims
    live = render_plan(gvisor_params(root="/"))
    assert "bash /usr/local/sbin/inkmcp-shim-guard" in live.commands  # live: also scans the running containerd
    assert not any("shim-guard" in p for p in render_plan(params()).files), "no gVisor, no guard"


def test_selector_config_carries_the_profiles() -> None:
    cfg = json.loads(file(gvisor_params(), "runtime-selector.json"))
    (entry,) = cfg["platform"]
    assert (entry["entry"], entry["name"], entry["reserve"]) == ("proxy", "coolify-proxy", "name")
    assert entry["images"] == [{"ref": PIN, "id": None, "entrypoint": None, "cmd": None}]
    assert {(m["destination"], m["read_only"]) for m in entry["mounts"]} == {("/var/run/docker.sock", True),
                                                                             ("/traefik", False)}
    assert entry["args"]["kind"] == "flags" and entry["args"]["forbid_prefixes"] == ["--experimental.localplugins"]
    assert cfg["coolify_dir"] == "/data/coolify"


@pytest.mark.parametrize(("profile", "message"), [
    ({"name": ".*"}, "matches tenant container names"),
    ({"name": "[a-z0-9]{24}"}, "matches tenant container names such as 'k0c4s8w4kcs0oc8gw0o4gss8'"),
    ({"name": "backup-of-.*"}, "matches tenant container names"),
    ({"name": "coolify-(proxy"}, "not a valid regex"),
    ({"images": []}, "at least 1 item"),
    ({"images": [{}]}, "needs its repo digest (ref) or its image ID"),
    ({"images": [{"ref": "traefik:v3.6"}]}, "is not a repo digest"),
    ({"images": [{"id": "sha256:" + "0" * 64}]}, "placeholder"),
    ({"mounts": [{"source": "/a", "destination": "/x", "read_only": True},
                 {"source": "/b", "destination": "/x", "read_only": True}]}, "listed twice"),
    ({"mounts": [{"source": "rel", "destination": "/x", "read_only": True}]}, "absolute path"),
    ({"args": {"kind": "image", "value": ["x"]}}, "only for kind 'exact'"),
    ({"args": {"kind": "exact", "plugin_modules": ["x"]}}, "only for kind 'flags'"),
    ({"entry": "Proxy!"}, "should match pattern"),
])
def test_platform_profile_validation_names_the_fix(profile: dict[str, object], message: str) -> None:
    from inkmcp.nodes.render import PlatformProfile

    base: dict[str, object] = {"entry": "proxy", "name": "coolify-proxy", "images": [{"ref": PIN}],
                               "args": {"kind": "flags"}}
    with pytest.raises(ValidationError, match=re.escape(message)):
        PlatformProfile(**{**base, **profile})


def test_helper_may_share_the_database_name_shape() -> None:
    """The helper's name is a 24-char uuid like a database's: allowed because it reserves name + image only."""
    from inkmcp.nodes.render import PinnedImage, helper_profile

    helper = helper_profile([PinnedImage(ref="coollabsio/coolify-helper:1.0.15@sha256:" + "3" * 64)], home="/home/c")
    assert helper.reserve == "name_and_image" and helper.auto_remove is True
    assert [(m.source, m.optional) for m in helper.mounts] == [
        ("/var/run/docker.sock", False), ("/home/c/.docker/buildx", False), ("/home/c/.docker/config.json", True)]


def test_duplicate_platform_entries_are_refused() -> None:
    from inkmcp.nodes.render import GvisorParams, PinnedImage, sablier_profile

    one = sablier_profile([PinnedImage(ref="sablierapp/sablier:1.16.2@sha256:" + "2" * 64)])
    with pytest.raises(ValidationError, match="listed twice; give each entry all its images in one"):
        GvisorParams(platform=[one, one])


def inspect_json(image_id: str, repo_digests: list[str], entrypoint: list[str] | None, cmd: list[str] | None) -> str:
    """The fields of `docker image inspect` the resolver reads, in Docker's shape (null when unset)."""
    return json.dumps([{"Id": image_id, "RepoTags": ["traefik:v3.6.23"], "RepoDigests": repo_digests,
                        "Config": {"Entrypoint": entrypoint, "Cmd": cmd, "Labels": None}}])


def test_resolver_reads_the_node_and_checks_the_digest() -> None:
    from inkmcp.nodes.render import DockerCommandError, resolve_pinned_images

    digest = PIN.rsplit("@", 1)[1]
    calls: list[list[str]] = []

    def node(answer: str, pull_fails: bool = False) -> Callable[[list[str]], str]:
        def run(args: list[str]) -> str:
            calls.append(list(args))
            if args[0] == "pull" and pull_fails:
                raise DockerCommandError("docker pull failed: no route to registry")
            return answer if args[:2] == ["image", "inspect"] else ""
        return run

    image_id = "sha256:" + "ee" * 32
    got = resolve_pinned_images(node(inspect_json(image_id, [f"traefik@{digest}"], ["/entrypoint.sh"], ["traefik"])),
                                [PIN])
    assert calls == [["pull", "--quiet", PIN], ["image", "inspect", PIN]]
    pinned = got[PIN]
    assert (pinned.ref, pinned.id, pinned.entrypoint, pinned.cmd) == (PIN, image_id, ["/entrypoint.sh"], ["traefik"])
    assert pinned.resolved
    # An image with no entrypoint: [] (known to be empty), not None (unknown).
    none = resolve_pinned_images(node(inspect_json(image_id, [f"traefik@{digest}"], None, ["sh"])), [PIN], pull=False)
    assert none[PIN].entrypoint == []
    # The containerd image store: the ID is the pinned digest itself.
    assert resolve_pinned_images(node(inspect_json(digest, [], [], [])), [PIN], pull=False)[PIN].id == digest
    # A local image that does not carry the pinned digest (e.g. a re-tag) is refused, naming both.
    with pytest.raises(DockerCommandError, match="does not carry digest"):
        resolve_pinned_images(node(inspect_json(image_id, ["traefik@sha256:" + "99" * 32], [], [])), [PIN])
    # Pull fails and the image is not there: the error carries both reasons.
    def absent(args: list[str]) -> str:
        raise DockerCommandError(f"docker {args[0]} failed")
    with pytest.raises(DockerCommandError, match=r"is not on the node \(pull failed"):
        resolve_pinned_images(absent, [PIN])
    with pytest.raises(ValueError, match="is not a repo digest"):
        resolve_pinned_images(absent, ["traefik:v3.6"])


def test_local_docker_reports_the_failing_command() -> None:
    from inkmcp.nodes.render import DockerCommandError, local_docker

    with pytest.raises(DockerCommandError, match=r"docker image inspect x failed \(exit 1\)"):
        local_docker("/bin/false")(["image", "inspect", "x"])
