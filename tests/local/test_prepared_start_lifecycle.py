"""A sleeping on_demand service keeps exactly one prepared start (issue 12 item 2's `inkmcp-spawn --wait-fd`),
whatever happens to the service while it sleeps: counted from /proc, among this server's own children.

What a prepared process holds is its confinement (rlimits, cgroups, private mounts, uid): the key it is
filed under. Its environment, directory and command travel at the wake, and the service's limits are the
cgroup's (they apply to a process already in it). So an env update or new limits keep the same process;
a confinement that changed ends it (by its pid) and prepares a new one; a redeploy or wake that failed
while the service slept leaves a fresh one (the failed start used the old one up). Removing the service
ends it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import psutil
from pydantic import SecretStr

from inkmcp.build.plan import Mode
from inkmcp.providers.compute.base import Resources
from inkmcp.providers.compute.local import spawn as spawn_mod
from tests.local.conftest import WEB_APP, Events, get, key_for, no_record, request_for, web_plan
from tests.requirements import requires

ROOT = requires("root", os.geteuid() == 0, "prepared starts exist only as root (confinement is enforced)")


def waiting(svc) -> list[int]:  # type: ignore[no-untyped-def]
    """Pids of this server's children waiting as a prepared start for `svc` (its private /tmp is in the key)."""
    found = []
    for child in psutil.Process().children():
        try:
            argv = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--wait-fd" in argv and str(svc.layout.tmp) in argv:
            found.append(child.pid)
    return sorted(found)


async def settled(svc, provider, count: int = 1) -> list[int]:  # type: ignore[no-untyped-def]
    """Wait until `svc` sleeps with `count` prepared starts known to spawn and present in /proc."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        pids = waiting(svc)
        known = spawn_mod.prepared_pid(provider._sandbox(svc))
        if svc.live.run is None and len(pids) == count and (count == 0 or known in pids):
            return pids
        assert asyncio.get_running_loop().time() < deadline, (pids, known, svc.live.run)
        await asyncio.sleep(0.02)


@ROOT
async def test_one_prepared_start_per_sleeping_service_through_env_limits_confinement_and_failed_starts(
    make_provider, checkouts, project_ids, data_dir
):
    provider = await make_provider(idle_timeout=0.3)  # the usual 5 s health timeout: its failures are exits
    key = key_for(project_ids())
    first = request_for(key, checkouts({"app.py": WEB_APP}), web_plan(), mode=Mode.on_demand, env={"MESSAGE": "v1"})
    await provider.release(first, Events(), no_record)
    svc = provider._services[key.service_id]
    [p1] = await settled(svc, provider)

    # env updated while asleep: the same process waits (the env travels at the wake) and the wake uses it
    await provider.update_env(key, {"MESSAGE": SecretStr("v2")}, "rev2", no_record)
    assert waiting(svc) == [p1]
    response = await get(provider, key)
    assert response.text == "v2\n" and int(response.headers["X-Pid"]) == p1
    [p2] = await settled(svc, provider)
    assert p2 != p1 and not psutil.pid_exists(p1)

    # limits changed (a redeploy whose build fails leaves the service asleep, with its new limits written):
    # the waiting process is in the service's cgroup already, so the new memory limit is its own at once
    missing_dir = web_plan().model_copy(update={"app_dir": "missing"})  # fails at building, after the limits
    broken = request_for(key, checkouts({"app.py": WEB_APP}), missing_dir, mode=Mode.on_demand,
                         env={"MESSAGE": "v2"}).model_copy(update={"resources": Resources(memory_mb=256)})
    failed = await _release_fails(provider, broken)
    assert "app_dir" in failed
    assert waiting(svc) == [p2]
    memory = _memory_limit(p2)
    assert memory == 256 * 2**20, memory

    # a redeploy while asleep whose new version never answers: the failed start used the prepared process
    # up; the old version sleeps on with a fresh one (not none: its next wake stays fast)
    dead = request_for(key, checkouts({"app.py": "import sys; sys.exit(3)\n"}), web_plan(), mode=Mode.on_demand)
    assert "exited" in await _release_fails(provider, dead)
    [p3] = await settled(svc, provider)
    assert p3 != p2 and not psutil.pid_exists(p2)
    assert (await get(provider, key)).text == "v2\n"
    [p4] = await settled(svc, provider)

    # the confinement changed (here the file-size cap; also a new uid or cgroup): the old process is ended
    # by its pid, a new one is prepared under the new key, and exactly one waits
    provider.max_file_bytes //= 2
    await provider.update_env(key, {"MESSAGE": SecretStr("v3")}, "rev3", no_record)
    [p5] = await settled(svc, provider)
    assert p5 != p4 and not psutil.pid_exists(p4)
    assert f"--fsize {provider.max_file_bytes}" in " ".join(psutil.Process(p5).cmdline())
    response = await get(provider, key)
    assert response.text == "v3\n" and int(response.headers["X-Pid"]) == p5
    [p6] = await settled(svc, provider)

    # a wake that fails (the app exits at start) used the waiting process up: a fresh one waits for the next
    await provider.update_env(key, {"START_DELAY": SecretStr("not a number")}, "rev4", no_record)
    assert (await get(provider, key)).status_code >= 500
    [p7] = await settled(svc, provider)
    assert p7 != p6 and not psutil.pid_exists(p6)

    await provider.remove(key)
    assert waiting(svc) == []


async def _release_fails(provider, request) -> str:  # type: ignore[no-untyped-def]
    from inkmcp.providers.compute.base import ReleaseFailed

    try:
        await provider.release(request, Events(), no_record)
    except ReleaseFailed as exc:
        return exc.reason
    raise AssertionError("the release went live")


def _memory_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return int(Path(f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes").read_text())
        if controllers == "":
            unified = Path(f"/sys/fs/cgroup{path}/memory.max")
            if unified.exists():
                return int(unified.read_text())
    raise AssertionError("no memory cgroup")
