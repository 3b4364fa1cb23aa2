"""Issue 11 item 2, attacked: a process running as the project's own Unix user watches every process it can during a
private fetch (`/proc/*/environ`, `/proc/*/cmdline`, and the writable memory of every process of its uid through
`/proc/PID/mem`, which this kernel allows: no Yama) and never finds the GitHub token, because git reads through
InkMCP's loopback proxy (inkmcp/github/git_proxy.py) and holds no credential.

The same attacker is first pointed at a git process given the token the old way (an `http.extraHeader` in its
environment): it finds it, so a clean result below means the defence, not a blind attacker.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inkmcp.build.plan import RunAs
from inkmcp.build.source import GitAuth, SourcePolicy, SourceWorkspace, fetch_commit, origin_of
from inkmcp.github.standin import StandinGitHub
from tests.github_support import unique_login
from tests.requirements import require, require_root

ATTACKER = r'''
import os, sys, re
secrets = [s.encode() for s in sys.stdin.read().split()]
me = os.getpid()
uid = os.getuid()
seen, hits = set(), set()
stop = sys.argv[1]
def scan(data, where):
    for s in secrets:
        if s in data:
            hits.add(where)
while not os.path.exists(stop):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
            seen.add(cmd.replace(b"\0", b" ").decode(errors="replace")[:200])
            scan(cmd, f"cmdline {pid}")
            with open(f"/proc/{pid}/environ", "rb") as f:
                scan(f.read(), f"environ {pid}")
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
                for line in maps:
                    span, perms = line.split()[:2]
                    if not perms.startswith("rw"):
                        continue
                    lo, hi = (int(x, 16) for x in span.split("-"))
                    if hi - lo > 64 << 20:
                        continue
                    try:
                        mem.seek(lo)
                        scan(mem.read(hi - lo), f"memory {pid}")
                    except (OSError, ValueError, OverflowError):
                        pass
        except (OSError, ValueError):
            pass
print("SEEN", *sorted(seen), sep="\n")
print("HITS", *sorted(hits), sep="\n")
'''


@pytest.fixture(scope="module")
def tenant() -> Iterator[RunAs]:
    require_root("runs git and the attacker as a throwaway project user")
    require("root", shutil.which("useradd") is not None and shutil.which("setpriv") is not None,
            "needs useradd (passwd) and setpriv (util-linux)")
    name = f"inkt-gh-{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    try:
        uid = int(subprocess.run(["id", "-u", name], check=True, capture_output=True, text=True).stdout)
        gid = int(subprocess.run(["id", "-g", name], check=True, capture_output=True, text=True).stdout)
        yield RunAs(user=name, uid=uid, gid=gid, home="/nonexistent")
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


class Attacker:
    """The attack script running as `user` until stopped; `report()` gives (processes seen, where secrets were)."""

    def __init__(self, user: RunAs, secrets: list[str], tmp: Path) -> None:
        self.stop_file = tmp / f"stop-{uuid.uuid4().hex}"
        self.proc = subprocess.Popen(
            ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--",
             "/usr/bin/python3", "-c", ATTACKER, str(self.stop_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
        assert self.proc.stdin is not None
        self.proc.stdin.write(" ".join(secrets))
        self.proc.stdin.close()
        self.proc.stdin = None  # communicate() then only reads

    def report(self) -> tuple[list[str], list[str]]:
        self.stop_file.touch()
        try:
            out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # our own child, by its handle
            out, err = self.proc.communicate()
        assert self.proc.returncode == 0, err
        seen_part, _, hits_part = out.partition("HITS\n")
        return seen_part.removeprefix("SEEN\n").splitlines(), hits_part.splitlines()


@pytest.fixture
def base() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="inkmcp-ghtok-", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def workspace(base: Path, user: RunAs) -> SourceWorkspace:
    mirrors, locks = base / "mirrors", base / "locks"
    mirrors.mkdir(mode=0o700)
    locks.mkdir(mode=0o700)
    os.chown(mirrors, user.uid, user.gid)
    return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=user)


def wanted(token: str) -> list[str]:
    return [token, base64.b64encode(f"x-access-token:{token}".encode()).decode()]


async def test_a_tenant_process_never_sees_the_token_during_a_private_fetch(
        github_standin: StandinGitHub, tenant: RunAs, base: Path) -> None:
    owner = github_standin.add_user(unique_login("iso"))
    repo = github_standin.create_repo(owner.login, "secret-app", private=True, files={"app.py": "print(1)\n"})
    url = github_standin.html_url(repo)
    token = github_standin.state.issue_token(owner.id)

    # the attacker works: git given the token the old way (environment) is caught, as the tenant's own process
    old_env = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "GIT_TERMINAL_PROMPT": "0",
               **dict(GitAuth(token).env(url))}
    attacker = Attacker(tenant, wanted(token), base)
    time.sleep(0.3)
    github_standin.git_latency = 0.5
    try:
        subprocess.run(["setpriv", f"--reuid={tenant.uid}", f"--regid={tenant.gid}", "--clear-groups", "--",
                        "git", "ls-remote", url], env=old_env, cwd="/", capture_output=True, check=True, timeout=60)
    finally:
        github_standin.git_latency = 0.0
    _, hits = attacker.report()
    assert any(h.startswith("environ") for h in hits), hits

    # InkMCP's fetch as that same tenant: git runs and is watched, the token is nowhere the tenant can read
    trusted = SourcePolicy(allow_local=False, trusted_origins=frozenset({origin_of(github_standin.url)}))
    attacker = Attacker(tenant, wanted(token), base)
    time.sleep(0.3)
    github_standin.git_latency = 0.5  # every git HTTP answer waits: the fetch lasts seconds under watch
    try:
        fetched = await fetch_commit(url, None, workspace=workspace(base, tenant), policy=trusted,
                                     auth=GitAuth(token))
    finally:
        github_standin.git_latency = 0.0
    seen, hits = attacker.report()
    assert fetched.sha == github_standin.state.head(repo)
    assert any("git" in s and ("fetch" in s or "remote-http" in s) for s in seen), seen  # it watched git run
    assert hits == [], hits
    assert sys.platform == "linux"
    # the secret URL git was given dies with the fetch: a copy read from git's environment opens nothing after it
    from inkmcp.github.git_proxy import proxy

    assert proxy()._grants == {}, "the fetch's proxy grant outlived the fetch"


async def test_the_proxy_reads_only_the_registered_repository_and_only_until_it_expires(
        github_standin: StandinGitHub) -> None:
    """What the secret URL is worth to whoever reads it: upload-pack reads of that one repository, for the fetch."""
    import httpx

    from inkmcp.github.git_proxy import proxy

    owner = github_standin.add_user(unique_login("px"))
    repo = github_standin.create_repo(owner.login, "app", private=True, files={"a": "a"})
    other = github_standin.create_repo(owner.login, "other", private=True, files={"b": "b"})
    header = GitAuth(owner.token).header
    base = await proxy().register(github_standin.html_url(repo), header, ttl=30)
    async with httpx.AsyncClient(timeout=10) as http:
        ok = await http.get(f"{base}/info/refs", params={"service": "git-upload-pack"})
        assert ok.status_code == 200 and b"refs/heads/main" in ok.content
        for method, path in (("GET", "/info/refs?service=git-receive-pack"), ("POST", "/git-receive-pack"),
                             ("GET", "/HEAD"), ("GET", "/../other/info/refs?service=git-upload-pack")):
            assert (await http.request(method, base + path)).status_code == 404, path
        forged = base.rsplit("/", 1)[0] + "/" + "x" * 43
        assert (await http.get(f"{forged}/info/refs", params={"service": "git-upload-pack"})).status_code == 404
        proxy().revoke(base)
        assert (await http.get(f"{base}/info/refs", params={"service": "git-upload-pack"})).status_code == 404
        expired = await proxy().register(github_standin.html_url(other), header, ttl=0.0)
        time.sleep(0.01)
        assert (await http.get(f"{expired}/info/refs", params={"service": "git-upload-pack"})).status_code == 404
    assert "x-access-token" not in repr(proxy().requests) and owner.token not in repr(proxy().requests)


async def test_a_stranger_without_the_secret_cannot_make_the_proxy_hold_a_body() -> None:
    """Any local uid can reach the proxy's port. A POST announcing 60 MB without a live secret is answered 404 on
    its request line, with no `100 Continue` and the connection closed: the proxy never waits for, nor buffers,
    a stranger's body (before, it read up to 64 MiB per connection first, then said 404)."""
    import asyncio

    from inkmcp.github.git_proxy import proxy

    await proxy().start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy().port)
    try:
        writer.write(b"POST /" + b"x" * 43 + b"/git-upload-pack HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/x-git-upload-pack-request\r\nContent-Length: 60000000\r\n"
                     b"Expect: 100-continue\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # to EOF: the proxy closes without the body
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
    assert b" 100 " not in answer.split(b"\r\n", 1)[0] and b"100 Continue" not in answer
