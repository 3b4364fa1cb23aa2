"""What tenant isolation costs in speed: two source trees of InkMCP measured in one run, interleaved.

Issue 6 asks that deploy-to-first-200 and wake-to-first-byte stay within 20 % of the figures before the
isolation work. Numbers from two separate runs differ by more than that on a busy 2-core machine, so this
script starts one real `inkmcp serve` per tree (both at once, each with its own data dir, ports and tenant
users) and alternates the trees round by round (A B, B A, A B, ...), one measurement at a time, so load
and drift hit both alike. Both servers run from the same interpreter; only PYTHONPATH differs, and the
script checks in each server's own log that `inkmcp` was imported from the tree it is meant to measure.

Per round and tree: wake an on_demand service that went to sleep (INKMCP_IDLE_TIMEOUT=1, polled until
list_services says `sleeping`) and time the request to its first byte; deploy a fresh stdlib app as a new
project until the proxy answers 200; redeploy a new commit of it until the proxy serves the new version;
delete the project (not timed, so every round starts from the same state).

Prints a markdown table (p50/p90/mean per tree, candidate/baseline ratios) on stdout, progress on stderr.
Exits 1 if a p50 ratio exceeds --max-ratio (unless --no-fail), 2 if a tree could not be measured.
Must run as root: the isolation being costed (tenant users, cgroups) exists only in root mode.

    .venv/bin/python benchmarks/isolation_cost.py                       # baseline 078b6ed vs this tree
    .venv/bin/python benchmarks/isolation_cost.py --baseline /tmp/inkmcp-baseline --candidate /tmp/inkmcp-baseline

The baseline tree is a detached `git worktree` (created if missing); nothing is committed in it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from mcp import ClientSession

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.run_all import first_200, first_byte, pct, tiny_app, until_done, until_sleeping
from tests.support import ServerProc, call, git_commit, git_repo, make_server, mcp_session, remove_tenant_users

REPO = Path(__file__).resolve().parent.parent
BASELINE_COMMIT = "078b6ed"
DEFAULT_BASELINE = Path("/tmp/inkmcp-baseline")
METRICS = {
    "deploy": "deploy_app (new project) → first 200",
    "redeploy": "redeploy (new commit) → first 200 of new version",
    "wake": "on_demand wake → first byte",
}
MARKER = "isolation_cost: inkmcp imported from "


@dataclass
class Tree:
    """One source tree under test and the server, client and samples that belong to it."""

    label: str
    path: Path
    server: ServerProc
    repos: Path
    samples: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRICS})
    session: ClientSession | None = None
    client: httpx.AsyncClient | None = None
    sleeper_host: str = ""
    error: str | None = None

    def describe(self) -> str:
        head = subprocess.run(["git", "-C", str(self.path), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=False).stdout.strip() or "?"
        dirty = subprocess.run(["git", "-C", str(self.path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=False).stdout.strip()
        return f"{self.path} @ {head}" + (f" + uncommitted changes in {len(dirty.splitlines())} files" if dirty
                                          else " (clean)")


def ensure_tree(path: Path, commit: str | None) -> Path:
    """A tree must hold an `inkmcp` package; the default baseline is made as a detached worktree if missing."""
    path = path.resolve()
    if not path.exists() and commit is not None:
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True)
    if not (path / "inkmcp" / "cli.py").is_file():
        sys.exit(f"--baseline/--candidate {path}: no inkmcp/cli.py there; pass the root of an InkMCP checkout")
    return path


def launcher(tree: Path, where: Path) -> str:
    """An `inkmcp` executable for ServerProc that imports inkmcp from `tree` and logs where it came from.

    `-P` keeps the working directory off sys.path, so only PYTHONPATH (= tree) can supply the package; the
    venv's editable install is consulted last. The marker line in the server log proves which copy ran.
    """
    code = (f"import sys, inkmcp; print({MARKER!r} + inkmcp.__file__, file=sys.stderr, flush=True); "
            "sys.argv[0] = 'inkmcp'; from inkmcp.cli import app; sys.exit(app())")
    exe = where / "inkmcp"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -P -c \"{code}\" \"$@\"\n")
    exe.chmod(0o755)
    return str(exe)


def new_tree(label: str, path: Path) -> Tree:
    """The tree's server settings, data dir, launcher and repo dir; nothing is started yet."""
    server = make_server(f"inkmcp-isocost-{label}-", INKMCP_IDLE_TIMEOUT="1", INKMCP_ALLOW_LOCAL_SOURCES="1",
                         PYTHONPATH=str(path))
    server.inkmcp = launcher(path, server.data_dir.parent)
    repos = server.data_dir.parent / "repos"
    repos.mkdir()
    repos.chmod(0o711)  # tenant users read their repo through it (local sources are read with their rights)
    return Tree(label, path, server, repos)


