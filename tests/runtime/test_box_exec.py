"""`inkmcp nodes sandbox exec` / `exec_in_box`: a command runs in the box as Coolify's SSH session runs on a node.

Issue 7 item 2. Coolify runs every step as `ssh root@node 'bash -se' <<EOF` (remoteProcess.php): root, the
node's /var/run/docker.sock, `docker compose` on PATH, /data/coolify and the SSH user's $HOME as bind
sources the daemon resolves, errexit, the step's exit code deciding success. The replay runner and the
attack tests depend on the box reproducing exactly that; each test here checks one part from inside.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from inkmcp.nodes import sandbox
from tests.requirements import is_root, requires

pytestmark = [
    pytest.mark.slow,
    requires("root", is_root(), "the box needs network/mount namespaces, cgroups and iptables"),
]

INKMCP = str(Path(sys.executable).parent / "inkmcp")


def test_the_session_is_roots_on_the_node_with_the_boxs_docker(run_server_box):
    got = sandbox.exec_in_box(run_server_box, """
id -u; pwd; echo "$HOME"; echo "${DOCKER_HOST-unset}"
command -v docker
docker version --format '{{.Client.Version}} {{.Server.Version}}'
docker compose version --short
docker buildx version
docker info --format '{{.ID}}'
""", timeout=60)
    assert got.returncode == 0, got.stderr
    uid, cwd, home, docker_host, docker, versions, compose, buildx, daemon_id = got.stdout.splitlines()
    assert (uid, cwd, home, docker_host) == ("0", "/root", "/root", "unset")
    assert docker == f"{run_server_box}/root/usr/bin/docker"  # the box's CLI first on PATH
    client, server = versions.split()
    assert client.startswith("26.1.5") and server.startswith("26.1.5"), versions
    assert compose.startswith("2.26."), compose  # trixie's docker-compose plugin
    assert buildx.startswith("github.com/docker/buildx 0.13."), buildx
    # The daemon behind /var/run/docker.sock is the box's: the same one DOCKER_HOST=unix://... reaches.
    outside = subprocess.run([sandbox.docker_cli(run_server_box), "-H", sandbox.load_state(run_server_box).docker_host,
                              "info", "--format", "{{.ID}}"], capture_output=True, text=True, check=True)
    assert daemon_id == outside.stdout.strip()


def test_errexit_and_the_exit_code_pass_through(run_server_box):
    got = sandbox.exec_in_box(run_server_box, "echo first\n(exit 7)\necho never\n", timeout=30)
    assert (got.returncode, got.stdout) == (7, "first\n")
    cli = subprocess.run([INKMCP, "nodes", "sandbox", "exec", "--dir", str(run_server_box)],
                         input="docker ps -q >/dev/null\nfalse\necho never\n", capture_output=True, text=True,
                         timeout=60, check=False)
    assert (cli.returncode, cli.stdout) == (1, ""), cli.stderr
    argv = subprocess.run([INKMCP, "nodes", "sandbox", "exec", "--dir", str(run_server_box), "--", "sh", "-c",
                           "test -S /var/run/docker.sock && exit 42"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert argv.returncode == 42, argv.stderr


def test_data_coolify_and_home_are_the_boxs_for_the_shell_and_the_daemon(run_server_box):
    probe = f"probe-{uuid.uuid4().hex[:8]}"
    got = sandbox.exec_in_box(run_server_box, f"""
mkdir -p /data/coolify/{probe} ~/.docker/buildx
echo from-the-box > /data/coolify/{probe}/file
echo home > ~/{probe}
""", timeout=30)
    assert got.returncode == 0, got.stderr
    assert (run_server_box / "coolify" / probe / "file").read_text() == "from-the-box\n"
    assert (run_server_box / "home" / probe).read_text() == "home\n"
    assert not os.path.exists(f"/data/coolify/{probe}"), "written to the host's /data/coolify"
    # The daemon resolves bind sources in the same mount namespace: a path that exists only in the box is
    # found (whatever the runtime selector then decides), one that exists nowhere is not.
    runs = {}
    for name in (probe, f"absent-{probe}"):
        runs[name] = sandbox.exec_in_box(
            run_server_box,
            f"docker create --mount type=bind,source=/data/coolify/{name},target=/p nginx:1.27-alpine", timeout=120)
    assert "bind source path does not exist" not in runs[probe].stderr, runs[probe].stderr
    assert runs[probe].returncode == 0, runs[probe].stderr
    assert "bind source path does not exist: /data/coolify/absent-" in runs[f"absent-{probe}"].stderr
    sandbox.exec_in_box(run_server_box, f"docker rm {runs[probe].stdout.strip()}", timeout=30)
    sandbox.exec_in_box(run_server_box, f"rm -rf /data/coolify/{probe} ~/{probe}", timeout=30)


def test_a_deadline_stops_the_whole_session(run_server_box):
    marker = f"sleep 3{uuid.uuid4().int % 1000:03d}"
    with pytest.raises(subprocess.TimeoutExpired) as e:
        sandbox.exec_in_box(run_server_box, f"echo started\n{marker}\n", timeout=2)
    assert "started" in (e.value.output or "")
    left = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == marker]
    assert left == [], f"{marker} outlived its session: {left}"


def test_exec_without_a_box_names_the_command_to_run(tmp_path):
    with pytest.raises(sandbox.SandboxError, match="inkmcp nodes sandbox up --dir"):
        sandbox.exec_in_box(tmp_path, "true")
    cli = subprocess.run([INKMCP, "nodes", "sandbox", "exec", "--dir", str(tmp_path)], input="true\n",
                         capture_output=True, text=True, timeout=60, check=False)
    assert cli.returncode == 1 and "no box is up" in cli.stderr, cli.stderr


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
