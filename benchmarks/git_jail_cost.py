"""What the git jail (inkmcp/build/gitjail.py) costs: per git process and per deploy, A/B in one run.

A = git started directly by this process (INKMCP_GIT_JAIL=false, as before), B = through the jail's starter (the
default: a cgroup and resource limits inherited from a starter process). The two alternate round by round in one
process, so machine load hits both alike; the figures are medians and the difference B - A.

1. one git process: `git --version` started, its output read, its exit awaited (source._git's path);
2. one deploy's git work on the Coolify path (the provider reads the repo as InkMCP itself): `fetch_commit` with
   `files_for` of a small repo already in the mirror, as deploy_app runs it per deploy (`git fetch` that finds
   nothing new, one `cat-file` process resolving the ref, listing the tree and writing the files).

   With `--new-commit`, a new commit is made in the repo before each deploy (outside the timing), so each fetch
   writes objects, as a redeploy of a changed repo does (overhead8: a no-op fetch did not see that
   `fetch.unpackLimit=1` made every such fetch write and fsync a pack and its index).

    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/git_jail_cost.py --rounds 200
    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/git_jail_cost.py --rounds 50 --new-commit
   `--ab-config fetch.unpackLimit=1`: A = the jail as configured, B = the jail with that `git -c` setting added
   (same-run A/B of a git setting; e.g. the pack fsyncs of unpackLimit=1, or core.fsync=none). `--fresh-mirror`:
   each deploy fetches into a new, empty mirror (a project's first deploy, as benchmarks/coolify_deploy.py's are).
   `--ab-fast-fetch`: A = git's own fetch storage, B = InkMCP's (`source._FAST_FETCH`: one pack, not fsynced).
    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/git_jail_cost.py --rounds 40 --fresh-mirror --ab-fast-fetch
    flock /tmp/inkmcp-bench.lock .venv/bin/python benchmarks/git_jail_cost.py --rounds 50 --new-commit \
        --ab-config fetch.unpackLimit=1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from inkmcp.build import gitjail, source
from inkmcp.settings import GitSettings, set_git_settings


def make_repo(root: Path) -> Path:
    repo = root / "app"
    repo.mkdir()
    files = {"app.py": "print('hi')\n", "requirements.txt": "flask\n", "Procfile": "web: python app.py\n",
             **{f"pkg/mod{i}.py": f"X = {i}\n" * 20 for i in range(20)}}
    for name, text in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    return repo


def cpu() -> tuple[float, float]:
    """(this process's CPU seconds, its children's and the starter's with its children's): what the work cost the
    machine, less disturbed by load than wall time."""
    own = time.process_time()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = kids.ru_utime + kids.ru_stime
    pid = gitjail.starter_pid()
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        children += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")  # utime stime cutime cstime
    return own, children


async def timed(work: Awaitable[object]) -> tuple[float, float, float]:
    c0, t = cpu(), time.perf_counter()
    await work
    elapsed, c1 = time.perf_counter() - t, cpu()
    return elapsed, c1[0] - c0[0], c1[1] - c0[1]


async def one_process(env: dict[str, str]) -> None:
    proc = await source._spawn(["git", "--version"], None, env)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and out.startswith(b"git version"), out


async def one_deploy(repo: Path, ws: source.SourceWorkspace, checkouts: Path, n: int) -> None:
    dest = checkouts / f"c{n}"
    fetched = await source.fetch_commit(str(repo), None, workspace=ws, policy=source.SourcePolicy(allow_local=True),
                                        files_for=lambda mirror, sha: dest)
    assert fetched.files == dest and (dest / "app.py").exists()
    shutil.rmtree(dest)


def new_commit(repo: Path, n: int) -> None:
    (repo / "CHANGES").write_text(f"change {n}\n")
    git = ["git", "-C", str(repo), "-c", "user.name=b", "-c", "user.email=b@example.com"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", f"change {n}"], check=True)


def fresh_workspace(root: Path, n: int) -> source.SourceWorkspace:
    """A workspace with an empty mirrors dir: the fetch makes a new mirror, as a project's first deploy does."""
    d = root / "fresh" / str(n)
    for sub in ("mirrors", "locks"):
        (d / sub).mkdir(mode=0o700, parents=True)
    return source.SourceWorkspace(mirrors_dir=d / "mirrors", locks_dir=d / "locks", run_as=None)


