"""Fetching and checking out real git repositories: mirrors, tenant rights, SSRF refusals, size cap.

Everything is real: git and tar processes, a throwaway Unix user as the tenant (when run as root),
loopback HTTP/git-daemon servers and listeners. The SSRF tests attack loopback, link-local, private
and oddly-written addresses and assert, from the listener's side, that nothing connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.server
import os
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from inkmcp.build import source as source_mod
from inkmcp.build.plan import RunAs
from inkmcp.build.source import (
    SourcePolicy,
    SourceWorkspace,
    check_repo_url,
    redact_url,
    resolve_and_checkout,
    resolve_commit,
)
from inkmcp.errors import SourceError
from inkmcp.settings import Settings
from tests.requirements import require, require_root
from tests.support import serving

from .conftest import commit, git

MakeRepo = Callable[[dict[str, str]], Path]
ALLOW = SourcePolicy(allow_local=True)
DENY = SourcePolicy(allow_local=False)
SETTING = "INKMCP_ALLOW_LOCAL_SOURCES"


# --------------------------------------------------------------------------------------- fixtures
def _workspace(base: Path, run_as: RunAs | None) -> SourceWorkspace:
    """The layout the local provider makes: mirrors owned by the tenant 0700, locks root 0700."""
    mirrors, locks = base / "mirrors", base / "locks"
    mirrors.mkdir(mode=0o700)
    locks.mkdir(mode=0o700)
    if run_as is not None:
        os.chown(mirrors, run_as.uid, run_as.gid)
    return SourceWorkspace(mirrors_dir=mirrors, locks_dir=locks, run_as=run_as)


@pytest.fixture
def ws(tmp_path: Path) -> SourceWorkspace:
    """A workspace with no tenant: git runs as the test process (InkMCP as a normal user)."""
    return _workspace(tmp_path, None)


def _useradd(prefix: str) -> RunAs:
    require("root", shutil.which("useradd") is not None, "no useradd on PATH (Debian's passwd package)")
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True, capture_output=True)
    out = subprocess.run(["id", "-u", name], check=True, capture_output=True, text=True).stdout
    gid = subprocess.run(["id", "-g", name], check=True, capture_output=True, text=True).stdout
    return RunAs(user=name, uid=int(out), gid=int(gid), home="/nonexistent")


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[RunAs, RunAs]]:
    """Two throwaway Unix users: the project's tenant and a second, unrelated one. Deleted afterwards."""
    require_root("creates throwaway Unix users to fetch as a tenant")
    made: list[RunAs] = []
    try:
        made.append(_useradd("inkt-src-"))
        made.append(_useradd("inkt-oth-"))
        yield made[0], made[1]
    finally:
        for user in made:
            subprocess.run(["userdel", user.user], check=False, capture_output=True)


@pytest.fixture
def base() -> Iterator[Path]:
    """A temp dir other users can traverse (pytest's own tmp dirs are 0700 under root)."""
    d = Path(tempfile.mkdtemp(prefix="inkmcp-src-", dir="/tmp"))
    d.chmod(0o711)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def tenant_ws(users: tuple[RunAs, RunAs], base: Path) -> SourceWorkspace:
    return _workspace(base, users[0])


@pytest.fixture
def private_dir(base: Path) -> Path:
    """Where InkMCP stages checkouts: root 0700."""
    d = base / "checkouts"
    d.mkdir(mode=0o700)
    return d


def public_repo(base: Path, files: dict[str, str], name: str = "repo") -> Path:
    """A repo (owned by root, the test user) that every user can read, like an operator's checkout."""
    repo = base / name
    repo.mkdir(mode=0o755)
    git(repo, "init", "-q")
    commit(repo, files, "initial")
    subprocess.run(["chmod", "-R", "o+rX", str(repo)], check=True)
    return repo


def as_user(user: RunAs, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=user.uid, group=user.gid, extra_groups=[], capture_output=True,
                          text=True, cwd="/", env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})


async def checkout(url: str, ref: str | None, dest: Path, ws: SourceWorkspace, policy: SourcePolicy = ALLOW) -> str:
    return await resolve_and_checkout(url, ref, dest, workspace=ws, policy=policy)


