"""Issue 9's corpus, every app (offered or not): one deploy_app call each on a real `inkmcp serve`, then an
unchanged redeploy (same arguments: the no-op / cache path), and a table.

Columns: app, stack, result (live, or failed + cause category + the tool's error and next_step), first deploy
time (deploy_app until a terminal status), unchanged redeploy time (and whether InkMCP answered with the same
deployment, `reused`), and at the end the one-call success rate over the apps whose needs InkMCP offers (issue 9's
bar: >= 90 %). The apps and what each must serve are in tests/corpus/apps.toml; their code is in local git
bundles (tests/corpus/bundles or $INKMCP_CORPUS_BUNDLES), not in the repository.

    .venv/bin/python benchmarks/corpus.py [--only NAME ...] [--offered-only] [--json FILE|-] [--jobs N]

--jobs runs N apps at once on the one server (default 1: times then measure one deploy, not the machine's
contention). An app that does not go live and has a `retry` in apps.toml (the one more call its error leads an
agent to) is deployed once more with those arguments: the table's last column says whether that worked.
Exit status 0 when the success rate over offered apps is >= 90 %, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.corpus.corpus import App, Outcome, clone_app, delete_project, describe, load_apps, run_app
from tests.support import dispose_server, make_server, mcp_session, product_window, traversable_tmpdir

TARGET_RATE = 0.90


async def run_all(apps: list[App], jobs: int) -> list[Outcome]:
    srv = make_server("inkmcp-corpus-bench-", **product_window())  # as operators run it: the 3 s window
    srv.create_key("corpus")
    srv.start()
    repos = traversable_tmpdir("inkmcp-corpus-bench-repos-")
    sem = asyncio.Semaphore(jobs)
    try:
        async def one(app: App) -> Outcome:
            async with sem:
                try:
                    repo = clone_app(app, repos)
                except (FileNotFoundError, AssertionError) as e:
                    return Outcome(app.name, status="no bundle", cause="corpus", error=str(e))
                started = time.monotonic()
                async with mcp_session(srv, srv.keys["corpus"]) as s:
                    try:
                        out = await run_app(srv, s, app, repo, redeploy=True, retry=True)
                    finally:
                        await delete_project(s, app.name)  # named after the clone's directory
                print(f"[{time.monotonic() - started:6.1f}s] {describe(out)}", file=sys.stderr, flush=True)
                return out

        return list(await asyncio.gather(*(one(a) for a in apps)))
    finally:
        dispose_server(srv, clean_stop=False)
        shutil.rmtree(repos, ignore_errors=True)


def fmt_s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def result_text(out: Outcome) -> str:
    if out.ok:
        return "live"
    return f"{out.status} ({out.cause})"


def table(apps: list[App], outs: list[Outcome]) -> str:
    rows = [("app", "offered", "stack", "result", "deploy s", "redeploy s", "reused", "one more call")]
    for app, out in zip(apps, outs, strict=True):
        rows.append((app.name, "yes" if app.offered else "no", app.stack[:48], result_text(out),
                     fmt_s(out.deploy_s), fmt_s(out.redeploy_s),
                     "-" if out.redeploy_reused is None else str(out.redeploy_reused).lower(),
                     "-" if out.retry is None else f"{result_text(out.retry)} {fmt_s(out.retry.deploy_s)} s"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summary(apps: list[App], outs: list[Outcome]) -> dict[str, Any]:
    offered = [(a, o) for a, o in zip(apps, outs, strict=True) if a.offered]
    live = [a.name for a, o in offered if o.ok]
    rate = len(live) / len(offered) if offered else 0.0
    return {
        "offered": len(offered), "live": len(live), "success_rate": round(rate, 3), "target": TARGET_RATE,
        "met": rate >= TARGET_RATE,
        "failed": {a.name: {"cause": o.cause, "status": o.status, "error": o.error, "next_step": o.next_step,
                            "one_more_call": None if o.retry is None else {"args": a.retry, "ok": o.retry.ok,
                                                                            "result": result_text(o.retry)}}
                   for a, o in offered if not o.ok},
        "live_after_one_more_call": [a.name for a, o in offered if not o.ok and o.retry is not None and o.retry.ok],
        "not_offered": {a.name: {"why": a.why, "result": result_text(o), "error": o.error,
                                 "next_step": o.next_step} for a, o in zip(apps, outs, strict=True) if not a.offered},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="*", default=None, help="app names from tests/corpus/apps.toml")
    p.add_argument("--offered-only", action="store_true", help="skip the apps InkMCP does not offer")
    p.add_argument("--json", default=None, help="write the results as JSON to this file ('-': stdout)")
    p.add_argument("--jobs", type=int, default=1, help="apps deployed at once (default 1)")
    a = p.parse_args()
    apps = load_apps()
    if a.only:
        unknown = set(a.only) - {x.name for x in apps}
        if unknown:
            p.error(f"--only: no app named {sorted(unknown)}; names are in tests/corpus/apps.toml")
        apps = [x for x in apps if x.name in a.only]
    if a.offered_only:
        apps = [x for x in apps if x.offered]
    started = time.monotonic()
    outs = asyncio.run(run_all(apps, max(1, a.jobs)))
    wall = time.monotonic() - started
    s = summary(apps, outs)
    s["wall_s"] = round(wall, 1)
    if a.json != "-":
        print(table(apps, outs))
        print()
        print(f"one-call success rate over offered apps: {s['live']}/{s['offered']} = {s['success_rate']:.0%} "
              f"(target {TARGET_RATE:.0%}: {'met' if s['met'] else 'NOT met'}); wall {wall:.0f} s")
        for out in outs:
            if not out.ok:
                print("\n" + describe(out))
    if a.json:
        def record(app: App, o: Outcome) -> dict[str, Any]:
            d = {**dataclasses.asdict(o), "offered": app.offered, "stack": app.stack, "upstream": app.upstream,
                 "commit": app.commit, "ok": o.ok}
            if o.retry is not None:
                d["retry"] = {**d["retry"], "ok": o.retry.ok, "args": app.retry}
            return d

        doc = {"summary": s, "apps": [record(app, o) for app, o in zip(apps, outs, strict=True)]}
        text = json.dumps(doc, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text)
    return 0 if s["met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
