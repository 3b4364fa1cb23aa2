"""The registry half of the build path (review finding 3), proven on Debian's own daemons in a namespace:
/usr/bin/docker-registry behind /usr/sbin/nginx, configured only by the files the rendered host script
wrote. Each claim is checked from the client's side over the wire: TLS verified against the private CA
(and refused with another CA), no anonymous access, the read-only user reads and can write nothing, the
write user can push, the backend is not reachable around nginx."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import stat
import subprocess

import httpx
import pytest

from inkmcp.nodes.registry import htpasswd, registry_host_script, registry_host_stdin, salt_key_from
from tests.buildpath.conftest import PASSWORDS, REGISTRY_IP, Platform, tcp_open

pytestmark = pytest.mark.slow
REPO = "tenant-a/app"


def _blob(platform: Platform, content: bytes, repo: str = REPO, user: str = "push") -> tuple[str, httpx.Response]:
    """Upload a blob the way Docker does: POST starts an upload session (202 + Location), PUT with the digest
    completes it (201); the registry checks the digest."""
    digest = "sha256:" + hashlib.sha256(content).hexdigest()
    start = platform.request("POST", f"/v2/{repo}/blobs/uploads/", user=user)
    if start.status_code != 202:
        return digest, start
    location = start.headers["Location"]
    assert location.startswith("/v2/"), location  # relative: the registry never names itself
    sep = "&" if "?" in location else "?"
    done = platform.request("PUT", f"{location}{sep}digest={digest}", user=user, content=content,
                            headers={"Content-Type": "application/octet-stream"})
    return digest, done


def test_tls_verifies_against_the_private_ca_and_not_another(platform: Platform) -> None:
    ok = platform.request("GET", "/v2/", user="pull")
    assert ok.status_code == 200
    assert ok.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    with pytest.raises(httpx.ConnectError) as err:
        platform.request("GET", "/v2/", user="pull", ca="other")
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_anonymous_gets_401_with_a_basic_challenge_for_reads_and_writes(platform: Platform) -> None:
    for method, path in (("GET", "/v2/"), ("GET", "/v2/_catalog"), ("HEAD", f"/v2/{REPO}/manifests/latest"),
                         ("POST", f"/v2/{REPO}/blobs/uploads/"), ("DELETE", f"/v2/{REPO}/manifests/latest")):
        r = platform.request(method, path)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.headers["WWW-Authenticate"].startswith("Basic realm="), r.headers


def test_wrong_password_or_unknown_user_is_401_never_through(platform: Platform) -> None:
    assert platform.request("GET", "/v2/", user="pull", password="not-the-password-123").status_code == 401
    assert platform.request("GET", "/v2/", user="push", password="not-the-password-123").status_code == 401
    r = platform.request("POST", f"/v2/{REPO}/blobs/uploads/", user="push", password="wrong-password-12345")
    assert r.status_code == 401
    assert platform.request("GET", "/v2/", user="nobody", password=PASSWORDS["push"]).status_code == 401


def test_push_user_pushes_and_pull_user_reads_it(platform: Platform) -> None:
    content = b"layer bytes of tenant a\n"
    digest, r = _blob(platform, content)
    assert r.status_code == 201, r.text
    assert r.headers["Docker-Content-Digest"] == digest
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}).encode()
    config_digest, r = _blob(platform, config)
    assert r.status_code == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                   "digest": config_digest},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(content),
                    "digest": digest}],
    }).encode()
    r = platform.request("PUT", f"/v2/{REPO}/manifests/v1", user="push", content=manifest,
                         headers={"Content-Type": "application/vnd.docker.distribution.manifest.v2+json"})
    assert r.status_code == 201, r.text

    head = platform.request("HEAD", f"/v2/{REPO}/blobs/{digest}", user="pull")
    assert head.status_code == 200 and head.headers["Docker-Content-Digest"] == digest
    got = platform.request("GET", f"/v2/{REPO}/blobs/{digest}", user="pull")
    assert got.status_code == 200 and got.content == content
    m = platform.request("GET", f"/v2/{REPO}/manifests/v1", user="pull",
                         headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert m.status_code == 200 and json.loads(m.content)["layers"][0]["digest"] == digest


def test_pull_user_cannot_write_anything(platform: Platform) -> None:
    """Every write method is 403 for the read-only user, and nothing changed behind it."""
    original = b"tenant b's real layer\n"
    digest, r = _blob(platform, original, repo="tenant-b/app")
    assert r.status_code == 201
    evil = b"overwritten by a run server\n"
    evil_digest = "sha256:" + hashlib.sha256(evil).hexdigest()
    attempts = [
        ("POST", f"/v2/tenant-b/app/blobs/uploads/?digest={evil_digest}", evil),
        ("POST", "/v2/tenant-b/app/blobs/uploads/", b""),
        ("PATCH", "/v2/tenant-b/app/blobs/uploads/00000000-0000-0000-0000-000000000000", evil),
        ("PUT", f"/v2/tenant-b/app/blobs/uploads/00000000-0000-0000-0000-000000000000?digest={evil_digest}", evil),
        ("PUT", "/v2/tenant-b/app/manifests/v1", b"{}"),
        ("DELETE", f"/v2/tenant-b/app/blobs/{digest}", b""),
        ("DELETE", "/v2/tenant-b/app/manifests/v1", b""),
        ("OPTIONS", "/v2/", b""),
    ]
    for method, path, body in attempts:
        r = platform.request(method, path, user="pull", content=body)
        assert r.status_code == 403, (method, path, r.status_code, r.text[:200])
    # From the attacker's side: its blob does not exist, the victim's blob is intact.
    assert platform.request("HEAD", f"/v2/tenant-b/app/blobs/{evil_digest}", user="pull").status_code == 404
    assert platform.request("GET", f"/v2/tenant-b/app/blobs/{digest}", user="pull").content == original


def test_the_backend_is_reachable_only_through_nginx(platform: Platform) -> None:
    """docker-registry has no auth of its own: it must listen on the registry host's loopback only."""
    assert tcp_open(platform.ns["reg"], "127.0.0.1", 5000)
    assert not tcp_open(platform.ns["cli"], REGISTRY_IP, 5000)
    assert not tcp_open(platform.ns["reg"], REGISTRY_IP, 5000)


def test_the_script_wrote_what_the_daemons_run_with(platform: Platform) -> None:
    """The daemons above ran on the script's own output: secrets private, htpasswd readable by nginx's workers
    only, the default site gone. A second run with the same inputs changes nothing."""
    p = platform.params
    for key, mode, group in (("tls_key", 0o600, "root"), ("htpasswd", 0o640, "www-data"), ("tls_cert", 0o644, "root")):
        st = os.stat(p.path(key))
        assert (stat.S_IMODE(st.st_mode), grp.getgrgid(st.st_gid).gr_name) == (mode, group), key
    assert "changed: " + p.path("htpasswd") in platform.script_output
    stdin = registry_host_stdin(platform.pki.key, htpasswd(p, PASSWORDS, salt_key_from(platform.pki.key)))
    again = subprocess.run(["bash", "-c", registry_host_script(p)], input=stdin, capture_output=True, text=True,
                           timeout=30, check=False)
    assert again.returncode == 0, again.stderr
    assert "changed" not in again.stdout, again.stdout
