"""A slow-starting app's health check reports progress (newuser2's finding).

An app that took 40 s to answer sent the agent nothing between "waiting for port N to answer HTTP" and the
outcome: a slow start and a hung call looked the same. Now a "still waiting" line comes every
HEALTH_PROGRESS_EVERY seconds, saying how long against which limit and what is missing.
"""

from __future__ import annotations

import pytest

from inkmcp.providers.compute.base import Step
from inkmcp.providers.compute.local import provider as provider_module
from tests.local.conftest import WEB_APP, key_for, no_record, request_for, web_plan


class Details:
    def __init__(self) -> None:
        self.seen: list[tuple[Step, str]] = []

    async def __call__(self, step: Step, detail: str) -> None:
        self.seen.append((step, detail))

    def waiting(self) -> list[str]:
        return [detail for step, detail in self.seen if detail.startswith("still waiting")]


async def test_a_slow_start_reports_progress_and_a_fast_one_does_not(
    make_provider, checkouts, project_ids, monkeypatch: pytest.MonkeyPatch
):
    shipped = provider_module.HEALTH_PROGRESS_EVERY
    monkeypatch.setattr(provider_module, "HEALTH_PROGRESS_EVERY", 0.4)
    provider = await make_provider(health_timeout=30.0)
    key = key_for(project_ids())
    slow = Details()
    await provider.release(request_for(key, checkouts({"app.py": WEB_APP}), web_plan(), env={"START_DELAY": "2.5"}),
                           slow, no_record)  # fmt: skip
    lines = slow.waiting()
    assert len(lines) >= 3, slow.seen
    assert all(step == Step.health_check for step, detail in slow.seen if detail in lines)
    assert "of the 30s health timeout (INKMCP_HEALTH_TIMEOUT): port " in lines[0]
    assert "does not answer yet; get_logs(scope='runtime') shows the app's output so far" in lines[0]
    seconds = [float(line.split("after ")[1].split("s ")[0]) for line in lines]
    assert seconds == sorted(seconds) and seconds[-1] >= 1.0
    # the heartbeat stops with the check: nothing after the switch
    steps = [step for step, _ in slow.seen]
    assert steps.index(Step.switching) > max(i for i, (_, d) in enumerate(slow.seen) if d in lines)

    # a fast start gets none at the shipped period: at 0.4 s, a start that took over 0.4 s at load 8-9 got one
    monkeypatch.setattr(provider_module, "HEALTH_PROGRESS_EVERY", shipped)
    fast = Details()
    quick = request_for(key_for(project_ids(), project="quick"), checkouts({"app.py": WEB_APP}), web_plan())
    await provider.release(quick, fast, no_record)
    assert fast.waiting() == []
