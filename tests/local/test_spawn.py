"""Tenant processes started through vfork + the inkmcp-spawn exec wrapper (issue 12 item 2).

The wrapper replaced the preexec_fn that forked the whole server, so every isolation property of the
sandbox is checked from the tenant's side, on both paths: an app that forks a child as its very
first action reports, from the child and from itself, its ids, groups, cgroups, rlimits, umask,
session, open fds, environment and mounts. An attack through the tenant's env (LD_PRELOAD) must
not reach the wrapper while it is root. Failures of the wrapper name the step, as the old path did.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from inkmcp.build.plan import BuildPlan, ProcessSpec, Stack
from inkmcp.build.process import TenantSandbox
from inkmcp.providers.compute.local import spawn as spawn_mod
from inkmcp.providers.compute.local.command import command_argv, direct_argv
from inkmcp.providers.compute.local.readiness import ListenProbe
from inkmcp.providers.compute.local.spawn import StartSettings
from inkmcp.providers.compute.local.users import _kill_all_as, ensure_project_user
from tests.local.conftest import PY, Events, get, key_for, no_record, request_for
from tests.requirements import require, requires

ROOT = requires("root", os.geteuid() == 0, "confinement (users, cgroups, mounts) is enforced only as root")

PROBE = r"""
import errno, json, os, resource, sys

def attempt(fn):
    try:
        return ["ok", fn()]
    except OSError as e:
        return [errno.errorcode.get(e.errno or 0, type(e).__name__), str(e)]

# the project's git mirrors (its uid's; git alone may write them), when the test names them
MIRRORS = open("mirrors.txt").read().strip() if os.path.exists("mirrors.txt") else None

def report(path):
    mask = os.umask(0); os.umask(mask)
    fds = sorted(int(x) for x in os.listdir("/proc/self/fd"))
    mounts = {}
    for line in open("/proc/self/mountinfo"):
        parts = line.split()
        if parts[4] in ("/tmp", "/var/tmp", "/dev/shm", "/proc"):
            sep = parts.index("-")
            mounts[parts[4]] = {"root": parts[3], "fstype": parts[sep + 1], "options": parts[sep + 3]}
    rep = {
        "pid": os.getpid(), "ppid": os.getppid(), "sid": os.getsid(0), "pgid": os.getpgid(0),
        "resuid": list(os.getresuid()), "resgid": list(os.getresgid()), "groups": os.getgroups(),
        "cgroup": open("/proc/self/cgroup").read(), "umask": mask, "fds": fds,
        "core": list(resource.getrlimit(resource.RLIMIT_CORE)),
        "fsize": list(resource.getrlimit(resource.RLIMIT_FSIZE)),
        "env": dict(os.environ), "cwd": os.getcwd(), "mounts": mounts,
        "capeff": [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0],
        "mirrors": MIRRORS and {
            "list": attempt(lambda: os.listdir(MIRRORS)),
            "read": attempt(lambda: open(MIRRORS + "/m/config").read()),
            "plant": attempt(lambda: os.close(os.open(MIRRORS + "/planted-" + path, os.O_CREAT | os.O_WRONLY, 0o600))),
        },
    }
    with open(path, "w") as f:
        json.dump(rep, f)

child = os.fork()  # the app's very first action: this child must already be confined
if child == 0:
    report("child.json")
    os._exit(0)
os.waitpid(child, 0)
report("app.json")
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
HTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""


def probe_plan(command: str = f"{PY} probe.py") -> BuildPlan:
    return BuildPlan(stack=Stack.none, source="call",
                     processes=(ProcessSpec(name="web", command=command, routed=True),))  # fmt: skip


def use_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    settings = StartSettings(tenant_spawn=path)  # type: ignore[arg-type]
    monkeypatch.setattr(spawn_mod, "start_settings", lambda: settings)