def listener(host: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    sock.listen(16)
    return sock


def assert_no_connection(sock: socket.socket) -> None:
    """Proof from the attacked side: nothing is waiting in the listener's accept queue."""
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn, peer = sock.accept()
        conn.close()
        pytest.fail(f"the listener received a connection from {peer}")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- fetching and refs
async def test_checkout_local_path_gives_files_without_git(make_repo: MakeRepo, tmp_path: Path,
                                                           ws: SourceWorkspace) -> None:
    repo = make_repo({"app.py": "print('hi')\n", "sub/data.txt": "x\n"})
    sha = await checkout(str(repo), None, tmp_path / "out", ws)
    assert sha == git(repo, "rev-parse", "HEAD")
    assert (tmp_path / "out" / "app.py").read_text() == "print('hi')\n"
    assert (tmp_path / "out" / "sub" / "data.txt").is_file()
    assert not (tmp_path / "out" / ".git").exists()
    assert len(list(ws.mirrors_dir.iterdir())) == 1  # the mirror, and nothing of root's next to it
    assert [p.suffix for p in ws.locks_dir.iterdir()] == [".lock"]


async def test_file_url_and_refs(make_repo: MakeRepo, tmp_path: Path, ws: SourceWorkspace) -> None:
    repo = make_repo({"v.txt": "1\n"})
    first = git(repo, "rev-parse", "HEAD")
    git(repo, "tag", "v1")
    git(repo, "checkout", "-q", "-b", "feature")
    feature = commit(repo, {"v.txt": "feature\n"})
    git(repo, "checkout", "-q", "main")
    url = f"file://{repo}"
    for ref, want in ((None, first), ("main", first), ("v1", first), ("feature", feature),
                      (feature[:10], feature), ("refs/heads/feature", feature)):
        assert await resolve_commit(url, ref, workspace=ws, policy=ALLOW) == want
    await checkout(url, "feature", tmp_path / "out", ws)
    assert (tmp_path / "out" / "v.txt").read_text() == "feature\n"


async def test_redeploy_sees_new_commits(make_repo: MakeRepo, tmp_path: Path, ws: SourceWorkspace) -> None:
    repo = make_repo({"v.txt": "1\n"})
    await checkout(str(repo), None, tmp_path / "a", ws)
    second = commit(repo, {"v.txt": "2\n"})
    assert await checkout(str(repo), None, tmp_path / "b", ws) == second
    assert (tmp_path / "b" / "v.txt").read_text() == "2\n"


async def test_concurrent_checkouts_of_one_repo(make_repo: MakeRepo, tmp_path: Path, ws: SourceWorkspace) -> None:
    repo = make_repo({"v.txt": "1\n"})
    shas = await asyncio.gather(*(checkout(str(repo), None, tmp_path / f"out{i}", ws) for i in range(6)))
    assert len(set(shas)) == 1
    assert all((tmp_path / f"out{i}" / "v.txt").is_file() for i in range(6))


async def test_unknown_ref(make_repo: MakeRepo, tmp_path: Path, ws: SourceWorkspace) -> None:
    repo = make_repo({"v.txt": "1\n"})
    with pytest.raises(SourceError) as err:
        await checkout(str(repo), "no-such-branch", tmp_path / "out", ws)
    assert err.value.argument == "ref"
    default = git(repo, "symbolic-ref", "--short", "HEAD")
    assert f"this repository's branches: {default} (the default)" in (err.value.fix or "")
    with pytest.raises(SourceError) as err:
        await checkout(str(repo), "--upload-pack=evil", tmp_path / "out2", ws)
    assert err.value.argument == "ref"


async def test_an_unknown_ref_is_answered_with_the_repositorys_own_branches(
    tmp_path: Path, ws: SourceWorkspace
) -> None:
    """A repository whose default branch is `trunk`: the fix names it (it said "e.g. main", which the agent
    then passed and failed again), then the others, and says how many more there are."""
    repo = tmp_path / "trunky"
    repo.mkdir()
    git(repo, "init", "-q", "--initial-branch=trunk")
    commit(repo, {"v.txt": "1\n"}, "initial")
    for i in range(10):
        git(repo, "branch", f"feature-{i:02d}")
    commit(repo, {"v.txt": "2\n"}, "trunk moves on")
    with pytest.raises(SourceError) as err:
        await checkout(str(repo), "main", tmp_path / "out", ws)
    fix = err.value.fix or ""
    assert err.value.argument == "ref"
    assert "this repository's branches: trunk (the default), feature-00, feature-01" in fix, fix
    assert "feature-06 and 3 more" in fix, fix  # 11 branches, 8 named
    assert "e.g. main" not in fix
    # The fix's first name works.
    assert await checkout(str(repo), "trunk", tmp_path / "out2", ws) == git(repo, "rev-parse", "HEAD")


async def test_plain_directory_is_refused_with_git_init_hint(tmp_path: Path, ws: SourceWorkspace) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "app.py").write_text("")
    with pytest.raises(SourceError) as err:
        await checkout(str(tmp_path / "plain"), None, tmp_path / "out", ws)
    assert err.value.argument == "repo_url"
    assert "git init && git add -A && git commit" in (err.value.fix or "")


