"""The containerd shim guard (hardening/scripts/inkmcp-shim-guard; runbooks/gvisor-decision.md §4.1, review #1).

Docker >= 23 hands any dotted runtime name (`io.containerd.evil.v1`, `x.evil.bin`) to containerd, which runs
`containerd-shim-<a>-<b>` from its cwd, its PATH or its own binary's directory, outside the gVisor selector
(verified on the box's Docker 26.1.5 + containerd 1.7.24: a planted containerd-shim-evil-bin ran for
`--runtime io.containerd.evil.bin`). The guard diverts every such shim but runc's with dpkg-divert. Proven
here on the real script with the real dpkg-divert and dpkg, in staged roots and against a live process
named containerd whose cwd, PATH and binary directory are temp dirs (so nothing of this machine is touched);
and through `inkmcp nodes check`/`harden` over a real sshd.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fabric import Connection

from inkmcp.nodes.apply import apply_host, connect
from inkmcp.nodes.check import check_host
from inkmcp.nodes.render import SCRIPTS_DIR, GvisorParams, HostParams, render_host_files
from tests.hardening.conftest import SshServer
from tests.requirements import require, require_root

GUARD = SCRIPTS_DIR / "inkmcp-shim-guard"
RUNC_SHIMS = ("containerd-shim-runc-v1", "containerd-shim-runc-v2")


@pytest.fixture(autouse=True)
def tools() -> None:
    require_root("dpkg-divert renames files and records diversions as root")
    require("dockerd", shutil.which("dpkg-divert") is not None and shutil.which("dpkg-deb") is not None,
            "dpkg-divert/dpkg-deb not found (Debian's dpkg package)")


def shim(path: Path, marker: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho ran > {marker}\n" if marker else "#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(GUARD), *args], capture_output=True, text=True, timeout=60, check=False)


def diversions(*dpkg: str) -> list[str]:
    out = subprocess.run(["dpkg-divert", *dpkg, "--list"], capture_output=True, text=True, check=True).stdout
    return sorted(out.splitlines())


def test_staged_root_every_non_runc_shim_is_diverted_runc_stays(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")  # merged /usr: one physical dir, diverted by its canonical path
    for name in (*RUNC_SHIMS, "containerd-shim", "containerd-shim-evil-v1", "containerd-shim-evil-bin"):
        shim(root / "usr/bin" / name)
    shim(root / "usr/local/sbin/containerd-shim-runsc-v1")  # a manual install of gVisor's shim
    (root / "usr/bin/containerd-shim-old-v1.inkmcp-disabled").write_text("diverted earlier")

    check = guard("--check", "--root", str(root))
    assert check.returncode == 2, check.stderr
    listed = sorted(line.split()[1] for line in check.stdout.splitlines())
    assert listed == [f"{root}/usr/bin/containerd-shim-evil-bin", f"{root}/usr/bin/containerd-shim-evil-v1",
                      f"{root}/usr/local/sbin/containerd-shim-runsc-v1"]
    assert (root / "usr/bin/containerd-shim-evil-v1").exists(), "--check changes nothing"

    run = guard("--root", str(root))
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == [f"changed: diverted {p}" for p in listed]
    for p in listed:
        assert not Path(p).exists() and Path(p + ".inkmcp-disabled").exists()
    for name in (*RUNC_SHIMS, "containerd-shim"):
        assert (root / "usr/bin" / name).exists(), name
    assert diversions("--root", str(root)) == sorted(
        f"local diversion of {p.removeprefix(str(root))} to {p.removeprefix(str(root))}.inkmcp-disabled"
        for p in listed)
    assert guard("--root", str(root)).stdout == "" and guard("--check", "--root", str(root)).returncode == 0

    # The same shim copied back by hand (the diversion exists already, dpkg-divert leaves it): moved again.
    shim(root / "usr/bin/containerd-shim-evil-v1")
    again = guard("--root", str(root))
    assert again.stdout == f"changed: diverted {root}/usr/bin/containerd-shim-evil-v1\n"
    assert not (root / "usr/bin/containerd-shim-evil-v1").exists()


def build_deb(tmp: Path, name: str, version: str, files: dict[str, str]) -> Path:
    pkg = tmp / f"{name}-{version}-pkg"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN/control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\nMaintainer: t <t@example.test>\n"
        "Description: test\n")
    for path, content in files.items():
        target = pkg / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(0o755)
    deb = tmp / f"{name}_{version}.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(pkg), str(deb)], check=True, capture_output=True)
    return deb


def dpkg_root(tmp: Path) -> Path:
    root = tmp / "root"
    admin = root / "var/lib/dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True, exist_ok=True)
    for f in ("status", "available"):
        (admin / f).touch()
    return root


def test_a_later_package_install_lands_in_the_diverted_path(tmp_path: Path) -> None:
    """gVisor's release channel ships containerd-shim-runsc-v1: once diverted, installing or upgrading the
    package writes the shim to the .inkmcp-disabled path, never where containerd looks."""
    root = dpkg_root(tmp_path)
    dpkg = ["dpkg", "--root", str(root), "--force-script-chrootless", "--force-not-root"]
    deb = build_deb(tmp_path, "fake-runsc", "1.0", {"/usr/bin/containerd-shim-runsc-v1": "#!/bin/sh\necho shim\n",
                                            "/usr/bin/runsc": "#!/bin/sh\n"})
    subprocess.run([*dpkg, "-i", str(deb)], check=True, capture_output=True, text=True)
    assert (root / "usr/bin/containerd-shim-runsc-v1").exists()
    assert guard("--root", str(root)).stdout == f"changed: diverted {root}/usr/bin/containerd-shim-runsc-v1\n"

    upgrade = build_deb(tmp_path, "fake-runsc", "2.0", {"/usr/bin/containerd-shim-runsc-v1": "#!/bin/sh\necho v2\n",
                                                "/usr/bin/runsc": "#!/bin/sh\n"})
    subprocess.run([*dpkg, "-i", str(upgrade)], check=True, capture_output=True, text=True)
    assert not (root / "usr/bin/containerd-shim-runsc-v1").exists(), "dpkg must honour the diversion"
    assert "v2" in (root / "usr/bin/containerd-shim-runsc-v1.inkmcp-disabled").read_text()
    assert guard("--check", "--root", str(root)).returncode == 0


def test_apt_hook_is_valid_apt_configuration(tmp_path: Path) -> None:
    """apt parses the rendered hook and runs the guard after every dpkg run (DPkg::Post-Invoke)."""
    require("dockerd", shutil.which("apt-config") is not None, "apt-config not found (Debian's apt package)")
    files = render_host_files(HostParams(root=str(tmp_path / "r"), gvisor=GvisorParams()))
    hook = tmp_path / "53inkmcp-shim-guard"
    hook.write_text(next(v for k, v in files.items() if k.endswith("/53inkmcp-shim-guard")))
    dump = subprocess.run(["apt-config", "-c", str(hook), "dump", "DPkg::Post-Invoke"], capture_output=True,
                          text=True, check=True).stdout
    assert ('DPkg::Post-Invoke:: "if [ -x /usr/local/sbin/inkmcp-shim-guard ]; then '
            '/usr/local/sbin/inkmcp-shim-guard; fi";') in dump


@pytest.fixture
def containerd(tmp_path: Path) -> Iterator[tuple[int, dict[str, Path]]]:
    """A live process named containerd (a copy of sleep) with its own cwd, PATH and binary directory: where
    containerd 1.7 looks for shims (runtime/v2/manager.go: cwd, exec.LookPath, next to its binary)."""
    dirs = {name: tmp_path / name for name in ("bin", "path", "cwd", "elsewhere")}
    for d in dirs.values():
        d.mkdir()
    exe = dirs["bin"] / "containerd"
    shutil.copy2("/bin/sleep", exe)
    env = {"PATH": f"{dirs['path']}:relative/dir:/nonexistent"}
    proc = subprocess.Popen([str(exe), "300"], cwd=dirs["cwd"], env=env)
    try:
        yield proc.pid, dirs
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_live_containerd_cwd_path_and_binary_dir_are_scanned(tmp_path: Path,
                                                           containerd: tuple[int, dict[str, Path]]) -> None:
    pid, dirs = containerd
    marker = tmp_path / "marker"
    planted = [shim(dirs[d] / f"containerd-shim-{d}-v1", marker) for d in ("cwd", "path", "bin")]
    keep = [shim(dirs["bin"] / name) for name in RUNC_SHIMS] + [shim(dirs["elsewhere"] / "containerd-shim-x-v1")]
    admin = tmp_path / "dpkg"

    check = guard("--check", "--pid", str(pid))
    assert check.returncode == 2
    assert sorted(line.split()[1] for line in check.stdout.splitlines()) == sorted(map(str, planted))

    run = guard("--pid", str(pid), "--admindir", str(admin))
    assert run.returncode == 0, run.stderr
    assert sorted(run.stdout.splitlines()) == sorted(f"changed: diverted {p}" for p in planted)
    for p in planted:
        assert not p.exists() and p.with_name(p.name + ".inkmcp-disabled").exists()
    assert all(p.exists() for p in keep), "runc's shims and dirs containerd never searches stay"
    assert len(diversions("--admindir", str(admin))) == 3
    assert not marker.exists()
    assert guard("--check", "--pid", str(pid)).returncode == 0


def test_guard_refuses_ambiguous_or_unknown_arguments(tmp_path: Path) -> None:
    assert guard("--root", str(tmp_path), "--pid", "1").returncode == 64
    assert guard("--pid", "not-a-pid").returncode == 64
    assert guard("--bogus").returncode == 64
    missing = guard("--pid", "999999999")
    assert missing.returncode == 65 and "no process 999999999" in missing.stderr


@pytest.fixture
def conn(sshd_server: SshServer) -> Iterator[Connection]:
    c = connect("127.0.0.1", user="root", port=sshd_server.port, key_filename=sshd_server.client_key)
    yield c
    c.close()


@pytest.mark.slow
def test_nodes_check_reports_a_shim_and_harden_diverts_it(conn: Connection, tmp_path: Path) -> None:
    root = tmp_path / "root"
    params = HostParams(root=str(root), dns_resolvers=["198.51.100.53"], private_cidrs=["10.20.0.0/16"],
                        gvisor=GvisorParams())
    apply_host(conn, params, timeout=30)
    assert check_host(conn, params, timeout=10) == []

    evil = shim(root / "usr/local/bin/containerd-shim-runsc-v1")
    drift = check_host(conn, params, timeout=10)
    assert [(d.kind, d.target) for d in drift] == [("runtime", str(evil))], drift
    assert "bypassing the gVisor selector" in drift[0].detail

    report = apply_host(conn, params, timeout=30)
    assert f"diverted {evil}" in " ".join(report.changes), report.changes
    assert not evil.exists() and check_host(conn, params, timeout=10) == []

    os.unlink(root / "usr/local/sbin/inkmcp-shim-guard")
    missing = [str(d) for d in check_host(conn, params, timeout=10)]
    assert any("shim guard missing" in d for d in missing), missing
