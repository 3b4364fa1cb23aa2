"""redteam5: on a kernel with Landlock ABI 2-5 (Linux 5.19-6.11), a tenant's app reached its git processes.

git runs as the project's uid but outside the sandbox (build/source.py: setpriv, in the host's mount namespace, cwd
the project's git mirror), and the app's hidepid=2 /proc shows every process of its own uid. Only a Landlock domain
kept the app from them: a process in a domain may ptrace, or open /proc/PID/{cwd,root,environ,fd,mem} of, only
processes of its own domain. The sandbox made one on ABI 6+ kernels only (the abstract-socket and signal scope), so
on the kernels most hosts still run (Debian 12's 6.1, Ubuntu 22.04's 5.15 and 24.04's 6.8) the app listed and wrote
its mirror through /proc/<git>/cwd (the mirror config attack test_mirror_config.py closed, back again), reached the
host's /tmp through /proc/<git>/root/tmp, read git's environment, and, where Yama allows ptrace (scope 0), ran its
code inside git. Fixed (process.py step 4b, inkspawn.c `ptrace_domain`): on ABI 2-5 every sandboxed process enters
a domain that refuses nothing a tenant could do (it handles making block devices, and reparenting, granted beneath
"/"), for the ptrace rule alone.

This box's kernel has ABI 6+, where the scope's domain already stops the attack; the test makes the spawn paths see
ABI 5, the only thing an older kernel changes for them: a seccomp filter traps landlock_create_ruleset's version
query (flags 1) and a supervisor thread answers 5 (SECCOMP_RET_USER_NOTIF), every other call runs for real. No
server: the sandbox is started the ways the provider starts it (the wrapper, and the preexec path without it), with
the private /tmp and hidepid /proc, as a real project user; its "git" is a process of the same uid in the host's
mount namespace whose cwd is a mirror. Under two seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from inkmcp.build.plan import RunAs
from inkmcp.providers.compute.local import spawn as spawn_mod
from inkmcp.providers.compute.local.users import delete_project_user, ensure_project_user
from inkmcp.safefs import ensure_owned_dir
from tests.security.conftest import ROOT
from tests.support import traversable_tmpdir

pytestmark = [pytest.mark.asyncio, ROOT]

MIRROR_MARK = "[core]\n\tbare = true\n"

# The tenant's code: what it reaches of its "git" (argv[1]: its pid), and that a rename across directories (what
# every installer does) still works in its domain.
TENANT = r"""
import errno, json, os, sys
pid = sys.argv[1]
def attempt(fn):
    try:
        return ["ok", fn()]
    except OSError as e:
        return [errno.errorcode.get(e.errno or 0, "?"), str(e)]
def rename_across():
    os.makedirs("/tmp/a", exist_ok=True); os.makedirs("/tmp/b", exist_ok=True)
    open("/tmp/a/f", "w").close()
    os.rename("/tmp/a/f", "/tmp/b/f")
    os.link("/tmp/b/f", "/tmp/a/g")
    return sorted(os.listdir("/tmp/b")) + sorted(os.listdir("/tmp/a"))
out = {
    "visible": os.path.isdir(f"/proc/{pid}"),
    "cwd": attempt(lambda: sorted(os.listdir(f"/proc/{pid}/cwd"))),
    "config": attempt(lambda: open(f"/proc/{pid}/cwd/config").read()),
    "host_tmp": attempt(lambda: len(os.listdir(f"/proc/{pid}/root/tmp"))),
    "environ": attempt(lambda: len(open(f"/proc/{pid}/environ", "rb").read())),
    "rename": attempt(rename_across),
}
print(json.dumps(out))
"""

# Root, under a seccomp filter that answers 5 to Landlock's version query (x86_64 numbers), starts the "git" and
# the tenant's code: argv how, uid, gid, mirror dir, service tmp dir, home.
HOLDER = r"""
import ctypes, json, os, struct, subprocess, sys, threading
from pathlib import Path
from inkmcp.build.plan import RunAs
from inkmcp.build.process import TenantSandbox
from inkmcp.providers.compute.local import spawn as spawn_mod
how, mirror, tmp, home, tenant = sys.argv[1], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7]
uid, gid = int(sys.argv[2]), int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
RECV, SEND = 0xC0502100, 0xC0182101  # SECCOMP_IOCTL_NOTIF_RECV / _SEND
listener = []
ready = threading.Event()

def supervise():  # started before the filter: this thread is not under it
    ready.wait()
    req = ctypes.create_string_buffer(80)
    while True:
        ctypes.memset(req, 0, 80)
        if libc.ioctl(listener[0], RECV, req) < 0:
            if ctypes.get_errno() in (4, 2):  # EINTR, ENOENT (the caller went away)
                continue
            return
        resp = ctypes.create_string_buffer(struct.pack("<QqiI", struct.unpack_from("<Q", req)[0], 5, 0, 0), 24)
        libc.ioctl(listener[0], SEND, resp)

