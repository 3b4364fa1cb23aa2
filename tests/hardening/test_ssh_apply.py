"""The SSH path: a real sshd on loopback, fabric applying the hardening to a throw-away root directory
(never this machine's /etc), drift reported before, convergence, a silent second run, and a daemon.json
rewritten the way Coolify's installer does it detected and repaired."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric import Connection
from typer.testing import CliRunner

from inkmcp.nodes.apply import apply_host, connect
from inkmcp.nodes.check import check_host
from inkmcp.nodes.cli import nodes_app
from inkmcp.nodes.render import HostParams
from tests.hardening.conftest import SshServer, free_port, make_keys, sshd_config, start_sshd, stop_pid

COOLIFY_DAEMON_JSON = {
    "log-driver": "json-file",
    "log-opts": {"max-size": "10m", "max-file": "3"},
    "default-address-pools": [{"base": "10.0.0.0/8", "size": 24}],
}


@pytest.fixture
def conn(sshd_server: SshServer) -> Iterator[Connection]:
    c = connect("127.0.0.1", user="root", port=sshd_server.port, key_filename=sshd_server.client_key)
    yield c
    c.close()


def staged(root: Path, **kw: object) -> HostParams:
    return HostParams(
        root=str(root),
        dns_resolvers=["198.51.100.53"],
        private_cidrs=["10.20.0.0/16"],
        runtimes={"runsc": {"path": "/usr/bin/runsc", "runtimeArgs": ["--network=host"]}},
        **kw,
    )


def test_throwaway_root_is_never_live(tmp_path: Path) -> None:
    p = staged(tmp_path / "root")
    assert not p.apply_firewall and not p.manage_services


def test_drift_converge_and_silent_second_run(conn: Connection, tmp_path: Path) -> None:
    root = tmp_path / "root"
    params = staged(root)
    drift = check_host(conn, params, timeout=10)
    kinds = {(d.kind, d.detail) for d in drift}
    assert ("file", "missing") in kinds and ("daemon.json", "missing") in kinds
    # 10 templates (incl. the IPv6 rules, cron.allow and at.allow) + 2 scripts
    assert len([d for d in drift if d.kind == "file"]) == 12

    first = apply_host(conn, params, timeout=10)
    assert f"{root}/etc/docker/daemon.json" in first.changes
    assert f"{root}/etc/ssh/sshd_config.d/50-inkmcp-hardening.conf" in first.changes
    assert check_host(conn, params, timeout=10) == []

    second = apply_host(conn, params, timeout=10)
    assert second.changes == [] and second.summary() == "no changes"

    assert os.stat(root / "usr/local/sbin/inkmcp-docker-user-apply").st_mode & 0o777 == 0o755
    # cron and at admit root alone: a tenant uid's `crontab -` / `at` job would run outside every sandbox
    for name in ("cron.allow", "at.allow"):
        assert (root / "etc" / name).read_text() == "root\n"
        assert os.stat(root / "etc" / name).st_mode & 0o777 == 0o644
    daemon = json.loads((root / "etc/docker/daemon.json").read_text())
    assert daemon["runtimes"]["runsc"]["runtimeArgs"] == ["--network=host"]
    assert not Path("/etc/inkmcp/hardening/docker-user.rules").exists(), "a staged apply touched /etc"


def test_coolify_rewrite_and_hand_edits_are_drift(conn: Connection, tmp_path: Path) -> None:
    root = tmp_path / "root"
    params = staged(root)
    apply_host(conn, params, timeout=10)
    # Coolify's installer rewrites daemon.json: its own pool, no runtimes, our keys gone. An operator key stays.
    (root / "etc/docker/daemon.json").write_text(json.dumps({**COOLIFY_DAEMON_JSON, "registry-mirrors": ["https://m"]}))
    # Someone re-enables passwords by hand and loosens the apply script's mode.
    dropin = root / "etc/ssh/sshd_config.d/50-inkmcp-hardening.conf"
    dropin.write_text(dropin.read_text().replace("PasswordAuthentication no", "PasswordAuthentication yes"))
    os.chmod(root / "usr/local/sbin/inkmcp-docker-user-apply", 0o775)  # noqa: S103 - the drift under test

    drift = [str(d) for d in check_host(conn, params, timeout=10)]
    assert any("default-address-pools is" in d and "10.0.0.0/8" in d for d in drift), drift
    assert any("runtimes missing" in d for d in drift), drift
    assert any("no-new-privileges missing" in d for d in drift), drift
    assert any(d.endswith("50-inkmcp-hardening.conf: content differs") for d in drift), drift
    assert any("inkmcp-docker-user-apply: mode 775 (want 755)" in d for d in drift), drift

    report = apply_host(conn, params, timeout=10)
    assert f"{root}/etc/docker/daemon.json" in report.changes
    assert check_host(conn, params, timeout=10) == []
    fixed = json.loads((root / "etc/docker/daemon.json").read_text())
    assert fixed["registry-mirrors"] == ["https://m"]  # keys we do not own survive the merge
    assert fixed["default-address-pools"] == [{"base": "172.30.0.0/16", "size": 24}]
    assert apply_host(conn, params, timeout=10).changes == []


def test_cli_check_and_harden(sshd_server: SshServer, tmp_path: Path) -> None:
    root = tmp_path / "root"
    base = [
        "harden", "127.0.0.1", "--port", str(sshd_server.port), "--key", str(sshd_server.client_key),
        "--root", str(root), "--private-cidr", "10.20.0.0/16", "--timeout", "10",
    ]  # fmt: skip
    runner = CliRunner()
    r = runner.invoke(nodes_app, [*base, "--check"])
    assert r.exit_code == 1 and "drift file:" in r.output and "missing" in r.output
    r = runner.invoke(nodes_app, base)
    assert r.exit_code == 0 and "changed:" in r.output, r.output
    r = runner.invoke(nodes_app, base)
    assert r.exit_code == 0 and r.output.strip() == "no changes", r.output
    r = runner.invoke(nodes_app, [*base, "--check"])
    assert r.exit_code == 0 and "no drift" in r.output
    assert "AllowUsers root" in (root / "etc/ssh/sshd_config.d/50-inkmcp-hardening.conf").read_text()
    r = runner.invoke(nodes_app, [*base, "--private-cidr", "172.30.0.0/16"])
    assert r.exit_code == 2 and "overlaps" in r.output


def test_hardened_sshd_still_admits_our_client(tmp_path: Path) -> None:
    """An sshd running with the rendered drop-in (modern kex/ciphers only, AllowUsers) still lets
    paramiko/fabric in: hardening must never lock out the tool that applies it."""
    host_key, client_key = make_keys(tmp_path)
    dropin_dir = tmp_path / "sshd_config.d"
    dropin_dir.mkdir()
    from inkmcp.nodes import render_host_files

    files = render_host_files(HostParams(root=str(tmp_path / "r"), ssh_allow_users=["root"]))
    dropin = next(v for k, v in files.items() if k.endswith("50-inkmcp-hardening.conf"))
    (dropin_dir / "50-inkmcp-hardening.conf").write_text(dropin)
    allowed = next(line.split()[1].split(",") for line in dropin.splitlines() if line.startswith("Ciphers "))
    port = free_port()
    server = start_sshd(tmp_path, sshd_config(tmp_path, port, host_key, f"{dropin_dir}/*.conf"), port, client_key)
    try:
        with connect("127.0.0.1", port=port, key_filename=client_key) as c:
            assert c.run("echo ok", hide=True, timeout=10, in_stream=False).stdout.strip() == "ok"
            transport = c.client.get_transport()
            assert transport is not None
            assert transport.remote_cipher in allowed
    finally:
        stop_pid(server.pid)


def test_check_reports_gvisor_bypasses(conn: Connection, tmp_path: Path) -> None:
    """With the gVisor selector, an extra runtime in daemon.json or a runc that is not the selector are drift:
    either lets a tenant run on the host kernel (runbooks/gvisor-decision.md)."""
    from inkmcp.nodes.render import GvisorParams, PinnedImage, proxy_profile

    root = tmp_path / "root"
    gvisor = GvisorParams(platform=[proxy_profile([PinnedImage(id="sha256:" + "ab" * 32, entrypoint=[], cmd=[])])])
    params = HostParams(root=str(root), dns_resolvers=["198.51.100.53"], private_cidrs=["10.20.0.0/16"],
                        gvisor=gvisor)
    apply_host(conn, params, timeout=20)
    assert check_host(conn, params, timeout=10) == []

    daemon_path = root / "etc/docker/daemon.json"
    daemon = json.loads(daemon_path.read_text())
    daemon["runtimes"]["runsc"] = {"path": "/usr/bin/runsc"}  # e.g. `runsc install` run by hand
    daemon_path.write_text(json.dumps(daemon))
    (root / "usr/local/sbin/runc").unlink()
    (root / "usr/local/sbin/runc").symlink_to("/usr/bin/runc")

    drift = [str(d) for d in check_host(conn, params, timeout=10)]
    assert any("extra runtimes ['runsc']" in d for d in drift), drift
    assert any(d.startswith("file") and d.split(": ")[1].endswith("/usr/local/sbin/runc") and "resolves to" in d
               for d in drift), drift

    apply_host(conn, params, timeout=20)
    assert check_host(conn, params, timeout=10) == []
    assert "runsc" not in json.loads(daemon_path.read_text())["runtimes"]
