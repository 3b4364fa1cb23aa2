"""The git jail (inkmcp/build/gitjail.py): what a process it starts gets (the cgroup, the resource limits, its own
session, the three std fds and nothing else, umask 077, cwd /, only the environment passed), and that it behaves
like the asyncio subprocess source.py used before (pipes, exit codes, signals, killing its process group), under
concurrent starts and after its starter died. Real processes throughout; the limits are read back from /proc."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from inkmcp.build import gitjail, source
from inkmcp.build.process import TENANT_OOM_SCORE_ADJ, kill_process_group
from inkmcp.settings import GitSettings, set_git_settings
from tests.requirements import is_root, require_root
from tests.support import wait_for

ENV = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "INKMCP_TEST_MARK": "jailed"}


@pytest.fixture
def jail() -> Iterator[GitSettings]:
    """Small, recognisable limits; a fresh starter before and after (the next test gets the environment's)."""
    settings = GitSettings(git_jail=True, git_process_memory_mb=300, git_timeout=50, git_max_file_mb=7,
                           git_memory_mb=333, git_pids_max=77)
    gitjail.shutdown()
    set_git_settings(settings)
    yield settings
    gitjail.shutdown()
    set_git_settings(None)


async def run(argv: list[str], data: bytes | None = None) -> tuple[int, str, str]:
    proc = await gitjail.spawn(argv, ENV, stdin=gitjail.PIPE if data is not None else gitjail.DEVNULL)
    out, err = await proc.communicate(data)
    return proc.returncode or 0, (out or b"").decode(), (err or b"").decode()


async def test_a_process_gets_the_limits_its_session_and_nothing_else(jail: GitSettings) -> None:
    script = ("cat /proc/self/limits; echo cgroup; cat /proc/self/cgroup; echo ids; ps -o pid=,pgid=,sid= -p $$; "
              "echo umask $(umask); echo cwd $(pwd); echo oom $(cat /proc/self/oom_score_adj); "
              "echo fds $(ls /proc/$$/fd | sort -n | tr '\\n' ' '); env")
    rc, out, _ = await run(["/bin/sh", "-c", script])
    assert rc == 0, out
    limits = {line[:26].strip(): line[26:].split() for line in out.split("cgroup")[0].splitlines()[1:]}
    assert limits["Max data size"][:2] == [str(300 << 20)] * 2, limits  # soft and hard: git cannot raise it
    assert limits["Max file size"][:2] == [str(7 << 20)] * 2, limits
    assert limits["Max cpu time"][0] == "100", limits  # twice INKMCP_GIT_TIMEOUT
    assert limits["Max core file size"][0] == "0", limits
    pid, pgid, sid = out.split("ids\n")[1].split()[:3]
    assert pid == pgid == sid, "not in a session of its own"
    assert "umask 0077" in out and "cwd /" in out, out
    assert f"oom {TENANT_OOM_SCORE_ADJ}\n" in out, out  # the host OOM killer's choice before InkMCP's own processes
    assert out.split("fds ")[1].split("\n")[0].split() == ["0", "1", "2", "3"], out  # 3: $(...)'s own pipe
    env = dict(line.split("=", 1) for line in out.split("fds ")[1].splitlines()[1:] if "=" in line)
    assert env.get("INKMCP_TEST_MARK") == "jailed" and "HOME" not in env and "INKMCP_GIT_JAIL" not in env, env
    if is_root():
        group = f"/inkmcp-git/git-{os.getpid()}"
        assert f"memory:{group}" in out and f"pids:{group}" in out, out
        memory = Path(gitjail.cgroup_dir())
        assert (memory / "memory.limit_in_bytes").read_text().strip() == str(333 << 20)
        pids = Path(str(memory).replace("/memory/", "/pids/"))
        assert (pids / "pids.max").read_text().strip() == "77"


async def test_pipes_exit_codes_and_signals_are_those_of_a_subprocess(jail: GitSettings) -> None:
    assert await run(["cat"], b"hello\x00world" * 10000) == (0, "hello\x00world" * 10000, "")
    assert (await run(["/bin/sh", "-c", "echo out; echo err >&2; exit 7"])) == (7, "out\n", "err\n")
    assert (await run(["/bin/sh", "-c", "kill -9 $$"]))[0] == -signal.SIGKILL
    with pytest.raises(OSError, match="no-such-program"):
        await gitjail.spawn(["no-such-program"], ENV)


async def test_killing_the_process_group_ends_the_process_and_its_children(jail: GitSettings) -> None:
    proc = await gitjail.spawn(["/bin/sh", "-c", "sleep 60 & echo $!; wait"], ENV)
    assert proc.stdout is not None
    child = int((await proc.stdout.readline()).decode())
    await kill_process_group(proc)
    assert proc.returncode == -signal.SIGKILL


    async def child_gone() -> bool:  # SIGKILLed with the group; it exits when next scheduled (late at load)
        try:
            return psutil.Process(child).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    await wait_for(child_gone, timeout=10, what=f"child {child} gone")


async def test_many_starts_at_once_each_get_their_own_answer(jail: GitSettings) -> None:
    answers = await asyncio.gather(*(run(["/bin/sh", "-c", f"echo {i}; exit {i % 5}"]) for i in range(40)))
    assert answers == [(i % 5, f"{i}\n", "") for i in range(40)]


async def test_a_starter_that_died_is_replaced(jail: GitSettings) -> None:
    assert (await run(["true"]))[0] == 0
    first = gitjail.starter_pid()
    assert first is not None
    os.kill(first, signal.SIGKILL)  # the starter this test's fixture started
    for _ in range(100):
        if gitjail.starter_pid() is None:
            break
        await asyncio.sleep(0.02)
    assert (await run(["/bin/sh", "-c", "echo again"])) == (0, "again\n", "")
    assert gitjail.starter_pid() not in (None, first)


async def test_source_starts_git_through_the_jail_unless_it_is_off(jail: GitSettings) -> None:
    env = source._git_env(source._Source(fetch_url="x", display="x", local=True))
    proc = await source._spawn(["git", "--version"], None, env)
    assert isinstance(proc, gitjail.JailedProcess)
    assert (await proc.communicate())[0].startswith(b"git version")  # type: ignore[union-attr]
    set_git_settings(GitSettings(git_jail=False))
    proc = await source._spawn(["git", "--version"], None, env)
    assert isinstance(proc, asyncio.subprocess.Process)
    await proc.communicate()


async def test_the_starter_outlives_the_loop_and_thread_that_started_it(jail: GitSettings) -> None:
    """PR_SET_PDEATHSIG fires when the *thread* that started the starter exits: started from a loop in a thread
    that then ends (as asyncio.to_thread's pool threads do with their loop), it must keep serving, and a git
    process running meanwhile must report its real exit status."""
    def elsewhere() -> int | None:
        async def one() -> None:
            assert (await run(["true"]))[0] == 0

        asyncio.run(one())  # the starter starts here; this loop's pool thread is shut down when it ends
        return gitjail.starter_pid()

    first = await asyncio.to_thread(elsewhere)  # and this thread ends too
    assert first is not None
    long_run = await gitjail.spawn(["/bin/sh", "-c", "sleep 1; exit 3"], ENV)
    await asyncio.sleep(0.3)
    assert gitjail.starter_pid() == first and psutil.pid_exists(first)
    assert await long_run.wait() == 3


async def test_past_the_groups_process_limit_a_start_is_refused_naming_the_setting(jail: GitSettings) -> None:
    """All git processes of the server share pids.max (INKMCP_GIT_PIDS_MAX): many fetches at once cannot take the
    machine's PIDs; the start past it fails with an error naming the setting (the kernel's EAGAIN, not a crash)."""
    require_root("the git processes' pids.max is a cgroup's")
    from inkmcp.errors import SourceError

    gitjail.shutdown()
    set_git_settings(GitSettings(git_jail=True, git_pids_max=16))
    held: list[gitjail.JailedProcess] = []
    try:
        with pytest.raises(SourceError) as refused:
            for _ in range(40):
                held.append(await source._spawn(["sleep", "30"], None, ENV))
        assert "INKMCP_GIT_PIDS_MAX" in f"{refused.value} {refused.value.fix}" and "16 processes" in str(refused.value)
        assert 10 <= len(held) < 16, len(held)  # the starter itself is one of the 16
    finally:
        for proc in held:
            await kill_process_group(proc)  # type: ignore[arg-type]


@pytest.mark.parametrize(("rc", "stderr", "named"), [
    (128, "fatal: Out of memory, malloc failed (tried to allocate 536870912 bytes)\nfatal: index-pack failed",
     "INKMCP_GIT_PROCESS_MEMORY_MB"),
    (128, "error: index-pack died of signal 24\nfatal: index-pack failed", "INKMCP_GIT_TIMEOUT"),
    (128, "fatal: fetch-pack: invalid index-pack output", "INKMCP_GIT_TIMEOUT"),
    (128, "error: index-pack died of signal 25", "INKMCP_GIT_MAX_FILE_MB"),
    (128, "error: cannot fork() for index-pack: Resource temporarily unavailable", "INKMCP_GIT_PIDS_MAX"),
    (-9, "", "INKMCP_GIT_MEMORY_MB"),
    (128, "fatal: pack has bad object at offset 12: inflate returned -3\nfatal: fetch-pack: invalid index-pack output",
     None),
    (128, "fatal: repository 'x' not found", None),
])
def test_what_git_said_names_the_limit_it_hit(rc: int, stderr: str, named: str | None) -> None:
    """git's own words (or a signal) for each limit become an error naming its setting; other failures (a corrupt
    pack, a missing repository) are left to the ordinary fetch errors."""
    src = source._Source(fetch_url="https://git.example/x.git", display="https://git.example/x.git", local=False)
    hit = source._limit_hit(src, "fetching x", rc, stderr)
    if named is None:
        assert hit is None, hit
    else:
        assert hit is not None and named in f"{hit} {hit.fix}" and hit.argument == "repo_url", hit