threading.Thread(target=supervise, daemon=True).start()
ins = [(0x20, 0, 0, 0), (0x15, 0, 3, 444), (0x20, 0, 0, 32), (0x15, 0, 1, 1), (0x06, 0, 0, 0x7FC00000),
       (0x06, 0, 0, 0x7FFF0000)]  # nr == landlock_create_ruleset && flags == VERSION: ask the supervisor; else allow
code = b"".join(struct.pack("<HBBI", *i) for i in ins)
filt = ctypes.create_string_buffer(code, len(code))
prog = struct.pack("<HxxxxxxQ", len(ins), ctypes.addressof(filt))
fd = libc.syscall(ctypes.c_long(317), ctypes.c_long(1), ctypes.c_long(8), ctypes.c_char_p(prog))  # NEW_LISTENER
assert fd >= 0, ctypes.get_errno()
listener.append(fd)
ready.set()
abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_long(0), ctypes.c_long(1))
assert abi == 5, abi  # what the spawn paths now see
git = subprocess.Popen(["/bin/sleep", "60"], cwd=mirror, user=uid, group=gid, extra_groups=[], env={"GIT_DIR": "."})
try:
    assert os.readlink(f"/proc/{git.pid}/cwd") == mirror  # control: the "git" runs, in the mirror
    sandbox = TenantSandbox(run_as=RunAs(user="tenant", uid=uid, gid=gid, home=home), tmp_dir=Path(tmp))
    argv = ["/usr/bin/python3", "-I", "-c", tenant, str(git.pid)]
    if how == "wrapper":
        wrapper = spawn_mod.find_wrapper()
        assert wrapper is not None, spawn_mod.unavailable_reason()
        done = subprocess.run([*spawn_mod.wrapper_argv(wrapper, sandbox, Path(home), None), *argv], env={},
                              capture_output=True, text=True)
    else:
        done = subprocess.run(argv, env={}, capture_output=True, text=True, **sandbox.popen_kwargs(Path(home)))
    assert done.returncode == 0, done.stderr
    print(done.stdout)
finally:
    git.kill()
    git.wait()
"""


@pytest.fixture
async def tenant() -> AsyncIterator[tuple[RunAs, Path, Path]]:
    """A real project user; its mirror (tenant-owned, holding a config) and its service's tmp dir (root's parent)."""
    root = traversable_tmpdir("inkmcp-rt5-ptrace-")
    project_id = uuid.uuid4().hex
    try:
        run_as = await ensure_project_user(project_id, root / "homes")
        assert run_as is not None
        ensure_owned_dir(root, "mirror", run_as, 0o700)
        (root / "mirror" / "config").write_text(MIRROR_MARK)
        os.chown(root / "mirror" / "config", run_as.uid, run_as.gid)
        svc = root / "svc"
        svc.mkdir(mode=0o711)
        ensure_owned_dir(svc, "tmp", run_as, 0o700)
        yield run_as, root / "mirror", svc / "tmp"
    finally:
        await delete_project_user(project_id, root / "homes")
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("how", ["wrapper", "preexec"])
async def test_an_app_cannot_reach_its_git_processes_on_landlock_abi_5(
    how: str, tenant: tuple[RunAs, Path, Path]
) -> None:
    """Seen ABI 5: before, the app listed its mirror through /proc/<git>/cwd, read its config, counted the host's
    /tmp and read git's environment; now none of it (the process is not even listed: hidepid=2 lists only what the
    reader may ptrace-read), and a rename or link across its directories still works."""
    assert os.uname().machine == "x86_64", "the seccomp filter and ioctl numbers here are x86_64's"
    if how == "wrapper":
        assert spawn_mod.find_wrapper() is not None, spawn_mod.unavailable_reason()
    run_as, mirror, tmp = tenant
    done = subprocess.run([sys.executable, "-c", HOLDER, how, str(run_as.uid), str(run_as.gid), str(mirror),
                           str(tmp), run_as.home, TENANT], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    # hidepid=2 shows a process only to those who may ptrace-read it: in a domain, the "git" is not even listed
    reached = {k: got[k] for k in ("cwd", "config", "host_tmp", "environ") if got[k][0] not in ("EACCES", "ENOENT")}
    assert not reached, f"the app reached its git process outside the sandbox: {reached}"
    assert got["rename"] == ["ok", ["f", "g"]], got["rename"]  # nothing a tenant did before is refused
