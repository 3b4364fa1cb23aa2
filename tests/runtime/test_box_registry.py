"""The run-server box's registry: Coolify's images by their docker.io names, pulled for real, offline.

Issue 7 item 2 (plan step 1). Coolify pulls every image it starts (`docker compose pull`, `docker run
docker.io/...`); a node that cannot pull fails the operation. The box answers those pulls from Debian's
docker-registry inside its network namespace (daemon.json `registry-mirrors`), holding the stand-ins of
inkmcp/nodes/standins.py. These tests pull through the box's real daemon and compare with what `up`
recorded: a pull that silently used a local image, a wrong digest or a stand-in under the wrong name
would each fail one of them.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from inkmcp.nodes import sandbox, standins
from tests.requirements import is_root, requires

pytestmark = [
    pytest.mark.slow,
    requires("root", is_root(), "the box needs network/mount namespaces, cgroups and iptables"),
]

DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def _sh(box: Path, script: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return sandbox.exec_in_box(box, script, timeout=timeout)


def _state(box: Path) -> sandbox.SandboxState:
    state = sandbox.load_state(box)
    assert state is not None, f"no box state in {box}"
    return state


def test_up_recorded_a_repo_digest_for_every_standin(run_server_box):
    images = _state(run_server_box).images
    assert set(images) == {r.ref for r in standins.RECIPES}, images
    assert all(DIGEST.fullmatch(d) for d in images.values()), images
    # The registry serves each tag with exactly that manifest (HEAD answers with Docker-Content-Digest).
    lines = [f"curl -fsSI -H 'Accept: {standins.MANIFEST_TYPE}' http://{sandbox.REGISTRY}/v2/{r.repo}/manifests/{r.tag}"
             f" | tr -d '\\r' | sed -n 's|^[Dd]ocker-[Cc]ontent-[Dd]igest: |{r.ref} |p'" for r in standins.RECIPES]
    got = _sh(run_server_box, "\n".join(lines))
    assert got.returncode == 0, got.stderr
    served = dict(line.split(" ", 1) for line in got.stdout.splitlines())
    assert served == images


def test_the_box_has_no_way_out_so_pulls_come_from_its_registry(run_server_box):
    """Offline by construction: the box's namespace has loopback and Docker's bridges, no route out."""
    routes = _sh(run_server_box, "ip -4 route show default; ip -6 route show default; echo end")
    assert routes.returncode == 0, routes.stderr
    assert routes.stdout.strip() == "end", routes.stdout
    mirrors = _sh(run_server_box, "docker info --format '{{json .RegistryConfig.Mirrors}}'")
    assert json.loads(mirrors.stdout) == [f"http://{sandbox.REGISTRY}/"], mirrors.stdout


def test_pull_by_tag_downloads_the_recorded_manifest(run_server_box):
    ref = "coollabsio/sentinel:0.0.22"  # nothing else in the suite runs Sentinel: removing it is harmless
    digest = _state(run_server_box).images[ref]
    pulled = _sh(run_server_box, f"""
docker image rm -f {ref} >/dev/null 2>&1 || true
if docker image inspect {ref} >/dev/null 2>&1; then echo 'still present before the pull' >&2; exit 9; fi
docker pull docker.io/{ref}
docker image inspect --format '{{{{json .RepoDigests}}}}' {ref}
""")
    assert pulled.returncode == 0, pulled.stderr + pulled.stdout
    assert "Pull complete" in pulled.stdout, pulled.stdout  # layers came over the wire, not from a cache
    assert f"Digest: {digest}" in pulled.stdout, pulled.stdout
    assert json.loads(pulled.stdout.splitlines()[-1]) == [f"coollabsio/sentinel@{digest}"]


def test_pull_by_recorded_digest_gives_the_tagged_image(run_server_box):
    images = _state(run_server_box).images
    for ref in ("postgres:16-alpine", "traefik:v3.6"):
        name = ref.split(":")[0]
        got = _sh(run_server_box, f"""
docker pull -q {name}@{images[ref]} >/dev/null
docker pull -q {ref} >/dev/null
docker image inspect --format '{{{{.Id}}}}' {name}@{images[ref]} {ref} | tr '\n' ' '

""")
        assert got.returncode == 0, got.stderr
        by_digest, by_tag = got.stdout.split()
        assert by_digest == by_tag and DIGEST.fullmatch(by_digest), got.stdout


def test_every_standin_says_it_is_one(run_server_box):
    """An operator reading `docker inspect` on a box (or a test) must never mistake a stand-in for the
    real image: label and a file in the image."""
    refs = [r.ref for r in standins.RECIPES]
    script = "\n".join(
        f"docker pull -q {ref} >/dev/null\n"
        f"echo \"{ref}|$(docker image inspect --format '{{{{json .Config.Labels}}}}' {ref})\"" for ref in refs)
    got = _sh(run_server_box, script)
    assert got.returncode == 0, got.stderr
    for line in got.stdout.splitlines():
        ref, labels = line.split("|", 1)
        labels = json.loads(labels)
        assert labels[standins.STANDIN_LABEL] == "true", (ref, labels)
        assert labels[standins.STANDIN_FOR_LABEL] == f"docker.io/{ref}", (ref, labels)
    marker = _sh(run_server_box, f"cid=$(docker create nginx:1.27-alpine) && docker cp $cid:{standins.MARKER_FILE} - "
                                 "| tar -xO; docker rm $cid >/dev/null")
    assert "InkMCP stand-in for docker.io/nginx:1.27-alpine" in marker.stdout, marker.stdout + marker.stderr


def test_an_image_pushed_to_the_registry_is_what_the_next_docker_io_pull_gets(run_server_box):
    """The mechanism a moved tag uses (a new manifest under a name Coolify pulls): push to the box's
    registry as 127.0.0.1:5000/<repo>:<tag>, then pull <repo>:<tag> as Coolify would. A fresh tag keeps the
    other tests' stand-ins untouched."""
    tag = f"inkmcp-moved-{uuid.uuid4().hex[:8]}"
    pushed = _sh(run_server_box, f"""
docker pull -q nginx:1.27-alpine >/dev/null
cid=$(docker create nginx:1.27-alpine)
docker commit -c 'LABEL moved=yes' $cid {sandbox.REGISTRY}/library/traefik:{tag} >/dev/null
docker rm $cid >/dev/null
docker push -q {sandbox.REGISTRY}/library/traefik:{tag} >/dev/null
docker image inspect --format '{{{{index .RepoDigests 0}}}}' {sandbox.REGISTRY}/library/traefik:{tag}
docker image rm {sandbox.REGISTRY}/library/traefik:{tag} >/dev/null
docker pull traefik:{tag} | tail -n 3
docker image inspect --format '{{{{.Config.Labels.moved}}}}' traefik:{tag}
docker image rm traefik:{tag} >/dev/null
""")
    assert pushed.returncode == 0, pushed.stderr + pushed.stdout
    lines = pushed.stdout.splitlines()
    digest = lines[0].split("@", 1)[1]
    assert DIGEST.fullmatch(digest), lines
    assert f"Digest: {digest}" in pushed.stdout and lines[-1] == "yes", pushed.stdout