async def test_empty_repository(tmp_path: Path, ws: SourceWorkspace) -> None:
    repo = tmp_path / "empty"
    repo.mkdir()
    git(repo, "init", "-q")
    with pytest.raises(SourceError) as err:
        await resolve_commit(str(repo), None, workspace=ws, policy=ALLOW)
    assert err.value.argument in {"repo_url", "ref"}


async def test_a_broken_mirror_is_rebuilt(make_repo: MakeRepo, ws: SourceWorkspace) -> None:
    repo = make_repo({"v.txt": "1\n"})
    sha = await resolve_commit(str(repo), None, workspace=ws, policy=ALLOW)
    (mirror,) = ws.mirrors_dir.iterdir()
    (mirror / "HEAD").unlink()  # as if an earlier run died during `git init`
    shutil.rmtree(mirror / "objects")
    assert await resolve_commit(str(repo), None, workspace=ws, policy=ALLOW) == sha


# ------------------------------------------------------------------------------ local sources
async def test_local_sources_refused_when_not_allowed(make_repo: MakeRepo, ws: SourceWorkspace) -> None:
    repo = make_repo({"v.txt": "1\n"})
    for url in (str(repo), f"file://{repo}", "/no/such/path", "file:///etc"):
        with pytest.raises(SourceError) as err:
            await resolve_commit(url, None, workspace=ws, policy=DENY)
        assert err.value.argument == "repo_url"
        assert SETTING in err.value.message and SETTING in (err.value.fix or "")
        with pytest.raises(SourceError):
            check_repo_url(url, DENY)  # the cheap pre-check core runs before creating a project
    assert list(ws.mirrors_dir.iterdir()) == []  # refused before any git ran


async def test_tenant_reads_a_world_readable_repo_owned_by_someone_else(
    users: tuple[RunAs, RunAs], base: Path, tenant_ws: SourceWorkspace, private_dir: Path
) -> None:
    repo = public_repo(base, {"app.py": "print('ok')\n", "bin/run": "#!/bin/sh\n"})
    # git's ownership check does bite here: plain git as the tenant refuses this root-owned repo...
    plain = as_user(users[0], "git", "ls-remote", str(repo))
    assert plain.returncode != 0 and "dubious ownership" in plain.stderr
    # ...and InkMCP's fetch, running as that same tenant, gets through it.
    dest = private_dir / "co"
    sha = await checkout(str(repo), None, dest, tenant_ws)
    assert sha == git(repo, "rev-parse", "HEAD")
    assert (dest / "app.py").read_text() == "print('ok')\n"


async def test_root_only_repo_is_refused_like_a_missing_path(
    users: tuple[RunAs, RunAs], base: Path, tenant_ws: SourceWorkspace, private_dir: Path
) -> None:
    secret = public_repo(base, {"secret.txt": "ROOT_ONLY\n"}, name="rootsecret")
    secret.chmod(0o700)  # like the review's $T/rootsecret: root 0700
    plain = base / "rootplain"  # a root-only directory that is not a repo
    plain.mkdir(mode=0o700)
    messages = {}
    for label, path in (("repo", secret), ("plain", plain), ("missing", base / "nope")):
        dest = private_dir / label
        with pytest.raises(SourceError) as err:
            await checkout(str(path), None, dest, tenant_ws)
        assert err.value.argument == "repo_url"
        assert "ROOT_ONLY" not in err.value.render()
        messages[label] = err.value.message.replace(str(path), "<path>")
        assert not dest.exists() or list(dest.iterdir()) == []
    # One answer for all three: the caller cannot tell a root-only repo from a missing path.
    assert messages["repo"] == messages["plain"] == messages["missing"], messages
    assert users[0].user in messages["repo"]
    assert list(tenant_ws.mirrors_dir.iterdir()) == []  # never fetched anything


