"""Coolify's deploy helper stand-in (docker.io/coollabsio/coolify-helper:1.0.15) in the run-server box.

Issue 7 item 2. Every image, compose and restart deployment starts the helper on the run server with the
node's Docker socket bind-mounted, then runs `docker exec <helper> bash -c 'docker compose ... up -d'`
(ApplicationDeploymentJob.php:2155-2200, 4074-4087): the tenant's containers are created by the compose
plugin INSIDE the helper, through the socket. The stand-in must therefore carry a working bash, docker CLI
and compose plugin (with their libraries) that drive the node's daemon through /var/run/docker.sock.

Whether the runtime selector admits the helper with the socket is the selector's decision (plan step 4,
tested there); these tests prove the image is fit for it, and record what today's selector does with
Coolify's exact `docker run`.
"""

from __future__ import annotations

import os
import secrets
import string
import textwrap

import pytest

from inkmcp.nodes import sandbox
from inkmcp.nodes.replay import load_replay
from tests.requirements import is_root, requires

pytestmark = [
    pytest.mark.slow,
    requires("root", is_root(), "the box needs network/mount namespaces, cgroups and iptables"),
]

HELPER = "docker.io/coollabsio/coolify-helper:1.0.15"


def _uuid() -> str:
    """A Coolify deployment uuid (new_public_id: 24 lowercase alphanumerics, a letter first)."""
    alphabet = string.ascii_lowercase + string.digits
    return secrets.choice(string.ascii_lowercase) + "".join(secrets.choice(alphabet) for _ in range(23))


def test_helper_image_drives_the_nodes_daemon_through_the_socket(run_server_box):
    """The pulled helper image's own bash + docker CLI + compose plugin, run on its own filesystem (chroot,
    with /dev and /proc as a container has them) and the box's socket at /var/run/docker.sock: they list
    the node's containers and bring a compose project up and down, whose container the daemon then runs
    (sandboxed: uname -r inside is gVisor's)."""
    project = f"p{secrets.token_hex(4)}"
    compose = textwrap.dedent(f"""\
        services:
          web:
            image: nginx:1.27-alpine
            container_name: web-{project}
            labels: [coolify.managed=true]
        """)
    got = sandbox.exec_in_box(run_server_box, f"""
docker pull -q {HELPER} >/dev/null
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
cid=$(docker create {HELPER})
docker export "$cid" | tar -x -C "$root"
docker rm "$cid" >/dev/null
touch "$root/run/docker.sock"
mkdir -p "$root/artifacts/{project}"
cat > "$root/artifacts/{project}/docker-compose.yaml" <<'EOF'
{compose}EOF
unshare --mount sh -ec '
  mount --bind /run/docker.sock "$0/run/docker.sock"
  mount --rbind /dev "$0/dev"
  mount -t proc proc "$0/proc"
  chroot "$0" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin /usr/bin/bash -ec "
    cd /artifacts
    echo version \\$(docker version --format {{{{.Server.Version}}}})
    docker compose version
    docker compose --project-name {project} --project-directory /artifacts/{project} up -d --quiet-pull 2>&1
    echo ps \\$(docker ps --filter name=web-{project} --format {{{{.Names}}}})
  "' "$root"
echo kernel $(docker exec web-{project} uname -r)
unshare --mount sh -ec '
  mount --bind /run/docker.sock "$0/run/docker.sock"
  mount --rbind /dev "$0/dev"
  chroot "$0" /usr/bin/env -i HOME=/root PATH=/usr/bin /usr/bin/bash -ec "
    docker compose --project-name {project} --project-directory /artifacts/{project} down 2>&1"' "$root"
docker ps -a --filter name=web-{project} --format '{{{{.Names}}}}' | sed 's/^/left /'
""", timeout=300)
    assert got.returncode == 0, got.stderr + got.stdout
    out = got.stdout
    assert "version 26.1.5" in out, out  # the daemon answered through the bind-mounted socket
    assert "Docker Compose version 2.26" in out, out  # the plugin from /root/.docker/cli-plugins
    assert f"ps web-{project}" in out, out
    assert "kernel 4.4.0" in out, out  # the tenant compose created is under runsc
    assert "left " not in out, out  # and `compose down` from the helper removed it


def test_coolifys_helper_run_is_admitted_as_platform_and_reaches_the_daemon(run_server_box):
    """Coolify's exact `docker run` of the helper (replay data, deploy_helper_start_no_docker_config) on a box
    whose selector pins the helper image (sandbox.pin_platform, like the muscle's pin step): admitted by the
    helper profile (review #2), so it runs under runc (host kernel inside) and its docker CLI reaches the
    daemon through the socket. A refusal, a pull failure or a crash in the image fails here."""
    data = load_replay()
    op = "deploy_helper_start_no_docker_config"
    uuid = _uuid()
    values = {**data.example_values(op), "deployment_uuid": uuid, "home": "/root", "network": "coolify"}
    steps = {s.id: s for s in data.render(op, values).steps}
    run = steps["helper.run"].stdin() or ""
    assert f"--name {uuid}" in run and "/var/run/docker.sock:/var/run/docker.sock" in run, run
    prep = sandbox.exec_in_box(run_server_box, "docker network create --attachable coolify >/dev/null 2>&1 || true\n"
                               + (steps["helper.buildx_dir"].stdin() or ""), timeout=60)
    assert prep.returncode == 0, prep.stderr
    try:
        started = sandbox.exec_in_box(run_server_box, run, timeout=180)
        assert started.returncode == 0, f"the helper was not admitted: {started.stderr}"
        inside = sandbox.exec_in_box(run_server_box, f"""
docker exec {uuid} bash -c 'docker version --format {{{{.Server.Version}}}}'
docker exec {uuid} bash -c 'docker compose version --short'
docker exec {uuid} uname -r
""", timeout=120)
        assert inside.returncode == 0, inside.stderr
        server, compose, kernel = inside.stdout.split()
        assert server.startswith("26.1.5") and compose.startswith("2.26."), inside.stdout
        assert kernel == os.uname().release, f"the helper is not a platform container: kernel {kernel}"
    finally:
        sandbox.exec_in_box(run_server_box, f"docker rm -f {uuid} >/dev/null 2>&1 || true", timeout=60)


def test_helper_image_has_what_coolifys_commands_call(run_server_box):
    """The programs Coolify's helper commands use (git ls-remote/clone over HTTP, mc for S3 uploads, gzip
    for dump_all, bash), run in a container of the image (no socket: sandboxed like any tenant)."""
    got = sandbox.exec_in_box(run_server_box, f"""
docker run --rm {HELPER} bash -c '
  git --version
  git init -q /tmp/repo && git -C /tmp/repo -c user.name=t -c user.email=t@e commit -q --allow-empty -m one
  git ls-remote file:///tmp/repo | grep -q refs/heads/ && git clone -q --depth=1 file:///tmp/repo /tmp/c \
    && echo ls-remote-ok
  test -x /usr/lib/git-core/git-remote-https && echo https-helper
  git lfs version
  mc --version
  echo payload | gzip -3 | gzip -d
  curl --version | head -n 1
  test -x /sbin/tini && echo tini
  pwd
  uname -r'
""", timeout=180)
    assert got.returncode == 0, got.stderr
    out = got.stdout.splitlines()
    assert out[0].startswith("git version 2."), out
    assert {"ls-remote-ok", "https-helper", "payload", "tini", "/artifacts", "4.4.0"} <= set(out), out
    assert any(line.startswith("git-lfs/") for line in out), out
    assert any("mc version" in line for line in out), out
    assert any(line.startswith("curl 7.") and "OpenSSL" in line for line in out), out
