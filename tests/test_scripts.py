"""The installers in scripts/: one apt install routine (scripts/apt-install-missing.sh) for all of them.

system-deps.sh and bench-deps.sh each had their own copy of the "report when not root, else apt-get install" block
beside the shared helper the test installers used. The helper runs here against a stub `apt-get` that records its
arguments: the real apt is never called, and the root case runs in its own mount namespace with a tmpfs over
/usr/sbin, so the policy-rc.d file it writes never reaches this machine (another job may be installing packages)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.requirements import require_root

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
HELPER = SCRIPTS / "apt-install-missing.sh"

# Records each call (one line of arguments) and whether policy-rc.d was in place; fails the first `install` when
# FAIL_FIRST is set (stale lists), every call when FAIL_ALL is set.
STUB_APT = """#!/bin/bash
log="$STUB_LOG"
policy=no; [ -x /usr/sbin/policy-rc.d ] && [ "$(/usr/sbin/policy-rc.d x start; echo $?)" = 101 ] && policy=yes
echo "policy=$policy $*" >>"$log"
if [ -n "${FAIL_ALL:-}" ]; then echo "E: Unable to locate package $*" >&2; exit 100; fi
if [ -n "${FAIL_FIRST:-}" ] && [ "$(grep -c ' install ' "$log")" = 1 ] && [[ " $* " == *" install "* ]]; then
  echo "E: stale lists" >&2; exit 100
fi
exit 0
"""


def run_helper(tmp_path: Path, args: str, *, uid: int = 0, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                                               list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "apt-get").write_text(STUB_APT)
    (bin_dir / "apt-get").chmod(0o755)
    (bin_dir / "id").write_text(f"#!/bin/sh\necho {uid}\n")  # only `id -u` is asked
    (bin_dir / "id").chmod(0o755)
    log = tmp_path / "apt.log"
    log.unlink(missing_ok=True)
    script = f'. {HELPER}; apt_install_missing {args}; status=$?; ls /usr/sbin; exit $status'
    cmd = ["bash", "-c", script]
    if uid == 0:  # a private /usr/sbin: the helper's policy-rc.d stays in this namespace
        cmd = ["unshare", "--mount", "--", "bash", "-c", f"mount -t tmpfs none /usr/sbin && {script}"]
    path = f"{bin_dir}:/usr/bin:/bin"
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False,
                          env={"PATH": path, "STUB_LOG": str(log), **env})
    return proc, log.read_text().splitlines() if log.exists() else []


def test_every_script_parses_and_only_the_helper_installs() -> None:
    scripts = sorted(SCRIPTS.glob("*.sh"))
    assert {"system-deps.sh", "bench-deps.sh", "test-system-deps.sh"} <= {s.name for s in scripts}
    for script in scripts:
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
        assert r.returncode == 0, (script.name, r.stderr)
    # the repeated block: a script of its own running `apt-get ... install` instead of the shared helper
    installs = {s.name for s in scripts if re.search(r"apt-get\b[^\n]*\binstall\b", s.read_text())}
    assert installs == {HELPER.name}, installs
    for name, flags in {"system-deps.sh": "--recommends --announce ", "bench-deps.sh": "--recommends --announce ",
                        "test-system-deps.sh": ""}.items():
        text = (SCRIPTS / name).read_text()
        assert f'\napt_install_missing {flags}"${{need[@]}}"\n' in text, name
        assert '. "$(dirname "$0")/apt-install-missing.sh"' in text, name


def test_not_root_reports_and_installs_nothing(tmp_path: Path) -> None:
    proc, calls = run_helper(tmp_path, "--recommends wrk nginx", uid=1000)
    assert proc.returncode == 1 and calls == []
    assert "Missing system packages: wrk nginx (install them with apt-get as root)" in proc.stderr
    proc, calls = run_helper(tmp_path, "--announce", uid=1000)  # nothing missing: nothing to say
    assert (proc.returncode, proc.stderr, calls) == (0, "", [])


@pytest.mark.parametrize(("flags", "recommends"), [("--recommends --announce", True), ("", False)])
def test_root_installs_with_services_held_and_the_chosen_recommends(tmp_path: Path, flags: str,
                                                                    recommends: bool) -> None:
    require_root("the install path runs in a mount namespace with its own /usr/sbin")
    assert shutil.which("unshare")
    proc, calls = run_helper(tmp_path, f"{flags} wrk nginx", FAIL_FIRST="1")
    assert proc.returncode == 0, proc.stderr
    # stale lists: install, update, install again; every call with services held (policy-rc.d answering 101)
    assert [c.split()[-1 if " update" in c else 0] for c in calls] == ["policy=yes", "update", "policy=yes"], calls
    installs = [c for c in calls if " install " in c]
    assert len(installs) == 2 and all(c.endswith(" wrk nginx") for c in installs), calls
    assert all(("--no-install-recommends" in c) is not recommends for c in installs), calls
    assert ("Installing system packages: wrk nginx" in proc.stdout) is recommends  # --announce goes with it here
    assert "policy-rc.d" not in proc.stdout  # the file it made is gone again (ls /usr/sbin after the call)


def test_root_failure_says_what_apt_said(tmp_path: Path) -> None:
    require_root("the install path runs in a mount namespace with its own /usr/sbin")
    proc, calls = run_helper(tmp_path, "no-such-pkg", FAIL_ALL="1")
    assert proc.returncode == 1 and len(calls) == 2, calls  # install, update (failed): no second install
    assert "E: Unable to locate package" in proc.stderr and "could not install: no-such-pkg" in proc.stderr
