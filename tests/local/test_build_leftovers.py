"""A build step that leaves a daemon running (redteam2's finding): through the real provider, as root.

A daemon that left the step's process group (`setsid`, a double fork) and kept the build's output pipe
open used to keep the deployment "building" until the build timeout (900 s by default), holding one of
the account's build slots; one that closed its output ran on in the service's build cgroup, unowned.
Now the step's end ends both, and the build log says why.
"""

from __future__ import annotations

import os
import time

import psutil

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from tests.local.conftest import PY, WEB_APP, Events, get, key_for, no_record, request_for
from tests.requirements import requires

pytestmark = requires(
    "root", os.geteuid() == 0, "the build cgroup that holds a step's daemons exists only when InkMCP is root"
)

# Two daemons, each fork + setsid + fork + exec: one keeps the step's stdout (the pipe InkMCP reads), the
# other points its output at /dev/null, as a well-behaved daemon does. The step itself exits at once.
DAEMONS = """
import os, sys
def daemon(name, keep_output):
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            if not keep_output:
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, 1)
                os.dup2(null, 2)
            with open(name, "w") as f:
                f.write(str(os.getpid()))
            os.execv("/bin/sleep", ["sleep", "303"])
        os._exit(0)
    os.wait()
daemon("holder.pid", True)
daemon("quiet.pid", False)
print("STEP-DONE", flush=True)
"""


def _gone(pid: int) -> bool:
    try:
        proc = psutil.Process(pid)
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def _release_with_daemons(make_provider, checkouts, project_ids, data_dir, **step: str) -> str:
    """Release an app whose build step or release command (`step`) runs DAEMONS; check what must hold either way
    (the release is not held, both daemons are gone, the build cgroup is empty) and return the build log."""
    provider = await make_provider(build_timeout=120.0)
    key = key_for(project_ids())
    plan = BuildPlan(
        stack=Stack.none, source="call", **step,
        processes=(ProcessSpec(name="web", command=f"exec {PY} app.py", routed=True),),
    )  # fmt: skip
    request = request_for(key, checkouts({"app.py": WEB_APP, "daemons.py": DAEMONS}), plan)
    started = time.monotonic()
    await provider.release(request, Events(), no_record)
    took = time.monotonic() - started
    # Before: the release waited for the holder's output to end, i.e. for the build timeout (120 s here).
    assert took < 60, f"the release took {took:.1f} s: it waited for the daemon"
    assert (await get(provider, key)).status_code == 200

    src = data_dir / "services" / key.service_id / "releases" / request.deployment_id / "src"
    pids = {name: int((src / f"{name}.pid").read_text()) for name in ("holder", "quiet")}
    assert all(_gone(pid) for pid in pids.values()), {n: p for n, p in pids.items() if not _gone(p)}
    build_log = "\n".join(p.read_text() for p in (data_dir / "services" / key.service_id).rglob("*.log"))
    assert "STEP-DONE" in build_log
    # The build's cgroup is empty: nothing of the build runs on beside the live release.
    build_group = provider.limits.pids(f"{key.service_id}.build")
    assert build_group == set(), build_group
    return build_log


async def test_a_daemon_left_by_a_build_step_neither_holds_the_deployment_nor_survives(
    make_provider, checkouts, project_ids, data_dir
):
    build_log = await _release_with_daemons(make_provider, checkouts, project_ids, data_dir,
                                            build_command=f"{PY} daemons.py")  # fmt: skip
    assert "left a process running in the background that still holds the build's output" in build_log


async def test_a_daemon_left_by_the_release_command_does_not_survive_it(
    make_provider, checkouts, project_ids, data_dir
):
    """The release command runs in the build's cgroup too: a daemon it starts ends with it.

    Before, `run_once` killed only the command's process group, so a `setsid` daemon started by a
    release command (a migration tool's "background worker", a forgotten `&`) ran on in the service's
    build cgroup, unowned, for as long as the machine lived.
    """
    build_log = await _release_with_daemons(make_provider, checkouts, project_ids, data_dir,
                                            release_command=f"{PY} daemons.py")  # fmt: skip
    assert "left a process running in the background" in build_log