@ROOT
@pytest.mark.parametrize("path", ["wrapper", "preexec", "prepared"])
async def test_every_isolation_property_holds_from_the_first_instruction(
    make_provider, checkouts, project_ids, data_dir, monkeypatch, path
):
    """Every start path confines identically: ids without groups, the service's cgroups (for a child forked
    at once too), RLIMIT_CORE 0 + RLIMIT_FSIZE, umask 077, own session, fds 0-2 only, the env built for the
    tenant and nothing of the server's, private /tmp, /var/tmp, /dev/shm and /proc, the project's git mirrors out of
    reach (their uid's, but git alone may write them: a config planted there acted in InkMCP's fetch); the wrapper path
    additionally execs the Procfile command directly (the app is the supervised pid, the server its parent).
    "prepared": an on_demand service asleep has its next start confined and waiting; the wake hands it the
    command, and the app it runs is that very process, confined the same."""
    from inkmcp.build.plan import Mode

    use_path(monkeypatch, "wrapper" if path == "prepared" else path)
    monkeypatch.setenv("INKMCP_SERVER_ONLY_SECRET", "server-secret-value")  # the server's env must not leak
    provider = await make_provider(idle_timeout=0.3) if path == "prepared" else await make_provider()
    key = key_for(project_ids())
    mode = {"mode": Mode.on_demand} if path == "prepared" else {}
    mirrors = data_dir / "projects" / key.project_id / "mirrors"
    request = request_for(key, checkouts({"probe.py": PROBE, "mirrors.txt": str(mirrors)}), probe_plan(),
                          env={"APP_SETTING": "v1"}, **mode)  # fmt: skip
    await provider.release(request, Events(), no_record)
    src = data_dir / "services" / key.service_id / "releases" / request.deployment_id / "src"
    svc = provider._services[key.service_id]
    prepared = None
    if path == "prepared":
        prepared = await _asleep_with_a_prepared_start(provider, svc)
        for name in ("app.json", "child.json"):
            (src / name).unlink()
    assert (await get(provider, key)).status_code == 200
    run = svc.live.run  # type: ignore[union-attr]
    app, child = (json.loads((src / f"{n}.json").read_text()) for n in ("app", "child"))
    run_as = svc.run_as
    assert run_as is not None
    assert os.stat(mirrors).st_uid == run_as.uid  # the tenant's uid owns them: only the sandbox keeps it out
    for rep in (app, child):
        assert [rep["mirrors"][k][0] for k in ("list", "read", "plant")] == ["EACCES"] * 3, rep["mirrors"]
        assert rep["resuid"] == [run_as.uid] * 3 and rep["resgid"] == [run_as.gid] * 3, rep
        assert rep["groups"] == []
        assert rep["capeff"] == "0000000000000000"
        lines = {c: path for line in rep["cgroup"].splitlines()
                 for c, path in [line.split(":", 2)[1:]] for c in c.split(",")}  # fmt: skip
        wanted = f"/inkmcp/{key.service_id}"
        if "memory" in lines:  # cgroup v1 (a hybrid host also lists an unused v2 "0::/" line)
            assert [lines[c] for c in ("memory", "cpu", "pids")] == [wanted] * 3, rep["cgroup"]
        else:
            assert lines[""] == wanted, rep["cgroup"]
        assert rep["core"] == [0, 0]
        assert rep["fsize"] == [provider.max_file_bytes] * 2
        assert rep["umask"] == 0o077
        assert rep["cwd"] == str(src)
        assert rep["fds"] == [0, 1, 2, 3], rep["fds"]  # 3: the listing of /proc/self/fd itself
        assert "INKMCP_SERVER_ONLY_SECRET" not in rep["env"]
        assert set(rep["env"]) == {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "USER", "LOGNAME", "PORT",
                                   "TMPDIR", "APP_SETTING", "INKMCP_DEPLOYMENT"}, sorted(rep["env"])  # fmt: skip
        assert rep["env"]["APP_SETTING"] == "v1" and rep["env"]["USER"] == run_as.user
        assert rep["mounts"]["/tmp"]["root"].endswith(f"/services/{key.service_id}/tmp"), rep["mounts"]
        assert rep["mounts"]["/var/tmp"]["root"] == rep["mounts"]["/tmp"]["root"]
        assert rep["mounts"]["/dev/shm"]["fstype"] == "tmpfs" and "size=65536k" in rep["mounts"]["/dev/shm"]["options"]
        if "/proc" in rep["mounts"] and spawn_mod._proc_has_private_options():
            assert "hidepid=invisible" in rep["mounts"]["/proc"]["options"] or "hidepid=2" in (
                rep["mounts"]["/proc"]["options"])
    assert not list(mirrors.iterdir())  # nothing planted
    assert app["sid"] == app["pgid"] == app["pid"]  # its own session: the group is killable as one
    assert child["sid"] == app["sid"]
    if path != "preexec":
        assert spawn_mod.find_wrapper() is not None, spawn_mod.unavailable_reason()
        assert run.pids == [app["pid"]]  # no /bin/sh in between: the supervised pid is the app
        assert app["ppid"] == os.getpid()  # the server's own child (exit codes stay the server's)
    if path == "prepared":
        assert app["pid"] == prepared  # the process that waited is the app
        assert spawn_mod.prepared_pid(provider._sandbox(svc)) is None  # used up, not started twice


