"""The tenant sandbox, attacked from the tenant's side through the real provider (issue 6, item 4).

Findings 6, 6b, 6c, 7 and 19 of the red-team review (../shared/reviews/redteam-local-2026-11-30.md):
builds and release commands ran outside the service's cgroup, there was no pids limit, a
double-forked `setsid` daemon survived `delete`, and /tmp, /var/tmp and /dev/shm were shared with
the host and every tenant. Each test below runs the attack as tenant code (a build command, a release
command or the app itself) and asserts it fails, with the tenant's own output as proof.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from inkmcp.providers.compute.base import ReleaseFailed, ReleaseRequest, Resources, ServiceKey, Step
from inkmcp.providers.compute.local import LocalComputeProvider
from inkmcp.providers.compute.local.users import project_user_name
from tests.local.conftest import PY, WEB_APP, Events, get, key_for, no_record, request_for
from tests.requirements import requires

pytestmark = requires(
    "root", os.geteuid() == 0, "the sandbox (tenant users, cgroups, private /tmp) is enforced only when InkMCP is root"
)

HOG = f"{PY} -c \"x = b'x' * (200 * 2**20); print('HOG' + '-SURVIVED')\""
FORKER = r"""
import os, sys
kids = []
try:
    for _ in range(600):
        pid = os.fork()
        if pid == 0:
            os.execv("/bin/sleep", ["sleep", "60"])
        kids.append(pid)
    print("FORK-600-OK", flush=True)
except OSError as e:
    print(f"FORK-REFUSED after {len(kids)}: {e}", flush=True)
    sys.exit(3)
finally:
    for k in kids:
        os.kill(k, 9)
"""
DAEMON = """
import os
if os.fork() == 0:  # fork, setsid, fork: reparented to init, outside the app's process group and tree
    os.setsid()
    if os.fork() == 0:
        with open("daemon.pid", "w") as f:
            f.write(str(os.getpid()))
        os.execv("/bin/sleep", ["sleep", "301"])
    os._exit(0)
os.wait()
"""


def plan(*, build: str | None = None, release: str | None = None) -> BuildPlan:
    return BuildPlan(
        stack=Stack.none, source="call", build_command=build, release_command=release,
        processes=(ProcessSpec(name="web", command=f"exec {PY} app.py", routed=True),),
    )  # fmt: skip


def with_resources(request: ReleaseRequest, **resources: float) -> ReleaseRequest:
    return request.model_copy(update={"resources": Resources(**resources)})  # type: ignore[arg-type]


def src_of(data_dir: Path, key: ServiceKey, request: ReleaseRequest) -> Path:
    return data_dir / "services" / key.service_id / "releases" / request.deployment_id / "src"


def cgroup_paths(text: str) -> dict[str, str]:
    """controller -> cgroup path, from /proc/<pid>/cgroup (v2: the "" controller)."""
    paths = {}
    for line in text.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def assert_in_service_cgroup(text: str, key: ServiceKey, *, build: bool = False) -> None:
    """Runtime processes are in the service's cgroup, build-phase steps in its sibling `<id>.build`."""
    paths = cgroup_paths(text)
    wanted = f"/inkmcp/{key.service_id}" + (".build" if build else "")
    controllers = ("memory", "cpu", "pids") if "memory" in paths else ("",)
    assert {c: paths[c] for c in controllers} == dict.fromkeys(controllers, wanted), text


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def test_build_and_release_command_over_the_memory_limit_fail_naming_it(make_provider, checkouts, project_ids):
    """Finding 6: a build allocated 900 MiB under a 512 MiB limit, in InkMCP's own memory cgroup."""
    provider = await make_provider()
    key = key_for(project_ids())
    build = with_resources(request_for(key, checkouts({"app.py": WEB_APP}), plan(build=HOG)), memory_mb=64)
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(build, Events(), no_record)
    assert failed.value.step == Step.building
    reason = failed.value.reason
    assert "the build ran out of memory: the service's limit is 64 MiB (resources.memory_mb)" in reason
    assert "deploy_app(resources={'memory_mb': 128})" in reason
    assert "HOG-SURVIVED" not in reason

    release = with_resources(request_for(key, checkouts({"app.py": WEB_APP}), plan(release=HOG)), memory_mb=64)
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(release, Events(), no_record)
    assert failed.value.step == Step.releasing
    assert "the release command ran out of memory: the service's limit is 64 MiB (resources.memory_mb)" in (
        failed.value.reason
    )


