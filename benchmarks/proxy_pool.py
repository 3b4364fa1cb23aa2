"""Issue 12 item 1 judged over the rounds of several `proxy_speed.py` runs at once (their logs).

Why: a run judges a scenario only when its A/A pair (nginx-again ÷ nginx) agrees within 3 % and the median of that
pair is itself known to 3 % (`proxy_speed.aa_noisy`). On a 2-core VM with steal, 18 or 36 rounds often leave a row
"noisy, not judged" though none of its medians falls below nginx's. The rounds of runs made with the same command on
the same host are samples of the same thing: pooled, the medians' errors shrink with the square root of the number
of rounds, and the row can be judged by the same rules. Each round's ratios stay within their round (targets run
back to back there), so pooling never compares two loads. Only round lines (`round N <conns> <mode> <target> ...`)
are read; a round whose three targets are not all in the log is dropped.

    .venv/bin/python benchmarks/proxy_pool.py run1.log run2.log
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.proxy_speed import AA_NOISE, aa_noisy, both_baselines, both_report, median_error, round_ratios

ROUND = re.compile(r"^round (\d+)\s+(\d+) (keep-alive|new connection|websocket)\s+(\S+)\s+(\d+) req/s\s+p50 ([\d.]+) ms"
                   r"\s+p99 ([\d.]+) ms\s+nginx CPU ([\d.]+) µs/request\s+errors (\d+)")
TARGETS = ("nginx", "nginx-again", "inkmcp")


def read_rounds(paths: list[Path]) -> tuple[dict[str, dict[str, list[dict[str, float]]]], int]:
    """scenario -> target -> one measurement per pooled round (the same round index in every target's list)."""
    rounds: dict[tuple[int, int, str], dict[str, dict[str, float]]] = {}
    errors = 0
    for i, path in enumerate(paths):
        for line in path.read_text().splitlines():
            m = ROUND.match(line)
            if not m:
                continue
            rnd, conns, mode, target = int(m[1]), int(m[2]), m[3], m[4]
            rounds.setdefault((i, rnd, f"{conns} {mode}"), {})[target] = {
                "rps": float(m[5]), "p50": float(m[6]), "p99": float(m[7]), "cpu": float(m[8])}
            errors += int(m[9])
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for (_, _, scenario), by_target in sorted(rounds.items()):
        if all(t in by_target for t in TARGETS):
            for t in TARGETS:
                results.setdefault(scenario, {}).setdefault(t, []).append(by_target[t])
    return results, errors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", type=Path, help="proxy_speed.py logs (its stderr) of the same command")
    args = parser.parse_args()
    results, errors = read_rounds(args.logs)
    if not results:
        print("no complete round in these logs", file=sys.stderr)
        return 2
    rounds = round_ratios(results)
    print(f"{len(args.logs)} runs pooled; rounds per scenario: "
          + ", ".join(f"{s} {len(r['nginx'])}" for s, r in results.items()) + f"; errors in all rounds: {errors}")
    print(both_report(rounds))
    both = both_baselines(rounds)
    print("\n| scenario | A/A req/s | A/A error | judged | inkmcp req/s ÷ both | p50 ÷ both | verdict |")
    print("|---|---:|---:|---|---:|---:|---|")
    missed = 0
    for scenario, by_target in rounds.items():
        aa = by_target["nginx-again"]
        noisy = aa_noisy({"rps": statistics.median(aa["rps"])}, aa)
        ink = both[scenario]["inkmcp"]
        rps, p50 = statistics.median(ink["rps"]), statistics.median(ink["p50"])
        ok = rps >= 1 - AA_NOISE and p50 <= 1.2
        missed += not ok and not noisy
        verdict = "noisy, not judged" if noisy else ("met" if ok else "MISSED")
        print(f"| {scenario} | {statistics.median(aa['rps']):.2f} | {median_error(aa['rps']):.3f} | "
              f"{'no' if noisy else 'yes'} | {rps:.2f} ± {median_error(ink['rps']):.3f} | {p50:.2f} | {verdict} |")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