async def main(rounds: int, weight: int, commits: bool = False, extra: list[str] | None = None,
               fresh: bool = False, fast_fetch: bool = False) -> None:
    print(f"load average at start: {Path('/proc/loadavg').read_text().strip()}")
    root = Path(tempfile.mkdtemp(prefix="inkmcp-gitjail-bench-"))
    base = source._git_base
    fast = list(source._FAST_FETCH)
    if fast_fetch:  # A: git's own fetch storage (fetch.unpackLimit 100, packs fsynced); B: InkMCP's `_FAST_FETCH`
        extra = []
    try:
        repo = make_repo(root)
        for d in ("mirrors", "locks", "checkouts"):
            (root / d).mkdir(mode=0o700)
        ws = source.SourceWorkspace(mirrors_dir=root / "mirrors", locks_dir=root / "locks", run_as=None)
        env = source._git_env(source._Source(fetch_url="x", display="x", local=True))
        modes = {"A direct": GitSettings(git_jail=False), "B jail": GitSettings(git_jail=True, git_cpu_weight=weight)}
        if extra is not None:  # A: the jail as it is; B: the jail with each `-c extra`
            modes = {"A direct": GitSettings(git_jail=True, git_cpu_weight=weight),
                     "B jail": GitSettings(git_jail=True, git_cpu_weight=weight)}
            print(f"A = the jail as configured, B = the jail with `{' '.join(f'git -c {e}' for e in extra)}`"
                  if not fast_fetch else f"A = git's own fetch storage, B = InkMCP's `{' '.join(fast)}`")
        times: dict[str, dict[str, list[tuple[float, float, float]]]] = {
            m: {"process": [], "deploy": []} for m in modes}
        for settings in modes.values():  # warm both paths (the starter starts, the mirror is made)
            set_git_settings(settings)
            await one_process(env)
            await one_deploy(repo, ws, root / "checkouts", 0)
        for r in range(rounds):
            for mode, settings in (modes.items() if r % 2 == 0 else reversed(modes.items())):
                set_git_settings(settings)
                if fast_fetch:
                    source._FAST_FETCH[:] = fast if mode == "B jail" else []
                elif extra is not None:
                    added = [a for e in extra for a in ("-c", e)]
                    source._git_base = (lambda src, _b=base, _a=added: [*_b(src), *_a]) if mode == "B jail" else base
                times[mode]["process"].append(await timed(one_process(env)))
                if commits:
                    new_commit(repo, 2 * r + (mode == "B jail"))
                where = fresh_workspace(root, 2 * r + (mode == "B jail")) if fresh else ws
                times[mode]["deploy"].append(await timed(one_deploy(repo, where, root / "checkouts", r + 1)))
        print(f"{rounds} rounds, A and B alternating. wall: median (p90); CPU: mean of InkMCP's process, and of the "
              "git processes (with the starter's own); all in ms")
        for what in ("process", "deploy"):
            a, b = times["A direct"][what], times["B jail"][what]
            label = "one git process (start, read, exit)" if what == "process" else "one deploy's git work (Coolify)" \
                + (", a new commit each" if what == "deploy" and commits else "") \
                + (", into a new mirror each" if what == "deploy" and fresh else "")
            print(f"  {label}")
            for name, runs in (("A direct", a), ("B jail", b)):
                wall = [w for w, _, _ in runs]
                print(f"    {name:9s} wall {statistics.median(wall) * 1e3:7.2f} "
                      f"({statistics.quantiles(wall, n=10)[-1] * 1e3:7.2f})   "
                      f"CPU InkMCP {statistics.fmean(c for _, c, _ in runs) * 1e3:6.2f}   "
                      f"git {statistics.fmean(g for _, _, g in runs) * 1e3:6.2f}")
            dw = statistics.median([w for w, _, _ in b]) - statistics.median([w for w, _, _ in a])
            dc = statistics.fmean(c for _, c, _ in b) - statistics.fmean(c for _, c, _ in a)
            dg = statistics.fmean(g for _, _, g in b) - statistics.fmean(g for _, _, g in a)
            print(f"    B-A       wall {dw * 1e3:+7.2f}            CPU InkMCP {dc * 1e3:+6.2f}   git {dg * 1e3:+6.2f}")
        print(f"load average at end: {Path('/proc/loadavg').read_text().strip()}")
    finally:
        source._git_base = base
        source._FAST_FETCH[:] = fast
        gitjail.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--no-cgroup", action="store_true",
                        help="B without the cgroup (the starter and the resource limits only): what the group costs")
    parser.add_argument("--weight", type=int, default=GitSettings().git_cpu_weight,
                        help="the git group's CPU weight (INKMCP_GIT_CPU_WEIGHT; default: the setting's)")
    parser.add_argument("--new-commit", action="store_true",
                        help="a new commit before each deploy: every fetch writes objects (not a no-op fetch)")
    parser.add_argument("--ab-config", metavar="KEY=VALUE", action="append",
                        help="A/B a git setting instead of the jail: A the jail as configured, B with `-c KEY=VALUE` "
                             "(repeat it for several settings at once)")
    parser.add_argument("--fresh-mirror", action="store_true",
                        help="each deploy fetches into a new, empty mirror (a project's first deploy)")
    parser.add_argument("--ab-fast-fetch", action="store_true",
                        help="A/B InkMCP's fetch storage (source._FAST_FETCH: one pack, not fsynced) against git's own "
                             "(loose objects under 100, packs fsynced), on an InkMCP-owned mirror")
    args = parser.parse_args()
    if args.no_cgroup:
        gitjail._join_cgroup = lambda pid, limits: ("", [])  # type: ignore[assignment]
    asyncio.run(main(args.rounds, args.weight, args.new_commit, args.ab_config, args.fresh_mirror, args.ab_fast_fetch))
