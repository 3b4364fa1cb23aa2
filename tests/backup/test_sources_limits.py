"""A backup reads tenants' mirrors as root: git there runs under the git jail's per-process limits.

The attack: a tenant owns its mirror, so it can plant an object under the sha InkMCP recorded for its deployment.
`backup create` asks `git cat-file -e <sha>^{commit}` of a copy of that mirror, and peeling parses the whole object:
a loose "commit" that inflates to hundreds of MiB (a few hundred KiB on disk) made root's git allocate all of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

MIB = 1 << 20
SHA = "ab" * 20


def _plant_commit_bomb(mirror: Path, size: int) -> None:
    """A loose object under SHA that claims to be a commit of `size` bytes (zeros after a valid-looking head)."""
    subprocess.run(["git", "init", "-q", "--bare", str(mirror)], check=True)
    z = zlib.compressobj(9)
    out = bytearray(z.compress(b"commit %d\0" % size))
    block = bytes(MIB)
    for _ in range(size // MIB):
        out += z.compress(block)
    out += z.flush()
    (mirror / "objects" / SHA[:2]).mkdir()
    (mirror / "objects" / SHA[:2] / SHA[2:]).write_bytes(bytes(out))


def _has_commit_in_a_fresh_process(mirror: Path, sha: str, memory_mb: int) -> dict[str, object]:
    """has_commit in a new interpreter, so the children's peak RSS is this check's alone."""
    code = (
        "import json, resource, sys\n"
        "from pathlib import Path\n"
        "from inkmcp.settings import GitSettings, set_git_settings\n"
        "from inkmcp.backup.sources import has_commit\n"
        f"set_git_settings(GitSettings(git_process_memory_mb={memory_mb}))\n"
        "found = has_commit(Path(sys.argv[1]), sys.argv[2])\n"
        "print(json.dumps({'found': found, 'peak_kib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(mirror), sha], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


def test_a_planted_commit_that_inflates_to_400_mib_is_refused_within_the_limit(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    _plant_commit_bomb(mirror, 400 * MIB)
    assert (mirror / "objects" / SHA[:2] / SHA[2:]).stat().st_size < 2 * MIB  # small on disk, big in memory
    seen = _has_commit_in_a_fresh_process(mirror, SHA, memory_mb=64)
    assert seen["found"] is False
    assert int(seen["peak_kib"]) < 128 * 1024, seen  # root's git stopped near the limit, not at 400 MiB


def test_a_real_commit_is_still_found_under_the_limit(tmp_path: Path) -> None:
    work = tmp_path / "work"
    subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
    (work / "app.py").write_text("print('hi')\n")
    git = ["git", "-C", str(work), "-c", "user.name=a", "-c", "user.email=a@example.com"]
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    sha = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    seen = _has_commit_in_a_fresh_process(work / ".git", sha, memory_mb=64)
    assert seen["found"] is True
    assert _has_commit_in_a_fresh_process(work / ".git", SHA, memory_mb=64)["found"] is False
