"""kill_process_group / reap: a killed subprocess is always reaped, whatever is left in its pipes.

On Python 3.11 `Process.wait()` returned only once the pipes closed; a killed process whose unread output
had filled the reader's buffer left it pending forever (a killed git in a deploy's fetch hung that way).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from inkmcp.build.process import kill_process_group, reap

LOUD = "import sys, time\nsys.stdout.write('x' * 1_000_000); sys.stdout.flush()\nsys.stderr.write('y' * 1_000_000)\n" \
       "sys.stderr.flush(); time.sleep(60)"


async def _start(code: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)


async def _until_blocked(proc: asyncio.subprocess.Process) -> None:
    """Until the child has written more than the reader buffers (asyncio pauses the pipe at 2 x 64 KiB)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    while len(proc.stdout._buffer) < 1 << 17:  # the state the bug needs, seen directly
        assert time.monotonic() < deadline, "the child never wrote its output"
        await asyncio.sleep(0.02)


async def test_a_killed_process_with_unread_output_is_reaped() -> None:
    proc = await _start(LOUD)
    try:
        await _until_blocked(proc)
        started = time.monotonic()
        await asyncio.wait_for(kill_process_group(proc), 20)
        assert proc.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 3, "reaping waited for the drain deadline instead of the EOF"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)


async def test_a_descendant_that_left_the_group_and_holds_the_pipe_does_not_keep_it_pending(tmp_path: Path) -> None:
    pid_file = tmp_path / "escaped.pid"
    escape = (f"import os, time\nif os.fork() == 0:\n    os.setsid()\n"
              f"    open({str(pid_file)!r}, 'w').write(str(os.getpid()))\n    time.sleep(60)\n    os._exit(0)\n")
    proc = await _start(escape + LOUD)
    try:
        await _until_blocked(proc)
        started = time.monotonic()
        await asyncio.wait_for(_kill_with_short_drain(proc), 20)
        assert proc.returncode == -signal.SIGKILL
        assert time.monotonic() - started < 5
        escaped = int(pid_file.read_text())
        os.kill(escaped, 0)  # still alive and still holding the pipe: the pipes were closed from this side
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, FileNotFoundError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


async def _kill_with_short_drain(proc: asyncio.subprocess.Process) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    await reap(proc, drain_seconds=0.5)


async def test_reaping_beside_a_reader_of_the_same_pipe() -> None:
    """A caller still reading the output (a log pump) keeps its reads; reaping neither raises nor hangs."""
    proc = await _start(LOUD)
    assert proc.stdout is not None
    got: list[int] = []

    async def pump() -> None:
        assert proc.stdout is not None
        while chunk := await proc.stdout.read(4096):
            got.append(len(chunk))
            await asyncio.sleep(0.2)  # a slow reader: the pipe stays full

    reader = asyncio.create_task(pump())
    try:
        await asyncio.sleep(0.5)
        await asyncio.wait_for(kill_process_group(proc), 20)
        assert proc.returncode == -signal.SIGKILL
        await asyncio.wait_for(reader, 20)  # the pump saw its EOF
        assert got, "the pump read nothing"
    finally:
        reader.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