def start(tree: Tree) -> None:
    """Start the tree's server and prove, from its own log, that it runs this tree's inkmcp."""
    srv = tree.server
    srv.create_key("bench")
    srv.start()
    loaded = [line.split(MARKER, 1)[1].strip() for line in srv.log().splitlines() if MARKER in line]
    if not loaded or not Path(loaded[-1]).resolve().is_relative_to(tree.path / "inkmcp"):
        raise RuntimeError(f"{tree.label} server imported inkmcp from {loaded[-1] if loaded else '?'}, "
                           f"not from {tree.path}")
    print(f"{tree.label}: {tree.describe()}; server pid {srv.proc.pid if srv.proc else '?'} imports "
          f"{loaded[-1]}", file=sys.stderr)


async def connect(tree: Tree, stack: contextlib.AsyncExitStack) -> None:
    """Open the tree's MCP session and HTTP client, and deploy its on_demand sleeper (also a warm-up)."""
    tree.session = await stack.enter_async_context(mcp_session(tree.server, tree.server.keys["bench"]))
    tree.client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))
    repo = git_repo(tree.repos / "sleeper", tiny_app("zzz"))
    dep = await until_done(tree.session, await call(tree.session, "deploy_app", repo_url=str(repo),
                                                    mode="on_demand"))
    tree.sleeper_host = urlsplit(dep["url"]).netloc


async def one_round(tree: Tree, r: int, record: bool) -> None:
    """Wake, deploy, redeploy, delete (untimed): one sample of each metric, measured one after another."""
    s, c, srv = tree.session, tree.client, tree.server
    assert s is not None and c is not None
    await until_sleeping(s, "sleeper", timeout=60, poll=0.05)
    wake = await first_byte(c, srv, tree.sleeper_host)

    name = f"tiny-{r}" if record else f"warm-{r}"
    repo = git_repo(tree.repos / name, tiny_app("v1"))
    t0 = time.monotonic()
    dep = await until_done(s, await call(s, "deploy_app", repo_url=str(repo)))
    deploy = await first_200(c, srv, dep["url"], t0 + 120, body=b"v1") - t0

    git_commit(repo, tiny_app("v2"), "v2")
    t0 = time.monotonic()
    dep = await until_done(s, await call(s, "deploy_app", repo_url=str(repo)))
    redeploy = await first_200(c, srv, dep["url"], t0 + 120, body=b"v2") - t0

    await call(s, "delete", project_name=name, confirm=name)  # untimed: every round starts from one service
    if record:
        for metric, value in (("deploy", deploy), ("redeploy", redeploy), ("wake", wake)):
            tree.samples[metric].append(value)
    print(f"  round {r if record else 'warm-up'} {tree.label}: deploy {deploy * 1000:.0f} ms, "
          f"redeploy {redeploy * 1000:.0f} ms, wake {wake * 1000:.0f} ms", file=sys.stderr)


def stats(values: list[float]) -> tuple[float, float, float] | None:
    if not values:
        return None
    return statistics.median(values), pct(values, 90), statistics.fmean(values)


