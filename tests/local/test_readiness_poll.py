"""The listening check of a starting app (`ReleaseRun._wait_listening`) polls the kernel with a pause that grows
with the wait: it notices the app's listen() at most ~2 % (+1 ms) late, and a long start costs a few hundred
loop turns, not one per millisecond (each turn of a 1 ms timer costs ~110 us of CPU on this VM; the old
schedule spent ~10 % of a core during the first second of every start, next to the app starting).

A real process listens after a chosen delay and prints the monotonic time of its listen(); the check is run
as a wake runs it (`wait_healthy`) with the probe's lookups counted.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from inkmcp.build.plan import BuildPlan, ProcessSpec, ServiceType, Stack
from inkmcp.providers.compute.local.ports import PortAllocator
from inkmcp.providers.compute.local.readiness import ListenProbe
from inkmcp.providers.compute.local.release import ReleaseMeta, ReleaseRun, listen_poll_pause
from inkmcp.providers.compute.local.supervisor import Backoff
from tests.local.conftest import PY
from tests.requirements import require

APP = """
import os, socket, sys, time
time.sleep(float(sys.argv[1]))
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen()
print("listening at", time.monotonic(), flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("delay", [0.05, 0.4, 1.5])
async def test_a_listen_is_noticed_within_2_percent_and_a_long_start_costs_few_polls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, delay: float
) -> None:
    (tmp_path / "app.py").write_text(APP)
    web = ProcessSpec(name="web", command=f"exec {PY} app.py {delay}", routed=True)
    plan = BuildPlan(stack=Stack.none, source="call", processes=(web,))
    meta = ReleaseMeta(deployment_id=uuid.uuid4().hex[:12], service_type=ServiceType.webapp, plan=plan)
    lines: list[str] = []
    port = PortAllocator((20000, 30000)).allocate()
    run = ReleaseRun(meta, app_dir=tmp_path, service_env={}, run_as=None, home=str(tmp_path), port=port,
                     sink=lines.append, run_dir=tmp_path, tenant_python=PY, backoff=Backoff())  # fmt: skip
    require("netns", ListenProbe.open() is not None, "the kernel refuses NETLINK_SOCK_DIAG here")
    lookups = 0
    real_ready = ListenProbe.ready

    def counted(self: ListenProbe, port: int, uid: int | None) -> tuple[bool, bool]:
        nonlocal lookups
        lookups += 1
        return real_ready(self, port, uid)

    monkeypatch.setattr(ListenProbe, "ready", counted)
    loop = asyncio.get_running_loop()
    await run.start()
    try:
        started = loop.time()
        await run.wait_healthy(10.0)
        noticed = loop.time()
        await asyncio.sleep(0.05)  # the listen line reaches the sink
        listened = next(float(line.split("listening at ")[1]) for line in lines if "listening at" in line)
    finally:
        await run.stop(2.0)
    late = noticed - listened
    up_to = listened - started
    assert late <= up_to * 0.02 + 0.015, (late, up_to)  # the pause + one loop turn on a busy box
    assert lookups <= turns_until(up_to) + 10, (lookups, turns_until(up_to), up_to)
    if delay >= 1.0:
        assert lookups < up_to * 1000 / 4, lookups  # the old schedule: one lookup per ~1.2 ms for the first second


def turns_until(seconds: float) -> int:
    """Lookups the schedule makes while an app takes `seconds` to listen (loop overhead ignored)."""
    waited, turns = 0.0, 1
    while waited < seconds:
        waited += listen_poll_pause(waited)
        turns += 1
    return turns


def test_the_pause_grows_with_the_wait_and_is_bounded() -> None:
    assert listen_poll_pause(0.0) == listen_poll_pause(0.05) == 0.001
    assert listen_poll_pause(0.5) == pytest.approx(0.01)
    assert listen_poll_pause(5.0) == listen_poll_pause(60.0) == 0.02
    assert turns_until(1.0) < 220  # was ~1,000 in the first second
    assert turns_until(0.06) > 50  # a small app's wake (~60 ms) is still checked every millisecond
