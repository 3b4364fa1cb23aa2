"""Redeploy timing on the local provider (not a test; run it by hand, under the shared benchmark lock):
seconds from "switching" to "live" and release() in all, over N redeploys of an app that stops like gunicorn
(SIGTERM, then 0.3 s of graceful work). Compare two revisions in one sitting by exporting the older one:

    mkdir /tmp/before && git archive <rev> inkmcp | tar -x -C /tmp/before
    flock /tmp/inkmcp-bench.lock sh -c 'BENCH_INKMCP=/tmp/before .venv/bin/python benchmarks/redeploy_speed.py 8; \
        .venv/bin/python benchmarks/redeploy_speed.py 8'

(the benchmark's own imports come from this checkout; `inkmcp` from $BENCH_INKMCP when set). As root: it creates
and deletes a tenant user.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo: tests' helpers
if os.environ.get("BENCH_INKMCP"):  # the revision to measure, ahead of this checkout's package
    sys.path.insert(0, os.environ["BENCH_INKMCP"])

import inkmcp
from inkmcp.providers.compute.base import Step
from inkmcp.providers.compute.local import LocalComputeProvider
from inkmcp.providers.compute.local.supervisor import Backoff
from inkmcp.providers.compute.local.users import project_user_name
from tests.local.conftest import get, key_for, no_record, request_for
from tests.local.test_redeploy_retire import GRACEFUL_APP, plan
from tests.support import traversable_tmpdir


async def main(n: int) -> None:
    print("code:", inkmcp.__file__)
    data, checkouts = traversable_tmpdir("bench-redeploy-"), traversable_tmpdir("bench-redeploy-co-")
    project = uuid.uuid4().hex
    provider = LocalComputeProvider(data, proxy_port=0, health_timeout=10, stop_grace=2.0, stability_window=0.3,
                                    backoff=Backoff(initial=0.2, maximum=2.0, reset_after=60.0))
    await provider.start()
    key = key_for(project)
    switch_to_live, total = [], []
    try:
        for i in range(n + 1):
            checkout = checkouts / uuid.uuid4().hex
            checkout.mkdir()
            (checkout / "app.py").write_text(GRACEFUL_APP)
            at: dict[Step, float] = {}

            async def progress(step: Step, detail: str, at: dict[Step, float] = at) -> None:
                at[step] = time.monotonic()

            started = time.monotonic()
            request = request_for(key, checkout, plan(), env={"MESSAGE": f"v{i}", "STOP_DELAY": "0.3"})
            await provider.release(request, progress, no_record)
            ended = time.monotonic()
            assert (await get(provider, key)).text == f"v{i}\n"
            if i:  # the first is a first deploy
                switch_to_live.append(at[Step.live] - at[Step.switching])
                total.append(ended - started)
            await asyncio.sleep(0.6)  # the previous version's stop is over before the next redeploy
    finally:
        await provider.close()
        shutil.rmtree(data, True)
        shutil.rmtree(checkouts, True)
        subprocess.run(["/usr/sbin/userdel", project_user_name(project)], check=False, capture_output=True)  # noqa: ASYNC221 (cleanup once, after the timing)
    print(f"switching -> live p50 {statistics.median(switch_to_live) * 1000:.0f} ms "
          f"(all: {[round(x * 1000) for x in switch_to_live]})")
    print(f"release() in all  p50 {statistics.median(total) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8))