def report(base: Tree, cand: Tree, max_ratio: float, load_at_start: float) -> bool:
    """Print the markdown table; True if every p50 ratio is within max_ratio.

    The gate is the ratio of the p50s (what issue 6 states). The paired column, the median of per-round
    candidate/baseline ratios of neighbouring measurements, is shown as a cross-check that drift in machine
    load did not decide the result: the two should agree.
    """
    ok = True
    print("\n| metric | n | baseline p50 / p90 / mean (ms) | candidate p50 / p90 / mean (ms) "
          "| ratio p50 | ratio p90 | ratio mean | paired median ratio |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")
    for metric, title in METRICS.items():
        b, c = stats(base.samples[metric]), stats(cand.samples[metric])
        cells = [" / ".join(f"{v * 1000:.0f}" for v in x) if x else "—" for x in (b, c)]
        n = f"{len(base.samples[metric])}+{len(cand.samples[metric])}"
        if b and c:
            ratios = [cv / bv for cv, bv in zip(c, b, strict=True)]
            flag = " ⚠" if ratios[0] > max_ratio else ""
            ok &= ratios[0] <= max_ratio
            paired = statistics.median(cv / bv for cv, bv in zip(cand.samples[metric], base.samples[metric],
                                                                 strict=False))
            rcells = [f"{ratios[0]:.2f}{flag}", f"{ratios[1]:.2f}", f"{ratios[2]:.2f}", f"{paired:.2f}"]
        else:
            ok, rcells = False, ["—"] * 4
        print(f"| {title} | {n} | {cells[0]} | {cells[1]} | {' | '.join(rcells)} |")
    print(f"\nbaseline: {base.describe()}\ncandidate: {cand.describe()}")
    print(f"load average (1 min) at start / end: {load_at_start:.1f} / {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs; with few rounds on a busy machine, A/A runs vary by ±30 %")
    print(f"gate: every p50 ratio ≤ {max_ratio:.2f}: {'PASS' if ok else 'FAIL'}")
    return ok


async def run(args: argparse.Namespace) -> int:
    trees: list[Tree] = []
    load_at_start = os.getloadavg()[0]
    try:
        trees += [new_tree("baseline", args.baseline), new_tree("candidate", args.candidate)]
        # Both start at once (initdb and migrations take a while on a busy machine); startup is not measured.
        started = await asyncio.gather(*(asyncio.to_thread(start, tree) for tree in trees), return_exceptions=True)
        for tree, result in zip(trees, started, strict=True):
            if isinstance(result, BaseException):  # a candidate that cannot even start is a result to report
                tree.error = f"could not start: {result}"
                print(f"{tree.label}: {tree.error}", file=sys.stderr)
        async with contextlib.AsyncExitStack() as stack:
            for tree in trees:
                if tree.error is None:
                    try:
                        await connect(tree, stack)
                        await one_round(tree, 0, record=False)
                    except Exception as e:
                        tree.error = f"setup/warm-up failed: {e!r}"
                        traceback.print_exc()
                        print(f"{tree.label} server log (tail):\n{tree.server.log()}", file=sys.stderr)
            for r in range(args.rounds):
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    if tree.error is not None:
                        continue
                    try:
                        await one_round(tree, r, record=True)
                    except Exception as e:
                        tree.error = f"round {r} failed: {e!r}"
                        traceback.print_exc()
                        print(f"{tree.label} server log (tail):\n{tree.server.log()}", file=sys.stderr)
        ok = report(trees[0], trees[1], args.max_ratio, load_at_start)
        broken = [t for t in trees if t.error]
        for t in broken:
            print(f"**{t.label} could not be measured**: {t.error}")
        if broken:
            return 2
        return 0 if ok or args.no_fail else 1
    finally:
        for tree in trees:
            if tree.server.proc is not None:
                try:
                    tree.server.stop()
                except subprocess.TimeoutExpired:
                    print(f"{tree.label}: server needed SIGKILL", file=sys.stderr)
            remove_tenant_users(tree.server.data_dir)
            shutil.rmtree(tree.server.data_dir.parent, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, default=DEFAULT_BASELINE,
                   help=f"tree before the change (default {DEFAULT_BASELINE}, created from {BASELINE_COMMIT} "
                        "as a detached worktree if missing)")
    p.add_argument("--baseline-commit", default=BASELINE_COMMIT,
                   help="commit for the baseline worktree when --baseline does not exist yet")
    p.add_argument("--candidate", type=Path, default=REPO, help=f"tree after the change (default {REPO})")
    p.add_argument("--rounds", type=int, default=30,
                   help="measured rounds per tree (default 30: about 7 min on 2 idle cores, both trees)")
    p.add_argument("--max-ratio", type=float, default=1.20, help="allowed candidate/baseline p50 (default 1.20)")
    p.add_argument("--no-fail", action="store_true", help="report only; exit 0 even if a ratio is over")
    args = p.parse_args()
    if args.rounds < 1:
        p.error("--rounds must be at least 1 (pass e.g. --rounds 15)")
    if os.geteuid() != 0:
        p.error("run as root: the isolation being costed (tenant users, cgroups) exists only in root mode")
    args.baseline = ensure_tree(args.baseline, args.baseline_commit)
    args.candidate = ensure_tree(args.candidate, None)
    t0 = time.monotonic()
    code = asyncio.run(run(args))
    print(f"\n{args.rounds} rounds per tree in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
