"""What mallory's running code can reach of alice's: findings 4, 4b and 19, held items 11-13, 15 and 16.

#4: git mirrors under the data dir were world-readable, so mallory's app read alice's source with
`git --git-dir=... show`. #4b: checkouts were world-readable while a deploy ran. #19: /tmp, /var/tmp
and /dev/shm were shared with the host and every tenant. Held: alice's /proc entries and signals (#11,
#15), the data dir's secrets and the control-plane socket (#12, #13).

Each attack runs inside mallory's lab. To give the attacker every advantage, root tells the lab the
exact paths of alice's files (found by walking the data dir as root) and alice's pid.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.security.conftest import ALICE_SECRET, ROOT, lab_exec, lab_live, lab_repo, session, via_proxy, whoami
from tests.support import ServerProc, git_commit

pytestmark = [pytest.mark.asyncio, pytest.mark.slow, ROOT]  # slow: starts or shares a real server

ALICE_V2_SECRET = "ALICE_V2_SECRET=s3cr3t-v2-7788"
SECRETS = (ALICE_SECRET, ALICE_V2_SECRET, "ALICE_SECRET_TOKEN_9f8e7d")
WATCH_SECONDS = 2.5  # mallory polls at least this long, alice's whole redeploy included

# Try every path root found: list directories, read files (also zlib-inflated: loose git objects),
# and ask git itself for the history of anything that looks like a repository.
READ_PATHS = r'''
import os, subprocess, zlib

def seen(data):
    try:
        data = data + zlib.decompress(data)
    except zlib.error:
        pass
    return [s for s in ARGS["secrets"] if s.encode() in data]

report = {}
for path in ARGS["paths"]:
    listed = attempt(os.listdir, path)
    if listed[0] == "ENOTDIR":
        got = attempt(lambda: open(path, "rb").read(4 << 20))
        report[path] = [got[0], seen(got[1]) if got[0] == "ok" else got[1]]
    else:
        report[path] = [listed[0], []]
    if os.path.basename(path) in ("objects", "refs") or path.endswith(".git"):
        repo = path if path.endswith(".git") else os.path.dirname(path)
        git = subprocess.run(["git", "-c", "safe.directory=*", "--git-dir", repo, "log", "--all", "-p"],
                             capture_output=True, timeout=30)
        report["git:" + repo] = [git.returncode, seen(git.stdout + git.stderr)]
result = report
'''

# #4b: poll the work dir and the mirrors while alice deploys, reading whatever appears.
WATCH = r'''
import os, threading, time

def watch(roots, stop, found):
    found["rounds"] = 0
    while not stop.is_set():
        found["rounds"] += 1
        for root in roots:
            for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: found["errors"].add(e.errno)):
                for name in filenames:
                    path = os.path.join(dirpath, name)
                    try:
                        with open(path, "rb") as f:
                            data = f.read(1 << 20)
                    except OSError as e:
                        found["errors"].add(e.errno)
                        continue
                    found["read"].add(path)
                    for s in ARGS["secrets"]:
                        if s.encode() in data:
                            found["leaks"].add(f"{path}: {s}")
        time.sleep(0.005)

if ARGS["action"] == "start":
    STATE["watch"] = {"stop": threading.Event(), "found": {"errors": set(), "read": set(), "leaks": set()}}
    STATE["watch"]["started"] = time.monotonic()
    threading.Thread(target=watch, args=(ARGS["roots"], STATE["watch"]["stop"], STATE["watch"]["found"]),
                     daemon=True).start()
else:
    w = STATE.pop("watch")
    w["stop"].set()
    time.sleep(0.1)
    f = w["found"]
    result = {"seconds": time.monotonic() - w["started"], "rounds": f["rounds"], "errors": sorted(f["errors"]),
              "read": sorted(f["read"]), "leaks": sorted(f["leaks"])}
'''

TARGET_ALICE = r'''
import os, signal
pid = ARGS["pid"]
result = {
    "environ": attempt(lambda: open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace"))[0],
    "cwd": attempt(os.readlink, f"/proc/{pid}/cwd")[0],
    "root": attempt(os.listdir, f"/proc/{pid}/root/")[0],
    "cmdline": attempt(lambda: open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace"))[0],
    "cgroup": attempt(lambda: open(f"/proc/{pid}/cgroup").read())[0],
    "listed": str(pid) in os.listdir("/proc"),
    "kill0": attempt(os.kill, pid, 0)[0],
    "sigstop": attempt(os.kill, pid, signal.SIGSTOP)[0],
    "sigterm": attempt(os.kill, pid, signal.SIGTERM)[0],
}
'''

BIND = r'''
import socket
result = {}
for reuse in (False, True):
    s = socket.socket()
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    result["reuseport" if reuse else "plain"] = attempt(s.bind, ("0.0.0.0", ARGS["port"]))[0]
    s.close()
'''

READ_SECRETS = r'''
import os, socket
result = {}
for path in ARGS["files"]:
    result[path] = attempt(lambda: open(path, "rb").read().decode(errors="replace"))[0]
for path in ARGS["sockets"]:
    s = socket.socket(socket.AF_UNIX)
    result[path] = attempt(s.connect, path)[0]
    s.close()
'''

WRITE_TMP = r'''
import os
result = {}
for path in ARGS["paths"]:
    def write():
        with open(path, "w") as f:
            f.write("mallory was here\n")
        return open(path).read()
    result[path] = attempt(write)
'''

SEE_TMP = r'''
import os
result = {path: os.path.lexists(path) for path in ARGS["paths"]}
'''


def walk_as_root(data_dir: Path, uid: int, attacker_uid: int) -> list[str]:
    """Paths under the data dir that hold other projects' source: owned by alice's uid, git dirs, or
    files with her secret. The attacker's own tree is left out (she may read her own files)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(data_dir):
        if Path(dirpath) == data_dir:
            dirnames[:] = [d for d in dirnames if d != "pg"]  # the databases are tested separately
        dirnames[:] = [d for d in dirnames if (Path(dirpath) / d).lstat().st_uid != attacker_uid]
        for name in (*dirnames, *filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            if st.st_uid == attacker_uid:
                continue
            interesting = st.st_uid == uid or name in ("objects", "refs") or name.endswith(".git")
            if not interesting and p.is_file() and not p.is_symlink() and st.st_size < (4 << 20):
                data = p.read_bytes()
                try:
                    data += zlib.decompress(data)
                except zlib.error:
                    pass
                interesting = any(s.encode() in data for s in SECRETS)
            if interesting:
                found.append(str(p))
    return found


@pytest.fixture(scope="module")
async def labs(server: ServerProc, repos: Path) -> dict[str, Any]:
    alice_repo = lab_repo(repos, "alice-private", {"notes.txt": f"alice private notes: {ALICE_SECRET}\n"})
    async with session(server, "alice") as a:
        alice = await lab_live(a, alice_repo, "alice", env_vars={"SECRET_TOKEN": SECRETS[2]})
    async with session(server, "mallory") as m:
        mallory = await lab_live(m, lab_repo(repos, "mallory-lab"), "mallory")
    return {"alice": alice, "mallory": mallory, "alice_repo": alice_repo,
            "alice_who": whoami(server, alice["url"]), "mallory_who": whoami(server, mallory["url"])}


async def test_other_projects_mirrors_and_checkouts_are_unreadable(server: ServerProc, labs: dict[str, Any]) -> None:
    """#4: given the exact paths of alice's mirrors and files, mallory's code lists and reads none of them."""
    data = server.data_dir
    paths = walk_as_root(data, labs["alice_who"]["uid"], labs["mallory_who"]["uid"])
    assert any("objects" in p for p in paths), f"no git mirror of alice's repo found under {data}: {paths[:20]}"
    fixed = [str(data / "work"), str(data / "compute" / "projects")]
    report = lab_exec(server, labs["mallory"]["url"], READ_PATHS, paths=fixed + paths[:3000], secrets=list(SECRETS))
    leaks = {p: r for p, r in report.items() if r[1] and isinstance(r[1], list)}
    assert leaks == {}, f"mallory read alice's source: {leaks}"
    readable = [p for p, r in report.items() if r[0] == "ok" and not p.startswith("git:")]
    assert readable == [], f"mallory could list or read alice's files: {readable[:20]}"
    assert report[fixed[0]][0] == "EACCES", report[fixed[0]]  # <data>/work: root 0700
    assert report[fixed[1]][0] == "EACCES", report[fixed[1]]  # <data>/compute/projects: root 0711
    # the layout that makes it so, seen by root: alice's mirrors are hers alone
    projects = data / "compute" / "projects"
    assert (projects.stat().st_uid, projects.stat().st_mode & 0o777) == (0, 0o711)
    mirrors = [p for p in projects.glob("*/mirrors") if p.stat().st_uid == labs["alice_who"]["uid"]]
    assert len(mirrors) == 1 and mirrors[0].stat().st_mode & 0o777 == 0o700, list(projects.glob("*/mirrors"))


async def test_checkouts_are_unreadable_while_alice_deploys(server: ServerProc, labs: dict[str, Any]) -> None:
    """#4b: mallory polls the work dir and the mirrors during alice's redeploy; she reads nothing of it."""
    data = server.data_dir
    roots = [str(data / "work" / "checkouts"), str(data / "work"), str(data)]
    mallory_url = labs["mallory"]["url"]
    lab_exec(server, mallory_url, WATCH, action="start", roots=roots, secrets=list(SECRETS))
    started = time.monotonic()
    try:
        git_commit(labs["alice_repo"], {"config.env": ALICE_V2_SECRET + "\n"}, "v2 with a new secret")
        async with session(server, "alice") as a:
            dep = await lab_live(a, labs["alice_repo"], "alice", env_vars={"SECRET_TOKEN": SECRETS[2]})
        assert dep["deployment_id"] != labs["alice"]["deployment_id"]
        await asyncio.sleep(max(0.0, WATCH_SECONDS - (time.monotonic() - started)))  # the attack's duration
    finally:
        seen = lab_exec(server, mallory_url, WATCH, action="stop", roots=roots, secrets=[])
    assert seen["rounds"] > 1 and seen["seconds"] >= WATCH_SECONDS, seen
    assert seen["leaks"] == [], seen["leaks"]
    in_work = [p for p in seen["read"] if p.startswith(str(data / "work"))]
    assert in_work == [], f"mallory read files of the work dir (checkouts, mirrors): {in_work[:20]}"


async def test_alice_processes_are_out_of_reach(server: ServerProc, labs: dict[str, Any]) -> None:
    """#11, #15 (held): /proc/<alice pid>/environ, cwd, root and signals are all refused to mallory.

    Since tenant processes see their own /proc with hidepid=2, alice's pid does not even exist there
    (ENOENT: not her command line nor her cgroup path, the review's partial leak); EACCES would mean the
    entry is visible but closed."""
    pid = whoami(server, labs["alice"]["url"])["pid"]  # now: another test may have redeployed alice
    seen = lab_exec(server, labs["mallory"]["url"], TARGET_ALICE, pid=pid)
    assert seen["environ"] == seen["cwd"] == seen["root"] == seen["cmdline"] == seen["cgroup"] == "ENOENT", seen
    assert seen["listed"] is False, seen
    assert seen["kill0"] == seen["sigstop"] == seen["sigterm"] == "EPERM", seen
    assert whoami(server, labs["alice"]["url"])["pid"] == pid  # alice's app never noticed


async def test_alice_port_cannot_be_taken_over(server: ServerProc, labs: dict[str, Any]) -> None:
    """#16 (held): mallory binds alice's app port, plain and with SO_REUSEPORT: refused both times.

    EPERM from the bind guard (providers/compute/local/bindguard.py: a project may bind only its own runs'
    ports) where it runs, as root here; EADDRINUSE where it does not (the port is alice's, and held)."""
    alice = whoami(server, labs["alice"]["url"])
    seen = lab_exec(server, labs["mallory"]["url"], BIND, port=alice["port"])
    assert seen in ({"plain": "EPERM", "reuseport": "EPERM"}, {"plain": "EADDRINUSE", "reuseport": "EADDRINUSE"}), seen
    assert via_proxy(server, labs["alice"]["url"]).text == "alice says hi"


async def test_data_dir_secrets_and_control_socket_are_unreadable(server: ServerProc, labs: dict[str, Any]) -> None:
    """#12, #13 (held): encryption keys, MAC key, Postgres passwords, pgdata, the control socket."""
    data = server.data_dir
    files = [p for p in (data / "secrets").iterdir() if p.is_file()]
    files += [data / "pg" / "tenants.superuser-password", data / "pg" / "control" / "PG_VERSION",
              data / "pg" / "control" / "postgresql.conf", data / "pg" / "tenants" / "pg_hba.conf", data / "serve.lock"]
    files = [p for p in files if p.exists()]
    assert len(files) >= 4, files
    sockets = [str(p) for p in (data / "pg" / "control").glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    seen = lab_exec(server, labs["mallory"]["url"], READ_SECRETS, files=[str(p) for p in files], sockets=sockets)
    opened = {p: r for p, r in seen.items() if r not in ("EACCES", "EPERM")}
    assert opened == {}, f"mallory opened InkMCP's secrets: {opened}"


async def test_tmp_and_shm_are_private_per_service(server: ServerProc, labs: dict[str, Any]) -> None:
    """#19: what mallory writes to /tmp, /var/tmp and /dev/shm is neither on the host nor visible to alice."""
    tag = secrets.token_hex(6)
    paths = [f"/tmp/mallory-was-here-{tag}", f"/var/tmp/mallory-was-here-{tag}", f"/dev/shm/mallory-{tag}"]
    try:
        wrote = lab_exec(server, labs["mallory"]["url"], WRITE_TMP, paths=paths)
        assert wrote[paths[0]] == ["ok", "mallory was here\n"], wrote  # apps still get a working /tmp
        on_host = [p for p in paths if os.path.lexists(p)]
        assert on_host == [], f"mallory's files landed in the host's shared temp dirs: {on_host}"
        alice_sees = lab_exec(server, labs["alice"]["url"], SEE_TMP, paths=paths)
        assert alice_sees == {p: False for p in paths}, alice_sees
    finally:
        for p in paths:  # only if isolation failed: the test's own marker files
            if os.path.lexists(p):
                os.unlink(p)