async def test_mirror_and_checkout_are_private(
    users: tuple[RunAs, RunAs], base: Path, tenant_ws: SourceWorkspace, private_dir: Path
) -> None:
    tenant, other = users
    repo = public_repo(base, {"notes.txt": "ALICE_FILE_SECRET_42\n", "run.sh": "#!/bin/sh\n"})
    (repo / "run.sh").chmod(0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "exec")
    dest = private_dir / "co"
    await checkout(str(repo), None, dest, tenant_ws)

    # The mirror: every file the tenant's, nothing group/other-accessible, no root-made file inside.
    for root, dirs, files in os.walk(tenant_ws.mirrors_dir):
        for name in [*dirs, *files]:
            st = os.lstat(os.path.join(root, name))
            assert st.st_uid == tenant.uid, (root, name)
            assert st.st_mode & 0o077 == 0, (root, name, oct(st.st_mode))
    lock = next(tenant_ws.locks_dir.iterdir())
    assert lock.stat().st_uid == 0
    # The attack of finding 4, from another user's side: the mirror cannot be read.
    (mirror,) = tenant_ws.mirrors_dir.iterdir()
    stolen = as_user(other, "git", "-c", "safe.directory=*", f"--git-dir={mirror}", "show",
                     "refs/inkmcp/HEAD:notes.txt")
    assert stolen.returncode != 0 and "ALICE_FILE_SECRET_42" not in stolen.stdout
    listing = as_user(other, "ls", str(tenant_ws.mirrors_dir))
    assert listing.returncode != 0 and "Permission denied" in listing.stderr

    # The checkout: InkMCP's files with no group/other bits (exec bit kept for the owner).
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    for path in [*dest.rglob("*")]:
        st = path.lstat()
        assert st.st_uid == os.geteuid() and st.st_mode & 0o077 == 0, (path, oct(st.st_mode))
    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o700
    assert stat.S_IMODE((dest / "notes.txt").stat().st_mode) == 0o600
    peek = as_user(other, "cat", str(dest / "notes.txt"))
    assert peek.returncode != 0 and "ALICE" not in peek.stdout


async def test_git_processes_run_as_the_tenant(
    users: tuple[RunAs, RunAs], base: Path, tenant_ws: SourceWorkspace
) -> None:
    """A repo whose upload-pack records who ran it: the tenant, with no supplementary groups."""
    tenant = users[0]
    repo = public_repo(base, {"v.txt": "1\n"})
    spy = base / "spy"
    spy.mkdir(mode=0o777)
    spy.chmod(0o777)
    calls: list[dict[str, Any]] = []
    real = source_mod._fetch_args

    def spying(src: Any, *targets: str) -> list[str]:
        args = real(src, *targets)
        calls.append({"args": args})
        return [a.replace(source_mod._LOCAL_UPLOAD_PACK, f"id > {spy}/who; {source_mod._LOCAL_UPLOAD_PACK}")
                for a in args]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(source_mod, "_fetch_args", spying)
        await resolve_commit(str(repo), None, workspace=tenant_ws, policy=ALLOW)
    assert calls
    who = (spy / "who").read_text()
    assert f"uid={tenant.uid}(" in who and f"gid={tenant.gid}(" in who
    assert who.split("groups=")[1].strip() == f"{tenant.gid}({tenant.user})"
    assert (spy / "who").stat().st_uid == tenant.uid


# ------------------------------------------------------------------------------------- size cap
async def test_size_cap_refuses_before_extracting(tmp_path: Path, make_repo: MakeRepo, ws: SourceWorkspace) -> None:
    repo = make_repo({"small.txt": "x\n", "big.bin": "0" * (3 << 20)})
    dest = tmp_path / "out"
    with pytest.raises(SourceError) as err:
        await resolve_and_checkout(str(repo), None, dest, workspace=ws,
                                   policy=SourcePolicy(allow_local=True, max_checkout_bytes=1 << 20))
    assert err.value.argument == "repo_url"
    assert "1.0 MiB" in err.value.message and "3.0 MiB" in err.value.message
    assert "large files" in (err.value.fix or "")
    assert list(dest.iterdir()) == []  # nothing extracted
    # Under the cap the same repo checks out.
    await resolve_and_checkout(str(repo), None, tmp_path / "ok", workspace=ws,
                               policy=SourcePolicy(allow_local=True, max_checkout_bytes=4 << 20))
    assert (tmp_path / "ok" / "big.bin").stat().st_size == 3 << 20


async def test_stream_bigger_than_checked_is_cut_off(tmp_path: Path, make_repo: MakeRepo, ws: SourceWorkspace) -> None:
    """The backstop for objects swapped after the size check: the byte stream itself is bounded."""
    repo = make_repo({"big.bin": "0" * (2 << 20)})
    sha = await resolve_commit(str(repo), None, workspace=ws, policy=ALLOW)
    (mirror,) = ws.mirrors_dir.iterdir()
    src = source_mod._Source(fetch_url=str(repo), display=str(repo), local=True)
    dest = tmp_path / "out"
    dest.mkdir(mode=0o700)
    # As if ls-tree had reported one small entry: the stream is refused well before 2 MiB lands.
    with pytest.raises(SourceError) as err:
        await source_mod._export(mirror, src, ws, sha, dest, source_mod._Deadline(30), 64 << 10, 1)
    assert "cap of 64.0 KiB" in err.value.message
    written = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert written < 1 << 20