async def _asleep_with_a_prepared_start(provider, svc) -> int:  # type: ignore[no-untyped-def]
    """Wait until the idle loop put `svc` to sleep and its next start waits, confined; return its pid."""
    deadline = asyncio.get_running_loop().time() + 15
    while svc.live.run is not None or spawn_mod.prepared_pid(provider._sandbox(svc)) is None:
        assert asyncio.get_running_loop().time() < deadline, "no start was prepared while the service slept"
        await asyncio.sleep(0.02)
    pid = spawn_mod.prepared_pid(provider._sandbox(svc))
    assert pid is not None
    return pid


@ROOT
async def test_ld_preload_in_the_tenants_env_never_runs_as_root(make_provider, checkouts, project_ids, data_dir):
    """The wrapper runs as root until it drops to the tenant: a tenant env with LD_PRELOAD (a library whose
    constructor records the uid it runs as) must only ever run as the tenant, never in the root wrapper."""
    require("root", subprocess.run(["cc", "--version"], capture_output=True).returncode == 0, "no C compiler")
    lib_dir = data_dir / "preload"
    lib_dir.mkdir(mode=0o755)
    marks = lib_dir / "marks"
    marks.touch(mode=0o666)
    marks.chmod(0o666)
    source = lib_dir / "evil.c"
    source.write_text(
        '#include <stdio.h>\n#include <unistd.h>\n__attribute__((constructor)) static void grab(void) {\n'
        f'  FILE *f = fopen("{marks}", "a"); if (f) {{ fprintf(f, "uid=%d\\n", (int)geteuid()); fclose(f); }}\n}}\n'
    )
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib_dir / "evil.so"), str(source)], check=True)
    provider = await make_provider()
    key = key_for(project_ids())
    env = {"LD_PRELOAD": str(lib_dir / "evil.so")}
    request = request_for(key, checkouts({"probe.py": PROBE}), probe_plan(), env=env)
    await provider.release(request, Events(), no_record)
    run_as = provider._services[key.service_id].run_as
    assert run_as is not None
    seen = marks.read_text().split()
    assert seen, "the tenant's own dynamically linked code should have loaded the library (the attack ran)"
    assert set(seen) == {f"uid={run_as.uid}"}, seen  # never uid=0: the root wrapper did not load it


