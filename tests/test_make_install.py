"""`make serve`'s first run shows progress through the dependency install, and later runs show none of it.

A new user's first `make serve` sat silent for ~1.5 minutes (every install step ran with -q) and looked hung. The
real `make install` runs here, in a copy of the repo's tracked files with a venv of its own (uv's cache is the
machine's, so packages come from it when warm): the first run must say what it does before the long step and let
uv report its progress; the second must print none of it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_copy(dest: Path) -> None:
    """The repo's tracked files as they are in the working tree (what a fresh clone has, plus local edits)."""
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, names.decode().split("\0")):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def make_install(repo: Path) -> list[tuple[float, str]]:
    """`make install`'s output lines, each with the seconds since start at which it arrived."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "MAKEFLAGS", "MFLAGS")}
    started = time.monotonic()
    proc = subprocess.Popen(["make", "--no-print-directory", "install"], cwd=repo, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    assert proc.stdout is not None
    lines = [(time.monotonic() - started, line.rstrip("\n")) for line in proc.stdout]
    assert proc.wait(timeout=600) == 0, "\n".join(text for _, text in lines)
    return lines


@pytest.mark.slow
def test_first_install_shows_progress_and_a_later_run_is_silent(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    tracked_copy(repo)
    first = make_install(repo)
    text = [line for _, line in first]
    shown = "\n".join(text)
    assert text[0].startswith("==> installing InkMCP into .venv (first run"), shown
    long_step = next(i for i, line in enumerate(text) if "requirements.lock (the long step)" in line)
    uv_said = [line for line in text[long_step + 1:] if line.startswith(("Resolved ", "Prepared ", "Installed ",
                                                                         "Audited "))]  # fmt: skip
    assert uv_said, shown  # uv's own progress, not -q silence
    assert text[-1] == "==> installed" and (repo / ".venv" / ".installed").exists(), shown

    again = [line for _, line in make_install(repo)]
    assert not [line for line in again if line.startswith("==>") or "uv" in line], again  # nothing of it
