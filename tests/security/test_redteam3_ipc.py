"""redteam3: SysV IPC and POSIX message queues were the host's, shared by every tenant and never freed.

The sandbox gave each tenant process a mount namespace (private /tmp, /dev/shm, /proc) but left it in the
host's IPC namespace. So mallory's code could:

- leave SysV shared memory, message queues and semaphore sets that every other tenant's code opens by key
  (mode 0666): a channel past every other wall, from her build steps too (her POSIX message queues, which
  the sandbox's umask 077 leaves 0600, only counted against the host's limit);
- keep them after her processes, her service and her project were deleted: nobody removes them, and their
  pages stay charged to a cgroup that is gone, so deploy, fill, delete repeats without bound;
- count them against the host's limits: 4096 shm ids (kernel.shmmni), 256 POSIX queues. Holding every shm id
  leaves PostgreSQL unable to start ("could not create shared memory segment: No space left on device"), so
  the control plane and every tenant database stay down after their next restart. Not performed here (it
  would take the box's other servers with it): the tests show her objects are in the host's namespace,
  which is what the exhaustion needs.

Fix: every tenant process enters an IPC namespace of its own (`inkmcp/build/process.py` step 3b,
`inkspawn.c`). Each test reads what the attacker's code (or her victim's) saw, inside the labs.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ROOT, lab_exec, lab_live, lab_repo, session, whoami
from tests.support import ServerProc, call

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: deploys labs on the shared server

ALICE_PROJECT = "rt3-ipc-alice"
MALLORY_PROJECT = "rt3-ipc-mallory"

# What the lab runs (stdlib ctypes): plant objects under a key / name, or look for them and read them.
IPC_LIB = r'''
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmget.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmat.restype = ctypes.c_void_p
libc.shmdt.argtypes = [ctypes.c_void_p]
libc.msgget.argtypes = [ctypes.c_int, ctypes.c_int]
libc.msgsnd.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
libc.msgrcv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_long, ctypes.c_int]
libc.msgrcv.restype = ctypes.c_ssize_t
libc.semget.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
libc.mq_send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint]
libc.mq_receive.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
libc.mq_receive.restype = ctypes.c_ssize_t
IPC_CREAT, IPC_NOWAIT, SHM_RDONLY = 0o1000, 0o4000, 0o10000
SHMAT_FAILED = ctypes.c_void_p(-1).value


def ok(rc, failed=-1):
    if rc == failed:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return rc


class Msg(ctypes.Structure):
    _fields_ = [("mtype", ctypes.c_long), ("mtext", ctypes.c_char * 128)]


def plant(key, mq, marker):
    data = marker.encode()
    sid = ok(libc.shmget(key, 4096, IPC_CREAT | 0o666))
    addr = ok(libc.shmat(sid, None, 0), SHMAT_FAILED)
    ctypes.memmove(addr, data, len(data))
    libc.shmdt(addr)
    qid = ok(libc.msgget(key, IPC_CREAT | 0o666))
    ok(libc.semget(key, 1, IPC_CREAT | 0o666))
    fd = ok(libc.mq_open(mq.encode(), os.O_CREAT | os.O_WRONLY, 0o666, None))
    for _ in range(2):  # one for the planter's own look (reading takes it), one for whoever comes next
        ok(libc.msgsnd(qid, ctypes.byref(Msg(1, data)), len(data), IPC_NOWAIT))
        ok(libc.mq_send(fd, data, len(data), 0))
    os.close(fd)


def read_shm(key):
    addr = ok(libc.shmat(ok(libc.shmget(key, 0, 0)), None, SHM_RDONLY), SHMAT_FAILED)
    try:
        return ctypes.string_at(addr, 128).rstrip(b"\0").decode()
    finally:
        libc.shmdt(addr)


def read_msg(key):
    m = Msg()
    n = ok(libc.msgrcv(ok(libc.msgget(key, 0)), ctypes.byref(m), 128, 0, IPC_NOWAIT))
    return m.mtext[:n].decode()


def read_mq(name):
    fd = ok(libc.mq_open(name.encode(), os.O_RDONLY | os.O_NONBLOCK, 0, None))
    try:
        buf = ctypes.create_string_buffer(1 << 16)
        n = ok(libc.mq_receive(fd, buf, 1 << 16, None))
        return buf.raw[:n].decode()
    finally:
        os.close(fd)


def look(key, mq):
    return {"shm": attempt(read_shm, key), "msg": attempt(read_msg, key),
            "sem": attempt(lambda: ok(libc.semget(key, 0, 0))), "mq": attempt(read_mq, mq)}
'''

PLANT = IPC_LIB + '\nplant(ARGS["key"], ARGS["mq"], ARGS["marker"])\nresult = look(ARGS["key"], ARGS["mq"])\n'
LOOK = IPC_LIB + '\nresult = {str(k): look(k, mq) for k, mq in ARGS["targets"]}\n'


def target() -> tuple[int, str, str]:
    """A fresh SysV key, POSIX queue name and marker, so no other run's objects are ever looked at."""
    token = secrets.token_hex(6)
    return secrets.randbelow(1 << 30) + (1 << 20), f"/rt3-{token}", f"MALLORY-IPC-{token}"


