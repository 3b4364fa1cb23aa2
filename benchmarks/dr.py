"""The production DR drill's measured steps on a realistic amount of control-plane data (runbooks/dr/factory-lost.md).

Runs tests/dr/test_postgres_drill.py (the factory's backup script unchanged -> Storage Box stand-in on port 23 in a
network namespace -> restore into a fresh server -> identical pg_dump) with the audit table grown to
`--rows` rows, and prints the drill's own timings: `backup` (the nightly script: pg_dump -Fc + rsync to the box),
`restore-from-snapshot` (a fresh `inkmcp dr` process: find the dump in a box snapshot through the Hetzner API,
copy, pg_restore in one transaction), `restore-latest` (live directory), and the dump's size.

    sudo .venv/bin/python benchmarks/dr.py                # 500k rows (2.2 MB dump), ~75 s on 2 cores
    sudo .venv/bin/python benchmarks/dr.py --rows 1000000 # ~2 min

The stand-in link is a veth pair (no WAN latency or bandwidth limit): add the copy time for the real box from its
size and your measured rsync throughput to the Storage Box (it is in the same data centre as the factory).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=500_000, help="audit rows in the drill's database")
    args = ap.parse_args()
    if args.rows < 1:
        ap.error("--rows: pass a positive row count, e.g. 1000000")
    env = {**os.environ, "INKMCP_DR_BENCH_AUDIT_ROWS": str(args.rows)}
    t0 = time.monotonic()
    r = subprocess.run([str(REPO / ".venv/bin/pytest"), "-q", "-s", "-p", "no:cacheprovider",
                        "tests/dr/test_postgres_drill.py", "-k", "installs or snapshot or latest"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    wall = time.monotonic() - t0
    m = re.search(r"DR drill timings \(s\): (.*)", r.stdout)
    if r.returncode != 0 or m is None:
        sys.exit(f"the drill failed (exit {r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    print(f"| audit rows | {args.rows} |\n|---|---|")
    for part in m[1].split("; "):
        for item in part.split(", "):
            key, _, value = item.replace("dump ", "dump=").partition("=")
            print(f"| {key.strip()} | {value.strip()} |")
    print(f"| whole drill (setup included) | {wall:.1f} s |")


if __name__ == "__main__":
    main()
