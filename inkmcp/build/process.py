"""Subprocess helpers shared by source fetching and builds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from pathlib import Path

import psutil


async def kill_process_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the process and everything it spawned (git-remote-https, pip, npm): they share its session,
    because every build subprocess is started with start_new_session=True."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


def write_pid_file(path: Path, pid: int) -> bool:
    """Record a running process as {pid, create_time}: the create time lets a later reaper (the local
    provider's `reap_stale`) tell the process from an unrelated one that reused its pid."""
    try:
        created = psutil.Process(pid).create_time()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.write_text(json.dumps({"pid": pid, "create_time": created}))
        return True
    except (psutil.Error, OSError):
        return False
