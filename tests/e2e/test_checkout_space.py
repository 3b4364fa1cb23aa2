"""One account's burst of deploy_app calls cannot pile checkouts onto the host's disk.

Each call writes its commit's files into the server's `work/checkouts` before it learns whether it may build (the
account's concurrent-builds limit is decided after). Before core/checkout_slots.py, 8 simultaneous calls put 8
copies there at once, outside every project's disk limit; now an account has at most 2 undecided checkouts, plus
those of its builds (at most INKMCP_MAX_CONCURRENT_BUILDS_PER_ACCOUNT, 2).
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from tests.e2e import apps
from tests.e2e.conftest import local_only
from tests.support import ServerProc, ToolFailed, call, git_repo, mcp_session

pytestmark = pytest.mark.asyncio

MIB = 1 << 20
BIG = 16 * MIB
CALLS = 12


def _bytes_under(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass  # removed meanwhile
    return total


class _PeakWatch:
    """Samples the bytes under a directory every few ms in a thread, keeping the largest sum seen."""

    def __init__(self, root: Path) -> None:
        self.root, self.peak, self._stop = root, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _bytes_under(self.root))
            self._stop.wait(0.003)

    def __enter__(self) -> _PeakWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@local_only("reads the server's own work/checkouts directory")
async def test_a_burst_of_deploys_holds_few_checkouts_at_once(server: ServerProc, repos: Path) -> None:
    files = {**apps.STATIC_SITE, "big.txt": os.urandom(BIG // 2).hex()}
    repo = git_repo(repos / "burst", files)
    checkouts = server.data_dir / "work" / "checkouts"
    assert checkouts.is_dir(), checkouts
    async with mcp_session(server, server.keys["alice"]) as s:

        async def deploy(i: int) -> dict | None:
            try:
                return await call(s, "deploy_app", repo_url=str(repo), project_name=f"burst{i % 2}",
                                  service_name=f"web{i}", service_type="webapp_static")
            except ToolFailed as e:  # the account's builds limit: the call was decided, its checkout dropped
                assert "at once" in str(e) or "concurrent" in str(e).lower(), e
                return None

        with _PeakWatch(checkouts) as watch:
            deps = await asyncio.gather(*[deploy(i) for i in range(CALLS)])
        outcomes = [d["status"] if d else "refused" for d in deps]
        assert outcomes.count("refused") < CALLS, outcomes  # some got through: the burst really ran
        assert watch.peak >= BIG, f"never saw a checkout ({watch.peak} bytes): the watch missed the burst"
        assert watch.peak <= 4 * BIG + 2 * MIB, (
            f"{watch.peak / MIB:.0f} MiB of checkouts at once from one account ({CALLS} calls of {BIG // MIB} MiB; "
            f"at most 2 undecided + 2 building expected); outcomes {outcomes}")
        for dep in deps:  # leave nothing building for the next test of this shared server
            while dep is not None and not dep["done"]:
                dep = await call(s, "wait_for_deployment", deployment_id=dep["deployment_id"])
