"""One run-server box (`inkmcp nodes sandbox`, Docker 26 + containerd 1.7 + runsc) for the whole session.

Why a module and not a fixture per file: the box takes ~10-20 s to bring up and holds stand-in images, and the
attack, replay and benchmark tests only read from it or clean up after themselves. `box_dir()` brings it up
on first use and registers its teardown (`down`, then anything still naming its directory is stopped by PID)
with the session fixture `run_server_box` in tests/conftest.py.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from inkmcp.nodes import sandbox
from tests.requirements import is_root, require

_BOX: dict[str, Path] = {}


def box_dir() -> Path:
    if "dir" in _BOX:
        return _BOX["dir"]
    require("root", is_root(), "the run-server box needs network/mount namespaces, cgroups and iptables")
    require("dockerd", shutil.which("apt-get") is not None and shutil.which("dpkg-deb") is not None,
            "the box's Docker 26 comes from Debian trixie through scripts/test-docker-trixie.sh (apt-get, dpkg-deb)")
    tmp = Path(tempfile.mkdtemp(prefix="inkbox-"))
    _BOX["dir"] = tmp
    try:
        sandbox.up(tmp)
    except sandbox.SandboxError as e:
        require("dockerd", False, f"`inkmcp nodes sandbox up` failed: {e}")
    return tmp


def teardown() -> None:
    tmp = _BOX.pop("dir", None)
    if tmp is None:
        return
    try:
        sandbox.down(tmp)
    finally:
        from tests.runtime.conftest import _pids_under, _stop

        for pid in _pids_under(tmp):  # only if down failed: whatever still names the box's directory
            _stop(pid, wait=5)
        shutil.rmtree(tmp, ignore_errors=True)
