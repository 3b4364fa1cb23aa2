"""One supervised tenant process: spawn, capture output, restart with backoff, stop the whole group.

Each process starts through `inkmcp.providers.compute.local.spawn.spawn` in its service's sandbox
(as the tenant user, in the service's cgroups, with its private /tmp; vfork + an exec wrapper, so
the server's memory is never copied) and in its own session (so its process group
id is its pid), with an explicit minimal environment. Stopping signals the process group (SIGTERM, then SIGKILL
after a grace period) plus any descendants that escaped into other groups, so a shell wrapper or a
forking server never leaves children holding the port. A pid file records each live process so a
restarted InkMCP can kill what a crashed one left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import psutil

from inkmcp.build.plan import RunAs
from inkmcp.build.process import TenantSandbox, tenant_line, write_pid_file
from inkmcp.providers.compute.local.logs import (
    BYTES_PER_SECOND,
    LINES_PER_SECOND,
    YIELD_EVERY,
    OutputBudget,
    account_rates,
)
from inkmcp.providers.compute.local.spawn import ExitAwareProtocol, spawn

LineSink = Callable[[str], None]
PACING_NOTE_EVERY = 60.0  # seconds between two notes that a process's output is being paced


@dataclass(frozen=True)
class Backoff:
    """Restart delays: `initial` doubling up to `maximum`; reset after `reset_after` s of uptime."""

    initial: float = 0.5
    maximum: float = 30.0
    reset_after: float = 60.0


@dataclass(frozen=True)
class ProcessConfig:
    name: str
    argv: tuple[str, ...]
    cwd: Path
    env: dict[str, str] = field(repr=False)  # holds unwrapped secrets: never log or persist
    run_as: RunAs | None
    pid_file: Path | None = None
    cgroup_procs: tuple[str, ...] = ()  # cgroup.procs files the process joins before it runs tenant code
    sandbox: TenantSandbox | None = None  # how the process is confined; default: run_as + cgroup_procs

    @property
    def confinement(self) -> TenantSandbox:
        if self.sandbox is not None:
            if self.sandbox.run_as != self.run_as:
                raise ValueError(f"{self.name}: the sandbox runs as another user than run_as")
            return self.sandbox
        return TenantSandbox(run_as=self.run_as, cgroup_procs=self.cgroup_procs)


class ProcState(StrEnum):
    idle = "idle"  # not spawned yet
    running = "running"
    backoff = "backoff"  # crashed, waiting to restart
    exited = "exited"  # exited and not restarted
    stopped = "stopped"


class Supervisor:
    """Runs one process; restarts it after a crash only while `keep_alive` is set.

    `keep_alive` starts False so a process that dies during its health check fails the release
    instead of flapping; the provider turns it on once the release is live.
    """

    def __init__(self, config: ProcessConfig, sink: LineSink, *, backoff: Backoff | None = None,
                 account_output: OutputBudget | None = None) -> None:
        """`account_output`: the budget of the account's output that each instance's own budget draws on."""
        self.config = config
        self._account_output = account_output
        self.name = config.name
        self._sink = sink
        self._backoff = backoff or Backoff()
        self.keep_alive = False
        # --- redteam2 (portguard): set by ReleaseRun when it holds this process's listening port; a crash then
        # calls it instead of restarting in place (the held port is not free to rebind: the release moves)
        self.on_crash: Callable[[], None] | None = None
        # --- end
        self.restarts = 0
        self.state = ProcState.idle
        self.exit_code: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._watch: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stopping = False
        self._stop_requested = asyncio.Event()
        self._creating: asyncio.Task[None] | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._leader_exited = asyncio.Event()
        self._group_live = False
        self._exited = asyncio.Event()
        self._pid_write: asyncio.Handle | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def last_exit_code(self) -> int | None:
        """The exit code as soon as the process is gone (the watch loop sets `exit_code` a bit later)."""
        if self._proc is not None and self._proc.returncode is not None:
            return self._proc.returncode
        return self.exit_code

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def wait_exit(self) -> None:
        """Return when the current process instance exits (used by the health check)."""
        await self._exited.wait()

    async def start(self) -> None:
        """Spawn the process and begin watching it. Raises OSError if it cannot be spawned."""
        if await self._spawn():
            self._watch = asyncio.create_task(self._run(), name=f"supervise-{self.name}")

    def enable_restarts(self) -> None:
        """Turn on restart-with-backoff; respawns at once if the process already exited."""
        self.keep_alive = True
        if self.state == ProcState.exited and not self._stopping:
            self._watch = asyncio.create_task(self._run(respawn_first=True), name=f"supervise-{self.name}")

    async def _spawn(self) -> bool:
        """Start a new instance unless stopping. The fork runs in its own task so that cancelling
        the caller can never lose track of a process that was already forked: stop() awaits it."""
        if self._stopping:
            return False
        self._exited.clear()
        self._creating = asyncio.create_task(self._create())
        await asyncio.shield(self._creating)
        return True

    async def _create(self) -> None:
        cfg = self.config
        # The sandbox joins the cgroup in the child, before exec and before dropping root: a process
        # moved from outside after spawning could already have forked children that escape it.
        protocol = ExitAwareProtocol(asyncio.get_running_loop())
        proc, transport = await spawn(cfg.argv, cwd=cfg.cwd, env=cfg.env, sandbox=cfg.confinement, protocol=protocol)
        used = transport.get_protocol()  # a start prepared ahead of need comes with its own (spawn.prepare_start)
        self._proc = proc
        self._transport = transport
        self._leader_exited = used.exited if isinstance(used, ExitAwareProtocol) else protocol.exited
        self._group_live = True
        self.state = ProcState.running
        self.exit_code = None
        self._record_pid(proc.pid)
        assert proc.stdout is not None
        self._pump = asyncio.create_task(pump_lines(proc.stdout, self.name, self._sink,
                                                    OutputBudget(parent=self._account_output)))

    async def _reap(self) -> None:
        """After the leader exited: kill what is left of its group, drain output, release pipes."""
        proc = self._proc
        if proc is None:
            return
        if self._group_live:
            _kill_group(proc.pid, signal.SIGKILL)  # stragglers of a dead leader would hold the port
            self._group_live = False
        if self._pump is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 1.0)
        if self._transport is not None:
            self._transport.close()  # a daemonised grandchild may still hold the pipe: let go of it
            self._transport = None
        self._clear_pid()

    async def _respawn(self) -> bool:
        """Restart after a crash; False when stopping. A spawn error counts as another crash."""
        self.restarts += 1
        try:
            return await self._spawn()
        except OSError as exc:
            self._sink(f"{self.name} | [inkmcp] could not restart: {exc}")
            self._proc = _FailedSpawn()  # type: ignore[assignment]
            self._leader_exited = asyncio.Event()
            self._leader_exited.set()
            self._group_live = False
            return True

    async def _run(self, *, respawn_first: bool = False) -> None:
        loop = asyncio.get_running_loop()
        delay = self._backoff.initial
        if respawn_first and not await self._respawn():
            return
        while True:
            proc = self._proc
            assert proc is not None
            started = loop.time()
            # Not proc.wait(): on 3.11 it also waits for the pipes, which a grandchild can hold forever.
            await self._leader_exited.wait()
            code = proc.returncode if proc.returncode is not None else -1
            self.exit_code = code
            await self._reap()
            self._exited.set()
            if self._stopping:
                return
            uptime = loop.time() - started
            if not self.keep_alive:
                self.state = ProcState.exited
                self._sink(f"{self.name} | [inkmcp] exited with code {code} after {uptime:.1f}s")
                return
            if self.on_crash is not None:  # --- redteam2 (portguard): the provider restarts it on a new port
                self.state = ProcState.backoff
                wait = min(self._backoff.initial * 2 ** min(self.restarts, 16), self._backoff.maximum)  # as _recover
                self._sink(f"{self.name} | [inkmcp] exited with code {code} after {uptime:.1f}s; restarting in "
                           f"{wait:g}s on a new port")
                self.on_crash()
                return
            if uptime >= self._backoff.reset_after:
                delay = self._backoff.initial
            self.state = ProcState.backoff
            self._sink(f"{self.name} | [inkmcp] exited with code {code} after {uptime:.1f}s; restarting in {delay:g}s")
            with contextlib.suppress(TimeoutError):  # stop() ends the wait early
                await asyncio.wait_for(self._stop_requested.wait(), delay)
            delay = min(delay * 2, self._backoff.maximum)
            if not await self._respawn():
                return

    async def stop(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds; idempotent.

        Never cancels the watch task: it is told to stop and finishes on its own, so a restart
        that is forking right now is awaited and then killed instead of leaking.
        """
        self._stopping = True
        self._stop_requested.set()
        if self._creating is not None:
            with contextlib.suppress(Exception):
                await self._creating
        proc = self._proc
        if proc is not None and not self._leader_exited.is_set():
            escaped = _escaped_descendants(proc.pid)
            family = _family(proc.pid)
            _kill_group(proc.pid, signal.SIGTERM)
            _signal_all(escaped, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._leader_exited.wait(), grace)
            _kill_group(proc.pid, signal.SIGKILL)
            _signal_all(escaped, signal.SIGKILL)
            await self._leader_exited.wait()
            # Children reparented to init die asynchronously after SIGKILL: stop() returns only once
            # they are gone, so "stopped" really means nothing of the service still runs.
            await asyncio.to_thread(_wait_gone, family, 2.0)
        await self._reap()
        if self._watch is not None:
            await self._watch
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._pump, 1.0)
        self._clear_pid()
        self.state = ProcState.stopped

    def _record_pid(self, pid: int) -> None:
        """Write the pid file from the event loop's next turn, beside the process's own start, not before it.

        It costs 0.5-1.3 ms here (psutil's create time, a file created on disk), on the path of every
        on_demand wake, where a request waits; the file only matters if InkMCP dies, and it is written
        while the app is still starting (tens of ms). Not in a thread: starting one (the executor's
        first) blocks the loop until it runs, ms on a loaded machine. `_clear_pid` cancels a write
        that has not happened yet, so a process that exits at once never leaves its file behind.
        """
        if self.config.pid_file is not None:
            self._pid_write = asyncio.get_running_loop().call_soon(write_pid_file, self.config.pid_file, pid)

    def _clear_pid(self) -> None:
        if self._pid_write is not None:
            self._pid_write.cancel()  # a no-op once written; else it never will be
            self._pid_write = None
        if self.config.pid_file is not None:
            self.config.pid_file.unlink(missing_ok=True)