async def test_a_build_does_not_compete_with_the_live_release_for_memory(make_provider, checkouts, project_ids):
    """The build is held to the service's memory limit in a cgroup of its own: a live release holding 40 MiB
    and a build allocating 40 MiB under a 64 MiB limit both fit, and the live release is never OOM-killed."""
    provider = await make_provider()
    key = key_for(project_ids())
    app = "BALLAST = b'x' * (40 * 2**20)\n" + WEB_APP
    live = with_resources(request_for(key, checkouts({"app.py": app}), plan()), memory_mb=64)
    await provider.release(live, Events(), no_record)
    (web_pid,) = provider._services[key.service_id].live.run.pids  # type: ignore[union-attr]
    oom_control = Path("/sys/fs/cgroup/memory/inkmcp") / key.service_id / "memory.oom_control"
    kills = (lambda: int(oom_control.read_text().split("oom_kill ")[1].split()[0])) if oom_control.exists() else None
    before = kills() if kills else 0
    build = f"{PY} -c \"x = b'x' * (40 * 2**20); print('BUILD-ALLOC-OK')\""
    # (the new version holds no ballast: blue/green runs both versions side by side in the service's group)
    await provider.release(with_resources(request_for(key, checkouts({"app.py": WEB_APP}), plan(build=build)),
                                          memory_mb=64), Events(), no_record)  # fmt: skip
    assert (kills() if kills else 0) == before, "the live release was OOM-killed by the build"
    await provider._retired(provider._services[key.service_id])  # the old version stops after "live"
    assert not psutil.pid_exists(web_pid) or gone(psutil.Process(web_pid))  # replaced by the new version
    assert (await get(provider, key)).status_code == 200


async def test_build_release_and_runtime_processes_run_in_the_service_cgroup(
    make_provider, checkouts, project_ids, data_dir
):
    """Finding 6: the build and the release command printed InkMCP's cgroup (`memory:/process_api/…`, `cpu:/`)."""
    provider = await make_provider()
    key = key_for(project_ids())
    request = request_for(key, checkouts({"app.py": WEB_APP}), plan(
        build="cat /proc/self/cgroup > build.cgroup", release="cat /proc/self/cgroup > release.cgroup",
    ))  # fmt: skip
    await provider.release(request, Events(), no_record)
    src = src_of(data_dir, key, request)
    assert_in_service_cgroup((src / "build.cgroup").read_text(), key, build=True)
    assert_in_service_cgroup((src / "release.cgroup").read_text(), key, build=True)
    # ... under the service's own limits
    groups = (key.service_id, f"{key.service_id}.build")
    limits = ("memory/inkmcp/{}/memory.limit_in_bytes", "pids/inkmcp/{}/pids.max", "cpu/inkmcp/{}/cpu.cfs_quota_us")
    for limit in limits:
        service, build = (Path("/sys/fs/cgroup") / limit.format(g) for g in groups)
        if service.exists():
            assert build.read_text() == service.read_text(), limit
    (web_pid,) = provider._services[key.service_id].live.run.pids  # type: ignore[union-attr]
    assert_in_service_cgroup(Path(f"/proc/{web_pid}/cgroup").read_text(), key)


async def test_600_forks_fail_under_the_default_pids_limit(make_provider, checkouts, project_ids):
    """Finding 6c: 300 children were fine, bounded only by the shared per-uid `ulimit -u` (96365)."""
    provider = await make_provider()  # the default INKMCP_PIDS_MAX
    assert provider.limits.pids_max == 512
    key = key_for(project_ids())
    files = {"app.py": WEB_APP, "forker.py": FORKER}
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts(files), plan(build=f"{PY} forker.py")), Events(), no_record)
    reason = failed.value.reason
    assert failed.value.step == Step.building
    assert "the build hit the service's limit of 512 processes and threads (INKMCP_PIDS_MAX)" in reason
    assert "FORK-REFUSED after" in reason and "FORK-600-OK" not in reason
    refused_after = int(reason.split("FORK-REFUSED after ")[1].split(":")[0])
    assert 400 < refused_after < 512  # the limit, not something else, stopped it


