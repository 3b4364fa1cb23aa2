"""Subprocess helpers shared by source fetching and builds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal


async def kill_process_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the process and everything it spawned (git-remote-https, pip, npm): they share its session,
    because every build subprocess is started with start_new_session=True."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
