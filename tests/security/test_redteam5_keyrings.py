"""redteam5: kernel keyrings, the one per-process store the sandbox left shared with root and between tenants.

Keyrings belong to no namespace the sandbox makes (mount, IPC), and a process keeps its session keyring across
setresuid. Two holes, each attacked here as the tenant:

1. InkMCP's session keyring. Started by systemd (a service's default `KeyringMode=private` gives it one) or from a
   login with pam_keyinit, InkMCP has a session keyring of its own, and every tenant process inherited it: after
   the drop to the project's uid the process still *possesses* it, and possessor rights apply whatever the owner.
   So mallory's app read the keys root keeps there (here a `user` key standing for the operator's secret; systemd
   puts its `invocation_id` there, cifscreds and Kerberos KEYRING caches their credentials), could add, replace or
   unlink keys in it, and shared it with every other tenant's processes (a channel past every other wall). Fixed:
   each sandboxed process joins a fresh, empty session keyring of its own, as the tenant (`process.py` step 4a, the
   wrapper's `own_keyring`).
   git processes (the tenant's uid too, started by the git jail through setpriv, outside the sandbox) had it as
   well: the jail's starter now joins a keyring of its own, empty, with no permission for anyone.
2. The per-uid keyrings. A uid's user keyring (`@u`) and user session keyring (`@us`, which was also every tenant
   process's `@s` when InkMCP had no session keyring) outlive the user's processes and its `userdel`: the kernel
   keeps them as long as it runs. useradd hands a freed uid out again, so the next project given mallory's uid
   (another account's) found what she left there: a planted value under a name its software looks up, or her 200
   keys / 20,000 bytes of quota used up. Fixed: `users.clear_user_keyrings` empties both, as the uid, when a project's
   user is deleted (after its processes are killed) and when one is created.

No server: the sandbox is started the ways the provider starts it (the wrapper, and the preexec path without it),
from a root process that holds a session keyring as systemd gives one; the project's user is a real one
(`ensure_project_user`, `delete_project_user`). Under a second.
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
from tests.security.conftest import ROOT
from tests.support import traversable_tmpdir

KEYCTL = {"x86_64": 250, "aarch64": 219, "riscv64": 219}.get(os.uname().machine, 0)  # add_key is keyctl - 2
pytestmark = [pytest.mark.asyncio, ROOT]

SECRET = "OPERATOR-KEY-7f3a"

# The tenant's side: what its code finds through keyctl (argv: keyctl's number, then what to do).
TENANT = r"""
import ctypes, errno, json, sys
nr, what = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long

def keyctl(*args):
    r = libc.syscall(L(nr), *args)
    return r, errno.errorcode.get(ctypes.get_errno(), "?") if r < 0 else "ok"

def find(ring, desc):
    key, err = keyctl(L(10), L(ring), b"user", desc.encode(), L(0))  # KEYCTL_SEARCH
    if key < 0:
        return err
    buf = ctypes.create_string_buffer(256)
    n, err = keyctl(L(11), L(key), buf, L(256))  # KEYCTL_READ
    return buf.raw[:n].decode() if n >= 0 else err

out = {}
if what == "session":  # InkMCP's keyring: its key, whose keyring @s is, and whether it can write there
    out["read"] = find(-3, "inkmcp-operator")
    buf = ctypes.create_string_buffer(256)
    n, _ = keyctl(L(6), L(-3), buf, L(256))  # KEYCTL_DESCRIBE: "keyring;uid;gid;perm;name"
    out["session"] = buf.value.decode()
elif what == "plant":  # before her project is deleted: a key in each keyring the kernel keeps per uid
    for ring in (-4, -5):  # KEY_SPEC_USER_KEYRING, KEY_SPEC_USER_SESSION_KEYRING
        payload = b"planted-by-the-last-holder"
        r = libc.syscall(L(nr - 2), b"user", b"left-behind", payload, L(len(payload)), L(ring))
        out[str(ring)] = r > 0
else:  # the next project given the uid: what it finds there
    out = {str(ring): find(ring, "left-behind") for ring in (-4, -5)}
print(json.dumps(out))
"""

# Root with a session keyring of its own (systemd's KeyringMode=private), holding a key, starts the tenant's code
# the way the provider does: argv[1] "wrapper" or "preexec", then uid, gid, home.
HOLDER = r"""
import ctypes, subprocess, sys
from pathlib import Path
from inkmcp.build.plan import RunAs
from inkmcp.build.process import TenantSandbox
from inkmcp.providers.compute.local import spawn as spawn_mod
how, home, tenant = sys.argv[1], sys.argv[4], sys.argv[6]
uid, gid, nr = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
assert libc.syscall(L(nr), L(1), None) > 0, "KEYCTL_JOIN_SESSION_KEYRING"
secret = SECRET.encode()
assert libc.syscall(L(nr - 2), b"user", b"inkmcp-operator", secret, L(len(secret)), L(-3)) > 0
sandbox = TenantSandbox(run_as=RunAs(user="tenant", uid=uid, gid=gid, home=home))
argv = ["/usr/bin/python3", "-I", "-c", tenant, str(nr), "session"]
if how == "wrapper":
    wrapper = spawn_mod.find_wrapper()
    assert wrapper is not None, spawn_mod.unavailable_reason()
    done = subprocess.run([*spawn_mod.wrapper_argv(wrapper, sandbox, Path(home), None), *argv], env={},
                          capture_output=True, text=True)