async def test_crafted_tree_cannot_make_root_write_outside_dest(
    users: tuple[RunAs, RunAs], base: Path, tenant_ws: SourceWorkspace, private_dir: Path
) -> None:
    """A tree with `evil -> <outside>` and `evil/pwned` (git itself never makes one; a tenant can)."""
    outside = base / "outside"
    outside.mkdir(mode=0o755)
    repo = base / "crafted.git"
    repo.mkdir(mode=0o755)
    git(repo, "init", "-q", "--bare")

    def obj(*args: str, data: str) -> str:
        return subprocess.run(["git", f"--git-dir={repo}", *args], input=data, check=True,
                              capture_output=True, text=True).stdout.strip()

    link = obj("hash-object", "-w", "--stdin", data=str(outside))
    up = obj("hash-object", "-w", "--stdin", data="../../..")
    blob = obj("hash-object", "-w", "--stdin", data="pwned\n")
    sub = obj("mktree", data=f"100644 blob {blob}\tpwned\n")
    tree = obj("mktree", data=f"120000 blob {link}\tevil\n040000 tree {sub}\tevil\n"
                              f"120000 blob {up}\tup\n040000 tree {sub}\tup\n")
    head = obj("-c", "user.name=t", "-c", "user.email=t@e", "commit-tree", tree, "-m", "crafted", data="")
    obj("update-ref", "refs/heads/main", head, data="")
    subprocess.run(["chmod", "-R", "o+rX", str(repo)], check=True)
    dest = private_dir / "co"
    with pytest.raises(SourceError) as err:  # GNU tar defers the links, then cannot replace the dirs
        await checkout(str(repo), None, dest, tenant_ws)
    assert "Cannot unlink" in err.value.message
    assert list(outside.iterdir()) == []
    assert (dest / "evil" / "pwned").is_file()  # the payload reached tar, and landed inside dest
    assert not (base.parent / "pwned").exists() and not (private_dir / "pwned").exists()
    for path in dest.rglob("*"):
        assert not path.is_symlink() or not os.path.isabs(os.readlink(path))


# -------------------------------------------------------------------------------- SSRF refusals
@pytest.fixture
def victim() -> Iterator[socket.socket]:
    """A listener on loopback: the attack succeeds if anything connects to it."""
    sock = listener()
    try:
        yield sock
    finally:
        sock.close()


def _refused_urls(port: int) -> list[str]:
    return [
        f"http://127.0.0.1:{port}/x.git",
        f"https://127.0.0.1:{port}/x.git",
        f"http://localhost:{port}/x.git",  # a DNS name resolving to loopback
        f"http://evil.example@127.0.0.1:{port}/x.git",  # userinfo trick
        f"http://u:p@localhost:{port}/x.git",
        f"git://127.0.0.1:{port}/x.git",
        f"ssh://git@127.0.0.1:{port}/x.git",
        "git@localhost:owner/x.git",  # scp-like
        f"http://[::1]:{port}/x.git",
        f"http://[::ffff:127.0.0.1]:{port}/x.git",  # IPv4-mapped loopback
        "http://169.254.169.254/latest/meta-data/",  # cloud metadata
        "http://[fe80::1]/x.git",
        "http://10.1.2.3/x.git",
        "http://172.16.0.1/x.git",
        "http://192.168.1.1/x.git",
        "http://100.64.0.1/x.git",  # CGNAT
        "http://[fd00::1]/x.git",  # ULA
        "http://0.0.0.0/x.git",
        "http://224.0.0.1/x.git",
        "http://240.0.0.1/x.git",
        "http://[2002:7f00:1::]/x.git",  # 6to4 embedding 127.0.0.1
        "http://[64:ff9b::a00:1]/x.git",  # NAT64 embedding 10.0.0.1
    ]


async def test_non_public_addresses_are_refused_without_connecting(
    victim: socket.socket, ws: SourceWorkspace
) -> None:
    port = victim.getsockname()[1]
    for url in _refused_urls(port):
        with pytest.raises(SourceError) as err:
            await resolve_commit(url, None, workspace=ws, policy=DENY, timeout=10)
        assert err.value.argument == "repo_url", url
        assert "does not point at a public internet host" in err.value.message, (url, err.value.message)
        assert "public git host" in (err.value.fix or "") and f"{SETTING}=true" in (err.value.fix or "")
        assert "u:p" not in err.value.render()
    assert_no_connection(victim)
    assert list(ws.mirrors_dir.iterdir()) == []  # refused before git ran at all


