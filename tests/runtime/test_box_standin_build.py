"""How the box's stand-in images are assembled (inkmcp/nodes/standins.py), without a daemon.

Why: `up` reuses a cached build and a test pins a stand-in by the digest `up` recorded, which is only
sound if the same recipe over the same inputs always gives the same manifest, and if an image's layer
holds exactly what its recipe says (a stray host mtime or owner would change every digest; a busybox
applet shadowing a real program broke the postgres entrypoint once).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from inkmcp.nodes import standins
from tests.requirements import requires

pytestmark = requires("dockerd", Path("/bin/busybox").exists() and shutil.which("ldd") is not None,
                      "stand-ins are assembled from busybox-static (scripts/test-docker.sh installs it) and ldd")

NGINX = next(r for r in standins.RECIPES if r.ref == "nginx:1.27-alpine")


def _layer(built: standins.Built) -> list[tarfile.TarInfo]:
    data = gzip.decompress((built.dir / "layer.tar.gz").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def test_same_recipe_same_digest_in_another_cache(tmp_path):
    first = standins.build(NGINX, tmp_path / "pkgs", tmp_path / "a")
    second = standins.build(NGINX, tmp_path / "pkgs", tmp_path / "b")
    assert first.digest == second.digest and first.image_id == second.image_id
    assert (first.dir / "layer.tar.gz").read_bytes() == (second.dir / "layer.tar.gz").read_bytes()
    again = standins.build(NGINX, tmp_path / "pkgs", tmp_path / "a")  # cache hit: nothing rebuilt
    assert again.dir == first.dir and again.digest == first.digest


def test_layer_is_normalised_and_the_image_says_it_is_a_standin(tmp_path):
    built = standins.build(NGINX, tmp_path / "pkgs", tmp_path / "cache")
    members = _layer(built)
    assert {m.mtime for m in members} == {standins.FIXED_MTIME}
    assert {(m.uname, m.gname) for m in members} == {("", "")}
    names = [m.name for m in members]
    assert names == sorted(names)
    by_name = {m.name: m for m in members}
    assert by_name["bin"].issym() and by_name["bin"].linkname == "usr/bin"  # usrmerge as in the real images
    assert by_name["usr/bin/sh"].linkname == "/usr/bin/busybox"
    assert by_name["INKMCP-STANDIN"].isfile()
    config = json.loads((built.dir / "config.json").read_bytes())
    assert config["config"]["Labels"][standins.STANDIN_LABEL] == "true"
    assert config["config"]["Labels"][standins.STANDIN_FOR_LABEL] == "docker.io/nginx:1.27-alpine"
    manifest = json.loads((built.dir / "manifest.json").read_bytes())
    assert manifest["mediaType"] == standins.MANIFEST_TYPE
    assert manifest["config"]["digest"] == built.image_id


def test_a_real_program_replaces_busyboxs_applet_on_every_bin_dir(tmp_path):
    fs = standins.Rootfs(tmp_path)
    fs.busybox()
    applets = [p for p in ("/usr/bin/setpriv", "/usr/sbin/setpriv") if p in fs.entries]
    assert applets, "busybox-static has a setpriv applet"
    fs.host("/usr/bin/setpriv")
    assert fs.entries["/usr/bin/setpriv"].kind == "file"
    assert "/usr/sbin/setpriv" not in fs.entries  # would come first on PATH


@pytest.mark.parametrize(("given", "inside"), [("/bin/sh", "/usr/bin/sh"), ("/lib64/ld.so", "/usr/lib64/ld.so"),
                                               ("/sbin/tini", "/usr/sbin/tini"), ("/etc/../usr/x", "/usr/x")])
def test_image_paths_follow_usrmerge(given, inside):
    assert standins.image_path(given) == inside


def test_a_missing_input_names_its_package(tmp_path):
    fs = standins.Rootfs(tmp_path)
    with pytest.raises(standins.StandinError, match=r"scripts/test-docker-trixie\.sh"):
        fs.host(fs.pkg("/usr/bin/docker"))