else:
    done = subprocess.run(argv, env={}, capture_output=True, text=True, **sandbox.popen_kwargs(Path(home)))
assert done.returncode == 0, done.stderr
print(done.stdout)
""".replace("SECRET", repr(SECRET))


# The same root process starts the tenant's code as a git process: through the git jail, with setpriv, as
# build/source.py runs git (argv: uid, gid, keyctl's number, the tenant's code).
GIT_HOLDER = r"""
import asyncio, ctypes, sys
from inkmcp.build import gitjail
uid, gid, nr, tenant = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
libc = ctypes.CDLL(None, use_errno=True)
L = ctypes.c_long
assert libc.syscall(L(nr), L(1), None) > 0, "KEYCTL_JOIN_SESSION_KEYRING"
secret = SECRET.encode()
assert libc.syscall(L(nr - 2), b"user", b"inkmcp-operator", secret, L(len(secret)), L(-3)) > 0

async def main():
    argv = ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--",
            "/usr/bin/python3", "-I", "-c", tenant, str(nr), "session"]
    proc = await gitjail.spawn(argv, {"PATH": "/usr/bin:/bin"}, stdout=gitjail.PIPE, stderr=gitjail.PIPE)
    out, err = await proc.communicate()
    gitjail.shutdown()
    assert proc.returncode == 0, err
    print(out.decode())

asyncio.run(main())
""".replace("SECRET", repr(SECRET))


@pytest.fixture
async def tenant() -> AsyncIterator[tuple[str, Path, RunAs]]:
    """A real project user (and its home), deleted afterwards."""
    root = traversable_tmpdir("inkmcp-rt5-keys-")
    project_id, homes = uuid.uuid4().hex, root / "homes"
    try:
        run_as = await ensure_project_user(project_id, homes)
        assert run_as is not None
        yield project_id, homes, run_as
    finally:
        await delete_project_user(project_id, homes)
        shutil.rmtree(root, ignore_errors=True)


def as_tenant(run_as: RunAs, what: str) -> dict[str, object]:
    """The tenant's code run directly as its uid (no sandbox: the per-uid keyrings are the same either way)."""
    argv = ["/usr/bin/python3", "-I", "-c", TENANT, str(KEYCTL), what]
    done = subprocess.run(argv, env={}, cwd="/", user=run_as.uid, group=run_as.gid, extra_groups=[],
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("how", ["wrapper", "preexec"])
async def test_a_tenant_process_does_not_possess_inkmcps_session_keyring(
    how: str, tenant: tuple[str, Path, RunAs]
) -> None:
    """The tenant's code looks for root's key in its session keyring: before, it read it (the keyring was
    InkMCP's, kept across the uid change); now its @s is a keyring of its own, the tenant's, empty."""
    assert KEYCTL, f"keyctl's syscall number on {os.uname().machine} is not in this test"
    if how == "wrapper":
        assert spawn_mod.find_wrapper() is not None, spawn_mod.unavailable_reason()
    _, _, run_as = tenant
    done = subprocess.run([sys.executable, "-c", HOLDER, how, str(run_as.uid), str(run_as.gid), run_as.home,
                           str(KEYCTL), TENANT], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["read"] != SECRET, f"the tenant read InkMCP's key from its session keyring: {got}"
    assert got["read"] == "ENOKEY", got
    owner = got["session"].split(";")[1]
    assert owner == str(run_as.uid), f"the tenant's session keyring is not its own: {got['session']}"


async def test_keys_a_deleted_project_left_are_gone_for_the_next_holder_of_its_uid(
    tenant: tuple[str, Path, RunAs],
) -> None:
    """mallory plants a key in her uid's user and user-session keyrings, then her project is deleted; the next
    project given the uid (simulated: a process of that uid after the deletion) finds nothing. Before: both keys."""
    assert KEYCTL, f"keyctl's syscall number on {os.uname().machine} is not in this test"
    project_id, homes, run_as = tenant
    planted = as_tenant(run_as, "plant")
    assert planted == {"-4": True, "-5": True}, planted  # control: she could plant
    await delete_project_user(project_id, homes)
    found = as_tenant(run_as, "find")
    assert found == {"-4": "ENOKEY", "-5": "ENOKEY"}, f"the uid's next holder found the last one's keys: {found}"


async def test_a_git_process_does_not_possess_inkmcps_session_keyring(tenant: tuple[str, Path, RunAs]) -> None:
    """git runs as the tenant's uid (setpriv, in the git jail): before, it possessed InkMCP's session keyring and
    read root's key there; now the jail's starter has one of its own, empty and closed to everyone."""
    assert KEYCTL, f"keyctl's syscall number on {os.uname().machine} is not in this test"
    _, _, run_as = tenant
    done = subprocess.run([sys.executable, "-c", GIT_HOLDER, str(run_as.uid), str(run_as.gid), str(KEYCTL), TENANT],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert got["read"] != SECRET, f"a git process read InkMCP's key from its session keyring: {got}"
    assert got["read"] in ("ENOKEY", "EACCES"), got