async def test_open_and_closed_ports_get_the_same_error(victim: socket.socket, ws: SourceWorkspace) -> None:
    open_port, shut_port = victim.getsockname()[1], closed_port()
    texts = []
    for port in (open_port, shut_port):
        with pytest.raises(SourceError) as err:
            await resolve_commit(f"http://127.0.0.1:{port}/probe.git", None, workspace=ws, policy=DENY)
        texts.append(err.value.render().replace(str(port), "PORT"))
    assert texts[0] == texts[1]
    assert_no_connection(victim)


async def test_unresolvable_host_gets_the_same_error_as_a_private_one(ws: SourceWorkspace) -> None:
    texts = []
    for host in ("no-such-host.invalid", "10.9.8.7"):
        with pytest.raises(SourceError) as err:
            await resolve_commit(f"https://{host}/o/r.git", None, workspace=ws, policy=DENY)
        texts.append(err.value.render().replace(host, "HOST"))
    assert texts[0] == texts[1]


@pytest.mark.parametrize(
    "url",
    ["http://2130706433/x.git", "http://0x7f000001/x.git", "http://0177.0.0.1/x.git", "http://127.1/x.git",
     "http://0x7f.0.0.1/x.git", "http://127.000.000.001/x.git"],
)
async def test_numeric_host_tricks_are_refused(url: str, ws: SourceWorkspace) -> None:
    for policy in (DENY, ALLOW):  # a syntax rule: refused even where local sources are allowed
        with pytest.raises(SourceError) as err:
            await resolve_commit(url, None, workspace=ws, policy=policy, timeout=10)
        assert err.value.argument == "repo_url"
        assert "dotted decimal" in err.value.message


@pytest.mark.parametrize(
    "url",
    ["http://evil.example\\@127.0.0.1/x.git", "http://a@b@127.0.0.1/x.git", "http://[::1%25lo]/x.git",
     "http://exa mple.com/x.git", "http://example.com./x.git", "ssh://-oProxyCommand=x@host/x.git",
     "-oProxyCommand=touch@localhost:x", "http://example.com:99999/x.git", "file://otherhost/etc"],
)
async def test_ambiguous_urls_are_refused(url: str, ws: SourceWorkspace) -> None:
    with pytest.raises(SourceError) as err:
        await resolve_commit(url, None, workspace=ws, policy=ALLOW, timeout=10)
    assert err.value.argument == "repo_url"
    assert list(ws.mirrors_dir.iterdir()) == []


@pytest.mark.parametrize("url", ["ext::sh -c touch% /tmp/x", "ftp://host/repo.git", "relative/path", "-u"])
async def test_unsupported_urls(url: str, ws: SourceWorkspace) -> None:
    with pytest.raises(SourceError) as err:
        await resolve_commit(url, None, workspace=ws, policy=ALLOW)
    assert err.value.argument == "repo_url"


def test_ssh_and_git_urls_connect_to_the_checked_address() -> None:
    """No sshd/git-daemon fetch here for ssh (see the git:// test for a real one): inspect what git gets."""
    scp = source_mod._pinned(source_mod._parse_remote("git@github.com:owner/repo.git"), ["140.82.121.4"])
    assert scp.fetch_url == "git@140.82.121.4:owner/repo.git" and scp.display == "git@github.com:owner/repo.git"
    env = source_mod._git_env(scp)
    assert "HostKeyAlias=github.com" in env["GIT_SSH_COMMAND"]
    ssh = source_mod._pinned(source_mod._parse_remote("ssh://git@example.com:2222/r.git"), ["2606:4700::1"])
    assert ssh.fetch_url == "ssh://git@[2606:4700::1]:2222/r.git" and ssh.ssh_alias == "example.com"
    https = source_mod._pinned(source_mod._parse_remote("https://tok@example.com/r.git"), ["93.184.215.14"])
    assert https.fetch_url == "https://tok@example.com/r.git"  # the name stays: TLS checks it
    argv = source_mod._git_base(https)
    assert "http.curloptResolve=example.com:443:93.184.215.14" in argv
    assert "http.followRedirects=false" in argv


def test_git_ssh_offers_no_key_of_the_user_it_runs_as() -> None:
    """Run as InkMCP's own user (the Coolify provider, a non-root server), git's ssh offered that user's default
    keys (~/.ssh/id_*, from the passwd home whatever $HOME says) to any host an account's repo_url named; InkMCP
    has no ssh key for fetching. The real ssh client resolves the exact command git is given (`ssh -G`: its
    configuration for that host, as it would connect): no identity file, no agent, only the identities named."""
    scp = source_mod._pinned(source_mod._parse_remote("git@evil.example:owner/repo.git"), ["203.0.113.9"])
    command = shlex.split(source_mod._git_env(scp)["GIT_SSH_COMMAND"])
    resolved = subprocess.run([*command, "-G", "203.0.113.9"], capture_output=True, text=True, timeout=10,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(Path.home())})
    assert resolved.returncode == 0, resolved.stderr
    config = [line.split(" ", 1) for line in resolved.stdout.splitlines()]
    assert [v for k, v in config if k == "identityfile"] == ["none"], resolved.stdout
    assert ("identitiesonly", "yes") in [tuple(c) for c in config]
    assert ("identityagent", "none") in [tuple(c) for c in config]


