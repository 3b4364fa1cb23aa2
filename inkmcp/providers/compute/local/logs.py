"""Size-capped log files and reading their tails.

Tenant output is unbounded, the disk is not: each log rotates at `max_bytes` keeping one old file,
so a chatty app costs at most ~2x the cap. Lines are written whole and flushed at once because
agents read logs right after something fails.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import TextIO

MAX_LOG_BYTES = 5 * 1024 * 1024
MAX_LINE_CHARS = 8192


class RotatingLog:
    """Append-only line log rotating to `<name>.1` when it exceeds `max_bytes`."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: TextIO | None = None
        self._size = 0

    def _open(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # O_NOFOLLOW: never write through a symlink someone planted where the log should be.
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        self._file = os.fdopen(fd, "a", encoding="utf-8", errors="replace")
        self._size = os.fstat(fd).st_size

    def write(self, line: str) -> None:
        if len(line) > MAX_LINE_CHARS:
            line = line[:MAX_LINE_CHARS] + " …[truncated]"
        if self._file is None:
            self._open()
        data = line.rstrip("\n") + "\n"
        if self._size + len(data) > self.max_bytes and self._size > 0:
            self._rotate()
        f = self._file
        assert f is not None
        f.write(data)
        f.flush()
        self._size += len(data.encode("utf-8", errors="replace"))

    async def awrite(self, line: str) -> None:
        """Async sink form, as the buildpack's `log` callback expects."""
        self.write(line)

    def _rotate(self) -> None:
        self.close()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def tail_lines(path: Path, n: int, *, include_rotated: bool = True) -> list[str]:
    """Last `n` lines of a log (and its rotated predecessor if needed), oldest first."""
    if n <= 0:
        return []
    out: deque[str] = deque(maxlen=n)
    candidates = [path.with_name(path.name + ".1"), path] if include_rotated else [path]
    for candidate in candidates:
        try:
            with candidate.open(encoding="utf-8", errors="replace") as f:
                for line in f:
                    out.append(line.rstrip("\n"))
        except FileNotFoundError:
            continue
    return list(out)