class _FailedSpawn:
    """Stands in for a process that could not be spawned, so the watch loop keeps backing off."""

    pid = -1
    returncode = 127

    async def wait(self) -> int:
        return 127


async def pump_lines(stream: asyncio.StreamReader, name: str, sink: LineSink,
                     budget: OutputBudget | None = None) -> None:
    """Forward output line by line as `name | line`; chunked reads so huge lines cannot wedge it.

    Paced by `budget` (logs.py): past it, the next read waits, so a process flooding its output
    blocks on its own pipe instead of keeping InkMCP's event loop busy for every account. The first
    wait of each minute is noted in the log, so the app's owner sees why its writes were slow.
    """
    budget = budget or OutputBudget()
    noted = -PACING_NOTE_EVERY
    pending = b""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        if len(pending) > 65536:
            lines.append(pending)
            pending = b""
        for start in range(0, len(lines), YIELD_EVERY):
            part = lines[start:start + YIELD_EVERY]
            for raw in part:
                sink(f"{name} | {tenant_line(raw.decode(errors='replace').rstrip(chr(13)))}")
            wait = budget.take(len(part), sum(len(raw) + 1 for raw in part))
            if wait > 0 and budget.clock() - noted >= PACING_NOTE_EVERY:
                noted = budget.clock()
                # --- mender6: the account budget's rate (INKMCP_ACCOUNT_OUTPUT_LINES_PER_SECOND)
                account_rate = budget.parent.rates[0] if budget.parent is not None else account_rates().lines_per_second
                sink(f"{name} | [inkmcp] output over {LINES_PER_SECOND:g} lines/s or {BYTES_PER_SECOND / 2**20:g} "
                     f"MiB/s (or all of this account's processes and builds together over "
                     f"{account_rate:g} lines/s): InkMCP reads it more slowly, so the process's writes "
                     "wait (nothing is dropped)")
            await asyncio.sleep(wait)  # 0 still yields: other accounts' requests get the loop between slices
    if pending:
        sink(f"{name} | {tenant_line(pending.decode(errors='replace'))}")


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    if pgid <= 0:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _family(pid: int) -> list[psutil.Process]:
    """The process and all its descendants, as psutil handles (which detect pid reuse)."""
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.Error:
        return []


