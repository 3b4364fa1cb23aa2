"""Red team 2026-12-02 (gitjail): repositories crafted to exhaust the machine through the git InkMCP runs itself.

A tenant chooses the repository a deploy fetches (any URL, its own git server included). InkMCP fetches it with its
own git processes, and those ran in InkMCP's own cgroup with no limit. Performed here as the attacker does: packs
written byte by byte (tests/security/gitbombs.py), served by real git (upload-pack over a path, or a dumb-HTTP
host on loopback), read by InkMCP's real code (`fetch_commit`, as deploy_app runs it; the last test through a
real `inkmcp serve` on Coolify as mallory). What InkMCP's process and its git processes saw is sampled from /proc.

Measured before the fix (same code paths, this box, load ~9 on 2 cores):
    delta bomb    a 1,106-byte pack whose one delta expands to 600 MiB: the fetch's index-pack reached 605 MiB RSS
                  (unpack-objects: the same, plus 22 s deflating it into a loose object); bigger bombs take what the
                  machine has, and several deploys at once multiply it.
    delta chain   3,000 deltas of a 1 MiB blob, 1.1 MB on the wire: one fetch took 62 s (git's CPU, unbounded).
    huge tree     one tree object of 2,000,000 entries (74 MB): InkMCP's own process grew by 609 MiB (the tree read
                  whole and every entry parsed before the entry cap was checked) and took 31 s to refuse it.
    poisoned      on the local provider the tenant owns its mirror: a pack it adds can store its commit's tree as a
                  delta expanding to 512 MiB under the same name; InkMCP's `git cat-file` built it whole (512 MiB).
    clash trees   a tree naming `x` twice, or a symlink `x` and then a directory `x`: the Coolify checkout failed with
                  a bare FileExistsError / NotADirectoryError (an internal error for the agent).
Now: every git process runs through the git jail (inkmcp/build/gitjail.py: its own cgroup with a memory limit for
all git processes together, pids.max and a CPU weight; RLIMIT_DATA/CPU/FSIZE per process), InkMCP reads a tree
object only after its size is checked (INKMCP_GIT_MAX_TREES_MB), and each refusal names the limit and its setting.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from inkmcp.build import gitjail
from inkmcp.build.source import SourcePolicy, SourceWorkspace, fetch_commit
from inkmcp.errors import SourceError
from inkmcp.settings import GitSettings, set_git_settings
from tests.e2e.coolify import coolify_server
from tests.requirements import require_root
from tests.security import gitbombs
from tests.security.conftest import NEEDS_ROOT, ROOT, deploy_failure, session
from tests.support import serving

pytestmark = [pytest.mark.asyncio, ROOT]
MIB = 1 << 20
ALLOW = SourcePolicy(allow_local=True)


class Watch:
    """Samples, every 10 ms while it runs: InkMCP's (this process's) RSS, and the largest RSS of any git process it
    started, directly or through the jail's starter."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.rss0 = self.me.memory_info().rss
        self.peak_self = self.rss0
        self.peak_git = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            procs = self.me.children(recursive=True)
            starter = gitjail.starter_pid()
            if starter is not None:
                with_starter = psutil.Process(starter) if psutil.pid_exists(starter) else None
                procs += with_starter.children(recursive=True) if with_starter is not None else []
            for p in procs:
                try:
                    self.peak_git = max(self.peak_git, p.memory_info().rss)
                except psutil.Error:
                    pass
            self.peak_self = max(self.peak_self, self.me.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def grew(self) -> int:
        return self.peak_self - self.rss0


@pytest.fixture
def limits() -> Iterator[Any]:
    """Set the git settings for one test (a fresh starter applies them); the environment's again afterwards."""

    def apply(**values: Any) -> GitSettings:
        settings = GitSettings(**values)
        gitjail.shutdown()
        set_git_settings(settings)
        return settings

    yield apply
    gitjail.shutdown()
    set_git_settings(None)


def workspace(root: Path) -> SourceWorkspace:
    """As the Coolify provider reads a repo: as InkMCP itself, mirrors in a dir of its own."""
    root.mkdir(mode=0o700, exist_ok=True)
    for name in ("mirrors", "locks", "checkouts"):
        (root / name).mkdir(mode=0o700, exist_ok=True)
    return SourceWorkspace(mirrors_dir=root / "mirrors", locks_dir=root / "locks", run_as=None)


async def fetch(url: str, ws: SourceWorkspace, **kw: Any) -> Any:
    return await fetch_commit(url, None, workspace=ws, policy=kw.pop("policy", ALLOW),
                              files_for=lambda mirror, sha: ws.mirrors_dir.parent / "checkouts" / sha, **kw)


@pytest.fixture
def dumb_http(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """The attacker's own git host: a dumb-HTTP server on loopback for the bare repos under its root."""
    root = tmp_path / "host"
    root.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, fmt: str, *args: Any) -> None:
            pass

    with serving(ThreadingHTTPServer(("127.0.0.1", 0), Handler)) as port:
        yield root, port


async def test_a_delta_bomb_stops_at_one_git_process_memory_limit(limits: Any, tmp_path: Path,
                                                                  dumb_http: tuple[Path, int]) -> None:
    """mallory's git host serves a ~1 KB pack whose one delta expands to 512 MiB. Without the jail the fetch's
    index-pack holds all of it (proven first: the attack is real); with it (here 128 MiB per git process) the
    fetch fails in seconds, naming INKMCP_GIT_PROCESS_MEMORY_MB, and InkMCP's own memory stays flat."""
    require_root(NEEDS_ROOT)
    host, port = dumb_http
    bomb = gitbombs.delta_bomb(host / "bomb.git", 512 * MIB)
    assert sum(p.stat().st_size for p in (bomb / "objects" / "pack").glob("*.pack")) < 4096
    url = f"http://127.0.0.1:{port}/bomb.git"

    limits(git_jail=False)
    with Watch() as before:
        fetched = await fetch(url, workspace(tmp_path / "before"))
    assert fetched.size[0] > 512 * MIB  # the bomb went through
    assert before.peak_git > 400 * MIB, f"the unjailed fetch peaked at {before.peak_git >> 20} MiB"

    limits(git_jail=True, git_process_memory_mb=128)
    t0 = time.monotonic()
    with Watch() as after, pytest.raises(SourceError) as refused:
        await fetch(url, workspace(tmp_path / "after"))
    elapsed = time.monotonic() - t0
    text = f"{refused.value} {refused.value.fix}"
    assert "INKMCP_GIT_PROCESS_MEMORY_MB" in text and "128 MiB" in text and "repo_url" in text, text
    assert after.peak_git < 160 * MIB, f"a jailed git process reached {after.peak_git >> 20} MiB"
    assert after.grew < 40 * MIB, f"InkMCP grew by {after.grew >> 20} MiB"
    assert elapsed < 60, elapsed


async def test_fetches_at_once_share_one_memory_limit(limits: Any, tmp_path: Path,
                                                      dumb_http: tuple[Path, int]) -> None:
    """Three deploys at once, each fetching a bomb of 300 MiB (under the per-process limit here): together they
    would hold 900 MiB. All git processes share one cgroup (here 256 MiB): the kernel kills the git processes
    that cross it, never InkMCP; each deploy is told which limit it hit (INKMCP_GIT_MEMORY_MB)."""
    require_root(NEEDS_ROOT)
    host, port = dumb_http
    for i in range(3):
        gitbombs.delta_bomb(host / f"b{i}.git", 300 * MIB)
    limits(git_jail=True, git_process_memory_mb=1024, git_memory_mb=256)

    async def one(i: int) -> BaseException | object:
        try:
            return await fetch(f"http://127.0.0.1:{port}/b{i}.git", workspace(tmp_path / f"w{i}"))
        except SourceError as e:
            return e

    with Watch() as watch:
        results = await asyncio.gather(*(one(i) for i in range(3)))
    for result in results:
        assert isinstance(result, SourceError), result
        assert "INKMCP_GIT_MEMORY_MB" in f"{result} {result.fix}" and "256 MiB" in str(result), result
    group = Path(gitjail.cgroup_dir())
    if (group / "memory.max_usage_in_bytes").exists():  # cgroup v1
        peak = int((group / "memory.max_usage_in_bytes").read_text())
    else:
        peak = int((group / "memory.peak").read_text())
    assert peak <= 256 * MIB, f"all git processes together peaked at {peak >> 20} MiB"
    assert watch.grew < 40 * MIB, f"InkMCP grew by {watch.grew >> 20} MiB"


async def test_a_huge_tree_object_is_refused_before_it_is_read(limits: Any, tmp_path: Path) -> None:
    """One tree object of 600,000 entries (22 MB, a few MB on the wire). InkMCP read every tree whole and parsed
    all its entries before counting them (2,000,000 entries: +609 MiB in InkMCP, 31 s). Now its size is checked
    first (INKMCP_GIT_MAX_TREES_MB, 16 MiB): refused, InkMCP's memory flat."""
    require_root(NEEDS_ROOT)
    repo = gitbombs.huge_tree(tmp_path / "tree.git", 600_000)
    limits(git_jail=True)
    with Watch() as watch, pytest.raises(SourceError) as refused:
        await fetch(str(repo), workspace(tmp_path / "w"))
    text = f"{refused.value} {refused.value.fix}"
    assert "INKMCP_GIT_MAX_TREES_MB" in text and "16.0 MiB" in text, text
    assert watch.grew < 30 * MIB, f"InkMCP grew by {watch.grew >> 20} MiB"


async def test_a_long_delta_chain_stops_at_the_cpu_and_time_limits(limits: Any, tmp_path: Path) -> None:
    """2,000 deltas of a 1 MiB blob, each of the one before: ~0.8 MB on the wire, GBs of copying and hashing to
    index (3,000 levels: 62 s for one fetch, before). A git process gets at most twice INKMCP_GIT_TIMEOUT of CPU
    (killed by SIGXCPU, named in the error) and a fetch INKMCP_GIT_TIMEOUT of wall time."""
    require_root(NEEDS_ROOT)
    repo = gitbombs.delta_chain(tmp_path / "chain.git", 2000, MIB)
    limits(git_jail=True, git_timeout=1)  # RLIMIT_CPU 2 s; the call's own wall limit set high to see the CPU's
    t0 = time.monotonic()
    with pytest.raises(SourceError) as refused:
        await fetch(str(repo), workspace(tmp_path / "cpu"), timeout=300)
    text = f"{refused.value} {refused.value.fix}"
    # git names index-pack's SIGXCPU, or (killed before it wrote anything) says only "invalid index-pack output"
    assert ("more CPU time" in text or "its CPU time (2 s per process" in text) and "INKMCP_GIT_TIMEOUT" in text, text
    assert time.monotonic() - t0 < 120

    limits(git_jail=True, git_timeout=2)  # now the wall limit (2 s) comes first
    t0 = time.monotonic()
    with pytest.raises(SourceError, match=r"did not finish within 2s"):
        await fetch(str(repo), workspace(tmp_path / "wall"))
    assert time.monotonic() - t0 < 15


async def _redeployed(path: Path, ws: SourceWorkspace) -> None:
    """--- overhead9: the repository at `path` deployed once (a plain commit), then removed: a bomb made at the same
    path afterwards comes in a redeploy's fetch, into a mirror that holds objects already. (A new mirror's first fetch
    is one pack, indexed by index-pack: source._FAST_FETCH.)"""
    gitbombs._commit(gitbombs._bare(path), [])
    await fetch(str(path), ws)
    subprocess.run(["rm", "-rf", "--", str(path)], check=True)


async def test_a_small_bomb_unpacked_into_loose_objects_stops_at_the_cpu_and_memory_limits(limits: Any,
                                                                                        tmp_path: Path) -> None:
    """overhead8: a redeploy's fetch of fewer than git's fetch.unpackLimit (100) objects is written by `unpack-objects`
    as loose objects (no pack to fsync: `fetch.unpackLimit=1` made every deploy's fetch write and fsync a pack and its
    index, 21.6 -> 36.2 ms per fetch on a quiet box). unpack-objects deflates each object again, so a few crafted
    objects cost it more CPU than index-pack; the jail's limits bound it the same way. Performed over a local path
    (upload-pack and unpack-objects, as a redeploy of a path runs them): a 512 MiB delta bomb fails at the
    per-process memory limit (128 MiB) in seconds; a chain of 60 deltas of a 4 MiB blob (~0.3 MB on the wire, ~60 x
    4 MiB to deflate) is killed at RLIMIT_CPU (2 s here), each named in the error."""
    require_root(NEEDS_ROOT)
    limits(git_jail=True)
    mem = workspace(tmp_path / "mem")
    await _redeployed(tmp_path / "bomb.git", mem)  # --- overhead9: a redeploy, so that unpack-objects gets it
    bomb = gitbombs.delta_bomb(tmp_path / "bomb.git", 512 * MIB)
    limits(git_jail=True, git_process_memory_mb=128)
    t0 = time.monotonic()
    with Watch() as watch, pytest.raises(SourceError) as refused:
        await fetch(str(bomb), mem)
    text = f"{refused.value} {refused.value.fix}"
    assert "INKMCP_GIT_PROCESS_MEMORY_MB" in text and "128 MiB" in text, text
    assert watch.peak_git < 160 * MIB, f"a jailed git process reached {watch.peak_git >> 20} MiB"
    assert time.monotonic() - t0 < 30

    limits(git_jail=True)
    cpu = workspace(tmp_path / "cpu")
    await _redeployed(tmp_path / "chain.git", cpu)  # --- overhead9
    chain = gitbombs.delta_chain(tmp_path / "chain.git", 60, 4 * MIB)
    limits(git_jail=True, git_timeout=1)  # RLIMIT_CPU 2 s; the call's own wall limit set high to see the CPU's
    t0 = time.monotonic()
    with pytest.raises(SourceError) as refused:
        await fetch(str(chain), cpu, timeout=300)
    text = f"{refused.value} {refused.value.fix}"
    assert "more CPU time" in text and "INKMCP_GIT_TIMEOUT" in text, text
    assert time.monotonic() - t0 < 60


async def test_a_small_fetch_writes_loose_objects_not_a_pack(limits: Any, tmp_path: Path) -> None:
    """overhead8: a redeploy's fetch of a few objects leaves them loose in the mirror, as git does by default: git
    fsyncs a pack and its index (core.fsync's default covers packs, not loose objects), two fsyncs per deploy that
    took `git fetch` inside deploy_app from 21.6 to 36.2 ms p50 while `fetch.unpackLimit=1` forced a pack. A fetch
    of more objects than fetch.unpackLimit still arrives as one pack. --- overhead9: a new mirror's first fetch is
    one pack (index-pack), not fsynced (source._FAST_FETCH; tests/build/test_source_files.py counts the fsyncs)."""
    require_root(NEEDS_ROOT)
    repo = gitbombs._bare(tmp_path / "small.git")
    gitbombs._commit(repo, [])
    limits(git_jail=True)
    ws = workspace(tmp_path / "w")
    await fetch(str(repo), ws)
    (mirror,) = [p for p in ws.mirrors_dir.iterdir() if not p.name.startswith(".")]
    assert len(list((mirror / "objects" / "pack").glob("*.pack"))) == 1  # --- overhead9: the first fetch
    assert not list((mirror / "objects").glob("??/*"))
    gitbombs._commit(repo, [("100644", gitbombs._git(repo, "hash-object", "-w", "--stdin", stdin=b"v2\n"), "v2")])
    await fetch(str(repo), ws)
    assert len(list((mirror / "objects" / "pack").glob("*.pack"))) == 1
    assert len([p for p in (mirror / "objects").glob("??/*")]) == 3  # commit, tree, v2 (app.py is there already)

    blobs = [subprocess.run(["git", f"--git-dir={repo}", "hash-object", "-w", "--stdin"], input=f"{i}\n".encode(),
                            capture_output=True, check=True).stdout.decode().strip() for i in range(150)]
    gitbombs._commit(repo, [("100644", sha, f"f{i}.txt") for i, sha in enumerate(blobs)])
    await fetch(str(repo), ws)
    assert len(list((mirror / "objects" / "pack").glob("*.pack"))) == 2


async def test_a_poisoned_object_in_the_tenants_own_mirror_stops_at_the_memory_limit(limits: Any,
                                                                                     tmp_path: Path) -> None:
    """On the local provider the tenant owns its mirror (its build finds it beside its caches): it can add a pack
    that stores a directory (tree) of its commit under the same name as a delta expanding to 512 MiB (git does not
    re-hash what it reads from a pack). InkMCP's next deploy reads that tree through `git cat-file`, which builds it
    whole right after it announced its size: InkMCP refuses that size (INKMCP_GIT_MAX_TREES_MB) and kills it, but
    without the jail cat-file had taken the 512 MiB by then; with it, cat-file's allocation fails at the
    per-process limit (128 MiB here)."""
    require_root(NEEDS_ROOT)
    repo = gitbombs._bare(tmp_path / "plain.git")
    blob = subprocess.run(["git", f"--git-dir={repo}", "hash-object", "-w", "--stdin"], input=b"x\n",
                          capture_output=True, check=True).stdout.decode().strip()
    sub = subprocess.run(["git", f"--git-dir={repo}", "mktree"], input=f"100644 blob {blob}\tlib.py\n".encode(),
                         capture_output=True, check=True).stdout.decode().strip()
    gitbombs._commit(repo, [("040000", sub, "lib")])
    # Without the jail (INKMCP_GIT_JAIL=false, the escape hatch) cat-file built all 512 MiB (gitjail measured it);
    # that branch no longer finishes within the 120 s fetch limit here (CI run 44, and alone at load 2), so only the
    # jailed side runs: the point of the test.
    limits(git_jail=True, git_process_memory_mb=128)
    ws = workspace(tmp_path / "jail")
    await fetch(str(repo), ws)
    (mirror,) = [p for p in ws.mirrors_dir.iterdir() if not p.name.startswith(".")]
    # the subtree: git re-hashes the root tree when it peels main^{tree}, not a tree it is asked for by name
    tree = subprocess.run(["git", f"--git-dir={mirror}", "rev-parse", "main:lib"], capture_output=True,
                          text=True, check=True).stdout.strip()
    every = subprocess.run(["git", f"--git-dir={mirror}", "rev-list", "--objects", "main"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    gitbombs.poison(mirror, tree, 2, 512 * MIB, [line[:40] for line in every if line and line[:40] != tree])
    with Watch() as watch, pytest.raises(SourceError) as refused:
        await fetch(str(repo), ws)
    text = f"{refused.value} {refused.value.fix}"
    assert "INKMCP_GIT_MAX_TREES_MB" in text, text  # the size cat-file announces first, before the contents
    assert watch.grew < 40 * MIB, f"InkMCP grew by {watch.grew >> 20} MiB"
    assert watch.peak_git < 160 * MIB, f"a jailed git process reached {watch.peak_git >> 20} MiB"


@pytest.mark.parametrize("kind", ["twice", "link-then-dir"])
async def test_a_tree_with_clashing_names_gets_a_clear_refusal(limits: Any, tmp_path: Path, kind: str) -> None:
    """The Coolify checkout path (files written through cat-file) met a tree naming `x` twice, or a symlink `x` to
    /etc and then a directory `x` holding `passwd`: a bare FileExistsError / NotADirectoryError. Now a refusal naming
    the path and how to fix the repository; nothing is written through the link."""
    require_root(NEEDS_ROOT)
    repo = gitbombs.clash_tree(tmp_path / f"{kind}.git", kind)
    limits(git_jail=True)
    passwd = Path("/etc/passwd").read_bytes()
    with pytest.raises(SourceError) as refused:
        await fetch(str(repo), workspace(tmp_path / "w"))
    text = f"{refused.value} {refused.value.fix}"
    shown = "'x'" if kind == "twice" else "'x/passwd'"
    assert f"names {shown} twice, or a path inside a file or symlink" in text and "git fsck" in text, text
    assert refused.value.argument == "repo_url"
    assert Path("/etc/passwd").read_bytes() == passwd


@pytest.mark.slow  # starts its own `inkmcp serve` and the Coolify stand-in
async def test_mallory_deploying_a_delta_bomb_is_told_the_limit_and_the_server_stays_up(tmp_path: Path) -> None:
    """Through a real `inkmcp serve` on Coolify (InkMCP reads the repo itself to plan the build), as mallory over
    MCP: her repo's 700 MiB delta bomb. She is told that the fetch needed more memory than one git process may use
    (INKMCP_GIT_PROCESS_MEMORY_MB, here 128); the server's memory stays flat and /healthz answers throughout."""
    require_root(NEEDS_ROOT)
    repo = gitbombs.delta_bomb(tmp_path / "mallory-bomb.git", 700 * MIB)
    with coolify_server("inkmcp-sec-gitjail-", ("mallory",), INKMCP_ALLOW_LOCAL_SOURCES="1",
                        INKMCP_GIT_PROCESS_MEMORY_MB="128") as srv:
        assert srv.proc is not None
        server = psutil.Process(srv.proc.pid)
        rss0 = server.memory_info().rss
        health: list[float] = []

        async def probe() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                while True:
                    t = time.monotonic()
                    r = await client.get(f"http://127.0.0.1:{srv.port}/healthz")
                    assert r.status_code == 200
                    health.append(time.monotonic() - t)
                    await asyncio.sleep(0.2)

        prober = asyncio.create_task(probe())
        try:
            async with session(srv, "mallory") as m:
                text = await deploy_failure(m, repo_url=str(repo), project_name="gitjail-bomb",
                                            service_type="backend", start_command="python3 app.py")
        finally:
            prober.cancel()
        assert "INKMCP_GIT_PROCESS_MEMORY_MB" in text and "128 MiB" in text, text
        grew = server.memory_info().rss - rss0
        assert grew < 60 * MIB, f"the server grew by {grew >> 20} MiB"
        assert health and max(health) < 2.5, health
        starters = [c for c in server.children() if "_gitjail_child.py" in " ".join(c.cmdline())]
        assert len(starters) == 1, server.children()
        assert f"/inkmcp-git/git-{srv.proc.pid}" in Path(f"/proc/{starters[0].pid}/cgroup").read_text()
    assert os.path.exists(repo)
