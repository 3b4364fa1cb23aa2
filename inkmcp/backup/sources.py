"""The git objects of the recorded commits, so a restore can rebuild every live service without its source.

`inkmcp serve` after a restore has each live deployment's record (commit, plan, env) but not its built files
(releases, virtualenvs: rebuildable, large, and tied to this machine's users and paths), so the local provider
rebuilds each one from its recorded commit (`rebuild_checkout`). A local-path repository may be gone with the lost
machine, and a remote one needs the network (and may have been force-pushed), so the set carries the project's
git mirrors: what `deploy_app` fetched, copied as plain files.

Trust: a mirror belongs to the project's Unix user when InkMCP runs as root, so the copy takes only what git
needs (`objects/`, `refs/`, `packed-refs`, `HEAD`), never a symlink, `config` or `hooks/` (git running as root on
a tenant-written config can be made to run commands). Git runs only on the copy, with a config we write.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from inkmcp.settings import git_settings

_PRLIMIT = shutil.which("prlimit", path="/usr/bin:/bin")

RESTORED_SOURCES = Path("work") / "restored-sources"
"""Where a restore puts the mirrors (relative to the data dir): root-private, beside the checkouts."""

_KEEP = ("objects", "refs", "packed-refs", "HEAD")
_BARE_CONFIG = "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"


def _copy_mirror(src: Path, dest: Path) -> None:
    dest.mkdir(mode=0o700, parents=True)
    for name in _KEEP:
        p = src / name
        if p.is_symlink() or not p.exists():
            continue
        if p.is_dir():
            shutil.copytree(p, dest / name, symlinks=True,
                            ignore=shutil.ignore_patterns("tmp_*", "*.lock", "incoming-*"))
        else:
            shutil.copy2(p, dest / name, follow_symlinks=False)
    for root, dirs, files in os.walk(dest):
        for n in [*dirs, *files]:
            if os.path.islink(os.path.join(root, n)):
                os.unlink(os.path.join(root, n))
    (dest / "config").write_text(_BARE_CONFIG)
    for d in ("objects", "refs"):
        (dest / d).mkdir(exist_ok=True)


def _git(mirror: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """git on a copy of a tenant's mirror, under the git jail's per-process memory and CPU limits.

    The objects are the tenant's: peeling `sha^{commit}` parses the whole object, and a loose or packed object
    that inflates to GiBs (build/gitjail.py's attacks) would be expanded here as root with no limit. `prlimit`
    (util-linux) sets them on the one process: a backup is not a hot path, and preexec_fn would fork the server
    when a scheduled backup runs inside `serve`. Over a limit, git fails and the mirror counts as not holding
    the commit (only that tenant's own sources are left out of the set)."""
    env = {"PATH": "/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
           "HOME": "/nonexistent", "LC_ALL": "C"}
    limits = git_settings()
    jail = [_PRLIMIT, f"--data={limits.git_process_memory_mb * 2**20}", f"--cpu={max(1, int(limits.git_timeout))}",
            "--core=0", "--"] if _PRLIMIT else []
    return subprocess.run([*jail, "git", "-c", "safe.directory=*", f"--git-dir={mirror}", *args],
                          capture_output=True, text=True, env=env, timeout=limits.git_timeout, check=False,
                          stdin=subprocess.DEVNULL)


def has_commit(mirror: Path, sha: str) -> bool:
    return _git(mirror, "cat-file", "-e", f"{sha}^{{commit}}").returncode == 0


def capture(mirrors_dir: Path, commits: list[str], stage: Path, out: Path) -> list[str]:
    """Copy the project's mirrors into `stage`, tar them to `out`; return the commits found in them."""
    found: set[str] = set()
    kept = 0
    if mirrors_dir.is_dir():
        for mirror in sorted(mirrors_dir.iterdir()):
            if mirror.is_symlink() or not mirror.is_dir():
                continue
            copy = stage / mirror.name
            _copy_mirror(mirror, copy)
            here = {c for c in commits if has_commit(copy, c)}
            if here:
                found |= here
                kept += 1
            else:
                shutil.rmtree(copy)
    if kept:
        with tarfile.open(out, "w") as tar:
            tar.add(stage, arcname=".")
    shutil.rmtree(stage, ignore_errors=True)
    return sorted(found)


def extract(tar_path: Path, dest: Path) -> None:
    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(tar_path) as tar:
        tar.extractall(dest, filter="data")  # a verified set; "data" refuses links and escapes


def find_mirror(data_dir: Path, project_id: str, sha: str) -> Path | None:
    """A restored mirror of `project_id` holding commit `sha`, if the restore brought one."""
    base = data_dir / RESTORED_SOURCES / project_id
    if not base.is_dir():
        return None
    for mirror in sorted(base.iterdir()):
        if mirror.is_dir() and has_commit(mirror, sha):
            return mirror
    return None


async def rebuild_checkout(data_dir: Path, project_id: str, sha: str, repo_url: str, dest: Path, *,
                           workspace: object, policy: object) -> str:
    """Write the files of `sha` into `dest`: from the restored mirror when it has the commit (no network, no
    dependence on the source still existing), else fetched from `repo_url` as a deploy would. Returns where from."""
    from inkmcp.build.source import (
        FetchedCommit,
        SourcePolicy,
        SourceWorkspace,
        _Source,
        checkout_fetched,
        resolve_and_checkout,
    )

    assert isinstance(policy, SourcePolicy)
    mirror = find_mirror(data_dir, project_id, sha)
    if mirror is not None:
        source = _Source(fetch_url=str(mirror), display="the backup set's copy of the repository", local=True)
        ws = SourceWorkspace(mirrors_dir=mirror.parent, locks_dir=mirror.parent, run_as=None)
        await checkout_fetched(FetchedCommit(sha=sha, source=source, mirror=mirror, workspace=ws), dest,
                               policy=policy)
        return "the backup set's copy of the repository"
    assert isinstance(workspace, SourceWorkspace)
    await resolve_and_checkout(repo_url, sha, dest, workspace=workspace, policy=policy)
    return "the repository"