# ------------------------------------------------------- pinning, redirects, credentials (real servers)
class _GitHTTP(http.server.SimpleHTTPRequestHandler):
    """Dumb-HTTP git server: static files of a bare repo (git falls back to dumb on a non-smart reply)."""

    seen: list[tuple[str, str]]
    redirect_to: str | None = None

    def do_GET(self) -> None:
        self.seen.append((self.headers.get("Host", ""), self.path))
        if self.redirect_to:
            self.send_response(301)
            self.send_header("Location", self.redirect_to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def http_server(host: str, root: Path | None = None, redirect_to: str | None = None
                ) -> Iterator[tuple[int, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []
    handler = type("H", (_GitHTTP,), {"seen": seen, "redirect_to": redirect_to})

    def make(*a: Any) -> _GitHTTP:
        return handler(*a, directory=str(root or "/nonexistent"))

    with serving(http.server.ThreadingHTTPServer((host, 0), make)) as port:
        yield port, seen


def served_bare(make_repo: MakeRepo, tmp_path: Path) -> tuple[Path, str]:
    repo = make_repo({"v.txt": "served\n"})
    bare = tmp_path / "srv" / "repo.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    subprocess.run(["git", f"--git-dir={bare}", "update-server-info"], check=True)
    return bare, git(repo, "rev-parse", "HEAD")


@pytest.fixture
def pinned_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """`pinned.invalid` resolves (for InkMCP only) to 127.0.0.2, which counts as public in this test.

    The name does not exist in DNS, so a fetch that works proves git connected to the address
    InkMCP checked, not to one it looked up itself (what DNS rebinding would change).
    """
    real_resolve, real_public = source_mod._getaddrinfo, source_mod._public_address
    monkeypatch.setattr(source_mod, "_getaddrinfo",
                        lambda host, port: ["127.0.0.2"] if host == "pinned.invalid" else real_resolve(host, port))
    monkeypatch.setattr(source_mod, "_public_address", lambda ip: str(ip) == "127.0.0.2" or real_public(ip))
    return "pinned.invalid"


async def test_http_fetch_connects_to_the_checked_address_and_keeps_no_token(
    make_repo: MakeRepo, tmp_path: Path, ws: SourceWorkspace, pinned_name: str
) -> None:
    bare, sha = served_bare(make_repo, tmp_path)
    with http_server("127.0.0.2", bare.parent) as (port, seen):
        url = f"http://alice:tok-SECRET-123@{pinned_name}:{port}/repo.git"
        assert await resolve_commit(url, None, workspace=ws, policy=DENY) == sha
        await checkout(url, None, tmp_path / "out", ws, DENY)
    assert (tmp_path / "out" / "v.txt").read_text() == "served\n"
    assert seen and all(host == f"{pinned_name}:{port}" for host, _ in seen)
    # The credential reached git on its command line only: no file of the mirror holds it.
    for path in ws.mirrors_dir.rglob("*"):
        if path.is_file():
            assert b"tok-SECRET-123" not in path.read_bytes(), path


async def test_git_protocol_connects_to_the_checked_address(
    make_repo: MakeRepo, tmp_path: Path, ws: SourceWorkspace, pinned_name: str
) -> None:
    bare, sha = served_bare(make_repo, tmp_path)
    port = closed_port()
    daemon = subprocess.Popen(
        ["git", "daemon", "--listen=127.0.0.2", f"--port={port}", "--export-all", "--reuseaddr",
         f"--base-path={bare.parent}", str(bare.parent)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.2", port)) == 0:
                    break
            assert time.monotonic() < deadline and daemon.poll() is None, "git daemon did not start"
            await asyncio.sleep(0.05)
        assert await resolve_commit(f"git://{pinned_name}:{port}/repo.git", None, workspace=ws, policy=DENY) == sha
    finally:
        daemon.terminate()
        daemon.wait(10)


async def test_redirects_are_not_followed(ws: SourceWorkspace) -> None:
    """A real redirect, from a loopback server (loopback needs ALLOW); the target never hears from git."""
    target = listener()
    try:
        with http_server("127.0.0.1", redirect_to=f"http://127.0.0.1:{target.getsockname()[1]}") as (port, seen):
            with pytest.raises(SourceError) as err:
                await resolve_commit(f"http://127.0.0.1:{port}/r.git", None, workspace=ws, policy=ALLOW,
                                     timeout=10)
        assert seen  # git asked the first server...
        assert "redirect" in err.value.message and "final URL" in (err.value.fix or "")
        assert_no_connection(target)  # ...and did not follow it
    finally:
        target.close()


async def test_unreachable_repo_hides_credentials(ws: SourceWorkspace) -> None:
    url = f"https://alice:s3cr3t-token@127.0.0.1:{closed_port()}/owner/repo.git"
    for policy in (ALLOW, DENY):
        with pytest.raises(SourceError) as err:
            await resolve_commit(url, None, workspace=ws, policy=policy)
        assert err.value.argument == "repo_url"
        assert "s3cr3t" not in err.value.render() and "alice" not in err.value.render()
        assert redact_url(url).split("//")[1] in err.value.message
    assert redact_url(url).startswith("https://127.0.0.1:")


async def test_ssh_url_failure_keeps_the_cause_and_offers_the_https_url(ws: SourceWorkspace) -> None:
    """A new user's agent passed `git@github.com:owner/repo.git`: the error kept only git's closing words ("Please
    make sure you have the correct access rights and the repository exists.") and suggested checking the host name.
    It must keep ssh's own line (here: the refused connection) and offer the https URL, since InkMCP has no SSH key
    of the caller's. Real git and ssh, to a closed loopback port."""
    port = closed_port()
    with pytest.raises(SourceError) as err:
        await resolve_commit(f"ssh://git@127.0.0.1:{port}/owner/repo.git", None, workspace=ws, policy=ALLOW,
                             timeout=20)
    said = err.value.render()
    assert err.value.argument == "repo_url"
    assert "connection refused" in err.value.message.lower() and f"port {port}" in err.value.message, said
    assert "https://127.0.0.1/owner/repo.git" in (err.value.fix or "") and "SSH key" in (err.value.fix or ""), said
    assert "https://<token>@127.0.0.1/owner/repo.git" in (err.value.fix or ""), said


async def test_hanging_remote_times_out_and_git_is_killed(ws: SourceWorkspace) -> None:
    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SourceError) as err:
            await resolve_commit(f"https://127.0.0.1:{port}/r.git", None, workspace=ws, policy=ALLOW, timeout=1)
        assert "did not finish within" in err.value.message
    finally:
        server.close()
    leftovers = subprocess.run(["pgrep", "-f", f"127.0.0.1:{port}/r.git"], capture_output=True, text=True)
    assert leftovers.stdout.strip() == ""


# -------------------------------------------------------------------------------------- setting
def test_allow_local_sources_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTING, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert Settings().allow_local_sources is False  # root: a shared machine
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert Settings().allow_local_sources is True  # a normal user: one person's machine
    monkeypatch.setenv(SETTING, "false")
    assert Settings().allow_local_sources is False
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv(SETTING, "true")
    assert Settings().allow_local_sources is True


def test_mirror_key_ignores_credentials() -> None:
    a = source_mod._Source(fetch_url="https://t1@h/r.git", display="https://h/r.git", local=False)
    b = source_mod._Source(fetch_url="https://t2@h/r.git", display="https://h/r.git", local=False)
    assert source_mod._mirror_key(a) == source_mod._mirror_key(b) == hashlib.sha256(b"https://h/r.git").hexdigest()[:32]


async def test_a_repository_the_host_says_is_not_found_is_told_it_may_be_private(ws: SourceWorkspace) -> None:
    """A git host answers a private repository asked for without credentials as "not found" (GitHub, GitLab): the
    fix says so, with the URL to pass (newuser4: a private repo read as a typo). With a token in the URL the
    repository really is not there (or the token cannot read it), and the fix does not suggest adding one."""
    with http_server("127.0.0.1") as (port, seen):  # serves nothing: every path is a 404
        with pytest.raises(SourceError) as err:
            await resolve_commit(f"http://127.0.0.1:{port}/owner/app.git", None, workspace=ws, policy=ALLOW,
                                 timeout=10)
        assert seen
        fix = err.value.fix or ""
        assert "check the owner/repository name" in fix, fix
        assert f"if it is private, pass a URL with a token that can read it, e.g. http://<token>@127.0.0.1:{port}/" \
               "owner/app.git" in fix, fix
        with pytest.raises(SourceError) as err:
            await resolve_commit(f"http://x:tok-123@127.0.0.1:{port}/owner/app.git", None, workspace=ws,
                                 policy=ALLOW, timeout=10)
        assert "check the owner/repository name" in (err.value.fix or "")
        assert "if it is private" not in (err.value.fix or "") and "tok-123" not in err.value.render()
