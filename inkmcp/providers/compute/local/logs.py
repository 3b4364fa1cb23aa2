"""Size-capped log files and reading their tails.

Tenant output is unbounded, the disk is not: each log rotates at `max_bytes` keeping one old file,
so a chatty app costs at most ~2x the cap. Lines are written whole and flushed at once because
agents read logs right after something fails.

Writing is not free for InkMCP: each line costs the server ~5-10 us of its one event loop (split,
decode, write, flush). A tenant printing empty lines as fast as it can (`yes ""`) kept the loop busy
enough that the MCP endpoint's /healthz timed out for every account (red team 2026-12-01). So each
process's output, and each build's, goes through an `OutputBudget`: a token bucket of lines and bytes
per second. Past it InkMCP stops reading for a moment; the tenant's pipe fills and its writes block,
so the flood slows the flooding process (its own CPU quota), not the server and the other accounts.
Nothing is dropped: every line still reaches the log, only later.

Per process is not enough: an account may run 200 services (20 projects x 10), each flooding within its
own budget (~400,000 lines/s together, ~3.4 cores of InkMCP's time). So every process's and build's budget
draws on its account's budget too (`OutputBudget(parent=...)`, one per account in the provider): all of an
account's output together is paced at the account rates (INKMCP_ACCOUNT_OUTPUT_*, `AccountRates`), and another
account's budget is untouched by it.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

MAX_LOG_BYTES = 5 * 1024 * 1024
MAX_LINE_CHARS = 8192
# Per process (or build), sustained and burst. 2,000 lines/s is ~2 % of a core at ~8.5 us a line (measured
# with pump_lines into a RotatingLog); the burst lets a start-up dump or a traceback storm through at once.
LINES_PER_SECOND = 2000.0
BURST_LINES = 20000.0
BYTES_PER_SECOND = 2.0 * 1024 * 1024
BURST_BYTES = 8.0 * 1024 * 1024
# Per account: every process and build of one account together (a few flooding processes' worth: ~7 % of a core).
# The defaults of the operator's settings (settings.AccountOutputSettings, INKMCP_ACCOUNT_OUTPUT_*), which app.py
# applies with `configure_account_rates` before the local provider starts.
ACCOUNT_LINES_PER_SECOND = 8000.0
ACCOUNT_BURST_LINES = 40000.0
ACCOUNT_BYTES_PER_SECOND = 8.0 * 1024 * 1024
ACCOUNT_BURST_BYTES = 16.0 * 1024 * 1024
YIELD_EVERY = 256  # lines written between two turns of the event loop, even within the budget


@dataclass(frozen=True)
class AccountRates:
    """The rates every account's budget is made with (`OutputBudget.for_account`): sustained and burst, lines and
    bytes. All positive: a zero rate would make every take wait forever (a tenant's first line would block its
    process for good)."""

    lines_per_second: float = ACCOUNT_LINES_PER_SECOND
    burst_lines: float = ACCOUNT_BURST_LINES
    bytes_per_second: float = ACCOUNT_BYTES_PER_SECOND
    burst_bytes: float = ACCOUNT_BURST_BYTES

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"AccountRates.{name} must be a positive number, not {value!r}")


_account_rates = AccountRates()


def configure_account_rates(rates: AccountRates) -> None:
    """Set the rates of account budgets made from now on (app.py, once at start, from the operator's settings).

    Module state rather than a provider argument: the budgets are made where the provider first sees an account,
    and the rates are one per process like the per-process constants above."""
    global _account_rates
    _account_rates = rates


def account_rates() -> AccountRates:
    """The rates `OutputBudget.for_account` uses now (the supervisor's pacing note shows them)."""
    return _account_rates


class OutputBudget:
    """A token bucket of lines and bytes: how much of one process's output InkMCP writes per second.

    `take` spends and says how long to wait before reading more (0 while within the budget); `spend`
    is the awaiting form for async writers (a build's output). Waiting is the backpressure: the tenant's
    pipe fills while InkMCP sleeps, so the flooding process blocks on its own writes.

    With a `parent` (the account's budget), every take spends from both and waits for the longer: the
    parent's level goes into debt as its children take, so N flooding children each wait ~N times longer
    and together get the parent's rate.
    """

    def __init__(self, *, lines_per_second: float = LINES_PER_SECOND, burst_lines: float = BURST_LINES,
                 bytes_per_second: float = BYTES_PER_SECOND, burst_bytes: float = BURST_BYTES,
                 clock: Callable[[], float] = time.monotonic, parent: OutputBudget | None = None) -> None:
        self.rates = (lines_per_second, bytes_per_second)
        self.bursts = (burst_lines, burst_bytes)
        self.levels = [burst_lines, burst_bytes]
        self.clock = clock
        self.last = clock()
        self.throttled = 0  # how many times a writer had to wait (the provider notes the first in the log)
        self.parent = parent
        self._unyielded = 0

    @classmethod
    def for_account(cls, *, rates: AccountRates | None = None,
                    clock: Callable[[], float] = time.monotonic) -> OutputBudget:
        """The budget all of one account's processes and builds draw on (their `parent`): `rates`, else the
        configured ones (`configure_account_rates`; the defaults until app.py applies the operator's)."""
        r = rates or _account_rates
        return cls(lines_per_second=r.lines_per_second, burst_lines=r.burst_lines,
                   bytes_per_second=r.bytes_per_second, burst_bytes=r.burst_bytes, clock=clock)

    def take(self, lines: int, nbytes: int) -> float:
        now = self.clock()
        elapsed, self.last = max(now - self.last, 0.0), now
        wait = 0.0
        for i, spent in enumerate((lines, nbytes)):
            level = min(self.bursts[i], self.levels[i] + elapsed * self.rates[i]) - spent
            self.levels[i] = level
            if level < 0:
                wait = max(wait, -level / self.rates[i])
        if self.parent is not None:
            wait = max(wait, self.parent.take(lines, nbytes))
        if wait > 0:
            self.throttled += 1
        return wait

    async def spend(self, lines: int, nbytes: int) -> None:
        wait = self.take(lines, nbytes)
        self._unyielded += lines
        if wait > 0:
            self._unyielded = 0
            await asyncio.sleep(wait)
        elif self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await asyncio.sleep(0)


class RotatingLog:
    """Append-only line log rotating to `<name>.1` when it exceeds `max_bytes`."""

    def __init__(self, path: Path, *, max_bytes: int = MAX_LOG_BYTES, budget: OutputBudget | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._file: TextIO | None = None
        self._size = 0
        self.budget = budget or OutputBudget()  # paces `awrite` (a build's output); `write` is never paced

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
        """Async sink form, as the buildpack's `log` callback expects; paced by `budget` (module docstring)."""
        self.write(line)
        await self.budget.spend(1, len(line) + 1)

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
            # --- redteam4: newline="\n": text mode's universal newlines also ended a line at a tenant's "\r", so
            # "x\r!! ..." read back as a line of its own without the "web | " prefix or tenant_line's "(app) " mark: a
            # line passing for InkMCP's (tests/security/test_redteam4_log_escapes.py); core/logs.redact shows the \r
            with candidate.open(encoding="utf-8", errors="replace", newline="\n") as f:  # --- end
                for line in f:
                    out.append(line.rstrip("\n"))
        except FileNotFoundError:
            continue
    return list(out)
