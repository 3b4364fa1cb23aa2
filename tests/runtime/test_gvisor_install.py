"""The selector's config template and install script: valid output, idempotent, drift reported.

No Docker needed: installs into a throw-away root under tmp_path (install.sh takes ROOT).
"""

import json
import os

import pytest

from inkmcp.nodes.render import PinnedImage, proxy_profile, sablier_profile
from tests.requirements import require_root

from .conftest import GVISOR, install, render_config

PLATFORM = [
    proxy_profile([PinnedImage(id="sha256:" + "a" * 64, entrypoint=["/entrypoint.sh"], cmd=["traefik"])])
    .selector_entry(),
    sablier_profile([PinnedImage(ref="sablierapp/sablier:1.16.2@sha256:" + "b" * 64)]).selector_entry(),
]


@pytest.fixture
def as_root() -> None:
    """install.sh installs root-owned files; the template render needs no root."""
    require_root("install.sh installs root-owned files")


def test_template_renders_defaults_and_platform_entries():
    cfg = json.loads(render_config(platform=PLATFORM))
    assert cfg["runsc_flags"] == ["--network=host", "--host-uds=none"]
    assert cfg["runc"] == "/usr/bin/runc" and cfg["data_root"] == "/var/lib/docker"
    assert cfg["coolify_dir"] == "/data/coolify"
    assert cfg["platform"] == PLATFORM  # each profile verbatim, as runtime_selector.py reads it
    assert cfg["platform"][1]["images"][0]["id"] is None  # pinned by digest, not resolved: admits nothing
    assert json.loads(render_config())["platform"] == []


def test_install_twice_changes_nothing_and_check_reports_drift(tmp_path, as_root):
    root = tmp_path / "root"
    text = render_config(platform=PLATFORM)
    first = install(text, root)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("changed:") == 4  # entry point, rules module, config, runc link
    assert os.readlink(root / "usr/local/sbin/runc") == "../lib/inkmcp/inkmcp-runtime"
    selector = root / "usr/local/lib/inkmcp/inkmcp-runtime"
    config = root / "etc/inkmcp/runtime-selector.json"
    assert selector.read_bytes() == (GVISOR / "runtime_selector.py").read_bytes()
    assert oct(selector.stat().st_mode & 0o777) == "0o755" and oct(config.stat().st_mode & 0o777) == "0o644"
    module = root / "usr/local/lib/inkmcp/inkmcp_selector.py"
    assert module.read_bytes() == (GVISOR / "inkmcp_selector.py").read_bytes()
    (pyc,) = (root / "usr/local/lib/inkmcp/__pycache__").glob("inkmcp_selector.*.pyc")
    assert pyc.read_bytes()[4:8] == b"\x03\x00\x00\x00"  # PEP 552 flags: checked-hash, never a stale cache
    before = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (selector, module, pyc, config)}

    second = install(text, root)
    assert (second.returncode, second.stdout.strip()) == (0, "unchanged"), second.stderr
    assert {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in (selector, module, pyc, config)} == before
    assert install(text, root, "--check").returncode == 0

    config.write_text(config.read_text().replace("--network=host", "--network=sandbox"))
    drift = install(text, root, "--check")
    assert drift.returncode == 2 and f"drift: {config}" in drift.stdout
    assert "--network=sandbox" in config.read_text(), "--check must not change anything"
    assert "changed:" in install(text, root).stdout
    assert install(text, root, "--check").returncode == 0


def test_install_refuses_a_config_that_does_not_parse(tmp_path, as_root):
    bad = install('{"platform": ', tmp_path / "root")
    assert bad.returncode == 65 and not (tmp_path / "root").exists()


def test_install_refuses_a_config_the_selector_would_reject(tmp_path, as_root):
    """A config without coolify_dir, or an entry without its mounts, would refuse every container at create."""
    cfg = json.loads(render_config(platform=PLATFORM))
    del cfg["coolify_dir"]
    bad = install(json.dumps(cfg), tmp_path / "root")
    assert bad.returncode == 65 and "lacks ['coolify_dir']" in bad.stderr and not (tmp_path / "root").exists()
    cfg = json.loads(render_config(platform=PLATFORM))
    del cfg["platform"][0]["mounts"]
    bad = install(json.dumps(cfg), tmp_path / "root")
    assert bad.returncode == 65 and "platform entry 0 lacks ['mounts']" in bad.stderr