async def test_double_forked_daemon_dies_with_delete_and_the_user_goes(
    make_provider, checkouts, project_ids, data_dir
):
    """Finding 7, the review's reproduction: fork + setsid + fork + exec sleep 301, then delete."""
    provider = await make_provider()
    key = key_for(project_ids())
    request = request_for(key, checkouts({"app.py": DAEMON + WEB_APP}), plan())
    await provider.release(request, Events(), no_record)
    pid_file = src_of(data_dir, key, request) / "daemon.pid"
    deadline = time.monotonic() + 10
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    user = pwd.getpwnam(project_user_name(key.project_id))
    daemon = psutil.Process(int(pid_file.read_text()))
    deadline = time.monotonic() + 10
    while daemon.cmdline() != ["sleep", "301"] and time.monotonic() < deadline:  # until it has exec'd
        await asyncio.sleep(0.02)
    assert daemon.cmdline() == ["sleep", "301"] and daemon.uids().real == user.pw_uid
    (web_pid,) = provider._services[key.service_id].live.run.pids  # type: ignore[union-attr]
    assert daemon.pid not in [c.pid for c in psutil.Process(web_pid).children(recursive=True)]  # escaped the tree
    # And one process of the user outside any cgroup of the service (as a fetch run as the user would be),
    # orphaned so that init reaps it (a zombie child of this test would count as alive for userdel).
    started = subprocess.run(["/bin/sh", "-c", "/bin/sleep 302 > /dev/null 2>&1 & echo $!"], user=user.pw_uid,
                             group=user.pw_gid, extra_groups=[], cwd="/", capture_output=True, text=True, check=True)
    stray = psutil.Process(int(started.stdout))
    assert stray.uids().real == user.pw_uid and key.service_id not in Path(f"/proc/{stray.pid}/cgroup").read_text()

    await provider.remove(key)
    assert gone(daemon)
    assert not any(d.exists() for d in provider.limits._dirs(key.service_id))
    assert not (data_dir / "services" / key.service_id).exists()

    await provider.remove_project(key.project_id, {})  # used to fail: "userdel: user … is currently used by process"
    assert gone(stray)
    with pytest.raises(KeyError):
        pwd.getpwnam(user.pw_name)
    assert not (data_dir / "homes" / user.pw_name).exists()
    assert not [p for p in psutil.process_iter(["uids"]) if p.info["uids"] and p.info["uids"].real == user.pw_uid]


async def test_tmp_var_tmp_and_dev_shm_are_private_to_the_service(make_provider, checkouts, project_ids, data_dir):
    """Finding 19: /tmp, /var/tmp and /dev/shm were shared with the host and every tenant."""
    provider = await make_provider()
    token = uuid.uuid4().hex
    key_a = key_for(project_ids(), project="alpha")
    key_b = key_for(project_ids(), project="beta")
    writes = (
        f"echo secret-A > /tmp/a-{token} && echo var-A > /var/tmp/v-{token} && echo shm-A > /dev/shm/s-{token}"
        " && echo \"$TMPDIR\" > tmpdir.txt && stat -c '%u %a' /tmp > tmp-stat.txt"
        " && df -k /dev/shm | tail -n 1 > shm-df.txt && ulimit -c > core-limit.txt"
    )
    request_a = request_for(key_a, checkouts({"app.py": WEB_APP}), plan(
        build=writes, release=f"cat /tmp/a-{token} /var/tmp/v-{token} > seen-by-release.txt",
    ))  # fmt: skip
    await provider.release(request_a, Events(), no_record)
    tmp_a = data_dir / "services" / key_a.service_id / "tmp"
    steal = (
        f"ls -a /tmp /var/tmp /dev/shm > listing.txt; "
        f"cat /tmp/a-{token} /var/tmp/v-{token} /dev/shm/s-{token} {tmp_a}/a-{token} > stolen.txt 2>&1; "
        "echo \"exit $?\" >> stolen.txt"
    )
    request_b = request_for(key_b, checkouts({"app.py": WEB_APP}), plan(build=steal))
    await provider.release(request_b, Events(), no_record)

    # A's own processes (its build, then its release command) share A's private temp dir.
    src_a = src_of(data_dir, key_a, request_a)
    assert (src_a / "seen-by-release.txt").read_text() == "secret-A\nvar-A\n"
    assert (src_a / "tmpdir.txt").read_text().strip() == "/tmp"
    user_a = pwd.getpwnam(project_user_name(key_a.project_id))
    assert (src_a / "tmp-stat.txt").read_text().split() == [str(user_a.pw_uid), "700"]
    assert (src_a / "shm-df.txt").read_text().split()[1] == str(64 * 1024)  # a fresh, capped tmpfs
    assert (src_a / "core-limit.txt").read_text().strip() == "0"
    assert sorted(p.name for p in tmp_a.iterdir()) == sorted([f"a-{token}", f"v-{token}"])
    # The host saw none of it.
    for leaked in (f"/tmp/a-{token}", f"/var/tmp/v-{token}", f"/dev/shm/s-{token}"):
        assert not Path(leaked).exists(), leaked
    # B saw none of it, by name or by listing, nor through A's temp dir on the host path.
    src_b = src_of(data_dir, key_b, request_b)
    assert token not in (src_b / "listing.txt").read_text()
    stolen = (src_b / "stolen.txt").read_text()
    assert "secret-A" not in stolen and "var-A" not in stolen and "shm-A" not in stolen
    assert stolen.count("No such file or directory") == 3 and "Permission denied" in stolen, stolen
    assert stolen.rstrip().endswith("exit 1")


