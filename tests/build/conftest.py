"""Shared helpers for build tests: real git repositories in temporary directories."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from inkmcp.build.source import SourceWorkspace

GIT = ["git", "-c", "user.email=test@example.com", "-c", "user.name=Test", "-c", "init.defaultBranch=main"]


def git(repo: Path, *args: str) -> str:
    """Run git in `repo` with a fixed identity, return stdout."""
    done = subprocess.run([*GIT, *args], cwd=repo, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def write_files(root: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def commit(repo: Path, files: dict[str, str], message: str = "change") -> str:
    """Write `files`, commit them, return the new commit sha."""
    write_files(repo, files)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def make_repo(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Factory: a git repo on branch main with one commit holding `files`."""
    counter = iter(range(1000))

    def _make(files: dict[str, str]) -> Path:
        repo = tmp_path / f"repo{next(counter)}"
        repo.mkdir()
        git(repo, "init", "-q")
        commit(repo, files, "initial")
        return repo

    return _make


@pytest.fixture
def ws(tmp_path: Path) -> SourceWorkspace:
    """A source workspace with no tenant: git runs with the test process's own ids, as with the Coolify provider
    (test_source.py has its own, which can also run git as a tenant user)."""
    mirrors, locks = tmp_path / "mirrors", tmp_path / "locks"
    mirrors.mkdir(mode=0o700)
    locks.mkdir(mode=0o700)
    return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=None)