def host_keys() -> set[int]:
    """The SysV keys in the host's IPC namespace (the one PostgreSQL's postmaster allocates its segment in)."""
    keys = set()
    for kind in ("shm", "msg", "sem"):
        for line in Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]:
            keys.add(int(line.split()[0]))
    return keys


def nothing_found(seen: dict[str, Any]) -> dict[str, Any]:
    """What was found (anything but ENOENT) per key and kind: empty when every look failed with ENOENT."""
    return {f"{key}/{kind}": got for key, kinds in seen.items() for kind, got in kinds.items() if got[0] != "ENOENT"}


@pytest.fixture(scope="module")
async def labs(server: ServerProc, repos: Path) -> dict[str, Any]:
    """alice's lab, and mallory's, whose build step plants objects of its own and leaves (`build`)."""
    build = target()
    key, mq, marker = build
    planter = IPC_LIB + f"\nplant({key}, {mq!r}, {marker!r})\nprint('planted', {key}, flush=True)\n"
    mallory_repo = lab_repo(repos, "rt3-ipc-mallory-lab", {"plant.py": planter})
    async with session(server, "alice") as a:
        alice = await lab_live(a, lab_repo(repos, "rt3-ipc-alice-lab"), "alice", project_name=ALICE_PROJECT)
    async with session(server, "mallory") as m:
        mallory = await lab_live(m, mallory_repo, "mallory", project_name=MALLORY_PROJECT,
                                 build_command="python3 plant.py")
    return {"alice": alice, "mallory": mallory, "build": build}


async def test_another_tenant_never_sees_a_tenants_ipc_objects(server: ServerProc, labs: dict[str, Any]) -> None:
    """mallory's app and her build step leave SysV shm (with a marker), a message queue (with a message), a
    semaphore set and a POSIX queue (with a message), all mode 0666. alice's app, another tenant, finds none
    of them (ENOENT for each; before the fix it read both markers from the segments and the queues, and got
    EACCES, not ENOENT, for the POSIX queue), and the host's IPC namespace holds none of her keys, so they
    cannot count against the host's kernel.shmmni."""
    key, mq, marker = target()
    own = lab_exec(server, labs["mallory"]["url"], PLANT, key=key, mq=mq, marker=marker)
    # control: inside her own namespace the objects exist and hold the marker
    assert own["shm"] == ["ok", marker] and own["msg"] == ["ok", marker] and own["mq"] == ["ok", marker], own
    assert own["sem"][0] == "ok", own

    build_key, build_mq, _ = labs["build"]
    seen = lab_exec(server, labs["alice"]["url"], LOOK, targets=[[key, mq], [build_key, build_mq]])
    assert not nothing_found(seen), f"alice's app reached mallory's IPC objects: {nothing_found(seen)}"
    assert not {key, build_key} & host_keys(), "mallory's SysV objects are in the host's IPC namespace"


async def test_ipc_objects_never_outlive_the_deleted_project(server: ServerProc, repos: Path,
                                                             labs: dict[str, Any]) -> None:
    """mallory plants the same objects from a second project's app, then deletes that project. Afterwards her
    remaining app (another project, another uid) finds none of them and the host holds none of her keys:
    nothing of the deleted project keeps memory or ids (before the fix the segment, with its marker, stayed
    in the host's namespace after the project and its user were gone)."""
    key, mq, marker = target()
    project = "rt3-ipc-gone"
    async with session(server, "mallory") as m:
        gone = await lab_live(m, lab_repo(repos, "rt3-ipc-gone-lab"), "mallory", project_name=project)
        uid = whoami(server, gone["url"])["uid"]
        assert uid != whoami(server, labs["mallory"]["url"])["uid"]
        own = lab_exec(server, gone["url"], PLANT, key=key, mq=mq, marker=marker)
        assert own["shm"] == ["ok", marker], own
        await call(m, "delete", project_name=project, confirm=project)

    seen = lab_exec(server, labs["mallory"]["url"], LOOK, targets=[[key, mq]])
    assert not nothing_found(seen), f"the deleted project's IPC objects are still there: {nothing_found(seen)}"
    assert key not in host_keys(), "the deleted project's SysV objects stay in the host's IPC namespace"
