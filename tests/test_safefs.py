"""safefs: the operations root performs next to tenant-writable trees refuse every planted link.

Each test plants what a hostile tenant would (a symlink, a hard link, a FIFO) and asserts that the
root-side operation fails or skips it, and that the target outside the tree is unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from inkmcp.build.plan import RunAs
from inkmcp.safefs import (
    chown_private_tree,
    ensure_owned_dir,
    is_dir_beneath,
    list_beneath,
    move_into,
    read_beneath,
)
from tests.requirements import require_root

ME = RunAs(user="me", uid=os.getuid(), gid=os.getgid(), home="/nonexistent")


def _secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("ROOT-ONLY")
    secret.chmod(0o600)
    return secret


def test_ensure_owned_dir_refuses_a_planted_symlink(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    (tmp_path / "releases").mkdir()
    (tmp_path / "releases" / "d1").symlink_to(secret.parent)
    with pytest.raises(OSError):
        ensure_owned_dir(tmp_path / "releases", "d1", ME, 0o777)
    assert secret.parent.stat().st_mode & 0o777 != 0o777  # chmod did not land on the link's target
    made = ensure_owned_dir(tmp_path / "releases", "d2", ME, 0o711)
    assert made.is_dir() and not made.is_symlink() and made.stat().st_mode & 0o777 == 0o711


def test_move_into_never_moves_through_a_planted_link(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    staging = tmp_path / "staging"
    (staging / "co").mkdir(parents=True)
    (staging / "co" / "app.py").write_text("print(1)")
    release = tmp_path / "release"
    release.mkdir()
    (release / "src").symlink_to(secret.parent)
    with pytest.raises(OSError):
        move_into(staging / "co", release, "src")
    assert sorted(os.listdir(secret.parent)) == ["secret.txt"]  # nothing moved into the target
    (release / "src").unlink()
    move_into(staging / "co", release, "src")
    assert (release / "src" / "app.py").read_text() == "print(1)"
    assert not (staging / "co").exists()


def test_read_beneath_refuses_links_fifos_and_escapes(tmp_path: Path) -> None:
    secret = _secret(tmp_path)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "ok.txt").write_text("fine")
    (tree / "direct").symlink_to(secret)
    (tree / "viadir").symlink_to(secret.parent)
    os.mkfifo(tree / "fifo")
    assert read_beneath(tree, "sub/ok.txt") == b"fine"
    assert read_beneath(tree, "direct") is None
    assert read_beneath(tree, "viadir/secret.txt") is None
    assert read_beneath(tree, "fifo") is None  # does not hang either
    assert read_beneath(tree, "../outside/secret.txt") is None
    assert read_beneath(tree, str(secret)) is None
    assert read_beneath(tree, "sub/ok.txt", max_bytes=2) is None
    assert read_beneath(tree, "sub/ok.txt", owner_uid=os.getuid() + 1) is None  # someone else's inode
    assert is_dir_beneath(tree, "sub") and not is_dir_beneath(tree, "viadir")
    assert list_beneath(tree, "viadir") == [] and list_beneath(tree, "sub") == ["ok.txt"]


def test_chown_private_tree_does_not_follow_links(tmp_path: Path) -> None:
    require_root("chown to another uid needs root")
    secret = _secret(tmp_path)
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "d" / "f").write_text("x")
    (tree / "link").symlink_to(secret.parent)
    tenant = RunAs(user="nobody", uid=65534, gid=65534, home="/nonexistent")
    chown_private_tree(tree, tenant)
    assert (tree / "d" / "f").stat().st_uid == 65534
    assert os.lstat(tree / "link").st_uid == 65534
    assert secret.stat().st_uid == 0 and secret.parent.stat().st_uid == 0
