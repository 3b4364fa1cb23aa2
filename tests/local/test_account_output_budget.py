"""Output pacing per account: one account's many flooding services are paced together, another's logs are not.

Each process's output is paced on its own (logs.OutputBudget, 2,000 lines/s); an account with 200 services
could still make InkMCP write ~400,000 lines/s. Every process's budget now draws on its account's budget too.
Real provider, real tenant processes (`yes`), real pipes and log files; only the account's rates are lowered
(INKMCP_ACCOUNT_OUTPUT_*, as an operator sets them) so the test's floods stay cheap.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from inkmcp.build.plan import BuildPlan, ProcessSpec, ServiceType, Stack
from inkmcp.providers.compute.local import logs
from inkmcp.providers.compute.local.layout import ServiceLayout
from inkmcp.providers.compute.local.logs import OutputBudget
from inkmcp.settings import AccountOutputSettings
from tests.local.conftest import PY, Events, key_for, no_record, request_for

ACCOUNT_RATE = 1000.0  # lines/s for the whole account in this test; each process alone may write 2,000/s

TICKER = "import time\nwhile True:\n    print('tick', time.monotonic(), flush=True)\n    time.sleep(0.1)\n"


def _plan(name: str, command: str) -> BuildPlan:
    return BuildPlan(stack=Stack.none, source="call",
                     processes=(ProcessSpec(name=name, command=command, routed=False),))  # fmt: skip


def _count(path: Path, prefix: str) -> int:
    try:
        return sum(1 for line in path.read_text(errors="replace").splitlines() if line.startswith(prefix))
    except FileNotFoundError:
        return 0


@pytest.mark.asyncio
async def test_one_accounts_floods_are_paced_together_and_another_accounts_logs_stay_prompt(
        make_provider, checkouts, project_ids, data_dir, monkeypatch):
    """mallory's two services each run `yes`: together they get the account's rate (each alone would get
    2,000 lines/s, 4,000 together). alice's worker, another account, prints a monotonic stamp every 0.1 s:
    each line reaches her log within a fraction of a second throughout the flood."""
    # the operator's settings, applied as app.py applies them (the test's own rates are restored afterwards)
    monkeypatch.setenv("INKMCP_ACCOUNT_OUTPUT_LINES_PER_SECOND", str(ACCOUNT_RATE))
    monkeypatch.setenv("INKMCP_ACCOUNT_OUTPUT_BURST_LINES", str(ACCOUNT_RATE))
    monkeypatch.setattr(logs, "_account_rates", logs.account_rates())
    logs.configure_account_rates(AccountOutputSettings().rates())
    provider = await make_provider()
    mallory = [key_for(project_ids(), service=f"flood{i}").model_copy(update={"account_id": "mallory"})
               for i in range(2)]
    alice = key_for(project_ids(), service="ticker").model_copy(update={"account_id": "alice"})
    await provider.release(request_for(alice, checkouts({"t.py": TICKER}), _plan("ticker", f"exec {PY} t.py"),
                                       service_type=ServiceType.backend), Events(), no_record)
    for key in mallory:
        await provider.release(request_for(key, checkouts({"x": ""}), _plan("flood", "exec yes y"),
                                           service_type=ServiceType.backend), Events(), no_record)
    flood_logs = [ServiceLayout(data_dir, key.service_id).runtime_log for key in mallory]
    alice_log = ServiceLayout(data_dir, alice.service_id).runtime_log

    await asyncio.sleep(1.5)  # past the account's burst: the pacing is what is measured
    counts0, t0 = [_count(p, "flood | y") for p in flood_logs], time.monotonic()
    seen = _count(alice_log, "ticker | tick")
    delays: list[float] = []
    while time.monotonic() - t0 < 4:
        await asyncio.sleep(0.05)
        lines = [line for line in alice_log.read_text().splitlines() if line.startswith("ticker | tick")]
        now = time.monotonic()
        delays += [now - float(line.split()[-1]) for line in lines[seen:]]
        seen = len(lines)
    counts1, t1 = [_count(p, "flood | y") for p in flood_logs], time.monotonic()

    rates = [(b - a) / (t1 - t0) for a, b in zip(counts0, counts1, strict=True)]
    print(f"mallory's flooders: {rates} lines/s; alice's line delays: max {max(delays, default=0):.3f}s")
    assert all(r > ACCOUNT_RATE / 10 for r in rates), f"a flooder was starved, not paced: {rates}"
    assert sum(rates) < ACCOUNT_RATE * 1.3, f"mallory's services together wrote {sum(rates):.0f} lines/s: {rates}"
    assert len(delays) >= 30, delays  # ~40 ticks in 4 s
    assert max(delays) < 0.4, f"alice's lines were held back during mallory's flood: {sorted(delays)[-5:]}"
    notes = [line for p in flood_logs for line in p.read_text().splitlines() if "[inkmcp] output over" in line]
    # the note names the account's configured rate, not the default 8000
    assert notes and all(f"all of this account's processes and builds together over {ACCOUNT_RATE:g} lines/s" in line
                         for line in notes), notes  # fmt: skip


def test_children_share_their_parents_rate_and_other_parents_are_untouched() -> None:
    """The bucket arithmetic on a fake clock: two children of one parent draining 1,000 lines a second
    each are told to wait so that together they get the parent's 500/s; a child of another parent, asking
    for 10 lines, waits for nothing."""
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    parent, other = (OutputBudget(lines_per_second=500, burst_lines=500, clock=clock) for _ in range(2))
    kids = [OutputBudget(lines_per_second=1000, burst_lines=1000, clock=clock, parent=parent) for _ in range(2)]
    stranger = OutputBudget(lines_per_second=1000, burst_lines=1000, clock=clock, parent=other)
    written, ready = 0, [0.0, 0.0]
    while now[0] < 20:
        i = min(range(2), key=ready.__getitem__)  # the child whose wait ends first reads next
        now[0] = max(now[0], ready[i])
        ready[i] = now[0] + kids[i].take(100, 100)
        written += 100
    assert 500 * 20 <= written <= 500 * 20 + 500 + 200, written  # the rate, plus the burst and one read each
    assert stranger.take(10, 10) == 0.0
