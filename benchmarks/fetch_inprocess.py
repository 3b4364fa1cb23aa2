"""A new mirror's first fetch over https, `git fetch` against InkMCP's in-process path (issue 8): a same-run A/B.

Why: over https, InkMCP's first fetch of a repository was ~35 ms of its ~65 ms overhead per deploy_app. Most of it
was the client's start-up, paid again at every fetch: `git fetch` and its `git-remote-https` child start,
libcurl/GnuTLS parse the CA bundle, a full TLS handshake, the discovery GET before the protocol's two POSTs
(inkmcp/build/http_fetch.py's docstring). Interleaved on the same git host (the GitHub stand-in's smart HTTP over
TLS in its own process, `git_standin_process.py`), each through InkMCP's own `source._fetch` into a new mirror:

  A   `git fetch` (source.IN_PROCESS_FETCH off: what every first fetch did before, and a redeploy's fetch does)
  B   the in-process path as InkMCP runs it: the TLS context and the connection to the host kept between fetches
  B0  the in-process path cold: the kept clients closed and the CA bundle parsed again before each fetch (what
      a process's first fetch of a host pays)

The first round's three mirrors are checked to hold the same refs. The git host's own time is in every row.

    .venv/bin/python benchmarks/fetch_inprocess.py --fetches 30
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.git_standin_process import GitStandinProcess
from inkmcp.build import http_fetch
from inkmcp.build import source as smod

APP = {"app.py": "print('hello')\n" * 40, "Procfile": "web: python app.py\n", "requirements.txt": "flask\n"}
POLICY = smod.SourcePolicy(allow_local=True)  # the stand-in listens on 127.0.0.1


async def fetch(url: str, mirror: Path, ws: smod.SourceWorkspace, kind: str) -> None:
    """InkMCP's `_fetch` into a new mirror: A with the in-process path off, B on, B0 on but cold."""
    smod.IN_PROCESS_FETCH = kind != "A"
    if kind == "B0":
        await http_fetch.close_clients()
        http_fetch._CONTEXT = None
    deadline = smod._Deadline(60)
    source = await smod._classify(url, ws, POLICY, deadline, None)
    await smod._ensure_mirror(mirror, source, ws, deadline)
    await smod._fetch(mirror, source, ws, deadline)


async def refs_of(mirror: Path, ws: smod.SourceWorkspace) -> dict[str, str]:
    source = smod._Source(fetch_url="", display="", local=False)
    rc, out, err = await smod._git(["for-each-ref", "--format=%(objectname) %(refname)"], source, ws,
                                   smod._Deadline(30), git_dir=mirror)
    assert rc == 0, err
    refs = dict(reversed(line.split(" ", 1)) for line in out.splitlines())
    rc, _, err = await smod._git(["cat-file", "-e", f"{refs['refs/heads/main']}^{{tree}}"], source, ws,
                                 smod._Deadline(30), git_dir=mirror)
    assert rc == 0, err
    return refs


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


async def main(fetches: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="inkmcp-bench-fetch-"))
    host = GitStandinProcess(work / "host")
    saved = smod.CA_BUNDLE
    smod.CA_BUNDLE = str(host.bundle)  # InkMCP's git trusts the stand-in's certificate beside the system's CAs
    try:
        ws = smod.SourceWorkspace(mirrors_dir=work / "mirrors", locks_dir=work / "locks", run_as=None)
        ws.mirrors_dir.mkdir()
        ws.locks_dir.mkdir()
        url = host.repo(APP)
        times: dict[str, list[float]] = {"A": [], "B": [], "B0": []}
        for i in range(fetches + 1):  # the first round warms every path (imports, the kept connection)
            for kind in ("A", "B", "B0") if i % 2 else ("B0", "B", "A"):
                t = time.perf_counter()
                await fetch(url, ws.mirrors_dir / f"{kind}-{i}", ws, kind)
                if i:
                    times[kind].append((time.perf_counter() - t) * 1000)
            if i == 0:
                a, b, b0 = [await refs_of(ws.mirrors_dir / f"{k}-0", ws) for k in ("A", "B", "B0")]
                assert a == b == b0, (a, b, b0)
            for kind in times:
                shutil.rmtree(ws.mirrors_dir / f"{kind}-{i}", ignore_errors=True)
        await http_fetch.close_clients()
        print(f"\nA new mirror's first fetch over https from the git stand-in (its own time included in every row), "
              f"{fetches} of each, interleaved; load average at the end {os.getloadavg()[0]:.2f}\n")
        print("| fetch | p50 ms | p90 ms | mean ms | p50 saved vs A |\n| --- | ---: | ---: | ---: | ---: |")
        for kind, name in (("A", "A: git fetch (before)"), ("B", "B: in process (InkMCP now), kept connection"),
                           ("B0", "B0: in process, the CA bundle parsed and a new connection each time")):
            v = times[kind]
            saved_ms = statistics.median(times["A"]) - statistics.median(v)
            print(f"| {name} | {statistics.median(v):.1f} | {pct(v, 90):.1f} | {statistics.fmean(v):.1f} | "
                  f"{saved_ms:+.1f} |")
        git_host = [r["seconds"] * 1000 for r in host.since(0)]
        print(f"\nthe git host's own time per request: p50 {statistics.median(git_host):.1f} ms "
              f"({len(git_host)} requests; A makes 3 per fetch, B and B0 2)")
    finally:
        smod.CA_BUNDLE = saved
        smod.IN_PROCESS_FETCH = True
        host.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fetches", type=int, default=30)
    asyncio.run(main(parser.parse_args().fetches))