@ROOT
async def test_wrapper_failures_name_the_step_and_exit_126(data_dir):
    """A cgroup that cannot be joined stops the start before anything of the tenant runs, with the reason."""
    sandbox = TenantSandbox(run_as=None, cgroup_procs=(str(data_dir / "no-such-cgroup" / "cgroup.procs"),))
    proc, transport = await spawn_mod.spawn(("/bin/echo", "TENANT-RAN"), cwd=data_dir, env={}, sandbox=sandbox)
    out = await proc.stdout.read()  # type: ignore[union-attr]
    assert await proc.wait() == 126
    transport.close()
    assert b"TENANT-RAN" not in out
    assert out.decode().startswith("inkmcp: could not start the process in its sandbox: joining the service's cgroup:")
    proc, transport = await spawn_mod.spawn(("no-such-command-xyz",), cwd=data_dir, env={"PATH": "/usr/bin:/bin"},
                                            sandbox=TenantSandbox(run_as=None))  # fmt: skip
    out = await proc.stdout.read()  # type: ignore[union-attr]
    assert await proc.wait() == 127
    transport.close()
    assert out.decode().strip() == "inkmcp: could not run no-such-command-xyz: No such file or directory"


@ROOT
async def test_the_server_starts_the_wrapper_in_a_way_cpython_vforks(data_dir, monkeypatch):
    """CPython's _posixsubprocess vforks only without preexec_fn, user, group and extra_groups; the wrapper
    gets an empty environment (the tenant's arrives in a memfd) and a tenant env var reaches the command."""
    seen: list[dict[str, object]] = []
    real = subprocess.Popen

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.append({"args": args, **kwargs})
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(subprocess, "Popen", Recording)
    proc, transport = await spawn_mod.spawn(("/bin/sh", "-c", "echo $FROM_TENANT"), cwd=data_dir,
                                            env={"FROM_TENANT": "yes"}, sandbox=TenantSandbox(run_as=None))  # fmt: skip
    out = await proc.stdout.read()  # type: ignore[union-attr]
    assert await proc.wait() == 0
    transport.close()
    assert out == b"yes\n"
    (call,) = seen
    assert call.get("preexec_fn") is None
    assert all(call.get(k) is None for k in ("user", "group", "extra_groups"))
    assert call["env"] == {}
    argv = call["args"][0]
    assert Path(argv[0]).name.startswith("inkmcp-spawn-")  # type: ignore[index]


def test_procfile_lines_run_directly_only_when_a_shell_adds_nothing():
    env = {"PORT": "8123", "HOME": "/home/x", "SPACED": "a b", "GLOB": "*.py", "NL": "x\n"}
    assert command_argv("gunicorn -b 0.0.0.0:$PORT app:app", env) == ("gunicorn", "-b", "0.0.0.0:8123", "app:app")
    assert direct_argv("exec python app.py --port=${PORT}", env) == ("python", "app.py", "--port=8123")
    for needs_shell in (
        "python app.py && echo done", "echo $SPACED", "ls $GLOB", "echo $UNSET", "FOO=1 python app.py",
        "cd sub; python app.py", "python 'app.py'", "python app.py > log", "python ~/app.py",
        "python app.py # comment", "echo ${PORT:-80}", "export X=1", "python app.py &", "exec",
        "python app.py\n", "echo $NL",  # a final newline is shell syntax too (`$` alone would admit it)
    ):  # fmt: skip
        assert direct_argv(needs_shell, env) is None, needs_shell
        assert command_argv(needs_shell, env) == ("/bin/sh", "-c", needs_shell)


@ROOT
async def test_sh_only_commands_still_run_through_the_shell(make_provider, checkouts, project_ids):
    """A Procfile line with shell syntax keeps /bin/sh -c: `&&`, redirection and an expansion with a default."""
    provider = await make_provider()
    key = key_for(project_ids())
    command = f"echo started > started.txt && exec {PY} probe.py --port ${{PORT:-1}}"
    await provider.release(request_for(key, checkouts({"probe.py": PROBE}), probe_plan(command)), Events(), no_record)
    assert (await get(provider, key)).status_code == 200