async def test_a_file_over_the_size_cap_cannot_be_written(make_provider, checkouts, project_ids):
    """No disk quota (review, partial findings): one process could write a file as large as the disk."""
    provider: LocalComputeProvider = await make_provider(max_file_mb=1)
    key = key_for(project_ids())
    writer = (
        "import errno, sys\n"
        "open('small.bin', 'wb').write(b'0' * 512 * 1024)\nprint('SMALL-OK', flush=True)\n"
        "try:\n    open('big.bin', 'wb').write(b'0' * 2 * 2**20)\nexcept OSError as e:\n"
        "    print('WRITE-REFUSED', errno.errorcode[e.errno], flush=True)\n    sys.exit(4)\nprint('BIG-WRITTEN')\n"
    )
    request = request_for(key, checkouts({"app.py": WEB_APP, "writer.py": writer}), plan(build=f"{PY} writer.py"))
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request, Events(), no_record)
    reason = failed.value.reason
    assert "SMALL-OK" in reason and "WRITE-REFUSED EFBIG" in reason and "BIG-WRITTEN" not in reason



async def test_other_users_processes_are_invisible_in_proc(make_provider, checkouts, project_ids):
    """Finding 11 (partial): other tenants' pids, cmdlines and cgroup paths (service ids) were readable in /proc."""
    provider = await make_provider()
    key = key_for(project_ids())
    spy = (
        "import os\n"
        "pids = [p for p in os.listdir('/proc') if p.isdigit()]\n"
        "owners = {os.stat(f'/proc/{p}').st_uid for p in pids if os.path.exists(f'/proc/{p}')}\n"
        "init = os.path.exists('/proc/1/cmdline')\n"
        "open('proc-view.txt', 'w').write(f'{len(pids)} {sorted(owners)} {init} {os.getpid() in map(int, pids)}')\n"
    )
    request = request_for(key, checkouts({"app.py": WEB_APP, "spy.py": spy}), plan(build=f"{PY} spy.py"))
    await provider.release(request, Events(), no_record)
    view = (src_of(provider.data_dir, key, request) / "proc-view.txt").read_text()
    count, owners, init, self_seen = view.split(" ", 3)
    me = pwd.getpwnam(project_user_name(key.project_id)).pw_uid
    assert owners == f"[{me}]", f"the tenant saw processes of uids {owners}"
    assert init == "False" and self_seen == "True" and int(count) >= 1
    assert len(psutil.pids()) > int(count)  # the host itself still sees everything


async def test_a_build_that_leaves_more_than_the_cap_on_disk_fails_naming_it(make_provider, checkouts, project_ids):
    """Review, partial (no disk quota): many files under the per-file cap could still fill the disk."""
    provider: LocalComputeProvider = await make_provider(max_build_mb=2)
    key = key_for(project_ids())
    filler = f"{PY} -c \"[open(f'blob{{i}}.bin', 'wb').write(b'0' * 2**20) for i in range(3)]\""
    with pytest.raises(ReleaseFailed) as failed:
        await provider.release(request_for(key, checkouts({"app.py": WEB_APP}), plan(build=filler)), Events(),
                               no_record)
    assert failed.value.step == Step.building
    assert "over this server's cap of 2 MiB (INKMCP_MAX_BUILD_MB)" in failed.value.reason
    ok = await make_provider(max_build_mb=16)
    other = request_for(key_for(project_ids()), checkouts({"app.py": WEB_APP}), plan(build=filler))
    await ok.release(other, Events(), no_record)