def _wait_gone(procs: list[psutil.Process], timeout: float) -> None:
    """Until every process has exited (a zombie counts: only its parent or init can reap it)."""
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending and time.monotonic() < deadline:
        still = []
        for p in pending:
            with contextlib.suppress(psutil.Error):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    still.append(p)
        pending = still
        if pending:
            time.sleep(0.01)


def _escaped_descendants(pid: int) -> list[psutil.Process]:
    """Descendants that left the process group (setsid/setpgid) and killpg would miss."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []
    escaped = []
    for child in children:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(child.pid) != pid:
                escaped.append(child)
    return escaped


def _signal_all(procs: list[psutil.Process], sig: signal.Signals) -> None:
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


def reap_stale(pid_dir: Path) -> int:
    """Kill processes recorded by a previous InkMCP that died without stopping them.

    The recorded create time guards against a recycled pid. Returns how many were killed.
    """
    killed = 0
    for path in pid_dir.glob("*.pid"):
        try:
            record = json.loads(path.read_text())
            proc = psutil.Process(int(record["pid"]))
            if abs(proc.create_time() - float(record["create_time"])) < 0.01:
                _kill_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(psutil.Error):
                    proc.kill()
                killed += 1
        except (psutil.Error, OSError, ValueError, KeyError):
            pass
        path.unlink(missing_ok=True)
    return killed


async def run_once(config: ProcessConfig, sink: LineSink, *, timeout: float, grace: float = 5.0,
                   account_output: OutputBudget | None = None) -> int:
    """Run a one-shot command (the release command) to completion; kill its group on timeout.

    Returns the exit code; raises TimeoutError after killing it if it ran longer than `timeout`.
    """
    sup = Supervisor(config, sink, account_output=account_output)
    await sup.start()
    try:
        await asyncio.wait_for(sup.wait_exit(), timeout)
    except TimeoutError:
        await sup.stop(grace)
        raise TimeoutError(f"{config.name} did not finish within {timeout:g}s") from None
    await sup.stop(grace)
    return sup.exit_code if sup.exit_code is not None else -1
