"""The require mechanism itself: a missing component skips with its reason, or fails under the CI switch.

Each case runs a real pytest in a subprocess, with the repository's root conftest loaded as a plugin,
and reads its outcome, exactly as `.ci/run` would see it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.requirements import REQUIRE_ALL_ENV, REQUIRE_ENV, require_root

REPO = Path(__file__).resolve().parent.parent

SCRATCH_TESTS = '''
import pytest
from tests.requirements import require, requires

@pytest.fixture(scope="session")
def daemon():
    require("dockerd", False, "no dockerd in this scratch test")
    return "never"

def test_in_body():
    require("runsc", False, "runsc hidden by the scratch test")

@requires("npm", False, "npm hidden by the marker")
def test_by_marker():
    raise AssertionError("the marker must stop the test before it runs")

def test_by_fixture(daemon):
    raise AssertionError("unreachable")

def test_by_fixture_again(daemon):
    raise AssertionError("unreachable")

def test_present():
    require("root", True, "never shown")
'''


def run_pytest(args: list[str], cwd: Path, env_extra: dict[str, str],
               path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_ALL_ENV, REQUIRE_ENV)}
    env.update(env_extra, PYTHONPATH=str(REPO))
    if path is not None:
        env["PATH"] = path
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def outcomes(out: str) -> dict[str, int]:
    """{"passed": 1, "skipped": 4, ...} from pytest's last summary line."""
    last = [line for line in out.splitlines() if line.strip()][-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|skipped|failed|errors?|deselected)", last)}


def scratch(tmp_path: Path) -> Path:
    (tmp_path / "test_scratch.py").write_text(SCRATCH_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    requires: see tests/requirements.py\n")
    return tmp_path


def test_missing_components_skip_with_their_reason(tmp_path: Path) -> None:
    r = run_pytest(["-p", "tests.conftest"], scratch(tmp_path), {})
    assert r.returncode == 0, r.stdout + r.stderr
    assert outcomes(r.stdout) == {"passed": 1, "skipped": 4}, r.stdout
    assert "runsc missing: runsc hidden by the scratch test" in r.stdout  # -ra lists each reason
    assert "npm missing: npm hidden by the marker" in r.stdout
    assert "dockerd missing: no dockerd in this scratch test" in r.stdout
    assert "scripts/test-docker.sh" in r.stdout  # and how to get the component
    assert "components missing on this machine" in r.stdout  # summed up at the end
    assert f"{REQUIRE_ALL_ENV}=1 makes them fail" in r.stdout


def test_require_all_turns_every_missing_component_into_a_failure(tmp_path: Path) -> None:
    r = run_pytest(["-p", "tests.conftest"], scratch(tmp_path), {REQUIRE_ALL_ENV: "1"})
    assert r.returncode == 1, r.stdout + r.stderr
    # the test body fails; the marker and the session fixture fail at setup (reported as errors)
    assert outcomes(r.stdout) == {"passed": 1, "failed": 1, "errors": 3}, r.stdout
    assert "skipped" not in r.stdout.splitlines()[-1]
    assert "runsc missing: runsc hidden by the scratch test" in r.stdout
    assert "components missing on this machine" in r.stdout and "makes them fail" not in r.stdout


def test_require_names_only_some_components(tmp_path: Path) -> None:
    r = run_pytest(["-p", "tests.conftest"], scratch(tmp_path), {REQUIRE_ENV: "runsc"})
    assert r.returncode == 1
    assert outcomes(r.stdout) == {"passed": 1, "failed": 1, "skipped": 3}, r.stdout


def test_a_bad_switch_value_is_refused_with_what_to_pass(tmp_path: Path) -> None:
    r = run_pytest(["-p", "tests.conftest"], scratch(tmp_path), {REQUIRE_ALL_ENV: "maybe"})
    assert r.returncode == 4, r.stdout + r.stderr  # pytest's usage error: nothing ran
    assert f"{REQUIRE_ALL_ENV}='maybe' is not a switch: pass 1" in r.stderr
    r = run_pytest(["-p", "tests.conftest"], scratch(tmp_path), {REQUIRE_ENV: "runsc,gvisor"})
    assert r.returncode == 4 and "unknown component(s) gvisor" in r.stderr and "runsc" in r.stderr


def _path_without(program: str, into: Path) -> str:
    """A PATH with every program of the current PATH but `program` (symlinks in one directory)."""
    into.mkdir()
    for d in reversed(os.environ.get("PATH", "").split(os.pathsep)):
        if not os.path.isdir(d):
            continue
        for name in os.listdir(d):
            src = Path(d) / name
            if name != program and os.access(src, os.X_OK) and not src.is_dir():
                dst = into / name
                dst.unlink(missing_ok=True)  # earlier PATH entries win, as in a shell
                dst.symlink_to(src)
    return str(into)


def test_gvisor_tests_fail_when_runsc_is_missing_and_required(tmp_path: Path) -> None:
    """The issue's acceptance check: remove runsc and CI fails instead of skipping the gVisor tests."""
    require_root("the gVisor tests themselves need root: as another user they stop at `root`, not `runsc`")
    assert shutil.which("runsc"), "runsc must be installed here for this check to hide it"
    path = _path_without("runsc", tmp_path / "bin")
    assert shutil.which("runsc", path=path) is None and shutil.which("dockerd", path=path)
    tests = ["tests/runtime/test_gvisor_node.py", "tests/runtime/test_node_egress.py"]

    hidden = run_pytest(tests, REPO, {REQUIRE_ALL_ENV: "1"}, path=path)
    counts = outcomes(hidden.stdout)
    assert hidden.returncode == 1, hidden.stdout[-3000:]
    assert counts.get("errors", 0) >= 18 and set(counts) == {"errors"}, hidden.stdout[-3000:]  # none skip or pass
    assert "runsc missing: runsc not on PATH after scripts/test-docker.sh" in hidden.stdout

    lenient = run_pytest(tests, REPO, {}, path=path)
    assert lenient.returncode == 0, lenient.stdout[-3000:]
    assert set(outcomes(lenient.stdout)) == {"skipped"}, lenient.stdout[-3000:]
    assert "runsc missing: runsc not on PATH" in lenient.stdout