def _listen_as(uid: int, family: int, host: str) -> tuple[subprocess.Popen[bytes], int]:
    """A process of `uid` listening on a free port (reported on its stdout)."""
    code = (f"import os, socket, sys\ns = socket.socket({family}); s.bind(({host!r}, 0)); s.listen()\n"
            "print(s.getsockname()[1], flush=True)\nsys.stdin.read()\n")  # fmt: skip
    proc = subprocess.Popen([PY, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            user=uid if uid != os.geteuid() else None)  # fmt: skip
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_a_listener_counts_only_for_its_own_uid_and_only_where_127_0_0_1_reaches_it():
    """sock_diag readiness asks the kernel which listener a connection to 127.0.0.1:port would reach (the
    proxy's connection): another user's socket on the port is not the app; a dual-stack [::] socket is
    reached; one on ::1 or 127.0.0.2 is not (a connect to 127.0.0.1 would be refused), and each answer is
    checked against a real connect."""
    probe = ListenProbe.open()
    require("netns", probe is not None, "the kernel refuses NETLINK_SOCK_DIAG here")
    assert probe is not None
    procs = []
    try:
        mine, port = _listen_as(os.geteuid(), socket.AF_INET, "127.0.0.1")
        procs.append(mine)
        assert probe.ready(port, os.geteuid()) == (True, True)
        assert probe.ready(port, os.geteuid() + 4242) == (False, False)
        for family, host, reached in ((socket.AF_INET6, "::1", False), (socket.AF_INET, "127.0.0.2", False),
                                      (socket.AF_INET6, "::", True), (socket.AF_INET, "0.0.0.0", True)):
            other_addr, other_port = _listen_as(os.geteuid(), family, host)
            procs.append(other_addr)
            assert probe.ready(other_port, os.geteuid()) == (reached, reached), host
            with socket.socket() as client:
                assert client.connect_ex(("127.0.0.1", other_port)) == (0 if reached else 111), host
        with socket.socket() as bound:  # bound but not listening yet: not ready
            bound.bind(("127.0.0.1", 0))
            assert probe.ready(bound.getsockname()[1], os.geteuid()) == (False, False)
        mine.kill()
        mine.wait()
        assert probe.ready(port, os.geteuid()) == (False, False)  # gone with its process
        if os.geteuid() == 0:
            other, port_other = _listen_as(65534, socket.AF_INET, "0.0.0.0")
            procs.append(other)
            assert probe.ready(port_other, 0) == (False, False)
            assert probe.ready(port_other, 65534) == (True, True)
    finally:
        probe.close()
        for p in procs:
            p.kill()
            p.wait()


@ROOT
async def test_wake_is_detected_by_the_kernel_probe_and_serves(make_provider, checkouts, project_ids):
    """on_demand: the first request wakes the app through the wrapper and the sock_diag readiness check."""
    from inkmcp.build.plan import Mode

    provider = await make_provider(idle_timeout=0.3)
    key = key_for(project_ids())
    request = request_for(key, checkouts({"probe.py": PROBE}), probe_plan(), mode=Mode.on_demand)
    await provider.release(request, Events(), no_record)
    live = provider._services[key.service_id].live
    assert live is not None
    deadline = asyncio.get_running_loop().time() + 10
    while live.run is not None:  # the idle loop puts it to sleep
        assert asyncio.get_running_loop().time() < deadline, "the service never went to sleep"
        await asyncio.sleep(0.05)
    response = await asyncio.wait_for(get(provider, key), 20)
    assert response.status_code == 200 and response.text == "ok"


@ROOT
async def test_kill_all_ends_the_users_processes_as_the_user_and_refuses_root(data_dir, project_ids):
    """delete's kill(-1) runs through the wrapper as the project's user: the user's processes (in another
    session too) die, root's survive, and the wrapper refuses to do it as uid 0."""
    run_as = await ensure_project_user(project_ids(), data_dir / "homes")
    assert run_as is not None
    wrapper = spawn_mod.find_wrapper()
    assert wrapper is not None, spawn_mod.unavailable_reason()
    victim = subprocess.Popen(["/bin/sleep", "300"], user=run_as.uid, group=run_as.gid, extra_groups=[],
                              start_new_session=True)  # fmt: skip
    bystander = subprocess.Popen(["/bin/sleep", "300"], start_new_session=True)
    try:
        refused = subprocess.run([str(wrapper), "--ids", "0:0", "--kill-all"], capture_output=True, text=True)
        assert refused.returncode == 126 and "--kill-all needs --ids with a uid other than 0" in refused.stderr
        assert bystander.poll() is None
        await asyncio.to_thread(_kill_all_as, run_as.uid, run_as.gid)
        assert victim.wait(5) == -9
        assert bystander.poll() is None
    finally:
        for proc in (victim, bystander):
            proc.kill()
            proc.wait()


ATTACK = r"""
import ctypes, os, signal, sys
pid = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
out = {}
out["ptrace"] = 0 if libc.ptrace(16, pid, None, None) == 0 else ctypes.get_errno()  # PTRACE_ATTACH
for what in ("environ", "fd", "mem"):
    try:
        if what == "fd":
            os.listdir(f"/proc/{pid}/fd")
        else:
            open(f"/proc/{pid}/{what}", "rb").read(1)
        out[what] = 0
    except OSError as exc:
        out[what] = exc.errno
os.kill(pid, signal.SIGKILL)  # allowed: it is the project's own uid (a project can only stop its own app)
print(out)
"""


@ROOT
async def test_a_prepared_start_cannot_be_traced_or_read_by_the_tenant_and_a_killed_one_is_replaced(
    make_provider, checkouts, project_ids
):
    """Attack from the tenant's side on the process waiting for the next wake (already the tenant's uid):
    ptrace attach, reading its environment, fds and memory all fail (it is not dumpable); killing it is
    allowed, and the next wake then starts a fresh process that serves; the next sleep prepares again."""
    import errno

    from inkmcp.build.plan import Mode

    provider = await make_provider(idle_timeout=0.3)
    key = key_for(project_ids())
    request = request_for(key, checkouts({"probe.py": PROBE}), probe_plan(), mode=Mode.on_demand)
    await provider.release(request, Events(), no_record)
    svc = provider._services[key.service_id]
    run_as = svc.run_as
    assert run_as is not None
    prepared = await _asleep_with_a_prepared_start(provider, svc)
    deadline = asyncio.get_running_loop().time() + 5
    while Path(f"/proc/{prepared}/status").read_text().split("Uid:")[1].split()[:3] != [str(run_as.uid)] * 3:
        assert asyncio.get_running_loop().time() < deadline, "the prepared start never dropped to the tenant"
        await asyncio.sleep(0.01)  # still joining the cgroups as root (the wait it is there to take early)
    attack = await asyncio.to_thread(
        subprocess.run, [PY, "-c", ATTACK, str(prepared)], capture_output=True, text=True, timeout=30,
        user=run_as.uid, group=run_as.gid, extra_groups=[], cwd="/",
    )  # fmt: skip
    assert attack.returncode == 0, attack.stderr
    seen = eval(attack.stdout)  # noqa: S307 - our own script's dict literal
    assert seen == {"ptrace": errno.EPERM, "environ": errno.EACCES, "fd": errno.EACCES, "mem": errno.EACCES}, seen
    deadline = asyncio.get_running_loop().time() + 5
    while spawn_mod.prepared_pid(provider._sandbox(svc)) is not None:  # its exit is noticed and it is forgotten
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    response = await asyncio.wait_for(get(provider, key), 20)
    assert response.status_code == 200 and response.text == "ok"
    assert svc.live.run is not None and svc.live.run.pids != [prepared]  # type: ignore[union-attr]
    assert await _asleep_with_a_prepared_start(provider, svc) != prepared


@ROOT
async def test_a_prepared_start_whose_pipe_closes_runs_nothing_and_exits(data_dir):
    """If InkMCP goes away (its end of the pipe closes) the waiting wrapper exits 0 without running anything;
    a command handed over runs with exactly the environment and directory given then."""
    sandbox = TenantSandbox(run_as=None)
    assert await spawn_mod.prepare_start(sandbox)
    entry = spawn_mod._prepared.pop(tuple(spawn_mod.confinement(sandbox)))
    os.close(entry.start_fd)
    entry.start_fd = -1
    assert await asyncio.wait_for(entry.proc.wait(), 5) == 0
    assert await entry.proc.stdout.read() == b""  # type: ignore[union-attr]
    entry.transport.close()
    assert await spawn_mod.prepare_start(sandbox)
    waiting = spawn_mod.prepared_pid(sandbox)
    env = {"ONLY_THIS": "given", "PATH": "/usr/bin:/bin"}
    command = ("/bin/sh", "-c", "echo $ONLY_THIS; pwd; env | wc -l")
    proc, transport = await spawn_mod.spawn(command, cwd=data_dir, env=env, sandbox=sandbox)
    assert proc.pid == waiting
    out = await proc.stdout.read()  # type: ignore[union-attr]
    assert await proc.wait() == 0
    transport.close()
    assert out.decode().split() == ["given", str(data_dir), "3"]  # ONLY_THIS, PATH and the shell's own PWD


async def test_the_pid_file_is_written_beside_the_start_and_never_left_behind(tmp_path):
    """The pid file (what a restarted InkMCP reaps after a crash) is written on the loop's next turn after the
    spawn, off the wake's path; it names the process with its create time, and it is gone after a stop and
    after a process that exited at once (its write cancelled or undone), never left behind."""
    import psutil

    from inkmcp.providers.compute.local.supervisor import ProcessConfig, Supervisor, reap_stale

    def config(name: str, argv: tuple[str, ...]) -> ProcessConfig:
        return ProcessConfig(name=name, argv=argv, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, run_as=None,
                             pid_file=tmp_path / "pids" / f"{name}.pid")  # fmt: skip

    sup = Supervisor(config("long", ("/bin/sleep", "30")), lambda line: None)
    await sup.start()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    record = json.loads((tmp_path / "pids" / "long.pid").read_text())
    assert record["pid"] == sup.pid and abs(record["create_time"] - psutil.Process(sup.pid).create_time()) < 0.01
    await sup.stop(1.0)
    assert not (tmp_path / "pids" / "long.pid").exists()
    quick = Supervisor(config("quick", ("/bin/true",)), lambda line: None)
    await quick.start()
    await asyncio.wait_for(quick.wait_exit(), 5)
    await quick.stop(1.0)
    assert not (tmp_path / "pids" / "quick.pid").exists()
    crashed = Supervisor(config("left", ("/bin/sleep", "30")), lambda line: None)  # InkMCP dies: file stays
    await crashed.start()
    await asyncio.sleep(0.05)
    pid = crashed.pid
    assert pid is not None and reap_stale(tmp_path / "pids") == 1
    await asyncio.wait_for(crashed.wait_exit(), 5)
    await crashed.stop(1.0)


@ROOT
async def test_prepared_starts_can_be_turned_off_and_never_exist_without_the_wrapper(monkeypatch):
    """INKMCP_TENANT_PRESPAWN=false, or the preexec path: nothing waits, every start is a direct one."""
    sandbox = TenantSandbox(run_as=None)
    for settings in (StartSettings(tenant_prespawn=False), StartSettings(tenant_spawn="preexec")):  # type: ignore[arg-type]
        monkeypatch.setattr(spawn_mod, "start_settings", lambda settings=settings: settings)
        assert not await spawn_mod.prepare_start(sandbox)
        assert spawn_mod.prepared_pid(sandbox) is None
    monkeypatch.setenv("INKMCP_TENANT_PRESPAWN", "false")
    assert StartSettings().tenant_prespawn is False
